import base64
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cpst_pipeline.evaluation.metrics import classification_metrics, latency_summary, ranking_metrics, threshold_sweep
from cpst_pipeline.evaluation.report import _html_section, markdown_summary, render_html_report, write_report_json


def _section(y, s, decisions, has_bank=True):
    latency = {
        "cascade_total": latency_summary([0.010, 0.012, 0.030]),
        "always_heatmap_total": latency_summary([0.050, 0.055, 0.060]) if has_bank else latency_summary([]),
        "decode": latency_summary([0.002, 0.002, 0.003]),
        "gate": latency_summary([0.004, 0.004, 0.005]),
        "heatmap": latency_summary([0.040, 0.045]),
    }
    return {
        "cascade": classification_metrics(y, s, decisions),
        "always_heatmap": classification_metrics(y, s, decisions) if has_bank else None,
        "gate": ranking_metrics(y, s),
        "heatmap_call_rate": 0.25,
        "latency": latency,
        "pixel_auroc": 0.9321 if has_bank else None,
        "has_bank": has_bank,
        "notes": ["trained on 10 images"] if has_bank else ["no memory bank: <gate only>"],
    }


@pytest.fixture
def report():
    y = [0, 1, 0, 1]
    s = [0.5, 0.5, 0.2, 0.9]  # cascade AUROC 0.875
    return {
        "run": {
            "title": "CPST <eval>",
            "timestamp": "2024-05-01T12:00:00",
            "dataset": "mvtec",
            "backbone": "wrn50",
            "n_domains": 2,
            "coreset_ratio": np.float64(0.01),
        },
        "overall": _section(y, s, [1, 1, 0, 1]),
        "domains": {
            "bottle": _section(y, s, [1, 1, 0, 1]),
            "screw|x": _section([1, 1], [0.3, 0.6], [0, 1], has_bank=False),
        },
        "sweeps": {"bottle gate": threshold_sweep([0, 0, 0], [0.1, 0.2, 0.3]).to_dict("records")},
    }


@pytest.fixture
def figures(tmp_path):
    paths = {}
    for caption, color in (("ROC: cascade vs gate", "red"), ("Score histogram", "blue")):
        path = tmp_path / f"{color}.png"
        Image.new("RGB", (8, 6), color).save(path)
        paths[caption] = path
    return paths


class _LinkCollector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.links += [value for name, value in attrs if name in ("src", "href") and value is not None]


def test_html_report_is_self_contained(tmp_path, report, figures):
    path = render_html_report(report, figures, tmp_path / "out" / "report.html")
    assert path == tmp_path / "out" / "report.html"
    page = path.read_text(encoding="utf-8")

    parser = _LinkCollector()
    parser.feed(page)
    assert len(parser.links) == len(figures)
    assert all(link.startswith("data:image/png;base64,") for link in parser.links)
    assert "http" not in page
    assert not {"script", "link", "iframe"} & parser.tags
    for png in figures.values():
        assert base64.b64encode(Path(png).read_bytes()).decode("ascii") in page
    for caption in figures:
        assert caption in page


def test_html_report_content_and_escaping(tmp_path, report, figures):
    page = render_html_report(report, figures, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<title>CPST &lt;eval&gt;</title>" in page
    assert "<eval>" not in page and "<gate only>" not in page
    assert "no memory bank: &lt;gate only&gt;" in page
    for text in ("bottle", "screw|x", "mvtec", "wrn50", "0.875", "0.932", "bottle gate"):
        assert text in page
    assert "n/a" in page  # screw has no bank and one class
    assert "cascade: auroc undefined: only anomalies present" in page
    assert ">nan<" not in page.lower()  # undefined sweep values render as n/a


def test_html_report_without_figures_or_sweeps(tmp_path, report):
    del report["sweeps"], report["overall"]
    page = render_html_report(report, {}, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "bottle" in page and "<img" not in page


def test_markdown_summary(report):
    text = markdown_summary(report)
    assert "### overall" in text and "### bottle" in text
    assert "### screw\\|x" in text  # pipe escaped so the table survives
    bottle = text.split("### bottle")[1].split("###")[0]
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in bottle.splitlines() if line.startswith("| ")]
    rows = {row[0]: row[1:] for row in cells}
    assert rows["metric"] == ["cascade", "always heatmap"]
    assert rows["AUROC"] == ["0.875", "0.875"]
    assert rows["FPR"] == ["0.500", "0.500"]
    assert rows["heatmap call rate"] == ["0.250", "1.000"]
    assert rows["latency p50 (ms)"] == ["12.0", "55.0"]
    assert rows["latency p95 (ms)"] == ["28.2", "59.5"]
    assert rows["pixel AUROC"] == ["—", "0.932"]
    screw = text.split("### screw\\|x")[1]
    assert "| AUROC | n/a | n/a |" in screw


def test_write_report_json_is_strict(tmp_path, report):
    path = write_report_json(report, tmp_path / "report.json")

    def reject(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    data = json.loads(path.read_text(), parse_constant=reject)
    assert data["domains"]["screw|x"]["always_heatmap"] is None
    assert data["domains"]["bottle"]["cascade"]["auroc"] == pytest.approx(0.875)
    assert data["sweeps"]["bottle gate"][0]["recall"] is None  # NaN -> null
    assert data["run"]["coreset_ratio"] == 0.01
    assert not math.isnan(data["sweeps"]["bottle gate"][0]["false_positive_rate"])


def test_gate_column_ranks_without_threshold_metrics(report):
    """The gate decides nothing alone inside the cascade: its column shows AUROC/AP, no recall or FPR."""
    table = _html_section(report["domains"]["bottle"])
    rows = [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row) for row in re.findall(r"<tr>(.*?)</tr>", table)]
    gate = rows[0].index("gate")
    by_metric = {cells[0]: cells[gate] for cells in rows[1:]}
    assert by_metric["AUROC"] == "0.875" and by_metric["n"] == "4"
    for metric in ("precision", "recall", "FPR", "F1", "accuracy"):
        assert by_metric[metric] == "n/a", metric
