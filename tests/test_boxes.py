"""Tests of detutils.boxes: formats, area, the IoU family against torchvision and ultralytics."""

import math

import pytest
import torch
import torchvision.ops as tv_ops

from detutils.boxes import (
    IOU_KINDS,
    box_area,
    box_iou,
    box_iou_aligned,
    clip_boxes,
    cxcywh_norm_to_xyxy,
    cxcywh_to_xyxy,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_cxcywh_norm,
    xyxy_to_xywh,
)

TORCHVISION_PAIRWISE = {
    "iou": tv_ops.box_iou,
    "giou": tv_ops.generalized_box_iou,
    "diou": tv_ops.distance_box_iou,
    "ciou": tv_ops.complete_box_iou,
}
TORCHVISION_LOSSES = {
    "giou": tv_ops.generalized_box_iou_loss,
    "diou": tv_ops.distance_box_iou_loss,
    "ciou": tv_ops.complete_box_iou_loss,
}


def random_boxes(count: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Valid xyxy boxes in a 100 px square, sides 1 to 51 px."""
    generator = torch.Generator().manual_seed(seed)
    top_left = torch.rand(count, 2, generator=generator, dtype=dtype) * 100
    size = torch.rand(count, 2, generator=generator, dtype=dtype) * 50 + 1
    return torch.cat([top_left, top_left + size], dim=-1)


# Pairs of boxes with values derived by hand.
# 1. (10, 20, 50, 40) is 40 x 20 = 800, (20, 10, 40, 70) is 20 x 60 = 1200; they overlap on
#    x 20..40, y 20..40 = 400, union 1600: IoU 0.25. Enclosing box 40 x 60 = 2400, so
#    GIoU = 0.25 - 800 / 2400. Centres (30, 30) and (30, 40): rho^2 = 100, diagonal^2 =
#    40^2 + 60^2 = 5200: DIoU = 0.25 - 100 / 5200.
# 2. Two 10 px squares side by side with a 10 px gap: IoU 0; enclosing 30 x 10 = 300,
#    union 200: GIoU = -1/3. Centres 20 px apart, diagonal^2 = 30^2 + 10^2: DIoU = -0.4.
# 3. A quarter-size box in the centre of a 4 x 4 box: IoU 4 / 16 = 0.25, GIoU = IoU
#    (the enclosing box is the big one, which the union fills), DIoU = IoU (same centre).
HAND_BOXES1 = torch.tensor([[10.0, 20, 50, 40], [0, 0, 10, 10], [0, 0, 4, 4]])
HAND_BOXES2 = torch.tensor([[20.0, 10, 40, 70], [20, 0, 30, 10], [1, 1, 3, 3]])
HAND_VALUES = {
    "iou": [0.25, 0.0, 0.25],
    "giou": [0.25 - 800 / 2400, -1 / 3, 0.25],
    "diou": [0.25 - 100 / 5200, -400 / 1000, 0.25],
}

# ultralytics.utils.metrics.bbox_iou(box1, box2, xywh=False, <kind>=True) in float64,
# recorded once from its published source, for four pairs of boxes.
ULTRALYTICS_BOXES1 = torch.tensor(
    [[10.0, 20, 50, 40], [0, 0, 10, 10], [0, 0, 4, 2], [30, 30, 40, 80]], dtype=torch.float64
)
ULTRALYTICS_BOXES2 = torch.tensor(
    [[20.0, 10, 40, 70], [20, 0, 30, 30], [1, 1, 3, 3], [0, 0, 10, 10]], dtype=torch.float64
)
ULTRALYTICS_VALUES = {
    "iou": [0.2499999990, 0.0, 0.1999999860, 0.0],
    "giou": [-0.0833333318, -0.5555555533, 0.0333333707, -0.8124999993],
    "diou": [0.2307692298, -0.2777777778, 0.1599999862, -0.4250000000],
    "ciou": [0.1682692365, -0.2847599985, 0.1579092076, -0.4422220397],
}


def test_format_round_trips_and_hand_values():
    # A 4 x 6 box with its top-left corner at (2, 3): centre (4, 6).
    boxes = torch.tensor([[2.0, 3.0, 6.0, 9.0]])
    torch.testing.assert_close(xyxy_to_xywh(boxes), torch.tensor([[2.0, 3.0, 4.0, 6.0]]))
    torch.testing.assert_close(xyxy_to_cxcywh(boxes), torch.tensor([[4.0, 6.0, 4.0, 6.0]]))
    # In a 12 (H) x 8 (W) image: x and w divided by 8, y and h by 12.
    torch.testing.assert_close(
        xyxy_to_cxcywh_norm(boxes, (12, 8)), torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    )
    many = random_boxes(20, seed=1, dtype=torch.float64).reshape(4, 5, 4)
    torch.testing.assert_close(xywh_to_xyxy(xyxy_to_xywh(many)), many)
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(many)), many)
    torch.testing.assert_close(
        cxcywh_norm_to_xyxy(xyxy_to_cxcywh_norm(many, (90, 120)), (90, 120)), many
    )
    torch.testing.assert_close(
        xyxy_to_cxcywh(many), tv_ops.box_convert(many, in_fmt="xyxy", out_fmt="cxcywh")
    )


def test_box_area_and_clip():
    boxes = torch.tensor([[0.0, 0, 4, 3], [5, 5, 5, 9], [6, 6, 2, 8]])
    # 4 x 3 = 12; a vertical line has no area; an inverted box counts as empty.
    torch.testing.assert_close(box_area(boxes), torch.tensor([12.0, 0.0, 0.0]))
    valid = random_boxes(10, seed=2)
    torch.testing.assert_close(box_area(valid), tv_ops.box_area(valid))
    clipped = clip_boxes(torch.tensor([[-5.0, 2, 30, 50]]), image_size=(40, 20))
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 2, 20, 40]]))


@pytest.mark.parametrize("kind", ["iou", "giou", "diou"])
def test_hand_derived_values(kind):
    values = box_iou_aligned(HAND_BOXES1, HAND_BOXES2, kind=kind)
    torch.testing.assert_close(values, torch.tensor(HAND_VALUES[kind]), atol=1e-6, rtol=0)


def test_ciou_hand_derived():
    # Pair 1 of HAND_BOXES: DIoU minus alpha v, v from the aspect ratios 40/20 and 20/60.
    iou, diou = 0.25, 0.25 - 100 / 5200
    v = 4 / math.pi**2 * (math.atan(20 / 60) - math.atan(40 / 20)) ** 2
    alpha = v / (v - iou + 1)
    value = box_iou_aligned(HAND_BOXES1[:1], HAND_BOXES2[:1], kind="ciou")
    torch.testing.assert_close(value, torch.tensor([diou - alpha * v]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", IOU_KINDS)
def test_matches_ultralytics_recorded(kind):
    values = box_iou_aligned(ULTRALYTICS_BOXES1, ULTRALYTICS_BOXES2, kind=kind)
    expected = torch.tensor(ULTRALYTICS_VALUES[kind], dtype=torch.float64)
    torch.testing.assert_close(values, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", IOU_KINDS)
def test_pairwise_matches_torchvision(kind, dtype):
    boxes1, boxes2 = random_boxes(30, seed=3, dtype=dtype), random_boxes(20, seed=4, dtype=dtype)
    values = box_iou(boxes1, boxes2, kind=kind)
    assert values.shape == (30, 20) and values.dtype == dtype
    torch.testing.assert_close(
        values, TORCHVISION_PAIRWISE[kind](boxes1, boxes2), atol=1e-6, rtol=0
    )
    # Some pairs overlap and some do not, so both regimes are compared.
    iou = box_iou(boxes1, boxes2)
    assert (iou > 0).any() and (iou == 0).any()


@pytest.mark.parametrize("kind", IOU_KINDS)
def test_aligned_is_the_diagonal_and_matches_torchvision_losses(kind):
    boxes1, boxes2 = random_boxes(25, seed=5), random_boxes(25, seed=6)
    aligned = box_iou_aligned(boxes1, boxes2, kind=kind)
    torch.testing.assert_close(aligned, box_iou(boxes1, boxes2, kind=kind).diagonal())
    if kind in TORCHVISION_LOSSES:
        expected = 1 - TORCHVISION_LOSSES[kind](boxes1, boxes2)
        torch.testing.assert_close(aligned, expected, atol=1e-6, rtol=0)


def test_aligned_batch_dims_equal_a_loop():
    boxes1 = random_boxes(24, seed=7).reshape(2, 3, 4, 4)
    boxes2 = random_boxes(24, seed=8).reshape(2, 3, 4, 4)
    for kind in IOU_KINDS:
        batched = box_iou_aligned(boxes1, boxes2, kind=kind)
        assert batched.shape == (2, 3, 4)
        looped = torch.stack(
            [
                box_iou_aligned(a[None], b[None], kind=kind)[0]
                for a, b in zip(boxes1.reshape(-1, 4), boxes2.reshape(-1, 4), strict=True)
            ]
        ).reshape(2, 3, 4)
        torch.testing.assert_close(batched, looped)


def test_ranges_and_ordering():
    boxes1, boxes2 = random_boxes(40, seed=9), random_boxes(40, seed=10)
    values = {kind: box_iou(boxes1, boxes2, kind=kind) for kind in IOU_KINDS}
    assert ((values["iou"] >= 0) & (values["iou"] <= 1)).all()
    assert (values["giou"] > -1).all() and (values["diou"] > -1).all()
    # Each penalty is >= 0, so every variant lies at or below IoU, and CIoU below DIoU.
    assert (values["giou"] <= values["iou"] + 1e-6).all()
    assert (values["diou"] <= values["iou"] + 1e-6).all()
    assert (values["ciou"] <= values["diou"] + 1e-6).all()
    # Symmetric in its two arguments.
    for kind in IOU_KINDS:
        torch.testing.assert_close(values[kind], box_iou(boxes2, boxes1, kind=kind).T)
    # A box with itself: 1 for every kind.
    for kind in IOU_KINDS:
        torch.testing.assert_close(box_iou_aligned(boxes1, boxes1, kind=kind), torch.ones(40))


@pytest.mark.parametrize("kind", IOU_KINDS)
def test_zero_area_boxes_are_finite_with_finite_gradients(kind):
    # A point, a vertical line, a horizontal line, a normal box; all pairs, self-pairs included.
    boxes = torch.tensor(
        [[5.0, 5, 5, 5], [1, 1, 1, 4], [0, 2, 3, 2], [0, 0, 2, 2]], requires_grad=True
    )
    values = box_iou(boxes, boxes, kind=kind)
    assert torch.isfinite(values).all()
    values.sum().backward()
    assert torch.isfinite(boxes.grad).all()
    # torchvision divides 0 by 0 for the point with itself.
    assert torch.isnan(TORCHVISION_PAIRWISE["iou"](boxes[:1].detach(), boxes[:1].detach())).all()
    aligned_boxes = boxes.detach().clone().requires_grad_(True)
    aligned = box_iou_aligned(aligned_boxes, aligned_boxes.flip(0), kind=kind)
    aligned.sum().backward()
    assert torch.isfinite(aligned).all() and torch.isfinite(aligned_boxes.grad).all()


def test_giou_has_a_gradient_where_iou_has_none():
    # Two disjoint 10 px squares: IoU is flat at 0, GIoU still pulls the boxes together.
    prediction = torch.tensor([[20.0, 0, 30, 10]], requires_grad=True)
    target = torch.tensor([[0.0, 0, 10, 10]])
    box_iou_aligned(prediction, target, kind="iou").sum().backward()
    assert (prediction.grad == 0).all()
    prediction.grad = None
    box_iou_aligned(prediction, target, kind="giou").sum().backward()
    # Shifting the box right by t adds t to x1 and x2; d GIoU / dt is negative, so gradient
    # ascent moves the box left, towards the target.
    assert prediction.grad[0, 0] + prediction.grad[0, 2] < 0


def test_empty_inputs_give_empty_results():
    boxes = random_boxes(3, seed=11)
    empty = torch.zeros(0, 4)
    for kind in IOU_KINDS:
        assert box_iou(empty, boxes, kind=kind).shape == (0, 3)
        assert box_iou(boxes, empty, kind=kind).shape == (3, 0)
        assert box_iou_aligned(empty, empty, kind=kind).shape == (0,)


def test_integer_boxes_are_promoted():
    boxes = torch.tensor([[0, 0, 4, 4]])
    assert box_iou(boxes, boxes).dtype == torch.float32
    assert box_iou(boxes, boxes).item() == pytest.approx(1.0)


def test_bad_arguments_name_the_culprit():
    boxes = random_boxes(3, seed=12)
    with pytest.raises(ValueError, match="kind"):
        box_iou(boxes, boxes, kind="xiou")
    with pytest.raises(ValueError, match="kind"):
        box_iou_aligned(boxes, boxes, kind="IoU")
    with pytest.raises(ValueError, match="boxes1"):
        box_iou(boxes[:, :3], boxes)
    with pytest.raises(ValueError, match="boxes2"):
        box_iou(boxes, boxes[None])
    with pytest.raises(ValueError, match="boxes1 and boxes2"):
        box_iou_aligned(boxes, boxes[:2])
    with pytest.raises(ValueError, match="boxes2"):
        box_iou(boxes, [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="image_size"):
        xyxy_to_cxcywh_norm(boxes, (0, 10))
    with pytest.raises(ValueError, match="boxes_xywh"):
        xywh_to_xyxy(torch.zeros(2, 5))
