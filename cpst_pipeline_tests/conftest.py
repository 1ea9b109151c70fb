"""Shared fixtures: a tiny generated dataset, and temporary Dagster and MLflow homes."""

from pathlib import Path

import pytest
import torch

from cpst_pipeline.data.demo import generate_demo_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"


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
