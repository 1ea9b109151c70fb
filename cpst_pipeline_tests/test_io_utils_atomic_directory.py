"""atomic_directory under concurrent writers and readers: readers never see a missing or half-written
directory, writers never fail, the last one to publish wins."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cpst_pipeline import io_utils
from cpst_pipeline.io_utils import atomic_directory

PUBLICATIONS_PER_WRITER = 300


def publish(target: Path, token: str) -> None:
    """A directory whose two files hold the same token: a reader seeing different tokens saw a mix."""
    with atomic_directory(target) as tmp:
        (tmp / "first.txt").write_text(token)
        (tmp / "second.txt").write_text(token)


def test_concurrent_writers_never_fail_and_readers_always_see_one_complete_version(tmp_path) -> None:
    target = tmp_path / "artifact"
    publish(target, "initial")
    writers_done = threading.Event()
    errors: list[str] = []
    reads = [0, 0]
    published = [0, 0]

    def write(writer: int) -> None:
        try:
            for i in range(PUBLICATIONS_PER_WRITER):
                publish(target, f"{writer}-{i}")
                published[writer] += 1
        except Exception as error:  # noqa: BLE001 - the test reports every failure
            errors.append(f"writer {writer}: {error!r}")

    def read_resolved() -> None:
        """Resolve once, then read both files of that one version."""
        while not writers_done.is_set():
            try:
                version = target.resolve(strict=True)
                first, second = (version / "first.txt").read_text(), (version / "second.txt").read_text()
            except Exception as error:  # noqa: BLE001
                errors.append(f"resolved reader: {error!r}")
                return
            if first != second:
                errors.append(f"resolved reader saw a mix: {first} / {second}")
                return
            reads[0] += 1

    def read_by_path() -> None:
        """How most code reads: through ``target`` each time; every file must exist and be whole."""
        while not writers_done.is_set():
            try:
                texts = {(target / name).read_text() for name in ("first.txt", "second.txt")}
            except Exception as error:  # noqa: BLE001
                errors.append(f"path reader: {error!r}")
                return
            if "" in texts:
                errors.append("path reader saw an empty file")
                return
            reads[1] += 1

    writers = [threading.Thread(target=write, args=(w,)) for w in range(2)]
    readers = [threading.Thread(target=read_resolved), threading.Thread(target=read_by_path)]
    for thread in writers + readers:
        thread.start()
    for thread in writers:
        thread.join()
    writers_done.set()
    for thread in readers:
        thread.join()

    assert errors == []
    assert published == [PUBLICATIONS_PER_WRITER] * 2
    assert min(reads) > 0, reads  # the readers really ran while the writers wrote
    # The last publication wins, and each writer's last publication is its final token.
    final = (target / "first.txt").read_text()
    assert final in {f"{w}-{PUBLICATIONS_PER_WRITER - 1}" for w in range(2)}
    assert (target / "second.txt").read_text() == final
    leftovers = [p.name for p in tmp_path.iterdir() if ".partial-" in p.name or ".link-" in p.name]
    assert leftovers == []


def test_a_failed_block_publishes_nothing_and_leaves_nothing(tmp_path) -> None:
    target = tmp_path / "artifact"
    publish(target, "good")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "first.txt").write_text("half")
        raise RuntimeError("writer failed")
    assert (target / "first.txt").read_text() == "good"
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_superseded_versions_are_kept_for_the_grace_period_then_removed(tmp_path, monkeypatch) -> None:
    target = tmp_path / "artifact"
    for token in ("one", "two", "three"):
        publish(target, token)
    versions = sorted(p for p in tmp_path.iterdir() if ".v-" in p.name)
    assert len(versions) == 3  # within the grace period a reader may still be reading the old ones
    monkeypatch.setattr(io_utils, "SUPERSEDED_GRACE_SECONDS", 0.0)
    publish(target, "four")
    remaining = [p for p in tmp_path.iterdir() if ".v-" in p.name]
    assert remaining == [target.resolve()]
    assert (target / "first.txt").read_text() == "four"


def test_a_plain_directory_left_by_an_older_release_is_replaced(tmp_path, monkeypatch) -> None:
    target = tmp_path / "artifact"
    target.mkdir()
    (target / "first.txt").write_text("legacy")
    (target / "legacy-only.txt").write_text("legacy")
    monkeypatch.setattr(io_utils, "SUPERSEDED_GRACE_SECONDS", 0.0)
    publish(target, "new")
    assert target.is_symlink()
    assert sorted(p.name for p in target.iterdir()) == ["first.txt", "second.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["artifact", target.resolve().name])
