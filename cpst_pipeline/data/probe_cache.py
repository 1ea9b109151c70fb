"""What indexing learnt about each image file, kept between runs.

Checking an image means decoding it completely (and its mask) and hashing its bytes: most of an
index run. A file whose path, size and modification time are unchanged since the last run is
taken as unchanged (the rule make, rsync and git's index use) and is not read again. Deleting
the cache file makes the next run check every file.
"""

from __future__ import annotations

import os
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import pandas as pd

from cpst_pipeline.io_utils import atomic_path


@dataclass(frozen=True)
class FileStamps:
    """Size and modification time of an image and of its mask (-1 when it has none)."""

    size: int
    mtime_ns: int
    mask_size: int
    mask_mtime_ns: int

    @classmethod
    def of(cls, path: str, mask_path: str | None) -> FileStamps | None:
        """None when a file cannot be stat'ed: it is then checked, and rejected, as usual."""
        try:
            image = os.stat(path)
            mask = os.stat(mask_path) if mask_path is not None else None
        except OSError:
            return None
        return cls(image.st_size, image.st_mtime_ns, mask.st_size if mask else -1, mask.st_mtime_ns if mask else -1)


@dataclass(frozen=True)
class Probe:
    """What checking an image found."""

    width: int
    height: int
    mode: str
    pixel_std: float
    content_hash: str


_KEY_COLUMNS = ["path", "mask_path", "mask_kind"] + [f.name for f in fields(FileStamps)]
_COLUMNS = _KEY_COLUMNS + [f.name for f in fields(Probe)]


CacheKey = tuple[str, "str | None", "str | None", FileStamps]


class ProbeCache:
    """Probes of good images by (path, mask path and kind, stamps); ``save`` keeps only this run's files.

    Without a ``path`` it remembers nothing, and every file is read."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path is not None else None
        self._known: dict[CacheKey, Probe] = {}
        self._seen: dict[CacheKey, Probe] = {}
        if self.path is not None and self.path.exists():
            for row in _read_or_empty(self.path).itertuples(index=False):
                mask_path, mask_kind = (value if isinstance(value, str) else None for value in (row.mask_path, row.mask_kind))
                stamps = FileStamps(row.size, row.mtime_ns, row.mask_size, row.mask_mtime_ns)
                self._known[(row.path, mask_path, mask_kind, stamps)] = Probe(row.width, row.height, row.mode, row.pixel_std, row.content_hash)

    def lookup(self, path: str, mask_path: str | None, mask_kind: str | None) -> tuple[CacheKey | None, Probe | None]:
        """The file's key (None: not cacheable) and its probe from the last run, if unchanged."""
        if self.path is None:
            return None, None
        stamps = FileStamps.of(path, mask_path)
        if stamps is None:
            return None, None
        key = (path, mask_path, mask_kind, stamps)
        return key, self._known.get(key)

    def remember(self, key: CacheKey | None, probe: Probe) -> None:
        if key is not None:
            self._seen[key] = probe

    def save(self) -> None:
        if self.path is None:
            return
        rows = [(*key[:3], *astuple(key[3]), *astuple(probe)) for key, probe in self._seen.items()]
        frame = pd.DataFrame(rows, columns=_COLUMNS).astype({"mask_path": object, "mask_kind": object})
        with atomic_path(self.path) as tmp:
            frame.to_parquet(tmp, index=False)


def _read_or_empty(path: Path) -> pd.DataFrame:
    # The cache is only a shortcut: one that cannot be read (another version's columns) is rebuilt.
    try:
        return pd.read_parquet(path, columns=_COLUMNS)
    except (OSError, ValueError, KeyError):
        return pd.DataFrame(columns=_COLUMNS)
