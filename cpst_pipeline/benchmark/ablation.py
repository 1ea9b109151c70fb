"""Design choices of the heatmap model, each measured on the validation split.

    python -m cpst_pipeline.benchmark.ablation --data ../shared/datasets

For every domain with a memory bank and pixel masks: image AUROC and pixel AUROC on
val_mix for the default configuration and for one change at a time (squashed square
input, no image-score reweighting, no map smoothing, a bank from 64 images only as in
the reference run). The test split is never touched here.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from cpst_pipeline.benchmark.markdown import fmt, replace_section
from cpst_pipeline.data.images import load_mask
from cpst_pipeline.evaluation.metrics import PixelAurocAccumulator, auroc
from cpst_pipeline.features.embed import DomainInputs, embed_domain, patch_kind
from cpst_pipeline.features.extractor import FeatureExtractor
from cpst_pipeline.features.store import FeatureStore
from cpst_pipeline.io_utils import write_json_atomic
from cpst_pipeline.patchcore.bank import build_memory_bank
from cpst_pipeline.patchcore.scoring import ScoringConfig, anomaly_map, score_patches
from cpst_pipeline.pipeline import steps
from cpst_pipeline.pipeline.config import PipelineConfig

REFERENCE_TRAIN_IMAGES = 64


def val_scores(config: PipelineConfig, splits: pd.DataFrame, domain: str, heatmap_size: tuple[int, int], scoring: ScoringConfig, bank_images: int | None) -> dict:
    """Image and pixel AUROC on ``domain``'s val split for one variant."""
    store = FeatureStore(config.features_dir)
    rows = splits[splits["domain"] == domain]
    extractor = FeatureExtractor(config.backbone, config.device)
    inputs = DomainInputs(heatmap_size=heatmap_size, gate_size=steps.input_sizes(splits, config)[domain].gate_size)
    embed_domain(store, config.backbone, lambda: extractor, rows, inputs, True, config.batch_size)
    normal = rows[rows["split"] == "train_normal"].drop_duplicates("content_hash").sort_values("content_hash")
    if bank_images is not None:
        normal = normal.sample(n=min(bank_images, len(normal)), random_state=0)
    kind = patch_kind(config.backbone.key(), heatmap_size)
    patches = np.concatenate([p.reshape(-1, p.shape[-1]) for p in steps.stored_features(config, kind, normal)])
    bank = build_memory_bank(patches, config.bank)
    val = rows[rows["split"] == "val_mix"]
    labels = (val["label"] == "anomaly").to_numpy().astype(int)
    image_scores, pixels = [], PixelAurocAccumulator(stride=2)
    for record, features in zip(val.itertuples(index=False), steps.stored_features(config, kind, val)):
        scores = score_patches(bank, features, scoring)
        image_scores.append(scores.image_score)
        if record.mask_kind == "pixel" or record.label == "normal":
            size = (int(record.height), int(record.width))
            mask = load_mask(record.mask_path, "pixel", size=(size[1], size[0])) if record.mask_kind == "pixel" else None
            pixels.add(mask, anomaly_map(scores.grid, heatmap_size, size, scoring.map_sigma))
    return {"image_auroc": auroc(labels, np.array(image_scores)), "pixel_auroc": pixels.result(), "bank_patches": len(bank.features)}


def variants(config: PipelineConfig, default_size: tuple[int, int]) -> dict[str, tuple[tuple[int, int], ScoringConfig, int | None]]:
    short = config.resolution.heatmap_short_side
    return {
        "default (aspect kept, reweighting, sigma 4, all train images)": (default_size, config.scoring, None),
        f"squashed to {short}x{short}": ((short, short), config.scoring, None),
        "no image-score reweighting": (default_size, replace(config.scoring, reweight_neighbors=1), None),
        "no map smoothing (sigma 0)": (default_size, replace(config.scoring, map_sigma=0.0), None),
        f"bank from {REFERENCE_TRAIN_IMAGES} train images": (default_size, config.scoring, REFERENCE_TRAIN_IMAGES),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--work", default="data/benchmark")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", default="BENCHMARKS.md")
    parser.add_argument("--json", default="benchmarks/ablation.json")
    args = parser.parse_args()
    config = PipelineConfig(data_dir=Path(args.work), dataset_roots=str(Path(args.data).resolve()), device=args.device)
    splits = steps.split_dataset(steps.index_datasets(config).index, config)
    masked = splits[(splits["split"] == "val_mix") & (splits["mask_kind"] == "pixel")]["domain"].unique()
    banked = [d for d in sorted(masked) if (splits[(splits["domain"] == d)]["split"] == "train_normal").any()]
    sizes = steps.input_sizes(splits, config)
    results = {}
    for domain in banked:
        for name, (size, scoring, bank_images) in tqdm(variants(config, sizes[domain].heatmap_size).items(), desc=domain):
            results.setdefault(domain, {})[name] = val_scores(config, splits, domain, size, scoring, bank_images)
            tqdm.write(f"{domain} | {name} | {results[domain][name]}")
    lines = [
        "## Heatmap-model choices, measured on val_mix",
        "",
        "`python -m cpst_pipeline.benchmark.ablation --data <datasets>`: one change at a time from the default; the test split is not used.",
        "",
        "| domain | variant | image AUROC | pixel AUROC | bank patches |",
        "|---|---|---|---|---|",
    ]
    for domain, by_variant in results.items():
        for name, r in by_variant.items():
            lines.append(f"| {domain} | {name} | {fmt(r['image_auroc'])} | {fmt(r['pixel_auroc'])} | {r['bank_patches']} |")
    table = "\n".join(lines)
    print(table)
    write_json_atomic(args.json, results)
    replace_section(Path(args.output), "ablation", table)


if __name__ == "__main__":
    main()
