"""How many pipeline steps one machine can run at once, and with how many compute threads each."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import torch

GIB = 2**30
# Peak RSS of the largest step: building one bank from 5,000 images at 256x256 peaked at 5.16 GiB
# (BENCHMARKS.md, speed section 4), the backbone included. Override with CPST_STEP_MEMORY_GIB.
DEFAULT_STEP_MEMORY_GIB = 6.0


@dataclass(frozen=True)
class StepParallelism:
    """A plan for running steps side by side: no more than the memory holds, no more threads than cores."""

    cores: int  # the cores this process may run on (its CPU affinity), not the machine's count
    available_bytes: int
    step_bytes: int
    max_concurrent: int
    threads_per_step: int


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


def available_memory_bytes(proc_meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """MemAvailable, or less where a cgroup (v2) memory limit leaves less to this process's group."""
    fields = dict(line.split(":", 1) for line in proc_meminfo.read_text().splitlines() if ":" in line)
    available = int(fields["MemAvailable"].split()[0]) * 1024
    limit, current = cgroup / "memory.max", cgroup / "memory.current"
    if limit.exists() and current.exists() and limit.read_text().strip() != "max":
        available = min(available, int(limit.read_text()) - int(current.read_text()))
    return max(available, 0)


def step_memory_bytes() -> int:
    return int(float(os.environ.get("CPST_STEP_MEMORY_GIB", DEFAULT_STEP_MEMORY_GIB)) * GIB)


def plan_step_parallelism(
    cores: int | None = None, available_bytes: int | None = None, step_bytes: int | None = None
) -> StepParallelism:
    """As many steps as both the cores and the available memory allow (at least one), and the cores
    shared out among them so that torch's thread pools do not oversubscribe the machine."""
    cores = usable_cores() if cores is None else cores
    available_bytes = available_memory_bytes() if available_bytes is None else available_bytes
    step_bytes = step_memory_bytes() if step_bytes is None else step_bytes
    if step_bytes <= 0:
        raise ValueError(f"a step's memory estimate must be positive, got {step_bytes} bytes")
    max_concurrent = max(1, min(cores, available_bytes // step_bytes))
    return StepParallelism(cores, available_bytes, step_bytes, max_concurrent, max(1, cores // max_concurrent))


def set_compute_threads(n: int) -> None:
    """Thread pools of torch and faiss (OpenMP) both: either alone would still take every core."""
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
