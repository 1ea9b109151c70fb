"""Evaluation report: one self-contained HTML page, a markdown summary and a JSON dump.

The ``report`` dict (plain JSON-like data; ``metrics`` = ``classification_metrics(...)``,
``summary`` = ``latency_summary(...)``)::

    report = {
        "run": {                        # flat str/number/bool fields, shown as "run info"
            "title": str,               # optional page title
            "timestamp": str, "dataset": str, "backbone": str, ...
        },
        "overall": section | None,      # pooled over domains, same shape as one domain
        "domains": {name: section},
        "sweeps": {name: [row, ...]},   # e.g. threshold_sweep(...).to_dict("records")
    }

    section = {
        "cascade": metrics,             # the deployed gate -> heatmap cascade
        "always_heatmap": metrics | None,   # None when the domain has no memory bank
        "gate": ranking | None,         # optional: the gate score on its own, ranking metrics only (AUROC/AP)
        "heatmap_call_rate": float | None,  # fraction of items the cascade escalated
        "latency": {                    # per-item seconds summarised; any key may be missing
            "cascade_total": summary, "always_heatmap_total": summary,
            "decode": summary, "gate": summary, "heatmap": summary, ...   # any further stages
        },
        "pixel_auroc": float | None,    # heatmap model, over the domain's test pixels
        "pro": float | None,            # heatmap model, per-region overlap up to FPR 0.3 (optional)
        "has_bank": bool,               # optional, domains only
        "notes": [str],                 # optional free-text caveats
    }

A system's latency is ``latency[f"{system}_total"]``; every ``latency`` entry is listed per stage
in the HTML. Missing or undefined values render as "n/a"; "—" marks a cell that does not apply
(pixel AUROC of the cascade, say). ``render_html_report`` takes ``figures`` as caption -> PNG path.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cpst_pipeline.io_utils import write_json_atomic, write_text_atomic

_SYSTEMS = {"cascade": "cascade", "always_heatmap": "always heatmap", "gate": "gate"}

# (label, key in a metrics dict; dotted keys reach into "confusion")
_HEADLINE_METRICS = (
    ("AUROC", "auroc"),
    ("AP", "average_precision"),
    ("recall", "recall"),
    ("recall 95 % CI", "recall_ci"),
    ("FPR", "false_positive_rate"),
    ("FPR 95 % CI", "false_positive_rate_ci"),
    ("F1", "f1"),
)
_DETAIL_METRICS = (
    ("AUROC", "auroc"),
    ("AP", "average_precision"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("recall 95 % CI", "recall_ci"),
    ("FPR", "false_positive_rate"),
    ("FPR 95 % CI", "false_positive_rate_ci"),
    ("F1", "f1"),
    ("accuracy", "accuracy"),
    ("n", "n"),
    ("n anomaly", "n_anomaly"),
    ("n normal", "n_normal"),
    ("TP", "confusion.tp"),
    ("FP", "confusion.fp"),
    ("FN", "confusion.fn"),
    ("TN", "confusion.tn"),
)
_LATENCY_STATS = ("mean_ms", "p50_ms", "p95_ms")
_NOT_APPLICABLE = "—"

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: #1f2933;
       max-width: 1200px; margin: 2rem auto; padding: 0 1rem; line-height: 1.45; }
h1 { border-bottom: 3px solid #3e6ea8; padding-bottom: .3rem; }
h2 { margin-top: 2.2rem; border-bottom: 1px solid #d9e2ec; padding-bottom: .2rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .6rem 0 1.2rem; font-size: .9rem; }
th, td { border: 1px solid #d9e2ec; padding: .3rem .6rem; }
th { background: #f0f4f8; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafbfc; }
details { margin: .5rem 0; } summary { cursor: pointer; font-weight: 600; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #d9e2ec; }
figcaption { color: #52606d; font-size: .9rem; }
ul.notes { color: #8d2b0b; font-size: .9rem; }
"""


def _fmt(value: Any, spec: str = ".3f") -> str:
    """Display text for a cell: None/NaN -> "n/a", floats with ``spec``."""
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "n/a" if math.isnan(value) else format(float(value), spec)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(_jsonable(value))
    return str(value)


def format_interval(value: Sequence[float] | None) -> str:
    """A [low, high] interval as "low-high" text (the report's and the benchmarks' one format)."""
    return "n/a" if value is None else f"{value[0]:.3f}-{value[1]:.3f}"


def _metric(metrics: Mapping[str, Any] | None, key: str) -> Any:
    value: Any = metrics
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _latency(section: Mapping[str, Any], stage: str, stat: str) -> str:
    summary = (section.get("latency") or {}).get(stage) or {}
    return _fmt(summary.get(stat), ".1f")


def _heatmap_call_rate(section: Mapping[str, Any], system: str) -> str:
    if system == "cascade":
        return _fmt(section.get("heatmap_call_rate"))
    if system == "always_heatmap":
        return "n/a" if section.get(system) is None else _fmt(1.0)  # 1 by construction
    return _NOT_APPLICABLE


def _comparison_rows(
    section: Mapping[str, Any], systems: Sequence[str], metric_rows: Sequence[tuple[str, str]]
) -> list[list[str]]:
    """Rows of metric label followed by one formatted cell per system."""
    rows = [
        [label] + [(format_interval if key.endswith("_ci") else _fmt)(_metric(section.get(system), key)) for system in systems]
        for label, key in metric_rows
    ]
    rows.append(["heatmap call rate"] + [_heatmap_call_rate(section, system) for system in systems])
    for stat in ("p50_ms", "p95_ms"):
        label = f"latency {stat.removesuffix('_ms')} (ms)"
        rows.append([label] + [_latency(section, f"{system}_total", stat) for system in systems])
    # Localisation measures the heatmap model itself, so it belongs to the always-heatmap column.
    for label, key in (("pixel AUROC", "pixel_auroc"), ("PRO (FPR <= 0.3)", "pro")):
        value = _fmt(section.get(key))
        rows.append([label] + [value if system == "always_heatmap" else _NOT_APPLICABLE for system in systems])
    return rows


def _section_notes(section: Mapping[str, Any]) -> list[str]:
    notes = [str(note) for note in section.get("notes") or []]
    for system, label in _SYSTEMS.items():
        notes += [f"{label}: {note}" for note in (section.get(system) or {}).get("notes", [])]
    return notes


# ---------------------------------------------------------------- HTML


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"num" if _is_number(cell) else "text"}">{html.escape(cell)}</td>' for cell in row)
        + "</tr>"
        for row in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _html_notes(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    return '<ul class="notes">' + "".join(f"<li>{html.escape(note)}</li>" for note in notes) + "</ul>"


def _html_section(section: Mapping[str, Any]) -> str:
    systems = [system for system in _SYSTEMS if system != "gate" or section.get("gate") is not None]
    headers = ["metric", *(_SYSTEMS[system] for system in systems)]
    comparison = _html_table(headers, _comparison_rows(section, systems, _DETAIL_METRICS))
    latency_rows = [
        [stage, _fmt(summary.get("n")), *(_fmt(summary.get(stat), ".1f") for stat in _LATENCY_STATS)]
        for stage, summary in (section.get("latency") or {}).items()
    ]
    latency_headers = ["stage", "n", "mean (ms)", "p50 (ms)", "p95 (ms)"]
    latency = _html_table(latency_headers, latency_rows) if latency_rows else ""
    return comparison + latency + _html_notes(_section_notes(section))


_DOMAIN_OVERVIEW_HEADERS = (
    "domain",
    "memory bank",
    "n",
    "AUROC cascade",
    "AUROC always heatmap",
    "AP cascade",
    "recall cascade",
    "FPR cascade",
    "F1 cascade",
    "heatmap call rate",
    "p50 cascade (ms)",
    "p50 always heatmap (ms)",
    "pixel AUROC",
    "PRO (FPR <= 0.3)",
)


def _domain_overview_row(name: str, section: Mapping[str, Any]) -> list[str]:
    cascade = section.get("cascade")
    always = section.get("always_heatmap")
    return [
        str(name),
        _fmt(section.get("has_bank")),
        _fmt(_metric(cascade, "n")),
        _fmt(_metric(cascade, "auroc")),
        _fmt(_metric(always, "auroc")),
        _fmt(_metric(cascade, "average_precision")),
        _fmt(_metric(cascade, "recall")),
        _fmt(_metric(cascade, "false_positive_rate")),
        _fmt(_metric(cascade, "f1")),
        _fmt(section.get("heatmap_call_rate")),
        _latency(section, "cascade_total", "p50_ms"),
        _latency(section, "always_heatmap_total", "p50_ms"),
        _fmt(section.get("pixel_auroc")),
        _fmt(section.get("pro")),
    ]


def _html_figure(caption: str, path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(caption, quote=True)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _html_sweep(name: str, rows: Sequence[Mapping[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))  # union, first-seen order
    table = _html_table(columns, [[_fmt(row.get(c), ".4g") for c in columns] for row in rows])
    return f"<details><summary>{html.escape(name)} ({len(rows)} thresholds)</summary>{table}</details>"


def render_html_report(
    report: Mapping[str, Any], figures: Mapping[str, str | os.PathLike], path: str | os.PathLike
) -> Path:
    """Write one self-contained HTML page (inline CSS, PNGs as data URIs); ``figures`` maps caption -> PNG."""
    run = report.get("run") or {}
    title = str(run.get("title") or "CPST evaluation report")
    domains = report.get("domains") or {}
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Run</h2>"]
    run_rows = [[str(key), _fmt(value, ".4g")] for key, value in run.items() if key != "title"]
    parts.append(_html_table(["field", "value"], run_rows))
    if report.get("overall"):
        parts += ["<h2>Overall</h2>", _html_section(report["overall"])]
    if domains:
        overview = [_domain_overview_row(name, section) for name, section in domains.items()]
        parts += ["<h2>Per domain</h2>", _html_table(_DOMAIN_OVERVIEW_HEADERS, overview)]
        parts += [
            f"<details><summary>{html.escape(str(name))}</summary>{_html_section(section)}</details>"
            for name, section in domains.items()
        ]
    if figures:
        parts += ["<h2>Figures</h2>", *(_html_figure(caption, Path(png)) for caption, png in figures.items())]
    if sweeps := report.get("sweeps"):
        parts += ["<h2>Threshold sweeps</h2>", *(_html_sweep(str(name), rows) for name, rows in sweeps.items())]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n"
        f"<body>\n{chr(10).join(parts)}\n"
        f"<p><small>n/a = undefined or not measured; {_NOT_APPLICABLE} = not applicable.</small></p>\n"
        "</body></html>\n"
    )
    return write_text_atomic(path, page)


# ---------------------------------------------------------------- markdown


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(map(_md_cell, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def markdown_summary(report: Mapping[str, Any]) -> str:
    """Compact markdown: per section (overall, then each domain) cascade vs always-heatmap."""
    sections = {"overall": report["overall"]} if report.get("overall") else {}
    sections.update(report.get("domains") or {})
    systems = ("cascade", "always_heatmap")
    headers = ["metric", *(_SYSTEMS[s] for s in systems)]
    blocks = [
        f"### {_md_cell(str(name))}\n\n{_md_table(headers, _comparison_rows(section, systems, _HEADLINE_METRICS))}"
        for name, section in sections.items()
    ]
    blocks.append(f"_n/a = undefined or not measured; {_NOT_APPLICABLE} = not applicable._")
    return "\n\n".join(blocks) + "\n"


# ---------------------------------------------------------------- JSON


def _jsonable(value: Any) -> Any:
    """Plain-JSON copy: NaN/inf -> None (strict JSON has no NaN), numpy -> Python, paths -> str."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_report_json(report: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write the report as strict JSON (NaN -> null), atomically."""
    return write_json_atomic(path, _jsonable(report))
