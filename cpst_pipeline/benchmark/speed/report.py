"""The sections as a console table and as the ``speed`` section of BENCHMARKS.md."""

from __future__ import annotations

import sys

from cpst_pipeline.benchmark.speed.common import Section


def print_section(section: Section) -> None:
    width = [max(len(r[i]) for r in section.rows + [("metric", "measured", "target", "verdict")]) for i in range(4)]
    print(f"\n== {section.title}")
    for row in [("metric", "measured", "target", "verdict"), *section.rows]:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, width)).rstrip())
    for note in section.notes:
        print(f"  note: {note}")
    sys.stdout.flush()


def markdown(sections: list[Section], header: dict) -> str:
    lines = [
        "## Speed and memory",
        "",
        (
            f"`python -m cpst_pipeline.benchmark.speed --data <datasets>{' --quick' if header['quick'] else ''}` "
            f"on {header['machine']}, {header['cpu_count']} CPUs, {header['torch_threads']} torch threads, "
            f"device `{header['device']}`, load average {header['load_average']} at the start, "
            f"backbone `{header['backbone']}`, {header['date']}, {header['seconds']:.0f} s in all. "
            f"Reference matrix product (the exact kNN of one Kolektor image): {header['reference_gflops_start']:.0f} "
            f"GFLOP/s at the start, {header['reference_gflops_end']:.0f} at the end; compare runs by it."
        ),
    ]
    if header["busy"]:
        lines += [
            "",
            f"**The machine was busy (load average {header['load_average']} at the start): timings are not representative.**",
        ]
    if header["quick"]:
        lines += ["", "**Quick mode: small sizes, figures not comparable with the targets (stated for the full sizes).**"]
    for section in sections:
        lines += ["", f"### {section.title}", "", "| metric | measured | target | verdict |", "|---|---|---|---|"]
        lines += [f"| {m.strip()} | {v} | {t} | {c} |" for m, v, t, c in section.rows]
        if section.notes:
            lines += [""] + [f"- {note}" for note in section.notes]
    return "\n".join(lines)
