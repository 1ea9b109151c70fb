"""The served model's contract in process: image sources, per-row errors, confined paths, heatmap params, JSON safety."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cpst_pipeline.cascade.model import CascadeModel
from cpst_pipeline.cascade.serving import OUTPUT_COLUMNS, PATH_REFUSED, PATHS_DISABLED, SCORING_FAILED, ServingConfig, predict_rows
from cpst_pipeline.data.images import load_image
from cpst_pipeline.pipeline.domain_models import raw_heatmap_scores

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def model(tiny_pipeline) -> CascadeModel:
    return CascadeModel.load(Path(tiny_pipeline["evaluation"]["cascade_dir"]), device="cpu")


@pytest.fixture(scope="module")
def images(tiny_pipeline) -> list[Path]:
    test = tiny_pipeline["splits"][tiny_pipeline["splits"]["split"] == "test_mix"]
    return [Path(p) for p in test.groupby("domain").head(2)["path"]]


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def strict_json(frame: pd.DataFrame) -> list[dict]:
    """Round trip through JSON as the scoring server does, refusing NaN and infinity."""
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(json.dumps(frame.to_dict(orient="records")), parse_constant=refuse)


def test_base64_bytes_and_data_uri_rows_score_like_predict(model, images) -> None:
    rows = pd.DataFrame({"image_base64": [b64(p) for p in images]})
    rows.loc[1, "image_base64"] = "data:image/png;base64," + b64(images[1])
    out = predict_rows(model, rows, None, ServingConfig())
    as_bytes = predict_rows(model, pd.DataFrame({"image": [p.read_bytes() for p in images]}), None, ServingConfig())
    assert list(out.columns) == list(OUTPUT_COLUMNS)
    pd.testing.assert_frame_equal(out, as_bytes)
    for path, row in zip(images, strict_json(out)):
        expected = model.predict(load_image(path))
        assert row["error"] is None and row["heatmap"] is None
        assert row["domain"] == expected.domain and row["is_anomaly"] == expected.is_anomaly
        assert row["anomaly_score"] == pytest.approx(expected.anomaly_score, abs=1e-5)


def test_bad_rows_get_errors_and_the_others_still_score(model, images) -> None:
    good = b64(images[0])
    rows = pd.DataFrame(
        {
            "image_base64": [good, base64.b64encode(b"not an image").decode(), "%%%", good, None, good],
            "domain": [None, None, None, "glass", None, np.nan],
        }
    )
    out = strict_json(predict_rows(model, rows, None, ServingConfig()))
    errors = [row["error"] for row in out]
    assert errors[0] is None and errors[5] is None
    assert errors[1] == "image_base64: unreadable: not an image file or an unsupported format"
    assert errors[2] == "image_base64 is not valid base64"
    assert errors[3].startswith("unknown domain 'glass'")
    assert errors[4] == "each row needs exactly one of image_base64, image, path; this one has 0"
    assert out[0] == out[5]
    assert all(set(row) == set(OUTPUT_COLUMNS) for row in out)
    assert all(value is None for row in out[1:5] for key, value in row.items() if key != "error")


def test_unknown_domain_image_has_null_not_nan(model) -> None:
    # a blank image the router places in no domain: flagged, gate score undefined
    buffer = io.BytesIO()
    Image.new("RGB", (96, 96), (255, 0, 255)).save(buffer, format="PNG")
    out = predict_rows(model, pd.DataFrame({"image": [buffer.getvalue()]}), None, ServingConfig())
    row = strict_json(out)[0]
    if row["domain"] is not None:
        pytest.skip("the router placed the blank image in a domain")
    assert row["is_anomaly"] is True and row["gate_score"] is None and row["error"] is None


def test_empty_input_returns_the_full_schema(model) -> None:
    for empty in (pd.DataFrame({"image_base64": pd.Series([], dtype=object)}), pd.DataFrame()):
        out = predict_rows(model, empty, None, ServingConfig())
        assert list(out.columns) == list(OUTPUT_COLUMNS) and len(out) == 0


def test_heatmap_params(model, images) -> None:
    rows = pd.DataFrame({"image_base64": [b64(images[0])]})
    small = json.dumps(strict_json(predict_rows(model, rows, None, ServingConfig())))
    assert len(small) < 1000
    png = strict_json(predict_rows(model, rows, {"heatmap": "png", "heatmap_size": 32}, ServingConfig()))[0]["heatmap"]
    assert png.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(png.partition(",")[2])))
    assert decoded.format == "PNG" and max(decoded.size) == 32
    array = strict_json(predict_rows(model, rows, {"heatmap": "array", "heatmap_size": 16}, ServingConfig()))[0]["heatmap"]
    assert max(len(array), len(array[0])) == 16 and all(isinstance(v, float) for row in array for v in row)
    for bad in ({"heatmap": "jpeg"}, {"heatmap": "png", "heatmap_size": 0}, {"heatmap": "png", "heatmap_size": 10_000}):
        out = strict_json(predict_rows(model, pd.concat([rows, rows]), bad, ServingConfig()))
        assert len(out) == 2 and all(row["error"].startswith("param heatmap") for row in out)


def test_paths_only_under_configured_roots_with_one_generic_refusal(model, images, tmp_path) -> None:
    root = images[0].parent
    outside = tmp_path / "outside.png"
    outside.write_bytes(images[0].read_bytes())
    link = root / "link_to_outside.png"
    link.symlink_to(outside)
    try:
        refused = [str(outside), str(tmp_path / "missing.png"), "/etc/passwd", str(root), str(root / "missing.png"),
                   str(link), str(root / ".." / ".." / "outside.png"), "relative.png"]
        rows = pd.DataFrame({"path": [str(images[0]), *refused]})
        disabled = strict_json(predict_rows(model, rows, None, ServingConfig()))
        assert all(row["error"] == PATHS_DISABLED for row in disabled)
        out = strict_json(predict_rows(model, rows, None, ServingConfig(path_roots=(str(root),))))
    finally:
        link.unlink()
    by_bytes = strict_json(predict_rows(model, pd.DataFrame({"image": [images[0].read_bytes()]}), None, ServingConfig()))
    assert out[0] == by_bytes[0]
    assert [row["error"] for row in out[1:]] == [PATH_REFUSED] * len(refused)
    assert str(root) not in json.dumps(out)  # nothing echoes a server path


def test_a_failing_batch_is_scored_image_by_image(model, images, monkeypatch) -> None:
    rows = pd.DataFrame({"image_base64": [b64(p) for p in images[:3]]})
    expected = strict_json(predict_rows(model, rows, None, ServingConfig()))
    original, unscorable = model.predict_batch, load_image(images[1])

    def fails_on_batches_and_one_image(batch, domains, force_heatmap=False):
        if len(batch) > 1 or np.array_equal(batch[0], unscorable):
            raise RuntimeError("boom")
        return original(batch, domains, force_heatmap)

    monkeypatch.setattr(model, "predict_batch", fails_on_batches_and_one_image)
    out = strict_json(predict_rows(model, rows, None, ServingConfig()))
    assert out[1]["error"] == SCORING_FAILED
    assert out[0] == expected[0] and out[2] == expected[2]


def test_served_heatmap_scores_equal_the_scores_the_calibration_used(model, tiny_pipeline) -> None:
    """The server rounds patch features to float16 as the feature store does, so an image's served
    score is the one its threshold was fitted on, not one a rounding step away (which flipped a
    demo val decision before)."""
    run = tiny_pipeline["run"]
    for domain in run.domains:
        images, bank, calibration = (run.value(asset, domain) for asset in ("embeddings", "memory_bank", "calibration"))
        val = images.in_splits("val_mix")
        expected = calibration.normalise(raw_heatmap_scores(bank, images, val, run.config))
        pictures = [load_image(p) for p in val["path"]]
        served = [p.heatmap_score for p in model.predict_batch(pictures, [domain] * len(pictures), force_heatmap=True)]
        np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5)
