"""Speed and memory benchmark of the library on real images, with the default backbone.

    python -m cpst_pipeline.benchmark.speed --data ../shared/datasets [--quick] [--device auto]
        [--sections coreset,embedding,latency,memory,incremental,gpu] [--cascade DIR] [--threads N]
        [--memory-coreset-timeout SECONDS] [--work DIR] [--output BENCHMARKS.md] [--json benchmarks/speed.json]

Sections (each prints a table and goes into the ``speed`` section of BENCHMARKS.md, targets beside
the measured figures; every figure comes from a measurement made in this run):

1. ``coreset``     greedy_coreset at 10 % of a 65,536 x 152 and a 500,000 x 152 bank of real patch
                   features (Kolektor / Magnetic-tile images squashed to 256x256, 1,024 patches each),
                   coverage radius against a naive exact greedy k-center written here.
2. ``embedding``   images/s of ``embed_domain`` (decode + resize + backbone + store writes) against the
                   bare backbone on pre-decoded, pre-resized tensors of the same sizes and batch size
                   (passes alternated and repeated; medians compared).
3. ``latency``     per-image latency of ``CascadeModel.predict`` (batch size 1) by stage against one
                   backbone pass at the heatmap size; faiss flat vs HNSW vs IVF (nprobe sweep) on a real
                   bank, and whole-image scoring with IVF + exact refinement against flat.
4. ``memory``      peak RSS of a subprocess that streams 5,000 images' patch features (256x256) into a
                   float16 array and builds a 10 % coreset bank from them.
5. ``incremental`` the pipeline's steps on a copy of a small real subset: full run, +5 % images in one
                   domain, no-change re-run.
6. ``gpu``         sections 1-3 again on CUDA when a GPU is present.

Sections 1-3 run on the CPU; ``memory`` and ``incremental`` run on ``--device`` (``auto``: CUDA when
present). ``--quick`` runs every section on small sizes (a smoke test of this script: its figures are
not comparable to the targets, which are stated for the full sizes) and writes to /tmp unless
``--output``/``--json`` are given.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cpst_pipeline.benchmark.markdown import fmt, replace_section
from cpst_pipeline.cascade.model import CascadeModel
from cpst_pipeline.data.images import load_image
from cpst_pipeline.data.index import build_index
from cpst_pipeline.data.layouts import Candidate, DatasetRoot, detect_layout, iter_candidates
from cpst_pipeline.evaluation.metrics import latency_summary
from cpst_pipeline.features.embed import embed_domain
from cpst_pipeline.features.extractor import FeatureExtractor, resolve_device
from cpst_pipeline.features.loader import iter_resized_batches
from cpst_pipeline.features.store import FeatureStore
from cpst_pipeline.io_utils import write_json_atomic
from cpst_pipeline.patchcore.bank import BankConfig, MemoryBank, build_faiss_index
from cpst_pipeline.patchcore.sampler import coreset_size, coverage_radius, greedy_coreset
from cpst_pipeline.patchcore.scoring import score_patches
from cpst_pipeline.patchcore.training import fit_memory_bank
from cpst_pipeline.pipeline import steps
from cpst_pipeline.pipeline.config import PipelineConfig

SECTIONS = ("coreset", "embedding", "latency", "memory", "incremental", "gpu")
# The bank-building resolution of sections 1 and 4: a 256x256 squashed input gives a 32x32 patch grid.
SQUARE = (256, 256)
GIB = 2**30


@dataclass(frozen=True)
class Sizes:
    """Every workload size; ``QUICK`` shrinks them so the whole script runs in a couple of minutes."""

    coreset_small_images: int = 64  # x 1,024 patches = 65,536
    coreset_big_patches: int = 500_000
    coreset_big_images: int = 489  # real images for the big bank; features are tiled if fewer exist
    coreset_seconds_small: float = 15.0  # targets (full sizes)
    coreset_seconds_big: float = 120.0
    embed_images: int = 64
    embed_batch: int = 16  # PipelineConfig().batch_size
    embed_repeats: int = 2
    latency_kolektor_folders: int | None = None  # None: the whole KolektorSDD
    latency_magnetic: int = 0  # Magnetic-tile images added so that a tiny subset still trains a gate
    latency_images: int = 30
    latency_warmup: int = 3
    faiss_query_images: int = 4  # x 2,560 patches at 640x256
    memory_images: int = 5000
    memory_real_cap: int | None = None  # None: every real image, then flips
    memory_coreset_timeout: float = 1800.0
    incremental_kolektor: int = 200
    incremental_magnetic: int = 200
    incremental_added: float = 0.05


FULL = Sizes()
QUICK = Sizes(
    coreset_small_images=8,
    coreset_big_patches=40_000,
    coreset_big_images=16,
    embed_images=8,
    embed_batch=4,
    latency_kolektor_folders=4,
    latency_magnetic=24,
    latency_images=6,
    latency_warmup=1,
    faiss_query_images=2,
    memory_images=48,
    memory_real_cap=32,
    memory_coreset_timeout=120.0,
    incremental_kolektor=24,
    incremental_magnetic=40,
)


@dataclass
class Section:
    """One section's result: a table of (metric, measured, target, verdict) plus notes and raw data."""

    key: str
    title: str
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def add(self, metric: str, measured: str, target: str = "", verdict: str = "") -> None:
        self.rows.append((metric, measured, target, verdict))


@dataclass
class Context:
    data: Path
    sizes: Sizes
    quick: bool
    work: Path
    device: str  # resolved device for memory / incremental
    config: PipelineConfig
    datasets: dict[str, Path]
    cascade_dir: Path | None = None  # built (or given) by the latency section, reused on the GPU
    latency_info: dict = field(default_factory=dict)  # how the latency cascade was built (its splits)


# ---------------------------------------------------------------- helpers


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@contextmanager
def stopwatch(device: str | torch.device = "cpu"):
    """``with stopwatch() as t: ...`` then ``t()`` is the elapsed seconds (device work included)."""
    sync(device)
    started = time.perf_counter()
    box = {}
    yield lambda: box["seconds"]
    sync(device)
    box["seconds"] = time.perf_counter() - started


def verdict(value: float | None, limit: float, below: bool = True, applies: bool = True) -> str:
    """'met' / 'not met' for ``value <= limit`` (``below``) or ``value >= limit``; n/a when not comparable."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if not applies:
        return "n/a (quick sizes)"
    return "met" if (value <= limit if below else value >= limit) else "NOT met"


def reference_gflops(repeats: int = 5) -> float:
    """Speed of this machine right now: a 2,560 x 152 by 152 x 35,840 float32 product, best of
    ``repeats``. Shared hosts drift by 2x and more within an hour, and load average misses it."""
    rng = np.random.default_rng(0)
    queries, bank = rng.random((2_560, 152), dtype=np.float32), rng.random((35_840, 152), dtype=np.float32)
    best = math.inf
    for _ in range(repeats):
        with stopwatch() as t:
            queries @ bank.T
        best = min(best, t())
    return 2 * 2_560 * 35_840 * 152 / best / 1e9


def set_threads(n: int) -> None:
    import faiss

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


def find_datasets(data: Path) -> dict[str, Path]:
    """Layout name -> folder, for ``data`` itself or each of its sub-folders."""
    found = {}
    for folder in [data, *sorted(p for p in data.iterdir() if p.is_dir())]:
        try:
            found.setdefault(detect_layout(folder), folder)
        except ValueError:
            continue
    return found


@cache
def candidates(folder: Path) -> tuple[Candidate, ...]:
    return tuple(c for c in iter_candidates(folder) if isinstance(c, Candidate))


def layout_paths(ctx: Context, layout: str) -> list[str]:
    if layout not in ctx.datasets:
        raise SystemExit(f"--data {ctx.data} holds no {layout} dataset (found: {sorted(ctx.datasets)})")
    return [c.path for c in candidates(ctx.datasets[layout])]


def extract_patches(
    extractor: FeatureExtractor,
    items: list[tuple[str, bool]],
    size: tuple[int, int],
    batch_size: int,
    dtype=np.float32,
    desc: str = "patch features",
) -> np.ndarray:
    """Patch features of ``items`` ((path, flipped) pairs) at ``size``, streamed batch by batch into one
    preallocated ``(len(items) * h * w, D)`` array (no per-image list, no concatenation)."""
    paths = [path for path, _ in items]
    out, per_image = None, 0
    with tqdm(total=len(items), desc=desc, unit="img", leave=False) as bar:
        for positions, (images,) in iter_resized_batches(paths, [size], batch_size):
            images = [np.ascontiguousarray(im[:, ::-1]) if items[i][1] else im for i, im in zip(positions, images)]
            features = extractor.patch_features(extractor.batch(images, size))
            if out is None:
                per_image = features.shape[1] * features.shape[2]
                out = np.empty((len(items) * per_image, features.shape[3]), dtype=dtype)
            block = features.reshape(len(positions) * per_image, -1).cpu().numpy()
            out[positions[0] * per_image : (positions[-1] + 1) * per_image] = block
            bar.update(len(positions))
    return out


def ms_text(stats: dict) -> str:
    return " / ".join(fmt(stats[k], ".1f") for k in ("mean_ms", "p50_ms", "p95_ms"))


def print_section(section: Section) -> None:
    width = [max(len(r[i]) for r in section.rows + [("metric", "measured", "target", "verdict")]) for i in range(4)]
    print(f"\n== {section.title}")
    for row in [("metric", "measured", "target", "verdict"), *section.rows]:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, width)).rstrip())
    for note in section.notes:
        print(f"  note: {note}")
    sys.stdout.flush()


def run_pipeline_steps(config: PipelineConfig, assemble: bool = False) -> dict:
    """index -> splits -> embeddings -> gate -> banks -> calibration (-> cascade), each timed."""
    seconds: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds[name] = time.perf_counter() - started
        return result

    def quiet(message: str) -> None:  # the tqdm bar of the steps says enough
        pass

    with tqdm(total=7 if assemble else 6, desc="pipeline steps", unit="step", leave=False) as bar:
        index = timed("index", steps.index_datasets, config)
        bar.update()
        splits = timed("splits", steps.split_dataset, index.index, config)
        bar.update()
        embedded = timed("embeddings", steps.embed_images, splits, config, log=quiet)
        bar.update()
        gate = timed("gate", steps.fit_gate, splits, config)
        bar.update()
        banks = timed("banks", steps.build_banks, splits, config, log=quiet)
        bar.update()
        calibrations_dir = config.artifacts_dir / "calibrations"
        before = {p.name for p in calibrations_dir.glob("*.json")} if calibrations_dir.exists() else set()
        calibration = timed("calibration", steps.calibrate, splits, gate, banks, config)
        bar.update()
        cascade_dir = None
        if assemble:
            cascade_dir = timed("assemble", steps.assemble_cascade, splits, gate, banks, calibration, config)
            bar.update()
    return {
        "seconds": seconds,
        "total_seconds": sum(v for k, v in seconds.items() if k != "assemble"),
        "splits": splits,
        "images_read": index.images_read,
        "embedded": embedded["computed"],
        "gate_reused": gate["reused"],
        "gate_path": gate["path"],
        "banks": banks["banks"],
        "calibration_reused": Path(calibration["path"]).name in before,
        "cascade_dir": cascade_dir,
    }


# ---------------------------------------------------------------- 1. coreset


def naive_greedy_kcenter(features: np.ndarray, n_select: int, start_index: int, device: str = "cpu") -> np.ndarray:
    """Textbook exact greedy k-center: one full N x D distance pass per pick, float32, no pruning.

    Squared distances use ``|x|^2 - 2 x.c + |c|^2`` on mean-centred data (accurate in float32).
    """
    x = torch.from_numpy(np.asarray(features, dtype=np.float32))
    x = (x - x.mean(dim=0, keepdim=True)).to(device)
    norms = (x * x).sum(dim=1)
    nearest = torch.full((x.shape[0],), float("inf"), device=x.device)
    selected = np.empty(n_select, dtype=np.int64)
    current = int(start_index)
    for t in tqdm(range(n_select), desc="naive greedy k-center", unit="pick", leave=False, mininterval=1.0):
        selected[t] = current
        d2 = torch.mv(x, x[current]).mul_(-2.0).add_(norms).add_(norms[current]).clamp_(min=0.0)
        torch.minimum(nearest, d2, out=nearest)
        nearest[current] = -1.0
        current = int(torch.argmax(nearest))
    return selected


def bank_features(ctx: Context, extractor: FeatureExtractor) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(small bank, big bank, notes) of real 256x256 patch features: Kolektor first, then Magnetic-tile."""
    sizes = ctx.sizes
    pool = layout_paths(ctx, "kolektor") + layout_paths(ctx, "magnetic_tile")
    n_images = min(len(pool), max(sizes.coreset_big_images, sizes.coreset_small_images))
    started = time.perf_counter()
    features = extract_patches(extractor, [(p, False) for p in pool[:n_images]], SQUARE, 16, desc="coreset bank features")
    extract_seconds = time.perf_counter() - started
    per_image = len(features) // n_images
    small = features[: sizes.coreset_small_images * per_image]
    notes = [
        (
            f"banks: real patch features of {n_images} images squashed to {SQUARE[0]}x{SQUARE[1]} "
            f"({per_image} patches each; extraction took {extract_seconds:.1f} s); small bank = the first "
            f"{sizes.coreset_small_images} Kolektor images"
        )
    ]
    if len(features) >= sizes.coreset_big_patches:
        big = features[: sizes.coreset_big_patches]
    else:
        # Too few real images: tile the real features with a small per-copy jitter (1 % of each
        # dimension's spread) so that no two rows coincide.
        rng = np.random.default_rng(0)
        copies = math.ceil(sizes.coreset_big_patches / len(features))
        spread = features.std(axis=0, dtype=np.float64).astype(np.float32) * 0.01
        big = np.concatenate(
            [features] + [features + rng.standard_normal(features.shape, dtype=np.float32) * spread for _ in range(copies - 1)]
        )[: sizes.coreset_big_patches]
        notes.append(
            f"big bank: {len(features):,} real patches tiled x{copies} with 1 % Gaussian jitter (not enough real images)"
        )
    return np.ascontiguousarray(small), np.ascontiguousarray(big), notes


def timed_folded_bank(features: np.ndarray, config: BankConfig) -> tuple[float, MemoryBank, int]:
    """The pipeline's bank build (per-fold coresets + held-out statistics) on whole images of
    ``features`` (rows grouped per image of the SQUARE grid); returns seconds, bank, patches used."""
    side = SQUARE[0] // 8
    n_images = len(features) // (side * side)
    grids = list(features[: n_images * side * side].reshape(n_images, side, side, -1))
    started = time.perf_counter()
    bank = fit_memory_bank(grids, [str(i) for i in range(n_images)], config)
    return time.perf_counter() - started, bank, n_images * side * side


def section_coreset(ctx: Context, device: str = "cpu") -> Section:
    section = Section(f"coreset-{device}", f"1. Coreset selection (greedy_coreset, device {device})")
    full = not ctx.quick
    ratio = ctx.config.bank.coreset_ratio
    extractor = FeatureExtractor(ctx.config.backbone, device)
    small, big, notes = bank_features(ctx, extractor)
    del extractor
    section.notes += notes

    k_small = coreset_size(len(small), ratio)
    with stopwatch(device) as t_fast:
        fast = greedy_coreset(small, k_small, start_index=0, device=device)
    with stopwatch(device) as t_naive:
        exact = naive_greedy_kcenter(small, k_small, 0, device)
    r_fast, r_exact = coverage_radius(small, fast), coverage_radius(small, exact)
    same_picks = len(np.intersect1d(fast, exact)) / k_small
    first_diff = int(np.argmax(fast != exact)) if (fast != exact).any() else k_small
    radius_ratio = r_fast / r_exact if r_exact > 0 else float("nan")

    k_big = coreset_size(len(big), ratio)
    with stopwatch(device) as t_big:
        greedy_coreset(big, k_big, start_index=0, device=device)

    n_s, n_b = f"{len(small):,} x {small.shape[1]}", f"{len(big):,} x {big.shape[1]}"
    section.add(
        f"greedy_coreset {n_s} -> {k_small:,}",
        f"{t_fast():.2f} s",
        f"<= {FULL.coreset_seconds_small:.0f} s at 65,536",
        verdict(t_fast(), FULL.coreset_seconds_small, applies=full and len(small) == 65_536),
    )
    section.add(f"naive exact greedy {n_s} -> {k_small:,}", f"{t_naive():.2f} s", "reference", "")
    section.add("speed-up over naive", f"{t_naive() / t_fast():.1f}x", "", "")
    section.add(
        "coverage radius fast / exact",
        f"{r_fast:.4f} / {r_exact:.4f} = {radius_ratio:.4f}",
        "<= 1.05",
        verdict(radius_ratio, 1.05),
    )
    section.add("same picks as exact (first difference at pick)", f"{same_picks:.1%} ({first_diff:,})", "", "")
    section.add(
        f"greedy_coreset {n_b} -> {k_big:,}",
        f"{t_big():.2f} s",
        f"< {FULL.coreset_seconds_big:.0f} s at 500,000",
        verdict(t_big(), FULL.coreset_seconds_big, applies=full and len(big) == 500_000),
    )
    if device == "cpu":  # the pipeline builds banks on the CPU
        bank_config = ctx.config.bank
        t_fold_small, fold_bank, _ = timed_folded_bank(small, bank_config)
        r_fold = float(fold_bank.search(small, k=1)[0].max())
        t_fold_big, _, n_fold_big = timed_folded_bank(big, bank_config)
        folds = bank_config.folds
        section.add(f"fit_memory_bank ({folds} folds, + position statistics) {n_s} -> {len(fold_bank.features):,}", f"{t_fold_small:.2f} s", "", "")
        section.add("coverage radius fold union / exact", f"{r_fold:.4f} / {r_exact:.4f} = {r_fold / r_exact:.4f}", "", "")
        section.add(
            f"fit_memory_bank ({folds} folds, + position statistics) {n_fold_big:,} x {big.shape[1]}",
            f"{t_fold_big:.2f} s",
            f"< {FULL.coreset_seconds_big:.0f} s at 500,000",
            verdict(t_fold_big, FULL.coreset_seconds_big, applies=full and n_fold_big > 499_000),
        )
        section.notes.append(
            "fit_memory_bank is how the pipeline builds a bank: images dealt into folds, one greedy coreset per fold "
            "(their union is the bank), every image scored against the other folds' coresets for the position statistics"
        )
        section.data |= {"fold_small_seconds": t_fold_small, "fold_big_seconds": t_fold_big, "radius_fold_union": r_fold}
    section.data |= {
        "device": device,
        "small_patches": len(small),
        "big_patches": len(big),
        "dim": int(small.shape[1]),
        "k_small": k_small,
        "k_big": k_big,
        "fast_small_seconds": t_fast(),
        "naive_small_seconds": t_naive(),
        "fast_big_seconds": t_big(),
        "radius_fast": r_fast,
        "radius_exact": r_exact,
        "radius_ratio": radius_ratio,
        "same_picks_fraction": same_picks,
        "first_different_pick": first_diff,
    }
    return section


# ---------------------------------------------------------------- 2. embedding throughput


@cache
def kolektor_index(folder: Path) -> pd.DataFrame:
    return build_index([DatasetRoot(folder, "kolektor")]).index


def section_embedding(ctx: Context, device: str = "cpu") -> Section:
    section = Section(f"embedding-{device}", f"2. Embedding throughput (embed_domain vs bare backbone, device {device})")
    sizes = ctx.sizes
    index = kolektor_index(ctx.datasets["kolektor"])
    inputs = steps.input_sizes(index, ctx.config)["kolektor"]
    rows = index.drop_duplicates("content_hash").head(sizes.embed_images)
    n, batch = len(rows), sizes.embed_batch
    extractor = FeatureExtractor(ctx.config.backbone, device)

    # Pre-decoded, pre-resized, normalised tensors of the same sizes and batches as embed_domain uses.
    decoded = [load_image(p) for p in tqdm(rows["path"], desc="pre-decoding", unit="img", leave=False)]
    tensors = [
        (
            extractor.batch(decoded[s : s + batch], inputs.heatmap_size),
            extractor.batch(decoded[s : s + batch], inputs.gate_size),
        )
        for s in range(0, n, batch)
    ]
    del decoded

    def raw_pass() -> float:
        with stopwatch(device) as t:
            for heat, gate in tqdm(tensors, desc="bare backbone", unit="batch", leave=False):
                extractor.patch_features(heat).cpu().numpy()
                extractor.image_embedding(gate).cpu().numpy()
        return t()

    def embed_pass() -> tuple[float, int, int]:
        """Seconds, images computed and bytes written by embed_domain into an empty store."""
        with tempfile.TemporaryDirectory(dir=ctx.work) as store_dir:
            with tqdm(total=n, desc="embed_domain", unit="img", leave=False) as bar, stopwatch(device) as t:
                computed = embed_domain(
                    FeatureStore(store_dir),
                    ctx.config.backbone,
                    lambda: extractor,
                    rows,
                    inputs,
                    True,
                    batch,
                    lambda done, total: bar.update(done - bar.n),
                )
            return t(), computed, sum(f.stat().st_size for f in Path(store_dir).rglob("*.parquet"))

    raw_pass()  # warm-up (allocator, kernels)
    # Alternated and repeated, medians compared: this host's speed drifts 10-20 % within a minute.
    raw_times, embed_times = [raw_pass()], []
    for _ in range(sizes.embed_repeats):
        seconds, computed, store_bytes = embed_pass()
        embed_times.append(seconds)
        raw_times.append(raw_pass())
    with stopwatch() as t_decode:
        for _ in iter_resized_batches(rows["path"].tolist(), [inputs.heatmap_size, inputs.gate_size], batch):
            pass

    embed_ips, raw_ips = computed / float(np.median(embed_times)), n / float(np.median(raw_times))
    ratio = embed_ips / raw_ips

    def passes(times: list[float], images: int) -> str:
        return ", ".join(f"{images / t:.2f}" for t in times)

    sizes_text = f"{inputs.heatmap_size[0]}x{inputs.heatmap_size[1]} + {inputs.gate_size[0]}x{inputs.gate_size[1]}"
    section.add(
        f"embed_domain, {computed} Kolektor images at {sizes_text}, batch {batch}",
        f"{embed_ips:.2f} img/s (passes {passes(embed_times, computed)})",
        "",
        "",
    )
    section.add(
        "bare backbone (patch_features + image_embedding), same tensors",
        f"{raw_ips:.2f} img/s (passes {passes(raw_times, n)})",
        "",
        "",
    )
    section.add("embed_domain / bare backbone", f"{ratio:.3f}", ">= 0.80", verdict(ratio, 0.8, below=False))
    section.add("decode + resize alone (loader, 2 threads)", f"{n / t_decode():.2f} img/s", "", "")
    section.add(
        "feature store written", f"{store_bytes / 2**20:.1f} MiB ({store_bytes / max(computed, 1) / 2**10:.0f} KiB/img)", "", ""
    )
    section.data = {
        "device": device,
        "images": n,
        "batch_size": batch,
        "heatmap_size": list(inputs.heatmap_size),
        "gate_size": list(inputs.gate_size),
        "embed_images_per_s": embed_ips,
        "raw_images_per_s": raw_ips,
        "raw_pass_seconds": raw_times,
        "embed_pass_seconds": embed_times,
        "ratio": ratio,
        "decode_resize_images_per_s": n / t_decode(),
        "store_bytes": store_bytes,
    }
    return section


# ---------------------------------------------------------------- 3. scoring latency + faiss


def subset_datasets(
    ctx: Context, target: Path, kolektor_images: int | None, magnetic_images: int, magnetic_extra: int = 0
) -> tuple[Path | None, Path | None, list[tuple[Path, Path]]]:
    """Copy a real subset into ``target`` in the datasets' own layouts (never touching the originals).

    Kolektor: whole ``kosNN`` folders (a part is never split) until ``kolektor_images`` images.
    Magnetic tile: a seeded random sample of ``magnetic_images`` images (with masks) from every class;
    the next ``magnetic_extra`` images of the sample order are returned as (source, destination)
    pairs, not copied, for a later "new images arrive" step.
    """
    kolektor_dir = magnetic_dir = None
    if kolektor_images:
        source = ctx.datasets["kolektor"]
        kolektor_dir = target / source.name
        copied = 0
        for part in sorted(p for p in source.iterdir() if p.is_dir()):
            if copied >= kolektor_images:
                break
            shutil.copytree(part, kolektor_dir / part.name)
            copied += sum(1 for c in candidates(source) if Path(c.path).parent == part)
    extra = []
    if magnetic_images:
        source = ctx.datasets["magnetic_tile"]
        magnetic_dir = target / source.name
        pool = list(candidates(source))
        order = np.random.default_rng(0).permutation(len(pool))
        for rank, position in enumerate(order[: magnetic_images + magnetic_extra]):
            image = Path(pool[position].path)
            pairs = [(image, magnetic_dir / image.relative_to(source))]
            mask = image.with_suffix(".png")
            if mask.exists():
                pairs.append((mask, magnetic_dir / mask.relative_to(source)))
            for src, dst in pairs:
                if rank < magnetic_images:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dst)
                else:
                    extra.append((src, dst))
    return kolektor_dir, magnetic_dir, extra


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
    config = replace(ctx.config, data_dir=work / "data", dataset_roots=roots, device="cpu")
    result = run_pipeline_steps(config, assemble=True)
    return result["cascade_dir"], {"root": roots, "build_seconds": result["seconds"], "splits": result["splits"]}


def latency_test_images(ctx: Context, info: dict) -> pd.DataFrame:
    splits = info.get("splits")
    if splits is None:  # --cascade given: the default split of the Kolektor dataset
        config = replace(ctx.config, dataset_roots=f"kolektor={ctx.datasets['kolektor']}")
        splits = steps.split_dataset(kolektor_index(ctx.datasets["kolektor"]), config)
    test = splits[(splits["split"] == "test_mix") & (splits["domain"] == "kolektor")]
    return test.head(ctx.sizes.latency_images + ctx.sizes.latency_warmup)


def section_latency(ctx: Context, device: str = "cpu", with_faiss: bool = True) -> Section:
    section = Section(f"latency-{device}", f"3. Scoring latency per image, Kolektor, batch size 1 (device {device})")
    sizes = ctx.sizes
    info: dict = {}
    if ctx.cascade_dir is None:
        ctx.cascade_dir, info = build_latency_cascade(ctx)
        section.notes.append(
            f"cascade built by the pipeline steps from {info['root']} in {sum(info['build_seconds'].values()):.0f} s"
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
            target, check = f"<= 1.5x forward ({1.5 * fwd:.1f} ms)", verdict(st["mean_ms"] / fwd, 1.5)
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


# IVF lists probed per query: recall@1 and speed for each (the bank's default is BankConfig.ivf_nprobe).
IVF_NPROBES = (4, 8, 16, 32)


def faiss_rows(section: Section, model: CascadeModel, test: pd.DataFrame, n_images: int) -> None:
    """Exact IndexFlatL2 vs HNSW and IVF on the cascade's Kolektor bank with real test-image patches,
    then whole-image scoring (score_patches) on an IVF bank with exact refinement against a flat bank."""
    import faiss

    source = model.banks["kolektor"]
    bank = np.ascontiguousarray(source.features, dtype=np.float32)
    size = model.inputs["kolektor"].heatmap_size
    paths = test["path"].head(n_images).tolist()
    n_images = len(paths)
    grids = [
        model.extractor.patch_features(model.extractor.batch([load_image(p)], size))[0].cpu().numpy() for p in paths
    ]
    queries = np.concatenate([g.reshape(-1, bank.shape[1]) for g in grids]).astype(np.float32)
    ivf = {f"ivf nprobe {n}": n for n in IVF_NPROBES}
    kinds = {"flat": "flat", "hnsw": "hnsw", **{name: "ivf" for name in ivf}}
    results, built, exact_ids, exact_d = {}, {}, None, None
    for name, kind in kinds.items():
        with stopwatch() as t_build:
            built[name] = build_faiss_index(bank, kind, seed=0, ivf_nprobe=ivf.get(name, BankConfig.ivf_nprobe))
        index = built[name]
        index.search(queries[:256], 1)  # warm-up
        with stopwatch() as t_search:
            distances, ids = index.search(queries, 1)
        if name == "flat":
            exact_ids, exact_d = ids[:, 0], distances[:, 0]
        # A different id at the same distance (a tie) counts as a hit.
        hits = (ids[:, 0] == exact_ids) | np.isclose(distances[:, 0], exact_d, rtol=1e-5, atol=1e-6)
        # What a miss costs the anomaly score: how much farther the returned neighbour is, relative to
        # the mean exact nearest-neighbour distance (per-query ratios blow up where a query is in the bank).
        found, exact = np.sqrt(np.maximum(distances[:, 0], 0)), np.sqrt(np.maximum(exact_d, 0))
        over = (found - exact) / max(float(exact.mean()), 1e-12)
        results[name] = {
            "build_seconds": t_build(),
            "search_seconds": t_search(),
            "recall_at_1": float(hits.mean()),
            "distance_overestimate_mean": float(over.mean()),
            "distance_overestimate_p99": float(np.percentile(over, 99)),
        }
    flat = results["flat"]["search_seconds"]
    for name, r in results.items():
        r["speedup"] = flat / r["search_seconds"]
        section.add(
            f"faiss {name}: recall@1 / NN distance error mean, p99 / search per image / speed-up / build",
            f"{r['recall_at_1']:.4f} / {r['distance_overestimate_mean']:+.2%}, {r['distance_overestimate_p99']:+.2%} / "
            f"{r['search_seconds'] * 1000 / n_images:.0f} ms / {r['speedup']:.2f}x / {r['build_seconds']:.2f} s",
            ">= 0.99 recall@1" if name != "flat" else "",
            verdict(r["recall_at_1"], 0.99, below=False) if name != "flat" else "",
        )
    section.data["faiss"] = {"bank": len(bank), "queries": len(queries), **results}
    refined_scoring_rows(section, source, {name: built[name] for name in ("flat", *ivf)}, grids, model.scoring)
    section.notes.append(
        f"faiss: bank {len(bank):,} x {bank.shape[1]} (the cascade's Kolektor coreset), "
        f"{len(queries):,} query patches from {n_images} test images, k=1, {faiss.omp_get_max_threads()} faiss threads; "
        "NN distance error = (returned - exact nearest distance) / mean exact nearest distance"
    )


def refined_scoring_rows(section: Section, source: MemoryBank, indexes: dict, grids: list[np.ndarray], scoring) -> None:
    """score_patches per image with each index in ``indexes`` (approximate ones: worst patches re-searched
    exactly) against its "flat" entry."""
    timed = {}
    for name, index in indexes.items():
        bank = MemoryBank(source.features, index, source.meta, source.position_stats)
        score_patches(bank, grids[0], scoring)  # warm-up
        with stopwatch() as t:
            scores = [score_patches(bank, grid, scoring) for grid in grids]
        timed[name] = (t() / len(grids), scores)
    flat_seconds, exact = timed["flat"]
    refined = {}
    for name, (seconds, scores) in timed.items():
        if name == "flat":
            continue
        score_error = max(abs(a.image_score - b.image_score) / max(abs(b.image_score), 1e-12) for a, b in zip(scores, exact))
        map_over = float(np.mean([(a.grid - b.grid).mean() for a, b in zip(scores, exact)]))
        refined[name] = {"seconds": seconds, "speedup": flat_seconds / seconds, "image_score_rel_error_max": score_error, "grid_overestimate_mean": map_over}
        section.add(
            f"score_patches, {name} + exact refinement: per image / speed-up vs flat / image-score error max / map overestimate mean",
            f"{seconds * 1000:.0f} ms / {flat_seconds / seconds:.2f}x / {score_error:.1e} / {map_over:+.3f}",
            "",
            "",
        )
    section.notes.append(
        f"score_patches on the flat bank: {flat_seconds * 1000:.0f} ms per image; with an approximate index the patches "
        "it scores worst are re-searched exactly until none can beat the worst exact one, so the image score is exact "
        "and the other map values are upper bounds (map overestimate: mean standardised-score gap to the exact map)"
    )
    section.data["refined_scoring"] = {"flat_seconds": flat_seconds, **refined}


# ---------------------------------------------------------------- 4. memory


def read_status(field_name: str) -> int:
    """A ``/proc/self/status`` field (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    return 0


def memory_child(spec_path: str) -> None:
    """Run inside the subprocess: stream features into float16, build the bank; JSON lines on stdout."""
    spec = json.loads(Path(spec_path).read_text())
    lock, peak, stop = threading.Lock(), [0], threading.Event()

    def emit(event: str, **values) -> None:
        with lock:
            print(json.dumps({"event": event, "peak_rss": max(peak[0], read_status("VmHWM")), **values}), flush=True)

    def sample() -> None:
        last = 0.0
        while not stop.is_set():
            peak[0] = max(peak[0], read_status("VmRSS"))
            if time.monotonic() - last > 2.0:
                emit("rss", rss=read_status("VmRSS"))
                last = time.monotonic()
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    emit("start", rss=read_status("VmRSS"))
    started = time.perf_counter()
    extractor = FeatureExtractor(PipelineConfig().backbone, spec["device"])
    emit("model", seconds=time.perf_counter() - started)
    started = time.perf_counter()
    items = [(p, bool(f)) for p, f in spec["items"]]
    features = extract_patches(extractor, items, SQUARE, 16, dtype=np.float16, desc="memory: patch features")
    emit(
        "extract", seconds=time.perf_counter() - started, patches=len(features), dim=int(features.shape[1]), bytes=features.nbytes
    )
    del extractor
    started = time.perf_counter()
    side = SQUARE[0] // 8
    grids = list(features.reshape(len(items), side, side, -1))  # views, no copy
    bank = fit_memory_bank(grids, [str(i) for i in range(len(items))], BankConfig(**spec["bank"]))
    emit("bank", seconds=time.perf_counter() - started, coreset_patches=len(bank.features))
    stop.set()
    emit("done", vm_hwm=read_status("VmHWM"))


def memory_items(ctx: Context) -> tuple[list[tuple[str, bool]], int]:
    """Every real image of the three datasets (interleaved), then horizontally flipped copies."""
    lists = [layout_paths(ctx, layout) for layout in ("kolektor", "magnetic_tile", "neu") if layout in ctx.datasets]
    real = [paths[i] for i in range(max(map(len, lists))) for paths in lists if i < len(paths)]
    if ctx.sizes.memory_real_cap is not None:
        real = real[: ctx.sizes.memory_real_cap]
    n = ctx.sizes.memory_images
    items = [(p, False) for p in real[:n]]
    while len(items) < n:
        items += [(p, True) for p in real[: n - len(items)]]
    return items, min(len(real), n)


def section_memory(ctx: Context) -> Section:
    section = Section("memory", f"4. Peak memory of building a bank (subprocess, device {ctx.device})")
    items, n_real = memory_items(ctx)
    ratio, cap = ctx.config.bank.coreset_ratio, ctx.config.bank.max_patches
    spec = ctx.work / "memory_spec.json"
    spec.write_text(json.dumps({"items": items, "device": ctx.device, "bank": asdict(ctx.config.bank)}))
    command = [
        sys.executable,
        "-m",
        "cpst_pipeline.benchmark.speed",
        "--memory-child",
        str(spec),
        "--threads",
        str(torch.get_num_threads()),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=Path.cwd())
    events: queue.Queue = queue.Queue()
    reader = threading.Thread(
        target=lambda: [events.put(json.loads(line)) for line in process.stdout if line.startswith("{")], daemon=True
    )
    reader.start()

    seen, peak, deadline, killed = {}, 0, None, False
    while process.poll() is None or not events.empty():
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0 and process.poll() is None:
            process.kill()  # our own child, by its handle
            killed = True
            break
        try:
            event = events.get(timeout=1.0 if timeout is None else max(0.1, min(timeout, 1.0)))
        except queue.Empty:
            continue
        peak = max(peak, event.get("peak_rss", 0))
        seen[event["event"]] = event
        if event["event"] == "extract":
            deadline = time.monotonic() + ctx.sizes.memory_coreset_timeout
    process.wait()
    reader.join(timeout=30)
    while not events.empty():
        event = events.get()
        peak = max(peak, event.get("peak_rss", 0))
        seen[event["event"]] = event
    if "extract" not in seen:
        raise RuntimeError(f"memory subprocess failed (exit code {process.returncode})")

    extract = seen["extract"]
    n_patches = extract["patches"]
    float16_gib = extract["bytes"] / GIB
    fold_patches = n_patches // ctx.config.bank.folds
    sampler_copy_gib = fold_patches * (extract["dim"] + 2) * 4 / GIB  # the sampler's float32 [x, 1, |x|^2] copy of one fold
    section.add("images (real + flipped copies)", f"{len(items):,} ({n_real:,} + {len(items) - n_real:,})", "", "")
    section.add("patches x dim (float16 array)", f"{n_patches:,} x {extract['dim']} ({float16_gib:.2f} GiB)", "", "")
    section.add("feature extraction", f"{extract['seconds']:.0f} s ({len(items) / extract['seconds']:.1f} img/s)", "", "")
    section.add(
        "RSS after imports / after loading the backbone",
        f"{seen['start']['rss'] / GIB:.2f} / {seen['model']['peak_rss'] / GIB:.2f} GiB",
        "",
        "",
    )
    section.add("peak RSS after extraction", f"{seen['extract']['peak_rss'] / GIB:.2f} GiB", "", "")
    if "bank" in seen:
        bank = seen["bank"]
        section.add(f"fit_memory_bank ({ratio:.0%} coreset, cap {cap:,} -> {bank['coreset_patches']:,})", f"{bank['seconds']:.0f} s", "", "")
    else:
        state = "killed" if killed else f"exited with code {process.returncode}"
        section.add(
            f"fit_memory_bank ({ratio:.0%} coreset, cap {cap:,})",
            f"not finished after {ctx.sizes.memory_coreset_timeout:.0f} s ({state})",
            "",
            "",
        )
    full = not ctx.quick
    section.add(
        "peak RSS of the subprocess (its VmHWM)",
        f"{peak / GIB:.2f} GiB",
        "<= 6 GiB at 5,000 images",
        verdict(peak / GIB, 6.0, applies=full and len(items) == 5000),
    )
    section.add("peak RSS above the loaded backbone", f"{(peak - seen['model']['peak_rss']) / GIB:.2f} GiB", "", "")
    section.notes.append(
        f"the sampler's float32 working copy of one fold alone is {sampler_copy_gib:.2f} GiB ({fold_patches:,} x {extract['dim'] + 2} x 4 B)"
    )
    section.notes.append(
        "peak RSS is the subprocess's own VmHWM (/proc/self/status), read by a 20 ms sampling thread and at each phase; "
        "getrusage(RUSAGE_CHILDREN) is not used: after vfork + exec it reports the parent's high-water mark"
    )
    if len(items) > n_real:
        section.notes.append(f"{len(items) - n_real:,} of the images are horizontal flips of real ones (not enough real images)")
    section.data = {
        "images": len(items),
        "real_images": n_real,
        "events": seen,
        "peak_rss": peak,
        "killed": killed,
        "float16_bytes": extract["bytes"],
    }
    return section


# ---------------------------------------------------------------- 5. incremental rebuild


def file_digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(directory).iterdir()) if p.is_file()}


def section_incremental(ctx: Context) -> Section:
    section = Section("incremental", f"5. Incremental rebuild with the pipeline steps (device {ctx.device})")
    sizes = ctx.sizes
    work = ctx.work / "incremental"
    n_extra = max(1, round(sizes.incremental_magnetic * sizes.incremental_added))
    kolektor, magnetic, extra = subset_datasets(
        ctx, work / "datasets", sizes.incremental_kolektor, sizes.incremental_magnetic, n_extra
    )
    config = replace(
        ctx.config, data_dir=work / "data", dataset_roots=f"kolektor={kolektor},magnetic_tile={magnetic}", device=ctx.device
    )

    full = run_pipeline_steps(config)
    counts = full["splits"].groupby("domain").size().to_dict()
    kept = "kolektor"
    kept_bank = full["banks"][kept]
    before = file_digests(Path(kept_bank["path"]))

    for src, dst in extra:  # new images arrive in one domain
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    added = run_pipeline_steps(config)
    after_bank = added["banks"][kept]
    identical = after_bank["path"] == kept_bank["path"] and file_digests(Path(after_bank["path"])) == before
    again = run_pipeline_steps(config)

    def banks_text(run: dict) -> str:
        return ", ".join(f"{d} {'reused' if b['reused'] else 'rebuilt'}" for d, b in sorted(run["banks"].items()))

    def step_text(run: dict) -> str:
        return ", ".join(f"{k} {v:.1f}" for k, v in run["seconds"].items())

    ratio = added["total_seconds"] / full["total_seconds"]
    n_added_images = sum(1 for _, dst in extra if dst.suffix.lower() == ".jpg")
    section.add("subset", ", ".join(f"{d} {n}" for d, n in sorted(counts.items())) + " images", "", "")
    section.add("full run (index..calibration)", f"{full['total_seconds']:.1f} s", "", "")
    section.add("  per step, s", step_text(full), "", "")
    section.add(f"+{n_added_images} magnetic_tile images: re-run", f"{added['total_seconds']:.1f} s", "", "")
    section.add("  per step, s", step_text(added), "", "")
    section.add("  re-run / full", f"{ratio:.1%}", "<= 15 %", verdict(ratio, 0.15))
    section.add(
        "  images read by the index (decoded + hashed)", str(added["images_read"]), f"{n_added_images} (the new ones)",
        "met" if added["images_read"] == n_added_images else "NOT met",
    )
    section.add(
        "  images embedded",
        ", ".join(f"{d} {n}" for d, n in sorted(added["embedded"].items())),
        f"{n_added_images} (the new ones)",
        "met" if sum(added["embedded"].values()) == n_added_images else "NOT met",
    )
    section.add("  banks", banks_text(added), f"{kept} reused", "met" if after_bank["reused"] else "NOT met")
    section.add(f"  {kept} bank: same directory, byte-identical files", str(identical), "True", "met" if identical else "NOT met")
    section.add(
        "  gate / calibration",
        f"{'reused' if added['gate_reused'] else 'retrained'} / {'reused' if added['calibration_reused'] else 'recomputed'}",
        "",
        "",
    )
    nothing = (
        again["images_read"] == 0
        and sum(again["embedded"].values()) == 0
        and again["gate_reused"]
        and again["calibration_reused"]
        and all(b["reused"] for b in again["banks"].values())
    )
    section.add(
        "no-change re-run",
        f"{again['total_seconds']:.1f} s ({again['total_seconds'] / full['total_seconds']:.1%} of full)",
        "",
        "",
    )
    section.add("  per step, s", step_text(again), "", "")
    section.add(
        "  read / embedded / banks / gate / calibration",
        f"{again['images_read']} / {sum(again['embedded'].values())} / {banks_text(again)} / {'reused' if again['gate_reused'] else 'retrained'} / "
        f"{'reused' if again['calibration_reused'] else 'recomputed'}",
        "0 / 0 / all reused / reused / reused",
        "met" if nothing else "NOT met",
    )
    section.notes.append(
        "all three runs in one process (model weights and file cache warm after the first); "
        "the subset is a copy under the work folder"
    )
    section.data = {
        "images": counts,
        "added_images": n_added_images,
        "runs": {
            name: {k: v for k, v in run.items() if k not in ("splits", "cascade_dir")}
            for name, run in (("full", full), ("added", added), ("no_change", again))
        },
        "ratio": ratio,
        "kept_bank_identical": identical,
    }
    return section


# ---------------------------------------------------------------- report


def markdown(sections: list[Section], header: dict) -> str:
    lines = [
        "## Speed and memory",
        "",
        (
            f"`python -m cpst_pipeline.benchmark.speed --data <datasets>{' --quick' if header['quick'] else ''}` "
            f"on {header['machine']}, {header['cpu_count']} CPUs, {header['torch_threads']} torch threads, "
            f"device `{header['device']}`, load average {header['load_average']} at the start, "
            f"backbone `{header['backbone']}`, {header['date']}, {header['seconds']:.0f} s in all. "
            f"Reference matrix product (the exact kNN of one Kolektor image): {header['reference_gflops_start']:.0f} "
            f"GFLOP/s at the start, {header['reference_gflops_end']:.0f} at the end; compare runs by it."
        ),
    ]
    if header["busy"]:
        lines += [
            "",
            f"**The machine was busy (load average {header['load_average']} at the start): timings are not representative.**",
        ]
    if header["quick"]:
        lines += ["", "**Quick mode: small sizes, figures not comparable with the targets (stated for the full sizes).**"]
    for section in sections:
        lines += ["", f"### {section.title}", "", "| metric | measured | target | verdict |", "|---|---|---|---|"]
        lines += [f"| {m.strip()} | {v} | {t} | {c} |" for m, v, t, c in section.rows]
        if section.notes:
            lines += [""] + [f"- {note}" for note in section.notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder holding KolektorSDD, Magnetic-tile-defect, NEU-DET (read-only)")
    parser.add_argument("--quick", action="store_true", help="small sizes: check that every section runs")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--cascade", help="existing cascade directory for the latency section (default: build one)")
    parser.add_argument("--work", help="scratch folder (default: a new temporary folder, removed at the end)")
    parser.add_argument(
        "--memory-coreset-timeout", type=float, help="seconds the 5,000-image bank build may take before it is stopped"
    )
    parser.add_argument(
        "--output", help="markdown file (default BENCHMARKS.md; /tmp/cpst-speed-quick/BENCHMARKS.md with --quick)"
    )
    parser.add_argument("--json", help="figures (default benchmarks/speed.json; /tmp/cpst-speed-quick/speed.json with --quick)")
    parser.add_argument("--threads", type=int, help="torch and faiss threads (default: torch's own default)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        set_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child)
        return
    if not args.data:
        parser.error("--data is required")
    selected = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(selected) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {','.join(SECTIONS)}")

    sizes = QUICK if args.quick else FULL
    if args.memory_coreset_timeout:
        sizes = replace(sizes, memory_coreset_timeout=args.memory_coreset_timeout)
    quick_dir = Path(tempfile.gettempdir()) / "cpst-speed-quick"
    output = Path(args.output or (quick_dir / "BENCHMARKS.md" if args.quick else "BENCHMARKS.md"))
    json_path = Path(args.json or (quick_dir / "speed.json" if args.quick else "benchmarks/speed.json"))
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="cpst-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    device = str(resolve_device(args.device))
    data = Path(args.data).resolve()
    ctx = Context(
        data,
        sizes,
        args.quick,
        work,
        device,
        PipelineConfig(),
        find_datasets(data),
        Path(args.cascade).resolve() if args.cascade else None,
    )

    header = {
        "machine": f"{platform.machine()} ({platform.processor() or platform.system()})",
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": ", ".join(f"{v:.1f}" for v in os.getloadavg()),
        "backbone": ctx.config.backbone.key(),
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "datasets": {k: str(v) for k, v in ctx.datasets.items()},
    }
    header["reference_gflops_start"] = reference_gflops()
    busy = os.getloadavg()[0] > 0.5 * header["affinity_cpus"]
    header["busy"] = busy
    if busy:
        print(
            f"WARNING: load average {header['load_average']} on {header['affinity_cpus']} CPUs: other jobs share this machine, "
            "timings are not representative (multi-threaded torch slows down most)",
            flush=True,
        )
    print(
        f"torch threads {header['torch_threads']}, CPUs {header['cpu_count']} (affinity {header['affinity_cpus']}), "
        f"device {device}{' (' + header['cuda'] + ')' if header['cuda'] else ''}, load average {header['load_average']}, "
        f"backbone {header['backbone']}, {'QUICK sizes' if args.quick else 'full sizes'}, work folder {work}",
        flush=True,
    )

    runners = {
        "coreset": lambda: [section_coreset(ctx, "cpu")],
        "embedding": lambda: [section_embedding(ctx, "cpu")],
        "latency": lambda: [section_latency(ctx, "cpu")],
        "memory": lambda: [section_memory(ctx)],
        "incremental": lambda: [section_incremental(ctx)],
        "gpu": lambda: run_gpu(ctx, args.device),
    }
    sections: list[Section] = []
    started = time.perf_counter()
    try:
        for name in SECTIONS:
            if name not in selected:
                continue
            section_started = time.perf_counter()
            for section in runners[name]():
                print_section(section)
                sections.append(section)
            print(f"  ({name}: {time.perf_counter() - section_started:.0f} s)", flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    header["seconds"] = time.perf_counter() - started
    header["reference_gflops_end"] = reference_gflops()
    text = markdown(sections, header)
    write_json_atomic(
        json_path, {"header": header, "sections": {s.key: {"rows": s.rows, "notes": s.notes, "data": s.data} for s in sections}}
    )
    replace_section(output, "speed", text)
    print(f"\nwrote {output} (section 'speed') and {json_path}; total {header['seconds']:.0f} s")


def run_gpu(ctx: Context, requested: str) -> list[Section]:
    if requested == "cpu":
        section = Section("gpu", "6. GPU")
        section.add("GPU sections", "skipped (--device cpu)")
        return [section]
    if not torch.cuda.is_available():
        section = Section("gpu", "6. GPU")
        section.add("torch.cuda.is_available()", "False: no GPU present, sections 1-3 ran on the CPU only")
        return [section]
    # faiss runs on the CPU either way: its comparison is in the CPU latency section only.
    return [section_coreset(ctx, "cuda"), section_embedding(ctx, "cuda"), section_latency(ctx, "cuda", with_faiss=False)]


if __name__ == "__main__":
    main()
