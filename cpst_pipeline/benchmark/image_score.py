"""How the heatmap's image score is read off its patch scores, measured on the calibration evidence.

    python -m cpst_pipeline.benchmark.image_score --data ../shared/datasets --work data/benchmark --reuse --section shared
    python -m cpst_pipeline.benchmark.image_score                 # the built-in demo, materialized under --work

PatchCore scores an image by its worst patch (reweighted, the paper's eq. 7). Averaging the few
worst patches, or smoothing the patch grid first, trades sensitivity to a defect that one patch
sees against robustness to one noisy normal patch. For each rule: image AUROC per domain on
val_mix, on train_mix (images the bank never saw) and on both together, the evidence the
calibration fits its thresholds on. The test split is not read. A tiled domain's grid is its
stitched map, so its "patches" are map pixels.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from cpst_pipeline.benchmark.markdown import fmt, replace_section
from cpst_pipeline.benchmark.pipeline_run import PipelineRun, add_asset_run_arguments, asset_run, asset_run_source
from cpst_pipeline.evaluation.metrics import auroc
from cpst_pipeline.patchcore.bank import MemoryBank
from cpst_pipeline.patchcore.image_scores import ImageScores, score_image
from cpst_pipeline.pipeline.dataset import CALIBRATION_SPLITS, anomaly_labels
from cpst_pipeline.pipeline.domain_images import patch_features


def mean_of_worst(values: np.ndarray, count: int) -> float:
    """Mean of the ``count`` largest values: at least the largest one, at most all of them."""
    flat = np.ravel(values)
    count = min(max(1, count), flat.size)
    return float(np.partition(flat, flat.size - count)[flat.size - count :].mean())


def image_score_rules(map_sigma: float) -> dict[str, Callable[[ImageScores], float]]:
    return {
        "worst patch, reweighted (PatchCore; the pipeline's)": lambda s: s.image_score,
        "worst patch": lambda s: float(s.grid.max()),
        "mean of the 3 worst patches": lambda s: mean_of_worst(s.grid, 3),
        "mean of the 10 worst patches": lambda s: mean_of_worst(s.grid, 10),
        "mean of the worst 1 % of patches": lambda s: mean_of_worst(s.grid, s.grid.size // 100),
        "worst patch of the grid smoothed (sigma 1 patch)": lambda s: float(gaussian_filter(s.grid, 1.0).max()),
        f"maximum of the map (sigma {map_sigma:g} px at the input)": lambda s: float(s.anomaly_map(s.grid_pixels, map_sigma).max()),
    }


@dataclass(frozen=True)
class RuleAuroc:
    domain: str
    rule: str
    by_split: dict[str, float | None]  # val_mix, train_mix, evidence (both)


def rule_aurocs(domain: str, labels: np.ndarray, splits: np.ndarray, scores: dict[str, np.ndarray]) -> list[RuleAuroc]:
    """AUROC of each rule's scores on each evidence split and on all of them (None where a split lacks a class)."""
    masks = {split: splits == split for split in CALIBRATION_SPLITS} | {"evidence": np.ones(len(labels), dtype=bool)}

    def measured(values: np.ndarray, mask: np.ndarray) -> float | None:
        return auroc(labels[mask], values[mask]) if len(set(labels[mask])) == 2 else None

    return [RuleAuroc(domain, rule, {split: measured(values, mask) for split, mask in masks.items()}) for rule, values in scores.items()]


def measure_domain(run: PipelineRun, domain: str, bank: MemoryBank) -> tuple[list[RuleAuroc], dict[str, int]]:
    """Every rule's AUROCs on ``domain``'s evidence against its ``bank``, and how many defects each split holds."""
    images, config = run.value("embeddings", domain), run.config
    evidence = images.in_splits(*CALIBRATION_SPLITS)
    rules = image_score_rules(config.scoring.map_sigma)
    scores = {rule: [] for rule in rules}
    sizes = zip(evidence["height"].astype(int), evidence["width"].astype(int))
    for patches, size in tqdm(zip(patch_features(images, evidence, config), sizes), total=len(evidence), desc=domain):
        scored = score_image(bank, patches, size, images.inputs, config.scoring)
        for rule, read in rules.items():
            scores[rule].append(read(scored))
    labels, splits = anomaly_labels(evidence), evidence["split"].to_numpy()
    defects = {split: int(labels[splits == split].sum()) for split in CALIBRATION_SPLITS}
    return rule_aurocs(domain, labels, splits, {rule: np.array(values) for rule, values in scores.items()}), defects


def markdown(results: list[RuleAuroc], defects: dict[str, dict[str, int]], name: str, source: str) -> str:
    lines = [
        f"## Heatmap image score: which patches it reads ({name}, calibration evidence)",
        "",
        f"`python -m cpst_pipeline.benchmark.image_score` on {source}: one bank per domain (the pipeline's), image AUROC"
        " of each rule on val_mix, on train_mix and on both (the calibration's evidence); the test split is not read.",
        "",
        "| domain | defects val + train_mix | rule | val AUROC | train_mix AUROC | evidence AUROC |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        d = defects[r.domain]
        lines.append(
            f"| {r.domain} | {d['val_mix']} + {d['train_mix']} | {r.rule} | {fmt(r.by_split['val_mix'], '.4f')} "
            f"| {fmt(r.by_split['train_mix'], '.4f')} | {fmt(r.by_split['evidence'], '.4f')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_asset_run_arguments(parser, work="data/image_score")
    args = parser.parse_args()
    run = asset_run(args)
    results, defects = [], {}
    for domain in run.domains:
        bank = run.value("memory_bank", domain)
        if bank is not None:  # a domain without normal images has no heatmap
            measured, defects[domain] = measure_domain(run, domain, bank)
            results += measured
    text = markdown(results, defects, args.section or "demo", asset_run_source(args))
    print(text)
    if args.output.name:
        replace_section(args.output, f"image_score{'_' + args.section if args.section else ''}", text)


if __name__ == "__main__":
    main()
