"""Serving benchmark: the registered cascade behind ``mlflow models serve`` on 127.0.0.1 against in-process ``predict``.

    python -m cpst_pipeline.benchmark.serving \\
        --model demo data ""  --model kolektor /tmp/cpst-kolektor ../shared/datasets/KolektorSDD

Run it with ``OMP_WAIT_POLICY=PASSIVE`` (inherited by the server): served and in-process
requests alternate on shared cores, and OpenMP threads that spin after each request of one
process slow the other's next request.

Each ``--model NAME DATA_DIR DATASET_ROOTS [SHORT_SIDE]`` runs the pipeline's steps into
DATA_DIR up to the assembled cascade (reusing what is cached there; empty roots = the demo
dataset; SHORT_SIDE sets both input resolutions), saves it as the pyfunc model registration
logs (same code, signature, requirements), serves that folder and measures, with the same test images
sent as base64 both ways: latency p50/p95 per request of 1 and of 8 images, throughput with
1 and 4 concurrent clients (single-image requests), and reply sizes without and with a
heatmap. Writes the ``serving`` section of BENCHMARKS.md and ``benchmarks/serving.json``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from cpst_pipeline.benchmark.pipeline_run import PipelineRun, run_pipeline
from cpst_pipeline.benchmark.markdown import fmt, replace_section
from cpst_pipeline.cascade.model import CascadeModel
from cpst_pipeline.cascade.serving import ServingConfig, predict_rows
from cpst_pipeline.io_utils import write_json_atomic
from cpst_pipeline.pipeline import registry
from cpst_pipeline.resources import CpstSettings
from cpst_pipeline.pipeline.model_server import model_server, post_invocations

ROOT = Path(__file__).resolve().parents[2]
BATCH = 8
CLIENTS = 4
HEATMAP = {"heatmap": "png", "heatmap_size": 64}

Send = Callable[[list[str], dict | None], bytes]


def build_model(data_dir: Path, roots: str, short_side: int | None) -> tuple[PipelineRun, Path, Path]:
    """The project's assets up to the assembled cascade, saved as the same pyfunc model that
    registration logs (evaluation and registry are not needed to measure serving). Returns the
    run, the cascade folder and the model folder."""
    sizes = {"heatmap_short_side": short_side, "gate_short_side": short_side} if short_side else {}
    run = run_pipeline(CpstSettings(data_dir=str(data_dir), dataset_roots=roots, **sizes), evaluate=False)
    cascade_dir = run.cascade_folder(run.config.artifacts_dir / "serving-benchmark" / "cascades")
    model_dir = run.config.artifacts_dir / "serving-benchmark" / cascade_dir.name
    if not (model_dir / "MLmodel").exists():
        with tempfile.TemporaryDirectory() as scratch:
            mlflow.pyfunc.save_model(str(model_dir), **registry.pyfunc_model_arguments(cascade_dir, ServingConfig(), Path(scratch)))
    return run, cascade_dir, model_dir


def percentiles_ms(seconds: list[float]) -> dict:
    return {"p50_ms": float(np.percentile(seconds, 50) * 1000), "p95_ms": float(np.percentile(seconds, 95) * 1000)}


def measure(senders: dict[str, Send], images: list[str], requests: int) -> dict[str, dict]:
    """Per sender: latency of 1-image and 8-image requests, throughput with 1 and 4 clients, reply sizes.
    The senders alternate request by request (and run by run for throughput), so a host that
    speeds up or slows down during the run affects both alike."""
    single: dict[str, list[float]] = {name: [] for name in senders}
    batched: dict[str, list[float]] = {name: [] for name in senders}
    for send in senders.values():
        send(images[:1], None)  # warm-up
    for i in range(requests):
        for name, send in senders.items():
            started = time.perf_counter()
            send([images[i % len(images)]], None)
            single[name].append(time.perf_counter() - started)
    for i in range(max(requests // 2, 3)):
        chunk = [images[(i * BATCH + j) % len(images)] for j in range(BATCH)]
        for name, send in senders.items():
            started = time.perf_counter()
            send(chunk, None)
            batched[name].append(time.perf_counter() - started)

    def throughput(send: Send, clients: int) -> float:
        jobs = [images[i % len(images)] for i in range(requests)]
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda image: send([image], None), jobs))
        return len(jobs) / (time.perf_counter() - started)

    rates = {(name, clients): throughput(send, clients) for clients in (1, CLIENTS) for name, send in senders.items()}
    return {
        name: {
            "single": percentiles_ms(single[name]),
            "batch8": percentiles_ms(batched[name]),
            "single_images_per_s": len(single[name]) / sum(single[name]),
            "batch8_images_per_s": BATCH * len(batched[name]) / sum(batched[name]),
            "clients_1_images_per_s": rates[name, 1],
            f"clients_{CLIENTS}_images_per_s": rates[name, CLIENTS],
            "reply_bytes": len(send(images[:1], None)),
            "reply_bytes_png_heatmap": len(send(images[:1], HEATMAP)),
            "reply_bytes_array_heatmap": len(send(images[:1], {"heatmap": "array", "heatmap_size": 64})),
        }
        for name, send in senders.items()
    }


def served_sender(url: str) -> Send:
    def send(images: list[str], params: dict | None) -> bytes:
        payload = {"dataframe_split": {"columns": ["image_base64"], "data": [[i] for i in images]}}
        status, body = post_invocations(url, {**payload, "params": params} if params else payload)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {body[:500]!r}")
        return body

    return send


def in_process_sender(model: CascadeModel) -> Send:
    def send(images: list[str], params: dict | None) -> bytes:
        out = predict_rows(model, pd.DataFrame({"image_base64": images}), params, ServingConfig())
        return json.dumps({"predictions": out.to_dict(orient="records")}).encode()

    return send


def benchmark_model(name: str, data_dir: Path, roots: str, short_side: int | None, requests: int) -> dict:
    run, cascade_dir, model_dir = build_model(data_dir, roots, short_side)
    test = run.splits[run.splits["split"] == "test_mix"]
    images = [base64.b64encode(Path(p).read_bytes()).decode("ascii") for p in test.sample(min(len(test), 24), random_state=0)["path"]]
    in_process = in_process_sender(CascadeModel.load(cascade_dir, run.config.device))
    with model_server(str(model_dir), None, Path(data_dir) / "serving-benchmark-server.log") as url:
        figures = measure({"served": served_sender(url), "in_process": in_process}, images, requests)
    image_bytes = [len(base64.b64decode(i)) for i in images]
    return {"model": str(model_dir), "images": len(images), "mean_image_kb": float(np.mean(image_bytes) / 1024), **figures}


def markdown(results: dict, meta: dict) -> str:
    lines = [
        "## Serving (`python -m cpst_pipeline.benchmark.serving`)",
        "",
        f"`mlflow models serve` (one worker, `--env-manager local`) on 127.0.0.1 against in-process `predict` of the same "
        f"pyfunc contract (`cascade.serving.predict_rows`), the same base64 test images both ways. Host: {meta['host']}, "
        f"{meta['cpus']} CPUs shared by server and clients, torch threads {meta['torch_threads']}, "
        f"OMP_WAIT_POLICY {meta['omp_wait_policy']} (inherited by the server), {meta['requests']} requests per figure.",
        "",
        "| model | mode | 1 image p50 / p95 ms | 8 images p50 / p95 ms | images/s, 1-image requests | images/s, 8-image requests | 1 client img/s | 4 clients img/s | reply bytes: none / png / array heatmap |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        for mode in ("served", "in_process"):
            m = r[mode]
            lines.append(
                f"| {name} | {mode.replace('_', '-')} | {fmt(m['single']['p50_ms'], '.0f')} / {fmt(m['single']['p95_ms'], '.0f')} "
                f"| {fmt(m['batch8']['p50_ms'], '.0f')} / {fmt(m['batch8']['p95_ms'], '.0f')} | {fmt(m['single_images_per_s'], '.1f')} "
                f"| {fmt(m['batch8_images_per_s'], '.1f')} | {fmt(m['clients_1_images_per_s'], '.1f')} | {fmt(m[f'clients_{CLIENTS}_images_per_s'], '.1f')} "
                f"| {m['reply_bytes']:,} / {m['reply_bytes_png_heatmap']:,} / {m['reply_bytes_array_heatmap']:,} |"
            )
    lines += ["", "Targets: served 1-image p50 within 1.3x of in-process; 8-image requests at least 1.5x the images/s of 1-image requests (served).", ""]
    for name, r in results.items():
        ratio = r["served"]["single"]["p50_ms"] / r["in_process"]["single"]["p50_ms"]
        gain = r["served"]["batch8_images_per_s"] / r["served"]["single_images_per_s"]
        lines.append(
            f"- {name}: served/in-process p50 = {ratio:.2f}x ({'met' if ratio <= 1.3 else 'NOT met'}); "
            f"batched/single throughput = {gain:.2f}x ({'met' if gain >= 1.5 else 'NOT met'}); mean image {r['mean_image_kb']:.1f} KB."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", action="append", required=True, metavar="NAME DATA_DIR ROOTS [SHORT_SIDE]")
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    results = {}
    for spec in args.model:
        name, data_dir, roots = spec[:3]
        results[name] = benchmark_model(name, Path(data_dir), roots, int(spec[3]) if len(spec) > 3 else None, args.requests)
        print(json.dumps({name: results[name]}, indent=1), flush=True)
    meta = {
        "host": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "requests": args.requests,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
    }
    write_json_atomic(ROOT / "benchmarks" / "serving.json", {"meta": meta, "results": results})
    replace_section(ROOT / "BENCHMARKS.md", "serving", markdown(results, meta))
    print(markdown(results, meta))


if __name__ == "__main__":
    main()
