"""PRO (per-region overlap up to FPR 0.3) against a brute-force reference."""

import numpy as np
import pytest

from cpst_pipeline.evaluation.pro import ProAccumulator


def _reference_pro(masks, maps, max_fpr=0.3):
    """Every distinct threshold, the curve cut at max_fpr by linear interpolation."""
    from scipy import ndimage

    normal = np.concatenate([m[~k] for k, m in zip(masks, maps)])
    regions = []
    for k, m in zip(masks, maps):
        labelled, count = ndimage.label(k, structure=np.ones((3, 3), bool))
        regions += [m[labelled == r] for r in range(1, count + 1)]
    thresholds = np.unique(np.concatenate([normal, *regions]))[::-1]
    fpr = np.array([0.0] + [(normal >= t).mean() for t in thresholds])
    pro = np.array([0.0] + [np.mean([(r >= t).mean() for r in regions]) for t in thresholds])
    cut = np.interp(max_fpr, fpr, pro)
    inside = fpr <= max_fpr
    return np.trapezoid(np.append(pro[inside], cut), np.append(fpr[inside], max_fpr)) / max_fpr


def _random_case(seed):
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for _ in range(3):
        mask = np.zeros((40, 50), bool)
        mask[5:12, 8:20] = True
        mask[25:28, 30:31] = rng.random() > 0.3  # a thin second region, sometimes absent
        maps.append((rng.normal(size=mask.shape) + 1.5 * mask).astype(np.float32))
        masks.append(mask)
    return masks, maps


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pro_matches_brute_force(seed):
    masks, maps = _random_case(seed)
    accumulator = ProAccumulator()
    for mask, anomaly_map in zip(masks, maps):
        accumulator.add(mask, anomaly_map)
    assert accumulator.result() == pytest.approx(_reference_pro(masks, maps), abs=2e-3)


def test_perfect_map_scores_one_and_random_map_about_half_max_fpr():
    mask = np.zeros((64, 64), bool)
    mask[10:20, 10:20] = True
    perfect = ProAccumulator()
    perfect.add(mask, mask.astype(np.float32))
    assert perfect.result() == pytest.approx(1.0)
    noise = ProAccumulator()
    rng = np.random.default_rng(0)
    for _ in range(20):
        noise.add(mask, rng.random(mask.shape))
    assert noise.result() == pytest.approx(0.15, abs=0.02)


def test_each_region_weighs_the_same_whatever_its_size():
    mask = np.zeros((100, 100), bool)
    mask[0:50, 0:50] = True  # a large region, found
    mask[80:82, 80:82] = True  # a small one, missed
    anomaly_map = np.zeros(mask.shape, np.float32)
    anomaly_map[0:50, 0:50] = 1.0
    anomaly_map[80:82, 80:82] = -1.0  # below every defect-free pixel
    accumulator = ProAccumulator()
    accumulator.add(mask, anomaly_map)
    assert accumulator.result() == pytest.approx(0.5, abs=0.01)


def test_undefined_without_regions_and_rejects_bad_input():
    accumulator = ProAccumulator()
    accumulator.add(None, np.zeros((8, 8)))
    assert accumulator.result() is None
    with pytest.raises(ValueError):
        accumulator.add(np.zeros((4, 4), bool), np.zeros((8, 8)))
    with pytest.raises(ValueError):
        accumulator.add(None, np.full((8, 8), np.nan))
