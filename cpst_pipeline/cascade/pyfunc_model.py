"""MLflow "model from code" for the cascade: MLflow stores this file, not a pickled object.

Input: a DataFrame with ``path`` (image file) and ``domain`` columns.
Output, one row per image: ``domain``, ``anomaly_score``, ``is_anomaly``, ``heatmap_ran``,
``gate_score``, ``heatmap_score`` and ``heatmap`` (an (H, W) float32 array, or None when
the gate decided alone).
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from cpst_pipeline.cascade.model import CascadeModel
from cpst_pipeline.data.images import load_image_rgb


class CascadePyfunc(PythonModel):
    def load_context(self, context) -> None:
        self.model = CascadeModel.load(context.artifacts["cascade"])

    def predict(self, context, model_input, params=None):
        missing = {"path", "domain"} - set(model_input.columns)
        if missing:
            raise ValueError(f"input needs columns 'path' and 'domain'; missing {sorted(missing)}")
        rows = []
        for path, domain in zip(model_input["path"], model_input["domain"]):
            prediction = self.model.predict(load_image_rgb(path), domain)
            rows.append(
                {
                    "domain": domain,
                    "anomaly_score": prediction.anomaly_score,
                    "is_anomaly": prediction.is_anomaly,
                    "heatmap_ran": prediction.heatmap_ran,
                    "gate_score": prediction.gate_score,
                    "heatmap_score": prediction.heatmap_score,
                    "heatmap": prediction.anomaly_map,
                }
            )
        return pd.DataFrame(rows)


mlflow.models.set_model(CascadePyfunc())
