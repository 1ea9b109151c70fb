"""Train/val/test splits that keep every physical part on one side and balance both classes.

Partitions (train, val, test) are chosen per domain and per group, so byte-identical images
and photos of the same part never straddle a partition. Within train, normal images are
divided by group between the memory bank (train_normal) and the gate's training mix.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

PARTITIONS = ("train", "val", "test")
LABELS = ("normal", "anomaly")
SPLITS = ("train_normal", "train_mix", "val_mix", "test_mix")
_MIX_SPLIT_OF_PARTITION = {"train": "train_mix", "val": "val_mix", "test": "test_mix"}
_REQUIRED_COLUMNS = ("domain", "path", "label", "group_id")


@dataclass(frozen=True)
class SplitConfig:
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    bank_fraction: float = 0.75  # share of the train partition's normal images for the memory bank
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction", "bank_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SplitConfig.{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"SplitConfig: val_fraction + test_fraction must leave room for train, "
                f"got {self.val_fraction} + {self.test_fraction}"
            )

    def partition_fractions(self) -> dict[str, float]:
        return {
            "train": 1.0 - self.val_fraction - self.test_fraction,
            "val": self.val_fraction,
            "test": self.test_fraction,
        }


def assign_splits(index: pd.DataFrame, config: SplitConfig | None = None) -> pd.DataFrame:
    """The index plus ``partition`` (train/val/test) and ``split`` (train_normal/train_mix/val_mix/test_mix).

    Deterministic for a given config and independent of row order; rows come back sorted by
    (domain, path).
    """
    config = config or SplitConfig()
    _check_index(index)
    partition_of_group: dict[str, str] = {}
    # Domains in sorted order: a group that spans domains (duplicates) is placed by the first one.
    for _, rows in index.groupby("domain", sort=True):
        counts = _class_counts_by_group(rows)
        partition_of_group |= _partition_domain_groups(counts, partition_of_group, config)
    splits = index.sort_values(["domain", "path"], kind="stable", ignore_index=True)
    splits["partition"] = splits["group_id"].map(partition_of_group)
    splits["split"] = _splits_within_partitions(splits, config)
    return splits


def domains_without_normals(splits: pd.DataFrame) -> list[str]:
    """Domains with no memory-bank (train_normal) image: no normal reference can be built for them."""
    with_bank = set(splits.loc[splits["split"] == "train_normal", "domain"])
    return sorted(set(splits["domain"]) - with_bank)


def leaked_groups(splits: pd.DataFrame) -> list[str]:
    """Groups found in more than one partition; anything here means train/test leakage."""
    partitions_per_group = splits.groupby("group_id")["partition"].nunique()
    return sorted(partitions_per_group[partitions_per_group > 1].index)


def split_summary(splits: pd.DataFrame) -> pd.DataFrame:
    """Image counts per domain and split: columns domain, split, normal, anomaly, total."""
    counts = (
        splits.groupby(["domain", "split", "label"]).size().unstack("label", fill_value=0)
        .reindex(columns=list(LABELS), fill_value=0)
    )
    counts["total"] = counts.sum(axis=1)
    counts = counts.reset_index()
    counts["split"] = pd.Categorical(counts["split"], categories=SPLITS, ordered=True)
    summary = counts.sort_values(["domain", "split"], ignore_index=True)
    summary["split"] = summary["split"].astype(str)
    summary.columns.name = None
    return summary


def _check_index(index: pd.DataFrame) -> None:
    missing = [column for column in _REQUIRED_COLUMNS if column not in index.columns]
    if missing:
        raise ValueError(f"assign_splits: index lacks columns {missing}")
    unknown = sorted(set(index["label"]) - set(LABELS))
    if unknown:
        raise ValueError(f"assign_splits: unknown labels {unknown}; expected {list(LABELS)}")


def _class_counts_by_group(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per group, columns normal and anomaly: how many images of each class it holds."""
    counts = rows.groupby(["group_id", "label"]).size().unstack("label", fill_value=0)
    return counts.reindex(columns=list(LABELS), fill_value=0).sort_index()


def _seeded_rank(seed: int, purpose: str, key: str) -> str:
    # A hash, not a shuffled list: a group's rank then does not depend on which other groups exist.
    return hashlib.sha1(f"{seed}/{purpose}/{key}".encode()).hexdigest()


def _partition_domain_groups(
    counts: pd.DataFrame, already_placed: dict[str, str], config: SplitConfig
) -> dict[str, str]:
    """Place a domain's groups so each partition gets close to its share of both classes."""
    groups = list(counts.index)
    class_counts = counts.to_numpy(dtype=float)  # (group, label)
    fractions = config.partition_fractions()
    targets = np.outer([fractions[p] for p in PARTITIONS], class_counts.sum(axis=0))  # (partition, label)
    filled = np.zeros_like(targets)
    for row, group in enumerate(groups):
        if group in already_placed:
            filled[PARTITIONS.index(already_placed[group])] += class_counts[row]

    # Large groups first (they are the hard ones to fit), in a random but reproducible order otherwise.
    free_rows = sorted(
        (row for row, group in enumerate(groups) if group not in already_placed),
        key=lambda row: (-class_counts[row].sum(), _seeded_rank(config.seed, "partition", groups[row])),
    )
    placed: dict[str, str] = {}

    def place(row: int, partition: int) -> None:
        placed[groups[row]] = PARTITIONS[partition]
        filled[partition] += class_counts[row]

    forced = _rows_giving_eval_both_classes(class_counts, free_rows, filled, fractions)
    for row, partition in forced:
        place(row, partition)
    forced_rows = {row for row, _ in forced}
    for row in free_rows:
        if row not in forced_rows:
            place(row, _least_costly_partition(class_counts[row], filled, targets))
    return placed


def _rows_giving_eval_both_classes(
    class_counts: np.ndarray, free_rows: list[int], filled: np.ndarray, fractions: dict[str, float]
) -> list[tuple[int, int]]:
    """(group row, partition) pairs to place first, so val and test each see both classes.

    Only when the domain has at least two groups of each class; the smallest fitting groups are
    used so the forced placements distort the fractions least.
    """
    has_class = class_counts > 0
    if has_class.sum(axis=0).min() < 2:
        return []
    forced: list[tuple[int, int]] = []
    available = list(free_rows)
    for partition in (PARTITIONS.index("val"), PARTITIONS.index("test")):
        if fractions[PARTITIONS[partition]] == 0:
            continue
        missing = filled[partition] == 0
        while missing.any():
            covering = [row for row in available if (has_class[row] & missing).any()]
            if not covering:
                break
            # ``available`` is in seeded order, so min() breaks ties reproducibly.
            row = min(covering, key=lambda r: (-(has_class[r] & missing).sum(), class_counts[r].sum()))
            forced.append((row, partition))
            available.remove(row)
            missing &= ~has_class[row]
    return forced


def _least_costly_partition(group_counts: np.ndarray, filled: np.ndarray, targets: np.ndarray) -> int:
    """The partition where adding the group least increases the squared miss of the targets.

    Misses are measured as fractions of each class's total, so both classes weigh equally
    however rare anomalies are; a class the domain lacks is ignored.
    """
    totals = targets.sum(axis=0)
    scale = np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)
    before = (((filled - targets) * scale) ** 2).sum(axis=1)
    after = (((filled + group_counts - targets) * scale) ** 2).sum(axis=1)
    return int(np.argmin(after - before))  # ties go to the earlier partition, train first


def _splits_within_partitions(splits: pd.DataFrame, config: SplitConfig) -> pd.Series:
    split = splits["partition"].map(_MIX_SPLIT_OF_PARTITION)
    train_normals = splits[(splits["partition"] == "train") & (splits["label"] == "normal")]
    for _, rows in train_normals.groupby("domain"):
        bank_groups = _bank_groups(rows.groupby("group_id").size(), config)
        split[rows.index[rows["group_id"].isin(bank_groups)]] = "train_normal"
    return split


def _bank_groups(normals_per_group: pd.Series, config: SplitConfig) -> set[str]:
    """Whole groups whose normal images together come closest to bank_fraction of them all."""
    target = config.bank_fraction * int(normals_per_group.sum())
    chosen: set[str] = set()
    filled = 0
    for group in sorted(normals_per_group.index, key=lambda g: _seeded_rank(config.seed, "bank", g)):
        size = int(normals_per_group[group])
        if abs(filled + size - target) <= abs(filled - target):
            chosen.add(group)
            filled += size
    return chosen
