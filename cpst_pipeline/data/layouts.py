"""Folder layouts of defect datasets: recognising them and listing their images with labels.

Each reader walks one layout and yields a ``Candidate`` per image it finds, or a ``Rejected``
record for an image (or a whole domain folder) it cannot use. Reading stays cheap: only
Kolektor masks are opened, because the label of a Kolektor image is defined by its mask.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cpst_pipeline.data.images import ImageReadError, MaskKind, load_mask
from cpst_pipeline.data.rules import IMAGE_SUFFIXES

Label = Literal["normal", "anomaly"]

NORMAL_DEFECT_TYPE = "good"
# Stems of mask images that some layouts keep beside the images they belong to.
MASK_STEM_SUFFIXES = ("_mask", "_label")


@dataclass(frozen=True)
class Candidate:
    """An image a layout reader found, with everything the folder structure says about it."""

    path: str
    domain: str
    label: Label
    defect_type: str
    mask_path: str | None
    mask_kind: MaskKind | None
    group_key: str | None  # the physical part, when the layout records it
    layout: str


@dataclass(frozen=True)
class Rejected:
    """A file or folder that was found but cannot be indexed, and why."""

    path: str
    domain: str
    reason: str


Record = Candidate | Rejected


class LayoutNotRecognised(ValueError):
    """A folder whose structure matches none of the known dataset layouts."""


@dataclass(frozen=True)
class DatasetRoot:
    path: Path
    layout: str | None = None  # None: detect from the folder structure

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))  # callers often pass a str
        if self.layout is not None:
            _check_layout_name(self.layout, f"dataset root {self.path}")


# ---------------------------------------------------------------- folder helpers


def _subdirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _child_dir(folder: Path, name: str) -> Path | None:
    """The sub-folder called ``name``, ignoring case (dataset mirrors disagree on it)."""
    return next((p for p in _subdirs(folder) if p.name.lower() == name.lower()), None)


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def _image_files(folder: Path | None) -> list[Path]:
    """Images directly inside ``folder``, without hidden files and masks named ``*_mask``/``*_label``."""
    if folder is None or not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if _is_image_file(p) and not p.stem.lower().endswith(MASK_STEM_SUFFIXES)
    )


def _first_existing(candidates: Iterable[Path]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def _report_empty_domain(records: Iterable[Record], folder: Path, domain: str) -> Iterator[Record]:
    """Pass records through; a domain folder without a single image is reported, not dropped."""
    found_any = False
    for record in records:
        found_any = True
        yield record
    if not found_any:
        yield Rejected(path=str(folder), domain=domain, reason="domain has no images")


# ---------------------------------------------------------------- mvtec


def _mvtec_category_dirs(root: Path) -> list[Path]:
    return [root] if _is_mvtec_category(root) else _subdirs(root)


def _is_mvtec_category(folder: Path) -> bool:
    return (folder / "train").is_dir() and (folder / "test").is_dir()


def _looks_like_mvtec(root: Path) -> bool:
    return _is_mvtec_category(root) or any(_is_mvtec_category(d) for d in _subdirs(root))


def _read_mvtec(root: Path) -> Iterator[Record]:
    for category in _mvtec_category_dirs(root):
        yield from _report_empty_domain(_read_mvtec_category(category), category, category.name)


def _read_mvtec_category(category: Path) -> Iterator[Record]:
    domain = category.name
    for image in _image_files(category / "train" / NORMAL_DEFECT_TYPE):
        yield _normal(image, domain, "mvtec")
    for defect_dir in _subdirs(category / "test"):
        defect = defect_dir.name
        for image in _image_files(defect_dir):
            if defect == NORMAL_DEFECT_TYPE:
                yield _normal(image, domain, "mvtec")
            else:
                mask = _first_existing([category / "ground_truth" / defect / f"{image.stem}_mask.png"])
                yield _anomaly(image, domain, defect, mask, "pixel", "mvtec")


# ---------------------------------------------------------------- kolektor

_KOLEKTOR_PART_DIR = re.compile(r"kos\d+", re.IGNORECASE)


def _kolektor_part_dirs(root: Path) -> list[Path]:
    return [d for d in _subdirs(root) if _KOLEKTOR_PART_DIR.fullmatch(d.name)]


def _looks_like_kolektor(root: Path) -> bool:
    return bool(_kolektor_part_dirs(root))


def _read_kolektor(root: Path) -> Iterator[Record]:
    records = (record for part in _kolektor_part_dirs(root) for record in _read_kolektor_part(part))
    yield from _report_empty_domain(records, root, "kolektor")


def _read_kolektor_part(part_dir: Path) -> Iterator[Record]:
    domain = "kolektor"
    for image in _image_files(part_dir):
        mask = _first_existing(part_dir / f"{image.stem}_label{suffix}" for suffix in (".bmp", ".png"))
        if mask is None:
            yield Rejected(str(image), domain, f"missing label mask {image.stem}_label.bmp")
            continue
        try:
            # The dataset has no label list: an image is defective iff its mask marks any pixel.
            is_defective = bool(load_mask(mask, "pixel").any())
        except ImageReadError as error:
            yield Rejected(str(image), domain, error.reason)
            continue
        yield Candidate(
            path=str(image),
            domain=domain,
            label="anomaly" if is_defective else "normal",
            defect_type="defect" if is_defective else NORMAL_DEFECT_TYPE,
            mask_path=str(mask),
            mask_kind="pixel",
            group_key=part_dir.name,  # each kosNN folder is one commutator photographed 8 times
            layout="kolektor",
        )


# ---------------------------------------------------------------- neu

# The class is everything before the trailing "_<number>", e.g. "rolled-in_scale_12".
_NEU_NAME = re.compile(r"(?P<defect>.+)_\d+")


def _looks_like_neu(root: Path) -> bool:
    return _child_dir(root, "IMAGES") is not None and _child_dir(root, "ANNOTATIONS") is not None


def _read_neu(root: Path) -> Iterator[Record]:
    yield from _report_empty_domain(_read_neu_images(root), root, "neu_steel")


def _read_neu_images(root: Path) -> Iterator[Record]:
    domain = "neu_steel"
    annotations = _child_dir(root, "ANNOTATIONS")
    for image in _image_files(_child_dir(root, "IMAGES")):
        name = _NEU_NAME.fullmatch(image.stem)
        if name is None:
            yield Rejected(str(image), domain, "file name does not follow <class>_<number>")
            continue
        boxes = _first_existing([annotations / f"{image.stem}.xml"]) if annotations else None
        # NEU has no defect-free class: every image shows a defect.
        yield _anomaly(image, domain, name["defect"], boxes, "boxes", "neu")


# ---------------------------------------------------------------- magnetic tile

_MAGNETIC_TILE_NORMAL_CLASS = "free"


def _magnetic_tile_class_dirs(root: Path) -> list[Path]:
    return [d for d in _subdirs(root) if d.name.upper().startswith("MT_")]


def _looks_like_magnetic_tile(root: Path) -> bool:
    return any(_child_dir(d, "Imgs") is not None for d in _magnetic_tile_class_dirs(root))


def _read_magnetic_tile(root: Path) -> Iterator[Record]:
    records = (r for d in _magnetic_tile_class_dirs(root) for r in _read_magnetic_tile_class(d))
    yield from _report_empty_domain(records, root, "magnetic_tile")


def _read_magnetic_tile_class(class_dir: Path) -> Iterator[Record]:
    domain = "magnetic_tile"
    defect = class_dir.name[3:].lower()
    for image in _image_files(_child_dir(class_dir, "Imgs")):
        if image.suffix.lower() == ".png":
            continue  # the PNGs beside the JPEGs are the masks
        # The label comes from the folder: some defect masks are empty.
        if defect == _MAGNETIC_TILE_NORMAL_CLASS:
            yield _normal(image, domain, "magnetic_tile")
        else:
            mask = _first_existing([image.with_suffix(".png")])
            yield _anomaly(image, domain, defect, mask, "pixel", "magnetic_tile")


# ---------------------------------------------------------------- generic

_GENERIC_MASK_DIR = "masks"


def _is_generic_domain(folder: Path) -> bool:
    return (folder / NORMAL_DEFECT_TYPE).is_dir()


def _looks_like_generic(root: Path) -> bool:
    return _is_generic_domain(root) or any(_is_generic_domain(d) for d in _subdirs(root))


def _read_generic(root: Path) -> Iterator[Record]:
    domains = [root] if _is_generic_domain(root) else _subdirs(root)
    for domain_dir in domains:
        yield from _report_empty_domain(_read_generic_domain(domain_dir), domain_dir, domain_dir.name)


def _read_generic_domain(domain_dir: Path) -> Iterator[Record]:
    domain = domain_dir.name
    for class_dir in _subdirs(domain_dir):
        defect = class_dir.name
        if defect == _GENERIC_MASK_DIR:
            continue
        for image in _image_files(class_dir):
            if defect == NORMAL_DEFECT_TYPE:
                yield _normal(image, domain, "generic")
            else:
                mask_dir = domain_dir / _GENERIC_MASK_DIR / defect
                mask = _first_existing([mask_dir / f"{image.stem}.png", mask_dir / f"{image.stem}_mask.png"])
                yield _anomaly(image, domain, defect, mask, "pixel", "generic")


# ---------------------------------------------------------------- shared record builders


def _normal(image: Path, domain: str, layout: str) -> Candidate:
    return Candidate(str(image), domain, "normal", NORMAL_DEFECT_TYPE, None, None, None, layout)


def _anomaly(
    image: Path,
    domain: str,
    defect: str,
    mask: Path | None,
    mask_kind: MaskKind,
    layout: str,
) -> Candidate:
    return Candidate(
        path=str(image),
        domain=domain,
        label="anomaly",
        defect_type=defect,
        mask_path=str(mask) if mask else None,
        mask_kind=mask_kind if mask else None,
        group_key=None,
        layout=layout,
    )


# ---------------------------------------------------------------- public entry points


@dataclass(frozen=True)
class _Layout:
    looks_like: Callable[[Path], bool]
    read: Callable[[Path], Iterator[Record]]


# Most specific first: an MVTec category would also pass the generic test.
_LAYOUTS: dict[str, _Layout] = {
    "kolektor": _Layout(_looks_like_kolektor, _read_kolektor),
    "neu": _Layout(_looks_like_neu, _read_neu),
    "magnetic_tile": _Layout(_looks_like_magnetic_tile, _read_magnetic_tile),
    "mvtec": _Layout(_looks_like_mvtec, _read_mvtec),
    "generic": _Layout(_looks_like_generic, _read_generic),
}
KNOWN_LAYOUTS = tuple(_LAYOUTS)


def _known_layouts() -> str:
    return ", ".join(KNOWN_LAYOUTS)


def _check_layout_name(layout: str, context: str) -> None:
    if layout not in _LAYOUTS:
        raise ValueError(f"{context}: unknown dataset layout {layout!r}; known layouts: {_known_layouts()}")


def _matching_layout(root: Path) -> str | None:
    return next((name for name, layout in _LAYOUTS.items() if layout.looks_like(root)), None)


def detect_layout(root: str | os.PathLike) -> str:
    """Name of the layout the folder ``root`` is in; LayoutNotRecognised (a ValueError) if none."""
    root = _existing_dir(root)
    name = _matching_layout(root)
    if name is None:
        raise LayoutNotRecognised(
            f"{root}: folder structure matches no known dataset layout ({_known_layouts()})"
        )
    return name


def iter_candidates(root: str | os.PathLike, layout: str | None = None) -> Iterator[Record]:
    """Every image under ``root`` as a Candidate (or Rejected), read with ``layout``.

    With ``layout=None`` the layout is detected; a root that is itself no dataset but holds
    datasets in its sub-folders (e.g. KolektorSDD/, NEU-DET/) is read sub-folder by sub-folder,
    each with its own detected layout.
    """
    root = _existing_dir(root)
    if layout is not None:
        _check_layout_name(layout, str(root))
        yield from _LAYOUTS[layout].read(root)
        return
    name = _matching_layout(root)
    if name is not None:
        yield from _LAYOUTS[name].read(root)
        return
    datasets = [(sub, _matching_layout(sub)) for sub in _subdirs(root)]
    if not any(name for _, name in datasets):
        raise LayoutNotRecognised(
            f"{root}: neither the folder nor its sub-folders match a known dataset layout "
            f"({_known_layouts()})"
        )
    for sub, name in datasets:
        if name is None:
            yield Rejected(str(sub), sub.name, f"folder matches no known dataset layout ({_known_layouts()})")
        else:
            yield from _LAYOUTS[name].read(sub)


def _existing_dir(path: str | os.PathLike) -> Path:
    # resolve() so the same file reached through two spellings of a root gets one path.
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_dir():
        raise ValueError(f"dataset root {resolved} does not exist or is not a folder")
    return resolved


_LAYOUT_PREFIX = re.compile(r"(?P<layout>[A-Za-z_]+)=(?P<path>.+)")


def parse_dataset_roots(spec: str) -> list[DatasetRoot]:
    """Parse ``"kolektor=/data/KSDD,/data/NEU-DET"``: comma-separated ``path`` or ``layout=path``."""
    roots = []
    for entry in (part.strip() for part in spec.split(",")):
        if not entry:
            continue
        prefixed = _LAYOUT_PREFIX.fullmatch(entry)
        if prefixed is None:
            roots.append(DatasetRoot(Path(entry).expanduser()))
        else:
            roots.append(DatasetRoot(Path(prefixed["path"].strip()).expanduser(), prefixed["layout"]))
    return roots
