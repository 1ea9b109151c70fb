"""How far a threshold fitted for a target recall keeps it on defects it was not fitted on.

    python -m cpst_pipeline.benchmark.recall_rule --scores data/benchmark/calibration_scores.parquet

Reads the scores table that ``calibration_evidence`` saves and uses the calibration
evidence only (val_mix and train_mix, never test). Per domain and score (the gate's:
out-of-fold on train_mix, the final gate's on val; the heatmap's raw score), the evidence
defects are dealt into folds many times over; each fold is scored at the threshold fitted
on the others. Two rules:

- empirical, the calibration's (``metrics.threshold_for_recall``): flag ceil(target n) of
  the n fitted defects;
- counted (split-conformal): if a new defect is exchangeable with the n fitted ones, a
  threshold at the k-th lowest of their scores flags it with probability at least
  1 - k / (n + 1); so leave at most floor((1 - target)(n + 1)) - 1 of them unflagged, none
  below 1 / (1 - target) - 1 defects.

Printed: the pooled held-out recall of each.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cpst_pipeline.benchmark.markdown import replace_section
from cpst_pipeline.cascade.calibration import CalibrationConfig
from cpst_pipeline.evaluation.metrics import threshold_for_recall
from cpst_pipeline.pipeline.dataset import CALIBRATION_SPLITS


def defects_to_flag(n_defects: int, target_recall: float) -> int:
    """The counted rule: the fewest of ``n_defects`` fitted defects a threshold must flag."""
    # The tolerance keeps float rounding (1 - 0.95 = 0.05000000000000004) from moving a count.
    allowed_misses = math.floor((1.0 - target_recall) * (n_defects + 1) + 1e-9) - 1
    return n_defects - max(allowed_misses, 0)


def counted_threshold(labels: np.ndarray, scores: np.ndarray, target_recall: float) -> float:
    defect_scores = np.sort(np.asarray(scores, dtype=float)[np.asarray(labels) == 1])[::-1]
    return float(defect_scores[defects_to_flag(defect_scores.size, target_recall) - 1])


RULES = {"empirical": threshold_for_recall, "counted": counted_threshold}


@dataclass(frozen=True)
class HeldOutRecall:
    domain: str
    score: str  # gate or heatmap
    n_defects: int
    recall: dict[str, float]  # rule name -> pooled held-out recall


def held_out_recall(defect_scores: np.ndarray, target_recall: float, folds: int, repeats: int, seed: int = 0) -> dict[str, float]:
    """Pooled recall of each rule on held-out folds of ``defect_scores``."""
    rng = np.random.default_rng(seed)
    found = dict.fromkeys(RULES, 0)
    for _ in range(repeats):
        order = rng.permutation(len(defect_scores))
        for held in np.array_split(order, folds):
            fitted = defect_scores[np.setdiff1d(order, held)]
            for name, rule in RULES.items():
                threshold = rule(np.ones(len(fitted), dtype=int), fitted, target_recall)
                found[name] += int((defect_scores[held] >= threshold).sum())
    return {name: count / (repeats * len(defect_scores)) for name, count in found.items()}


def measure(table: pd.DataFrame, target_recall: float, folds: int = 5, repeats: int = 200) -> list[HeldOutRecall]:
    evidence = table[table["split"].isin(CALIBRATION_SPLITS) & (table["label"] == 1)]
    results = []
    for domain, rows in evidence.groupby("domain", sort=True):
        scores = {
            "gate": rows["gate_oof"].where(rows["split"] == "train_mix", rows["gate_score"]).to_numpy(float),
            "heatmap": rows["raw_heatmap_score"].to_numpy(float),
        }
        for name, values in scores.items():
            values = values[~np.isnan(values)]
            if len(values) >= folds:
                results.append(HeldOutRecall(domain, name, len(values), held_out_recall(values, target_recall, folds, repeats)))
    return results


def markdown(results: list[HeldOutRecall], source: str, target_recall: float, folds: int, repeats: int) -> str:
    lines = [
        "## Recall rule: held-out recall of a threshold fitted for the target (calibration evidence only)",
        "",
        f"`python -m cpst_pipeline.benchmark.recall_rule` on {source}; target recall {target_recall}. The defects of val_mix + "
        f"train_mix are dealt into {folds} folds, {repeats} times; each fold is scored at the threshold fitted on the others. "
        "Empirical (the calibration's rule): flag ceil(target n) of the n fitted defects. Counted (split-conformal): leave "
        "at most floor((1 - target)(n + 1)) - 1 of them unflagged.",
        "",
        "| domain | score | evidence defects | held-out recall, empirical | held-out recall, counted |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r.domain} | {r.score} | {r.n_defects} | {r.recall['empirical']:.4f} | {r.recall['counted']:.4f} |" for r in results]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scores", type=Path, required=True, help="the scores table calibration_evidence saved")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"), help="where the section goes ('' for nowhere)")
    args = parser.parse_args()
    target = CalibrationConfig().target_recall
    results = measure(pd.read_parquet(args.scores), target, args.folds, args.repeats)
    text = markdown(results, f"`{args.scores}`", target, args.folds, args.repeats)
    print(text)
    if args.output.name:
        replace_section(args.output, "recall_rule", text)


if __name__ == "__main__":
    main()
