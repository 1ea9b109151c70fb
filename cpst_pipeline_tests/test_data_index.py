"""build_index: rows, groups and the quarantine of bad files."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cpst_pipeline.data.index import INDEX_COLUMNS, QUARANTINE_COLUMNS, IndexResult, build_index
from cpst_pipeline.data.layouts import DatasetRoot
from cpst_pipeline_tests.test_data_layouts import (
    make_generic,
    make_kolektor,
    make_magnetic_tile,
    make_neu,
    write_image,
    write_mask,
)


def index_of(*roots: Path) -> IndexResult:
    return build_index([DatasetRoot(root) for root in roots])


def reasons(result: IndexResult) -> dict[str, str]:
    return dict(zip(result.quarantine["path"].map(lambda p: Path(p).name), result.quarantine["reason"]))


def test_index_columns_ids_and_order(tmp_path: Path) -> None:
    result = index_of(make_generic(tmp_path / "a", "metal"), make_neu(tmp_path / "NEU-DET"))
    index = result.index
    assert list(index.columns) == INDEX_COLUMNS
    assert list(result.quarantine.columns) == QUARANTINE_COLUMNS and result.quarantine.empty
    assert len(index) == 8
    assert list(zip(index["domain"], index["path"])) == sorted(zip(index["domain"], index["path"]))
    row = index.iloc[0]
    assert row["image_id"] == hashlib.sha1(row["path"].encode()).hexdigest()[:16]
    assert (row["width"], row["height"], row["mode"]) == (40, 32, "L")
    assert index["content_hash"].str.len().eq(32).all() and index["content_hash"].is_unique
    normal = index[index["label"] == "normal"].iloc[0]
    assert normal["mask_path"] is None and normal["mask_kind"] is None  # None, not NaN
    assert set(index["mask_kind"].dropna()) == {"pixel", "boxes"}


def test_ungrouped_images_are_their_own_group(tmp_path: Path) -> None:
    index = index_of(make_magnetic_tile(tmp_path / "mt")).index
    assert index["group_id"].is_unique
    assert "magnetic_tile/blowhole/exp1_num_3.jpg" in set(index["group_id"])


def test_kolektor_parts_and_byte_identical_folders_share_a_group(tmp_path: Path) -> None:
    index = index_of(make_kolektor(tmp_path / "KolektorSDD")).index
    groups = index.groupby(index["path"].map(lambda p: Path(p).parent.name))["group_id"].unique()
    assert list(groups["kos01"]) == list(groups["kos26"]) == ["kolektor/kos01"]
    assert list(groups["kos02"]) == ["kolektor/kos02"]


def test_duplicates_in_one_domain_with_one_label_share_a_group(tmp_path: Path) -> None:
    root = make_generic(tmp_path / "data", "metal")
    shutil.copy(root / "metal" / "good" / "a.png", root / "metal" / "good" / "copy.png")
    index = index_of(root).index
    copies = index[index["path"].str.endswith(("metal/good/a.png", "metal/good/copy.png"))]
    assert len(copies) == 2 and copies["group_id"].nunique() == 1
    assert copies["group_id"].iloc[0] == "metal/good/a.png"


def test_duplicates_across_domains_or_labels_are_quarantined_together(tmp_path: Path) -> None:
    root = make_generic(tmp_path / "data", "metal")
    make_generic(root, "wood")
    shutil.copy(root / "metal" / "good" / "a.png", root / "wood" / "good" / "copy.png")
    shutil.copy(root / "metal" / "good" / "b.png", root / "metal" / "scratch" / "b_again.png")
    result = index_of(root)
    copies = ["metal/good/a.png", "wood/good/copy.png", "metal/good/b.png", "metal/scratch/b_again.png"]
    assert {str(root / path) for path in copies}.isdisjoint(result.index["path"])
    found = reasons(result)
    assert found["a.png"] == f"same image in domains metal and wood: same bytes as {root / 'wood' / 'good' / 'copy.png'}"
    assert found["copy.png"].startswith("same image in domains metal and wood: ")
    assert found["b.png"].startswith("label conflict: labelled anomaly and normal, same bytes as ")
    assert found["b_again.png"].endswith(f"same bytes as {root / 'metal' / 'good' / 'b.png'}")


def test_bad_files_are_quarantined_with_reasons(tmp_path: Path) -> None:
    root = make_generic(tmp_path / "data", "metal")
    good = root / "metal" / "good"
    jpeg = write_image(good / "cut.jpg").read_bytes()
    (good / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (good / "text.png").write_text("not really a png")
    write_image(root / "metal" / "scratch" / "wrong_size.png")
    write_mask(root / "metal" / "masks" / "scratch" / "wrong_size.png", defective=True, size=(100, 80))
    write_image(root / "metal" / "scratch" / "broken.png")
    (root / "metal" / "masks" / "scratch" / "broken.png").write_bytes(b"")
    (root / "empty_domain").mkdir()

    result = index_of(root)
    assert reasons(result) == {
        "cut.jpg": "truncated image",
        "text.png": "unreadable: not an image file or an unsupported format",
        "wrong_size.png": "mask size 100x80 does not match image 40x32",
        "broken.png": "mask unreadable: empty file",
        "empty_domain": "domain has no images",
    }
    assert len(result.index) == 5  # the good files of make_generic are all still indexed
    assert set(result.quarantine["domain"]) == {"metal", "empty_domain"}


def test_16bit_png_is_indexed(tmp_path: Path) -> None:
    root = make_generic(tmp_path / "data", "metal")
    deep = np.linspace(0, 65535, 40 * 32).reshape(32, 40).astype(np.uint16)
    Image.fromarray(deep).save(root / "metal" / "good" / "deep.png")
    index = index_of(root).index
    row = index[index["path"].str.endswith("deep.png")].iloc[0]
    assert row["mode"].startswith("I") and (row["width"], row["height"]) == (40, 32)


def test_overlapping_roots_index_each_file_once(tmp_path: Path) -> None:
    root = make_generic(tmp_path / "data", "metal")
    result = build_index([DatasetRoot(root), DatasetRoot(root / "metal", "generic")])
    assert len(result.index) == 5 and result.index["path"].is_unique
    assert result.quarantine.empty and result.account["path"].is_unique


def test_progress_reports_every_image(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    root = make_neu(tmp_path / "NEU-DET")
    build_index([DatasetRoot(root)], progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_missing_root_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="do not exist.*absent"):
        index_of(make_neu(tmp_path / "NEU-DET"), tmp_path / "absent")
    with pytest.raises(ValueError, match="no dataset roots"):
        build_index([])


def test_root_without_usable_images_raises(tmp_path: Path) -> None:
    root = tmp_path / "data" / "metal" / "good"
    root.mkdir(parents=True)
    (root / "bad.png").write_bytes(b"nope")
    expected = "no usable image .*1 files or folders rejected.*bad.png: unreadable"
    with pytest.raises(ValueError, match=expected):
        index_of(tmp_path / "data")


def test_unrecognised_root_is_quarantined_while_others_are_indexed(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    write_image(loose / "x.png")
    result = index_of(make_neu(tmp_path / "NEU-DET"), loose)
    assert len(result.index) == 3
    assert list(result.quarantine["path"]) == [str(loose), str(loose / "x.png")]
    assert list(result.quarantine["kind"]) == ["folder", "file"]
    assert "match a known dataset layout" in result.quarantine["reason"].iloc[0]
    assert result.quarantine["reason"].iloc[1] == "image outside the layout's image folders"
    with pytest.raises(ValueError, match="no usable image.*match a known dataset layout"):
        index_of(loose)
