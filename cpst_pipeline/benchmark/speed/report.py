"""The sections as a console table and as the ``speed`` section of BENCHMARKS.md."""

from __future__ import annotations

import sys

from cpst_pipeline.benchmark.markdown import block
from cpst_pipeline.benchmark.speed.common import Section


def print_section(section: Section) -> None:
    width = [max(len(r[i]) for r in section.rows + [("metric", "measured", "target", "verdict")]) for i in range(4)]
    print(f"\n== {section.title}")
    for row in [("metric", "measured", "target", "verdict"), *section.rows]:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, width)).rstrip())
    for note in section.notes:
        print(f"  note: {note}")
    sys.stdout.flush()


def run_description(header: dict, sections: str = "") -> str:
    """Where, when and how a run measured: one sentence for the top of what it writes."""
    options = f"{' --quick' if header['quick'] else ''}{f' --sections {sections}' if sections else ''}"
    return (
        f"`python -m cpst_pipeline.benchmark.speed --data <datasets>{options}` "
        f"on {header['machine']}, {header['cpu_count']} CPUs, {header['torch_threads']} torch threads, "
        f"device `{header['device']}`, load average {header['load_average']} at the start, "
        f"backbone `{header['backbone']}`, {header['date']}, {header['seconds']:.0f} s in all. "
        f"Reference matrix product (the exact kNN of one Kolektor image): {header['reference_gflops_start']:.0f} "
        f"GFLOP/s at the start, {header['reference_gflops_end']:.0f} at the end; compare runs by it."
    )


def run_paragraphs(header: dict, sections: str = "") -> str:
    """The run's description, then what makes its figures incomparable: a busy machine, quick sizes."""
    paragraphs = [run_description(header, sections)]
    if header["busy"]:
        paragraphs.append(f"**The machine was busy (load average {header['load_average']} at the start): timings are not representative.**")
    if header["quick"]:
        paragraphs.append("**Quick mode: small sizes, figures not comparable with the targets (stated for the full sizes).**")
    return "\n\n".join(paragraphs)


def section_markdown(section: Section, run: str = "") -> str:
    """One section; ``run``: run_paragraphs, for a section measured without the others."""
    lines = [f"### {section.title}", ""] + ([run, ""] if run else [])
    lines += ["| metric | measured | target | verdict |", "|---|---|---|---|"]
    lines += [f"| {m.strip()} | {v} | {t} | {c} |" for m, v, t, c in section.rows]
    if section.notes:
        lines += [""] + [f"- {note}" for note in section.notes]
    return "\n".join(lines)


def block_name(section: Section) -> str:
    """Each section sits in a block of its own inside the ``speed`` block, so a run of some
    sections (``--sections``) replaces those and keeps the others."""
    return f"speed-{section.key}"


def markdown(sections: list[Section], header: dict) -> str:
    lines = ["## Speed and memory", "", run_paragraphs(header)]
    for section in sections:
        lines += ["", block(block_name(section), section_markdown(section))]
    return "\n".join(lines)
