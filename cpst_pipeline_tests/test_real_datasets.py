"""Indexing and splitting the real datasets in ../shared/datasets (read-only; see its README)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from cpst_pipeline.data.images import load_mask
from cpst_pipeline.data.index import IndexResult, build_index
from cpst_pipeline.data.layouts import DatasetRoot
from cpst_pipeline.data.splits import SplitConfig, assign_splits, domains_without_normals, leaked_groups

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"

pytestmark = pytest.mark.skipif(not DATASETS.is_dir(), reason=f"real datasets not found at {DATASETS}")


@pytest.fixture(scope="module")
def indexed() -> IndexResult:
    # The whole folder as one root: each dataset's layout is detected on its own.
    result = build_index([DatasetRoot(DATASETS)])
    assert result.quarantine.empty, result.quarantine.to_string()
    return result


@pytest.fixture(scope="module")
def index(indexed: IndexResult) -> pd.DataFrame:
    return indexed.index


def test_every_file_is_accounted_for(indexed: IndexResult) -> None:
    on_disk = sum(len(files) for _, _, files in os.walk(DATASETS))
    summary = indexed.summary()
    assert summary.files_seen == on_disk
    # 3,543 images; their 2,591 masks and box files; Magnetic-tile's 952 (empty) MT_Free masks and
    # the datasets' README are ignored by name.
    assert summary.files_by_outcome == {"indexed": 3543, "quarantined": 0, "mask_of_indexed": 2591, "ignored": 953}
    ignored = {(r.rule, r.files) for r in summary.rules if r.outcome == "ignored"}
    assert ignored == {("companion of an indexed image (same name), not used", 952), ("notes or metadata file", 1)}


@pytest.mark.parametrize(
    "domain, layout, normal, anomaly",
    [
        ("kolektor", "kolektor", 347, 52),
        ("magnetic_tile", "magnetic_tile", 952, 392),
        ("neu_steel", "neu", 0, 1800),
    ],
)
def test_counts_match_the_readme(
    index: pd.DataFrame, domain: str, layout: str, normal: int, anomaly: int
) -> None:
    rows = index[index["domain"] == domain]
    assert set(rows["layout"]) == {layout}
    counts = rows["label"].value_counts()
    assert (counts.get("normal", 0), counts.get("anomaly", 0)) == (normal, anomaly)


def test_neu_has_six_classes_of_300(index: pd.DataFrame) -> None:
    neu = index[index["domain"] == "neu_steel"]
    expected = {"crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"}
    assert neu["defect_type"].value_counts().to_dict() == dict.fromkeys(expected, 300)
    assert set(neu["mask_kind"]) == {"boxes"}


def test_magnetic_tile_labels_come_from_folders(index: pd.DataFrame) -> None:
    tiles = index[index["domain"] == "magnetic_tile"]
    assert tiles["defect_type"].value_counts().to_dict() == {
        "good": 952, "blowhole": 115, "uneven": 103, "break": 85, "crack": 57, "fray": 32,
    }
    # The README lists four defective images whose masks are empty: they stay anomalies.
    anomalies = tiles[tiles["label"] == "anomaly"]
    empty = {
        Path(row.path).stem
        for row in anomalies.itertuples()
        if not load_mask(row.mask_path, "pixel", (row.width, row.height)).any()
    }
    assert empty == {"exp4_num_45057", "exp4_num_352527", "exp3_num_45042", "exp4_num_124690"}


def test_byte_identical_kolektor_folders_share_a_group(index: pd.DataFrame) -> None:
    kolektor = index[index["domain"] == "kolektor"]
    folder = kolektor["path"].map(lambda p: Path(p).parent.name)
    group_of_folder = kolektor.groupby(folder)["group_id"].unique()
    assert list(group_of_folder["kos01"]) == list(group_of_folder["kos26"]) == ["kolektor/kos01"]
    assert list(group_of_folder["kos27"]) == list(group_of_folder["kos34"]) == ["kolektor/kos27"]
    assert kolektor["group_id"].nunique() == 48  # 50 folders, two pairs merged


def test_splits_do_not_leak_and_neu_has_no_memory_bank(index: pd.DataFrame) -> None:
    splits = assign_splits(index, SplitConfig())
    assert leaked_groups(splits) == []
    assert domains_without_normals(splits) == ["neu_steel"]
    for domain, rows in splits.groupby("domain"):
        for split in ("val_mix", "test_mix"):
            labels = set(rows.loc[rows["split"] == split, "label"])
            assert "anomaly" in labels and (domain == "neu_steel" or "normal" in labels), (domain, split)
    assert set(splits.loc[splits["split"] == "train_normal", "label"]) == {"normal"}


def test_neu_box_masks_are_not_empty(index: pd.DataFrame) -> None:
    sample = index[index["domain"] == "neu_steel"].iloc[::150]
    for row in sample.itertuples():
        assert load_mask(row.mask_path, "boxes", (row.width, row.height)).any(), row.path
