"""Design choices of the heatmap model, each measured on the validation split.

    python -m cpst_pipeline.benchmark.ablation --data ../shared/datasets

For every domain with a memory bank and pixel masks: image AUROC and pixel AUROC on
val_mix for the default configuration and for one change at a time (squashed square
input, exact kNN for every patch, raw distances without position statistics, one coreset over all images,
smaller coresets, fewer IVF lists searched, no image-score reweighting, no map smoothing,
a bank from 64 images only as in the reference run), with the scoring milliseconds per val
image (kNN + refinement + reweighting; compare them within one run). ``--variants`` keeps
the variants whose name contains one of its words, ``--backbone`` and ``--layers`` swap the
backbone or its feature stages (a sweep), ``--section`` names the BENCHMARKS.md section. The test split is never
touched here.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cpst_pipeline.benchmark.markdown import fmt, replace_section
from cpst_pipeline.evaluation.metrics import auroc
from cpst_pipeline.features.embed import DomainInputs, domain_input_sizes, embed_domain, patch_kind
from cpst_pipeline.features.extractor import FeatureExtractor
from cpst_pipeline.features.store import FeatureStore
from cpst_pipeline.io_utils import write_json_atomic
from cpst_pipeline.patchcore.bank import BankConfig, MemoryBank
from cpst_pipeline.patchcore.scoring import ScoringConfig
from cpst_pipeline.patchcore.training import fit_memory_bank
from cpst_pipeline.patchcore.val_scores import score_val_images
from cpst_pipeline.pipeline.config import PipelineConfig
from cpst_pipeline.pipeline.dataset import index_datasets, split_dataset
from cpst_pipeline.pipeline.domain_images import stored_features
from cpst_pipeline.pipeline.domain_models import labelled_val_images

REFERENCE_TRAIN_IMAGES = 64
# A smaller bank makes the kNN search, the heatmap path's largest cost, proportionally cheaper.
SMALLER_CORESETS = (0.025, 0.01)
# IVF lists searched per query: fewer is faster, and refinement keeps the image score exact.
FEWER_PROBES = (8, 4, 2, 1)


@dataclass(frozen=True)
class Variant:
    heatmap_size: tuple[int, int]
    scoring: ScoringConfig
    bank: BankConfig
    bank_images: int | None = None  # None: every train_normal image


def fit_variant_bank(config: PipelineConfig, splits: pd.DataFrame, domain: str, variant: Variant) -> MemoryBank:
    rows = splits[splits["domain"] == domain]
    inputs = DomainInputs(heatmap_size=variant.heatmap_size, gate_size=domain_input_sizes(splits, config.resolution)[domain].gate_size)
    extractor = FeatureExtractor(config.backbone, config.device)
    embed_domain(FeatureStore(config.features_dir), config.backbone, lambda: extractor, rows, inputs, True, config.batch_size)
    normal = rows[rows["split"] == "train_normal"].drop_duplicates("content_hash").sort_values("content_hash")
    if variant.bank_images is not None:
        normal = normal.sample(n=min(variant.bank_images, len(normal)), random_state=0)
    kind = patch_kind(config.backbone.key(), variant.heatmap_size)
    return fit_memory_bank(stored_features(config, kind, normal), normal["group_id"].tolist(), variant.bank)


def val_scores(config: PipelineConfig, splits: pd.DataFrame, domain: str, variant: Variant, bank: MemoryBank) -> dict:
    """Image and pixel AUROC on ``domain``'s val split for one variant."""
    val = splits[(splits["domain"] == domain) & (splits["split"] == "val_mix")]
    labels = (val["label"] == "anomaly").to_numpy().astype(int)
    if isinstance(bank.index, faiss.IndexIVF):
        bank.index.nprobe = min(bank.index.nlist, variant.bank.ivf_nprobe)  # banks are shared across probe counts
    images = labelled_val_images(val, stored_features(config, patch_kind(config.backbone.key(), variant.heatmap_size), val))
    scores = score_val_images(bank, images, variant.scoring, variant.heatmap_size)
    return {
        "image_auroc": auroc(labels, scores.image_scores),
        "pixel_auroc": scores.pixel_auroc,
        "bank_patches": len(bank.features),
        "scoring_ms": 1000 * scores.scoring_seconds / max(len(val), 1),
    }


def forward_ms(config: PipelineConfig, size: tuple[int, int], repeats: int = 10) -> float:
    """Median milliseconds of one heatmap-resolution backbone pass (batch 1), the unit the latency targets use."""
    extractor = FeatureExtractor(config.backbone, config.device)
    batch = extractor.batch([np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)], size)
    times = []
    for _ in range(repeats + 2):  # the first two warm up
        started = time.perf_counter()
        extractor.patch_features(batch)
        times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times[2:]))


def variants(config: PipelineConfig, default_size: tuple[int, int]) -> dict[str, Variant]:
    short = config.resolution.heatmap_short_side
    default = Variant(default_size, config.scoring, config.bank)
    return {
        "default (aspect kept, position statistics, reweighting, sigma 4, all train images)": default,
        f"squashed to {short}x{short}": replace(default, heatmap_size=(short, short)),
        "exact kNN for every patch (flat index)": replace(default, bank=replace(config.bank, index_type="flat")),
        "no position statistics (raw distances)": replace(default, scoring=replace(config.scoring, position_stats=False)),
        "one coreset over all images, raw distances": replace(default, bank=replace(config.bank, folds=1)),
        **{f"coreset {ratio:.1%}": replace(default, bank=replace(config.bank, coreset_ratio=ratio)) for ratio in SMALLER_CORESETS},
        **{f"ivf nprobe {probes} (banks of 16,384+ patches)": replace(default, bank=replace(config.bank, ivf_nprobe=probes)) for probes in FEWER_PROBES},
        "no image-score reweighting": replace(default, scoring=replace(config.scoring, reweight_neighbors=1)),
        "no map smoothing (sigma 0)": replace(default, scoring=replace(config.scoring, map_sigma=0.0)),
        f"bank from {REFERENCE_TRAIN_IMAGES} train images": replace(default, bank_images=REFERENCE_TRAIN_IMAGES),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--work", default="data/benchmark")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", default="BENCHMARKS.md")
    parser.add_argument("--json", default="benchmarks/ablation.json")
    parser.add_argument("--variants", nargs="*", default=None, help="keep variants whose name contains one of these")
    parser.add_argument("--backbone", default=None, help="timm model name (bundled weights: tf_efficientnet_lite0/1/2)")
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="backbone stages to read patch features from")
    parser.add_argument("--section", default="ablation")
    args = parser.parse_args()
    config = PipelineConfig(data_dir=Path(args.work), dataset_roots=str(Path(args.data).resolve()), device=args.device)
    if args.backbone or args.layers:
        backbone = replace(config.backbone, model_name=args.backbone or config.backbone.model_name)
        config = replace(config, backbone=replace(backbone, feature_layers=tuple(args.layers or backbone.feature_layers)))
    splits = split_dataset(index_datasets(config).index, config)
    masked = splits[(splits["split"] == "val_mix") & (splits["mask_kind"] == "pixel")]["domain"].unique()
    banked = [d for d in sorted(masked) if (splits[(splits["domain"] == d)]["split"] == "train_normal").any()]
    sizes = domain_input_sizes(splits, config.resolution)
    results, forward = {}, {}
    for domain in banked:
        forward[domain] = forward_ms(config, sizes[domain].heatmap_size)
        banks = {}  # variants that differ only in scoring or probes share one bank
        chosen = {n: v for n, v in variants(config, sizes[domain].heatmap_size).items() if not args.variants or any(w in n for w in args.variants)}
        for name, variant in tqdm(chosen.items(), desc=domain):
            bank_key = (variant.heatmap_size, replace(variant.bank, ivf_nprobe=0), variant.bank_images)
            if bank_key not in banks:
                banks[bank_key] = fit_variant_bank(config, splits, domain, variant)
            results.setdefault(domain, {})[name] = val_scores(config, splits, domain, variant, banks[bank_key])
            tqdm.write(f"{domain} | {name} | {results[domain][name]}")
    lines = [
        f"## Heatmap-model choices, measured on val_mix: `{config.backbone.model_name}`, layers {list(config.backbone.feature_layers)}",
        "",
        f"`python -m cpst_pipeline.benchmark.ablation --data <datasets>`: one change at a time from the default; backbone `{config.backbone.model_name}`"
        f" layers {list(config.backbone.feature_layers)}, {torch.get_num_threads()} torch threads; the test split is not used."
        " Scoring ms: per val image, kNN + refinement + reweighting (no backbone, no map); compare within this run."
        " Inputs at the default heatmap size (the pipeline tries larger ones only for images twice that size).",
        "",
        "| domain | variant | image AUROC | pixel AUROC | bank patches | scoring ms |",
        "|---|---|---|---|---|---|",
    ]
    for domain, by_variant in results.items():
        for name, r in by_variant.items():
            lines.append(f"| {domain} | {name} | {fmt(r['image_auroc'], '.4f')} | {fmt(r['pixel_auroc'], '.4f')} | {r['bank_patches']} | {r['scoring_ms']:.0f} |")
    lines += ["", "Backbone pass at the heatmap resolution, batch 1 (median of 10): " + ", ".join(
        f"{domain} {sizes[domain].heatmap_size[0]}x{sizes[domain].heatmap_size[1]} {ms:.1f} ms" for domain, ms in forward.items()
    ) + "."]
    table = "\n".join(lines)
    print(table)
    write_json_atomic(args.json, {"variants": results, "forward_ms": forward})
    replace_section(Path(args.output), args.section, table)


if __name__ == "__main__":
    main()
