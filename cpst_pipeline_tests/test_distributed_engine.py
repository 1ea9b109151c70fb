"""The whole graph on a dask cluster (a scheduler and 2 worker processes on 127.0.0.1) gives the same
report figures as in one process. Both runs go through ``materialize_through``, which takes a list of
(selection, partition key) runs, so that per-domain partitions only add keys."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, JobDefinition, build_reconstructable_job, execute_job
from dagster._core.storage.tags import PARTITION_NAME_TAG
from distributed import Client, LocalCluster

from cpst_pipeline.definitions import defs
from cpst_pipeline.executors import DASK_JOB_NAME, IN_PROCESS_JOB_NAME
from cpst_pipeline_tests.conftest import LENIENT_GATES

DOMAINS = ("brushed_metal", "woven_grid", "speckled_tile")
NO_COMPUTE_LOGS = {"compute_logs": {"module": "dagster._core.storage.noop_compute_log_manager", "class": "NoOpComputeLogManager"}}


@dataclass(frozen=True)
class Materialization:
    """One run: these assets, of this partition (None: unpartitioned assets)."""

    selection: tuple[AssetKey, ...]
    partition_key: str | None = None


def job_from_definitions(name: str) -> JobDefinition:
    """What every process that runs steps calls to rebuild the job (``build_reconstructable_job``)."""
    return defs.resolve_job_def(name)


def materialize_through(job_name: str, runs: Sequence[Materialization], instance: DagsterInstance, run_config: dict) -> None:
    """Execute ``runs`` one after the other with ``job_name``'s executor; each must succeed."""
    job = build_reconstructable_job(__name__, job_from_definitions.__name__, reconstructable_args=(job_name,))
    for run in runs:
        tags = {PARTITION_NAME_TAG: run.partition_key} if run.partition_key else None
        result = execute_job(job, instance, run_config=run_config, tags=tags, asset_selection=list(run.selection))
        failures = [e for e in result.all_events if e.is_failure]
        errors = [e.event_specific_data.error.to_string() for e in failures if getattr(e.event_specific_data, "error", None)]
        assert result.success, "\n".join([e.message for e in failures] + errors)


def stored_report(instance: DagsterInstance, run_config: dict) -> dict:
    """The evaluation report as the IO manager stored it, read with the run's settings."""
    with defs.get_asset_value_loader(instance) as loader:
        return loader.load_asset_value(AssetKey("evaluation_report"), resource_config={"settings": run_config["resources"]["settings"]}).report


def whole_graph(domains: Sequence[str]) -> list[Materialization]:
    """The index, each domain's partition, then the cross-domain assets (as materialize_all runs them)."""
    graph = defs.resolve_asset_graph()
    partitioned = tuple(k for k in graph.get_all_asset_keys() if graph.get(k).is_partitioned)
    index = (AssetKey("dataset_index"), AssetKey("splits"))
    cross_domain = tuple(k for k in graph.get_all_asset_keys() if k not in partitioned and k not in index)
    return [Materialization(index), *(Materialization(partitioned, d) for d in domains), Materialization(cross_domain)]


def pipeline_run_config(data_dir: Path, dataset: Path) -> dict:
    settings = {
        "data_dir": str(data_dir),
        "dataset_roots": str(dataset),
        "heatmap_short_side": 64,
        "gate_short_side": 64,
        "torch_threads": 1,
        # The tiny model fails the default quality gates; this test compares engines, not models.
        "max_false_positive_rate": LENIENT_GATES.max_false_positive_rate,
        "min_auroc": LENIENT_GATES.min_auroc,
        "min_val_defects": LENIENT_GATES.min_val_defects,
    }
    # The artifact IO manager takes its folder from these settings.
    return {"resources": {"settings": {"config": settings}}}


def report_figures(value):
    """The report without its latencies, at any depth (wall-clock times differ from run to run)."""
    if isinstance(value, dict):
        return {k: report_figures(v) for k, v in value.items() if k != "latency"}
    if isinstance(value, list):
        return [report_figures(v) for v in value]
    return value


@pytest.fixture
def dask_cluster():
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0")
    with cluster:
        yield cluster


def test_whole_graph_on_dask_workers_matches_in_process(tiny_demo, tmp_path, dask_cluster, single_torch_thread) -> None:
    # Workers rebuild the instance from its reference: it must be persistent (files, not memory).
    (tmp_path / "dagster_home").mkdir()
    # No per-step stdout capture: on dask workers its tail subprocess cleanup waited 2 x 30 s per
    # step (dagster 1.13.27); this test compares engines, not logs.
    instance = DagsterInstance.local_temp(str(tmp_path / "dagster_home"), overrides=NO_COMPUTE_LOGS)
    runs = whole_graph(DOMAINS)
    in_process_config = pipeline_run_config(tmp_path / "in_process", tiny_demo)
    materialize_through(IN_PROCESS_JOB_NAME, runs, instance, in_process_config)
    on_dask_config = pipeline_run_config(tmp_path / "on_dask", tiny_demo)
    on_dask_config["execution"] = {"config": {"cluster": {"existing": {"address": dask_cluster.scheduler_address}}}}
    materialize_through(DASK_JOB_NAME, runs, instance, on_dask_config)

    in_process, on_dask = stored_report(instance, in_process_config), stored_report(instance, on_dask_config)
    assert set(on_dask["domains"]) == set(DOMAINS)
    for part in ("domains", "overall"):
        assert report_figures(on_dask[part]) == report_figures(in_process[part])
    # Every step of the dask run started in a worker process, none in this one.
    with Client(dask_cluster) as client:
        worker_pids = set(client.run(os.getpid).values())
    dask_run = next(r for r in instance.get_runs() if r.job_name == DASK_JOB_NAME)
    step_pids = {e.dagster_event.pid for e in instance.all_logs(dask_run.run_id, of_type=DagsterEventType.STEP_START)}
    assert step_pids and step_pids <= worker_pids
