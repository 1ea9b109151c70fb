"""Adding a domain to a finished run: the retraining automation rebuilds only what is stale.

The new domain's partition gets its embeddings, gate, bank and calibration; the other domains'
embeddings are re-checked (nothing new to embed, same data version) and their gates, banks and
calibrations are left alone, byte for byte; the cross-domain assets are rebuilt.
"""

import hashlib
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from dagster import DagsterRun, materialize

from cpst_pipeline.materialize_all import materialize_all, rebuild_stale
from cpst_pipeline_tests.conftest import REPO_ROOT
from cpst_pipeline_tests.test_pipeline_end_to_end import project

FIRST, ADDED = ("brushed_metal", "woven_grid"), "speckled_tile"
PER_DOMAIN_MODELS = ("gate_model", "memory_bank", "calibration")


def _file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _rebuild_stale(defs, instance, cursor):
    """The retraining sensor's work; returns {asset: {partition: materialization metadata}} and the cursor."""
    results, cursor = rebuild_stale(defs, instance, cursor)
    materialized = defaultdict(dict)
    for run in results:
        for event in run.get_asset_materialization_events():
            materialized[event.asset_key.to_user_string()][event.partition] = event.materialization.metadata
    return materialized, cursor


@pytest.fixture(scope="module")
def added_domain(tiny_demo, tmp_path_factory):
    home = tmp_path_factory.mktemp("partitions")
    root = home / "images"
    for domain in FIRST:
        shutil.copytree(tiny_demo / domain, root / domain)
    with project(home, root) as (instance, settings, defs):
        yield _add_domain(tiny_demo, root, instance, settings, defs)


def _add_domain(tiny_demo, root, instance, settings, defs) -> dict:
    """Finish a run on the first domains, add one, and let the automation rebuild what is stale."""
    materialize_all(defs, instance)
    store = Path(settings.asset_storage_path())
    # The tick that sees the finished run requests nothing (every asset is up to date).
    settled, cursor = _rebuild_stale(defs, instance, None)
    before = {(asset, d): _file_hashes(store / asset / d) for asset in PER_DOMAIN_MODELS for d in FIRST}

    shutil.copytree(tiny_demo / ADDED, root / ADDED)
    # The weekly re-index (its cron tick), then whatever the automation finds stale.
    assert materialize([*defs.assets], selection=["dataset_index", "splits"], resources=defs.resources, instance=instance).success
    rebuilt, _ = _rebuild_stale(defs, instance, cursor)
    after = {key: _file_hashes(store / key[0] / key[1]) for key in before}
    return {"instance": instance, "settled": settled, "rebuilt": rebuilt, "before": before, "after": after}


def test_a_finished_run_has_nothing_stale(added_domain):
    assert not added_domain["settled"]


def test_new_domain_gets_a_partition_and_only_its_models_are_built(added_domain):
    rebuilt = added_domain["rebuilt"]
    assert set(added_domain["instance"].get_dynamic_partitions("domain")) == {*FIRST, ADDED}
    for asset in PER_DOMAIN_MODELS:
        assert set(rebuilt[asset]) == {ADDED}, asset
    for asset in ("domain_router", "cascade", "evaluation_report", "registered_model"):
        assert set(rebuilt[asset]) == {None}, asset
    assert rebuilt["embeddings"][ADDED]["newly_embedded"].value > 0


def test_other_domains_embeddings_are_rechecked_without_new_work(added_domain):
    embeddings = added_domain["rebuilt"]["embeddings"]
    assert set(embeddings) == {*FIRST, ADDED}
    for domain in FIRST:
        assert embeddings[domain]["newly_embedded"].value == 0


def test_other_domains_models_are_byte_identical(added_domain):
    assert added_domain["after"] == added_domain["before"]
    assert all(added_domain["before"].values())  # the comparison saw files


def test_second_run_of_one_domain_waits_for_the_first():
    """dagster.yaml: at most one in-progress run per domain partition; other domains go ahead."""
    from dagster._utils.tags import TagConcurrencyLimitsCounter  # the run queue's own counter

    limits = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())["concurrency"]["runs"]["tag_concurrency_limits"]
    running = DagsterRun(job_name="__ASSET_JOB", run_id="a", tags={"dagster/partition": "kolektor"})
    counter = TagConcurrencyLimitsCounter(limits, [running])
    assert counter.is_blocked(DagsterRun(job_name="__ASSET_JOB", run_id="b", tags={"dagster/partition": "kolektor"}))
    assert not counter.is_blocked(DagsterRun(job_name="__ASSET_JOB", run_id="c", tags={"dagster/partition": "magnetic_tile"}))
