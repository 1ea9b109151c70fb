"""Tiled scoring: tile geometry, stitching, and a defect too small for the 256 px resize."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from cpst_pipeline.evaluation.metrics import auroc
from cpst_pipeline.features.backbone import BackboneConfig
from cpst_pipeline.features.extractor import FeatureExtractor
from cpst_pipeline.features.tiling import (
    TileGrid,
    TilingConfig,
    axis_origins,
    cut_tiles,
    extract_tiled_features,
    tile_grid,
    tiled_image_size,
)
from cpst_pipeline.patchcore.bank import BankConfig
from cpst_pipeline.patchcore.scoring import ScoringConfig, score_patches
from cpst_pipeline.patchcore.tiled import fit_tiled_memory_bank, score_tiles, stitch_tile_grids
from cpst_pipeline.patchcore.training import fit_memory_bank


@pytest.mark.parametrize("length", [256, 257, 400, 480, 500, 640, 1250, 1280])
@pytest.mark.parametrize("min_overlap", [0, 32, 64])
def test_tiles_cover_a_side_exactly_with_the_overlap_and_no_spare_tile(length: int, min_overlap: int) -> None:
    tile = 256
    origins = axis_origins(length, tile, min_overlap)
    assert origins[0] == 0 and origins[-1] + tile == length
    overlaps = [previous + tile - current for previous, current in zip(origins, origins[1:])]
    assert all(overlap >= min_overlap for overlap in overlaps), overlaps
    # One tile fewer could not cover the side with that overlap.
    assert (len(origins) - 1) * (tile - min_overlap) + min_overlap < length or len(origins) == 1


def test_each_pixel_is_owned_by_one_tile_away_from_that_tiles_inner_borders() -> None:
    config = TilingConfig(tile_size=256, min_overlap=32)
    tiles = tile_grid((500, 1250), config)
    owners = np.zeros(tiles.image_size, dtype=int)
    for (y, x), (rows, cols) in zip(tiles.origins(), tiles.owned_spans()):
        assert y <= rows.start and rows.stop <= y + 256 and x <= cols.start and cols.stop <= x + 256
        owners[rows, cols] += 1
        # Where a neighbour overlaps, the owned part stops at least half the overlap short of the tile's edge.
        if rows.stop < 500:
            assert y + 256 - rows.stop >= config.min_overlap // 2
        if cols.start > 0:
            assert cols.start - x >= config.min_overlap // 2
    assert (owners == 1).all()


def test_tiled_size_keeps_the_aspect_and_at_least_one_tile() -> None:
    config = TilingConfig(tile_size=256, scale=1.0)
    assert tiled_image_size(640, 640, config) == (640, 640)
    assert tiled_image_size(500, 1250, TilingConfig(scale=0.8)) == (400, 1000)
    assert tiled_image_size(128, 512, config) == (256, 1024)  # too small: scaled up to one tile


def test_cut_tiles_are_the_images_pixels_and_a_wrong_size_is_refused() -> None:
    image = np.arange(300 * 400, dtype=np.int64).reshape(300, 400)
    tiles = tile_grid((300, 400), TilingConfig(tile_size=256, min_overlap=32))
    cut = cut_tiles(image, tiles)
    assert len(cut) == tiles.count == 4
    for (y, x), tile in zip(tiles.origins(), cut):
        assert tile.shape == (256, 256) and tile[0, 0] == image[y, x]
    with pytest.raises(ValueError, match="tile grid was made for"):
        cut_tiles(image[:, :399], tiles)


def test_bad_tiling_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        TilingConfig(tile_size=256, min_overlap=128)
    with pytest.raises(ValueError, match="cannot tile"):
        axis_origins(200, 256, 32)


def test_stitching_takes_each_region_from_the_tile_that_owns_it() -> None:
    tiles = tile_grid((640, 640), TilingConfig(tile_size=256, min_overlap=32))
    assert tiles.rows == tiles.cols == (0, 192, 384)
    # Overlaps [192, 256) and [384, 448) are cut in their middles, at 224 and 416.
    grids = [np.full((32, 32), float(number)) for number in range(tiles.count)]
    stitched = stitch_tile_grids(grids, tiles)
    expected = np.zeros((640, 640))
    for row, (row_start, row_stop) in enumerate([(0, 224), (224, 416), (416, 640)]):
        for col, (col_start, col_stop) in enumerate([(0, 224), (224, 416), (416, 640)]):
            expected[row_start:row_stop, col_start:col_stop] = 3 * row + col
    np.testing.assert_array_equal(stitched, expected)


def test_a_hot_patch_lands_where_its_tile_put_it() -> None:
    tiles = tile_grid((640, 640), TilingConfig(tile_size=256, min_overlap=32))
    grids = [np.zeros((32, 32)) for _ in range(tiles.count)]
    grids[4][10, 20] = 1.0  # centre tile (192, 192): patch (10, 20) covers pixels 80-87, 160-167 of it
    stitched = stitch_tile_grids(grids, tiles)
    y, x = np.unravel_index(np.argmax(stitched), stitched.shape)
    assert 192 + 80 <= y < 192 + 88 and 192 + 160 <= x < 192 + 168
    with pytest.raises(ValueError, match="tile grids"):
        stitch_tile_grids(grids[:-1], tiles)


def test_tile_grid_counts_tiles_row_major() -> None:
    tiles = TileGrid(image_size=(300, 500), tile_size=256, rows=(0, 44), cols=(0, 122, 244))
    assert tiles.count == 6
    assert tiles.origins()[:4] == [(0, 0), (0, 122), (0, 244), (44, 0)]


def _surface(seed: int, with_line: bool) -> tuple[np.ndarray, np.ndarray]:
    """480 px blotchy texture and its defect mask; the defect is a 1 px line, under 0.6 px once
    resized to 256 px (less than a tenth of a stride-8 patch there)."""
    rng = np.random.default_rng(seed)
    texture = gaussian_filter(rng.standard_normal((480, 480)), 3.0)
    surface = 128 + 15 * texture / texture.std() + 2 * rng.standard_normal((480, 480))
    mask = np.zeros(surface.shape, dtype=bool)
    if with_line:
        y, x = rng.integers(100, 380, 2)
        mask[y, x : x + 40] = True
        surface[mask] -= 50
    return np.clip(surface, 0, 255).astype(np.uint8), mask


@pytest.fixture(scope="module")
def extractor(single_torch_thread) -> FeatureExtractor:
    return FeatureExtractor(BackboneConfig(), device="cpu")


def test_tiled_scoring_finds_a_line_the_256_px_resize_misses(extractor: FeatureExtractor) -> None:
    normals = [_surface(seed, False)[0] for seed in range(6)]
    groups = [str(seed) for seed in range(6)]
    tests = [_surface(100 + seed, False) for seed in range(4)] + [_surface(200 + seed, True) for seed in range(4)]
    labels = [0] * 4 + [1] * 4
    tiling = TilingConfig(tile_size=256, min_overlap=32)  # 480 px: 2 x 2 tiles

    tiled_bank = fit_tiled_memory_bank([extract_tiled_features(extractor, image, tiling).patches for image in normals], groups, BankConfig())
    tiled = [score_tiles(tiled_bank, extract_tiled_features(extractor, image, tiling), ScoringConfig()) for image, _ in tests]
    assert all(scores.map.shape == (480, 480) and len(scores.tiles) == 4 for scores in tiled)

    def resized(image: np.ndarray) -> np.ndarray:
        return extractor.patch_features(extractor.batch([image], (256, 256)))[0].numpy()

    resized_bank = fit_memory_bank([resized(image) for image in normals], groups, BankConfig())
    resized_scores = [score_patches(resized_bank, resized(image), ScoringConfig()).image_score for image, _ in tests]

    assert auroc(labels, [scores.image_score for scores in tiled]) == 1.0
    assert auroc(labels, resized_scores) <= 0.5
    # Each defective image's stitched map peaks within a patch of its line.
    for scores, (_, mask) in zip(tiled[4:], tests[4:]):
        peak = np.array(np.unravel_index(np.argmax(scores.map), scores.map.shape))
        assert np.abs(np.argwhere(mask) - peak).max(axis=1).min() <= 8
