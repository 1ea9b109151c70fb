"""A domain's memory bank: coreset of normal patch features behind a faiss index, saved without pickle."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import faiss
import numpy as np
import torch

from cpst_pipeline.io_utils import atomic_path, write_json_atomic
from cpst_pipeline.patchcore.position_stats import PositionStats
from cpst_pipeline.patchcore.sampler import coreset_size, greedy_coreset

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")
# "auto" is exact below this many bank patches and IVF from it, where exact kNN dominates the
# heatmap path (speed benchmark); scoring keeps image scores exact either way.
IVF_FROM_PATCHES = 16_384
# Queries per bfloat16 product: bounds its (queries x bank) temporaries to ~100 MB at a 65k bank.
BFLOAT16_CHUNK = 256


@dataclass(frozen=True)
class BankConfig:
    coreset_ratio: float = 0.1
    # Cap on the bank: per-image kNN cost grows with the bank, greedy work with patches x picks.
    # Above today's banks (Kolektor 35,840, Magnetic-tile 54,784), binding from ~650 images of 256 px.
    max_patches: int = 65_536
    # "flat" is exact. "ivf" and "hnsw" are approximate; scoring then re-searches its worst
    # patches exactly (patchcore.scoring), so image scores stay exact and only the map's
    # lower values are approximate. "auto": see IVF_FROM_PATCHES.
    index_type: str = "auto"
    # IVF lists searched per query (of about sqrt(bank size)). Refinement keeps image scores
    # exact at any setting; 16 kept val pixel AUROC within 0.0003 of exact search (8: 0.0013
    # lower on Magnetic-tile). Recall@1 and speed per setting: speed benchmark.
    ivf_nprobe: int = 16
    # Training images are split by group into this many folds; see patchcore.training.
    folds: int = 2
    # Held-out images scored for the position statistics (an even sample beyond this many).
    stats_images: int = 512
    seed: int = 0


@dataclass
class MemoryBank:
    features: np.ndarray  # (M, D) float32 coreset
    index: faiss.Index
    meta: dict = field(default_factory=dict)
    position_stats: PositionStats | None = None

    @property
    def is_exact(self) -> bool:
        return isinstance(self.index, faiss.IndexFlat)

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Euclidean distances and bank indices of the ``k`` nearest coreset patches (per the index)."""
        squared, indices = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return np.sqrt(np.maximum(squared, 0.0)), indices

    @cached_property
    def _torch_features(self) -> torch.Tensor:
        return torch.from_numpy(self.features)

    @cached_property
    def _squared_norms(self) -> torch.Tensor:
        return (self._torch_features**2).sum(dim=1)

    @torch.inference_mode()
    def search_exact(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Exact ``k`` nearest by one matrix product: for a few queries (faiss's flat search is
        slow below its BLAS batch size), e.g. refining an approximate index's answers.

        In torch, not numpy: numpy's OpenBLAS threads spin for a while after each product and
        slowed the next faiss search and backbone pass up to 2x on 2 cores (speed benchmark)."""
        queries = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        bank = self._torch_features
        k = min(k, len(bank))
        # |q - b|^2 up to the per-query constant |q|^2: enough to rank the bank.
        partial = self._squared_norms[None, :] - 2.0 * (queries @ bank.T)
        candidates = torch.topk(partial, k, dim=1, largest=False).indices
        # Distances recomputed directly: the expanded form above loses precision for near matches.
        distances = torch.linalg.vector_norm(queries[:, None, :] - bank[candidates], dim=2)
        distances, order = torch.sort(distances, dim=1, stable=True)
        return distances.numpy(), torch.gather(candidates, 1, order).numpy()


    @cached_property
    def _bfloat16_features(self) -> torch.Tensor:
        return self._torch_features.bfloat16()

    @torch.inference_mode()
    def search_bfloat16(self, queries: np.ndarray, chunk: int = BFLOAT16_CHUNK) -> tuple[np.ndarray, np.ndarray]:
        """Nearest bank patch per query, ranked by a bfloat16 product (AMX / AVX-512 make it
        2-3x faster than float32 on CPU), with the distance to that patch recomputed in float32.

        A near-tie can be ranked wrongly, but the distance returned is a true distance to some
        bank patch, so it can only overestimate the exact one, as with an approximate index:
        ``scoring.refine_worst_patches`` then makes the image score exact.
        """
        queries = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        bank = self._torch_features
        nearest = torch.empty(len(queries), dtype=torch.int64)
        for start in range(0, len(queries), chunk):
            block = queries[start : start + chunk]
            products = (block.bfloat16() @ self._bfloat16_features.T).float()
            nearest[start : start + chunk] = (self._squared_norms[None, :] - 2.0 * products).argmin(dim=1)
        distances = torch.linalg.vector_norm(queries - bank[nearest], dim=1)
        return distances.numpy(), nearest.numpy()


def build_faiss_index(features: np.ndarray, index_type: str, seed: int = 0, ivf_nprobe: int = BankConfig.ivf_nprobe) -> faiss.Index:
    dim = features.shape[1]
    if index_type == "auto":
        index_type = "ivf" if len(features) >= IVF_FROM_PATCHES else "flat"
    if index_type == "flat":
        index = faiss.IndexFlatL2(dim)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32)
        index.hnsw.efSearch = 64
    elif index_type == "ivf":
        nlist = max(1, int(np.sqrt(len(features))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
        index.cp.seed = seed
        index.train(features)
        index.nprobe = min(nlist, ivf_nprobe)
    else:
        raise ValueError(f"unknown index type {index_type!r}; choose one of {INDEX_TYPES}")
    index.add(features)
    return index


def capped_coreset_size(n_patches: int, config: BankConfig, folds: int = 1) -> int:
    """Coreset size for ``n_patches`` at the configured ratio, within this fold's share of the bank cap."""
    return min(coreset_size(n_patches, config.coreset_ratio), max(1, config.max_patches // folds))


def select_coreset(patches: np.ndarray, n_select: int, seed: int = 0) -> np.ndarray:
    """``n_select`` greedy-coreset rows of ``patches`` (N, D), returned as a float32 array."""
    if len(patches) == 0:
        raise ValueError("cannot build a memory bank from zero patches")
    start_index = int(np.random.default_rng(seed).integers(len(patches)))
    selected = greedy_coreset(patches, min(n_select, len(patches)), start_index=start_index)
    return np.ascontiguousarray(patches[selected], dtype=np.float32)


def index_memory_bank(coreset: np.ndarray, config: BankConfig, info: dict, position_stats: PositionStats | None = None) -> MemoryBank:
    """Put ``coreset`` behind the configured faiss index; ``info`` gains the bank's sizes."""
    index = build_faiss_index(coreset, config.index_type, config.seed, config.ivf_nprobe)
    meta = dict(info, config=asdict(config), coreset_patches=int(len(coreset)), feature_dim=int(coreset.shape[1]))
    return MemoryBank(coreset, index, meta, position_stats)


def build_memory_bank(patches: np.ndarray, config: BankConfig, meta: dict | None = None) -> MemoryBank:
    """One greedy coreset of ``patches`` (N, D), indexed; no position statistics."""
    started = time.perf_counter()
    coreset = select_coreset(patches, capped_coreset_size(len(patches), config), config.seed)
    bank = index_memory_bank(coreset, config, dict(meta or {}, source_patches=int(len(patches))))
    bank.meta["build_seconds"] = round(time.perf_counter() - started, 3)
    return bank


def _save_array(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)


def save_memory_bank(bank: MemoryBank, directory: Path) -> Path:
    """coreset.npy + index.faiss + bank.json (+ position_mean/std.npy); each file replaced atomically."""
    directory = Path(directory)
    _save_array(directory / "coreset.npy", bank.features)
    if bank.position_stats is not None:
        _save_array(directory / "position_mean.npy", bank.position_stats.mean)
        _save_array(directory / "position_std.npy", bank.position_stats.std)
    with atomic_path(directory / "index.faiss") as tmp:
        faiss.write_index(bank.index, str(tmp))
    write_json_atomic(directory / "bank.json", bank.meta)
    return directory


def load_memory_bank(directory: Path) -> MemoryBank:
    directory = Path(directory)
    features = np.load(directory / "coreset.npy", allow_pickle=False)
    index = faiss.read_index(str(directory / "index.faiss"))
    meta = json.loads((directory / "bank.json").read_text())
    if index.ntotal != len(features):
        raise ValueError(f"bank {directory} is inconsistent: index holds {index.ntotal}, coreset {len(features)}")
    stats = None
    if (directory / "position_mean.npy").exists():
        mean, std = (np.load(directory / f"position_{name}.npy", allow_pickle=False) for name in ("mean", "std"))
        if mean.shape != std.shape:
            raise ValueError(f"bank {directory} is inconsistent: position mean {mean.shape}, std {std.shape}")
        stats = PositionStats(mean, std)
    return MemoryBank(features, index, meta, stats)
