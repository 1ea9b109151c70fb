"""Shared fixtures: a tiny generated dataset, and temporary Dagster and MLflow homes."""

from pathlib import Path

import pytest
import torch

from cpst_pipeline.benchmark.pipeline_run import run_pipeline
from cpst_pipeline.data.demo import generate_demo_dataset
from cpst_pipeline.pipeline.quality_gates import QualityBounds
from cpst_pipeline.resources import CpstSettings

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


def tiny_settings(data_dir: Path, dataset_roots: Path) -> CpstSettings:
    """The project's settings on small images (64 px) with the lenient quality gates."""
    return CpstSettings(
        data_dir=str(data_dir), dataset_roots=str(dataset_roots), heatmap_short_side=64, gate_short_side=64,
        max_false_positive_rate=LENIENT_GATES.max_false_positive_rate, min_auroc=LENIENT_GATES.min_auroc,
        min_val_defects=LENIENT_GATES.min_val_defects,
    )


def pipeline_on(data_dir: Path, dataset_roots: Path) -> dict:
    """The asset graph materialized (nothing registered) on ``dataset_roots``: ``run``, ``config``,
    ``splits`` and ``evaluation`` (the report and cascade folders, as the registry takes them)."""
    run = run_pipeline(tiny_settings(data_dir, dataset_roots))
    return {"run": run, "config": run.config, "splits": run.splits, "evaluation": run.evaluation(data_dir / "published")}


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_demo, tmp_path_factory) -> dict:
    """The whole graph on the tiny demo at 64 px, in its own Dagster instance."""
    return pipeline_on(tmp_path_factory.mktemp("tiny_pipeline"), tiny_demo)
