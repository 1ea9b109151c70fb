"""Keep BENCHMARKS.md as sections that each benchmark script rewrites on its own."""

from __future__ import annotations

import re
from pathlib import Path

from cpst_pipeline.io_utils import write_text_atomic

HEADER = "# CPST benchmarks\n\nEvery figure below was printed by a script in `cpst_pipeline/benchmark/`; rerun it to refresh its section.\n"


def replace_section(path: Path, name: str, body: str) -> Path:
    """Replace (or append) the ``<!-- name:start --> ... <!-- name:end -->`` block of ``path``."""
    text = path.read_text() if path.exists() else HEADER
    block = f"<!-- {name}:start -->\n{body.rstrip()}\n<!-- {name}:end -->"
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n"
    return write_text_atomic(path, text)


def fmt(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)

