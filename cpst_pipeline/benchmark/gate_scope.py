"""One gate per domain, or one shared domain-conditioned gate? Val AUROC of both, same features.

    python -m cpst_pipeline.benchmark.gate_scope --data kolektor=../shared/datasets/KolektorSDD,magnetic_tile=../shared/datasets/Magnetic-tile-defect
    python -m cpst_pipeline.benchmark.gate_scope            # the generated demo dataset

Both gates train on the same rows (train_mix + train_normal) with the same recipe and seeds;
only the scope differs. Writes the ``gate_scope`` section of BENCHMARKS.md (one row per
dataset run, so run it once per dataset).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from cpst_pipeline.benchmark.markdown import fmt, replace_section
from cpst_pipeline.features.embed import domain_input_sizes, embed_domain
from cpst_pipeline.features.extractor import FeatureExtractor
from cpst_pipeline.features.store import FeatureStore
from cpst_pipeline.gate.train import train_gate
from cpst_pipeline.pipeline.config import PipelineConfig
from cpst_pipeline.pipeline.dataset import TRAINING_SPLITS, anomaly_labels, index_datasets, split_dataset
from cpst_pipeline.pipeline.domain_images import DomainImages, gate_embeddings
from cpst_pipeline.pipeline.domain_models import fit_domain_gate, gate_val_auroc

SEEDS = (0, 1, 2)
SECTION = "gate_scope"


def measure(config: PipelineConfig) -> dict[str, dict[str, list[float | None]]]:
    """Val AUROC per domain and seed of the shared gate and of each domain's own gate."""
    splits = split_dataset(index_datasets(config).index, config)
    store, extractor = FeatureStore(config.features_dir), FeatureExtractor(config.backbone, config.device)
    images = {}
    for domain, rows in splits.groupby("domain"):
        rows = rows.reset_index(drop=True)
        images[domain] = DomainImages(domain, rows, domain_input_sizes(rows, config.resolution)[domain], config.backbone.key())
        print(f"embedding {domain}: {len(rows)} images", flush=True)
        # Gate embeddings only: neither gate reads patch features.
        embed_domain(store, config.backbone, lambda: extractor, rows, images[domain].inputs, False, config.batch_size)
    train = {d: i.in_splits(*TRAINING_SPLITS) for d, i in images.items()}
    shared_x = np.concatenate([gate_embeddings(images[d], train[d], config) for d in images])
    shared_y = np.concatenate([anomaly_labels(train[d]) for d in images])
    shared_domains = [d for d in images for _ in range(len(train[d]))]
    figures: dict[str, dict[str, list[float | None]]] = {}
    for seed in SEEDS:
        seeded = replace(config, gate=replace(config.gate, seed=seed))
        shared = train_gate(shared_x, shared_y, shared_domains, seeded.gate)
        for domain in images:
            cell = figures.setdefault(domain, {"shared": [], "per_domain": []})
            cell["shared"].append(gate_val_auroc(shared, images[domain], seeded))
            cell["per_domain"].append(gate_val_auroc(fit_domain_gate(images[domain], seeded), images[domain], seeded))
    return figures


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def table_rows(figures: dict, dataset: str) -> list[str]:
    rows = []
    for domain, cell in figures.items():
        shared, own = _mean(cell["shared"]), _mean(cell["per_domain"])
        spread = lambda v: "/".join(fmt(x) for x in v)  # noqa: E731
        rows.append(f"| {dataset} | {domain} | {fmt(shared)} ({spread(cell['shared'])}) | {fmt(own)} ({spread(cell['per_domain'])}) |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="", help="dataset roots, as CPST_DATASET_ROOTS; empty: the generated demo dataset")
    parser.add_argument("--name", default=None, help="dataset name in the table (default: from --data)")
    parser.add_argument("--work", default="data/benchmark", help="folder for caches")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", default="BENCHMARKS.md")
    args = parser.parse_args()
    roots = ",".join(
        f"{entry.split('=', 1)[0]}={Path(entry.split('=', 1)[1]).resolve()}" if "=" in entry else str(Path(entry).resolve())
        for entry in args.data.split(",")
        if entry
    )
    config = PipelineConfig(data_dir=Path(args.work), dataset_roots=roots, device=args.device)
    name = args.name or ("demo" if not roots else " + ".join(sorted({Path(e.split("=")[-1]).name for e in roots.split(",")})))
    rows = table_rows(measure(config), name)
    print("\n".join(rows))
    output = Path(args.output)
    old = re.search(rf"<!-- {SECTION}:start -->(.*?)<!-- {SECTION}:end -->", output.read_text(), re.S) if output.exists() else None
    kept = [line for line in (old.group(1).splitlines() if old else []) if line.startswith("| ") and not line.startswith(f"| {name} |") and "---" not in line and not line.startswith("| dataset")]
    header = [
        "## Gate scope: one gate per domain vs one shared domain-conditioned gate (val_mix AUROC)",
        "",
        f"`python -m cpst_pipeline.benchmark.gate_scope --data <roots>`: same embeddings, recipe and training rows; "
        f"mean over seeds {', '.join(map(str, SEEDS))} (each seed's figure in brackets).",
        "",
        "| dataset | domain | shared gate | per-domain gate |",
        "|---|---|---|---|",
    ]
    replace_section(output, SECTION, "\n".join(header + kept + rows))


if __name__ == "__main__":
    main()
