"""MLflow "model from code" for the cascade: MLflow stores this file, not a pickled object.

The request and reply contract lives in ``cpst_pipeline.cascade.serving`` (image bytes, base64
or, where enabled, confined server paths in; one JSON-safe row with an ``error`` column out).
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel

from cpst_pipeline.cascade.model import CascadeModel
from cpst_pipeline.cascade.serving import ServingConfig, predict_rows


class CascadePyfunc(PythonModel):
    def load_context(self, context) -> None:
        self.model = CascadeModel.load(context.artifacts["cascade"])
        self.config = ServingConfig.load(context.artifacts["serving"])

    def predict(self, context, model_input, params=None):
        return predict_rows(self.model, model_input, params, self.config)


mlflow.models.set_model(CascadePyfunc())
