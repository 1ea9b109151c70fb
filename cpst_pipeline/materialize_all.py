"""Materialize the whole graph with the project's Definitions, in the order partitions need:

1. ``dataset_index`` and ``splits`` (indexing registers one partition per domain),
2. each domain partition's ``embeddings``, ``gate_model``, ``memory_bank``, ``calibration``,
3. the cross-domain assets (``domain_router``, ``cascade``, ``evaluation_report``, ``registered_model``).

    python -m cpst_pipeline.materialize_all                       # what `make demo` runs
    python -m cpst_pipeline.materialize_all --domain kolektor     # step 2 for these domains only

Same as the three matching ``dagster asset materialize`` commands (step 2 once per
``--partition``), in one process. For rebuilding only what is stale, see the README.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence

from dagster import AssetSelection, AssetsDefinition, DagsterInstance, Definitions, ExecuteInProcessResult, evaluate_automation_conditions, materialize

from cpst_pipeline.assets.partitions import domain_partitions

INDEX_ASSETS = ("dataset_index", "splits")  # one step (assets.data)


def _keys(assets: Sequence[AssetsDefinition], partitioned: bool) -> list[str]:
    return [key.to_user_string() for a in assets for key in a.keys if (a.partitions_def is not None) == partitioned and key.to_user_string() not in INDEX_ASSETS]


def materialize_or_raise(defs: Definitions, instance: DagsterInstance, selection: Sequence, partition: str | None = None) -> ExecuteInProcessResult:
    """One in-process run of ``selection`` (of ``partition``) with the definitions' checks and resources."""
    assets, checks = list(defs.assets or []), list(defs.asset_checks or [])
    result = materialize([*assets, *checks], selection=selection, partition_key=partition, resources=dict(defs.resources or {}), instance=instance)
    if not result.success:
        raise RuntimeError(f"materializing {list(selection)} {partition or ''} failed; see the run {result.run_id} in the UI")
    return result


def materialize_all(
    defs: Definitions, instance: DagsterInstance, domains: Sequence[str] | None = None, cross_domain: Sequence[str] | None = None
) -> list[ExecuteInProcessResult]:
    """Run the three steps (step 3 only for ``cross_domain`` assets, if given); raises at the
    first failed run. Returns every run's result."""
    assets = list(defs.assets or [])

    def run(selection: list[str], partition: str | None = None) -> list[ExecuteInProcessResult]:
        return [materialize_or_raise(defs, instance, selection, partition)] if selection else []

    results = run(list(INDEX_ASSETS))
    known = instance.get_dynamic_partitions(domain_partitions.name)
    unknown = sorted(set(domains or []) - set(known))
    if unknown:
        raise ValueError(f"no partition for {unknown}; the index found {sorted(known)}")
    for domain in known if domains is None else domains:
        results += run(_keys(assets, partitioned=True), domain)
    results += run(list(cross_domain) if cross_domain is not None else _keys(assets, partitioned=False))
    return results


def rebuild_stale(defs: Definitions, instance: DagsterInstance, cursor=None, selection: AssetSelection | None = None, max_ticks: int = 12):
    """What the retraining sensor does, in this process: tick the automation conditions and run what
    they request (of ``selection``, default all), one run per partition, until nothing is requested.
    Returns the runs' results and the cursor for the next call."""
    results = []
    for _ in range(max_ticks):
        tick = evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection, cursor=cursor)
        cursor = tick.cursor
        if not tick.total_requested:
            return results, cursor
        by_partition = defaultdict(list)
        for key in defs.resolve_asset_graph().get_all_asset_keys():
            for partition in tick.get_requested_partitions(key):
                by_partition[partition].append(key)
        results += [materialize_or_raise(defs, instance, keys, partition) for partition, keys in by_partition.items()]
    raise RuntimeError(f"the automation conditions still requested runs after {max_ticks} ticks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", action="append", help="materialize only these domain partitions (repeatable); default: all")
    args = parser.parse_args()
    from cpst_pipeline.definitions import defs

    materialize_all(defs, DagsterInstance.get(), args.domain)


if __name__ == "__main__":
    main()
