"""Shared fixtures: a tiny generated dataset, and temporary Dagster and MLflow homes."""

from pathlib import Path

import pytest
import torch

from cpst_pipeline.benchmark.__main__ import run_pipeline
from cpst_pipeline.data.demo import generate_demo_dataset
from cpst_pipeline.features.embed import ResolutionConfig
from cpst_pipeline.pipeline.config import PipelineConfig
from cpst_pipeline.pipeline.quality_gates import QualityBounds

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"
# Six test images per domain make the tiny model's figures noise: tests that register it use
# these bounds (the gates themselves are tested on purpose-built calibrations and a degenerate model).
LENIENT_GATES = QualityBounds(max_false_positive_rate=1.0, min_auroc=0.0, min_val_defects=0)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """Three domains x 30 images at 96 px: big enough for every split, small enough to embed in seconds."""
    return generate_demo_dataset(tmp_path_factory.mktemp("demo"), seed=1, images_per_domain=30, size=96)


@pytest.fixture(scope="module")
def single_torch_thread():
    """Tiny tensors: one thread avoids oversubscription on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_demo, tmp_path_factory) -> dict:
    """The pipeline's own steps (no Dagster, nothing registered) on the tiny demo at 64 px:
    ``config``, ``splits``, ``evaluation`` (with ``cascade_dir``) and the other step outputs."""
    config = PipelineConfig(
        data_dir=tmp_path_factory.mktemp("tiny_pipeline"),
        dataset_roots=str(tiny_demo),
        resolution=ResolutionConfig(heatmap_short_side=64, gate_short_side=64),
    )
    return {"config": config, **run_pipeline(config)}
