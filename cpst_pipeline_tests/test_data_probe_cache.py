"""build_index with a probe cache: unchanged files are not read again, changed ones always are."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from cpst_pipeline.data.index import IndexResult, build_index
from cpst_pipeline.data.layouts import DatasetRoot
from cpst_pipeline_tests.test_data_layouts import make_generic, write_image, write_mask


def index_with_cache(root: Path, cache: Path) -> IndexResult:
    return build_index([DatasetRoot(root)], probe_cache=cache)


def test_unchanged_files_are_not_read_again(tmp_path: Path) -> None:
    root, cache = make_generic(tmp_path / "data"), tmp_path / "probes.parquet"
    first = index_with_cache(root, cache)
    second = index_with_cache(root, cache)
    assert first.images_read == 5 and second.images_read == 0
    pd.testing.assert_frame_equal(first.index, second.index)
    pd.testing.assert_frame_equal(build_index([DatasetRoot(root)]).index, second.index)


def test_new_and_changed_files_are_read(tmp_path: Path) -> None:
    root, cache = make_generic(tmp_path / "data"), tmp_path / "probes.parquet"
    before = index_with_cache(root, cache).index.set_index("path")
    changed = root / "metal" / "good" / "a.png"
    write_image(changed, size=(48, 40))
    write_image(root / "metal" / "good" / "new.png")
    after = index_with_cache(root, cache)
    assert after.images_read == 2
    row = after.index.set_index("path").loc[str(changed)]
    assert (row["width"], row["height"]) == (48, 40)
    assert row["content_hash"] != before.loc[str(changed), "content_hash"]


def test_a_file_broken_since_the_last_run_is_quarantined(tmp_path: Path) -> None:
    root, cache = make_generic(tmp_path / "data"), tmp_path / "probes.parquet"
    index_with_cache(root, cache)
    image = root / "metal" / "good" / "b.png"
    image.write_bytes(image.read_bytes()[:40])
    write_mask(root / "metal" / "masks" / "scratch" / "s1.png", defective=True, size=(30, 30))
    result = index_with_cache(root, cache)
    reasons = dict(zip(result.quarantine["path"].map(lambda p: Path(p).name), result.quarantine["reason"]))
    assert set(reasons) == {"b.png", "s1.png"} and "mask size 30x30" in reasons["s1.png"]
    assert result.images_read == 2 and len(result.index) == 3


def test_same_size_and_time_counts_as_unchanged(tmp_path: Path) -> None:
    """The documented rule (as make and rsync): a rewrite that keeps size and mtime is not seen."""
    root, cache = make_generic(tmp_path / "data"), tmp_path / "probes.parquet"
    index_with_cache(root, cache)
    image = root / "metal" / "good" / "a.png"
    stat = image.stat()
    image.write_bytes(bytes(reversed(image.read_bytes())))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert index_with_cache(root, cache).images_read == 0
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert "a.png" in index_with_cache(root, cache).quarantine["path"].iloc[0]


def test_cache_keeps_only_files_of_the_last_run(tmp_path: Path) -> None:
    root, cache = make_generic(tmp_path / "data"), tmp_path / "probes.parquet"
    index_with_cache(root, cache)
    (root / "metal" / "spot" / "p2.png").unlink()
    index_with_cache(root, cache)
    assert sorted(Path(p).name for p in pd.read_parquet(cache)["path"]) == ["a.png", "b.png", "p1.png", "s1.png"]


def test_unreadable_cache_is_rebuilt(tmp_path: Path) -> None:
    root, cache = make_generic(tmp_path / "data"), tmp_path / "probes.parquet"
    cache.write_bytes(b"not parquet")
    assert index_with_cache(root, cache).images_read == 5
    assert index_with_cache(root, cache).images_read == 0
    # a cache written with other columns (another version) is rebuilt too
    pd.read_parquet(cache).drop(columns="mask_kind").to_parquet(cache)
    assert index_with_cache(root, cache).images_read == 5
