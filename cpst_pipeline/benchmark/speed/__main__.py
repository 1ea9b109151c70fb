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
5. ``incremental`` the asset definitions on a copy of a small real subset: full run, +5 % images in one
                   domain, no-change re-run.
6. ``gpu``         sections 1-3 again on CUDA when a GPU is present.

Sections 1-3 run on the CPU; ``memory`` and ``incremental`` run on ``--device`` (``auto``: CUDA when
present). ``--quick`` runs every section on small sizes (a smoke test of this script: its figures are
not comparable to the targets, which are stated for the full sizes) and writes to /tmp unless
``--output``/``--json`` are given.

Each section is a module of this package (section 3's faiss rows: ``faiss_search``).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from cpst_pipeline.benchmark.markdown import replace_section
from cpst_pipeline.benchmark.speed.common import FULL, QUICK, Context, Section, reference_gflops
from cpst_pipeline.benchmark.speed.coreset import section_coreset
from cpst_pipeline.benchmark.speed.datasets import find_datasets
from cpst_pipeline.benchmark.speed.embedding import section_embedding
from cpst_pipeline.benchmark.speed.gpu import run_gpu
from cpst_pipeline.benchmark.speed.incremental import section_incremental
from cpst_pipeline.benchmark.speed.latency import section_latency
from cpst_pipeline.benchmark.speed.memory import memory_child, section_memory
from cpst_pipeline.benchmark.speed.report import block_name, markdown, print_section, run_paragraphs, section_markdown
from cpst_pipeline.features.extractor import resolve_device
from cpst_pipeline.io_utils import write_json_atomic
from cpst_pipeline.pipeline.config import PipelineConfig
from cpst_pipeline.pipeline.parallelism import set_compute_threads

SECTIONS = ("coreset", "embedding", "latency", "memory", "incremental", "gpu")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m cpst_pipeline.benchmark.speed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
        set_compute_threads(args.threads)
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
    write_json_atomic(
        json_path, {"header": header, "sections": {s.key: {"rows": s.rows, "notes": s.notes, "data": s.data} for s in sections}}
    )
    if set(selected) == set(SECTIONS):
        replace_section(output, "speed", markdown(sections, header))
    else:
        for section in sections:
            replace_section(output, block_name(section), section_markdown(section, run_paragraphs(header, args.sections)), inside="speed")
    print(f"\nwrote {output} (section 'speed', {', '.join(selected)}) and {json_path}; total {header['seconds']:.0f} s")


if __name__ == "__main__":
    main()
