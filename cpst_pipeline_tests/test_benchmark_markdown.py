"""BENCHMARKS.md sections: a run of some speed sections replaces those and keeps the others."""

from __future__ import annotations

from pathlib import Path

from cpst_pipeline.benchmark.markdown import replace_section
from cpst_pipeline.benchmark.speed.common import Section
from cpst_pipeline.benchmark.speed.report import block_name, markdown, run_paragraphs, section_markdown


def _header() -> dict:
    return {
        "machine": "x86_64",
        "cpu_count": 2,
        "torch_threads": 2,
        "device": "cpu",
        "load_average": "0.1",
        "backbone": "lite0",
        "date": "today",
        "seconds": 1.0,
        "reference_gflops_start": 100.0,
        "reference_gflops_end": 100.0,
        "busy": False,
        "quick": False,
    }


def _section(key: str, value: str) -> Section:
    section = Section(key, f"{key} title")
    section.add("metric", value)
    return section


def test_a_run_of_one_section_replaces_that_section_only(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    replace_section(path, "quality", "quality table")
    replace_section(path, "speed", markdown([_section("coreset", "1 s"), _section("latency", "50 ms")], _header()))
    replace_section(path, "after", "a later section")
    replace_section(path, block_name(_section("latency", "")), section_markdown(_section("latency", "40 ms"), "re-run alone"))
    replace_section(path, block_name(_section("memory", "")), section_markdown(_section("memory", "2 GB")), inside="speed")
    text = path.read_text()
    assert "| metric | 1 s |" in text and "| metric | 40 ms |" in text and "50 ms" not in text
    assert text.index("re-run alone") < text.index("40 ms")
    # a section the block did not hold yet goes at its end, before what follows it
    assert text.index("40 ms") < text.index("2 GB") < text.index("<!-- speed:end -->") < text.index("a later section")
    assert text.count("<!-- speed-latency:start -->") == 1


def test_a_section_run_alone_carries_the_same_caveats_as_a_whole_run() -> None:
    header = _header() | {"busy": True, "quick": True}
    whole = markdown([_section("coreset", "1 s")], header)
    alone = section_markdown(_section("coreset", "1 s"), run_paragraphs(header, "coreset"))
    for caveat in ("**The machine was busy (load average 0.1 at the start)", "**Quick mode: small sizes"):
        assert caveat in whole and caveat in alone
    assert "--sections coreset" in alone and "--sections" not in whole
