"""Section 3: per-image latency of CascadeModel.predict by stage against one bare backbone pass."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from cpst_pipeline.benchmark.markdown import fmt
from cpst_pipeline.benchmark.speed.common import Context, Section, stopwatch, verdict
from cpst_pipeline.benchmark.speed.datasets import kolektor_index, subset_datasets
from cpst_pipeline.benchmark.speed.faiss_search import faiss_rows
from cpst_pipeline.benchmark.pipeline_run import run_pipeline
from cpst_pipeline.cascade.model import CascadeModel
from cpst_pipeline.data.images import load_image
from cpst_pipeline.evaluation.metrics import latency_summary
from cpst_pipeline.pipeline.dataset import split_dataset
from cpst_pipeline.resources import CpstSettings


# The heatmap path's latency budget, in backbone forward passes.
HEATMAP_PATH_TARGET = 2.0


def build_latency_cascade(ctx: Context) -> tuple[Path, dict]:
    """A cascade built by the pipeline's own steps on the whole KolektorSDD (read-only: steps write only
    under ``data_dir``), or in quick mode on a few Kolektor parts plus some Magnetic-tile images (a few
    parts alone may leave the gate without a training defect)."""
    sizes, work = ctx.sizes, ctx.work / "latency"
    if sizes.latency_kolektor_folders is None and not sizes.latency_magnetic:
        roots = f"kolektor={ctx.datasets['kolektor']}"
    else:
        folders = sizes.latency_kolektor_folders
        kolektor, magnetic, _ = subset_datasets(ctx, work / "datasets", folders * 8 if folders else None, sizes.latency_magnetic)
        kolektor = kolektor or ctx.datasets["kolektor"]
        roots = ",".join(f"{layout}={root}" for layout, root in (("kolektor", kolektor), ("magnetic_tile", magnetic)) if root)
    run = run_pipeline(CpstSettings(data_dir=str(work / "data"), dataset_roots=roots, device="cpu"), evaluate=False)
    info = {"root": roots, "build_seconds": dict(run.materialized.seconds), "splits": run.splits}
    return run.cascade_folder(work / "cascades"), info


def latency_test_images(ctx: Context, info: dict) -> pd.DataFrame:
    splits = info.get("splits")
    if splits is None:  # --cascade given: the default split of the Kolektor dataset
        config = replace(ctx.config, dataset_roots=f"kolektor={ctx.datasets['kolektor']}")
        splits = split_dataset(kolektor_index(ctx.datasets["kolektor"]), config)
    test = splits[(splits["split"] == "test_mix") & (splits["domain"] == "kolektor")]
    return test.head(ctx.sizes.latency_images + ctx.sizes.latency_warmup)


def ms_text(stats: dict) -> str:
    return " / ".join(fmt(stats[k], ".1f") for k in ("mean_ms", "p50_ms", "p95_ms"))


def section_latency(ctx: Context, device: str = "cpu", with_faiss: bool = True) -> Section:
    section = Section(f"latency-{device}", f"3. Scoring latency per image, Kolektor, batch size 1 (device {device})")
    sizes = ctx.sizes
    info: dict = {}
    if ctx.cascade_dir is None:
        ctx.cascade_dir, info = build_latency_cascade(ctx)
        section.notes.append(
            f"cascade built by the project's assets from {info['root']} in {sum(info['build_seconds'].values()):.0f} s"
        )
        ctx.latency_info = info  # reused by the GPU repeat
    else:
        info = ctx.latency_info
        section.notes.append(f"cascade {ctx.cascade_dir}")
        if not info:
            section.notes.append(
                "test images: the default split of the whole Kolektor dataset (the given cascade may have seen some)"
            )
    model = CascadeModel.load(ctx.cascade_dir, device)
    domain = "kolektor"
    test = latency_test_images(ctx, info)
    warm, measured = test.head(sizes.latency_warmup), test.iloc[sizes.latency_warmup :]
    if measured.empty:
        raise RuntimeError(f"the Kolektor test split has only {len(test)} images: nothing left to time after the warm-up")

    for path in warm["path"]:
        model.predict(load_image(path), domain, force_heatmap=True)

    def decoded(path: str) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        return load_image(path), time.perf_counter() - started

    # The cascade as served: consecutive images, the heatmap only where the gate escalates; the
    # stage breakdown below runs every stage on every image, which is not how images are served.
    served = []
    for path in tqdm(measured["path"], desc="CascadeModel.predict (cascade)", unit="img", leave=False):
        image, decode = decoded(path)
        prediction = model.predict(image, domain)
        served.append((decode + sum(prediction.seconds.values()), prediction.heatmap_ran))
    records = []
    for (cascade_total, heatmap_ran), path in zip(
        served, tqdm(measured["path"], desc="CascadeModel.predict (every stage)", unit="img", leave=False)
    ):
        image, decode = decoded(path)
        s = model.predict(image, domain, force_heatmap=True).seconds
        gate = s["gate_backbone"] + s["gate_head"]
        heat = s["heatmap_backbone"] + s["knn"] + s["map"]
        records.append(
            {
                "decode": decode,
                **{k: s[k] for k in ("gate_backbone", "gate_head", "heatmap_backbone", "knn", "map")},
                "cascade_total": cascade_total,
                "heatmap_path_total": decode + heat,
                "escalated_total": decode + gate + heat,
                "heatmap_ran": heatmap_ran,
            }
        )
    frame = pd.DataFrame(records)

    # The comparison: one bare backbone pass (patch_features) at the heatmap size, batch size 1.
    size = model.inputs[domain].heatmap_size
    batch = model.extractor.batch([load_image(measured["path"].iloc[0])], size)
    for _ in range(sizes.latency_warmup):
        model.extractor.patch_features(batch).cpu()
    forward = []
    for _ in range(len(measured)):
        with stopwatch(device) as t:
            model.extractor.patch_features(batch).cpu()
        forward.append(t())
    forward_stats = latency_summary(forward)

    stats = {
        k: latency_summary(frame[k])
        for k in (
            "decode",
            "gate_backbone",
            "gate_head",
            "heatmap_backbone",
            "knn",
            "map",
            "cascade_total",
            "heatmap_path_total",
            "escalated_total",
        )
    }
    fwd = forward_stats["mean_ms"]
    for k, st in stats.items():
        target, check = "", ""
        if k == "cascade_total":
            target, check = f"<= 1.0x forward ({fwd:.1f} ms)", verdict(st["mean_ms"] / fwd, 1.0)
        elif k == "heatmap_path_total":
            target, check = f"<= {HEATMAP_PATH_TARGET}x forward ({HEATMAP_PATH_TARGET * fwd:.1f} ms)", verdict(st["mean_ms"] / fwd, HEATMAP_PATH_TARGET)
        section.add(
            f"{k} ms mean / p50 / p95",
            ms_text(st) + (f" ({st['mean_ms'] / fwd:.2f}x fwd)" if k.endswith("_total") else ""),
            target,
            check,
        )
    section.add(f"bare forward {size[0]}x{size[1]} ms mean / p50 / p95", ms_text(forward_stats), "", "")
    section.add("heatmap call rate on these images", f"{frame['heatmap_ran'].mean():.2f} ({len(frame)} images)", "", "")
    section.add("knn index of the cascade's bank", index_text(model.banks[domain]), "", "")
    section.notes.append(
        "cascade_total: a pass over the images as served (decode + gate, + heatmap stages only when the gate "
        "escalates); the stage rows and heatmap_path_total = decode + heatmap_backbone + knn + map (the always-heatmap "
        "path), escalated_total = decode + gate + heatmap come from a second pass that runs every stage on every image"
    )
    section.data = {
        "device": device,
        "heatmap_size": list(size),
        "stages": stats,
        "forward": forward_stats,
        "heatmap_call_rate": float(frame["heatmap_ran"].mean()),
        "images": len(frame),
    }
    if with_faiss:
        faiss_rows(section, model, measured, sizes.faiss_query_images)
    return section


def index_text(bank) -> str:
    """The faiss index class of a memory bank, its size and (IVF/HNSW) search settings."""
    index = bank.index
    settings = [f"{index.ntotal:,} patches"]
    if hasattr(index, "nprobe"):
        settings.append(f"nlist {index.nlist}, nprobe {index.nprobe}")
    if hasattr(index, "hnsw"):
        settings.append(f"efSearch {index.hnsw.efSearch}")
    return (
        f"{type(index).__name__} ({', '.join(settings)}; BankConfig.index_type {bank.meta.get('config', {}).get('index_type')!r})"
    )
