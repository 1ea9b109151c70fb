"""Detection-quality benchmark on real datasets, with the default configuration.

    python -m cpst_pipeline.benchmark --data ../shared/datasets

Materializes the project's assets (index, splits, each domain's embeddings, gate, bank and
calibration, the router, the cascade and its test-split report; no registration) into ``--work`` and writes the per-domain table to BENCHMARKS.md
and the full figures to ``benchmarks/quality.json``.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from cpst_pipeline.benchmark.cli import dataset_benchmark_parser
from cpst_pipeline.benchmark.pipeline_run import PipelineRun, run_pipeline
from cpst_pipeline.benchmark.markdown import fmt, replace_section
from cpst_pipeline.evaluation.report import format_interval
from cpst_pipeline.io_utils import write_json_atomic
from cpst_pipeline.resources import CpstSettings


def domain_rows(run: PipelineRun) -> list[dict]:
    report, splits, done = run.report.report, run.splits, run.materialized
    banks, images = run.banks, run.images
    rows = []
    for domain, section in report["domains"].items():
        bank = banks.get(domain)
        cascade, heatmap = section["cascade"], section["always_heatmap"] or {}
        latency = section["latency"]
        train_images = splits[(splits["domain"] == domain) & splits["split"].isin(["train_normal", "train_mix"])]
        rows.append(
            {
                "domain": domain,
                "has_bank": section["has_bank"],
                "test_images": cascade["n"],
                "test_anomalies": cascade["n_anomaly"],
                "image_auroc": heatmap.get("auroc"),
                "average_precision": heatmap.get("average_precision"),
                "pixel_auroc": section["pixel_auroc"],
                "pro": section.get("pro"),
                "heatmap_recall": heatmap.get("recall"),
                "heatmap_fpr": heatmap.get("false_positive_rate"),
                "cascade_auroc": cascade["auroc"],
                "cascade_recall": cascade["recall"],
                "cascade_recall_ci": cascade["recall_ci"],
                "cascade_fpr": cascade["false_positive_rate"],
                "cascade_fpr_ci": cascade["false_positive_rate_ci"],
                "heatmap_call_rate": section["heatmap_call_rate"],
                "cascade_mean_ms": latency["cascade_total"]["mean_ms"],
                "cascade_p95_ms": latency["cascade_total"]["p95_ms"],
                "always_heatmap_mean_ms": (latency.get("always_heatmap_total") or {}).get("mean_ms"),
                "always_heatmap_p95_ms": (latency.get("always_heatmap_total") or {}).get("p95_ms"),
                "gate_val_auroc": done.metadata[("gate_model", domain)]["val_auroc"],
                "train_images": int(len(train_images)),
                "embedding_seconds": done.partition_seconds.get(("embeddings", domain)),
                "bank_build_seconds": bank.meta["build_seconds"] if bank else None,
                "bank_patches": bank.meta["coreset_patches"] if bank else None,
                "bank_megabytes": bank.features.nbytes / 2**20 if bank else None,
                "knn_search": knn_search(bank),
                "heatmap_input": images[domain].inputs.describe_heatmap_input(),
                "notes": section.get("notes", []),
            }
        )
    return rows


def knn_search(bank) -> str | None:
    """How the bank searches: exact, or the IVF lists per patch chosen on val."""
    if bank is None:
        return None
    choice = bank.meta.get("search_probes")
    if choice is not None:
        return f"IVF, {choice['nprobe']} list(s)"
    return "exact" if bank.is_exact else type(bank.index).__name__


def markdown_table(rows: list[dict], run: PipelineRun) -> str:
    config = run.config
    banked = [r for r in rows if r["has_bank"]]
    unbanked = [r for r in rows if not r["has_bank"]]
    lines = [
        "## Detection quality (default configuration, test split)",
        "",
        f"`python -m cpst_pipeline.benchmark --data <datasets>` on {platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, device `{config.device}`, backbone `{config.backbone.model_name}` "
        f"({config.backbone.weights} weights), default heatmap short side {config.resolution.heatmap_short_side} px (each domain's input: last column), "
        f"gate short side {config.resolution.gate_short_side} px, coreset {config.bank.coreset_ratio:.0%}, "
        f"target recall {config.calibration.target_recall}. Image AUROC/AP/pixel AUROC are the heatmap model's; "
        "recall/FPR at the thresholds calibrated on val, with 95 % Wilson intervals. PRO: per-region overlap up to FPR 0.3. Latency is per image, decode included, batch size 1.",
        "",
        "| domain | test (anom.) | image AUROC | AP | pixel AUROC | PRO | heatmap recall / FPR | cascade recall / FPR | cascade recall 95 % CI | cascade FPR 95 % CI | heatmap call rate | cascade ms mean / p95 | always-heatmap ms mean / p95 | gate val AUROC | train s (embed + bank) | bank patches (MB) | kNN search | heatmap input |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in banked:
        lines.append(
            f"| {r['domain']} | {r['test_images']} ({r['test_anomalies']}) | {fmt(r['image_auroc'])} | {fmt(r['average_precision'])} "
            f"| {fmt(r['pixel_auroc'])} | {fmt(r['pro'])} | {fmt(r['heatmap_recall'])} / {fmt(r['heatmap_fpr'])} "
            f"| {fmt(r['cascade_recall'])} / {fmt(r['cascade_fpr'])} | {format_interval(r['cascade_recall_ci'])} | {format_interval(r['cascade_fpr_ci'])} "
            f"| {fmt(r['heatmap_call_rate'])} "
            f"| {fmt(r['cascade_mean_ms'], '.0f')} / {fmt(r['cascade_p95_ms'], '.0f')} "
            f"| {fmt(r['always_heatmap_mean_ms'], '.0f')} / {fmt(r['always_heatmap_p95_ms'], '.0f')} "
            f"| {fmt(r['gate_val_auroc'])} | {fmt(r['embedding_seconds'], '.0f')} + {fmt(r['bank_build_seconds'], '.1f')} "
            f"| {r['bank_patches']} ({fmt(r['bank_megabytes'], '.1f')}) | {r['knn_search']} | {r['heatmap_input']} |"
        )
    if unbanked:
        lines += [
            "",
            "Domains without normal images (no memory bank; the gate alone decides; recall only, never averaged with the above):",
            "",
            "| domain | test anomalies | cascade recall | cascade recall 95 % CI | heatmap call rate | cascade ms mean / p95 |",
            "|---|---|---|---|---|---|",
        ]
        for r in unbanked:
            lines.append(
                f"| {r['domain']} | {r['test_anomalies']} | {fmt(r['cascade_recall'])} | {format_interval(r['cascade_recall_ci'])} "
                f"| {fmt(r['heatmap_call_rate'])} "
                f"| {fmt(r['cascade_mean_ms'], '.0f')} / {fmt(r['cascade_p95_ms'], '.0f')} |"
            )
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in run.materialized.seconds.items())
    lines += ["", f"Step times on this run (Dagster step durations, summed over domain partitions): {timings}."]
    return "\n".join(lines)


def main() -> None:
    parser = dataset_benchmark_parser(__doc__)
    parser.add_argument("--json", default="benchmarks/quality.json")
    args = parser.parse_args()
    settings = CpstSettings(data_dir=str(Path(args.work).resolve()), dataset_roots=str(Path(args.data).resolve()), device=args.device)
    run = run_pipeline(settings)
    rows = domain_rows(run)
    table = markdown_table(rows, run)
    print(table)
    calibrations = {d: c.to_dict() for d, c in run.calibrations.items()}
    write_json_atomic(args.json, {"domains": rows, "timings": dict(run.materialized.seconds), "calibration": calibrations})
    replace_section(Path(args.output), "quality", table)


if __name__ == "__main__":
    main()
