"""MLflow "model from code" for the cascade: MLflow stores this file, not a pickled object.

Input: a DataFrame with a ``path`` column (image file) and, optionally, ``domain``; where the
domain is missing the model's router picks it, and an image that fits no known domain comes
back with ``domain`` None and ``is_anomaly`` True (flagged for review), as does an image
unlike every training image of its domain.
Output, one row per image: ``domain``, ``anomaly_score``, ``is_anomaly``, ``reason`` (why a
flagged image was not scored, else None), ``heatmap_ran``, ``gate_score``, ``heatmap_score``
and ``heatmap`` (an (H, W) float32 array, or None when the gate decided alone).
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from cpst_pipeline.cascade.model import CascadeModel
from cpst_pipeline.data.images import load_image


class CascadePyfunc(PythonModel):
    def load_context(self, context) -> None:
        self.model = CascadeModel.load(context.artifacts["cascade"])

    def predict(self, context, model_input, params=None):
        if "path" not in model_input.columns:
            raise ValueError(f"input needs a 'path' column (and optionally 'domain'); got {list(model_input.columns)}")
        domains = model_input["domain"] if "domain" in model_input.columns else [None] * len(model_input)
        rows = []
        for path, domain in zip(model_input["path"], domains):
            prediction = self.model.predict(load_image(path), domain if isinstance(domain, str) else None)
            rows.append(
                {
                    "domain": prediction.domain,
                    "anomaly_score": prediction.anomaly_score,
                    "is_anomaly": prediction.is_anomaly,
                    "reason": prediction.reason,
                    "heatmap_ran": prediction.heatmap_ran,
                    "gate_score": prediction.gate_score,
                    "heatmap_score": prediction.heatmap_score,
                    "heatmap": prediction.anomaly_map,
                }
            )
        return pd.DataFrame(rows)


mlflow.models.set_model(CascadePyfunc())
