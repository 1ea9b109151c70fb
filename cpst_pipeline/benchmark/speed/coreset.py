"""Section 1: greedy_coreset and fit_memory_bank on real patch features against a naive exact greedy k-center."""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from tqdm import tqdm

from cpst_pipeline.benchmark.speed.common import FULL, SQUARE, Context, Section, extract_patches, stopwatch, verdict
from cpst_pipeline.benchmark.speed.datasets import layout_paths
from cpst_pipeline.features.extractor import FeatureExtractor
from cpst_pipeline.patchcore.bank import BankConfig, MemoryBank
from cpst_pipeline.patchcore.sampler import coreset_size, coverage_radius, greedy_coreset
from cpst_pipeline.patchcore.training import fit_memory_bank


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
