"""Shared pieces of the speed benchmark: workload sizes, the result of a section, the run context, timing."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cpst_pipeline.features.extractor import FeatureExtractor
from cpst_pipeline.features.loader import iter_resized_batches
from cpst_pipeline.pipeline.config import PipelineConfig

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
    incremental_new_domain: int = 120


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
