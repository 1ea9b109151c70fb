"""Section 6: sections 1-3 again on CUDA when a GPU is present."""

from __future__ import annotations

import torch

from cpst_pipeline.benchmark.speed.common import Context, Section
from cpst_pipeline.benchmark.speed.coreset import section_coreset
from cpst_pipeline.benchmark.speed.embedding import section_embedding
from cpst_pipeline.benchmark.speed.latency import section_latency


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
