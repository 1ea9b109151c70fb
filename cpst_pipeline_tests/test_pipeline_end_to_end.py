"""Materialize the whole asset graph on a tiny generated dataset, into temporary Dagster and MLflow homes."""

import base64
import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from PIL import Image
from dagster import AssetKey, AssetSelection, DagsterInstance, materialize

from cpst_pipeline.assets import ALL_ASSET_CHECKS, ALL_ASSETS
from cpst_pipeline.cascade.serving import OUTPUT_COLUMNS
from cpst_pipeline.definitions import pipeline_resources
from cpst_pipeline.resources import CpstSettings
from cpst_pipeline_tests.conftest import LENIENT_GATES


@pytest.fixture(scope="module")
def pipeline(tiny_demo, tmp_path_factory):
    home = tmp_path_factory.mktemp("project")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    (home / "dagster_home").mkdir()
    instance = DagsterInstance.local_temp(str(home / "dagster_home"))
    settings = CpstSettings(
        data_dir=str(home / "data"), dataset_roots=str(tiny_demo), heatmap_short_side=64, gate_short_side=64,
        max_false_positive_rate=LENIENT_GATES.max_false_positive_rate, min_auroc=LENIENT_GATES.min_auroc, min_val_defects=LENIENT_GATES.min_val_defects,
    )
    resources = pipeline_resources(settings)
    first = materialize([*ALL_ASSETS, *ALL_ASSET_CHECKS], resources=resources, instance=instance)
    yield {"home": home, "instance": instance, "resources": resources, "result": first}
    mp.undo()


def _value(result, name):
    return result.output_for_node(name)


def test_whole_graph_materializes_with_passing_checks(pipeline):
    result = pipeline["result"]
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert {e.check_name for e in evaluations} >= {
        "index_fit_to_train_on", "no_group_leakage", "banks_not_empty", "gate_better_than_chance", "calibration_quality_gates", "model_quality_gates"
    }
    assert all(e.passed for e in evaluations if e.check_name in {"index_fit_to_train_on", "no_group_leakage", "banks_not_empty"})


def test_report_contents(pipeline):
    info = _value(pipeline["result"], "evaluation_report")
    report = info["report"]
    assert set(report["domains"]) == {"brushed_metal", "woven_grid", "speckled_tile"}
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
    directory = Path(info["directory"])
    html = (directory / "report.html").read_text()
    assert "data:image/png;base64," in html and "woven_grid" in html
    assert json.loads((directory / "report.json").read_text())["domains"].keys() == report["domains"].keys()
    assert list(directory.glob("*_roc.png")) and list(directory.glob("*_overlays.png"))


def test_model_registered_as_champion_and_scores_images(pipeline, tiny_demo):
    info = _value(pipeline["result"], "registered_model")
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
    info = _value(pipeline["result"], "registered_model")
    model = mlflow.pyfunc.load_model(f"models:/{info['model_name']}@champion")
    blank = tmp_path / "blank.png"
    Image.new("RGB", (96, 96), (128, 128, 128)).save(blank)
    other = sorted((tiny_demo / "woven_grid" / "good").glob("*.png"))[0]
    images = [base64.b64encode(p.read_bytes()).decode("ascii") for p in (blank, other)]
    out = model.predict(pd.DataFrame({"image_base64": images, "domain": ["brushed_metal"] * 2}))
    assert out["is_anomaly"].tolist() == [True, True]
    assert out["reason"].str.startswith("unlike every training image of domain brushed_metal").all()


def test_second_run_reuses_upstream_and_registers_nothing_new(pipeline):
    again = materialize(ALL_ASSETS, resources=pipeline["resources"], instance=pipeline["instance"], selection=[AssetKey("evaluation_report")])
    assert again.success
    first = _value(pipeline["result"], "evaluation_report")
    assert _value(again, "evaluation_report")["directory"] == first["directory"]
    materialized = {e.asset_key for e in again.get_asset_materialization_events()}
    assert materialized == {AssetKey("evaluation_report")}


def test_a_failing_quality_gate_blocks_registration(pipeline):
    """The tiny model fails the default gates (six test images per domain: one domain's test FPR
    reads 1.0): the blocking check stops the run before registered_model, and no version is added."""
    lenient = pipeline["resources"]["settings"]
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
