"""Materialize the whole asset graph on a tiny generated dataset, into temporary Dagster and MLflow homes:
the index, each domain partition, then the cross-domain assets, as `make demo` does."""

import base64
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from dagster import AssetCheckSeverity, AssetKey, AssetSelection, DagsterInstance, Definitions, materialize
from PIL import Image

from cpst_pipeline.assets import ALL_ASSET_CHECKS, ALL_ASSETS
from cpst_pipeline.cascade.model import CascadeModel
from cpst_pipeline.cascade.serving import OUTPUT_COLUMNS
from cpst_pipeline.definitions import pipeline_resources
from cpst_pipeline.materialize_all import materialize_all
from cpst_pipeline.resources import CpstSettings
from cpst_pipeline_tests.conftest import LENIENT_GATES

DOMAINS = {"brushed_metal", "woven_grid", "speckled_tile"}


@contextmanager
def project(home: Path, dataset_roots: Path) -> Iterator[tuple[DagsterInstance, CpstSettings, Definitions]]:
    """Temporary Dagster and MLflow homes under ``home``, and the project's definitions on small images."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        (home / "dagster_home").mkdir()
        instance = DagsterInstance.local_temp(str(home / "dagster_home"))
        settings = CpstSettings(
            data_dir=str(home / "data"), dataset_roots=str(dataset_roots), heatmap_short_side=64, gate_short_side=64,
            max_false_positive_rate=LENIENT_GATES.max_false_positive_rate, min_auroc=LENIENT_GATES.min_auroc,
            min_val_defects=LENIENT_GATES.min_val_defects,
        )
        yield instance, settings, Definitions(assets=ALL_ASSETS, asset_checks=ALL_ASSET_CHECKS, resources=pipeline_resources(settings))


@pytest.fixture(scope="module")
def pipeline(tiny_demo, tmp_path_factory):
    with project(tmp_path_factory.mktemp("project"), tiny_demo) as (instance, settings, defs):
        results = materialize_all(defs, instance)
        yield {"instance": instance, "defs": defs, "settings": settings, "results": results}


def _value(results, name):
    return next(r.output_for_node(name) for r in results if name in {n.name for n in r.job_def.nodes_in_topological_order})


def test_domains_are_partitions_with_passing_checks(pipeline):
    instance, results = pipeline["instance"], pipeline["results"]
    assert set(instance.get_dynamic_partitions("domain")) == DOMAINS
    assert all(r.success for r in results)
    per_domain = {r.dagster_run.tags.get("dagster/partition") for r in results} - {None}
    assert per_domain == DOMAINS
    evaluations = [e for r in results for e in r.get_asset_check_evaluations()]
    assert {e.check_name for e in evaluations} >= {
        "index_fit_to_train_on", "no_group_leakage", "banks_not_empty", "gate_better_than_chance",
        "calibrated_recall_met", "calibration_quality_gates", "model_quality_gates",
    }
    banks = [e for e in evaluations if e.check_name == "banks_not_empty"]
    assert {e.partition for e in banks} == DOMAINS and all(e.passed for e in banks)
    assert all(e.passed for e in evaluations if e.check_name in {"index_fit_to_train_on", "no_group_leakage"})


def test_asset_values_are_stored_per_partition_without_pickle(pipeline):
    root = Path(pipeline["settings"].asset_storage_path())
    for domain in DOMAINS:
        pointer = json.loads((root / "memory_bank" / domain / "current.json").read_text())
        assert pointer["codec"] == "memory_bank"
        assert (root / "memory_bank" / domain / pointer["version"] / "coreset.npy").exists()
    suffixes = {p.suffix for p in root.rglob("*") if p.is_file()}
    assert suffixes <= {".json", ".npy", ".faiss", ".safetensors", ".parquet", ".md", ".html", ".png"}


def test_report_contents(pipeline):
    info = _value(pipeline["results"], "evaluation_report")
    report = info.report
    assert set(report["domains"]) == DOMAINS
    for section in report["domains"].values():
        assert section["has_bank"]
        cascade = section["cascade"]
        assert cascade["n_anomaly"] > 0 and cascade["n_normal"] > 0  # a test split with both classes
        assert 0.0 <= cascade["auroc"] <= 1.0
        assert set(cascade["confusion"]) == {"tn", "fp", "fn", "tp"}
        assert section["always_heatmap"]["auroc"] is not None
        assert 0.0 <= section["heatmap_call_rate"] <= 1.0
        assert section["latency"]["cascade_total"]["p95_ms"] >= section["latency"]["cascade_total"]["p50_ms"] > 0
        assert section["pixel_auroc"] is not None
    html = info.files["report.html"].decode()
    assert "data:image/png;base64," in html and "woven_grid" in html
    assert any(name.endswith("_roc.png") for name in info.files) and any(name.endswith("_overlays.png") for name in info.files)
    assert len(info.predictions) == sum(s["cascade"]["n"] for s in report["domains"].values())


def test_model_registered_as_champion_and_scores_images(pipeline, tiny_demo):
    info = _value(pipeline["results"], "registered_model")
    assert info["promoted_to_champion"]
    model = mlflow.pyfunc.load_model(f"models:/{info['model_name']}@champion")
    paths = sorted((tiny_demo / "brushed_metal" / "good").glob("*.png"))[:2]
    images = [base64.b64encode(p.read_bytes()).decode("ascii") for p in paths]
    out = model.predict(pd.DataFrame({"image_base64": images, "domain": ["brushed_metal"] * 2}), params={"heatmap": "png"})
    assert list(out.columns) == list(OUTPUT_COLUMNS)
    for _, row in out.iterrows():
        assert row["error"] is None and row["domain"] == "brushed_metal"
        assert row["heatmap"].startswith("data:image/png;base64,")  # a heatmap was asked for


def test_served_model_flags_a_blank_frame_and_another_product_for_the_given_domain(pipeline, tiny_demo, tmp_path):
    info = _value(pipeline["results"], "registered_model")
    model = mlflow.pyfunc.load_model(f"models:/{info['model_name']}@champion")
    blank = tmp_path / "blank.png"
    Image.new("RGB", (96, 96), (128, 128, 128)).save(blank)
    other = sorted((tiny_demo / "woven_grid" / "good").glob("*.png"))[0]
    images = [base64.b64encode(p.read_bytes()).decode("ascii") for p in (blank, other)]
    out = model.predict(pd.DataFrame({"image_base64": images, "domain": ["brushed_metal"] * 2}))
    assert out["is_anomaly"].tolist() == [True, True]
    assert out["reason"].str.startswith("unlike every training image of domain brushed_metal").all()


def test_cascade_value_loads_as_a_model(pipeline):
    cascade = _value(pipeline["results"], "cascade")
    model = CascadeModel.from_artifacts(cascade, device="cpu")
    assert model.domains == sorted(DOMAINS) and set(model.gates) == DOMAINS


def test_second_report_run_reads_stored_upstream_and_logs_nothing_new(pipeline):
    defs = pipeline["defs"]
    again = materialize([*defs.assets], resources=defs.resources, instance=pipeline["instance"], selection=[AssetKey("evaluation_report")])
    assert again.success
    first = _value(pipeline["results"], "evaluation_report")
    second = again.output_for_node("evaluation_report")
    assert second.key == first.key
    assert {e.asset_key for e in again.get_asset_materialization_events()} == {AssetKey("evaluation_report")}
    runs = mlflow.search_runs(experiment_names=["cpst"], filter_string=f"tags.report_key = '{first.key}'")
    assert len(runs) == 1


def test_a_failing_quality_gate_blocks_registration(pipeline):
    """The tiny model fails the default gates (six test images per domain: one domain's test FPR
    reads 1.0): the blocking check stops the run before registered_model, and no version is added."""
    lenient = pipeline["settings"]
    strict = CpstSettings(data_dir=lenient.data_dir, dataset_roots=lenient.dataset_roots, heatmap_short_side=64, gate_short_side=64)
    versions_before = len(mlflow.MlflowClient().search_model_versions(f"name='{strict.model_name}'"))
    again = materialize(
        [*ALL_ASSETS, *ALL_ASSET_CHECKS], resources=pipeline_resources(strict), instance=pipeline["instance"],
        selection=AssetSelection.assets("evaluation_report", "registered_model"), raise_on_error=False,
    )
    gates = next(e for e in again.get_asset_check_evaluations() if e.check_name == "model_quality_gates")
    assert not gates.passed and gates.metadata["failed"].value
    assert AssetKey("registered_model") not in {e.asset_key for e in again.get_asset_materialization_events()}
    assert len(mlflow.MlflowClient().search_model_versions(f"name='{strict.model_name}'")) == versions_before


def test_a_domain_without_normal_images_is_served_by_its_gate_alone(tiny_demo, tmp_path):
    """One domain holds defects only (as NEU-DET does): no memory bank, and the cross-domain assets
    still see its partition (a stored None is kept, not dropped)."""
    root = tmp_path / "images"
    shutil.copytree(tiny_demo / "brushed_metal", root / "brushed_metal")
    shutil.copytree(tiny_demo / "speckled_tile", root / "defects_only", ignore=shutil.ignore_patterns("good"))
    with project(tmp_path, root) as (instance, settings, defs):
        results = materialize_all(defs, instance, cross_domain=["domain_router", "cascade"])
    cascade = _value(results, "cascade")
    assert set(cascade.calibrations) == {"brushed_metal", "defects_only"}
    gate_checks = {  # yielded by the asset itself: the run's partition names the domain
        r.dagster_run.tags.get("dagster/partition"): e for r in results for e in r.get_asset_check_evaluations() if e.check_name == "gate_better_than_chance"
    }
    assert gate_checks["brushed_metal"].passed
    # its val holds defects only: the gate's AUROC cannot be measured, which warns rather than fails
    assert not gate_checks["defects_only"].passed and gate_checks["defects_only"].severity == AssetCheckSeverity.WARN
    assert set(cascade.banks) == {"brushed_metal"} and not cascade.calibrations["defects_only"].has_bank
