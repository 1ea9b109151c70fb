"""PatchCore on tiles: a bank of normal tiles, each test tile scored against it, one stitched map.

Overlaps combine by ownership, not by averaging: each pixel takes the score of the tile that
sees it farthest from its own border (``TileGrid.owned_spans``). A tile's border patches see
zero padding that the neighbouring tile, seeing the same pixels with real context around
them, does not; averaging would blur that padding noise into the map and halve a small
defect's peak where it sits in an overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cpst_pipeline.features.tiling import TiledFeatures, TileGrid
from cpst_pipeline.patchcore.bank import BankConfig, MemoryBank
from cpst_pipeline.patchcore.scoring import PatchScores, ScoringConfig, score_patches
from cpst_pipeline.patchcore.training import fit_memory_bank


@dataclass
class TiledScores:
    map: np.ndarray  # (H, W) patch scores at the tiled image's resolution (TileGrid.image_size), unsmoothed
    image_score: float  # the worst tile's PatchCore image score
    tiles: list[PatchScores]  # per tile, in TileGrid.origins order


def fit_tiled_memory_bank(images: Sequence[np.ndarray], groups: Sequence[str], config: BankConfig, meta: dict | None = None) -> MemoryBank:
    """A bank from the tiles of normal images, (tiles, h, w, D) patch features each; an image's
    tiles keep its group, so held-out statistics never compare a tile with a bank that holds
    its neighbour. The position statistics are per position within a tile: they absorb the
    tile border's padding."""
    if len(images) != len(groups):
        raise ValueError(f"{len(images)} images but {len(groups)} group labels")
    grids = [tile for image in images for tile in image]
    tile_groups = [group for image, group in zip(images, groups) for _ in range(len(image))]
    return fit_memory_bank(grids, tile_groups, config, dict(meta or {}, tiled=True, source_images=len(images)))


def stitch_tile_grids(grids: Sequence[np.ndarray], tiles: TileGrid) -> np.ndarray:
    """Per-tile (h, w) patch grids -> one (H, W) map over the tiled image.

    Each grid is upsampled to its tile's pixels (bilinear, as ``scoring.anomaly_map`` does
    for a whole image) and contributes the region that tile owns."""
    if len(grids) != tiles.count:
        raise ValueError(f"{len(grids)} tile grids for {tiles.count} tiles")
    size = tiles.tile_size
    stitched = np.empty(tiles.image_size, dtype=np.float32)
    for grid, (y, x), (rows, cols) in zip(grids, tiles.origins(), tiles.owned_spans()):
        tensor = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32))[None, None]
        at_tile = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
        stitched[rows, cols] = at_tile[rows.start - y : rows.stop - y, cols.start - x : cols.stop - x]
    return stitched


def score_tiles(bank: MemoryBank, features: TiledFeatures, config: ScoringConfig) -> TiledScores:
    """Score every tile of one image against a tiled bank and stitch the scores.

    The image score is the maximum of the tiles' PatchCore scores: an image is as anomalous
    as its worst tile, and each tile's score is the paper's reweighted one."""
    per_tile = [score_patches(bank, patches, config) for patches in features.patches]
    return TiledScores(
        map=stitch_tile_grids([scores.grid for scores in per_tile], features.tiles),
        image_score=max(scores.image_score for scores in per_tile),
        tiles=per_tile,
    )
