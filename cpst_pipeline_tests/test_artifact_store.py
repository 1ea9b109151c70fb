"""Asset values stored as plain files behind an atomically swapped pointer, locally and on fsspec storage."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from dagster import DagsterInstance, asset, materialize
from upath import UPath

from cpst_pipeline.cascade.policy import DomainCalibration
from cpst_pipeline.gate.model import GateNet
from cpst_pipeline.patchcore.bank import BankConfig, build_memory_bank
from cpst_pipeline.pipeline.artifact_store import KEEP_PREVIOUS, POINTER, read_artifact, write_artifact
from cpst_pipeline.definitions import pipeline_resources
from cpst_pipeline.resources import CpstSettings


@pytest.fixture(params=["local", "memory"])
def folder(request, tmp_path):
    if request.param == "local":
        return UPath(tmp_path / "store" / "asset")
    return UPath(f"memory://cpst-test/{tmp_path.name}/asset")


def test_values_round_trip_by_type(folder, single_torch_thread):
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    pd.testing.assert_frame_equal(read_artifact(write_artifact(folder, frame).parent), frame)

    bank = build_memory_bank(np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32), BankConfig(coreset_ratio=0.5))
    loaded = read_artifact(write_artifact(folder, bank).parent)
    np.testing.assert_array_equal(loaded.features, bank.features)
    assert loaded.index.ntotal == bank.index.ntotal

    gate = GateNet(4, ["d"])
    x = torch.ones(2, 4)
    assert torch.equal(read_artifact(write_artifact(folder, gate).parent).predict_proba(x, ["d", "d"]), gate.predict_proba(x, ["d", "d"]))

    calibration = DomainCalibration("d", True, -math.inf, 0.5, heatmap_threshold=math.inf)
    assert read_artifact(write_artifact(folder, calibration).parent) == calibration
    assert read_artifact(write_artifact(folder, None).parent) is None
    assert read_artifact(write_artifact(folder, {"k": [1, 2]}).parent) == {"k": [1, 2]}


def test_pointer_names_the_newest_version_and_old_versions_are_dropped(folder):
    for value in range(4):
        write_artifact(folder, {"value": value})
    assert read_artifact(folder) == {"value": 3}
    pointer = json.loads((folder / POINTER).read_text())
    versions = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert pointer["version"] == versions[-1] and len(versions) == 1 + KEEP_PREVIOUS


def test_unknown_type_and_missing_value_are_clear_errors(folder):
    with pytest.raises(TypeError, match="no codec stores a set"):
        write_artifact(folder, {1, 2})
    with pytest.raises(FileNotFoundError, match="materialize it first"):
        read_artifact(folder / "never_written")


def test_io_manager_folder_follows_the_settings_given_at_launch(tmp_path):
    """The launchpad changes ``settings``; the IO manager (a nested resource) follows it."""

    @asset
    def numbers() -> pd.DataFrame:
        return pd.DataFrame({"n": [1, 2, 3]})

    defs_resources = pipeline_resources(CpstSettings(data_dir=str(tmp_path / "default")))
    run_config = {"resources": {"settings": {"config": {"data_dir": str(tmp_path / "chosen")}}}}
    result = materialize([numbers], resources=defs_resources, run_config=run_config, instance=DagsterInstance.ephemeral())
    assert result.success
    assert (tmp_path / "chosen" / "artifacts" / "assets" / "numbers" / POINTER).exists()
    assert not (tmp_path / "default").exists()
