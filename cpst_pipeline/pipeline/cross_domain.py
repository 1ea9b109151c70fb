"""What is built from every domain at once: the router, the assembled cascade, its test report."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cpst_pipeline.cascade.evaluate import build_report, run_test_split, write_figures
from cpst_pipeline.cascade.model import CascadeArtifacts, CascadeModel, save_cascade
from cpst_pipeline.cascade.policy import DomainCalibration
from cpst_pipeline.cascade.router import DomainRouter
from cpst_pipeline.evaluation.report import markdown_summary, render_html_report, write_report_json
from cpst_pipeline.gate.model import GateNet
from cpst_pipeline.io_utils import atomic_path, write_bytes_atomic, write_text_atomic
from cpst_pipeline.patchcore.bank import MemoryBank
from cpst_pipeline.pipeline.config import PipelineConfig, content_key
from cpst_pipeline.pipeline.dataset import TRAINING_SPLITS
from cpst_pipeline.pipeline.domain_images import DomainImages, gate_embeddings

Progress = Callable[[int, int], None]


def _same_domains(**per_domain: dict) -> list[str]:
    """The domains every per-domain input agrees on; a mismatch names what is missing where."""
    names = {what: set(values) for what, values in per_domain.items()}
    union = set().union(*names.values())
    missing = {what: sorted(union - domains) for what, domains in names.items() if union - domains}
    if missing:
        raise ValueError(f"per-domain assets disagree on the domains (materialize the missing partitions): missing {missing}")
    return sorted(union)


def fit_router(images: dict[str, DomainImages], config: PipelineConfig) -> DomainRouter:
    """Domain centroids and per-domain references from the gate embeddings of every domain's training images."""
    embeddings, domains, groups = [], [], []
    for domain in sorted(images):
        train = images[domain].in_splits(*TRAINING_SPLITS)
        embeddings.append(gate_embeddings(images[domain], train, config))
        domains += [domain] * len(train)
        groups += train["group_id"].tolist()
    return DomainRouter.fit(np.concatenate(embeddings), domains, groups)


def assemble_cascade(
    images: dict[str, DomainImages],
    gates: dict[str, GateNet],
    banks: dict[str, MemoryBank | None],
    calibrations: dict[str, DomainCalibration],
    router: DomainRouter,
    config: PipelineConfig,
) -> CascadeArtifacts:
    domains = _same_domains(embeddings=images, gate_model=gates, memory_bank=banks, calibration=calibrations)
    if sorted(router.domains) != domains:
        raise ValueError(f"the router knows {sorted(router.domains)} but the domain partitions are {domains}; re-materialize domain_router")
    return CascadeArtifacts(
        backbone=config.backbone,
        resolution=config.resolution,
        scoring=config.scoring,
        inputs={d: images[d].inputs for d in domains},
        gates={d: gates[d] for d in domains},
        banks={d: banks[d] for d in domains if banks[d] is not None},
        calibrations={d: calibrations[d] for d in domains},
        router=router,
    )


def directory_key(directory: Path) -> str:
    """A short hash of every file's relative path and bytes under ``directory``."""
    digest = hashlib.sha1()
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cascade_key(cascade: CascadeArtifacts) -> str:
    """The hash of the cascade's files: the same cascade always gets the same key."""
    with tempfile.TemporaryDirectory() as tmp:
        return directory_key(save_cascade(cascade, Path(tmp)))


def test_rows(images: dict[str, DomainImages]) -> pd.DataFrame:
    return pd.concat([images[d].in_splits("test_mix") for d in sorted(images)], ignore_index=True)


def test_fingerprint(test: pd.DataFrame) -> str:
    return content_key(sorted(zip(test["content_hash"], test["label"], test["domain"])))


@dataclass
class EvaluationReport:
    """The test-split report of one cascade: figures, HTML page, per-image predictions."""

    key: str  # names this (cascade, test split) pair
    cascade_key: str
    test_fingerprint: str
    report: dict
    markdown: str
    predictions: pd.DataFrame
    files: dict[str, bytes] = field(default_factory=dict)  # report.html and the PNG figures, by file name

    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        write_report_json(self.report, directory / "report.json")
        write_text_atomic(directory / "summary.md", self.markdown)
        with atomic_path(directory / "predictions.parquet") as tmp:
            self.predictions.to_parquet(tmp, index=False)
        for name, data in self.files.items():
            write_bytes_atomic(directory / name, data)
        write_text_atomic(directory / "keys.json", json.dumps({"key": self.key, "cascade_key": self.cascade_key, "test_fingerprint": self.test_fingerprint}))
        return directory

    @classmethod
    def load(cls, directory: Path) -> "EvaluationReport":
        directory = Path(directory)
        keys = json.loads((directory / "keys.json").read_text())
        fixed = {"report.json", "summary.md", "predictions.parquet", "keys.json"}
        return cls(
            **keys,
            report=json.loads((directory / "report.json").read_text()),
            markdown=(directory / "summary.md").read_text(),
            predictions=pd.read_parquet(directory / "predictions.parquet"),
            files={p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name not in fixed},
        )


def evaluate_cascade(cascade: CascadeArtifacts, test: pd.DataFrame, config: PipelineConfig, run_info: dict, progress: Progress | None = None) -> EvaluationReport:
    """Cascade vs always-heatmap on the test split: metrics, latency, plots and an HTML page."""
    key, fingerprint = cascade_key(cascade), test_fingerprint(test)
    model = CascadeModel.from_artifacts(cascade, config.device)
    run = run_test_split(model, test, progress=progress)
    report = build_report(run, model, {**run_info, "test_fingerprint": fingerprint, "cascade": key})
    with tempfile.TemporaryDirectory() as tmp:
        figures = write_figures(run, model, Path(tmp))
        render_html_report(report, figures, Path(tmp) / "report.html")
        # Stored as strict JSON (NaN -> null): keep the value equal to what a later load returns.
        report = json.loads(write_report_json(report, Path(tmp) / "report.json").read_text())
        files = {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.name != "report.json"}
    return EvaluationReport(content_key(key, fingerprint), key, fingerprint, report, markdown_summary(report), run.rows, files)
