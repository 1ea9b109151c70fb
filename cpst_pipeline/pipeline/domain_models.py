"""What is learnt per domain: its gate, its memory bank and its thresholds.

Each function reads one domain's images only, so adding or changing a domain never touches
another domain's models.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from cpst_pipeline.cascade.calibration import CalibrationEvidence, ScoredImages, calibrate_on_evidence
from cpst_pipeline.evaluation.folds import FoldError
from cpst_pipeline.gate.crossfit import crossfit_gate
from cpst_pipeline.cascade.policy import DomainCalibration
from cpst_pipeline.data.images import load_mask
from cpst_pipeline.gate.model import GateNet
from cpst_pipeline.gate.train import constant_gate, train_gate
from cpst_pipeline.io_utils import write_json_atomic
from cpst_pipeline.patchcore.bank import MemoryBank
from cpst_pipeline.patchcore.image_scores import fit_heatmap_bank, score_image
from cpst_pipeline.patchcore.search_probes import choose_probes, configured_probes, even_sample
from cpst_pipeline.patchcore.val_scores import ValImage
from cpst_pipeline.pipeline.config import PipelineConfig, content_key
from cpst_pipeline.pipeline.dataset import TRAINING_SPLITS, anomaly_labels
from cpst_pipeline.pipeline.domain_images import DomainImages, gate_embeddings, patch_features

Log = Callable[[str], None]


def fit_domain_gate(images: DomainImages, config: PipelineConfig) -> GateNet:
    """The domain's own gate, from its train_mix (both classes) and train_normal images: the bank's
    images are training data too (with them val AUROC rose from 0.94 to 0.98 on Magnetic-tile)."""
    train = images.in_splits(*TRAINING_SPLITS)
    if train.empty:
        raise ValueError(f"domain {images.domain!r} has no training images")
    embeddings, labels = gate_embeddings(images, train, config), anomaly_labels(train)
    if len(set(labels)) < 2:
        return constant_gate(embeddings.shape[1], images.domain, anomalous=bool(labels[0]))
    return train_gate(embeddings, labels, [images.domain] * len(labels), config.gate)


def gate_scores(gate: GateNet, images: DomainImages, frame: pd.DataFrame, config: PipelineConfig) -> np.ndarray:
    if frame.empty:
        return np.zeros(0)
    embeddings = torch.from_numpy(gate_embeddings(images, frame, config))
    return gate.predict_proba(embeddings, [images.domain] * len(frame)).numpy()


def gate_val_auroc(gate: GateNet, images: DomainImages, config: PipelineConfig) -> float | None:
    """AUROC of the gate on the domain's val_mix images; None where val holds one class only."""
    val = images.in_splits("val_mix")
    labels = anomaly_labels(val)
    return float(roc_auc_score(labels, gate_scores(gate, images, val, config))) if len(set(labels)) == 2 else None


def bank_training_images(images: DomainImages) -> pd.DataFrame:
    """The normal training images a bank is built from, each distinct image once, in a fixed order."""
    return images.in_splits("train_normal").drop_duplicates("content_hash").sort_values("content_hash")


def fit_domain_bank(images: DomainImages, config: PipelineConfig, log: Log = print) -> MemoryBank | None:
    """The domain's PatchCore memory bank; None for a domain without normal training images."""
    normal = bank_training_images(images)
    if normal.empty:
        return None
    inputs = images.inputs
    size, tiling = inputs.heatmap_size, inputs.tiling
    # Names the bank's inputs, so per-image heatmap scores can be cached against it.
    key = content_key(images.backbone_key, size, list(zip(normal["content_hash"], normal["group_id"])), config.bank, *([tiling] if tiling else []))
    log(f"memory bank {images.domain}: coreset of {len(normal)} images at {inputs.describe_heatmap_input()}")
    meta = {"domain": images.domain, "images": len(normal), "input_size": list(size), "content_key": key}
    bank = fit_heatmap_bank(patch_features(images, normal, config), normal["group_id"].tolist(), inputs, config.bank, meta)
    choice = None
    if tiling is not None:
        choice = configured_probes(bank, "tiled bank: configured probe count kept (the choice compares whole-image maps)")
    elif not bank.is_exact:
        choice = choose_probes(bank, val_images(images, config), config.scoring, size, config.search_probes)
    if choice is not None:
        bank.meta["search_probes"] = choice.summary()
        bank.meta["config"]["ivf_nprobe"] = choice.nprobe
        figures = f": {choice.pixel_auroc}" if choice.pixel_auroc else ""
        log(f"memory bank {images.domain}: {choice.nprobe} IVF lists per patch ({choice.reason}){figures}")
    return bank


def val_images(images: DomainImages, config: PipelineConfig) -> list[ValImage]:
    """An even sample (``search_probes.max_images``) of the val images pixel AUROC can use (pixel masks, or normal)."""
    val = images.in_splits("val_mix")
    val = val[(val["mask_kind"] == "pixel") | (val["label"] == "normal")].sort_values("content_hash")
    val = val.iloc[even_sample(len(val), config.search_probes.max_images)]
    return labelled_val_images(val, patch_features(images, val, config))


def labelled_val_images(frame: pd.DataFrame, features: list[np.ndarray]) -> list[ValImage]:
    """``frame``'s images with their features and pixel masks; a defect image without a pixel
    mask stays out of pixel AUROC."""
    images = []
    for record, patches in zip(frame.itertuples(index=False), features):
        size = (int(record.height), int(record.width))
        mask = load_mask(record.mask_path, "pixel", size=(size[1], size[0])) if record.mask_kind == "pixel" else None
        images.append(ValImage(patches, size, mask, in_pixel_auroc=record.mask_kind == "pixel" or record.label == "normal"))
    return images


def raw_heatmap_scores(bank: MemoryBank, images: DomainImages, frame: pd.DataFrame, config: PipelineConfig) -> np.ndarray:
    """Raw image scores of ``frame``'s images against the bank, cached per (bank inputs, scoring)
    and image, so new images or a new gate re-score only what is new."""
    path = config.artifacts_dir / "heatmap_scores" / f"{content_key(bank.meta['content_key'], config.scoring)}.json"
    cached = json.loads(path.read_text()) if path.exists() else {}
    missing = frame[~frame["content_hash"].isin(cached)].drop_duplicates("content_hash")
    if not missing.empty:
        patches = patch_features(images, missing, config)
        sizes = zip(missing["height"].astype(int), missing["width"].astype(int))
        cached.update(
            {h: score_image(bank, p, size, images.inputs, config.scoring).image_score for h, p, size in zip(missing["content_hash"], patches, sizes)}
        )
        write_json_atomic(path, cached)
    return np.array([cached[h] for h in frame["content_hash"]])


def out_of_fold_gate_scores(images: DomainImages, frame: pd.DataFrame, config: PipelineConfig, log: Log = print) -> np.ndarray | None:
    """Gate scores of ``frame``'s rows (training images) from gates cross-fitted by group on the
    domain's training images, each image scored by a gate that never saw its group; None when
    the groups cannot give every fold both classes (then the band is fitted on val alone)."""
    train = images.in_splits(*TRAINING_SPLITS)
    labels = anomaly_labels(train)
    try:
        crossfit = crossfit_gate(
            gate_embeddings(images, train, config), labels, train["group_id"].to_numpy(), [images.domain] * len(train), config.gate
        )
    except FoldError as error:
        log(f"gate {images.domain}: no out-of-fold scores ({error}); the gate band is fitted on val alone")
        return None
    by_row = pd.Series(crossfit.scores, index=train.index)
    return by_row.loc[frame.index].to_numpy()


def calibrate_domain_cascade(images: DomainImages, gate: GateNet, bank: MemoryBank | None, config: PipelineConfig, log: Log = print) -> DomainCalibration:
    """The domain's thresholds on every labelled image its models did not train on: val (scored by
    the gate) and train_mix (unseen by the bank, scored by cross-fitted gates)."""
    val, train_mix = images.in_splits("val_mix"), images.in_splits("train_mix")
    val_raw = train_raw = None
    if bank is not None:  # one pass over the score cache for both splits
        raw = raw_heatmap_scores(bank, images, pd.concat([val, train_mix]), config)
        val_raw, train_raw = raw[: len(val)], raw[len(val) :]
    evidence = CalibrationEvidence(
        val=ScoredImages(anomaly_labels(val), gate_scores(gate, images, val, config), val_raw, val["group_id"].to_numpy()),
        train_mix=ScoredImages(
            anomaly_labels(train_mix), out_of_fold_gate_scores(images, train_mix, config, log), train_raw, train_mix["group_id"].to_numpy()
        )
        if len(train_mix)
        else None,
    )
    return calibrate_on_evidence(images.domain, evidence, config.calibration)
