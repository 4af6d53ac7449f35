"""Tests of detutils.assigners.tal: hand-built cases, the reference's quirks, dense vs chunked."""

import pytest
import torch

from detutils.assigners import (
    BACKGROUND,
    TaskAlignedResult,
    assign_task_aligned,
    assign_task_aligned_dense,
)
from detutils.assigners.tal import alignment_power, top_k_mask
from detutils.priors import anchor_points

# A 32 x 32 image, one level of stride 8: 16 anchor points at x, y in {4, 12, 20, 28},
# anchor a at row a // 4, column a % 4 (anchor 5 is (12, 12), anchor 6 is (20, 12)).
POINTS, _ = anchor_points([(4, 4)], [8])
FAR = torch.tensor([100.0, 100.0, 104.0, 104.0])  # a predicted box far from everything

# Two 16 x 16 boxes overlapping on a quarter. Box 0 [0, 0, 16, 16] (class 0) contains the
# anchors 0, 1, 4, 5; box 1 [8, 8, 24, 24] (class 1) contains 5, 6, 9, 10.
TWO_BOXES = torch.tensor([[[0.0, 0, 16, 16], [8, 8, 24, 24]]])
TWO_LABELS = torch.tensor([[0, 1]])
# Predicted boxes (CIoU with the box the anchor lies in, v = 0 for squares):
#   0: box 0 itself                   CIoU 1
#   1: box 0 moved 4 px right         IoU 192 / 320 = 0.6, minus rho^2 / c^2 = 16 / 656
#   4: [0, 0, 8, 8], a quarter of it  IoU 0.25, minus 32 / 512: 0.1875
#   5: box 1 itself                   CIoU 1 (with box 0: IoU 64 / 448 minus 128 / 1152)
#   6: box 1 moved 4 px right         0.6 - 16 / 656, as anchor 1
#   9: box 1 moved 4 px down          the same
#  10: [0, 24, 8, 32]                 no overlap with box 1: CIoU < 0, clamped to 0
PRED = FAR.repeat(16, 1)
PRED[[0, 1, 4, 5, 6, 9, 10]] = torch.tensor(
    [
        [0.0, 0, 16, 16],
        [4, 0, 20, 16],
        [0, 0, 8, 8],
        [8, 8, 24, 24],
        [12, 8, 28, 24],
        [8, 12, 24, 28],
        [0, 24, 8, 32],
    ]
)
# Probability 0.25 for class 0 and 0.64 for class 1 everywhere: sqrt gives 0.5 and 0.8.
SCORES = torch.tensor([0.25, 0.64]).repeat(16, 1)
SHIFTED = 0.6 - 16 / 656  # CIoU of a 16 px box moved by 4 px


def assign_both(*args, **kwargs) -> TaskAlignedResult:
    """Run both formulations, check they agree bit for bit, return the result."""
    dense = assign_task_aligned_dense(*args, **kwargs)
    chunked = assign_task_aligned(*args, **kwargs, chunk_size=1)
    for name, expected, actual in zip(dense._fields, dense, chunked, strict=True):
        assert torch.equal(expected, actual), f"{name} differs between dense and chunked"
    return dense


def test_two_boxes_top_two_with_a_tie():
    # topk 2. Box 0's metrics 0.5 x CIoU^6: anchor 0 (0.5), 1 (0.5 x 0.0364), 4 and 5
    # far below: positives 0 and 1. Box 1's: anchor 5 (0.8), then 6 and 9 tie at
    # 0.8 x 0.0364: the lower index, 6, wins (the reference's topk happens to pick 9).
    result = assign_both(
        SCORES[None],
        PRED[None],
        POINTS,
        TWO_LABELS,
        TWO_BOXES,
        torch.ones(1, 2, dtype=torch.bool),
        topk=2,
    )
    positive = result.fg_mask[0].nonzero().flatten().tolist()
    assert positive == [0, 1, 5, 6]
    assert result.gt_index[0, [0, 1, 5, 6]].tolist() == [0, 0, 1, 1]
    assert result.labels[0, [0, 1, 5, 6]].tolist() == [0, 0, 1, 1]
    torch.testing.assert_close(result.boxes[0, 1], TWO_BOXES[0, 0])
    torch.testing.assert_close(result.boxes[0, 6], TWO_BOXES[0, 1])
    # score = t / t_max x u_max: the box's best anchor learns 1 (its CIoU), the other
    # t / t_max = CIoU^6 (the class score is the same everywhere)
    expected = torch.tensor([1.0, SHIFTED**6, 1.0, SHIFTED**6])
    torch.testing.assert_close(result.scores[0, [0, 1], 0], expected[:2], rtol=1e-5, atol=0)
    torch.testing.assert_close(result.scores[0, [5, 6], 1], expected[2:], rtol=1e-5, atol=0)
    assert result.scores[0, [0, 1], 1].eq(0).all() and result.scores[0, [5, 6], 0].eq(0).all()
    # background: BACKGROUND label and index, zero box, zero scores
    background = ~result.fg_mask[0]
    assert result.labels[0, background].eq(BACKGROUND).all()
    assert result.gt_index[0, background].eq(BACKGROUND).all()
    assert result.boxes[0, background].eq(0).all() and result.scores[0, background].eq(0).all()
    assert result.num_positive == 4


def test_contested_anchor_and_zero_metric():
    # topk 4: box 0 takes all four of its candidates (metrics > 0), box 1 takes 5, 6, 9;
    # anchor 10 is inside box 1 but its CIoU is clamped to 0: metric 0, never a positive
    # (the reference's topk fills box 1's fourth place with it). Anchor 5 is selected by
    # both boxes and goes to box 1, its CIoU 1 beating box 0's 1/7 - 1/9.
    result = assign_both(
        SCORES[None],
        PRED[None],
        POINTS,
        TWO_LABELS,
        TWO_BOXES,
        torch.ones(1, 2, dtype=torch.bool),
        topk=4,
    )
    assert result.fg_mask[0].nonzero().flatten().tolist() == [0, 1, 4, 5, 6, 9]
    assert result.gt_index[0, [0, 1, 4, 5, 6, 9]].tolist() == [0, 0, 0, 1, 1, 1]
    # box 0 keeps 0, 1, 4 (anchor 5 went to box 1): scores 1, CIoU^6, 0.1875^6
    torch.testing.assert_close(
        result.scores[0, [0, 1, 4], 0],
        torch.tensor([1.0, SHIFTED**6, 0.1875**6]),
        rtol=1e-5,
        atol=0,
    )
    torch.testing.assert_close(
        result.scores[0, [5, 6, 9], 1],
        torch.tensor([1.0, SHIFTED**6, SHIFTED**6]),
        rtol=1e-5,
        atol=0,
    )


def test_contested_anchor_can_go_to_a_box_that_did_not_select_it():
    # topk 1, one class (probability 0.5 everywhere). Anchor 5 (12, 12) predicts
    # P = [6, 6, 18, 18]. Box A [9, 8, 16, 20] and box B [10, 4, 22, 16] both have
    # anchor 5 as their best (B's other candidate, anchor 6, predicts far away). Box C
    # [2, 2, 19, 19] contains anchors 0, 1, 4, 5; anchor 0 predicts C exactly, so C's top 1
    # is anchor 0. Anchor 5 is contested by A and B, and, as in the reference, the box
    # of highest CIoU is looked up over *every* box containing it: CIoU(P, C) =
    # 144 / 289 - 4.5 / 578 = 0.4905 beats A's 0.43 and B's 0.34, so anchor 5 learns C.
    pred = FAR.repeat(16, 1)
    pred[5] = torch.tensor([6.0, 6, 18, 18])
    pred[0] = torch.tensor([2.0, 2, 19, 19])
    gt_boxes = torch.tensor([[[9.0, 8, 16, 20], [10, 4, 22, 16], [2, 2, 19, 19]]])
    result = assign_both(
        torch.full((1, 16, 1), 0.5),
        pred[None],
        POINTS,
        torch.zeros(1, 3, dtype=torch.long),
        gt_boxes,
        torch.ones(1, 3, dtype=torch.bool),
        topk=1,
    )
    assert result.fg_mask[0].nonzero().flatten().tolist() == [0, 5]
    assert result.gt_index[0, [0, 5]].tolist() == [2, 2]
    ciou = 144 / 289 - 4.5 / 578
    torch.testing.assert_close(
        result.scores[0, [0, 5], 0], torch.tensor([1.0, ciou**6]), rtol=1e-4, atol=0
    )


def test_padding_and_empty_images():
    # Image 0 holds the two boxes and a padded entry that would cover every anchor (with
    # an out-of-range label); image 1 has only padding. Padding must change nothing.
    gt_boxes = torch.cat([TWO_BOXES, torch.tensor([[[0.0, 0, 32, 32]]])], dim=1)
    gt_boxes = torch.cat([gt_boxes, torch.tensor([[[0.0, 0, 32, 32]] * 3])])  # (2, 3, 4)
    gt_labels = torch.tensor([[0, 1, 99], [99, 99, 99]])
    gt_mask = torch.tensor([[True, True, False], [False, False, False]])
    scores, pred = SCORES[None].repeat(2, 1, 1), PRED[None].repeat(2, 1, 1)
    result = assign_both(scores, pred, POINTS, gt_labels, gt_boxes, gt_mask, topk=2)
    alone = assign_both(
        SCORES[None],
        PRED[None],
        POINTS,
        TWO_LABELS,
        TWO_BOXES,
        torch.ones(1, 2, dtype=torch.bool),
        topk=2,
    )
    for field, expected in zip(result, alone, strict=True):
        assert torch.equal(field[0], expected[0])
    assert not result.fg_mask[1].any()
    assert result.labels[1].eq(BACKGROUND).all() and result.scores[1].eq(0).all()


def test_no_boxes_at_all():
    # M = 0 (a batch without any box): every anchor is background, shapes kept
    result = assign_both(
        SCORES[None],
        PRED[None],
        POINTS,
        torch.zeros(1, 0, dtype=torch.long),
        torch.zeros(1, 0, 4),
        torch.zeros(1, 0, dtype=torch.bool),
    )
    assert result.labels.shape == (1, 16) and result.scores.shape == (1, 16, 2)
    assert not result.fg_mask.any() and result.gt_index.eq(BACKGROUND).all()
    assert result.boxes.eq(0).all() and result.scores.eq(0).all()


def test_degenerate_box_gets_no_anchor():
    # a zero-width box contains no point strictly: no positive, no error
    result = assign_both(
        SCORES[None],
        PRED[None],
        POINTS,
        torch.tensor([[0]]),
        torch.tensor([[[12.0, 0, 12, 32]]]),
        torch.ones(1, 1, dtype=torch.bool),
    )
    assert not result.fg_mask.any()


def test_anchor_on_the_box_edge_is_not_inside():
    # anchor 5 (12, 12) on the left edge of [12, 0, 32, 32]: distance 0, not > 1e-9
    gt_boxes = torch.tensor([[[12.0, 0, 32, 32]]])
    pred = gt_boxes[0, 0].repeat(16, 1)[None]  # every anchor predicts the box: CIoU 1
    result = assign_both(
        SCORES[None],
        pred,
        POINTS,
        torch.tensor([[0]]),
        gt_boxes,
        torch.ones(1, 1, dtype=torch.bool),
        topk=16,
    )
    inside = result.fg_mask[0].nonzero().flatten().tolist()
    # x in {20, 28} and every y: columns 2 and 3
    assert inside == [2, 3, 6, 7, 10, 11, 14, 15]


def random_batch(seed: int, batch: int = 4, boxes: int = 30, size: int = 128, classes: int = 5):
    """Crowded random boxes (many anchors inside several), padding, an empty image."""
    generator = torch.Generator().manual_seed(seed)
    points, point_strides = anchor_points(
        [(size // s, size // s) for s in (8, 16, 32)], (8, 16, 32)
    )
    num_anchors = len(points)
    pred_scores = torch.rand(batch, num_anchors, classes, generator=generator)
    distances = torch.rand(batch, num_anchors, 4, generator=generator) * 5 * point_strides[:, None]
    pred_boxes = torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)
    corner = torch.rand(batch, boxes, 2, generator=generator) * 0.8 * size
    side = 2 + torch.rand(batch, boxes, 2, generator=generator) * 0.6 * size
    gt_boxes = torch.cat([corner, corner + side], dim=-1)
    gt_labels = torch.randint(0, classes, (batch, boxes), generator=generator)
    counts = torch.randint(1, boxes + 1, (batch,), generator=generator)
    counts[-1] = 0  # the last image has no box
    gt_mask = torch.arange(boxes)[None] < counts[:, None]
    return pred_scores, pred_boxes, points, gt_labels, gt_boxes, gt_mask


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("chunk_size", [1, 7, 32])
def test_dense_equals_chunked_on_random_batches(seed, chunk_size):
    inputs = random_batch(seed)
    dense = assign_task_aligned_dense(*inputs)
    chunked = assign_task_aligned(*inputs, chunk_size=chunk_size)
    for name, expected, actual in zip(dense._fields, dense, chunked, strict=True):
        assert torch.equal(expected, actual), name
    # the batches exercise what matters: positives, contested anchors, an empty image
    assert dense.num_positive > 50 and not dense.fg_mask[-1].any()


def test_random_batches_have_contested_anchors():
    # with topk = A every candidate of positive metric is selected: an anchor inside two
    # boxes is contested, and must go to one of them (the one of highest CIoU)
    pred_scores, pred_boxes, points, gt_labels, gt_boxes, gt_mask = random_batch(0)
    result = assign_both(
        pred_scores, pred_boxes, points, gt_labels, gt_boxes, gt_mask, topk=len(points)
    )
    inside = (
        (points[None, None] > gt_boxes[..., None, :2])
        & (points[None, None] < gt_boxes[..., None, 2:])
    ).all(-1) & gt_mask[..., None]  # (B, M, A)
    contested = inside.sum(1) > 1  # (B, A)
    assert (contested & result.fg_mask).sum() > 100
    image, anchor = (contested & result.fg_mask).nonzero(as_tuple=True)
    assert inside[image, result.gt_index[image, anchor], anchor].all()


def test_ties_go_to_the_lower_index():
    # every anchor predicts the same box with the same scores: all candidates of the box
    # tie, and the top 3 are its three lowest anchor indices
    gt_boxes = torch.tensor([[[0.0, 0, 32, 32]]])
    pred = torch.tensor([4.0, 4, 28, 28]).repeat(1, 16, 1)
    result = assign_both(
        SCORES[None],
        pred,
        POINTS,
        torch.tensor([[1]]),
        gt_boxes,
        torch.ones(1, 1, dtype=torch.bool),
        topk=3,
    )
    assert result.fg_mask[0].nonzero().flatten().tolist() == [0, 1, 2]
    torch.testing.assert_close(result.scores[0, :3, 1], result.scores[0, 0, 1].expand(3))


def test_batch_of_one_equals_batch():
    inputs = random_batch(1)
    together = assign_task_aligned(*inputs)
    for image in range(inputs[0].shape[0]):
        single = assign_task_aligned(
            inputs[0][image : image + 1],
            inputs[1][image : image + 1],
            inputs[2],
            *(tensor[image : image + 1] for tensor in inputs[3:]),
        )
        for expected, actual in zip(single, together, strict=True):
            assert torch.equal(expected[0], actual[image])


def test_top_k_mask():
    metric = torch.tensor(
        [
            [0.5, 0.2, 0.5, 0.0, 0.5],  # three tie for 2 places: indices 0 and 2
            [0.0, 0.3, 0.0, 0.0, 0.1],  # only two positive entries: both, never a zero
            [0.0, 0.0, 0.0, 0.0, 0.0],  # nothing
        ]
    )
    expected = torch.tensor(
        [[True, False, True, False, False], [False, True, False, False, True], [False] * 5]
    )
    assert torch.equal(top_k_mask(metric, 2), expected)
    assert torch.equal(top_k_mask(metric, 10), metric > 0)  # k > A keeps every positive
    assert top_k_mask(torch.zeros(3, 0), 2).shape == (3, 0)


def test_alignment_power():
    values = torch.rand(10007, generator=torch.Generator().manual_seed(0))
    for exponent in (0.5, 1.0, 6.0, 2.5):
        torch.testing.assert_close(alignment_power(values, exponent), values.pow(exponent))
    # the same value gives the same bits wherever it sits (torch.pow does not promise it)
    whole = alignment_power(values, 6.0)
    for start in range(0, 100, 7):
        assert torch.equal(
            alignment_power(values[start : start + 5], 6.0), whole[start : start + 5]
        )


def test_bad_inputs_name_the_culprit():
    args = [
        SCORES[None],
        PRED[None],
        POINTS,
        TWO_LABELS,
        TWO_BOXES,
        torch.ones(1, 2, dtype=torch.bool),
    ]
    with pytest.raises(ValueError, match="pred_scores must be probabilities"):
        assign_task_aligned(SCORES[None] * 10 - 5, *args[1:])  # logits, not probabilities
    with pytest.raises(ValueError, match="gt_labels must lie in"):
        assign_task_aligned(*args[:3], torch.tensor([[0, 2]]), *args[4:])
    with pytest.raises(ValueError, match="points must be"):
        assign_task_aligned(args[0], args[1], POINTS[:5], *args[3:])
    with pytest.raises(ValueError, match="gt_mask must be bool"):
        assign_task_aligned_dense(*args[:5], torch.ones(1, 2))
    with pytest.raises(ValueError, match="topk"):
        assign_task_aligned(*args, topk=0)
    with pytest.raises(ValueError, match="chunk_size"):
        assign_task_aligned(*args, chunk_size=0)


def test_non_finite_inputs_and_bad_boxes_are_errors():
    # One image, 4 anchors, 2 classes, one box.
    points = torch.tensor([[4.0, 4.0], [12.0, 4.0], [4.0, 12.0], [12.0, 12.0]])
    pred_boxes = torch.tensor([[[0.0, 0, 8, 8], [8, 0, 16, 8], [0, 8, 8, 16], [8, 8, 16, 16]]])
    scores = torch.full((1, 4, 2), 0.5)
    labels, mask = torch.tensor([[1]]), torch.tensor([[True]])
    box = torch.tensor([[[0.0, 0, 16, 16]]])
    assign_task_aligned(scores, pred_boxes, points, labels, box, mask)  # fine
    nan_scores = scores.clone()
    nan_scores[0, 2, 1] = float("nan")
    with pytest.raises(ValueError, match="pred_scores and pred_boxes must be finite"):
        assign_task_aligned(nan_scores, pred_boxes, points, labels, box, mask)
    xywh = torch.tensor([[[6.0, 6.0, 4.0, 4.0]]])  # x, y, w, h: "x2" 4 < x1 6
    with pytest.raises(ValueError, match=r"gt_boxes\[0, 0\] = \[6.0, 6.0, 4.0, 4.0\] is not"):
        assign_task_aligned(scores, pred_boxes, points, labels, xywh, mask)
    infinite = torch.tensor([[[0.0, 0, float("inf"), 16]]])
    with pytest.raises(ValueError, match=r"gt_boxes\[0, 0\]"):
        assign_task_aligned(scores, pred_boxes, points, labels, infinite, mask)
    # A padded (masked-out) entry is not checked: padding is zeros or anything.
    assign_task_aligned(scores, pred_boxes, points, labels, infinite, torch.tensor([[False]]))
