"""The deployable cascade: assemble a tiny cascade directory, load it, and check its predictions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cpst_pipeline.cascade.model import CascadeArtifacts, CascadeModel, save_cascade
from cpst_pipeline.cascade.policy import DECISION_THRESHOLD, UNKNOWN_DOMAIN_SCORE, DomainCalibration
from cpst_pipeline.cascade.router import DomainRouter
from cpst_pipeline.data.images import load_image_rgb
from cpst_pipeline.features.backbone import BackboneConfig
from cpst_pipeline.features.embed import DomainInputs, ResolutionConfig
from cpst_pipeline.features.extractor import FeatureExtractor
from cpst_pipeline.features.preprocess import fit_input_size
from cpst_pipeline.gate.train import GateTrainConfig, train_gate
from cpst_pipeline.patchcore.bank import BankConfig, build_memory_bank
from cpst_pipeline.patchcore.scoring import ScoringConfig, anomaly_map, score_patches

SIZE = (64, 64)
BANKED = ("brushed_metal", "speckled_tile")
GATE_ONLY = "woven_grid"
GATE_ONLY_THRESHOLD = 0.5
GATE_STAGES = {"gate_backbone", "gate_head"}
HEATMAP_STAGES = {"heatmap_backbone", "knn", "map"}


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _input_size(image: np.ndarray) -> tuple[int, int]:
    return fit_input_size(image.shape[0], image.shape[1], SIZE[0])


def _good(root: Path, domain: str) -> list[Path]:
    return sorted((root / domain / "good").glob("*.png"))


def _defects(root: Path, domain: str) -> list[Path]:
    return sorted(p for p in (root / domain).glob("*/*.png") if p.parent.name != "good" and "masks" not in p.parts)


@pytest.fixture(scope="module")
def cascade(tiny_demo: Path, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("cascade")
    backbone = BackboneConfig()
    extractor = FeatureExtractor(backbone, device="cpu")
    scoring = ScoringConfig(reweight_neighbors=3, map_sigma=2.0)

    rng = np.random.default_rng(0)
    gate_domains = [d for d in (*BANKED, GATE_ONLY) for _ in range(6)]
    gate = train_gate(
        rng.normal(size=(len(gate_domains), 304)).astype(np.float32),
        np.tile([0, 1], len(gate_domains) // 2),
        gate_domains,
        GateTrainConfig(epochs=5, hidden=8),
    )

    banks, calibrations = {}, {}
    for domain in BANKED:
        normals = [load_image_rgb(p) for p in _good(tiny_demo, domain)[:5]]
        patches = extractor.patch_features(extractor.batch(normals, SIZE)).numpy()
        train, val = patches[:3], patches[3:]
        banks[domain] = build_memory_bank(train.reshape(-1, patches.shape[-1]), BankConfig(coreset_ratio=0.5))
        raw = np.array([score_patches(banks[domain], p, scoring).image_score for p in val])
        center, scale = float(np.median(raw)), float(np.std(raw)) or 1.0
        # brushed_metal: heatmap on every image; speckled_tile: the gate clears every image
        low, high = (-math.inf, math.inf) if domain == "brushed_metal" else (2.0, 2.0)
        calibrations[domain] = DomainCalibration(domain, True, low, high, center, scale, heatmap_threshold=1.0)
    calibrations[GATE_ONLY] = DomainCalibration(GATE_ONLY, False, GATE_ONLY_THRESHOLD, GATE_ONLY_THRESHOLD, notes=["gate only"])

    # per-domain input sizes from the domain's image shape, as the pipeline does (woven_grid images are 192x96)
    inputs = {}
    for domain in (*BANKED, GATE_ONLY):
        size = _input_size(load_image_rgb(_good(tiny_demo, domain)[0]))
        inputs[domain] = DomainInputs(heatmap_size=size, gate_size=size)
    assert all(inputs[d].heatmap_size == SIZE for d in BANKED)
    # the router places images that come without a domain; fitted on real gate embeddings
    router_embeddings, router_domains = [], []
    for domain in (*BANKED, GATE_ONLY):
        images = [load_image_rgb(p) for p in _good(tiny_demo, domain)[5:-3]]  # the last three stay unseen
        router_embeddings.append(extractor.image_embedding(extractor.batch(images, inputs[domain].gate_size)).numpy())
        router_domains += [domain] * len(images)
    router = DomainRouter.fit(np.concatenate(router_embeddings), router_domains)
    artifacts = CascadeArtifacts(
        backbone=backbone,
        resolution=ResolutionConfig(heatmap_short_side=SIZE[0], gate_short_side=SIZE[0]),
        scoring=scoring,
        inputs=inputs,
        gates={d: gate for d in (*BANKED, GATE_ONLY)},
        banks=banks,
        calibrations=calibrations,
        router=router,
    )
    directory = save_cascade(artifacts, work / "cascade")
    model = CascadeModel.load(directory, device="cpu")
    return {
        "model": model,
        "directory": directory,
        "extractor": extractor,
        "gate": gate,
        "banks": banks,
        "calibrations": calibrations,
        "scoring": scoring,
        "root": tiny_demo,
        "router": router,
        "inputs": inputs,
    }


def _check_consistent(prediction, image: np.ndarray, forced: bool = False) -> None:
    assert prediction.is_anomaly == (prediction.anomaly_score >= DECISION_THRESHOLD)
    assert 0.0 <= prediction.gate_score <= 1.0
    if not forced:
        assert prediction.heatmap_ran == (prediction.anomaly_map is not None)
        assert prediction.heatmap_ran == (prediction.heatmap_score is not None)
    if prediction.anomaly_map is not None:
        assert prediction.anomaly_map.shape == image.shape[:2]
        assert prediction.anomaly_map.dtype == np.float32


def test_load_restores_every_part(cascade: dict) -> None:
    model, directory = cascade["model"], cascade["directory"]
    assert model.domains == sorted((*BANKED, GATE_ONLY))
    assert model.calibrations == cascade["calibrations"]  # infinities survive the JSON round trip
    assert set(model.banks) == set(BANKED)
    for domain in BANKED:
        np.testing.assert_array_equal(model.banks[domain].features, cascade["banks"][domain].features)
    assert model.inputs == cascade["inputs"]
    assert model.inputs[GATE_ONLY].gate_size == (128, 64)
    assert model.scoring == cascade["scoring"]
    assert model.extractor.config == BackboneConfig()
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(4, 304)).astype(np.float32))
    domains = [BANKED[0], BANKED[1], GATE_ONLY, BANKED[0]]
    for domain in set(domains):
        assert torch.equal(model.gates[domain].predict_proba(x, domains), cascade["gate"].predict_proba(x, domains))
    # plain files only: nothing a loader would have to unpickle
    suffixes = {p.suffix for p in directory.rglob("*") if p.is_file()}
    assert suffixes <= {".json", ".npy", ".faiss", ".safetensors"}
    spec = json.loads((directory / "cascade.json").read_text())
    assert spec["domains"][GATE_ONLY]["gate_size"] == [128, 64]
    # no domain is tiled: the format code from before tiles reads, with no tiling entries
    assert spec["format"] == 4 and not any("tiling" in d for d in spec["domains"].values())


def test_heatmap_domain_prediction_matches_its_parts(cascade: dict) -> None:
    model, extractor, root = cascade["model"], cascade["extractor"], cascade["root"]
    domain = "brushed_metal"
    calibration, bank, scoring = cascade["calibrations"][domain], cascade["banks"][domain], cascade["scoring"]
    for path in [_good(root, domain)[-1], _defects(root, domain)[0]]:
        image = load_image_rgb(path)
        prediction = model.predict(image, domain)
        _check_consistent(prediction, image)
        assert prediction.domain == domain
        assert prediction.heatmap_ran and prediction.anomaly_map.shape == image.shape[:2] == (96, 96)
        assert 1.0 < prediction.anomaly_score < 2.0
        assert prediction.is_anomaly == (prediction.heatmap_score >= calibration.heatmap_threshold)
        assert set(prediction.seconds) == GATE_STAGES | HEATMAP_STAGES

        # recompute every part independently
        gate_embedding = extractor.image_embedding(extractor.batch([image], cascade["inputs"][domain].gate_size))
        expected_gate = float(cascade["gate"].predict_proba(gate_embedding, [domain])[0])
        assert prediction.gate_score == pytest.approx(expected_gate, abs=1e-5)
        patches = extractor.stored_patch_features(extractor.batch([image], cascade["inputs"][domain].heatmap_size))[0]
        scores = score_patches(bank, patches, scoring)
        expected_score = (scores.image_score - calibration.score_center) / calibration.score_scale
        assert prediction.heatmap_score == pytest.approx(expected_score, rel=1e-4, abs=1e-4)
        raw_map = anomaly_map(scores.grid, SIZE, image.shape[:2], scoring.map_sigma)
        expected_map = (raw_map - calibration.score_center) / calibration.score_scale
        np.testing.assert_allclose(prediction.anomaly_map, expected_map, rtol=1e-3, atol=1e-3)


def test_gate_cleared_domain_skips_heatmap_and_force_only_adds_the_map(cascade: dict) -> None:
    model, root = cascade["model"], cascade["root"]
    domain = "speckled_tile"
    image = load_image_rgb(_defects(root, domain)[0])
    plain = model.predict(image, domain)
    _check_consistent(plain, image)
    assert not plain.heatmap_ran and plain.anomaly_map is None and plain.heatmap_score is None
    assert plain.anomaly_score == min(plain.gate_score, math.nextafter(1.0, 0.0)) and not plain.is_anomaly
    assert set(plain.seconds) == GATE_STAGES

    forced = model.predict(image, domain, force_heatmap=True)
    _check_consistent(forced, image, forced=True)
    assert not forced.heatmap_ran  # the cascade itself still did not need it
    assert forced.anomaly_map is not None and forced.anomaly_map.shape == image.shape[:2]
    assert forced.heatmap_score is not None
    assert (forced.anomaly_score, forced.is_anomaly) == (plain.anomaly_score, plain.is_anomaly)
    assert set(forced.seconds) == GATE_STAGES | HEATMAP_STAGES


def test_gate_only_domain_decides_by_gate(cascade: dict) -> None:
    model, root = cascade["model"], cascade["root"]
    for path in [_good(root, GATE_ONLY)[0], _defects(root, GATE_ONLY)[0]]:
        image = load_image_rgb(path)
        for force in (False, True):
            prediction = model.predict(image, GATE_ONLY, force_heatmap=force)
            _check_consistent(prediction, image)
            assert prediction.anomaly_map is None and not prediction.heatmap_ran  # no bank, nothing to force
            assert prediction.is_anomaly == (prediction.gate_score >= GATE_ONLY_THRESHOLD)
            if prediction.is_anomaly:
                assert prediction.anomaly_score == pytest.approx(2.0 + prediction.gate_score)
            else:
                assert prediction.anomaly_score < 1.0


def test_scores_do_not_depend_on_other_images(cascade: dict) -> None:
    model, root = cascade["model"], cascade["root"]
    domain = "brushed_metal"
    first, other = load_image_rgb(_good(root, domain)[-2]), load_image_rgb(_defects(root, domain)[1])
    before = model.predict(first, domain)
    model.predict(other, domain)
    after = model.predict(first, domain)
    assert after.heatmap_score == before.heatmap_score
    assert after.anomaly_score == before.anomaly_score
    np.testing.assert_array_equal(after.anomaly_map, before.anomaly_map)


def test_unknown_domain_raises_naming_known_domains(cascade: dict) -> None:
    model = cascade["model"]
    image = np.zeros((96, 96, 3), np.uint8)
    with pytest.raises(ValueError) as error:
        model.predict(image, "glass")
    message = str(error.value)
    assert "'glass'" in message
    for domain in (*BANKED, GATE_ONLY):
        assert domain in message


def test_prediction_without_domain_follows_the_router(cascade: dict) -> None:
    model, extractor, root = cascade["model"], cascade["extractor"], cascade["root"]
    images = [
        load_image_rgb(_good(root, "brushed_metal")[5]),  # one the router was fitted on
        load_image_rgb(_good(root, GATE_ONLY)[6]),
        load_image_rgb(_defects(root, GATE_ONLY)[0]),
        np.full((96, 96, 3), 255, np.uint8),  # looks like no product at all
    ]
    outcomes = []
    for image in images:
        # an unlabelled image is embedded at the size its own shape calls for
        embedding = extractor.image_embedding(extractor.batch([image], _input_size(image))).numpy()
        routed = cascade["router"].route(embedding)[0]
        prediction = model.predict(image)
        outcomes.append(routed)
        assert prediction.domain == routed
        assert prediction.is_anomaly == (prediction.anomaly_score >= DECISION_THRESHOLD)
        if routed is None:  # flagged for review, never scored against a wrong bank
            assert prediction.is_anomaly and not prediction.heatmap_ran and prediction.anomaly_map is None
        else:
            explicit = model.predict(image, routed)
            assert (prediction.anomaly_score, prediction.is_anomaly) == (explicit.anomaly_score, explicit.is_anomaly)
            assert prediction.heatmap_ran == explicit.heatmap_ran
    assert outcomes[:2] == ["brushed_metal", GATE_ONLY] and outcomes[-1] is None  # both branches were exercised


@pytest.mark.parametrize("domain", BANKED)
def test_images_unlike_the_given_domain_are_flagged_with_a_reason(cascade: dict, domain: str) -> None:
    model, root = cascade["model"], cascade["root"]
    other = next(d for d in (*BANKED, GATE_ONLY) if d != domain)
    unlike = {
        "blank": np.full((96, 96, 3), 128, np.uint8),
        "another product": load_image_rgb(_good(root, other)[-1]),
    }
    for what, image in unlike.items():
        prediction = model.predict(image, domain)
        assert prediction.is_anomaly and prediction.domain == domain, what
        assert prediction.reason.startswith(f"unlike every training image of domain {domain}: distance"), what
        assert not prediction.heatmap_ran and prediction.anomaly_map is None
    # normal images of the domain the router never saw are scored as usual
    for path in _good(root, domain)[-3:]:
        prediction = model.predict(load_image_rgb(path), domain)
        assert prediction.reason is None and prediction.anomaly_score < UNKNOWN_DOMAIN_SCORE
def test_batch_prediction_equals_one_at_a_time(cascade: dict) -> None:
    model, root = cascade["model"], cascade["root"]
    images = [
        load_image_rgb(_good(root, "brushed_metal")[-1]),
        load_image_rgb(_defects(root, "brushed_metal")[0]),
        load_image_rgb(_defects(root, "speckled_tile")[0]),
        load_image_rgb(_good(root, GATE_ONLY)[6]),
        load_image_rgb(_good(root, "brushed_metal")[5]),  # routed
        np.full((96, 96, 3), 255, np.uint8),  # routed to no domain
    ]
    domains = ["brushed_metal", "brushed_metal", "speckled_tile", GATE_ONLY, None, None]
    batch = model.predict_batch(images, domains)
    assert [p.domain for p in batch] == ["brushed_metal", "brushed_metal", "speckled_tile", GATE_ONLY, "brushed_metal", None]
    for image, domain, batched in zip(images, domains, batch):
        single = model.predict(image, domain)
        assert (batched.domain, batched.heatmap_ran, batched.is_anomaly) == (single.domain, single.heatmap_ran, single.is_anomaly)
        assert batched.anomaly_score == pytest.approx(single.anomaly_score, abs=1e-5)
        if single.heatmap_ran:
            assert batched.heatmap_score == pytest.approx(single.heatmap_score, abs=1e-4)
            np.testing.assert_allclose(batched.anomaly_map, single.anomaly_map, atol=1e-3)
    assert model.predict_batch([], []) == []
    with pytest.raises(ValueError, match="'glass'"):
        model.predict_batch(images[:2], ["brushed_metal", "glass"])
