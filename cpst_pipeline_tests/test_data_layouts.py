"""Layout readers on tiny synthetic trees shaped like the real datasets.

The ``make_*`` builders are reused by the index tests.
"""

from __future__ import annotations

import shutil
from itertools import count
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cpst_pipeline.data.layouts import (
    Candidate,
    DatasetRoot,
    Rejected,
    detect_layout,
    iter_candidates,
    parse_dataset_roots,
)

WIDTH, HEIGHT = 40, 32  # the smallest size indexing accepts is 32 px on the short side
_unique_seeds = count()


def write_image(path: Path, size: tuple[int, int] = (WIDTH, HEIGHT)) -> Path:
    """A small grey image whose pixels (and so content hash) differ from every other one written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(next(_unique_seeds)).integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_mask(path: Path, defective: bool, size: tuple[int, int] = (WIDTH, HEIGHT), mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((size[1], size[0]), dtype=np.uint8)
    if defective:
        pixels[2:5, 3:7] = 255
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def write_voc(path: Path, boxes: list[tuple[int, int, int, int]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    objects = "".join(
        f"<object><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for a, b, c, d in boxes
    )
    declared = f"<size><width>{WIDTH}</width><height>{HEIGHT}</height></size>"
    path.write_text(f"<annotation>{declared}{objects}</annotation>")
    return path


def make_mvtec(root: Path, categories: tuple[str, ...] = ("bottle", "cable")) -> Path:
    for category in categories:
        base = root / category
        write_image(base / "train" / "good" / "000.png")
        write_image(base / "train" / "good" / "001.png")
        write_image(base / "test" / "good" / "000.png")
        write_image(base / "test" / "crack" / "000.png")
        write_mask(base / "ground_truth" / "crack" / "000_mask.png", defective=True)
        write_image(base / "test" / "scratch" / "000.png")  # this one has no mask
    return root


def make_kolektor(root: Path) -> Path:
    """kos01 and kos26 hold byte-identical photos (as in the real set); kos02 is another part."""
    for part in ("kos01", "kos02"):
        for k in range(3):
            write_image(root / part / f"Part{k}.jpg")
            write_mask(root / part / f"Part{k}_label.bmp", defective=(k == 2), mode="1")
    shutil.copytree(root / "kos01", root / "kos26")
    write_mask(root / "kos26" / "Part1_label.bmp", defective=True, mode="1")  # masks of the pair differ
    return root


def make_neu(root: Path) -> Path:
    for stem in ("rolled-in_scale_1", "pitted_surface_3", "crazing_10"):
        write_image(root / "IMAGES" / f"{stem}.jpg")
        write_voc(root / "ANNOTATIONS" / f"{stem}.xml", [(2, 2, 8, 6)])
    return root


def make_magnetic_tile(root: Path) -> Path:
    for folder, stem, defective in [
        ("MT_Free", "exp0_num_1", False),
        ("MT_Free", "exp0_num_2", False),
        ("MT_Blowhole", "exp1_num_3", True),
        ("MT_Uneven", "exp4_num_45057", False),  # labelled defective by its folder, mask empty
    ]:
        write_image(root / folder / "Imgs" / f"{stem}.jpg")
        write_mask(root / folder / "Imgs" / f"{stem}.png", defective=defective)
    return root


def make_generic(root: Path, domain: str = "metal") -> Path:
    base = root / domain
    write_image(base / "good" / "a.png")
    write_image(base / "good" / "b.png")
    write_image(base / "scratch" / "s1.png")
    write_mask(base / "masks" / "scratch" / "s1.png", defective=True)
    write_image(base / "spot" / "p1.png")
    write_mask(base / "masks" / "spot" / "p1_mask.png", defective=True)
    write_image(base / "spot" / "p2.png")  # no mask: still an anomaly
    return root


def candidates(root: Path, layout: str | None = None) -> list[Candidate]:
    records = list(iter_candidates(root, layout))
    assert all(isinstance(r, Candidate) for r in records), [r for r in records if isinstance(r, Rejected)]
    return records


def by_name(records: list[Candidate]) -> dict[str, Candidate]:
    return {str(Path(r.path).relative_to(Path(r.path).parents[2])): r for r in records}


def test_mvtec_reads_train_test_and_masks(tmp_path: Path) -> None:
    records = candidates(make_mvtec(tmp_path / "mvtec"))
    assert len(records) == 10
    assert {r.domain for r in records} == {"bottle", "cable"}
    assert {r.layout for r in records} == {"mvtec"}
    bottle = by_name([r for r in records if r.domain == "bottle"])
    assert bottle["train/good/000.png"].label == "normal"
    assert bottle["test/good/000.png"].label == "normal"
    crack = bottle["test/crack/000.png"]
    assert (crack.label, crack.defect_type, crack.mask_kind) == ("anomaly", "crack", "pixel")
    assert crack.mask_path.endswith("ground_truth/crack/000_mask.png")
    assert bottle["test/scratch/000.png"].mask_path is None
    assert all(Path(r.path).is_absolute() for r in records)


def test_mvtec_single_category_root(tmp_path: Path) -> None:
    make_mvtec(tmp_path, categories=("bottle",))
    records = candidates(tmp_path / "bottle")
    assert len(records) == 5 and {r.domain for r in records} == {"bottle"}


def test_kolektor_labels_come_from_masks_and_parts_are_groups(tmp_path: Path) -> None:
    records = candidates(make_kolektor(tmp_path / "KolektorSDD"))
    assert len(records) == 9
    assert {r.domain for r in records} == {"kolektor"}
    labels = {(Path(r.path).parent.name, Path(r.path).name): r.label for r in records}
    assert labels[("kos01", "Part2.jpg")] == "anomaly"
    assert labels[("kos01", "Part1.jpg")] == "normal"
    assert labels[("kos26", "Part1.jpg")] == "anomaly"
    assert all(r.group_key == Path(r.path).parent.name for r in records)
    assert all(r.mask_path.endswith("_label.bmp") and r.mask_kind == "pixel" for r in records)
    assert {r.defect_type for r in records} == {"good", "defect"}


def test_kolektor_image_without_label_is_rejected(tmp_path: Path) -> None:
    root = make_kolektor(tmp_path / "KolektorSDD")
    (root / "kos02" / "Part0_label.bmp").unlink()
    rejected = [r for r in iter_candidates(root) if isinstance(r, Rejected)]
    assert [Path(r.path).name for r in rejected] == ["Part0.jpg"]
    assert "missing label mask" in rejected[0].reason


def test_neu_classes_keep_underscores_and_hyphens(tmp_path: Path) -> None:
    records = candidates(make_neu(tmp_path / "NEU-DET"))
    assert {r.defect_type for r in records} == {"rolled-in_scale", "pitted_surface", "crazing"}
    assert {r.label for r in records} == {"anomaly"}
    assert {r.domain for r in records} == {"neu_steel"}
    assert all(r.mask_kind == "boxes" and r.mask_path.endswith(".xml") for r in records)


def test_neu_name_without_number_is_rejected(tmp_path: Path) -> None:
    root = make_neu(tmp_path / "NEU-DET")
    write_image(root / "IMAGES" / "crazing.jpg")
    rejected = [r for r in iter_candidates(root) if isinstance(r, Rejected)]
    assert len(rejected) == 1 and "<class>_<number>" in rejected[0].reason


def test_magnetic_tile_label_comes_from_folder(tmp_path: Path) -> None:
    records = candidates(make_magnetic_tile(tmp_path / "Magnetic-tile-defect"))
    assert len(records) == 4  # the PNG masks beside the JPEGs are not images
    kinds = {Path(r.path).stem: (r.label, r.defect_type) for r in records}
    assert kinds["exp0_num_1"] == ("normal", "good")
    assert kinds["exp1_num_3"] == ("anomaly", "blowhole")
    assert kinds["exp4_num_45057"] == ("anomaly", "uneven")
    uneven = next(r for r in records if r.defect_type == "uneven")
    assert uneven.mask_path.endswith("exp4_num_45057.png")
    assert {r.domain for r in records} == {"magnetic_tile"}


def test_generic_domain_with_masks(tmp_path: Path) -> None:
    records = candidates(make_generic(tmp_path / "data"))
    assert len(records) == 5
    found = {Path(r.path).name: r for r in records}
    assert found["a.png"].label == "normal" and found["a.png"].mask_path is None
    assert found["s1.png"].mask_path.endswith("masks/scratch/s1.png")
    assert found["p1.png"].mask_path.endswith("masks/spot/p1_mask.png")
    assert found["p2.png"].mask_path is None and found["p2.png"].label == "anomaly"
    assert {r.domain for r in records} == {"metal"}
    # The single domain folder works as a root too.
    assert len(candidates(tmp_path / "data" / "metal")) == 5


def test_hidden_files_and_masks_are_not_images(tmp_path: Path) -> None:
    root = make_generic(tmp_path / "data")
    write_image(root / "metal" / "good" / ".hidden.png")
    write_image(root / "metal" / "good" / "c_mask.png")
    (root / "metal" / "good" / "notes.txt").write_text("not an image")
    assert len(candidates(root)) == 5


def test_empty_domain_folder_is_reported(tmp_path: Path) -> None:
    root = make_generic(tmp_path / "data")
    (root / "empty_domain" / "good").mkdir(parents=True)
    rejected = [r for r in iter_candidates(root) if isinstance(r, Rejected)]
    assert rejected == [Rejected(str(root / "empty_domain"), "empty_domain", "domain has no images")]


@pytest.mark.parametrize(
    "make, layout",
    [
        (make_mvtec, "mvtec"),
        (make_kolektor, "kolektor"),
        (make_neu, "neu"),
        (make_magnetic_tile, "magnetic_tile"),
        (make_generic, "generic"),
    ],
)
def test_detect_layout(tmp_path: Path, make, layout: str) -> None:
    assert detect_layout(make(tmp_path / "root")) == layout


def test_detect_layout_lists_known_layouts_when_nothing_matches(tmp_path: Path) -> None:
    write_image(tmp_path / "loose" / "x.png")
    with pytest.raises(ValueError, match="kolektor, neu, magnetic_tile, mvtec, generic"):
        detect_layout(tmp_path / "loose")
    with pytest.raises(ValueError, match="neither the folder nor its sub-folders"):
        list(iter_candidates(tmp_path / "loose"))


def test_missing_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        list(iter_candidates(tmp_path / "absent"))


def test_parent_folder_is_read_dataset_by_dataset(tmp_path: Path) -> None:
    make_kolektor(tmp_path / "KolektorSDD")
    make_neu(tmp_path / "NEU-DET")
    make_magnetic_tile(tmp_path / "Magnetic-tile-defect")
    (tmp_path / "README.md").write_text("datasets")
    records = candidates(tmp_path)
    assert {(r.layout, r.domain) for r in records} == {
        ("kolektor", "kolektor"),
        ("neu", "neu_steel"),
        ("magnetic_tile", "magnetic_tile"),
    }
    assert len(records) == 9 + 3 + 4


def test_unrecognised_sub_folder_of_a_parent_is_reported(tmp_path: Path) -> None:
    make_neu(tmp_path / "NEU-DET")
    write_image(tmp_path / "stray" / "x.png")
    rejected = [r for r in iter_candidates(tmp_path) if isinstance(r, Rejected)]
    assert [Path(r.path).name for r in rejected] == ["stray"]
    assert "matches no known dataset layout" in rejected[0].reason


def test_explicit_layout_overrides_detection(tmp_path: Path) -> None:
    root = make_generic(tmp_path / "data")
    assert {r.layout for r in candidates(root, "generic")} == {"generic"}
    with pytest.raises(ValueError, match="unknown dataset layout 'voc'"):
        list(iter_candidates(root, "voc"))


def test_parse_dataset_roots() -> None:
    assert parse_dataset_roots("kolektor=/data/KSDD, /data/NEU-DET,") == [
        DatasetRoot(Path("/data/KSDD"), "kolektor"),
        DatasetRoot(Path("/data/NEU-DET"), None),
    ]
    assert parse_dataset_roots("/data/a=b") == [DatasetRoot("/data/a=b")]
    assert parse_dataset_roots("  ") == []
    with pytest.raises(ValueError, match="unknown dataset layout 'kolector'; known layouts: kolektor"):
        parse_dataset_roots("kolector=/data/KSDD")
