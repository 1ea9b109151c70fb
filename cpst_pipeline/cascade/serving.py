"""The served cascade's contract, independent of MLflow: request rows in, one JSON-safe result row out per input row.

Input columns (each row gives exactly one image source):

- ``image_base64``: the encoded image file (PNG, JPEG, BMP, TIFF, ...) as base64 text, optionally
  as a ``data:`` URI: what HTTP clients send;
- ``image``: the encoded image file as raw bytes: what Python callers pass;
- ``path``: a file on the server, accepted only when ``ServingConfig.path_roots`` is set and the
  file (symlinks resolved) lies under one of the roots;
- ``domain`` (optional): the product domain; without it the model's router picks one.

Output columns: ``OUTPUT_COLUMNS``; ``reason`` says why a flagged image was not scored (unknown
domain, or unlike every training image of its domain). A row that cannot be scored has ``error`` set and the other
columns null; the other rows still score. Numbers are finite or null (never NaN), so the reply
is strict JSON.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cpst_pipeline.cascade.model import CascadeModel, Prediction
from cpst_pipeline.data.images import ImageReadError, decode_image, load_image
from cpst_pipeline.io_utils import write_json_atomic

IMAGE_SOURCES = ("image_base64", "image", "path")
OUTPUT_COLUMNS = ("domain", "anomaly_score", "is_anomaly", "reason", "heatmap_ran", "gate_score", "heatmap_score", "heatmap", "error")
HEATMAP_MODES = ("none", "png", "array")
DEFAULT_HEATMAP_SIZE = 64
# One answer for every refused path, whatever the reason: a client learns nothing about the server's disk.
PATH_REFUSED = "path refused: only image files under the server's configured image roots can be read"
PATHS_DISABLED = "path input is disabled on this server; send the image as image_base64"
SCORING_FAILED = "internal error while scoring this image"

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingConfig:
    """Stored with each registered model version (``serving.json``)."""

    # Folders whose image files clients may name in a ``path`` column; empty: paths are refused.
    path_roots: tuple[str, ...] = ()
    max_heatmap_size: int = 256

    def save(self, path: Path) -> Path:
        return write_json_atomic(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> "ServingConfig":
        data = json.loads(Path(path).read_text())
        return cls(path_roots=tuple(data["path_roots"]), max_heatmap_size=int(data["max_heatmap_size"]))


@dataclass(frozen=True)
class HeatmapRequest:
    mode: str = "none"
    size: int = DEFAULT_HEATMAP_SIZE

    @classmethod
    def from_params(cls, params: dict | None, config: ServingConfig) -> "HeatmapRequest":
        """The request's heatmap params; ValueError says what is wrong with them."""
        params = params or {}
        mode, size = str(params.get("heatmap", "none")), params.get("heatmap_size", DEFAULT_HEATMAP_SIZE)
        if mode not in HEATMAP_MODES:
            raise ValueError(f"param heatmap must be one of {', '.join(HEATMAP_MODES)}; got {mode!r}")
        if not isinstance(size, (int, np.integer)) or not 1 <= size <= config.max_heatmap_size:
            raise ValueError(f"param heatmap_size must be an integer from 1 to {config.max_heatmap_size}; got {size!r}")
        return cls(mode, int(size))


class RowError(ValueError):
    """A problem with one input row; its message goes back to the client as that row's ``error``."""


def predict_rows(model: CascadeModel, rows: pd.DataFrame, params: dict | None, config: ServingConfig) -> pd.DataFrame:
    """Score every row of a request; never raises for bad input (see the module doc)."""
    results: list[dict] = [_error_row(SCORING_FAILED) for _ in range(len(rows))]
    try:
        heatmap = HeatmapRequest.from_params(params, config)
    except ValueError as error:
        return _frame([_error_row(str(error)) for _ in range(len(rows))])
    valid: list[int] = []
    images: list[np.ndarray] = []
    domains: list[str | None] = []
    for i, row in enumerate(_records(rows)):
        try:
            domain = _domain(row, model)
            images.append(_image(row, config))
        except RowError as error:
            results[i] = _error_row(str(error))
            continue
        valid.append(i)
        domains.append(domain)
    force = heatmap.mode != "none"
    for i, prediction in zip(valid, _predict_each_if_batch_fails(model, images, domains, force)):
        if prediction is not None:
            results[i] = _result_row(prediction, heatmap)
    return _frame(results)


def _predict_each_if_batch_fails(model: CascadeModel, images, domains, force: bool) -> list[Prediction | None]:
    """The batch's predictions; if the batch fails, each image alone, so one image cannot fail the others."""
    try:
        return model.predict_batch(images, domains, force_heatmap=force)
    except Exception:
        _log.exception("batch of %d images failed; scoring them one at a time", len(images))
    predictions: list[Prediction | None] = []
    for image, domain in zip(images, domains):
        try:
            predictions.append(model.predict(image, domain, force_heatmap=force))
        except Exception:
            _log.exception("image failed to score")
            predictions.append(None)
    return predictions


def _records(rows: pd.DataFrame) -> list[dict]:
    present = [c for c in (*IMAGE_SOURCES, "domain") if c in rows.columns]
    return [{c: (None if _missing(v) else v) for c, v in zip(present, values)} for values in rows[present].itertuples(index=False)]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _domain(row: dict, model: CascadeModel) -> str | None:
    domain = row.get("domain")
    if domain is None or domain == "":
        return None
    if not isinstance(domain, str) or domain not in model.calibrations:
        raise RowError(f"unknown domain {domain!r}; this model knows {model.domains}")
    return domain


def _image(row: dict, config: ServingConfig) -> np.ndarray:
    given = [source for source in IMAGE_SOURCES if row.get(source) is not None]
    if len(given) != 1:
        raise RowError(f"each row needs exactly one of {', '.join(IMAGE_SOURCES)}; this one has {len(given)}")
    source, value = given[0], row[given[0]]
    if source == "path":
        return _image_under_roots(value, config)
    data = _base64_bytes(value) if source == "image_base64" else value
    try:
        return decode_image(data, name=source)
    except ImageReadError as error:
        raise RowError(f"{source}: {error.reason}") from error


def _base64_bytes(text) -> bytes:
    if not isinstance(text, str):
        raise RowError(f"image_base64 must be text; got {type(text).__name__}")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RowError("image_base64 is not valid base64") from error


def _image_under_roots(path, config: ServingConfig) -> np.ndarray:
    if not config.path_roots:
        raise RowError(PATHS_DISABLED)
    if not isinstance(path, str) or "\0" in path:
        raise RowError(PATH_REFUSED)
    resolved = os.path.realpath(path)
    roots = [os.path.realpath(root) for root in config.path_roots]
    if not any(os.path.commonpath([resolved, root]) == root for root in roots) or not os.path.isfile(resolved):
        raise RowError(PATH_REFUSED)
    try:
        return load_image(resolved)
    except ImageReadError as error:
        raise RowError(f"path: {error.reason}".replace(resolved, path)) from error


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _result_row(prediction: Prediction, heatmap: HeatmapRequest) -> dict:
    return {
        "domain": prediction.domain,
        "anomaly_score": _finite(prediction.anomaly_score),
        "is_anomaly": bool(prediction.is_anomaly),
        "reason": prediction.reason,
        "heatmap_ran": bool(prediction.heatmap_ran),
        "gate_score": _finite(prediction.gate_score),
        "heatmap_score": _finite(prediction.heatmap_score),
        "heatmap": None if prediction.anomaly_map is None else encode_heatmap(prediction.anomaly_map, heatmap),
        "error": None,
    }


def _error_row(message: str) -> dict:
    return {**dict.fromkeys(OUTPUT_COLUMNS), "error": message}


def _frame(results: list[dict]) -> pd.DataFrame:
    # object columns keep None as None, so the reply says null where a float column would say NaN
    return pd.DataFrame(results, columns=list(OUTPUT_COLUMNS), dtype=object)


def downsample(anomaly_map: np.ndarray, max_side: int) -> np.ndarray:
    """Area-averaged copy of the map whose longer side is at most ``max_side``."""
    height, width = anomaly_map.shape
    scale = min(1.0, max_side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(anomaly_map.astype(np.float32)).resize(size, Image.Resampling.BOX))


def encode_heatmap(anomaly_map: np.ndarray, request: HeatmapRequest):
    """``array``: the downsampled normalised map (floats, 4 decimals, non-finite as null);
    ``png``: a grey PNG data URI of it, stretched from its minimum (black) to its maximum (white), for display."""
    if request.mode == "none":
        return None
    small = downsample(anomaly_map, request.size)
    if request.mode == "array":
        return [[round(float(v), 4) if math.isfinite(v) else None for v in row] for row in small]
    finite = np.nan_to_num(small, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(finite.min()), float(finite.max())
    grey = np.zeros(finite.shape, np.uint8) if high <= low else np.round((finite - low) * (255.0 / (high - low))).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
