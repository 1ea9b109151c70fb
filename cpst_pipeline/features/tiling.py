"""Tiles for scoring large images near native resolution: geometry, and patch features per tile.

Shrinking a 640 px image to a 256 px short side leaves a 2 px scratch under one pixel wide,
below what a stride-8 patch feature resolves. Tiling instead cuts the (at most lightly
resized) image into overlapping tiles of the size the backbone is used at, so each tile's
patches see defects at their real scale; the bank is built from tiles of normal images at
the same scale, and ``patchcore.tiled`` stitches the per-tile scores into one map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cpst_pipeline.features.extractor import FeatureExtractor
from cpst_pipeline.features.preprocess import resize_image


@dataclass(frozen=True)
class TilingConfig:
    # The input size the features are computed at elsewhere (the 256 px short side), so a
    # tile's patches have the receptive field and padding the rest of the pipeline knows.
    tile_size: int = 256
    # Tiles overlap by at least this many pixels: each pixel is scored by the tile that sees it
    # farthest from its border, and 32 px (4 stride-8 patches) keeps it out of the zero padding.
    min_overlap: int = 32
    # The image is resized by this factor before tiling: 1.0 is native resolution.
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.tile_size < 32 or not 0 <= self.min_overlap < self.tile_size // 2 or self.scale <= 0:
            raise ValueError(
                f"TilingConfig needs tile_size >= 32, 0 <= min_overlap < tile_size / 2 and scale > 0, got {self}"
            )


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one image lie: origins along each axis; tile (r, c) starts at (rows[r], cols[c])."""

    image_size: tuple[int, int]  # (H, W) of the image being tiled (after scaling)
    tile_size: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)

    def origins(self) -> list[tuple[int, int]]:
        """(y, x) of every tile, row-major: the order of ``cut_tiles`` and of per-tile results."""
        return [(y, x) for y in self.rows for x in self.cols]

    def owned_spans(self) -> list[tuple[slice, slice]]:
        """Per tile (row-major), the image region whose scores come from it: overlaps are cut at
        their middle, so each pixel belongs to the tile whose border is farthest from it."""
        row_spans = _owned_spans(self.rows, self.tile_size, self.image_size[0])
        col_spans = _owned_spans(self.cols, self.tile_size, self.image_size[1])
        return [(rows, cols) for rows in row_spans for cols in col_spans]


@dataclass(frozen=True)
class TiledFeatures:
    tiles: TileGrid
    patches: np.ndarray  # (tiles, h, w, D) patch features, tiles in ``TileGrid.origins`` order


def tiled_image_size(height: int, width: int, config: TilingConfig) -> tuple[int, int]:
    """(H, W) the image is resized to before tiling: scaled by ``config.scale``, aspect kept,
    and never with a side shorter than one tile."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    factor = max(config.scale, config.tile_size / min(height, width))
    return max(config.tile_size, round(height * factor)), max(config.tile_size, round(width * factor))


def axis_origins(length: int, tile_size: int, min_overlap: int) -> tuple[int, ...]:
    """Fewest tiles covering [0, length) with neighbours overlapping by >= ``min_overlap``,
    spread evenly: the first starts at 0, the last ends at ``length``."""
    if length < tile_size:
        raise ValueError(f"cannot tile a side of {length} px with {tile_size} px tiles")
    if length == tile_size:
        return (0,)
    count = math.ceil((length - min_overlap) / (tile_size - min_overlap))  # >= 2 here
    return tuple(round(i * (length - tile_size) / (count - 1)) for i in range(count))


def _owned_spans(origins: tuple[int, ...], tile_size: int, length: int) -> list[slice]:
    cuts = [0] + [(previous + tile_size + current) // 2 for previous, current in zip(origins, origins[1:])] + [length]
    return [slice(start, stop) for start, stop in zip(cuts, cuts[1:])]


def tile_grid(image_size: tuple[int, int], config: TilingConfig) -> TileGrid:
    """The tiles of an image of ``image_size`` (already scaled, see ``tiled_image_size``)."""
    height, width = image_size
    return TileGrid(
        image_size=(height, width),
        tile_size=config.tile_size,
        rows=axis_origins(height, config.tile_size, config.min_overlap),
        cols=axis_origins(width, config.tile_size, config.min_overlap),
    )


def cut_tiles(image: np.ndarray, tiles: TileGrid) -> list[np.ndarray]:
    """The tiles of ``image`` (H, W) or (H, W, C), as views, in ``tiles.origins()`` order."""
    if tuple(image.shape[:2]) != tiles.image_size:
        raise ValueError(f"image is {image.shape[:2]}, the tile grid was made for {tiles.image_size}")
    size = tiles.tile_size
    return [image[y : y + size, x : x + size] for y, x in tiles.origins()]


def extract_tiled_features(extractor: FeatureExtractor, image: np.ndarray, config: TilingConfig, batch_size: int = 16) -> TiledFeatures:
    """Patch features of every tile of one (H, W) or (H, W, 3) uint8 image, as the feature store
    keeps them (``stored_patch_features``). Tiles go through the backbone ``batch_size`` at a
    time, so an unusually large image costs time, not memory."""
    scaled = resize_image(image, tiled_image_size(image.shape[0], image.shape[1], config))
    tiles = tile_grid(scaled.shape[:2], config)
    cut, size = cut_tiles(scaled, tiles), (config.tile_size, config.tile_size)
    patches = np.concatenate(
        [extractor.stored_patch_features(extractor.batch(cut[i : i + batch_size], size)) for i in range(0, len(cut), batch_size)]
    )
    return TiledFeatures(tiles=tiles, patches=patches)
