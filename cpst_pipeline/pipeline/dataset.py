"""Which images exist and which split each belongs to: the steps before any model work."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import pandas as pd

from cpst_pipeline.data.demo import generate_demo_dataset
from cpst_pipeline.data.index import IndexResult, build_index
from cpst_pipeline.data.layouts import DatasetRoot, parse_dataset_roots
from cpst_pipeline.data.splits import assign_splits
from cpst_pipeline.io_utils import atomic_path
from cpst_pipeline.pipeline.config import PipelineConfig

Progress = Callable[[int, int], None]

QUARANTINE_FILE = "quarantine.parquet"
ACCOUNT_FILE = "file_account.parquet"

# What the gate and the router learn from; val and test stay unseen.
TRAINING_SPLITS = ("train_mix", "train_normal")
# The labelled images the calibration fits thresholds on: neither the bank nor the served gate trained on them.
CALIBRATION_SPLITS = ("val_mix", "train_mix")


def dataset_roots(config: PipelineConfig) -> list[DatasetRoot]:
    """The configured roots, or the demo dataset (generated on first use) when none are set."""
    if config.dataset_roots.strip():
        return parse_dataset_roots(config.dataset_roots)
    return [DatasetRoot(str(generate_demo_dataset(config.demo_dir)), "generic")]


def index_datasets(config: PipelineConfig, progress: Progress | None = None) -> IndexResult:
    """Index the roots; the quarantine and the account of every file go beside the index."""
    result = build_index(
        dataset_roots(config), progress=progress, probe_cache=config.artifacts_dir / "index_probes.parquet", rules=config.index_rules
    )
    for table, name in ((result.quarantine, QUARANTINE_FILE), (result.account, ACCOUNT_FILE)):
        with atomic_path(config.artifacts_dir / name) as tmp:
            table.to_parquet(tmp, index=False)
    return result


def split_dataset(index: pd.DataFrame, config: PipelineConfig) -> pd.DataFrame:
    return assign_splits(index, config.splits)


def frame_version(frame: pd.DataFrame) -> str:
    """A short hash of a table's columns and values: equal tables, equal versions."""
    digest = hashlib.sha1(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def anomaly_labels(frame: pd.DataFrame) -> np.ndarray:
    """1 for anomalous images, 0 for normal ones, in row order."""
    return (frame["label"] == "anomaly").to_numpy().astype(int)
