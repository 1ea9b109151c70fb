"""Asset values as folders of plain files, on any fsspec filesystem, swapped in atomically.

A value lives under ``<folder>/``: each write goes to a fresh ``<folder>/<version>/`` that
nobody reads yet, and then ``<folder>/current.json`` (one small file, replaced in one rename
or one object PUT) is pointed at it. A reader therefore sees the old value or the new one,
never a mix, on a local disk as on shared storage. Nothing is pickled: each type of value
has a codec that writes parquet, npy, faiss, safetensors or JSON.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from upath import UPath

from cpst_pipeline.cascade.model import CascadeArtifacts, load_cascade, save_cascade
from cpst_pipeline.cascade.policy import DomainCalibration
from cpst_pipeline.cascade.router import DomainRouter
from cpst_pipeline.gate.model import GateNet, load_gate, save_gate
from cpst_pipeline.io_utils import atomic_path, write_json_atomic
from cpst_pipeline.patchcore.bank import MemoryBank, load_memory_bank, save_memory_bank
from cpst_pipeline.pipeline.cross_domain import EvaluationReport
from cpst_pipeline.pipeline.domain_images import DomainImages

POINTER = "current.json"
# Versions kept besides the current one: a reader that resolved the pointer just before a swap
# can still finish reading the previous version.
KEEP_PREVIOUS = 1


@dataclass(frozen=True)
class Codec:
    name: str
    kind: type
    save: Callable[[Any, Path], Any]
    load: Callable[[Path], Any]


def _save_frame(frame: pd.DataFrame, directory: Path) -> None:
    with atomic_path(directory / "frame.parquet") as tmp:
        frame.to_parquet(tmp, index=False)


CODECS = (
    Codec("frame", pd.DataFrame, _save_frame, lambda d: pd.read_parquet(d / "frame.parquet")),
    Codec("domain_images", DomainImages, lambda v, d: v.save(d), DomainImages.load),
    Codec("gate", GateNet, save_gate, load_gate),
    Codec("memory_bank", MemoryBank, save_memory_bank, load_memory_bank),
    # A domain without normal images has no bank: stored as a marker, loaded as None.
    Codec("none", type(None), lambda v, d: write_json_atomic(d / "none.json", None), lambda d: None),
    Codec(
        "calibration",
        DomainCalibration,
        lambda v, d: write_json_atomic(d / "calibration.json", v.to_dict()),
        lambda d: DomainCalibration.from_dict(json.loads((d / "calibration.json").read_text())),
    ),
    Codec("router", DomainRouter, lambda v, d: v.save(d / "router.json"), lambda d: DomainRouter.load(d / "router.json")),
    Codec("cascade", CascadeArtifacts, save_cascade, load_cascade),
    Codec("evaluation_report", EvaluationReport, lambda v, d: v.save(d), EvaluationReport.load),
    Codec("json", dict, lambda v, d: write_json_atomic(d / "value.json", v), lambda d: json.loads((d / "value.json").read_text())),
)


def codec_for(value: Any) -> Codec:
    for codec in CODECS:
        if isinstance(value, codec.kind):
            return codec
    raise TypeError(f"no codec stores a {type(value).__name__}; known: {[c.kind.__name__ for c in CODECS]}")


def _codec_named(name: str) -> Codec:
    for codec in CODECS:
        if codec.name == name:
            return codec
    raise ValueError(f"unknown codec {name!r}; this code reads {[c.name for c in CODECS]}")


def _is_local(path: UPath) -> bool:
    return path.protocol in ("", "file", "local")


def _local(path: UPath) -> Path:
    return Path(path.path)


def write_artifact(folder: UPath, value: Any) -> UPath:
    """Store ``value`` as the current version under ``folder``; returns the version's folder."""
    codec = codec_for(value)
    # Names sort by creation time, so the oldest versions are found without a stat.
    version = folder / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    if _is_local(folder):
        _local(version).mkdir(parents=True)
        codec.save(value, _local(version))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            codec.save(value, Path(tmp))
            for file in sorted(p for p in Path(tmp).rglob("*") if p.is_file()):
                version.fs.put_file(str(file), str(version / file.relative_to(tmp).as_posix()))
    pointer = json.dumps({"version": version.name, "codec": codec.name}).encode()
    staged = folder / f".{POINTER}.{version.name}"
    staged.write_bytes(pointer)
    staged.fs.mv(str(staged), str(folder / POINTER))
    _drop_old_versions(folder, version.name)
    return version


def _drop_old_versions(folder: UPath, current: str) -> None:
    versions = sorted((p for p in folder.iterdir() if p.is_dir() and p.name != current), key=lambda p: p.name)
    for old in versions[: max(0, len(versions) - KEEP_PREVIOUS)]:
        old.fs.rm(str(old), recursive=True)


@contextmanager
def _readable(version: UPath) -> Iterator[Path]:
    """A local folder holding the version's files (a download for remote storage)."""
    if _is_local(version):
        yield _local(version)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for file in version.rglob("*"):
            if file.is_file():
                target = Path(tmp) / file.relative_to(version).as_posix()
                target.parent.mkdir(parents=True, exist_ok=True)
                file.fs.get_file(str(file), str(target))
        yield Path(tmp)


def read_artifact(folder: UPath) -> Any:
    """The current value under ``folder``; FileNotFoundError when none was ever written."""
    pointer = folder / POINTER
    if not pointer.exists():
        raise FileNotFoundError(f"no stored value at {folder} ({POINTER} missing): materialize it first")
    spec = json.loads(pointer.read_text())
    with _readable(folder / spec["version"]) as local:
        return _codec_named(spec["codec"]).load(local)
