"""Atomic file writes: a crash mid-write never leaves a half-written artifact behind."""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(target: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``target`` atomically."""
    with atomic_path(target) as tmp:
        write(tmp)
    return Path(target)


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(target, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(target: str | os.PathLike, text: str) -> Path:
    return atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(target: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=True, default=_json_default))


def _json_default(value: Any) -> Any:
    # numpy scalars and paths show up in metrics dicts; everything else is a bug.
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# A superseded directory version stays this long, so that a reader which resolved ``target`` to it
# (to read several files of one version) can finish; then the next publication removes it.
SUPERSEDED_GRACE_SECONDS = 600.0
# What a killed writer left behind (an unfinished directory, an unpublished link) is removed after this.
ABANDONED_SECONDS = 24 * 3600.0


@contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty directory to fill; it is published as ``target`` only when the block succeeds.

    ``target`` is a symbolic link to a complete version directory beside it (``.<name>.v-<id>``).
    Publishing renames a new link over it (``os.replace``, atomic on POSIX), so readers of ``target``
    always find one complete version, never a missing or half-written one, and concurrent writers
    never fail: the last one to publish wins. To read several files of one version, resolve
    ``target`` first (``Path.resolve()``). A ``target`` that an older release left as a plain
    directory is moved aside once, non-atomically.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield partial
        os.utime(partial)  # complete now: no other writer may take it for a stale version
        version = target.parent / f".{target.name}.v-{uuid.uuid4().hex}"
        os.rename(partial, version)
        _publish(version, target)
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    _remove_stale_versions(target)


def _publish(version: Path, target: Path) -> None:
    link = target.parent / f".{target.name}.link-{uuid.uuid4().hex}"
    os.symlink(version.name, link)  # relative: the tree stays valid when moved or mounted elsewhere
    previous = os.readlink(target) if target.is_symlink() else None
    if target.is_dir() and not target.is_symlink():
        _move_aside(target)
    os.replace(link, target)
    if previous is not None:
        with suppress(FileNotFoundError):
            os.utime(target.parent / previous)  # superseded now: the grace period starts here


def _move_aside(directory: Path) -> None:
    with suppress(FileNotFoundError):  # a concurrent writer moved it first
        os.rename(directory, directory.parent / f".{directory.name}.v-{uuid.uuid4().hex}")


def _remove_stale_versions(target: Path) -> None:
    """Superseded versions past the grace period, and what killed writers left behind."""
    current = os.readlink(target) if target.is_symlink() else None
    now = time.time()
    for entry in target.parent.glob(f".{glob.escape(target.name)}.*"):
        kind = entry.name[len(target.name) + 2 :].split("-", 1)[0]
        try:
            age = now - entry.lstat().st_mtime
        except FileNotFoundError:  # removed by a concurrent writer
            continue
        superseded = kind == "v" and entry.name != current and age > SUPERSEDED_GRACE_SECONDS
        abandoned = kind in ("partial", "link") and age > ABANDONED_SECONDS
        if superseded or abandoned:
            _remove(entry)


def _remove(entry: Path) -> None:
    if entry.is_symlink():
        entry.unlink(missing_ok=True)
    else:
        shutil.rmtree(entry, ignore_errors=True)
