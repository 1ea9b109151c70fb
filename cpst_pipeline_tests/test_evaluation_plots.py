from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import AxesImage
from PIL import Image

from cpst_pipeline.evaluation import plots
from cpst_pipeline.evaluation.metrics import threshold_sweep

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.width > 100 and image.height > 100
    # atomic write: no temp file left beside the target
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


@pytest.fixture
def scored():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    return y, rng.normal(y, 0.7)


def test_roc_and_pr_plots(tmp_path, scored):
    y, s = scored
    noisy = s + np.random.default_rng(1).normal(0, 1, s.size)
    curves = {"cascade": (y, s), "gate": (y, noisy), "one class": ([0, 0], [1, 2])}
    for plot, name in ((plots.plot_roc, "roc.png"), (plots.plot_pr, "pr.png")):
        path = plot(curves, tmp_path / "figs" / name, title="test")
        assert path == tmp_path / "figs" / name
        assert_valid_png(path)


def test_score_histograms(tmp_path, scored):
    y, s = scored
    path = plots.plot_score_histograms(
        y, s, tmp_path / "hist.png", "scores", thresholds={"T_low": -0.2, "T_high": 1.1, "decision": 0.5}
    )
    assert_valid_png(path)
    assert_valid_png(plots.plot_score_histograms(y, s, tmp_path / "hist_plain.png", "scores"))


def test_threshold_sweep_plot(tmp_path, scored):
    path = plots.plot_threshold_sweep(threshold_sweep(*scored), tmp_path / "sweep.png", "sweep")
    assert_valid_png(path)


def _overlay_samples():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[20:40, 10:30] = True
    return [
        # low-resolution heatmap stretched over the image
        {"image": image, "heatmap": rng.random((16, 16)) * 0.3, "mask": None, "title": "good"},
        {"image": image, "heatmap": rng.random((64, 64)) * 5.0, "mask": mask, "title": "defect"},
        {"image": image[..., 0], "heatmap": rng.random((64, 64)), "mask": np.zeros((64, 64), bool), "title": "gray"},
    ]


def test_heatmap_overlays_write_png(tmp_path):
    assert_valid_png(plots.plot_heatmap_overlays(_overlay_samples(), tmp_path / "overlays.png", vmin=0.0, vmax=2.0))


def test_heatmap_overlays_share_fixed_scale(tmp_path, monkeypatch):
    captured = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: captured.append(figure))
    plots.plot_heatmap_overlays(_overlay_samples(), tmp_path / "unused.png", vmin=0.25, vmax=2.0)
    (figure,) = captured
    heatmaps = [
        artist
        for axes in figure.axes
        for artist in axes.get_images()
        if isinstance(artist, AxesImage) and artist.get_alpha() is not None
    ]
    assert len(heatmaps) == 3
    # Every panel maps scores with the given range, not its own min/max (which differ wildly here).
    assert all((im.norm.vmin, im.norm.vmax) == (0.25, 2.0) for im in heatmaps)
    assert {im.get_cmap().name for im in heatmaps} == {"jet"}
    colorbars = [axes for axes in figure.axes if axes.get_label() == "<colorbar>"]
    assert len(colorbars) == 1
    # Only the sample with a non-empty mask gets a contour.
    overlay_axes = [im.axes for im in heatmaps]
    assert [bool(axes.collections) for axes in overlay_axes] == [False, True, False]


def test_heatmap_overlays_validate(tmp_path):
    with pytest.raises(ValueError):
        plots.plot_heatmap_overlays(_overlay_samples(), tmp_path / "x.png", vmin=1.0, vmax=1.0)
    with pytest.raises(ValueError):
        plots.plot_heatmap_overlays([], tmp_path / "x.png", vmin=0.0, vmax=1.0)
