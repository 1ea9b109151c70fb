"""How many IVF lists a domain's bank searches per patch, chosen on the domain's val images.

Scoring re-searches the patches it scores worst exactly (``scoring.refine_worst_patches``),
so the image score, and with it image AUROC, is exact at any setting. Fewer lists make the
kNN, the heatmap path's largest cost, cheaper, but leave more of the map's lower values
approximate. How much that costs the map depends on the bank (val, ablation section:
pixel AUROC 0.0009 lower at 1 list on Kolektor, 0.020 on Magnetic-tile), so each domain
keeps the fewest lists whose val pixel AUROC stays within ``max_pixel_auroc_loss`` of exact
search, measured on the same images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from cpst_pipeline.patchcore.bank import MemoryBank
from cpst_pipeline.patchcore.scoring import ScoringConfig
from cpst_pipeline.patchcore.val_scores import ValImage, score_val_images


@dataclass(frozen=True)
class ProbeRule:
    candidates: tuple[int, ...] = (1, 2, 4, 8)
    # Tighter than the 0.005 of image AUROC allowed to search shortcuts: maps are what users look at.
    max_pixel_auroc_loss: float = 0.002
    # Val images scored per setting (the caller's even sample beyond this): the comparison is paired, so
    # a sample measures the loss well, and the exact reference is the expensive part.
    max_images: int = 64


@dataclass(frozen=True)
class ProbeChoice:
    nprobe: int
    reason: str
    pixel_auroc: dict[str, float | None]  # "exact" and "nprobe N" -> val pixel AUROC

    def summary(self) -> dict:
        return {"nprobe": self.nprobe, "reason": self.reason, "val_pixel_auroc": self.pixel_auroc}


def even_sample(count: int, limit: int) -> np.ndarray:
    """Indices of at most ``limit`` items spread evenly over ``count``."""
    return np.unique(np.linspace(0, count - 1, num=min(count, limit)).round().astype(int)) if count else np.zeros(0, int)


def configured_probes(bank: MemoryBank, reason: str) -> ProbeChoice | None:
    """The bank's probe count as configured, and why it was not chosen; None without IVF lists."""
    return ProbeChoice(bank.index.nprobe, reason, {}) if isinstance(bank.index, faiss.IndexIVF) else None


def choose_probes(
    bank: MemoryBank, images: Sequence[ValImage], scoring: ScoringConfig, input_size: tuple[int, int], rule: ProbeRule = ProbeRule()
) -> ProbeChoice | None:
    """Set ``bank``'s IVF probe count by the rule of the module doc, measured on ``images`` (the
    caller draws at most ``rule.max_images``), and say why; None for an exact (flat) bank, an HNSW
    one, or scoring that does not search the index. Without val pixels of both classes the bank
    keeps its probe count."""
    if not isinstance(bank.index, faiss.IndexIVF) or scoring.search != "index":
        return None  # only an IVF index searched as such has lists to count
    index = bank.index
    configured = index.nprobe
    exact_bank = MemoryBank(bank.features, faiss.IndexFlatL2(bank.features.shape[1]), bank.meta, bank.position_stats)
    exact_bank.index.add(bank.features)
    exact = score_val_images(exact_bank, images, scoring, input_size).pixel_auroc
    figures: dict[str, float | None] = {"exact": exact}
    if exact is None:
        return ProbeChoice(configured, "val has no defect pixels or no normal pixels to compare on: configured probe count kept", figures)
    try:
        for probes in sorted(p for p in rule.candidates if p < configured):
            index.nprobe = probes
            figures[f"nprobe {probes}"] = auroc = score_val_images(bank, images, scoring, input_size).pixel_auroc
            if auroc is not None and exact - auroc <= rule.max_pixel_auroc_loss:
                return ProbeChoice(probes, f"fewest lists within {rule.max_pixel_auroc_loss} of exact val pixel AUROC ({len(images)} val images)", figures)
    except BaseException:
        index.nprobe = configured
        raise
    index.nprobe = configured
    return ProbeChoice(configured, f"no fewer lists stay within {rule.max_pixel_auroc_loss} of exact val pixel AUROC: configured count kept", figures)
