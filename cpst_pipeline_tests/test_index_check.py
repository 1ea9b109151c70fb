"""The blocking check on the index: quarantine share per domain, and conflicts between copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
from dagster import AssetKey, DagsterInstance, materialize

from cpst_pipeline.assets.data import dataset_index_and_splits
from cpst_pipeline.data.index_check import IndexCheckConfig, check_index
from cpst_pipeline.definitions import pipeline_resources
from cpst_pipeline.resources import CpstSettings
from cpst_pipeline_tests.test_data_layouts import make_generic, write_image


def _index(domain: str, images: int) -> pd.DataFrame:
    return pd.DataFrame({"domain": [domain] * images, "path": [f"/d/{domain}/good/{i}.png" for i in range(images)]})


def _quarantine(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame([(p, d, r, "file") for p, d, r in rows], columns=["path", "domain", "reason", "kind"])


def test_share_over_the_bound_fails_and_names_the_files() -> None:
    index = pd.concat([_index("metal", 18), _index("wood", 20)])
    quarantine = _quarantine([("/d/metal/good/x.png", "metal", "truncated image"), ("/d/metal/good/y.png", "metal", "empty file")])
    check = check_index(index, quarantine, IndexCheckConfig(max_quarantine_share=0.05))
    assert not check.passed and check.over_bound == {"metal": 0.1} and check.quarantine_share["wood"] == 0.0
    assert "/d/metal/good/x.png: truncated image; /d/metal/good/y.png: empty file" in check.message
    assert check_index(index, quarantine, IndexCheckConfig(max_quarantine_share=0.1)).passed


def test_a_conflict_fails_and_files_outside_every_domain_do_not_count() -> None:
    index = _index("metal", 100)
    loose = _quarantine([("/d/loose.png", "", "image outside the layout's image folders")])
    assert check_index(index, loose, IndexCheckConfig()).passed
    conflict = _quarantine([("/d/metal/good/a.png", "metal", "label conflict: labelled anomaly and normal, same bytes as /d/metal/dent/a.png")])
    check = check_index(index, conflict, IndexCheckConfig(max_quarantine_share=0.5))
    assert not check.passed and check.conflicting_files == ["/d/metal/good/a.png"]
    assert "disagree on label or domain: /d/metal/good/a.png" in check.message


def test_the_failing_check_blocks_what_is_downstream_of_the_index(tmp_path: Path) -> None:
    root = make_generic(tmp_path / "data", "metal")
    for name in ("c.png", "d.png", "e.png"):
        write_image(root / "metal" / "good" / name)
    shutil.copy(root / "metal" / "good" / "a.png", root / "metal" / "scratch" / "a_again.png")
    settings = CpstSettings(data_dir=str(tmp_path / "work"), dataset_roots=str(root))
    instance = DagsterInstance.ephemeral()
    result = materialize(
        [dataset_index_and_splits], resources=pipeline_resources(settings), instance=instance, raise_on_error=False
    )
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed and "a_again.png" in evaluation.description
    assert instance.get_latest_materialization_event(AssetKey("dataset_index")) is not None
    assert instance.get_latest_materialization_event(AssetKey("splits")) is None
    assert instance.get_dynamic_partitions("domain") == []  # no partition for an index not fit to train on
