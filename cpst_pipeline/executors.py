"""Where a run's steps execute: one job per executor, each materializing the whole graph (a run
can select less). One process is Definitions' default too (steps share the loaded torch)."""

import os

from dagster import AssetSelection, JobDefinition, define_asset_job, in_process_executor, multiprocess_executor
from dagster_dask import dask_executor

from cpst_pipeline.pipeline.parallelism import GIB, plan_step_parallelism

IN_PROCESS_JOB_NAME = "materialize_in_process"
PARALLEL_JOB_NAME = "materialize_in_parallel"
DASK_JOB_NAME = "materialize_on_dask"
# A running `dask scheduler`; the launchpad can point a run at another one.
DASK_SCHEDULER_ADDRESS = os.environ.get("CPST_DASK_SCHEDULER", "tcp://127.0.0.1:8786")


def in_process_job() -> JobDefinition:
    return define_asset_job(
        IN_PROCESS_JOB_NAME,
        selection=AssetSelection.all(),
        executor_def=in_process_executor,
        description="Every step in the run's own process, one after the other.",
    )


def parallel_job() -> JobDefinition:
    """Every asset, steps in up to ``max_concurrent`` processes: as many as the cores and the memory
    hold (planned on the machine that loads this code, where the multiprocess executor runs them)."""
    plan = plan_step_parallelism()
    return define_asset_job(
        PARALLEL_JOB_NAME,
        selection=AssetSelection.all(),
        executor_def=multiprocess_executor,
        config={
            "execution": {"config": {"max_concurrent": plan.max_concurrent}},
            "resources": {"settings": {"config": {"torch_threads": plan.threads_per_step}}},
        },
        description=(
            f"Steps in parallel processes: {plan.max_concurrent} at once x {plan.threads_per_step} threads "
            f"({plan.cores} cores, {plan.available_bytes / GIB:.1f} GiB available, "
            f"{plan.step_bytes / GIB:.1f} GiB per step when planned)."
        ),
    )


def dask_job() -> JobDefinition:
    """Every asset, each step a task on a dask cluster; workers import this code and share the
    Dagster instance database and the artifact storage (README: running on many machines)."""
    return define_asset_job(
        DASK_JOB_NAME,
        selection=AssetSelection.all(),
        executor_def=dask_executor,
        config={"execution": {"config": {"cluster": {"existing": {"address": DASK_SCHEDULER_ADDRESS}}}}},
        description="Steps as tasks on the dask cluster whose scheduler the run config names.",
    )
