"""Tests of detutils.losses.yolov8: recorded reference values, the formula by hand, edge cases."""

import pytest
import torch
import torch.nn.functional as F

from detutils.assigners import assign_task_aligned, assign_task_aligned_dense, pad_ground_truth
from detutils.boxes import box_iou_aligned
from detutils.losses import distribution_focal_loss, yolov8_loss
from detutils.priors import anchor_points

STRIDES = (8, 16, 32)
NUM_CLASSES, SIZE = 3, 64  # a 64 x 64 image: 8 x 8 + 4 x 4 + 2 x 2 = 84 anchor points
POINTS, POINT_STRIDES = anchor_points([(SIZE // s, SIZE // s) for s in STRIDES], STRIDES)

# Three images: three boxes, one box covering the image, none.
TARGETS = [
    {
        "boxes": torch.tensor([[4.0, 6, 36, 30], [20, 20, 60, 62], [30, 2, 38, 14]]),
        "labels": torch.tensor([0, 2, 1]),
    },
    {"boxes": torch.tensor([[0.0, 0, 64, 64]]), "labels": torch.tensor([1])},
    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
]

# ultralytics 8.1.0 ``v8DetectionLoss`` on the head maps of ``head_maps()`` and TARGETS
# (given to it as normalised cx, cy, w, h, which it turns back into these pixels
# exactly), model strides 8, 16, 32, reg_max 16, hyp box 7.5, cls 0.5, dfl 1.5:
# loss_items (box, cls, dfl) and the value it calls backward on (sum x batch size 3).
REFERENCE_ITEMS = {"box": 4.964749813079834, "cls": 231.5015106201172, "dfl": 5.967194080352783}
REFERENCE_TOTAL = 727.3003540039062


def head_maps(batch: int = 3, seed: int = 2024) -> list[torch.Tensor]:
    """Per-level (B, 4 x 16 + C, H, W) maps, the layout of YOLOv8's training outputs."""
    generator = torch.Generator().manual_seed(seed)
    return [
        2.0 * torch.randn(batch, 64 + NUM_CLASSES, SIZE // s, SIZE // s, generator=generator)
        for s in STRIDES
    ]


def flat_logits(maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps -> class logits (B, A, C) and distribution logits (B, A, 64), box channels first."""
    flat = torch.cat([x.flatten(2) for x in maps], dim=2).transpose(1, 2)  # (B, A, 64 + C)
    return flat[..., 64:], flat[..., :64]


def loss_of(maps, targets=TARGETS, **kwargs):
    cls_logits, dist_logits = flat_logits(maps)
    gt_boxes, gt_labels, gt_mask = pad_ground_truth(targets)
    return yolov8_loss(
        cls_logits, dist_logits, POINTS, POINT_STRIDES, gt_boxes, gt_labels, gt_mask, **kwargs
    )


def test_equals_recorded_reference_values():
    losses = loss_of(head_maps())
    for name, expected in REFERENCE_ITEMS.items():
        torch.testing.assert_close(losses[name].item(), expected, rtol=2e-6, atol=0)
    torch.testing.assert_close(losses["loss"], losses["box"] + losses["cls"] + losses["dfl"])
    # the reference's backward value is the sum times the batch size
    torch.testing.assert_close((losses["loss"] * 3).item(), REFERENCE_TOTAL, rtol=2e-6, atol=0)


def test_formula_by_hand():
    # the seven steps written out independently of the module, on the same assignment
    maps = head_maps()
    cls_logits, dist_logits = flat_logits(maps)
    gt_boxes, gt_labels, gt_mask = pad_ground_truth(TARGETS)
    strides = POINT_STRIDES[:, None]
    bins = torch.arange(16.0)
    distances = (dist_logits.unflatten(-1, (4, 16)).softmax(-1) * bins).sum(-1)  # (B, A, 4)
    centers = POINTS / strides  # (A, 2) grid units
    pred_boxes = torch.cat([centers - distances[..., :2], centers + distances[..., 2:]], -1)
    result = assign_task_aligned(
        cls_logits.sigmoid(), pred_boxes * strides, POINTS, gt_labels, gt_boxes, gt_mask
    )
    normaliser = max(result.scores.sum(), torch.tensor(1.0))
    # class loss: BCE = softplus(x) - x t, summed
    cls = (F.softplus(cls_logits) - cls_logits * result.scores).sum() / normaliser
    fg = result.fg_mask
    weight = result.scores.sum(-1)[fg]
    target = result.boxes / strides  # (B, A, 4) grid units
    box = ((1 - box_iou_aligned(pred_boxes[fg], target[fg], "ciou")) * weight).sum() / normaliser
    # DFL: the reference's weights wl = (left + 1) - y, wr = 1 - wl, mean over 4 sides
    y = torch.cat([centers - target[..., :2], target[..., 2:] - centers], -1)[fg]
    y = y.clamp(0, 15 - 0.01)  # (P, 4)
    left = y.floor().long()
    weight_left = (left + 1) - y
    log_p = dist_logits[fg].unflatten(-1, (4, 16)).log_softmax(-1)  # (P, 4, 16)
    nll_left = -log_p.gather(-1, left[..., None]).squeeze(-1)
    nll_right = -log_p.gather(-1, (left + 1)[..., None]).squeeze(-1)
    dfl_per_anchor = (nll_left * weight_left + nll_right * (1 - weight_left)).mean(-1)  # (P,)
    dfl = (dfl_per_anchor * weight).sum() / normaliser

    losses = loss_of(maps)
    torch.testing.assert_close(losses["cls"], 0.5 * cls)
    torch.testing.assert_close(losses["box"], 7.5 * box)
    torch.testing.assert_close(losses["dfl"], 1.5 * dfl)
    assert fg.sum() > 5  # the case has positives in both images with boxes


def test_distribution_focal_loss_is_the_reference_dfl():
    # ultralytics DFLoss: wl = tr - y, wr = 1 - wl; GFL's: wr = y - tl. The same up to rounding.
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 16, generator=generator)
    target = torch.rand(40, generator=generator) * 14.99
    left = target.long()
    weight_left = (left + 1) - target
    reference = F.cross_entropy(logits, left, reduction="none") * weight_left + F.cross_entropy(
        logits, left + 1, reduction="none"
    ) * (1 - weight_left)
    torch.testing.assert_close(distribution_focal_loss(logits, target, reduction="none"), reference)


def test_gains_scale_the_terms():
    base = loss_of(head_maps())
    scaled = loss_of(head_maps(), box_gain=1.0, cls_gain=2.0, dfl_gain=0.0)
    torch.testing.assert_close(scaled["box"], base["box"] / 7.5)
    torch.testing.assert_close(scaled["cls"], base["cls"] * 4)
    assert scaled["dfl"] == 0


def test_dense_assigner_gives_the_same_loss():
    chunked = loss_of(head_maps())
    dense = loss_of(head_maps(), assigner=assign_task_aligned_dense)
    for name in chunked:
        assert torch.equal(chunked[name], dense[name])


def test_no_boxes():
    # no positive: box and DFL are 0; every target is 0 and the normaliser clamps to 1,
    # so the class loss is 0.5 x the sum of BCE(x, 0) = softplus(x)
    maps = [x.requires_grad_() for x in head_maps(batch=2)]
    empty = [TARGETS[2], TARGETS[2]]
    losses = loss_of(maps, targets=empty)
    assert losses["box"] == 0 and losses["dfl"] == 0
    cls_logits, _ = flat_logits(maps)
    torch.testing.assert_close(losses["cls"], 0.5 * F.softplus(cls_logits).sum())
    losses["loss"].backward()  # the graph holds, the box channels get a zero gradient
    assert maps[0].grad[:, :64].eq(0).all() and maps[0].grad[:, 64:].ne(0).any()


def test_gradients_reach_both_branches():
    maps = [x.requires_grad_() for x in head_maps()]
    loss_of(maps)["loss"].backward()
    for x in maps:
        assert torch.isfinite(x.grad).all()
    assert maps[0].grad[0, :64].abs().sum() > 0  # distribution logits of image 0
    assert maps[0].grad[2, :64].eq(0).all()  # image 2 has no box: no box gradient


def test_bad_shapes():
    cls_logits, dist_logits = flat_logits(head_maps())
    gt = pad_ground_truth(TARGETS)
    with pytest.raises(ValueError, match="dist_logits"):
        yolov8_loss(cls_logits, dist_logits[..., :63], POINTS, POINT_STRIDES, *gt)
    with pytest.raises(ValueError, match="points"):
        yolov8_loss(cls_logits, dist_logits, POINTS[:10], POINT_STRIDES, *gt)
    with pytest.raises(ValueError, match="cls_logits"):
        yolov8_loss(cls_logits[0], dist_logits, POINTS, POINT_STRIDES, *gt)
