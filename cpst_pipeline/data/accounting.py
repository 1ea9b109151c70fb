"""The full account of a dataset: every file under every root ends in exactly one outcome.

Outcomes: ``indexed``; ``quarantined`` (with its reason); ``mask_of_indexed`` (the mask or box
file of an indexed image); ``ignored`` by a named rule (hidden files, notes, unused companions,
symlinks already reached). So files seen = indexed + quarantined + masks used + ignored.
A reason reads ``"<rule>"`` or ``"<rule>: <detail>"``; counts and examples go by rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cpst_pipeline.data.layouts import MASK_STEM_SUFFIXES
from cpst_pipeline.data.rules import IMAGE_SUFFIXES, SIDECAR_SUFFIXES, unsupported_format
from cpst_pipeline.data.walk import Outcome, Verdict, WalkedRoot

ACCOUNT_COLUMNS = ["path", "root", "domain", "outcome", "reason"]
OUTCOMES: tuple[Outcome, ...] = ("indexed", "quarantined", "mask_of_indexed", "ignored")
# Folders whose files are masks or annotations in the known layouts.
_MASK_FOLDERS = frozenset({"masks", "ground_truth", "annotations"})

INDEXED = Verdict("indexed", "indexed")
MASK_OF_INDEXED = Verdict("mask_of_indexed", "mask or annotation of an indexed image")
OF_QUARANTINED = Verdict("ignored", "mask or companion of a quarantined image")
COMPANION = Verdict("ignored", "companion of an indexed image (same name), not used")
HIDDEN = Verdict("ignored", "hidden file")
SIDECAR = Verdict("ignored", "notes or metadata file")
ORPHAN_MASK = Verdict("quarantined", "mask without a matching image")
LOOSE_IMAGE = Verdict("quarantined", "image outside the layout's image folders")
NOT_AN_IMAGE = Verdict("ignored", "not an image file")


@dataclass(frozen=True)
class IndexedFiles:
    """What indexing decided about the files the layout readers found."""

    images: set[str]
    masks: set[str]  # masks and box files of indexed images
    quarantined: dict[str, str]  # path -> reason
    masks_of_quarantined: set[str]
    domains: dict[str, str]  # folder -> the one domain of the images under it


def account_files(walks: Iterable[WalkedRoot], found: IndexedFiles) -> pd.DataFrame:
    """One row per file under the roots (a file under two overlapping roots counts once)."""
    indexed_stems = {_companion_key(p) for p in found.images}
    quarantined_stems = {_companion_key(p) for p in found.quarantined}
    rows, seen = [], set()
    for walk in walks:
        for file in walk.files:
            if file.path in seen:
                continue
            seen.add(file.path)
            verdict = file.verdict or _verdict(file.path, walk.root, found, indexed_stems, quarantined_stems)
            rows.append((file.path, walk.root, _domain_of(file.path, found.domains), verdict.outcome, verdict.rule))
    return pd.DataFrame(rows, columns=ACCOUNT_COLUMNS)


def _verdict(path: str, root: str, found: IndexedFiles, indexed_stems: set, quarantined_stems: set) -> Verdict:
    if path in found.images:
        return INDEXED
    if path in found.quarantined:
        return Verdict("quarantined", found.quarantined[path])
    if path in found.masks:
        return MASK_OF_INDEXED
    key = _companion_key(path)
    if path in found.masks_of_quarantined or key in quarantined_stems:
        return OF_QUARANTINED
    relative = Path(path).relative_to(root)
    suffix = relative.suffix.lower()
    if any(part.startswith(".") for part in relative.parts):
        return HIDDEN
    if suffix in SIDECAR_SUFFIXES:
        return SIDECAR
    if key in indexed_stems:
        return COMPANION
    if relative.stem.lower().endswith(MASK_STEM_SUFFIXES) or _MASK_FOLDERS & {p.lower() for p in relative.parts[:-1]}:
        return ORPHAN_MASK
    if suffix in IMAGE_SUFFIXES:
        return LOOSE_IMAGE
    unsupported = unsupported_format(suffix)
    if unsupported is not None:
        return Verdict("quarantined", f"unsupported image format: {unsupported} ({suffix})")
    return NOT_AN_IMAGE


def _companion_key(path: str) -> tuple[str, str]:
    """Folder and stem without a mask suffix: ``x.jpg``, ``x.png`` and ``x_label.bmp`` share it."""
    file = Path(path)
    stem = file.stem.lower()
    for suffix in MASK_STEM_SUFFIXES:
        stem = stem.removesuffix(suffix)
    return str(file.parent), stem


def _domain_of(path: str, domains: dict[str, str]) -> str:
    for folder in Path(path).parents:
        if str(folder) in domains:
            return domains[str(folder)]
    return ""


def folder_domains(images: Iterable[tuple[str, str]], roots: Iterable[str]) -> dict[str, str]:
    """Folder -> domain for every folder between an image and its root that holds one domain only."""
    roots = [Path(r) for r in roots]
    found: dict[str, set[str]] = {}
    for path, domain in images:
        for folder in Path(path).parents:
            found.setdefault(str(folder), set()).add(domain)
            if folder in roots:
                break
    return {folder: next(iter(names)) for folder, names in found.items() if len(names) == 1}


def rule_of(reason: str) -> str:
    return reason.partition(":")[0]


@dataclass(frozen=True)
class RuleCount:
    outcome: Outcome
    rule: str
    files: int
    examples: list[str]  # a few paths, relative to their root


@dataclass(frozen=True)
class AccountSummary:
    files_seen: int
    files_by_outcome: dict[str, int]  # every outcome, zero included; they add up to files_seen
    rules: list[RuleCount]

    def markdown(self) -> str:
        lines = ["| outcome | rule | files | examples |", "|---|---|---|---|"]
        for rule in self.rules:
            lines.append(f"| {rule.outcome} | {rule.rule} | {rule.files} | {', '.join(rule.examples)} |")
        return "\n".join(lines)


def summarise(account: pd.DataFrame, examples: int = 3) -> AccountSummary:
    by_outcome = {outcome: int((account["outcome"] == outcome).sum()) for outcome in OUTCOMES}
    rules = []
    relative = [str(Path(p).relative_to(r)) for p, r in zip(account["path"], account["root"])]
    keyed = account.assign(rule=account["reason"].map(rule_of), relative=relative)
    for (outcome, rule), rows in keyed.groupby(["outcome", "rule"], sort=False):
        rules.append(RuleCount(outcome, rule, len(rows), rows["relative"].head(examples).tolist()))
    rules.sort(key=lambda r: (OUTCOMES.index(r.outcome), -r.files, r.rule))
    return AccountSummary(files_seen=len(account), files_by_outcome=by_outcome, rules=rules)
