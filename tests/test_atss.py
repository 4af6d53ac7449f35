"""Tests of detutils.assigners.atss: hand-built cases, intermediates, batched vs per-image."""

import math

import pytest
import torch

from detutils.assigners import (
    BACKGROUND,
    AssignResult,
    assign_atss,
    assign_atss_batched,
    explain_atss,
)
from detutils.assigners.atss import _nearest, _nearest_stable
from detutils.boxes import box_iou
from detutils.priors import grid_cells

# mmdet's test case: four priors on one level, two boxes.
MMDET_PRIORS = torch.tensor(
    [[0, 0, 10, 10], [10, 10, 20, 20], [5, 5, 15, 15], [32, 32, 38, 42]], dtype=torch.float32
)
MMDET_BOXES = torch.tensor([[0, 0, 10, 9], [0, 10, 10, 19]], dtype=torch.float32)
MMDET_LABELS = torch.tensor([2, 3])


def test_mmdet_four_priors_two_boxes():
    # topk 9 > 4 priors: every prior is a candidate of both boxes.
    # Box 0 [0, 0, 10, 9]: IoUs 0.9 (prior 0: 90 / 100), 0, 20 / 170 (prior 2), 0;
    # mean 0.254412, unbiased std 0.433951, threshold 0.688363: prior 0 passes, and its
    # centre (5, 5) is inside. Box 1 [0, 10, 10, 19]: only prior 2 overlaps, 25 / 165 =
    # v; mean v / 4 and std v / 2 give the threshold 3 v / 4, which prior 2 passes, but
    # its centre (10, 10) lies on the box's top edge (t = 0): not inside, no positive.
    explanation = explain_atss(MMDET_PRIORS, [4], MMDET_BOXES, MMDET_LABELS)
    result = explanation.result
    assert result.gt_index.tolist() == [0, BACKGROUND, BACKGROUND, BACKGROUND]
    assert result.labels.tolist() == [2, BACKGROUND, BACKGROUND, BACKGROUND]
    torch.testing.assert_close(result.iou, torch.tensor([0.9, 0.0, 0.0, 0.0]))
    values = torch.tensor([0.9, 0.0, 20 / 170, 0.0], dtype=torch.float64)
    expected_box0 = values.mean() + values.std()
    v = 25 / 165
    torch.testing.assert_close(
        explanation.iou_threshold, torch.tensor([expected_box0.item(), 0.75 * v])
    )
    torch.testing.assert_close(explanation.iou_mean, torch.tensor([values.mean().item(), v / 4]))
    torch.testing.assert_close(explanation.iou_std, torch.tensor([values.std().item(), v / 2]))
    # box 1's only candidate above the threshold fails the centre test
    row = explanation.candidate_index[1].tolist().index(2)
    assert explanation.passes_iou[1, row] and not explanation.center_inside[1, row]
    assert not explanation.positive[1].any()


def test_candidates_are_nearest_first_with_distances():
    explanation = explain_atss(MMDET_PRIORS, [4], MMDET_BOXES, MMDET_LABELS)
    # box 0's centre (5, 4.5): prior 0 at 0.5 px, prior 2 at sqrt(25 + 30.25), prior 1
    # at sqrt(100 + 110.25), prior 3 at sqrt(900 + 1056.25)
    assert explanation.candidate_index[0].tolist() == [0, 2, 1, 3]
    expected = torch.tensor([0.5, math.sqrt(55.25), math.sqrt(210.25), math.sqrt(1956.25)])
    torch.testing.assert_close(explanation.candidate_distance[0], expected)
    assert explanation.candidate_level.eq(0).all()


def _one_box_three_priors(center_x: float) -> AssignResult:
    # A 10 px prior centred at (center_x, 5) overlapping the box [0, 0, 10, 10], and two
    # far priors with IoU 0. The threshold v / 3 + v / sqrt(3) < v lets the near one
    # pass; only the centre test decides.
    near = [center_x - 5, 0.0, center_x + 5, 10.0]
    priors = torch.tensor([near, [50, 50, 60, 60], [100, 100, 110, 110]], dtype=torch.float32)
    return assign_atss(priors, [3], torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([7]))


def test_centre_must_be_inside_by_more_than_eps():
    # centre 0.005 px from the right side: not "inside" (the reference's margin is 0.01)
    assert _one_box_three_priors(9.995).gt_index.tolist() == [BACKGROUND] * 3
    # centre 0.02 px inside: positive, labelled 7
    result = _one_box_three_priors(9.98)
    assert result.gt_index.tolist() == [0, BACKGROUND, BACKGROUND]
    assert result.labels.tolist() == [7, BACKGROUND, BACKGROUND]


@pytest.mark.parametrize(
    ("second_box", "winner", "iou"),
    [
        # both boxes overlap prior 0 [0, 0, 10, 10] by 100 / 120: a tie, the lower index wins
        ([0.0, 0.0, 12.0, 10.0], 0, 100 / 120),
        # box 1 overlaps it by 100 / 110 > 100 / 120: box 1 wins
        ([0.0, 0.0, 11.0, 10.0], 1, 100 / 110),
    ],
)
def test_prior_claimed_by_two_boxes_goes_to_highest_iou(second_box, winner, iou):
    priors = torch.tensor([[0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110]]).float()
    gt_boxes = torch.tensor([[0.0, 0.0, 10.0, 12.0], second_box])
    explanation = explain_atss(priors, [3], gt_boxes, torch.tensor([4, 5]))
    assert explanation.positive[:, 0].all()  # both boxes claim prior 0
    assert explanation.result.gt_index[0] == winner
    assert explanation.result.labels[0] == [4, 5][winner]
    torch.testing.assert_close(explanation.result.iou[0], torch.tensor(iou))
    assert explanation.table(1 - winner)["assigned"].sum() == 0  # the loser keeps nothing


def test_ties_in_distance_go_to_the_lowest_index():
    # A 4 x 4 grid of stride 8 (centres 4, 12, 20, 28) and a box centred on the corner
    # (16, 16): cells 5, 6, 9, 10 at distance 4 sqrt(2), then eight cells at sqrt(160)
    # (1, 2, 4, 7, 8, 11, 13, 14). topk 9 takes the four and the five lowest of the eight.
    cells, counts = grid_cells([(4, 4)], [8])
    box = torch.tensor([[6.0, 6.0, 26.0, 26.0]])
    explanation = explain_atss(cells, counts, box, torch.tensor([0]))
    assert explanation.candidate_index[0].tolist() == [5, 6, 9, 10, 1, 2, 4, 7, 8]
    batched = assign_atss_batched(cells, counts, box[None], torch.tensor([[0]]), torch.ones(1, 1))
    for field, expected in zip(batched, explanation.result, strict=True):
        assert torch.equal(field[0], expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nearest_equals_stable_sort_with_many_ties(dtype):
    generator = torch.Generator().manual_seed(0)
    distances = torch.randint(0, 6, (50, 40), generator=generator).to(dtype)  # ties everywhere
    distances[:10] += torch.rand(10, 40, generator=generator, dtype=dtype)  # some rows without
    for k in (1, 3, 9, 39, 40):
        expected = torch.sort(distances, dim=-1, stable=True).indices[:, :k]
        assert torch.equal(_nearest(distances, k), expected)
        assert torch.equal(_nearest_stable(distances, k), expected)


def test_explanation_is_consistent():
    cells, counts = grid_cells([(8, 8), (4, 4), (2, 2)], [8, 16, 32])
    gt_boxes = torch.tensor([[3.0, 5.0, 40.0, 30.0], [20.0, 20.0, 60.0, 63.0], [1, 1, 9, 9.0]])
    explanation = explain_atss(cells, counts, gt_boxes, torch.tensor([1, 2, 3]))
    num_candidates = 9 + 9 + 4  # min(topk, level size) per level
    assert explanation.candidate_index.shape == (3, num_candidates)
    assert explanation.candidate_level[0].tolist() == [0] * 9 + [1] * 9 + [2] * 4
    torch.testing.assert_close(
        explanation.iou_threshold, explanation.iou_mean + explanation.iou_std
    )
    assert torch.equal(explanation.positive, explanation.passes_iou & explanation.center_inside)
    iou = box_iou(cells, gt_boxes).T  # (M, A)
    assert torch.equal(explanation.candidate_iou, iou.gather(1, explanation.candidate_index))
    # every assigned prior is a positive candidate of its box, with that box's IoU
    result = explanation.result
    assert result.num_positive > 0
    for prior in result.positive.nonzero()[:, 0].tolist():
        box = int(result.gt_index[prior])
        row = explanation.candidate_index[box].tolist().index(prior)
        assert explanation.positive[box, row]
        assert result.iou[prior] == iou[box, prior]
    assert torch.equal(
        result.gt_index, assign_atss(cells, counts, gt_boxes, torch.tensor([1, 2, 3])).gt_index
    )
    table = explanation.table(0)
    columns = "level prior distance iou passes_iou center_inside positive assigned".split()
    assert list(table.columns) == columns
    assert len(table) == num_candidates and table["assigned"].sum() == (result.gt_index == 0).sum()


def test_empty_ground_truth_and_empty_priors():
    cells, counts = grid_cells([(4, 4)], [8])
    result = assign_atss(cells, counts, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert result.gt_index.tolist() == [BACKGROUND] * 16 and result.labels.eq(BACKGROUND).all()
    assert result.iou.eq(0).all() and result.num_positive == 0
    empty = assign_atss(torch.zeros(0, 4), [0], MMDET_BOXES, MMDET_LABELS)
    assert empty.gt_index.shape == (0,) and empty.labels.shape == (0,)
    no_labels, no_mask = torch.zeros(3, 0, dtype=torch.long), torch.zeros(3, 0, dtype=torch.bool)
    batched = assign_atss_batched(cells, counts, torch.zeros(3, 0, 4), no_labels, no_mask)
    assert batched.gt_index.shape == (3, 16) and batched.gt_index.eq(BACKGROUND).all()


def test_single_candidate_gives_no_positive():
    # one prior in all: the unbiased std of one IoU is NaN, so no IoU reaches the
    # threshold (the reference behaves the same)
    prior = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    explanation = explain_atss(
        prior, [1], torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([0])
    )
    assert torch.isnan(explanation.iou_std).all()
    assert explanation.result.num_positive == 0


def _random_batch(seed: int, batch_size: int = 6, max_boxes: int = 7):
    """Padded boxes on a 64 px image: random sizes, integer corners (so centres fall on
    cell edges and corners: distance ties), a duplicated box (IoU ties), an empty image."""
    generator = torch.Generator().manual_seed(seed)
    corner = torch.randint(0, 56, (batch_size, max_boxes, 2), generator=generator)
    size = torch.randint(2, 48, (batch_size, max_boxes, 2), generator=generator)
    gt_boxes = torch.cat([corner, (corner + size).clamp(max=64)], dim=-1).float()
    gt_boxes[:, 1] = gt_boxes[:, 0]  # a duplicate of box 0 in every image
    gt_labels = torch.randint(0, 5, (batch_size, max_boxes), generator=generator)
    counts = torch.randint(0, max_boxes + 1, (batch_size,), generator=generator)
    counts[0] = 0  # an image without boxes
    counts[-1] = max_boxes
    gt_mask = torch.arange(max_boxes)[None, :] < counts[:, None]
    gt_boxes[~gt_mask] = 0.0  # padding
    gt_labels[~gt_mask] = 0
    return gt_boxes, gt_labels, gt_mask


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("topk", [1, 4, 9])
def test_batched_equals_per_image_loop(seed, topk):
    cells, counts = grid_cells([(8, 8), (4, 4), (2, 2)], [8, 16, 32])
    gt_boxes, gt_labels, gt_mask = _random_batch(seed)
    batched = assign_atss_batched(cells, counts, gt_boxes, gt_labels, gt_mask, topk=topk)
    for image in range(gt_boxes.shape[0]):
        real = gt_mask[image]
        single = assign_atss(cells, counts, gt_boxes[image, real], gt_labels[image, real], topk)
        for field, expected in zip(batched, single, strict=True):
            assert torch.equal(field[image], expected), (image, field[image], expected)
    assert batched.num_positive > 0


def test_batched_equals_per_image_in_float64():
    cells, counts = grid_cells([(8, 8), (4, 4)], [8, 16], dtype=torch.float64)
    gt_boxes, gt_labels, gt_mask = _random_batch(5, batch_size=3)
    batched = assign_atss_batched(cells, counts, gt_boxes.double(), gt_labels, gt_mask)
    assert batched.iou.dtype == torch.float64
    for image in range(3):
        real = gt_mask[image]
        single = assign_atss(cells, counts, gt_boxes[image, real].double(), gt_labels[image, real])
        assert all(torch.equal(a[image], b) for a, b in zip(batched, single, strict=True))


def test_batch_of_one_at_nanodet_scale():
    # NanoDet-m at 320 px: 2100 grid cells of side 5 x stride, 27 candidates per box
    cells, counts = grid_cells([(40, 40), (20, 20), (10, 10)], [8, 16, 32])
    gt_boxes = torch.tensor([[50.0, 60.0, 130.0, 200.0], [10.0, 10.0, 26.0, 30.0]])
    labels = torch.tensor([3, 9])
    single = assign_atss(cells, counts, gt_boxes, labels)
    batched = assign_atss_batched(cells, counts, gt_boxes[None], labels[None], torch.ones(1, 2))
    assert all(torch.equal(a[0], b) for a, b in zip(batched, single, strict=True))
    for box in range(2):
        priors = (single.gt_index == box).nonzero()[:, 0]
        assert 0 < len(priors) <= 27
        centers = (cells[priors, :2] + cells[priors, 2:]) / 2
        assert (centers >= gt_boxes[box, :2]).all() and (centers <= gt_boxes[box, 2:]).all()


def test_bad_inputs_name_the_culprit():
    labels = MMDET_LABELS
    with pytest.raises(ValueError, match="priors"):
        assign_atss(torch.zeros(4, 3), [4], MMDET_BOXES, labels)
    with pytest.raises(ValueError, match="num_per_level"):
        assign_atss(MMDET_PRIORS, [3], MMDET_BOXES, labels)
    with pytest.raises(ValueError, match="topk"):
        assign_atss(MMDET_PRIORS, [4], MMDET_BOXES, labels, topk=0)
    with pytest.raises(ValueError, match="gt_labels"):
        assign_atss(MMDET_PRIORS, [4], MMDET_BOXES, torch.tensor([1]))
    with pytest.raises(ValueError, match="integer"):
        assign_atss(MMDET_PRIORS, [4], MMDET_BOXES, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"gt_boxes\[0\] = \[0.0, 0.0, nan, 1.0\] is not an xyxy"):
        assign_atss(MMDET_PRIORS, [4], torch.tensor([[0, 0, float("nan"), 1]]), labels[:1])
    with pytest.raises(ValueError, match=r"gt_boxes\[1\] = \[5.0, 5.0, 2.0, 9.0\]"):
        assign_atss(MMDET_PRIORS, [4], torch.tensor([[0, 0, 2, 1], [5, 5, 2, 9.0]]), labels)
    with pytest.raises(ValueError, match="gt_boxes"):
        assign_atss_batched(MMDET_PRIORS, [4], MMDET_BOXES, labels, torch.ones(2))
    with pytest.raises(ValueError, match="gt_mask"):
        assign_atss_batched(MMDET_PRIORS, [4], MMDET_BOXES[None], labels[None], torch.ones(2))
    with pytest.raises(ValueError, match="box must be"):
        explain_atss(MMDET_PRIORS, [4], MMDET_BOXES, labels).table(2)
