"""Section 4: peak RSS of a subprocess that extracts 5,000 images' patch features and builds a bank from them."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from cpst_pipeline.benchmark.speed.common import GIB, SQUARE, Context, Section, extract_patches, verdict
from cpst_pipeline.benchmark.speed.datasets import layout_paths
from cpst_pipeline.features.extractor import FeatureExtractor
from cpst_pipeline.patchcore.bank import BankConfig
from cpst_pipeline.patchcore.training import fit_memory_bank
from cpst_pipeline.pipeline.config import PipelineConfig


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
