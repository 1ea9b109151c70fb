"""Features: input sizing, the backbone and its weights, patch features, the feature store and incremental embedding."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from cpst_pipeline.data.images import as_rgb, load_image, load_image_rgb
from cpst_pipeline.features.backbone import (
    BUNDLED_MODELS,
    BUNDLED_WEIGHTS_MODEL,
    BackboneConfig,
    _full_model_weights,
    _map_in_order,
    bundled_weights_path,
    create_feature_network,
)
from cpst_pipeline.features.embed import DomainInputs, embed_domain, gate_kind, patch_kind
from cpst_pipeline.features.extractor import FeatureExtractor
from cpst_pipeline.features.loader import iter_resized_batches
from cpst_pipeline.features.preprocess import SIZE_MULTIPLE, fit_input_size, resize_image, to_batch
from cpst_pipeline.features.store import FeatureStore

pytestmark = pytest.mark.usefixtures("single_torch_thread")


# ---------------------------------------------------------------- preprocess


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (1250, 500, (640, 256)),  # tall Kolektor-style image: 2.5 x 256 = 640
        (500, 1250, (256, 640)),  # the same image lying on its side
        (300, 300, (256, 256)),
        (480, 640, (256, 352)),  # 256 * 4/3 = 341.3 -> nearest multiple of 32
    ],
)
def test_fit_input_size_keeps_aspect_ratio(height, width, expected) -> None:
    assert fit_input_size(height, width, 256) == expected


def test_fit_input_size_long_side_is_multiple_of_32_and_close_to_the_true_ratio() -> None:
    rng = np.random.default_rng(0)
    for height, width in rng.integers(20, 3000, size=(200, 2)):
        for short_side in (64, 128, 256):
            out_h, out_w = fit_input_size(float(height), float(width), short_side)
            assert min(out_h, out_w) == short_side
            assert out_h % SIZE_MULTIPLE == 0 and out_w % SIZE_MULTIPLE == 0
            # orientation kept
            assert (out_h >= out_w) == (height >= width) or out_h == out_w
            aspect = min(max(height, width) / min(height, width), 4.0)
            assert abs(max(out_h, out_w) - short_side * aspect) <= SIZE_MULTIPLE / 2 + 1e-9


def test_fit_input_size_caps_extreme_aspect_ratios() -> None:
    assert fit_input_size(100, 1000, 64) == (64, 256)  # 10:1 capped at the default 4:1
    assert fit_input_size(1000, 100, 64, max_aspect=2.0) == (128, 64)
    assert fit_input_size(1000, 100, 64, max_aspect=10.0) == (640, 64)


@pytest.mark.parametrize(("height", "width"), [(0, 100), (100, 0), (-5, 100), (100, -1.5)])
def test_fit_input_size_rejects_non_positive_sizes(height, width) -> None:
    with pytest.raises(ValueError, match="positive"):
        fit_input_size(height, width, 256)


def test_resize_image_shape_and_content() -> None:
    image = np.zeros((50, 80, 3), dtype=np.uint8)
    image[..., 0] = 200
    image[..., 2] = 17
    out = resize_image(image, (32, 64))
    assert out.shape == (32, 64, 3) and out.dtype == np.uint8
    assert (out[..., 0] == 200).all() and (out[..., 1] == 0).all() and (out[..., 2] == 17).all()
    # an image already at the wanted size comes back untouched
    assert resize_image(image, (50, 80)) is image


@pytest.mark.parametrize("mode", ["L", "RGB", "1"])
def test_grey_resized_before_rgb_gives_the_pixels_of_resizing_the_rgb_image(tmp_path: Path, mode: str) -> None:
    # The loader resizes grey images while they are one channel and FeatureExtractor.batch makes
    # them RGB afterwards: training and serving must still see the pixels of the RGB image resized.
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(123, 77, 3), dtype=np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(pixels).convert(mode).save(path)
    sizes = [(64, 32), (32, 96)]
    [(positions, per_size)] = list(iter_resized_batches([str(path)], sizes, batch_size=4))
    assert positions == [0]
    for size, (resized,) in zip(sizes, per_size):
        assert resized.shape == (size if mode != "RGB" else (*size, 3))
        np.testing.assert_array_equal(as_rgb(resized), resize_image(load_image_rgb(path), size))


def test_to_batch_normalises_per_channel_and_is_channels_last() -> None:
    first = np.zeros((4, 6, 3), dtype=np.uint8)
    first[..., 0], first[..., 1], first[..., 2] = 255, 0, 51
    second = np.full((4, 6, 3), 255, dtype=np.uint8)
    mean, std = (0.5, 0.25, 0.1), (0.5, 0.25, 0.2)
    batch = to_batch([first, second], mean, std)
    assert batch.shape == (2, 3, 4, 6) and batch.dtype == torch.float32
    assert batch.is_contiguous(memory_format=torch.channels_last)
    expected_first = [(1.0 - 0.5) / 0.5, (0.0 - 0.25) / 0.25, (0.2 - 0.1) / 0.2]
    expected_second = [(1.0 - m) / s for m, s in zip(mean, std)]
    for channel in range(3):
        assert torch.allclose(batch[0, channel], torch.full((4, 6), expected_first[channel]), atol=1e-6)
        assert torch.allclose(batch[1, channel], torch.full((4, 6), expected_second[channel]), atol=1e-6)


# ---------------------------------------------------------------- backbone


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return FeatureExtractor(BackboneConfig(), device="cpu")


def test_bundled_weights_really_load(extractor: FeatureExtractor) -> None:
    bundled = torch.load(bundled_weights_path(), map_location="cpu", weights_only=True)
    stem = extractor.network.state_dict()["conv_stem.weight"]
    assert torch.equal(stem, bundled["_conv_stem.weight"])
    # not a coincidence of initialisation: a fresh timm network differs
    torch.manual_seed(123)
    fresh = timm.create_model(BUNDLED_WEIGHTS_MODEL, pretrained=False).state_dict()["conv_stem.weight"]
    assert not torch.equal(fresh, stem)
    assert not extractor.network.training


# ImageNet class 652, "military uniform": the classic label of matplotlib's Grace Hopper photo.
MILITARY_UNIFORM = 652


@pytest.mark.parametrize("model_name", BUNDLED_MODELS)
def test_bundled_weights_classify_a_known_image(model_name: str) -> None:
    """The in-order renaming is right only if the whole network still classifies correctly."""
    network = timm.create_model(model_name, pretrained=False)
    network.load_state_dict(_full_model_weights(BackboneConfig(model_name=model_name)))
    size = network.default_cfg["input_size"][1:]
    photo = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB").resize(size)
    pixels = (torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255.0) - 0.5) / 0.5  # Lite: mean = std = 0.5
    with torch.no_grad():
        logits = network.eval()(pixels.permute(2, 0, 1)[None])
    assert int(logits.argmax()) == MILITARY_UNIFORM


def test_map_in_order_renames_in_order() -> None:
    source = {"a": torch.zeros(2, 3), "b": torch.ones(4)}
    target = {"x.weight": torch.empty(2, 3), "y.bias": torch.empty(4)}
    mapped = _map_in_order(source, target)
    assert list(mapped) == ["x.weight", "y.bias"]
    assert mapped["x.weight"] is source["a"] and mapped["y.bias"] is source["b"]


def test_map_in_order_rejects_shape_mismatch() -> None:
    source = {"a": torch.zeros(2, 3), "b": torch.zeros(5)}
    target = {"x": torch.empty(2, 3), "y": torch.empty(4)}
    with pytest.raises(ValueError) as error:
        _map_in_order(source, target)
    message = str(error.value)
    assert "b" in message and "(5,)" in message and "y" in message and "(4,)" in message


def test_map_in_order_rejects_count_mismatch() -> None:
    with pytest.raises(ValueError, match="checkpoint has 1 tensors, model expects 2"):
        _map_in_order({"a": torch.zeros(1)}, {"x": torch.empty(1), "y": torch.empty(1)})


@pytest.fixture(scope="module")
def random_lite0_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(7)
    model = timm.create_model(BUNDLED_WEIGHTS_MODEL, pretrained=False)
    with torch.no_grad():
        model.conv_stem.weight.normal_(0.0, 3.0)  # unmistakable values
    return model.state_dict()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_checkpoint_loads(tmp_path: Path, suffix: str, random_lite0_state) -> None:
    state = random_lite0_state
    path = tmp_path / f"lite0{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    network = create_feature_network(BackboneConfig(weights=str(path)))
    loaded = network.state_dict()
    assert torch.equal(loaded["conv_stem.weight"], state["conv_stem.weight"])
    for name, tensor in loaded.items():
        assert torch.equal(tensor, state[name]), name


def test_local_checkpoint_nested_state_dict_and_missing_file(tmp_path: Path, random_lite0_state) -> None:
    state = random_lite0_state
    path = tmp_path / "nested.pth"
    torch.save({"state_dict": state}, path)
    network = create_feature_network(BackboneConfig(weights=str(path)))
    assert torch.equal(network.state_dict()["conv_stem.weight"], state["conv_stem.weight"])
    with pytest.raises(FileNotFoundError):
        create_feature_network(BackboneConfig(weights=str(tmp_path / "absent.pth")))


def test_bundled_weights_only_for_lite0() -> None:
    with pytest.raises(ValueError, match="bundled weights exist only for tf_efficientnet_lite0, tf_efficientnet_lite1, tf_efficientnet_lite2"):
        create_feature_network(BackboneConfig(model_name="resnet18", weights="bundled", feature_layers=(1, 2)))


def test_backbone_key_changes_with_every_field() -> None:
    base = BackboneConfig()
    assert base.key() == BackboneConfig().key()
    assert base.key().startswith(f"{BUNDLED_WEIGHTS_MODEL}-")
    variants = [
        replace(base, model_name="resnet18"),
        replace(base, weights="hub"),
        replace(base, weights="/some/checkpoint.pth"),
        replace(base, feature_layers=(1, 2)),
        replace(base, feature_layers=(2, 3, 4)),
    ]
    keys = {base.key(), *(v.key() for v in variants)}
    assert len(keys) == len(variants) + 1


# ---------------------------------------------------------------- extractor


def test_patch_features_and_embedding_shapes(extractor: FeatureExtractor) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 128, 3), dtype=np.uint8) for _ in range(2)]
    batch = extractor.batch(images, (64, 128))
    patches = extractor.patch_features(batch)
    assert extractor.feature_dim == 152
    assert patches.shape == (2, 64 // 8, 128 // 8, 152) and patches.dtype == torch.float32
    embedding = extractor.image_embedding(batch)
    assert embedding.shape == (2, 304)
    flat = patches.flatten(1, 2)
    assert torch.allclose(embedding[:, :152], flat.mean(dim=1), atol=1e-5)
    assert torch.allclose(embedding[:, 152:], flat.amax(dim=1), atol=1e-5)
    # different images give different features
    assert not torch.allclose(embedding[0], embedding[1])


def test_batch_of_a_grey_image_equals_the_batch_of_its_rgb_copy(tiny_demo: Path, extractor: FeatureExtractor) -> None:
    path = next(tiny_demo.rglob("*.png"))
    grey = load_image(path)
    assert grey.ndim == 2
    torch.testing.assert_close(extractor.batch([grey], (64, 32)), extractor.batch([load_image_rgb(path)], (64, 32)), rtol=0, atol=0)


def test_features_do_not_depend_on_the_rest_of_the_batch(extractor: FeatureExtractor) -> None:
    rng = np.random.default_rng(1)
    target = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)
    others = [np.full((64, 128, 3), 255, np.uint8), rng.integers(0, 40, (64, 128, 3), dtype=np.uint8)]
    alone = extractor.patch_features(extractor.batch([target], (64, 128)))[0]
    together = extractor.patch_features(extractor.batch([others[0], target, others[1]], (64, 128)))[1]
    assert torch.allclose(alone, together, atol=1e-4)
    alone_embedding = extractor.image_embedding(extractor.batch([target], (64, 128)))[0]
    together_embedding = extractor.image_embedding(extractor.batch([*others, target], (64, 128)))[2]
    assert torch.allclose(alone_embedding, together_embedding, atol=1e-4)


# ---------------------------------------------------------------- store


def test_store_round_trip_keeps_dtype_and_shape(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    kind = "backbone-abc/patch-64x64"
    rng = np.random.default_rng(0)
    arrays = {
        "h16": rng.normal(size=(2, 3, 4)).astype(np.float16),
        "h32": rng.normal(size=(5,)).astype(np.float32),
    }
    assert store.known_hashes(kind) == set()
    assert store.append(kind, arrays) is not None
    assert store.known_hashes(kind) == {"h16", "h32"}
    assert store.known_hashes("another/kind") == set()
    loaded = store.load(kind, ["h16", "h32"])
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype
        assert loaded[name].shape == array.shape
        np.testing.assert_array_equal(loaded[name], array)
    assert set(store.load(kind, ["h32"])) == {"h32"}


def test_store_load_missing_hash_raises_naming_it(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    with pytest.raises(KeyError, match="never-stored"):
        store.load("k", ["never-stored"])
    store.append("k", {"present": np.zeros(3, np.float32)})
    with pytest.raises(KeyError) as error:
        store.load("k", ["present", "absent-hash"])
    assert "absent-hash" in str(error.value) and "present'" not in str(error.value)


def test_store_append_writes_new_parts_and_never_rewrites_old_ones(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    assert store.append("k", {}) is None
    assert list(tmp_path.rglob("*.parquet")) == []
    first = store.append("k", {"a": np.arange(3, dtype=np.float32)})
    first_bytes, first_mtime = first.read_bytes(), first.stat().st_mtime_ns
    second = store.append("k", {"b": np.arange(4, dtype=np.float32)})
    assert first != second and first.parent == second.parent
    assert sorted(p.name for p in (tmp_path / "k").glob("part-*.parquet")) == sorted([first.name, second.name])
    assert first.read_bytes() == first_bytes and first.stat().st_mtime_ns == first_mtime
    assert pq.read_table(second).column("content_hash").to_pylist() == ["b"]
    loaded = store.load("k", ["a", "b"])
    np.testing.assert_array_equal(loaded["a"], np.arange(3))
    np.testing.assert_array_equal(loaded["b"], np.arange(4))
    # no temporary files left beside the parts
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == sorted([first.name, second.name])


# ---------------------------------------------------------------- embed_domain


def _images_frame(paths: list[Path]) -> pd.DataFrame:
    return pd.DataFrame(
        {"path": [str(p) for p in paths], "content_hash": [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]}
    )


class _CountingFactory:
    def __init__(self, extractor: FeatureExtractor):
        self.extractor, self.calls = extractor, 0

    def __call__(self) -> FeatureExtractor:
        self.calls += 1
        return self.extractor


def test_embed_domain_computes_only_missing_images(tiny_demo: Path, tmp_path: Path, extractor: FeatureExtractor) -> None:
    paths = sorted((tiny_demo / "brushed_metal" / "good").glob("*.png"))[:4]
    assert len(paths) == 4
    store = FeatureStore(tmp_path)
    backbone = BackboneConfig()
    inputs = DomainInputs(heatmap_size=(64, 64), gate_size=(32, 64))
    gate_k, patch_k = gate_kind(backbone.key(), inputs.gate_size), patch_kind(backbone.key(), inputs.heatmap_size)
    first_three = _images_frame(paths[:3])

    factory = _CountingFactory(extractor)
    assert embed_domain(store, backbone, factory, first_three, inputs, with_patches=True, batch_size=2) == 3
    assert factory.calls == 1
    assert store.known_hashes(gate_k) == set(first_three["content_hash"])
    assert store.known_hashes(patch_k) == set(first_three["content_hash"])

    # stored values are the extractor's features at the configured sizes
    image = load_image_rgb(paths[0])
    digest = first_three["content_hash"][0]
    stored_embedding = store.load(gate_k, [digest])[digest]
    stored_patches = store.load(patch_k, [digest])[digest]
    assert stored_embedding.dtype == np.float32 and stored_embedding.shape == (304,)
    assert stored_patches.dtype == np.float16 and stored_patches.shape == (8, 8, 152)
    expected = extractor.image_embedding(extractor.batch([image], inputs.gate_size))[0].numpy()
    np.testing.assert_allclose(stored_embedding, expected, atol=1e-4)

    parts_before = {p: p.read_bytes() for p in tmp_path.rglob("part-*.parquet")}
    factory = _CountingFactory(extractor)
    assert embed_domain(store, backbone, factory, first_three, inputs, with_patches=True) == 0
    assert factory.calls == 0
    assert {p: p.read_bytes() for p in tmp_path.rglob("part-*.parquet")} == parts_before

    # one new image (plus a byte-identical duplicate row): only it is computed, in new parts only
    all_four = _images_frame(paths)
    duplicate = all_four.iloc[[3]]
    with_duplicate = pd.concat([all_four, duplicate], ignore_index=True)
    factory = _CountingFactory(extractor)
    assert embed_domain(store, backbone, factory, with_duplicate, inputs, with_patches=True) == 1
    assert factory.calls == 1
    new_parts = set(tmp_path.rglob("part-*.parquet")) - set(parts_before)
    assert len(new_parts) == 2
    for part in new_parts:
        assert pq.read_table(part).column("content_hash").to_pylist() == [all_four["content_hash"][3]]
    for part, data in parts_before.items():
        assert part.read_bytes() == data


def test_embed_domain_adds_patches_later_without_recomputing_embeddings(
    tiny_demo: Path, tmp_path: Path, extractor: FeatureExtractor
) -> None:
    paths = sorted((tiny_demo / "woven_grid" / "good").glob("*.png"))[:2]
    images = _images_frame(paths)
    store, backbone = FeatureStore(tmp_path), BackboneConfig()
    inputs = DomainInputs(heatmap_size=(64, 64), gate_size=(64, 64))
    assert embed_domain(store, backbone, _CountingFactory(extractor), images, inputs, with_patches=False) == 2
    gate_dir = tmp_path / gate_kind(backbone.key(), inputs.gate_size)
    gate_parts = sorted(gate_dir.glob("part-*.parquet"))
    assert not (tmp_path / patch_kind(backbone.key(), inputs.heatmap_size)).exists()

    assert embed_domain(store, backbone, _CountingFactory(extractor), images, inputs, with_patches=True) == 2
    assert sorted(gate_dir.glob("part-*.parquet")) == gate_parts  # no embedding was recomputed
    assert store.known_hashes(patch_kind(backbone.key(), inputs.heatmap_size)) == set(images["content_hash"])
