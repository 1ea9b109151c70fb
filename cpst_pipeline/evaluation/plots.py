"""PNG figures for the evaluation report.

Figures are built with matplotlib's object-oriented API (``Figure`` + an Agg canvas), never
pyplot: nothing is registered in pyplot's global figure list and the process-wide backend is
left alone, so plotting is safe in Dagster workers and notebooks, and a figure is plain
garbage once saved (there is no pyplot state to close). Every PNG is written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from numpy.typing import ArrayLike

from cpst_pipeline.evaluation.metrics import auroc, average_precision, labels_and_scores, pr_points, roc_points
from cpst_pipeline.io_utils import atomic_write

Curves = Mapping[str, tuple[ArrayLike, ArrayLike]]
"""Named score sets to compare on one plot: name -> (y_true, scores)."""

_DPI = 110
_PANEL_INCHES = 3.0
# Threshold lines avoid the histogram colours (blue = normal, red = anomaly).
_THRESHOLD_LINES = (("tab:green", "--"), ("black", "-."), ("tab:purple", ":"), ("tab:orange", "--"))


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _new_axes(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Axes]:
    figure = _new_figure(6.0, 4.5)
    axes = figure.subplots()
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    return figure, axes


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    # format= is explicit because the atomic temp file's suffix is ".tmp", not ".png".
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=_DPI))


def _draw_curves(
    axes: Axes,
    curves: Curves,
    points: Callable[[ArrayLike, ArrayLike], tuple[np.ndarray, np.ndarray]],
    summary: Callable[[ArrayLike, ArrayLike], float | None],
    summary_name: str,
    drawstyle: str,
    legend_loc: str,
) -> None:
    for name, (y_true, scores) in curves.items():
        value = summary(y_true, scores)
        if value is None:
            # Keep an undefined curve visible in the legend rather than silently dropping it.
            axes.plot([], [], label=f"{name} ({summary_name} n/a: one class)")
            continue
        x, y = points(y_true, scores)
        axes.plot(x, y, drawstyle=drawstyle, label=f"{name} ({summary_name} {value:.3f})")
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.01)
    axes.legend(loc=legend_loc)


def plot_roc(curves: Curves, path: str | os.PathLike, title: str = "ROC") -> Path:
    """Several named score sets on one ROC plot, AUROC in the legend."""
    figure, axes = _new_axes(title, "false positive rate", "true positive rate (recall)")
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    _draw_curves(axes, curves, roc_points, auroc, "AUROC", drawstyle="default", legend_loc="lower right")
    return _save(figure, path)


def plot_pr(curves: Curves, path: str | os.PathLike, title: str = "Precision-recall") -> Path:
    """Several named score sets on one precision-recall plot, average precision in the legend."""
    figure, axes = _new_axes(title, "recall", "precision")
    # Step drawing matches how average precision integrates the curve.
    _draw_curves(axes, curves, pr_points, average_precision, "AP", drawstyle="steps-post", legend_loc="lower left")
    return _save(figure, path)


def plot_score_histograms(
    y_true: ArrayLike,
    scores: ArrayLike,
    path: str | os.PathLike,
    title: str = "Score distribution",
    thresholds: Mapping[str, float] | None = None,
    bins: int = 40,
) -> Path:
    """Overlapping normal/anomaly score histograms on shared bins, with named threshold lines."""
    y, s = labels_and_scores(y_true, scores)
    figure, axes = _new_axes(title, "score (higher = more anomalous)", "count")
    edges = np.histogram_bin_edges(s, bins=bins)
    axes.hist(s[~y], bins=edges, alpha=0.5, color="tab:blue", label=f"normal (n={int((~y).sum())})")
    axes.hist(s[y], bins=edges, alpha=0.5, color="tab:red", label=f"anomaly (n={int(y.sum())})")
    for index, (name, value) in enumerate((thresholds or {}).items()):
        color, style = _THRESHOLD_LINES[index % len(_THRESHOLD_LINES)]
        axes.axvline(value, color=color, linestyle=style, linewidth=1.5, label=f"{name} = {value:.4g}")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend()
    return _save(figure, path)


def _draw_mask_contour(axes: Axes, mask: np.ndarray, image_shape: tuple[int, int]) -> None:
    """Outline the ground-truth region, mapping mask pixel centres onto image coordinates."""
    if not mask.any() or mask.all():
        return  # no boundary inside the image (contour would only warn)
    mask_h, mask_w = mask.shape
    image_h, image_w = image_shape
    xs = (np.arange(mask_w) + 0.5) * image_w / mask_w - 0.5
    ys = (np.arange(mask_h) + 0.5) * image_h / mask_h - 0.5
    axes.contour(xs, ys, mask.astype(np.float32), levels=[0.5], colors="white", linewidths=1.2)


def _show_image(axes: Axes, image: np.ndarray) -> None:
    axes.imshow(image, cmap="gray" if image.ndim == 2 else None)
    axes.set_axis_off()


def plot_heatmap_overlays(
    samples: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    vmin: float,
    vmax: float,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> Path:
    """Grid with one row per sample: the image, then the heatmap overlaid with the mask contour.

    Each sample is a dict with ``image`` (HxWx3 uint8 or HxW), ``heatmap`` (float, any
    resolution; stretched over the image), optional ``mask`` (bool, any resolution) and
    ``title``. All heatmaps share one fixed [vmin, vmax] colour scale and one colorbar, so a
    given score has the same colour in every panel (per-image normalisation would make a
    clean image's noise look like a defect).
    """
    if not samples:
        raise ValueError("no samples to plot")
    if not vmin < vmax:
        raise ValueError(f"need vmin < vmax, got {vmin} and {vmax}")
    norm = Normalize(vmin=vmin, vmax=vmax)
    figure = _new_figure(2 * _PANEL_INCHES + 1.0, _PANEL_INCHES * len(samples))
    grid = figure.subplots(len(samples), 2, squeeze=False)
    for (image_axes, overlay_axes), sample in zip(grid, samples):
        image = np.asarray(sample["image"])
        heatmap = np.asarray(sample["heatmap"], dtype=np.float64)
        height, width = image.shape[:2]
        _show_image(image_axes, image)
        image_axes.set_title(str(sample.get("title", "")), fontsize=9)
        _show_image(overlay_axes, image)
        overlay_axes.imshow(
            heatmap, cmap=cmap, norm=norm, alpha=alpha, extent=(-0.5, width - 0.5, height - 0.5, -0.5)
        )
        if sample.get("mask") is not None:
            _draw_mask_contour(overlay_axes, np.asarray(sample["mask"], dtype=bool), (height, width))
        overlay_axes.set_title(f"heatmap (max {heatmap.max():.3g})", fontsize=9)
    figure.colorbar(
        ScalarMappable(norm=norm, cmap=cmap), ax=grid, shrink=0.8, extend="both", label="anomaly score"
    )
    return _save(figure, path)


def plot_threshold_sweep(sweep: pd.DataFrame, path: str | os.PathLike, title: str = "Threshold sweep") -> Path:
    """Recall, precision and false positive rate against threshold (a ``threshold_sweep`` frame)."""
    figure, axes = _new_axes(title, "threshold (flag if score >= threshold)", "rate")
    for column in ("recall", "precision", "false_positive_rate"):
        axes.plot(sweep["threshold"], sweep[column], marker=".", label=column.replace("_", " "))
    axes.set_ylim(-0.02, 1.02)
    axes.legend()
    return _save(figure, path)
