"""Where a run's steps execute: one job per executor, each materializing the whole graph (a run
can select less). One process is Definitions' default too (steps share the loaded torch)."""

import os

from dagster import AssetSelection, ExecutorDefinition, JobDefinition, define_asset_job, in_process_executor, multiprocess_executor
from dagster._core.execution.context.system import PlanOrchestrationContext
from dagster_dask import dask_executor
from dagster_dask.executor import DaskExecutor
from dagster_shared.record import copy

from cpst_pipeline.pipeline.parallelism import GIB, plan_step_parallelism

IN_PROCESS_JOB_NAME = "materialize_in_process"
PARALLEL_JOB_NAME = "materialize_in_parallel"
DASK_JOB_NAME = "materialize_on_dask"
# A running `dask scheduler`; the launchpad can point a run at another one.
DASK_SCHEDULER_ADDRESS = os.environ.get("CPST_DASK_SCHEDULER", "tcp://127.0.0.1:8786")


class PartitionRunDaskExecutor(DaskExecutor):
    """dagster-dask 0.29.27 hands the run to ``dask.Client.submit``, whose argument parsing walks
    tuples and fails on a domain partition's run: its ``partitions_subset`` is a Dagster record,
    which forbids iteration. Steps take the partition from the run's tags (Dagster ignores that
    kind of subset when it resolves a run's partition), so the run goes to the workers without it."""

    def execute(self, plan_context: PlanOrchestrationContext, execution_plan):
        run = plan_context.dagster_run
        if run.partitions_subset is not None:
            plan_context = PlanOrchestrationContext(
                plan_context.plan_data._replace(dagster_run=copy(run, partitions_subset=None)),
                plan_context.log,
                plan_context.executor,
                plan_context.output_capture,
                plan_context.resume_from_failure,
            )
        return super().execute(plan_context, execution_plan)


def _partition_run_dask_executor(init_context) -> PartitionRunDaskExecutor:
    ((cluster_type, cluster_configuration),) = init_context.executor_config["cluster"].items()
    return PartitionRunDaskExecutor(cluster_type, cluster_configuration)


# dagster-dask's executor and its configuration, with the executor above.
partition_run_dask_executor = ExecutorDefinition(
    name="dask",
    config_schema=dask_executor.config_schema,
    requirements=dask_executor.get_requirements,
    executor_creation_fn=_partition_run_dask_executor,
    description=dask_executor.description,
)


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
        executor_def=partition_run_dask_executor,
        config={"execution": {"config": {"cluster": {"existing": {"address": DASK_SCHEDULER_ADDRESS}}}}},
        description="Steps as tasks on the dask cluster whose scheduler the run config names.",
    )
