"""The synthetic demo dataset: layout, counts, masks and byte-for-byte determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cpst_pipeline.data.demo import COMPLETE_MARKER, DEFECT_TYPES, DOMAINS, generate_demo_dataset
from cpst_pipeline.data.index import build_index
from cpst_pipeline.data.layouts import DatasetRoot, detect_layout


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha1(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*.png"))
    }


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_dataset(tmp_path_factory.mktemp("demo"))


def test_default_dataset_counts_and_sizes(demo_root: Path) -> None:
    assert detect_layout(demo_root) == "generic"
    for domain in DOMAINS:
        assert len(list((demo_root / domain / "good").glob("*.png"))) == 70
        defect_counts = [len(list((demo_root / domain / d).glob("*.png"))) for d in DEFECT_TYPES]
        assert sum(defect_counts) == 30 and min(defect_counts) >= 7
    tall = Image.open(next((demo_root / "woven_grid" / "good").glob("*.png")))
    square = Image.open(next((demo_root / "brushed_metal" / "good").glob("*.png")))
    assert tall.size == (256, 512) and square.size == (256, 256)


def test_every_defect_has_a_nonempty_mask_of_its_size(demo_root: Path) -> None:
    for domain in DOMAINS:
        for defect in DEFECT_TYPES:
            for image_path in (demo_root / domain / defect).glob("*.png"):
                mask = np.asarray(Image.open(demo_root / domain / "masks" / defect / image_path.name))
                image = Image.open(image_path)
                assert mask.shape == (image.height, image.width)
                assert set(np.unique(mask)) == {0, 255}
                # Small defects: they cover little of the image.
                assert (mask > 0).mean() < 0.05, image_path


def test_normal_images_differ_from_each_other(demo_root: Path) -> None:
    first, second = sorted((demo_root / "speckled_tile" / "good").glob("*.png"))[:2]
    assert not np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))


def test_demo_indexes_cleanly(demo_root: Path) -> None:
    result = build_index([DatasetRoot(demo_root)])
    assert result.quarantine.empty
    assert len(result.index) == 300
    assert result.index.loc[result.index["label"] == "anomaly", "mask_path"].notna().all()


def test_generation_is_byte_identical_and_seeded(tmp_path: Path) -> None:
    small = {"images_per_domain": 12, "size": 64}
    first = file_hashes(generate_demo_dataset(tmp_path / "one", **small))
    assert first == file_hashes(generate_demo_dataset(tmp_path / "two", **small))
    assert first != file_hashes(generate_demo_dataset(tmp_path / "three", seed=1, **small))


def test_complete_dataset_is_not_regenerated(tmp_path: Path) -> None:
    root = generate_demo_dataset(tmp_path / "demo", images_per_domain=4, size=64)
    assert (root / COMPLETE_MARKER).is_file()
    image = next((root / "brushed_metal" / "good").glob("*.png"))
    image.write_bytes(b"changed by hand")
    generate_demo_dataset(root, images_per_domain=4, size=64)
    assert image.read_bytes() == b"changed by hand"


def test_new_parameters_regenerate_and_drop_stale_images(tmp_path: Path) -> None:
    root = generate_demo_dataset(tmp_path / "demo", images_per_domain=12, size=64)
    generate_demo_dataset(root, images_per_domain=4, size=64)
    fresh = generate_demo_dataset(tmp_path / "fresh", images_per_domain=4, size=64)
    assert file_hashes(root) == file_hashes(fresh)
