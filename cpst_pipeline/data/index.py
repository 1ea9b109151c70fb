"""The image index: every usable image of the dataset roots, checked, hashed and grouped.

Bad files never stop indexing: they land in a quarantine table with the reason, and every
file under the roots gets one outcome in the account (accounting.py), so a user can see
exactly what was left out and why.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cpst_pipeline.data.accounting import AccountSummary, IndexedFiles, account_files, folder_domains, summarise
from cpst_pipeline.data.images import ImageReadError, load_mask, probe_image
from cpst_pipeline.data.layouts import Candidate, DatasetRoot, LayoutNotRecognised, Rejected, iter_candidates
from cpst_pipeline.data.probe_cache import CacheKey, Probe, ProbeCache
from cpst_pipeline.data.rules import IndexRules
from cpst_pipeline.data.walk import WalkedRoot, walk_root

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
QUARANTINE_COLUMNS = ["path", "domain", "reason", "kind"]  # kind: "file" or "folder"
_OPTIONAL_COLUMNS = ("mask_path", "mask_kind")
LABEL_CONFLICT = "label conflict"
DOMAIN_CONFLICT = "same image in domains"

# Decoding and hashing release the GIL, so a few threads keep both cores busy.
_WORKERS = 4
_HASH_CHUNK_BYTES = 1 << 20

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class IndexResult:
    index: pd.DataFrame
    quarantine: pd.DataFrame  # quarantined files (as in ``account``) and folders
    account: pd.DataFrame  # one row per file under the roots: see accounting.py
    images_read: int  # images decoded and hashed in this run; the others came from the probe cache

    def summary(self) -> AccountSummary:
        return summarise(self.account)


def build_index(
    roots: list[DatasetRoot],
    progress: Progress | None = None,
    probe_cache: Path | None = None,
    rules: IndexRules = IndexRules(),
) -> IndexResult:
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

    walks = [walk_root(Path(root.path).expanduser().resolve(), rules.allow_symlinks_outside_root) for root in roots]
    candidates, rejected = _admitted(_records_of(roots), walks)
    cache = ProbeCache(probe_cache)
    rows, unreadable, images_read = _inspect_all(candidates, cache, progress, rules)
    rows, conflicting = _without_conflicts(rows)
    rejected += unreadable + conflicting
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
    account = account_files(walks, _what_was_found(index, candidates, rejected, walks))
    quarantine = _quarantine_table(account, [r for r in rejected if Path(r.path).is_dir()])
    cache.save()
    return IndexResult(index=index, quarantine=quarantine, account=account, images_read=images_read)


def image_id(path: str) -> str:
    """Stable id of an image: derived from its absolute path, so re-indexing keeps it."""
    return hashlib.sha1(path.encode("utf-8")).hexdigest()[:16]


def conflicts(quarantine: pd.DataFrame) -> pd.DataFrame:
    """The quarantined byte-identical images whose labels or domains disagree."""
    return quarantine[quarantine["reason"].str.startswith((LABEL_CONFLICT, DOMAIN_CONFLICT))]


def _records_of(roots: list[DatasetRoot]) -> Iterator[Candidate | Rejected]:
    for root in roots:
        try:
            yield from iter_candidates(root.path, root.layout)
        except LayoutNotRecognised as error:
            # One unrecognised root is reported like a bad file; the others are still indexed.
            yield Rejected(str(root.path), Path(root.path).name, str(error))


def _admitted(records: Iterable[Candidate | Rejected], walks: list[WalkedRoot]) -> tuple[list[Candidate], list[Rejected]]:
    """The readers' records that the walk lets through, each path once.

    Records under a symlinked folder the walk did not follow are dropped (the symlink has its
    own outcome), as are images the walk already decided about (a loop, a link leaving the root).
    An image whose mask the walk quarantined is rejected with that reason. Overlapping roots
    (a folder and its parent) report a file twice; it is kept once.
    """
    walked = {file.path: file for walk in walks for file in walk.files}
    candidates: dict[str, Candidate] = {}
    rejected: dict[tuple[str, str], Rejected] = {}
    for record in records:
        if any(walk.is_blocked(record.path) for walk in walks):
            continue
        file = walked.get(record.path)
        if file is not None and file.verdict is not None:
            continue
        if isinstance(record, Rejected):
            rejected.setdefault((record.path, record.reason), record)
            continue
        mask = walked.get(record.mask_path) if record.mask_path is not None else None
        if mask is not None and mask.verdict is not None:
            rejected.setdefault((record.path, "mask"), Rejected(record.path, record.domain, f"mask: {mask.verdict.rule}"))
            continue
        candidates.setdefault(record.path, record)
    return list(candidates.values()), list(rejected.values())


def _without_conflicts(rows: list[dict]) -> tuple[list[dict], list[Rejected]]:
    """Byte-identical images must agree on domain and label; where they do not, every copy is
    quarantined, because none of them can be trusted. Agreeing copies stay and share a group."""
    by_hash: dict[str, list[dict]] = {}
    for row in rows:
        by_hash.setdefault(row["content_hash"], []).append(row)
    kept, rejected = [], []
    for copies in by_hash.values():
        domains = sorted({row["domain"] for row in copies})
        labels = sorted({row["label"] for row in copies})
        if len(domains) > 1:
            reason = f"{DOMAIN_CONFLICT} {' and '.join(domains)}:"
        elif len(labels) > 1:
            reason = f"{LABEL_CONFLICT}: labelled {' and '.join(labels)},"
        else:
            kept += copies
            continue
        for row in copies:
            others = ", ".join(other["path"] for other in copies if other is not row)
            rejected.append(Rejected(row["path"], row["domain"], f"{reason} same bytes as {others}"))
    return kept, rejected


def _what_was_found(index: pd.DataFrame, candidates: list[Candidate], rejected: list[Rejected], walks: list[WalkedRoot]) -> IndexedFiles:
    quarantined = {r.path: r.reason for r in rejected}
    return IndexedFiles(
        images=set(index["path"]),
        masks=set(index["mask_path"].dropna()),
        quarantined=quarantined,
        masks_of_quarantined={c.mask_path for c in candidates if c.path in quarantined and c.mask_path is not None},
        domains=folder_domains(
            [(c.path, c.domain) for c in candidates] + [(r.path, r.domain) for r in rejected], [w.root for w in walks]
        ),
    )


def _quarantine_table(account: pd.DataFrame, folders: list[Rejected]) -> pd.DataFrame:
    files = account[account["outcome"] == "quarantined"][["path", "domain", "reason"]].assign(kind="file")
    folder_rows = pd.DataFrame([(r.path, r.domain, r.reason, "folder") for r in folders], columns=QUARANTINE_COLUMNS)
    table = pd.concat([files, folder_rows], ignore_index=True)[QUARANTINE_COLUMNS]
    return table.drop_duplicates().sort_values(["domain", "path", "reason"], ignore_index=True)


def _inspect_all(
    candidates: list[Candidate], cache: ProbeCache, progress: Progress | None, rules: IndexRules
) -> tuple[list[dict], list[Rejected], int]:
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
            _keep_if_within_limits(candidate, probe, rules, rows, rejected)
    if progress is not None and rows:
        progress(len(rows) + len(rejected), len(candidates))
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        futures = {pool.submit(_probe, candidate, rules.max_pixels): (candidate, key) for candidate, key in unknown}
        for done, future in enumerate(as_completed(futures), start=len(rows) + len(rejected) + 1):
            candidate, key = futures[future]
            try:
                probe = future.result()
            except ImageReadError as error:
                rejected.append(Rejected(candidate.path, candidate.domain, error.reason))
            else:
                cache.remember(key, probe)
                _keep_if_within_limits(candidate, probe, rules, rows, rejected)
            if progress is not None:
                progress(done, len(candidates))
    return rows, rejected, len(unknown)


def _keep_if_within_limits(candidate: Candidate, probe: Probe, rules: IndexRules, rows: list[dict], rejected: list[Rejected]) -> None:
    # Limits are applied to cached probes too, so changing a limit needs no re-read.
    problem = rules.problem(probe.width, probe.height, probe.pixel_std)
    if problem is None:
        rows.append(_index_row(candidate, probe))
    else:
        rejected.append(Rejected(candidate.path, candidate.domain, problem))


def _probe(candidate: Candidate, max_pixels: int) -> Probe:
    """Check that the image (and its mask) decode completely; raises ImageReadError."""
    info = probe_image(candidate.path, max_pixels)
    if candidate.mask_path is not None:
        load_mask(candidate.mask_path, candidate.mask_kind, (info.width, info.height))
    return Probe(info.width, info.height, info.mode, info.pixel_std, content_hash=_content_hash(candidate.path))


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
