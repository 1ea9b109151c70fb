"""One score from both models where both ran: a logistic fit on (gate logit, heatmap score).

The fit is made on evidence neither model trained on (val plus out-of-fold train_mix),
and is used only when its grouped cross-validated AUROC beats the better single score
by ``min_auroc_gain``: three parameters fitted on a few dozen defects can look better
in-sample than they are. The model is three plain floats (JSON, never pickle); its
score is the fused log-odds of a defect.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike
from sklearn.linear_model import LogisticRegression

from cpst_pipeline.evaluation.folds import FoldError, group_folds
from cpst_pipeline.evaluation.metrics import auroc

# Gate probabilities are clipped before the logit so a saturated gate gives a finite feature.
_PROBABILITY_CLIP = 1e-6


def gate_logit(gate_probability: ArrayLike) -> np.ndarray:
    p = np.clip(np.asarray(gate_probability, dtype=np.float64), _PROBABILITY_CLIP, 1.0 - _PROBABILITY_CLIP)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class FusionModel:
    intercept: float
    gate_weight: float
    heatmap_weight: float

    def score(self, gate_probability: ArrayLike, normalised_heatmap_score: ArrayLike) -> np.ndarray:
        """Fused log-odds of a defect (numpy for scalars and arrays alike, so both round the same)."""
        heatmap = np.asarray(normalised_heatmap_score, dtype=np.float64)
        return self.intercept + self.gate_weight * gate_logit(gate_probability) + self.heatmap_weight * heatmap

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FusionModel":
        return cls(**{k: float(data[k]) for k in ("intercept", "gate_weight", "heatmap_weight")})


@dataclass(frozen=True)
class FusionConfig:
    # Fused cross-validated AUROC must beat the better single score by this much.
    min_auroc_gain: float = 0.01
    folds: int = 5  # grouped cross-validation of the fit
    seed: int = 0


@dataclass(frozen=True)
class FusionDecision:
    use: bool
    reason: str
    gate_auroc: float | None
    heatmap_auroc: float | None
    fused_cv_auroc: float | None  # pooled out-of-fold AUROC of fits that never saw the scored group
    model: FusionModel | None  # fitted on all the evidence; None when the fit was not possible

    def summary(self) -> dict:
        """JSON-able figures for the calibration record (the model itself is stored separately)."""
        return {k: v for k, v in asdict(self).items() if k != "model"}


def fit_fusion(labels: ArrayLike, gate_scores: ArrayLike, normalised_heatmap_scores: ArrayLike) -> FusionModel:
    """Class-balanced logistic fit, on standardised features folded back into plain weights."""
    y = np.asarray(labels, dtype=int)
    features = np.column_stack([gate_logit(gate_scores), np.asarray(normalised_heatmap_scores, dtype=np.float64)])
    if y.min() == y.max():
        raise ValueError("fusion needs both normal and anomalous images")
    mean, std = features.mean(axis=0), features.std(axis=0)
    std[std == 0] = 1.0
    fit = LogisticRegression(class_weight="balanced").fit((features - mean) / std, y)
    weights = fit.coef_[0] / std
    return FusionModel(float(fit.intercept_[0] - weights @ mean), float(weights[0]), float(weights[1]))


def decide_fusion(
    labels: ArrayLike, gate_scores: ArrayLike, normalised_heatmap_scores: ArrayLike, groups: ArrayLike, config: FusionConfig = FusionConfig()
) -> FusionDecision:
    """Whether fusing beats the better single score on this evidence, with the AUROCs measured."""
    y = np.asarray(labels, dtype=int)
    gate, heatmap = np.asarray(gate_scores, dtype=np.float64), np.asarray(normalised_heatmap_scores, dtype=np.float64)
    gate_auc, heatmap_auc = auroc(y, gate), auroc(y, heatmap)
    try:
        folds = group_folds(y, groups, config.folds, config.seed)
    except FoldError as error:
        return FusionDecision(False, f"no fusion: {error}", gate_auc, heatmap_auc, None, None)
    held_out_scores = np.empty(len(y))
    for fold in range(int(folds.max()) + 1):
        held_out = folds == fold
        fold_model = fit_fusion(y[~held_out], gate[~held_out], heatmap[~held_out])
        held_out_scores[held_out] = fold_model.score(gate[held_out], heatmap[held_out])
    fused_auc = auroc(y, held_out_scores)
    best_single = max(gate_auc, heatmap_auc)
    use = fused_auc >= best_single + config.min_auroc_gain
    verdict = "fused" if use else "no fusion"
    reason = f"{verdict}: cross-validated fused AUROC {fused_auc:.3f} against {best_single:.3f} for the better single score (gain needed {config.min_auroc_gain})"
    return FusionDecision(use, reason, gate_auc, heatmap_auc, fused_auc, fit_fusion(y, gate, heatmap))
