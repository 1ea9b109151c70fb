"""Append-only parquet store of per-image feature arrays, keyed by image content hash.

Layout: ``<root>/<kind>/part-*.parquet`` where ``kind`` names the backbone config and
input size (e.g. ``tf_efficientnet_lite0-e33e352e3e/patch-640x256``). Adding images
writes one new part with only the new hashes, so earlier work is never redone.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from cpst_pipeline.io_utils import atomic_path

_SCHEMA = pa.schema(
    [
        ("content_hash", pa.string()),
        ("shape", pa.list_(pa.int32())),
        ("dtype", pa.string()),
        ("values", pa.binary()),
    ]
)


class FeatureStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _parts(self, kind: str) -> list[Path]:
        return sorted((self.root / kind).glob("part-*.parquet"))

    def known_hashes(self, kind: str) -> set[str]:
        known: set[str] = set()
        for part in self._parts(kind):
            known.update(pq.read_table(part, columns=["content_hash"]).column(0).to_pylist())
        return known

    def append(self, kind: str, arrays: dict[str, np.ndarray]) -> Path | None:
        """Write ``{content_hash: array}`` as one new part; returns its path."""
        if not arrays:
            return None
        table = pa.table(
            {
                "content_hash": list(arrays),
                "shape": [list(a.shape) for a in arrays.values()],
                "dtype": [a.dtype.str for a in arrays.values()],
                "values": [np.ascontiguousarray(a).tobytes() for a in arrays.values()],
            },
            schema=_SCHEMA,
        )
        target = self.root / kind / f"part-{uuid.uuid4().hex}.parquet"
        with atomic_path(target) as tmp:
            pq.write_table(table, tmp)
        return target

    def load(self, kind: str, hashes: list[str]) -> dict[str, np.ndarray]:
        """Arrays for ``hashes``; raises KeyError naming what is missing."""
        wanted = set(hashes)
        found: dict[str, np.ndarray] = {}
        parts = self._parts(kind)
        if parts and wanted:
            dataset = ds.dataset([str(p) for p in parts], format="parquet", schema=_SCHEMA)
            table = dataset.to_table(filter=ds.field("content_hash").isin(list(wanted)))
            for row in table.to_pylist():
                array = np.frombuffer(row["values"], dtype=np.dtype(row["dtype"]))
                found[row["content_hash"]] = array.reshape(row["shape"])
        missing = wanted - set(found)
        if missing:
            raise KeyError(f"{len(missing)} images have no '{kind}' features, e.g. {sorted(missing)[:3]}")
        return found
