"""A domain's bank and one image's PatchCore scores from heatmap patch features, whether the
domain resizes the whole image (one (h, w, D) grid) or tiles it ((tiles, h, w, D), stitched by
``patchcore.tiled``). The pipeline's bank and calibration, the resolution trial and the served
cascade all fit and score through here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cpst_pipeline.features.embed import DomainInputs
from cpst_pipeline.features.tiling import TiledFeatures, tile_grid, tiled_image_size
from cpst_pipeline.patchcore.bank import BankConfig, MemoryBank
from cpst_pipeline.patchcore.scoring import ScoringConfig, anomaly_map, score_patches
from cpst_pipeline.patchcore.tiled import fit_tiled_memory_bank, score_tiles
from cpst_pipeline.patchcore.training import fit_memory_bank


@dataclass
class ImageScores:
    image_score: float  # PatchCore's image score; a tiled image's worst tile's
    grid: np.ndarray  # (h, w) patch scores, or a tiled image's stitched (H, W) map, unsmoothed
    grid_pixels: tuple[int, int]  # the pixel size ``grid`` spans: the network input, or the tiled image

    def anomaly_map(self, image_size: tuple[int, int], sigma: float) -> np.ndarray:
        """The map at the image's own (H, W), smoothed at the resolution the features saw."""
        return anomaly_map(self.grid, self.grid_pixels, image_size, sigma)


def fit_heatmap_bank(
    patches: Sequence[np.ndarray], groups: Sequence[str], inputs: DomainInputs, config: BankConfig, meta: dict | None = None
) -> MemoryBank:
    """A bank from normal images' patch features as ``inputs`` made them: whole grids, or their tiles."""
    fit = fit_memory_bank if inputs.tiling is None else fit_tiled_memory_bank
    return fit(patches, groups, config, meta)


def score_image(bank: MemoryBank, patches: np.ndarray, image_size: tuple[int, int], inputs: DomainInputs, config: ScoringConfig) -> ImageScores:
    """Score one image of ``image_size`` (H, W) from its patch features, as ``inputs`` made them."""
    if inputs.tiling is None:
        scores = score_patches(bank, patches, config)
        return ImageScores(scores.image_score, scores.grid, tuple(inputs.heatmap_size))
    tiles = tile_grid(tiled_image_size(image_size[0], image_size[1], inputs.tiling), inputs.tiling)
    if len(patches) != tiles.count:
        raise ValueError(f"{len(patches)} tile grids for an image of {image_size} that has {tiles.count} tiles")
    tiled = score_tiles(bank, TiledFeatures(tiles, patches), config)
    return ImageScores(tiled.image_score, tiled.map, tiles.image_size)
