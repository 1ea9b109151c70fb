"""Section 3's faiss rows: flat vs HNSW vs IVF on a real bank, and IVF + exact refinement in score_patches."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cpst_pipeline.benchmark.speed.common import Section, stopwatch, verdict
from cpst_pipeline.cascade.model import CascadeModel
from cpst_pipeline.data.images import load_image
from cpst_pipeline.patchcore.bank import BankConfig, MemoryBank, build_faiss_index
from cpst_pipeline.patchcore.scoring import score_patches

# IVF lists probed per query: recall@1 and speed for each (the bank's default is BankConfig.ivf_nprobe).
IVF_NPROBES = (1, 2, 4, 8, 16, 32)


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
