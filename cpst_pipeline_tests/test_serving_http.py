"""The registered champion served by ``mlflow models serve`` on 127.0.0.1, spoken to over HTTP as a client would."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pandas as pd
import pytest

from cpst_pipeline.cascade.model import CascadeModel
from cpst_pipeline.cascade.serving import PATH_REFUSED, ServingConfig, predict_rows
from cpst_pipeline.data.images import load_image
from cpst_pipeline.pipeline import registry
from cpst_pipeline.pipeline.model_server import model_server, post_invocations
from cpst_pipeline_tests.conftest import LENIENT_GATES

MODEL_NAME = "cpst-http"


def strict_loads(body: bytes):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(body, parse_constant=refuse)


@pytest.fixture(scope="module")
def served(tiny_pipeline, tiny_demo, tmp_path_factory):
    home = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    config, evaluation, splits = tiny_pipeline["config"], tiny_pipeline["evaluation"], tiny_pipeline["splits"]
    run_id = registry.log_evaluation_run(evaluation, config)
    serving = ServingConfig(path_roots=(str(tiny_demo),))
    info = registry.register_cascade(
        evaluation, run_id, splits[splits["split"] == "test_mix"], config, registry.RegistryConfig(MODEL_NAME, serving, LENIENT_GATES)
    )
    assert info["promoted_to_champion"]
    try:
        with model_server(f"models:/{MODEL_NAME}@champion", uri, home / "server.log") as url:
            yield {"url": url, "serving": serving, "cascade_dir": Path(evaluation["cascade_dir"]), "splits": splits}
    finally:
        mp.undo()


def test_base64_images_one_corrupt_match_in_process_predict(served) -> None:
    test = served["splits"][served["splits"]["split"] == "test_mix"]
    paths = [Path(p) for p in test.groupby("domain").head(2)["path"]]
    encoded = [base64.b64encode(p.read_bytes()).decode("ascii") for p in paths]
    corrupt = base64.b64encode(paths[0].read_bytes()[:300]).decode("ascii")
    images = [*encoded[:2], corrupt, *encoded[2:]]
    status, body = post_invocations(served["url"], {"dataframe_split": {"columns": ["image_base64"], "data": [[i] for i in images]}})
    assert status == 200, body[:2000]
    rows = strict_loads(body)["predictions"]
    assert len(rows) == len(images)
    assert rows[2]["error"] == "image_base64: truncated image" and rows[2]["anomaly_score"] is None

    model = CascadeModel.load(served["cascade_dir"], device="cpu")
    local = predict_rows(model, pd.DataFrame({"image_base64": images}), None, served["serving"]).to_dict(orient="records")
    scored = [row for i, row in enumerate(rows) if i != 2]
    for path, row, expected in zip(paths, scored, [r for i, r in enumerate(local) if i != 2]):
        one = model.predict(load_image(path))
        assert row["error"] is None
        assert (row["domain"], row["is_anomaly"], row["heatmap_ran"]) == (one.domain, one.is_anomaly, one.heatmap_ran)
        assert row["anomaly_score"] == pytest.approx(one.anomaly_score, abs=1e-5)
        assert row.keys() == expected.keys()
        for key, value in row.items():
            assert value == (pytest.approx(expected[key], abs=1e-6) if isinstance(value, float) else expected[key])
    assert len(json.dumps(rows[0])) < 1000  # no heatmap unless asked for


def test_heatmap_param_paths_and_empty_input(served) -> None:
    test = served["splits"][served["splits"]["split"] == "test_mix"]
    path = Path(test["path"].iloc[0])
    image = base64.b64encode(path.read_bytes()).decode("ascii")
    status, body = post_invocations(served["url"], {"dataframe_records": [{"image_base64": image}], "params": {"heatmap": "png", "heatmap_size": 48}})
    assert status == 200, body[:2000]
    row = strict_loads(body)["predictions"][0]
    if row["domain"] is not None:
        assert row["heatmap"].startswith("data:image/png;base64,") and len(body) < 8000

    status, body = post_invocations(served["url"], {"dataframe_records": [{"path": str(path)}, {"path": "/etc/passwd"}, {"path": "/nonexistent/x.png"}]})
    assert status == 200, body[:2000]
    rows = strict_loads(body)["predictions"]
    assert rows[0]["error"] is None and rows[1]["error"] == rows[2]["error"] == PATH_REFUSED
    assert b"Traceback" not in body

    status, body = post_invocations(served["url"], {"dataframe_split": {"columns": ["image_base64"], "data": []}})
    assert status == 200 and strict_loads(body) == {"predictions": []}
