"""The synthetic demo dataset: layout, counts, masks and byte-for-byte determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scipy.ndimage import binary_erosion

from cpst_pipeline.data.demo import (
    COMPLETE_MARKER,
    DEFECT_TYPES,
    DOMAINS,
    GENERATOR_VERSION,
    SMALL_DEFECT_TYPES,
    generate_demo_dataset,
    generate_small_defect_dataset,
)
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


def test_default_demo_bytes_are_those_of_generator_version_2(tmp_path: Path) -> None:
    """The small-defect options must leave the default demo (and its marker) exactly as it was."""
    root = generate_demo_dataset(tmp_path, seed=3, images_per_domain=10, size=64)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    assert GENERATOR_VERSION == 2
    # Recorded from the generator before the small-defect options were added.
    assert digest.hexdigest() == "679acc7c2915abfb95f95d31f50a2d43d929d1997974b49a9089894860fa85f6"
    assert json.loads((root / COMPLETE_MARKER).read_text()) == {
        "generator_version": 2, "seed": 3, "images_per_domain": 10, "size": 64
    }


def test_lower_defect_contrast_changes_only_the_defects(tmp_path: Path) -> None:
    small = {"images_per_domain": 10, "size": 64}
    full = generate_demo_dataset(tmp_path / "full", **small)
    faint = generate_demo_dataset(tmp_path / "faint", defect_contrast=0.5, **small)
    for domain in DOMAINS:
        for path in (full / domain).rglob("*.png"):
            same = np.asarray(Image.open(faint / path.relative_to(full)))
            if "good" in path.parts or "masks" in path.parts:
                assert np.array_equal(np.asarray(Image.open(path)), same), path
    defective = next((full / "brushed_metal" / "scratch").glob("*.png"))
    assert not np.array_equal(np.asarray(Image.open(defective)), np.asarray(Image.open(faint / defective.relative_to(full))))


def test_bad_defect_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="defect_types"):
        generate_demo_dataset(tmp_path, defect_types=("dent",))
    with pytest.raises(ValueError, match="defect_contrast"):
        generate_demo_dataset(tmp_path, defect_contrast=0.0)
    assert not any(tmp_path.iterdir())


def test_small_defect_set_is_640_px_with_defects_a_few_pixels_wide(tmp_path: Path) -> None:
    root = generate_small_defect_dataset(tmp_path, images_per_domain=10)
    assert Image.open(next((root / "brushed_metal" / "good").glob("*.png"))).size == (640, 640)
    assert Image.open(next((root / "woven_grid" / "good").glob("*.png"))).size == (640, 1280)
    for domain in DOMAINS:
        assert sorted(p.name for p in (root / domain / "masks").iterdir()) == sorted(SMALL_DEFECT_TYPES)
        for mask_path in (root / domain / "masks").rglob("*.png"):
            mask = np.asarray(Image.open(mask_path)) > 0
            assert mask.any()
            if mask_path.parent.name == "spot":
                rows, cols = np.nonzero(mask)
                assert max(np.ptp(rows), np.ptp(cols)) <= 17, mask_path  # radius 3-8 px
            else:
                # Lines 1-3 px wide: nothing survives eroding by a 4 px square.
                assert not binary_erosion(mask, np.ones((4, 4), dtype=bool)).any(), mask_path
