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
from collections.abc import Sequence

from dagster import AssetsDefinition, DagsterInstance, Definitions, ExecuteInProcessResult, materialize

from cpst_pipeline.assets.partitions import domain_partitions

INDEX_ASSETS = ("dataset_index", "splits")  # one step (assets.data)


def _keys(assets: Sequence[AssetsDefinition], partitioned: bool) -> list[str]:
    return [key.to_user_string() for a in assets for key in a.keys if (a.partitions_def is not None) == partitioned and key.to_user_string() not in INDEX_ASSETS]


def materialize_all(defs: Definitions, instance: DagsterInstance, domains: Sequence[str] | None = None) -> list[ExecuteInProcessResult]:
    """Run the three steps; raises at the first failed run. Returns every run's result."""
    assets, checks, resources = list(defs.assets or []), list(defs.asset_checks or []), dict(defs.resources or {})

    def run(selection: list[str], partition: str | None = None) -> ExecuteInProcessResult:
        result = materialize([*assets, *checks], selection=selection, partition_key=partition, resources=resources, instance=instance)
        if not result.success:
            raise RuntimeError(f"materializing {selection} {partition or ''} failed; see the run {result.run_id} in the UI")
        return result

    results = [run(list(INDEX_ASSETS))]
    known = instance.get_dynamic_partitions(domain_partitions.name)
    unknown = sorted(set(domains or []) - set(known))
    if unknown:
        raise ValueError(f"no partition for {unknown}; the index found {sorted(known)}")
    for domain in domains or known:
        results.append(run(_keys(assets, partitioned=True), domain))
    results.append(run(_keys(assets, partitioned=False)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", action="append", help="materialize only these domain partitions (repeatable); default: all")
    args = parser.parse_args()
    from cpst_pipeline.definitions import defs

    materialize_all(defs, DagsterInstance.get(), args.domain)


if __name__ == "__main__":
    main()
