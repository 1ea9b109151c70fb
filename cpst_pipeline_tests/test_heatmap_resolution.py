"""The pipeline tries larger heatmap inputs for large images on val, and keeps what it chose."""

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

import cpst_pipeline.pipeline.heatmap_resolution as heatmap_resolution
from cpst_pipeline.data.demo import SMALL_DEFECT_CONTRAST, SMALL_DEFECT_TYPES, generate_demo_dataset
from cpst_pipeline.data.index import build_index
from cpst_pipeline.data.layouts import DatasetRoot
from cpst_pipeline.data.splits import assign_splits
from cpst_pipeline.features.embed import ResolutionConfig
from cpst_pipeline.features.resolution import ResolutionTrialConfig
from cpst_pipeline.features.tiling import tile_grid, tiled_image_size
from cpst_pipeline.pipeline.domain_images import DomainImages, embed_domain_images
from cpst_pipeline_tests.conftest import tiny_settings


def sizes(height: int, width: int) -> pd.DataFrame:
    return pd.DataFrame({"height": [height], "width": [width]})


@pytest.mark.parametrize(
    ("height", "width", "short_side", "expected"),
    [
        (640, 640, 256, ["256", "384", "tiled x1"]),
        (1024, 1024, 256, ["256", "384", "tiled x0.6875"]),
        (500, 1250, 256, ["256"]),
        (160, 160, 64, ["64", "96", "tiled x1"]),
        (96, 96, 64, ["64"]),
    ],
)
def test_candidates_only_for_images_twice_the_default(height, width, short_side, expected):
    candidates = heatmap_resolution.served_candidates(sizes(height, width), ResolutionConfig(heatmap_short_side=short_side), ResolutionTrialConfig())
    assert [c.name for c in candidates] == expected
    for tiling in (c.tiling for c in candidates if c.tiling is not None):
        # tiles of the default input size, at most three across the short side
        assert tiling.tile_size == short_side
        grid = tile_grid(tiled_image_size(height, width, tiling), tiling)
        assert min(len(grid.rows), len(grid.cols)) == 3


@pytest.fixture(scope="module")
def large_image_splits(tmp_path_factory) -> pd.DataFrame:
    """One domain of 160 px images with small, faint defects: 2.5x the tests' 64 px default."""
    root = generate_demo_dataset(tmp_path_factory.mktemp("large"), seed=2, images_per_domain=30, size=160,
                                 defect_types=SMALL_DEFECT_TYPES, defect_contrast=SMALL_DEFECT_CONTRAST)
    splits = assign_splits(build_index([DatasetRoot(root, "generic")]).index)
    return splits[splits["domain"] == "brushed_metal"]


def test_a_large_image_domain_gets_the_resolution_its_val_chose(large_image_splits, tmp_path, monkeypatch, single_torch_thread):
    config = tiny_settings(tmp_path, Path("unused")).pipeline_config()
    images, _ = embed_domain_images(large_image_splits, "brushed_metal", config, log=lambda _: None)
    choice = images.resolution
    assert [m["candidate"] for m in choice["measurements"]] == ["64", "96", "tiled x1"]
    assert all(m["val_image_auroc"] is not None and m["seconds_per_image"] > 0 for m in choice["measurements"])
    chosen = next(c for c in heatmap_resolution.served_candidates(large_image_splits, config.resolution, config.resolution_trial) if c.name == choice["chosen"])
    trial = heatmap_resolution.CandidateRun(None, chosen, heatmap_resolution.median_size(large_image_splits), config.resolution.max_aspect)
    assert images.inputs == replace(trial.inputs, gate_size=images.inputs.gate_size)  # served as it was tried
    # Stored with the images, and a second run with the same images reads the trial back instead of re-running it.
    images.save(tmp_path / "saved")
    assert DomainImages.load(tmp_path / "saved").resolution == choice
    monkeypatch.setattr(heatmap_resolution, "measure_candidate", lambda *args: pytest.fail("trial re-run"))
    again, computed = embed_domain_images(large_image_splits, "brushed_metal", config, log=lambda _: None)
    assert again.resolution == choice and again.inputs == images.inputs and computed == 0
