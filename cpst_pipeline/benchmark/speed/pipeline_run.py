"""The pipeline's steps run one after the other, each timed (the latency and incremental sections)."""

from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm

from cpst_pipeline.pipeline import steps
from cpst_pipeline.pipeline.config import PipelineConfig


def run_pipeline_steps(config: PipelineConfig, assemble: bool = False) -> dict:
    """index -> splits -> embeddings -> gate -> banks -> calibration (-> cascade), each timed."""
    seconds: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds[name] = time.perf_counter() - started
        return result

    def quiet(message: str) -> None:  # the tqdm bar of the steps says enough
        pass

    with tqdm(total=7 if assemble else 6, desc="pipeline steps", unit="step", leave=False) as bar:
        index = timed("index", steps.index_datasets, config)
        bar.update()
        splits = timed("splits", steps.split_dataset, index.index, config)
        bar.update()
        embedded = timed("embeddings", steps.embed_images, splits, config, log=quiet)
        bar.update()
        gate = timed("gate", steps.fit_gate, splits, config)
        bar.update()
        banks = timed("banks", steps.build_banks, splits, config, log=quiet)
        bar.update()
        calibrations_dir = config.artifacts_dir / "calibrations"
        before = {p.name for p in calibrations_dir.glob("*.json")} if calibrations_dir.exists() else set()
        calibration = timed("calibration", steps.calibrate, splits, gate, banks, config)
        bar.update()
        cascade_dir = None
        if assemble:
            cascade_dir = timed("assemble", steps.assemble_cascade, splits, gate, banks, calibration, config)
            bar.update()
    return {
        "seconds": seconds,
        "total_seconds": sum(v for k, v in seconds.items() if k != "assemble"),
        "splits": splits,
        "images_read": index.images_read,
        "embedded": embedded["computed"],
        "gate_reused": gate["reused"],
        "gate_path": gate["path"],
        "banks": banks["banks"],
        "calibration_reused": Path(calibration["path"]).name in before,
        "cascade_dir": cascade_dir,
    }
