"""Backbone pass time of the swept backbones side by side: the unit of the heatmap path's latency target.

    python -m cpst_pipeline.benchmark.backbone_speed [--size 640 256] [--rounds 5]

Rounds alternate the backbones, so the host's drift (1.5-2x within an hour here) hits each
alike; printed per backbone: the median over rounds of each round's median pass (batch 1)
and its ratio to the default backbone.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cpst_pipeline.benchmark.ablation import forward_ms
from cpst_pipeline.benchmark.markdown import replace_section
from cpst_pipeline.features.backbone import BUNDLED_MODELS
from cpst_pipeline.pipeline.config import PipelineConfig

LAYER_SETS = ((2, 3), (2, 3, 4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(640, 256), help="input height width (Kolektor's heatmap input)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default="BENCHMARKS.md")
    args = parser.parse_args()
    default = PipelineConfig(device=args.device)
    configs = {
        (model, layers): replace(default, backbone=replace(default.backbone, model_name=model, feature_layers=layers))
        for model in BUNDLED_MODELS
        for layers in (LAYER_SETS if model == default.backbone.model_name else (default.backbone.feature_layers,))
    }
    size = tuple(args.size)
    times = {key: [] for key in configs}
    for _ in range(args.rounds):
        for key, config in configs.items():
            times[key].append(forward_ms(config, size, repeats=5))
    reference = float(np.median(times[(default.backbone.model_name, default.backbone.feature_layers)]))
    lines = [
        "## Backbone pass time (side by side)",
        "",
        f"`python -m cpst_pipeline.benchmark.backbone_speed`: input {size[0]}x{size[1]}, batch 1, device {args.device}, "
        f"{torch.get_num_threads()} torch threads, {args.rounds} alternating rounds of 5 passes (after 2 warm-up passes each).",
        "",
        "| backbone | layers | pass ms (median) | vs default |",
        "|---|---|---|---|",
    ]
    for (model, layers), values in times.items():
        median = float(np.median(values))
        lines.append(f"| {model} | {list(layers)} | {median:.1f} | {median / reference:.2f}x |")
    table = "\n".join(lines)
    print(table)
    replace_section(Path(args.output), "backbone_speed", table)


if __name__ == "__main__":
    main()
