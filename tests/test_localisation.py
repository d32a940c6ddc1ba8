"""eval.py's localisation metrics (pointing game, IoU at a threshold, the prior and random baselines,
the bootstrap) on synthetic maps whose answers are known."""
import numpy as np
import pytest
from sklearn.utils import resample

import eval as ev


def disc_masks(n: int, size: int = 40, seed: int = 0) -> np.ndarray:
    """n masks, each a disc of random centre and radius 4..10 px."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), dtype=bool)
    for k in range(n):
        cy, cx = rng.integers(10, size - 10, 2)
        masks[k] = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(4, 11) ** 2
    return masks


def test_perfect_map_scores_one_and_inverted_map_scores_zero():
    masks = disc_masks(30)
    perfect = masks.astype(np.float32) + 0.01 * np.random.default_rng(1).random(masks.shape)
    assert ev.pointing_hits(perfect, masks).mean() == 1.0
    assert ev.iou_at_threshold(perfect, masks).mean() == 1.0
    inverted = 1.0 - perfect
    assert ev.pointing_hits(inverted, masks).mean() == 0.0
    assert ev.iou_at_threshold(inverted, masks).mean() == 0.0


def test_iou_counts_overlap_over_union_of_the_thresholded_map():
    mask = np.zeros((1, 10, 10), dtype=bool)
    mask[0, :, :4] = True                      # 40 pixels
    heat = np.zeros((1, 10, 10))
    heat[0, :, 2:6] = 1.0                      # 40 pixels, 20 shared -> IoU 20 / 60
    assert ev.iou_at_threshold(heat, mask)[0] == pytest.approx(1 / 3)
    assert ev.pointing_hits(heat, mask)[0] == 1.0   # first maximum (0, 2) is inside


def test_constant_map_is_credited_neither_everywhere_nor_by_iou():
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 0, 0] = True                      # the first pixel
    masks[1, 4:, 4:] = True
    flat = np.ones((2, 8, 8))
    assert list(ev.pointing_hits(flat, masks)) == [1.0, 0.0]
    assert list(ev.iou_at_threshold(flat, masks)) == [0.0, 0.0]


def test_prior_baseline_points_at_the_most_common_place():
    masks = np.zeros((8, 20, 20), dtype=bool)
    masks[:6, 2:6, 2:6] = True                 # 6 images: upper left
    masks[6:, 12:18, 12:18] = True             # 2 images: lower right
    prior = ev.prior_map(masks)
    assert prior[3, 3] == 0.75 and prior[15, 15] == 0.25
    assert ev.pointing_hits(prior, masks).mean() == 0.75
    iou = ev.iou_at_threshold(prior, masks)    # the prior's region (>= half its maximum) is the upper left
    assert np.allclose(iou[:6], 1.0) and np.allclose(iou[6:], 0.0)


def test_prior_of_identical_regions_is_a_perfect_map():
    masks = np.repeat(disc_masks(1), 5, axis=0)
    prior = ev.prior_map(masks)
    assert ev.pointing_hits(prior, masks).mean() == 1.0 and ev.iou_at_threshold(prior, masks).mean() == 1.0


def test_random_map_points_inside_as_often_as_the_region_covers_the_image():
    masks = disc_masks(2000, seed=3)
    area = masks.reshape(len(masks), -1).mean(axis=1)
    hits = ev.pointing_hits(ev.random_maps(len(masks), masks.shape[1:], seed=4), masks)
    standard_error = np.sqrt((area * (1 - area)).sum()) / len(masks)
    assert abs(hits.mean() - area.mean()) < 4 * standard_error
    iou = ev.iou_at_threshold(ev.random_maps(len(masks), masks.shape[1:], seed=5), masks)
    assert iou.mean() == pytest.approx((area / (1 + area)).mean(), abs=0.01)  # half the pixels chosen at random


def test_localisation_bootstrap_replicate_i_resamples_as_sklearn_i():
    masks = disc_masks(25, seed=6)
    maps = np.random.default_rng(7).random(masks.shape) + 0.7 * masks
    table = ev.localisation_bootstrap(maps, masks, n_samples=60)
    hits, iou = ev.pointing_hits(maps, masks), ev.iou_at_threshold(maps, masks)
    replicates = [resample(np.arange(25), replace=True, random_state=i) for i in range(60)]
    assert table.loc["mean", "pointing"] == round(np.mean([hits[r].mean() for r in replicates]), 4)
    assert table.loc["mean", "iou"] == round(np.mean([iou[r].mean() for r in replicates]), 4)
    assert table.loc["full", "pointing"] == hits.mean()
    assert table.loc["lower", "iou"] <= table.loc["mean", "iou"] <= table.loc["upper", "iou"]


def test_empty_regions_and_mismatched_shapes_are_refused():
    masks = disc_masks(3)
    masks[1] = False
    with pytest.raises(ValueError, match="1 of 3 masks are empty"):
        ev.pointing_hits(np.zeros(masks.shape), masks)
    with pytest.raises(ValueError, match="must both be"):
        ev.iou_at_threshold(np.zeros((3, 5, 5)), disc_masks(3))
