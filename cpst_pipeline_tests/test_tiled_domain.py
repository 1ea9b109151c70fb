"""A domain whose heatmap model sees tiles: features, bank, calibration and the served cascade,
through the same library functions the assets call."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cpst_pipeline.cascade.model import CascadeModel, save_cascade
from cpst_pipeline.data.images import load_image
from cpst_pipeline.features.embed import DomainInputs, embed_domain
from cpst_pipeline.features.extractor import FeatureExtractor
from cpst_pipeline.features.store import FeatureStore
from cpst_pipeline.features.tiling import TilingConfig, extract_tiled_features
from cpst_pipeline.patchcore.image_scores import score_image
from cpst_pipeline.patchcore.tiled import score_tiles
from cpst_pipeline.pipeline.cross_domain import assemble_cascade, fit_router
from cpst_pipeline.pipeline.dataset import index_datasets, split_dataset
from cpst_pipeline.pipeline.domain_images import DomainImages, patch_features
from cpst_pipeline.pipeline.domain_models import calibrate_domain_cascade, fit_domain_bank, fit_domain_gate, raw_heatmap_scores
from cpst_pipeline_tests.conftest import tiny_settings

DOMAIN = "brushed_metal"
# 96 px demo images: 2 x 2 tiles of 64 px overlapping by 32 px.
TILING = TilingConfig(tile_size=64, min_overlap=16)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def tiled(tiny_demo: Path, tmp_path_factory) -> dict:
    config = tiny_settings(tmp_path_factory.mktemp("tiled"), tiny_demo).pipeline_config()
    config = replace(config, bank=replace(config.bank, index_type="ivf"))  # approximate search, as large banks get
    splits = split_dataset(index_datasets(config).index, config)
    rows = splits[splits["domain"] == DOMAIN].reset_index(drop=True)
    images = DomainImages(DOMAIN, rows, DomainInputs(heatmap_size=(64, 64), gate_size=(64, 64), tiling=TILING), config.backbone.key())
    extractor = FeatureExtractor(config.backbone, "cpu")
    embed_domain(FeatureStore(config.features_dir), config.backbone, lambda: extractor, rows, images.inputs, with_patches=True)
    gate, bank = fit_domain_gate(images, config), fit_domain_bank(images, config, log=lambda _: None)
    calibration = calibrate_domain_cascade(images, gate, bank, config, log=lambda _: None)
    return {"config": config, "images": images, "extractor": extractor, "gate": gate, "bank": bank, "calibration": calibration}


def test_the_store_holds_each_images_tiles(tiled: dict) -> None:
    images, extractor = tiled["images"], tiled["extractor"]
    first = images.rows.iloc[[0]]
    [stored] = patch_features(images, first, tiled["config"])
    expected = extract_tiled_features(extractor, load_image(first["path"].iloc[0]), TILING).patches
    assert stored.shape == expected.shape == (4, 8, 8, 152) and stored.dtype == np.float16
    np.testing.assert_allclose(stored.astype(np.float32), expected.astype(np.float32), atol=1e-2)
    # another tiling, or the whole image resized, is another kind in the store
    kinds = {images.inputs.heatmap_kind("k"), replace(images.inputs, tiling=replace(TILING, scale=0.5)).heatmap_kind("k")}
    assert len(kinds | {replace(images.inputs, tiling=None).heatmap_kind("k")}) == 3


def test_domain_images_keep_their_tiling_on_disk(tiled: dict, tmp_path: Path) -> None:
    tiled["images"].save(tmp_path)
    assert DomainImages.load(tmp_path).inputs == tiled["images"].inputs


def test_the_bank_is_built_from_tiles_and_scores_each_image_by_its_worst_tile(tiled: dict) -> None:
    images, bank, config = tiled["images"], tiled["bank"], tiled["config"]
    assert bank.meta["tiled"]
    # the probe choice compares whole-image maps: a tiled bank keeps the configured count, and says so
    assert bank.meta["search_probes"]["nprobe"] == config.bank.ivf_nprobe
    assert bank.meta["search_probes"]["reason"].startswith("tiled bank")
    normal = images.in_splits("train_normal")
    assert bank.meta["source_images"] == normal["content_hash"].nunique()
    val = images.in_splits("val_mix")
    features = patch_features(images, val, config)
    expected = [score_tiles(bank, extract_tiled_features(tiled["extractor"], load_image(p), TILING), config.scoring).image_score for p in val["path"]]
    np.testing.assert_allclose(raw_heatmap_scores(bank, images, val, config), expected, rtol=1e-3)
    with pytest.raises(ValueError, match="tile grids"):
        score_image(bank, features[0][:2], (96, 96), images.inputs, config.scoring)


def test_the_served_cascade_scores_tiles_and_maps_the_whole_image(tiled: dict, tmp_path: Path) -> None:
    images, config = tiled["images"], tiled["config"]
    domains = {DOMAIN: images}
    cascade = assemble_cascade(
        domains, {DOMAIN: tiled["gate"]}, {DOMAIN: tiled["bank"]}, {DOMAIN: tiled["calibration"]}, fit_router(domains, config), config
    )
    directory = save_cascade(cascade, tmp_path / "cascade")
    # a tiled cascade is a format that code from before tiles refuses to load
    assert json.loads((directory / "cascade.json").read_text())["format"] == 5
    model = CascadeModel.load(directory, device="cpu")
    assert model.inputs[DOMAIN].tiling == TILING
    test = images.in_splits("test_mix")
    pictures = [load_image(p) for p in test["path"]]
    predictions = model.predict_batch(pictures, [DOMAIN] * len(pictures), force_heatmap=True)
    raw = raw_heatmap_scores(tiled["bank"], images, test, config)
    for prediction, picture, expected in zip(predictions, pictures, raw):
        assert prediction.anomaly_map.shape == picture.shape[:2]
        # the same float16 tile features as the store's: the same score the calibration saw
        assert prediction.heatmap_score == pytest.approx(tiled["calibration"].normalise(expected), rel=1e-5)
