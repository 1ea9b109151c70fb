"""Is an index fit to train on? Too many files of a domain quarantined, or byte-identical images
that disagree on their label or domain, mean the data needs a look before a model learns from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from cpst_pipeline.data.index import conflicts

_NAMED_FILES = 10  # files named in a failure message; the quarantine table has all of them


@dataclass(frozen=True)
class IndexCheckConfig:
    max_quarantine_share: float = 0.05  # of a domain's files (indexed + quarantined)

    def __post_init__(self) -> None:
        if not 0 <= self.max_quarantine_share <= 1:
            raise ValueError(f"max_quarantine_share must be within [0, 1]; got {self.max_quarantine_share}")


@dataclass(frozen=True)
class IndexCheck:
    passed: bool
    quarantine_share: dict[str, float]  # per domain
    over_bound: dict[str, float]
    conflicting_files: list[str]
    message: str


def check_index(index: pd.DataFrame, quarantine: pd.DataFrame, config: IndexCheckConfig) -> IndexCheck:
    """Fails when a domain's quarantine share exceeds the bound or any conflict was found: every
    indexed image can end up in a training split, so a conflict always touches training data.
    Quarantined files outside every domain (e.g. loose at the root) are listed, not counted."""
    in_domain = quarantine[quarantine["domain"] != ""]
    quarantined = in_domain.groupby("domain").size()
    indexed = index.groupby("domain").size()
    domains = sorted(set(quarantined.index) | set(indexed.index))
    share = {d: float(quarantined.get(d, 0) / (quarantined.get(d, 0) + indexed.get(d, 0))) for d in domains}
    over = {d: s for d, s in share.items() if s > config.max_quarantine_share}
    conflicting = sorted(conflicts(quarantine)["path"])
    problems = []
    for domain, value in over.items():
        files = in_domain[in_domain["domain"] == domain]
        named = "; ".join(f"{p}: {r}" for p, r in zip(files["path"][:_NAMED_FILES], files["reason"][:_NAMED_FILES]))
        problems.append(
            f"domain {domain}: {value:.1%} of its files quarantined (bound {config.max_quarantine_share:.1%}): {named}"
        )
    if conflicting:
        problems.append(f"{len(conflicting)} byte-identical images disagree on label or domain: {'; '.join(conflicting[:_NAMED_FILES])}")
    message = " | ".join(problems) if problems else "quarantine within bounds, no conflicts"
    return IndexCheck(not problems, share, over, conflicting, message)
