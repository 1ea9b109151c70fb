"""The image index: every usable image of the dataset roots, checked, hashed and grouped.

Bad files never stop indexing: they land in a quarantine table with the reason, so a user can
see exactly what was left out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cpst_pipeline.data.images import ImageReadError, load_mask, probe_image
from cpst_pipeline.data.layouts import Candidate, DatasetRoot, LayoutNotRecognised, Rejected, iter_candidates
from cpst_pipeline.data.probe_cache import CacheKey, Probe, ProbeCache

INDEX_COLUMNS = [
    "image_id",
    "path",
    "layout",
    "domain",
    "label",
    "defect_type",
    "mask_path",
    "mask_kind",
    "group_id",
    "width",
    "height",
    "mode",
    "content_hash",
]
QUARANTINE_COLUMNS = ["path", "domain", "reason"]
_OPTIONAL_COLUMNS = ("mask_path", "mask_kind")

# Decoding and hashing release the GIL, so a few threads keep both cores busy.
_WORKERS = 4
_HASH_CHUNK_BYTES = 1 << 20

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class IndexResult:
    index: pd.DataFrame
    quarantine: pd.DataFrame
    images_read: int  # images decoded and hashed in this run; the others came from the probe cache


def build_index(roots: list[DatasetRoot], progress: Progress | None = None, probe_cache: Path | None = None) -> IndexResult:
    """Index every image under ``roots``; ``progress(done, total)`` is called as images are checked.

    With ``probe_cache`` (a parquet file, see ``probe_cache.py``), images unchanged since the run
    that wrote it are not read again. Raises ValueError only when a root is missing or no root
    yields a single usable image.
    """
    if not roots:
        raise ValueError("no dataset roots given")
    missing = [str(root.path) for root in roots if not Path(root.path).expanduser().is_dir()]
    if missing:
        raise ValueError(f"dataset roots do not exist or are not folders: {', '.join(missing)}")

    candidates, rejected = _unique_candidates(_records_of(roots))
    cache = ProbeCache(probe_cache)
    rows, unreadable, images_read = _inspect_all(candidates, cache, progress)
    rejected += unreadable
    if not rows:
        examples = "; ".join(f"{r.path}: {r.reason}" for r in rejected[:3])
        raise ValueError(
            f"no usable image found under {', '.join(str(root.path) for root in roots)} "
            f"({len(rejected)} files or folders rejected, e.g. {examples or 'none'})"
        )
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    for column in _OPTIONAL_COLUMNS:
        # pandas' string dtype would turn None into NaN, which is truthy: keep real Nones.
        index[column] = pd.Series([row[column] for row in rows], dtype=object)
    index["group_id"] = _group_ids(index)
    index = index.sort_values(["domain", "path"], kind="stable", ignore_index=True)
    quarantine = pd.DataFrame([vars(r) for r in rejected], columns=QUARANTINE_COLUMNS)
    # Overlapping roots report the same bad file twice; once is enough.
    quarantine = quarantine.drop_duplicates().sort_values(["domain", "path", "reason"], ignore_index=True)
    cache.save()
    return IndexResult(index=index, quarantine=quarantine, images_read=images_read)


def image_id(path: str) -> str:
    """Stable id of an image: derived from its absolute path, so re-indexing keeps it."""
    return hashlib.sha1(path.encode("utf-8")).hexdigest()[:16]


def _records_of(roots: list[DatasetRoot]) -> Iterator[Candidate | Rejected]:
    for root in roots:
        try:
            yield from iter_candidates(root.path, root.layout)
        except LayoutNotRecognised as error:
            # One unrecognised root is reported like a bad file; the others are still indexed.
            yield Rejected(str(root.path), Path(root.path).name, str(error))


def _unique_candidates(records: Iterable[Candidate | Rejected]) -> tuple[list[Candidate], list[Rejected]]:
    # Overlapping roots (a folder and its parent) would otherwise index a file twice.
    candidates: dict[str, Candidate] = {}
    rejected: list[Rejected] = []
    for record in records:
        if isinstance(record, Rejected):
            rejected.append(record)
        elif record.path in candidates:
            rejected.append(Rejected(record.path, record.domain, "duplicate path"))
        else:
            candidates[record.path] = record
    return list(candidates.values()), rejected


def _inspect_all(candidates: list[Candidate], cache: ProbeCache, progress: Progress | None) -> tuple[list[dict], list[Rejected], int]:
    """Index rows of the usable candidates, the rejected ones, and how many files were read."""
    rows: list[dict] = []
    rejected: list[Rejected] = []
    unknown: list[tuple[Candidate, CacheKey | None]] = []
    for candidate in candidates:
        key, probe = cache.lookup(candidate.path, candidate.mask_path, candidate.mask_kind)
        if probe is None:
            unknown.append((candidate, key))
        else:
            cache.remember(key, probe)
            rows.append(_index_row(candidate, probe))
    if progress is not None and rows:
        progress(len(rows), len(candidates))
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        futures = {pool.submit(_probe, candidate): (candidate, key) for candidate, key in unknown}
        for done, future in enumerate(as_completed(futures), start=len(rows) + 1):
            candidate, key = futures[future]
            try:
                probe = future.result()
            except ImageReadError as error:
                rejected.append(Rejected(candidate.path, candidate.domain, error.reason))
            else:
                cache.remember(key, probe)
                rows.append(_index_row(candidate, probe))
            if progress is not None:
                progress(done, len(candidates))
    return rows, rejected, len(unknown)


def _probe(candidate: Candidate) -> Probe:
    """Check that the image (and its mask) decode completely; raises ImageReadError."""
    info = probe_image(candidate.path)
    if candidate.mask_path is not None:
        load_mask(candidate.mask_path, candidate.mask_kind, (info.width, info.height))
    return Probe(width=info.width, height=info.height, mode=info.mode, content_hash=_content_hash(candidate.path))


def _index_row(candidate: Candidate, probe: Probe) -> dict:
    return {
        "image_id": image_id(candidate.path),
        "path": candidate.path,
        "layout": candidate.layout,
        "domain": candidate.domain,
        "label": candidate.label,
        "defect_type": candidate.defect_type,
        "mask_path": candidate.mask_path,
        "mask_kind": candidate.mask_kind,
        "group_id": _own_group_key(candidate),
        "width": probe.width,
        "height": probe.height,
        "mode": probe.mode,
        "content_hash": probe.content_hash,
    }


def _content_hash(path: str) -> str:
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as file:
            while chunk := file.read(_HASH_CHUNK_BYTES):
                digest.update(chunk)
    except OSError as error:
        raise ImageReadError(path, f"unreadable: {error.strerror or error}") from error
    return digest.hexdigest()


def _own_group_key(candidate: Candidate) -> str:
    """The group an image forms before duplicates are merged: its part, or else the image itself.

    Images from two roots with the same domain, defect type and file name share this key and
    so a group; that only makes splitting more conservative.
    """
    if candidate.group_key is not None:
        return f"{candidate.domain}/{candidate.group_key}"
    return f"{candidate.domain}/{candidate.defect_type}/{Path(candidate.path).name}"


def _group_ids(index: pd.DataFrame) -> pd.Series:
    """Merge groups that share byte-identical images, transitively; each group is named after
    its smallest own key, so ids are readable and do not depend on row order."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]  # path halving keeps the trees shallow
            key = parent[key]
        return key

    def union(a: str, b: str) -> None:
        root_a, root_b = find(a), find(b)
        if root_a != root_b:
            # The smaller key becomes the root, so a group's root is its smallest member key.
            parent[max(root_a, root_b)] = min(root_a, root_b)

    for _, keys in index.groupby("content_hash")["group_id"]:
        first, *others = keys.tolist()
        for other in others:
            union(first, other)
    return index["group_id"].map(find)
