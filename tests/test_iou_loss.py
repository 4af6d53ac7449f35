"""Tests of detutils.losses.iou: hand-built box pairs, torchvision's losses, mmdet's eps."""

import pytest
import torch
import torchvision.ops as tv_ops

from detutils.losses import iou_loss


def _random_pairs(seed: int, count: int = 50):
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(2, count, 2, generator=generator) * 20
    sizes = torch.rand(2, count, 2, generator=generator) * 15 + 0.5
    boxes = torch.cat([corners, corners + sizes], dim=-1)  # (2, N, 4)
    return boxes[0], boxes[1]


def test_giou_loss_by_hand():
    pred = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 2, 2]])
    target = torch.tensor([[0.0, 0, 2, 2], [2, 0, 3, 1], [1, 0, 3, 2]])
    loss = iou_loss(pred, target, reduction="none")
    # identical boxes: GIoU 1, loss 0.
    # disjoint unit squares one unit apart: IoU 0, enclosing box 3 x 1, union 2:
    # GIoU = 0 - (3 - 2) / 3, loss 4 / 3.
    # half overlap: IoU 2 / 6, enclosing 3 x 2 = union: GIoU 1 / 3, loss 2 / 3.
    torch.testing.assert_close(loss, torch.tensor([0.0, 4 / 3, 2 / 3]))
    plain = iou_loss(pred, target, kind="iou", reduction="none")  # 1 - IoU
    torch.testing.assert_close(plain, torch.tensor([0.0, 1.0, 2 / 3]))


@pytest.mark.parametrize(
    ("kind", "reference"),
    [
        ("giou", tv_ops.generalized_box_iou_loss),
        ("diou", tv_ops.distance_box_iou_loss),
        ("ciou", tv_ops.complete_box_iou_loss),
    ],
)
def test_equals_torchvision(kind, reference):
    pred, target = _random_pairs(0)
    for reduction in ("none", "mean", "sum"):
        ours = iou_loss(pred, target, kind=kind, reduction=reduction)
        theirs = reference(pred, target, reduction=reduction)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_matches_mmdet_giou_with_max_eps():
    # mmdet's GIoULoss divides by max(union, 1e-6) and max(enclose, 1e-6); this adds
    # the eps. For unions above ~10 square units the two agree to float32 precision.
    pred, target = _random_pairs(1)
    lt, rb = torch.max(pred[:, :2], target[:, :2]), torch.min(pred[:, 2:], target[:, 2:])
    overlap = (rb - lt).clamp(min=0).prod(dim=1)
    area_pred = (pred[:, 2:] - pred[:, :2]).prod(dim=1)
    area_target = (target[:, 2:] - target[:, :2]).prod(dim=1)
    union = (area_pred + area_target - overlap).clamp(min=1e-6)
    enclose_wh = torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])
    enclose = enclose_wh.prod(dim=1).clamp(min=1e-6)
    mmdet = 1 - (overlap / union - (enclose - union) / enclose)
    torch.testing.assert_close(iou_loss(pred, target, reduction="none"), mmdet)


def test_weight_avg_factor_and_all_zero_weights():
    pred, target = _random_pairs(2, count=4)
    weight = torch.tensor([1.0, 0.5, 0.0, 2.0])
    per_pair = iou_loss(pred, target, reduction="none")
    torch.testing.assert_close(
        iou_loss(pred, target, weight=weight, avg_factor=3.5), (per_pair * weight).sum() / 3.5
    )
    # every weight zero: an exact zero that still backpropagates (zero gradients)
    pred = pred.clone().requires_grad_(True)
    zero = iou_loss(pred, target, weight=torch.zeros(4), avg_factor=1.0)
    zero.backward()
    assert zero.item() == 0.0 and pred.grad is not None and pred.grad.eq(0).all()


def test_empty_and_bad_inputs():
    pred = torch.zeros(0, 4, requires_grad=True)
    loss = iou_loss(pred, torch.zeros(0, 4))
    assert loss.item() == 0.0 and loss.requires_grad
    with pytest.raises(ValueError, match="same shape"):
        iou_loss(torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="kind"):
        iou_loss(torch.zeros(2, 4), torch.zeros(2, 4), kind="eiou")
