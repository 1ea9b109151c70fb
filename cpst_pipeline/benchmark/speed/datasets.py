"""The real datasets as the speed benchmark uses them: found by layout, listed, and copied into small subsets."""

from __future__ import annotations

import shutil
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from cpst_pipeline.benchmark.speed.common import Context
from cpst_pipeline.data.index import build_index
from cpst_pipeline.data.layouts import Candidate, DatasetRoot, detect_layout, iter_candidates


def find_datasets(data: Path) -> dict[str, Path]:
    """Layout name -> folder, for ``data`` itself or each of its sub-folders."""
    found = {}
    for folder in [data, *sorted(p for p in data.iterdir() if p.is_dir())]:
        try:
            found.setdefault(detect_layout(folder), folder)
        except ValueError:
            continue
    return found


@cache
def candidates(folder: Path) -> tuple[Candidate, ...]:
    return tuple(c for c in iter_candidates(folder) if isinstance(c, Candidate))


def layout_paths(ctx: Context, layout: str) -> list[str]:
    if layout not in ctx.datasets:
        raise SystemExit(f"--data {ctx.data} holds no {layout} dataset (found: {sorted(ctx.datasets)})")
    return [c.path for c in candidates(ctx.datasets[layout])]


@cache
def kolektor_index(folder: Path) -> pd.DataFrame:
    return build_index([DatasetRoot(folder, "kolektor")]).index


def subset_datasets(
    ctx: Context, target: Path, kolektor_images: int | None, magnetic_images: int, magnetic_extra: int = 0
) -> tuple[Path | None, Path | None, list[tuple[Path, Path]]]:
    """Copy a real subset into ``target`` in the datasets' own layouts (never touching the originals).

    Kolektor: whole ``kosNN`` folders (a part is never split) until ``kolektor_images`` images.
    Magnetic tile: a seeded random sample of ``magnetic_images`` images (with masks) from every class;
    the next ``magnetic_extra`` images of the sample order are returned as (source, destination)
    pairs, not copied, for a later "new images arrive" step.
    """
    kolektor_dir = magnetic_dir = None
    if kolektor_images:
        source = ctx.datasets["kolektor"]
        kolektor_dir = target / source.name
        copied = 0
        for part in sorted(p for p in source.iterdir() if p.is_dir()):
            if copied >= kolektor_images:
                break
            shutil.copytree(part, kolektor_dir / part.name)
            copied += sum(1 for c in candidates(source) if Path(c.path).parent == part)
    extra = []
    if magnetic_images:
        source = ctx.datasets["magnetic_tile"]
        magnetic_dir = target / source.name
        pool = list(candidates(source))
        order = np.random.default_rng(0).permutation(len(pool))
        for rank, position in enumerate(order[: magnetic_images + magnetic_extra]):
            image = Path(pool[position].path)
            pairs = [(image, magnetic_dir / image.relative_to(source))]
            mask = image.with_suffix(".png")
            if mask.exists():
                pairs.append((mask, magnetic_dir / mask.relative_to(source)))
            for src, dst in pairs:
                if rank < magnetic_images:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dst)
                else:
                    extra.append((src, dst))
    return kolektor_dir, magnetic_dir, extra


def neu_subset(ctx: Context, target: Path, images: int) -> Path:
    """A seeded sample of ``images`` NEU-DET images with their annotations, in its own layout."""
    source = ctx.datasets["neu"]
    pool = sorted((source / "IMAGES").glob("*.jpg"))
    folder = target / source.name
    for position in np.random.default_rng(0).permutation(len(pool))[:images]:
        image = pool[position]
        annotation = source / "ANNOTATIONS" / f"{image.stem}.xml"
        for src, dst in ((image, folder / "IMAGES" / image.name), (annotation, folder / "ANNOTATIONS" / annotation.name)):
            if src.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
    return folder
