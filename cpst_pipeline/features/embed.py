"""Compute and cache the features every later stage reads: gate embeddings and PatchCore patches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cpst_pipeline.data.images import load_image
from cpst_pipeline.features.backbone import BackboneConfig
from cpst_pipeline.features.extractor import FeatureExtractor
from cpst_pipeline.features.loader import iter_resized_batches
from cpst_pipeline.features.preprocess import fit_input_size
from cpst_pipeline.features.store import FeatureStore
from cpst_pipeline.features.tiling import TilingConfig, extract_tiled_features

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ResolutionConfig:
    heatmap_short_side: int = 256
    # The gate sees a quarter of the pixels, so it costs a fraction of a heatmap pass.
    gate_short_side: int = 128
    max_aspect: float = 4.0


@dataclass(frozen=True)
class DomainInputs:
    heatmap_size: tuple[int, int]  # the network input of the heatmap model: the whole image resized, or one tile
    gate_size: tuple[int, int]
    # Set when the heatmap model sees overlapping tiles of the (scaled) image instead (features.tiling).
    tiling: TilingConfig | None = None

    def describe_heatmap_input(self) -> str:
        if self.tiling is None:
            return f"{self.heatmap_size[0]}x{self.heatmap_size[1]}"
        return f"{self.tiling.tile_size} px tiles of the image at x{self.tiling.scale:g}"

    def heatmap_kind(self, backbone_key: str) -> str:
        """The feature-store kind of the heatmap model's patch features."""
        if self.tiling is None:
            return patch_kind(backbone_key, self.heatmap_size)
        t = self.tiling
        return f"{backbone_key}/tiles-{t.tile_size}-overlap{t.min_overlap}-x{t.scale:g}"


def domain_inputs_from_json(spec: dict) -> DomainInputs:
    """DomainInputs from the JSON that DomainImages and the cascade save (``tiling`` absent in older ones)."""
    tiling = spec.get("tiling")
    return DomainInputs(
        heatmap_size=tuple(spec["heatmap_size"]), gate_size=tuple(spec["gate_size"]), tiling=None if tiling is None else TilingConfig(**tiling)
    )


def domain_input_sizes(index: pd.DataFrame, resolution: ResolutionConfig) -> dict[str, DomainInputs]:
    """One input size per domain from its median image shape (batches need one size)."""
    sizes = {}
    for domain, rows in index.groupby("domain"):
        height, width = float(rows["height"].median()), float(rows["width"].median())
        sizes[domain] = DomainInputs(
            heatmap_size=fit_input_size(height, width, resolution.heatmap_short_side, resolution.max_aspect),
            gate_size=fit_input_size(height, width, resolution.gate_short_side, resolution.max_aspect),
        )
    return sizes


def gate_kind(backbone_key: str, size: tuple[int, int]) -> str:
    return f"{backbone_key}/gate-{size[0]}x{size[1]}"


def patch_kind(backbone_key: str, size: tuple[int, int]) -> str:
    return f"{backbone_key}/patch-{size[0]}x{size[1]}"


def heatmap_features(extractor: FeatureExtractor, images: list[np.ndarray], inputs: DomainInputs) -> list[np.ndarray]:
    """Heatmap patch features of decoded images: (h, w, D) at ``inputs.heatmap_size``, or
    (tiles, h, w, D) when the domain is tiled (``extract_tiled_features``, image by image)."""
    if inputs.tiling is not None:
        return [extract_tiled_features(extractor, image, inputs.tiling).patches for image in images]
    return list(extractor.stored_patch_features(extractor.batch(images, inputs.heatmap_size)))


def embed_domain(
    store: FeatureStore,
    backbone: BackboneConfig,
    get_extractor: Callable[[], FeatureExtractor],
    images: pd.DataFrame,
    inputs: DomainInputs,
    with_patches: bool,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> int:
    """Embed the images of one domain that the store lacks; returns how many were computed.

    ``images`` needs ``path`` and ``content_hash``; byte-identical images are embedded once.
    The network is only built (``get_extractor``) when something is missing.
    """
    key = backbone.key()
    # kind -> (input size, whether it stores patch features rather than an image embedding)
    wanted = {gate_kind(key, inputs.gate_size): (inputs.gate_size, False)}
    if with_patches and inputs.tiling is None:
        wanted[inputs.heatmap_kind(key)] = (inputs.heatmap_size, True)
    tiled_kind = inputs.heatmap_kind(key) if with_patches and inputs.tiling is not None else None
    unique = images.drop_duplicates("content_hash")
    missing_by_kind = {kind: set(unique["content_hash"]) - store.known_hashes(kind) for kind in [*wanted, tiled_kind] if kind}
    todo = unique[unique["content_hash"].isin(set().union(*missing_by_kind.values()))]
    if todo.empty:
        return 0
    extractor = get_extractor()
    sizes = [size for size, _ in wanted.values()]
    hashes = todo["content_hash"].tolist()
    done = 0
    for positions, per_size in iter_resized_batches(todo["path"].tolist(), sizes, batch_size):
        batch_hashes = [hashes[i] for i in positions]
        for (kind, (size, is_patch)), resized in zip(wanted.items(), per_size):
            need = [i for i, h in enumerate(batch_hashes) if h in missing_by_kind[kind]]
            if not need:
                continue
            tensor = extractor.batch([resized[i] for i in need], size)
            if is_patch:
                values = extractor.stored_patch_features(tensor)
            else:
                values = extractor.image_embedding(tensor).cpu().numpy().astype(np.float32)
            store.append(kind, {batch_hashes[i]: values[j] for j, i in enumerate(need)})
        done += len(positions)
        if progress:
            progress(done, len(todo))
    if tiled_kind is not None:
        tiled = todo[todo["content_hash"].isin(missing_by_kind[tiled_kind])]
        _embed_tiles(store, tiled_kind, extractor, tiled, inputs, batch_size, progress)
    return len(todo)


def _embed_tiles(
    store: FeatureStore, kind: str, extractor: FeatureExtractor, images: pd.DataFrame, inputs: DomainInputs, batch_size: int, progress: Progress | None
) -> None:
    """Tiled patch features, (tiles, h, w, D) per image, written ``batch_size`` images at a time."""
    pending: dict[str, np.ndarray] = {}
    for done, (content_hash, path) in enumerate(zip(images["content_hash"], images["path"]), start=1):
        [pending[content_hash]] = heatmap_features(extractor, [load_image(path)], inputs)
        if len(pending) == batch_size or done == len(images):
            store.append(kind, pending)
            pending = {}
            if progress:
                progress(done, len(images))
