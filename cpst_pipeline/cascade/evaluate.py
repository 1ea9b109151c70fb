"""Run the cascade over a test split, timing every stage, and turn the results into a report."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cpst_pipeline.cascade.model import CascadeModel
from cpst_pipeline.data.images import load_image, load_mask
from cpst_pipeline.evaluation.metrics import PixelAurocAccumulator, classification_metrics, latency_summary, ranking_metrics, threshold_sweep
from cpst_pipeline.evaluation.pro import ProAccumulator
from cpst_pipeline.evaluation.plots import plot_heatmap_overlays, plot_pr, plot_roc, plot_score_histograms, plot_threshold_sweep

GATE_STAGES = ("gate_backbone", "gate_head")
HEATMAP_STAGES = ("heatmap_backbone", "knn", "map")
# Pixel AUROC and PRO on every 2nd pixel in each direction: same curves, a quarter of the memory.
PIXEL_STRIDE = 2


@dataclass
class TestRun:
    rows: pd.DataFrame
    pixel_auroc: dict[str, float | None]
    pro: dict[str, float | None]
    overlay_samples: dict[str, list[dict]] = field(default_factory=dict)


def _stage_seconds(seconds: dict[str, float], stages: tuple[str, ...]) -> float:
    return sum(seconds.get(stage, 0.0) for stage in stages)


def run_test_split(
    model: CascadeModel,
    test: pd.DataFrame,
    samples_per_domain: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> TestRun:
    """Score every test image with the cascade, and with the heatmap too (the always-heatmap baseline).

    Latencies are measured per stage on each image; the cascade's total counts the heatmap
    stages only for images the gate escalated.
    """
    rows, accumulators, pro, samples = [], {}, {}, {}
    for position, record in enumerate(test.itertuples(index=False)):
        started = time.perf_counter()
        image = load_image(record.path)
        decode = time.perf_counter() - started
        prediction = model.predict(image, record.domain, force_heatmap=True)
        started = time.perf_counter()
        routed = model.route(image)
        route_seconds = time.perf_counter() - started
        seconds = prediction.seconds
        calibration = model.calibrations[record.domain]
        gate_seconds, heatmap_seconds = _stage_seconds(seconds, GATE_STAGES), _stage_seconds(seconds, HEATMAP_STAGES)
        has_heatmap = prediction.heatmap_score is not None
        rows.append(
            {
                "image_id": record.image_id,
                "domain": record.domain,
                "label": int(record.label == "anomaly"),
                "defect_type": record.defect_type,
                "gate_score": prediction.gate_score,
                "heatmap_score": prediction.heatmap_score if has_heatmap else np.nan,
                "cascade_score": prediction.anomaly_score,
                "cascade_decision": prediction.is_anomaly,
                "heatmap_ran": prediction.heatmap_ran,
                "heatmap_decision": has_heatmap and prediction.heatmap_score >= calibration.heatmap_threshold,
                "routed_domain": routed or "unknown",
                "route_s": route_seconds,
                "decode_s": decode,
                "gate_s": gate_seconds,
                "heatmap_s": heatmap_seconds,
                **{f"{stage}_s": seconds.get(stage, np.nan) for stage in GATE_STAGES + HEATMAP_STAGES},
                "cascade_s": decode + gate_seconds + (heatmap_seconds if prediction.heatmap_ran else 0.0),
                "always_heatmap_s": decode + heatmap_seconds if has_heatmap else np.nan,
            }
        )
        # One mask read serves both the pixel AUROC and the overlay sample.
        mask = load_mask(record.mask_path, record.mask_kind, size=(image.shape[1], image.shape[0])) if has_heatmap and pd.notna(record.mask_path) else None
        if has_heatmap and (record.mask_kind == "pixel" or (record.label == "normal" and record.domain in accumulators)):
            accumulators.setdefault(record.domain, PixelAurocAccumulator(PIXEL_STRIDE)).add(mask, prediction.anomaly_map)
            pro.setdefault(record.domain, ProAccumulator(PIXEL_STRIDE)).add(mask, prediction.anomaly_map)
        if has_heatmap and len(samples.setdefault(record.domain, [])) < samples_per_domain and _want_sample(samples[record.domain], record.label):
            title = f"{record.domain} {record.defect_type} score {prediction.heatmap_score:.2f}"
            samples[record.domain].append({"image": image, "heatmap": prediction.anomaly_map, "mask": mask, "title": title, "label": record.label})
        if progress:
            progress(position + 1, len(test))
    return TestRun(
        pd.DataFrame(rows), {d: a.result() for d, a in accumulators.items()}, {d: a.result() for d, a in pro.items()}, samples
    )


def _want_sample(chosen: list[dict], label: str) -> bool:
    """Mostly defects, one normal, so the overlays show both what is found and what is quiet."""
    has_normal = any(s["label"] == "normal" for s in chosen)
    return label == "anomaly" or not has_normal


def _section(rows: pd.DataFrame, pixel_auroc: float | None, pro: float | None, has_bank: bool, notes: list[str]) -> dict:
    y = rows["label"].to_numpy()
    banked = rows[rows["heatmap_score"].notna()]
    section = {
        "cascade": classification_metrics(y, rows["cascade_score"], rows["cascade_decision"]),
        # The gate decides nothing alone in a cascade: its column ranks, it does not threshold.
        "gate": ranking_metrics(y, rows["gate_score"]),
        "always_heatmap": None,
        "heatmap_call_rate": float(rows["heatmap_ran"].mean()),
        "latency": {
            "cascade_total": latency_summary(rows["cascade_s"]),
            "decode": latency_summary(rows["decode_s"]),
            "gate": latency_summary(rows["gate_s"]),
            "heatmap": latency_summary(banked["heatmap_s"]),
            **{stage: latency_summary(rows[f"{stage}_s"].dropna()) for stage in GATE_STAGES + HEATMAP_STAGES},
        },
        "pixel_auroc": pixel_auroc,
        "pro": pro,
        "routing": {
            "accuracy": float((rows["routed_domain"] == rows["domain"]).mean()),
            "unknown_rate": float((rows["routed_domain"] == "unknown").mean()),
            "latency": latency_summary(rows["route_s"]),
        },
        "has_bank": has_bank,
        "notes": notes,
    }
    if has_bank and len(banked) == len(rows):
        section["always_heatmap"] = classification_metrics(y, rows["heatmap_score"], rows["heatmap_decision"])
        section["latency"]["always_heatmap_total"] = latency_summary(rows["always_heatmap_s"])
    return section


def build_report(run: TestRun, model: CascadeModel, run_info: dict) -> dict:
    rows = run.rows
    domains = {}
    for domain, domain_rows in rows.groupby("domain"):
        calibration = model.calibrations[domain]
        notes = list(calibration.notes)
        if domain_rows["label"].nunique() < 2:
            notes.append("test split holds one class only: AUROC/AP are undefined, recall is reported on its own")
        domains[domain] = _section(domain_rows, run.pixel_auroc.get(domain), run.pro.get(domain), calibration.has_bank, notes)
    banked_domains = [d for d, s in domains.items() if s["has_bank"]]
    overall_rows = rows[rows["domain"].isin(banked_domains)]
    overall_notes = [f"pooled over domains with a memory bank: {', '.join(banked_domains)}"]
    overall = _section(overall_rows, None, None, True, overall_notes) if len(overall_rows) else None
    sweeps = {
        f"{domain} heatmap": threshold_sweep(r["label"], r["heatmap_score"], 20).to_dict("records")
        for domain, r in rows.groupby("domain")
        if r["heatmap_score"].notna().all() and r["label"].nunique() == 2
    }
    return {"run": run_info, "overall": overall, "domains": domains, "sweeps": sweeps}


def write_figures(run: TestRun, model: CascadeModel, directory: Path) -> dict[str, Path]:
    """ROC/PR per domain (cascade vs heatmap vs gate), score histograms, sweeps, heatmap overlays."""
    figures: dict[str, Path] = {}
    for domain, rows in run.rows.groupby("domain"):
        y = rows["label"].to_numpy()
        calibration = model.calibrations[domain]
        if len(set(y)) == 2:
            curves = {"cascade": (y, rows["cascade_score"]), "gate": (y, rows["gate_score"])}
            if rows["heatmap_score"].notna().all():
                curves["heatmap"] = (y, rows["heatmap_score"])
                sweep = threshold_sweep(y, rows["heatmap_score"], 50)
                figures[f"{domain}: heatmap threshold sweep"] = plot_threshold_sweep(sweep, directory / f"{domain}_sweep.png", f"{domain}: heatmap score sweep")
            figures[f"{domain}: ROC"] = plot_roc(curves, directory / f"{domain}_roc.png", f"{domain}: ROC (test)")
            figures[f"{domain}: precision-recall"] = plot_pr(curves, directory / f"{domain}_pr.png", f"{domain}: PR (test)")
        thresholds = {"T_low": calibration.gate_low, "T_high": calibration.gate_high}
        figures[f"{domain}: gate scores"] = plot_score_histograms(
            y, rows["gate_score"], directory / f"{domain}_gate_hist.png", f"{domain}: gate score by class",
            {k: v for k, v in thresholds.items() if np.isfinite(v)},
        )
        if rows["heatmap_score"].notna().all():
            figures[f"{domain}: heatmap scores"] = plot_score_histograms(
                y, rows["heatmap_score"], directory / f"{domain}_heatmap_hist.png", f"{domain}: heatmap score by class",
                {"decision": calibration.heatmap_threshold},
            )
        if run.overlay_samples.get(domain):
            # One colour scale for every panel: 0 = typical normal, threshold + 3 = clearly defective.
            figures[f"{domain}: heatmaps"] = plot_heatmap_overlays(
                run.overlay_samples[domain], directory / f"{domain}_overlays.png", vmin=0.0, vmax=max(calibration.heatmap_threshold + 3.0, 1.0)
            )
    return figures
