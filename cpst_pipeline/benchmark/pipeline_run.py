"""The benchmarks' and tests' way to run the pipeline: the project's own asset definitions,
materialized with ``materialize_all`` (or rebuilt where stale with ``rebuild_stale``), then the
stored values read back. No copy of the graph lives here: what is measured is what ``make demo`` runs.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from dagster import AssetSelection, DagsterEventType, DagsterInstance, Definitions, ExecuteInProcessResult
from dagster._core.storage.tags import PARTITION_NAME_TAG

from cpst_pipeline.assets import ALL_ASSET_CHECKS, ALL_ASSETS
from cpst_pipeline.assets.partitions import domain_partitions
from cpst_pipeline.cascade.model import CascadeArtifacts, save_cascade
from cpst_pipeline.cascade.policy import DomainCalibration
from cpst_pipeline.definitions import pipeline_resources
from cpst_pipeline.gate.model import GateNet
from cpst_pipeline.materialize_all import materialize_all, rebuild_stale
from cpst_pipeline.patchcore.bank import MemoryBank
from cpst_pipeline.pipeline.artifact_store import read_artifact
from cpst_pipeline.pipeline.config import PipelineConfig
from cpst_pipeline.io_utils import atomic_directory
from cpst_pipeline.pipeline.cross_domain import EvaluationReport, cascade_key
from cpst_pipeline.pipeline.domain_images import DomainImages
from cpst_pipeline.pipeline.publish import evaluation_folder
from cpst_pipeline.resources import CpstSettings

# The cross-domain assets a benchmark builds: everything but the MLflow registration.
UNREGISTERED = ("domain_router", "cascade", "evaluation_report")


@dataclass
class Materialized:
    """What some runs computed: seconds per step (summed over partitions), the partitions each asset
    was materialized for (None: unpartitioned) and their metadata."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    partition_seconds: dict[tuple[str, str | None], float] = field(default_factory=dict)
    partitions: dict[str, set[str | None]] = field(default_factory=lambda: defaultdict(set))
    metadata: dict[tuple[str, str | None], dict] = field(default_factory=dict)

    @classmethod
    def of(cls, results: list[ExecuteInProcessResult]) -> "Materialized":
        done = cls()
        for result in results:
            partition = result.dagster_run.tags.get(PARTITION_NAME_TAG)
            for event in result.all_events:
                if event.event_type == DagsterEventType.STEP_SUCCESS:
                    seconds = event.event_specific_data.duration_ms / 1000
                    done.seconds[event.step_key] += seconds
                    done.partition_seconds[(event.step_key, partition)] = seconds
            for event in result.get_asset_materialization_events():
                asset = event.asset_key.to_user_string()
                done.partitions[asset].add(event.partition)
                done.metadata[(asset, event.partition)] = {k: v.value for k, v in event.materialization.metadata.items()}
        return done

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))


@dataclass
class PipelineRun:
    """A materialized project: its definitions, instance, and the stored asset values on demand."""

    settings: CpstSettings
    instance: DagsterInstance
    defs: Definitions
    materialized: Materialized

    @property
    def config(self) -> PipelineConfig:
        return self.settings.pipeline_config()

    def value(self, asset: str, partition: str | None = None):
        folder = self.settings.asset_storage_path() / asset
        return read_artifact(folder / partition if partition else folder)

    @property
    def domains(self) -> list[str]:
        return sorted(self.instance.get_dynamic_partitions(domain_partitions.name))

    def per_domain(self, asset: str) -> dict:
        return {d: self.value(asset, d) for d in self.domains}

    @property
    def splits(self) -> pd.DataFrame:
        return self.value("splits")

    @property
    def images(self) -> dict[str, DomainImages]:
        return self.per_domain("embeddings")

    @property
    def gates(self) -> dict[str, GateNet]:
        return self.per_domain("gate_model")

    @property
    def banks(self) -> dict[str, MemoryBank | None]:
        return self.per_domain("memory_bank")

    @property
    def calibrations(self) -> dict[str, DomainCalibration]:
        return self.per_domain("calibration")

    @property
    def cascade(self) -> CascadeArtifacts:
        return self.value("cascade")

    @property
    def report(self) -> EvaluationReport:
        return self.value("evaluation_report")

    def with_settings(self, settings: CpstSettings) -> "PipelineRun":
        """The same instance under other settings (e.g. a dataset root added)."""
        return PipelineRun(settings, self.instance, project_definitions(settings), Materialized())

    def cascade_folder(self, folder: Path) -> Path:
        """The cascade saved as a folder of its own under ``folder``, named by its content key."""
        cascade = self.cascade
        target = Path(folder) / cascade_key(cascade)
        if not (target / "cascade.json").exists():
            with atomic_directory(target) as tmp:
                save_cascade(cascade, tmp)
        return target

    def evaluation(self, folder: Path) -> dict:
        """The report and the cascade written under ``folder``, as the registry takes them."""
        return evaluation_folder(self.cascade, self.report, Path(folder))


def project_definitions(settings: CpstSettings) -> Definitions:
    return Definitions(assets=ALL_ASSETS, asset_checks=ALL_ASSET_CHECKS, resources=pipeline_resources(settings))


def _instance_under(settings: CpstSettings) -> DagsterInstance:
    home = Path(settings.data_dir) / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    return DagsterInstance.local_temp(str(home))


def load_pipeline(settings: CpstSettings) -> PipelineRun:
    """What an earlier ``run_pipeline`` with these settings stored, read without materializing anything."""
    if not (Path(settings.data_dir) / "dagster_home").is_dir():
        raise FileNotFoundError(f"no pipeline run under {settings.data_dir}: materialize one first (run_pipeline)")
    return PipelineRun(settings, _instance_under(settings), project_definitions(settings), Materialized())


def run_pipeline(settings: CpstSettings, instance: DagsterInstance | None = None, evaluate: bool = True) -> PipelineRun:
    """Materialize every asset but the registered model (without ``evaluate``: up to the cascade)
    into ``settings.data_dir``; ``instance`` defaults to a persistent one under it."""
    instance = instance or _instance_under(settings)
    defs = project_definitions(settings)
    cross_domain = UNREGISTERED if evaluate else UNREGISTERED[:-1]
    return PipelineRun(settings, instance, defs, Materialized.of(materialize_all(defs, instance, cross_domain=cross_domain)))


def add_asset_run_arguments(parser: argparse.ArgumentParser, work: str) -> None:
    """Options of a benchmark that reads the project's assets: the datasets, the data folder, whether
    to reuse a run already there, and the BENCHMARKS.md section it writes."""
    parser.add_argument("--data", default="", help="dataset roots as CPST_DATASET_ROOTS; empty: the built-in demo")
    parser.add_argument("--work", type=Path, default=Path(work), help="the pipeline's data folder")
    parser.add_argument("--reuse", action="store_true", help="read the assets already materialized under --work (e.g. by the quality benchmark)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--section", default="", help="a name for the datasets: BENCHMARKS.md gets one section per name (empty: demo)")
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"), help="where the section goes ('' for nowhere)")


def asset_run(args: argparse.Namespace) -> PipelineRun:
    """The run those options name: read as stored (``--reuse``), or materialized up to the cascade."""
    settings = CpstSettings(data_dir=str(args.work.resolve()), dataset_roots=str(Path(args.data).resolve()) if args.data else "", device=args.device)
    return load_pipeline(settings) if args.reuse else run_pipeline(settings, evaluate=False)


def asset_run_source(args: argparse.Namespace) -> str:
    """Where those options' figures come from, for a section's header."""
    return f"the pipeline's assets under `{args.work}` ({f'`{args.data}`' if args.data else 'the built-in demo'})"


def rebuild_pipeline(run: PipelineRun, cursor=None, evaluate: bool = False) -> tuple[PipelineRun, object]:
    """Re-index, then rebuild only what the automation conditions find stale (the retraining
    sensor's work; never the registration, and the report only with ``evaluate``); returns what
    was computed and the cursor."""
    index = materialize_all(run.defs, run.instance, domains=[], cross_domain=[])
    left_out = ("registered_model",) if evaluate else ("evaluation_report", "registered_model")
    rebuilt, cursor = rebuild_stale(run.defs, run.instance, cursor, AssetSelection.all() - AssetSelection.assets(*left_out))
    return PipelineRun(run.settings, run.instance, run.defs, Materialized.of(index + rebuilt)), cursor
