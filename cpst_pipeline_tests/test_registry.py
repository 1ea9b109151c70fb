"""Registration into a temporary MLflow store: quality gates, promotion across changing domains, locked alias moves."""

from __future__ import annotations

import math
import shutil
import threading
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from cpst_pipeline.cascade.model import load_cascade
from cpst_pipeline.pipeline import registry
from cpst_pipeline.pipeline.cross_domain import evaluate_cascade
from cpst_pipeline.pipeline.publish import evaluation_folder
from cpst_pipeline.pipeline.promotion import PromotionDecision, PromotionPolicy
from cpst_pipeline.pipeline.quality_gates import QualityBounds
from cpst_pipeline_tests.conftest import LENIENT_GATES, pipeline_on



@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    mp.undo()


def register(result: dict, name: str, policy: PromotionPolicy = PromotionPolicy(), bounds: QualityBounds = LENIENT_GATES) -> dict:
    config, evaluation, splits = result["config"], result["evaluation"], result["splits"]
    run_id = registry.log_evaluation_run(evaluation, config)
    test = splits[splits["split"] == "test_mix"]
    return registry.register_cascade(evaluation, run_id, test, config, registry.RegistryConfig(name, bounds=bounds, policy=policy))


def aliases(name: str) -> dict[str, str]:
    return {alias: str(version) for alias, version in MlflowClient().get_registered_model(name).aliases.items()}


@pytest.fixture(scope="module")
def two_domains(tiny_pipeline, tiny_demo, tmp_path_factory) -> dict:
    """The pipeline on the tiny demo without speckled_tile (same data folder: features are reused)."""
    root = tmp_path_factory.mktemp("two_domains")
    for domain in ("brushed_metal", "woven_grid"):
        shutil.copytree(tiny_demo / domain, root / domain)
    return pipeline_on(tmp_path_factory.mktemp("two_domains_pipeline"), root)


def test_a_new_domain_is_promoted_or_refused_by_the_rule(tracking, two_domains, tiny_pipeline) -> None:
    first = register(two_domains, "cpst-new-domain")
    assert first["promoted_to_champion"] and first["reason"] == "no champion yet"
    second = register(tiny_pipeline, "cpst-new-domain")  # adds speckled_tile, on a different test split
    decision, comparison = second["decision"], second["comparison"]
    assert decision["shared"] == ("brushed_metal", "woven_grid") and decision["new"] == ("speckled_tile",) and not decision["dropped"]
    assert comparison["test_images"] == 12  # the shared domains' test images, both models scored on them
    assert second["promoted_to_champion"] == (comparison["challenger_f1"] >= comparison["champion_f1"])
    champion = second["version"] if second["promoted_to_champion"] else first["version"]
    assert aliases("cpst-new-domain") == {"champion": str(champion), "challenger": str(second["version"])}


def test_a_dropped_domain_is_never_lost_silently(tracking, two_domains, tiny_pipeline) -> None:
    first = register(tiny_pipeline, "cpst-dropped-domain")
    refused = register(two_domains, "cpst-dropped-domain")
    assert not refused["promoted_to_champion"] and refused["decision"]["dropped"] == ("speckled_tile",)
    assert "drops domains the champion serves: speckled_tile" in refused["reason"]
    assert aliases("cpst-dropped-domain")["champion"] == str(first["version"])
    allowed = register(two_domains, "cpst-dropped-domain", PromotionPolicy(allow_dropped_domains=True))
    assert allowed["version"] == refused["version"]  # the same cascade is not registered twice
    comparison = allowed["comparison"]
    assert allowed["promoted_to_champion"] == (comparison["challenger_f1"] >= comparison["champion_f1"])


def test_a_degenerate_model_is_neither_challenger_nor_champion(tracking, tiny_pipeline, tmp_path) -> None:
    config, splits = tiny_pipeline["config"], tiny_pipeline["splits"]
    # the failure seen in the field: one domain's gate thresholds at -inf, so every image is flagged
    cascade = load_cascade(Path(tiny_pipeline["evaluation"]["cascade_dir"]))
    cascade.calibrations["woven_grid"] = replace(cascade.calibrations["woven_grid"], gate_low=-math.inf, gate_high=-math.inf)
    run_info = {"timestamp": datetime.now(timezone.utc).isoformat(), "dataset": "tiny demo", "backbone": config.backbone.key(), "target_recall": 0.95}
    report = evaluate_cascade(cascade, splits[splits["split"] == "test_mix"], config, run_info)
    evaluation = evaluation_folder(cascade, report, tmp_path / "degenerate")
    assert evaluation["report"]["domains"]["woven_grid"]["cascade"]["false_positive_rate"] == 1.0
    degenerate = {**tiny_pipeline, "evaluation": evaluation}
    for bounds in (LENIENT_GATES, QualityBounds()):
        info = register(degenerate, "cpst-degenerate", bounds=bounds)
        assert info["version"] is None and not info["promoted_to_champion"]
        assert info["reason"].startswith("quality gates failed for") and "woven_grid" in info["reason"]
        woven = next(g for g in info["quality_gates"] if g.startswith("woven_grid"))
        assert "gate_high is -inf: the gate flags every image" in woven
    assert "test false-positive rate 1.000 above the bound 0.900" in woven
    assert MlflowClient().search_model_versions("name='cpst-degenerate'") == []


def test_concurrent_alias_moves_are_serialised(tracking, tmp_path) -> None:
    """Two registrations decide at once; each decision must see the champion the other left."""
    client, name = MlflowClient(), "cpst-concurrent"
    client.create_registered_model(name)
    f1 = {}
    for score in (0.5, 0.9, 0.8):
        version = client.create_model_version(name, source=str(tmp_path)).version
        f1[str(version)] = score
    client.set_registered_model_alias(name, "champion", "1")
    intervals, decisions = {}, {}
    lock = registry.alias_lock_path(tracking, name)
    start = threading.Barrier(2)

    def register_version(version: str) -> None:
        def decide(champion) -> PromotionDecision:
            entered = time.monotonic()
            time.sleep(0.5)  # a slow comparison: without the lock both would read champion v1 here
            intervals[version] = (entered, time.monotonic())
            return PromotionDecision(f1[version] >= f1[str(champion.version)], f"vs v{champion.version}")

        start.wait()
        decisions[version] = registry.move_aliases(MlflowClient(), name, version, decide, lock)

    threads = [threading.Thread(target=register_version, args=(v,)) for v in ("2", "3")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (a_start, a_end), (b_start, b_end) = sorted(intervals.values())
    assert a_end <= b_start  # the two decisions never overlapped
    assert aliases(name)["champion"] == "2"  # the better one, whichever went first
    first = min(intervals, key=lambda v: intervals[v][0])
    assert decisions[first].reason == "vs v1"
    assert decisions["3" if first == "2" else "2"].reason == f"vs v{first if decisions[first].promote else 1}"
