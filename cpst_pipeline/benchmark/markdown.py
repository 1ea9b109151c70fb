"""Keep BENCHMARKS.md as sections that each benchmark script rewrites on its own."""

from __future__ import annotations

import re
from pathlib import Path

from cpst_pipeline.io_utils import write_text_atomic

HEADER = "# CPST benchmarks\n\nEvery figure below was printed by a script in `cpst_pipeline/benchmark/`; rerun it to refresh its section.\n"


def block(name: str, body: str) -> str:
    """``body`` between the markers that ``replace_section`` finds by ``name``."""
    return f"<!-- {name}:start -->\n{body.rstrip()}\n<!-- {name}:end -->"


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)


def replace_section(path: Path, name: str, body: str, inside: str | None = None) -> Path:
    """Replace the ``name`` block of ``path``; where there is none, add it at the end of the
    ``inside`` block (a section of several blocks) or, without one, of the file."""
    text = path.read_text() if path.exists() else HEADER
    new, pattern = block(name, body), _pattern(name)
    if pattern.search(text):
        text = pattern.sub(lambda _: new, text)
    elif inside is not None and (end := f"<!-- {inside}:end -->") in text:
        text = text.replace(end, f"\n{new}\n{end}", 1)
    else:
        text = f"{text.rstrip()}\n\n{new}\n"
    return write_text_atomic(path, text)


def fmt(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)

