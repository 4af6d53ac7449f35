"""Tests of detutils.losses.yolov3: the YOLOv3 loss against hand values and a loop version."""

import math

import pytest
import torch

from detutils.assigners import YOLOv3Targets, build_yolov3_targets
from detutils.losses import yolov3_loss
from detutils.losses.yolov3 import last_write_wins

ANCHORS = [
    torch.tensor([[116.0, 90], [156, 198], [373, 326]]),
    torch.tensor([[30.0, 61], [62, 45], [59, 119]]),
    torch.tensor([[10.0, 13], [16, 30], [33, 23]]),
]
STRIDES = [32, 16, 8]


def make_targets(image, anchor, gy, gx, box, labels, anchor_wh):
    as_long = lambda values: torch.tensor(values, dtype=torch.long)
    return YOLOv3Targets(
        image=as_long(image),
        anchor=as_long(anchor),
        gy=as_long(gy),
        gx=as_long(gx),
        box=torch.tensor(box, dtype=torch.float32).view(-1, 4),
        labels=as_long(labels),
        anchor_wh=torch.tensor(anchor_wh, dtype=torch.float32).view(-1, 2),
        gt_index=torch.zeros(len(image), dtype=torch.long),
    )


def softplus(x: float) -> float:
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def bce(logit: float, target: float) -> float:
    """Binary cross-entropy of a logit: -t log s(x) - (1 - t) log(1 - s(x)) = softplus(x) - t x."""
    return softplus(logit) - target * logit


def giou_cxcywh(box1, box2) -> float:
    """GIoU of two (cx, cy, w, h) boxes, exact (no eps)."""
    (cx1, cy1, w1, h1), (cx2, cy2, w2, h2) = box1, box2
    left1, right1, top1, bottom1 = cx1 - w1 / 2, cx1 + w1 / 2, cy1 - h1 / 2, cy1 + h1 / 2
    left2, right2, top2, bottom2 = cx2 - w2 / 2, cx2 + w2 / 2, cy2 - h2 / 2, cy2 + h2 / 2
    inter = max(min(right1, right2) - max(left1, left2), 0) * max(
        min(bottom1, bottom2) - max(top1, top2), 0
    )
    union = w1 * h1 + w2 * h2 - inter
    enclose = (max(right1, right2) - min(left1, left2)) * (max(bottom1, bottom2) - min(top1, top2))
    return inter / union - (enclose - union) / enclose


def loop_loss(raw_outputs, targets, giou_gain=3.54, obj_gain=64.3, cls_gain=37.4, gr=1.0):
    """The loss one positive and one cell at a time, in float64 Python arithmetic."""
    box_loss = obj_loss = cls_loss = 0.0
    for raw, target in zip(raw_outputs, targets, strict=True):
        raw = raw.detach().double()
        num_classes = raw.shape[-1] - 5
        obj_target = torch.zeros(raw.shape[:4], dtype=torch.float64)
        giou_terms, cls_terms = [], []
        for k in range(len(target.image)):
            b, a = int(target.image[k]), int(target.anchor[k])
            gy, gx = int(target.gy[k]), int(target.gx[k])
            pred = raw[b, a, gy, gx].tolist()
            anchor_w, anchor_h = target.anchor_wh[k].tolist()
            pred_box = (
                1 / (1 + math.exp(-pred[0])),
                1 / (1 + math.exp(-pred[1])),
                min(math.exp(pred[2]), 1e3) * anchor_w,
                min(math.exp(pred[3]), 1e3) * anchor_h,
            )
            giou = giou_cxcywh(pred_box, target.box[k].tolist())
            giou_terms.append(1 - giou)
            obj_target[b, a, gy, gx] = (1 - gr) + gr * max(giou, 0.0)  # later writes win
            if num_classes > 1:
                for c in range(num_classes):
                    cls_terms.append(bce(pred[5 + c], 1.0 if c == int(target.labels[k]) else 0.0))
        if giou_terms:
            box_loss += sum(giou_terms) / len(giou_terms)
        if cls_terms:
            cls_loss += sum(cls_terms) / len(cls_terms)
        logits, labels = raw[..., 4].flatten().tolist(), obj_target.flatten().tolist()
        obj_loss += sum(bce(x, t) for x, t in zip(logits, labels, strict=True)) / len(logits)
    box_loss, obj_loss, cls_loss = box_loss * giou_gain, obj_loss * obj_gain, cls_loss * cls_gain
    return {
        "box": box_loss,
        "obj": obj_loss,
        "cls": cls_loss,
        "loss": box_loss + obj_loss + cls_loss,
    }


def assert_losses_close(losses, expected, rtol=1e-5):
    for key in ("box", "obj", "cls", "loss"):
        assert losses[key].dim() == 0
        assert losses[key].item() == pytest.approx(expected[key], rel=rtol, abs=1e-6), key


def test_loss_by_hand():
    # One layer, B = 1, A = 1, 2 x 2 cells, C = 2; one positive in cell (y 1, x 0) with
    # target box centre (0.5, 0.5) in the cell, size 1 x 1, anchor 1 x 1, class 1.
    # Prediction there: t_xy = 0 -> centre (0.5, 0.5); t_w = log 2, t_h = 0 -> 2 x 1.
    # Predicted box x -0.5..1.5, y 0..1 (area 2) holds the target (area 1): IoU 1 / 2; the
    # enclosing box is the prediction, equal to the union: GIoU = 0.5. Box loss 3.54 * 0.5.
    # Objectness: logit 2 at the positive with target GIoU = 0.5, logit 0 with target 0
    # at the 3 other cells: mean of (softplus(2) - 1) and 3 log 2, times 64.3.
    # Classes: logits (1, -1), target (0, 1): softplus(1) and softplus(-1) + 1 are both
    # log(1 + e): class loss 37.4 log(1 + e).
    raw = torch.zeros(1, 1, 2, 2, 7)
    raw[0, 0, 1, 0] = torch.tensor([0.0, 0.0, math.log(2.0), 0.0, 2.0, 1.0, -1.0])
    targets = [make_targets([0], [0], [1], [0], [0.5, 0.5, 1.0, 1.0], [1], [1.0, 1.0])]
    box = 3.54 * 0.5
    obj = 64.3 * (math.log1p(math.exp(2.0)) - 1.0 + 3 * math.log(2.0)) / 4
    cls = 37.4 * math.log1p(math.e)
    losses = yolov3_loss([raw], targets)
    assert_losses_close(losses, {"box": box, "obj": obj, "cls": cls, "loss": box + obj + cls})


def test_gr_and_gains():
    # With gr = 0 the objectness target at a positive is 1 whatever the GIoU.
    raw = [torch.zeros(1, 1, 2, 2, 7)]
    raw[0][0, 0, 1, 0, 4] = 2.0
    targets = [make_targets([0], [0], [1], [0], [0.5, 0.5, 1.0, 1.0], [1], [1.0, 1.0])]
    losses = yolov3_loss(raw, targets, gr=0.0, obj_gain=1.0)
    expected = (softplus(2.0) - 2.0 + 3 * math.log(2.0)) / 4
    assert losses["obj"].item() == pytest.approx(expected, rel=1e-6)
    doubled = yolov3_loss(raw, targets, giou_gain=7.08, obj_gain=128.6, cls_gain=74.8)
    single = yolov3_loss(raw, targets)
    for key in ("box", "obj", "cls", "loss"):
        assert doubled[key].item() == pytest.approx(2 * single[key].item(), rel=1e-6)


def random_case(seed: int, num_classes: int = 4):
    """Random raw outputs of YOLOv3 at 128 px (4, 8, 16 cells) and targets of random boxes."""
    generator = torch.Generator().manual_seed(seed)
    batch, num_gt, image_size = 2, 5, 128
    center = torch.rand(batch, num_gt, 2, generator=generator) * image_size
    size = torch.rand(batch, num_gt, 2, generator=generator) * 80 + 4
    gt_boxes = torch.cat([center - size / 2, center + size / 2], dim=-1)
    gt_labels = torch.randint(0, num_classes, (batch, num_gt), generator=generator)
    gt_mask = torch.ones(batch, num_gt, dtype=torch.bool)
    gt_mask[1, -2:] = False
    sizes = [(image_size // s, image_size // s) for s in STRIDES]
    targets = build_yolov3_targets(gt_boxes, gt_labels, gt_mask, ANCHORS, STRIDES, sizes)
    raw = [torch.randn(batch, 3, h, w, 5 + num_classes, generator=generator) for h, w in sizes]
    return raw, targets


@pytest.mark.parametrize("seed", [0, 1])
def test_vectorised_equals_loop(seed):
    raw, targets = random_case(seed)
    assert sum(len(t.image) for t in targets) > 5  # the case has positives
    assert_losses_close(yolov3_loss(raw, targets), loop_loss(raw, targets))
    assert_losses_close(yolov3_loss(raw, targets, gr=0.3), loop_loss(raw, targets, gr=0.3))


def test_last_write_wins_helper():
    flat = torch.tensor([3, 1, 3, 2, 1])
    assert last_write_wins(flat).tolist() == [False, False, True, True, True]
    assert last_write_wins(torch.zeros(0, dtype=torch.long)).shape == (0,)


def test_two_targets_in_one_cell_last_write_wins():
    # Two positives in the same (image, anchor, cell) with different boxes, so different
    # GIoUs. Box and class terms average both; the objectness target holds the GIoU of
    # the one listed last. Swapping the order changes the objectness loss, and each order
    # matches the loop, which writes one target after the other.
    raw = [torch.zeros(1, 1, 2, 2, 7)]
    raw[0][0, 0, 0, 1] = torch.tensor([0.3, -0.2, 0.1, 0.4, 1.5, 0.5, -0.5])
    first = ([0.5, 0.5, 1.0, 1.0], 0)
    second = ([0.2, 0.7, 3.0, 0.5], 1)
    orders = {}
    for name, pair in (("first_last", (second, first)), ("second_last", (first, second))):
        boxes = [box for box, _ in pair]
        labels = [label for _, label in pair]
        targets = [make_targets([0, 0], [0, 0], [0, 0], [1, 1], boxes, labels, [[1.0, 1.0]] * 2)]
        losses = yolov3_loss(raw, targets)
        assert_losses_close(losses, loop_loss(raw, targets))
        orders[name] = losses
    assert orders["first_last"]["box"].item() == pytest.approx(orders["second_last"]["box"].item())
    assert orders["first_last"]["obj"].item() != pytest.approx(orders["second_last"]["obj"].item())


def test_one_class_has_no_class_loss():
    raw, targets = random_case(2, num_classes=1)
    targets = [t._replace(labels=torch.zeros_like(t.labels)) for t in targets]
    losses = yolov3_loss(raw, targets)
    assert losses["cls"].item() == 0.0
    assert_losses_close(losses, loop_loss(raw, targets))


def test_no_targets_leaves_only_objectness():
    # Every cell's target is 0: obj = 64.3 * mean softplus(logit), summed over layers.
    raw, targets = random_case(3)
    empty = [
        YOLOv3Targets(*(value[:0] for value in target))  # zero positives, right dtypes
        for target in targets
    ]
    losses = yolov3_loss(raw, empty)
    expected = sum(torch.nn.functional.softplus(x[..., 4]).mean().item() for x in raw) * 64.3
    assert losses["box"].item() == 0.0 and losses["cls"].item() == 0.0
    assert losses["obj"].item() == pytest.approx(expected, rel=1e-5)


def test_edge_cases_give_finite_loss_and_gradients():
    # 64 px images: an image without boxes, a box smaller than a pixel and a box so
    # elongated that no anchor matches (neither gets a target), a box on the image border
    # (centre on the right edge, clamped into the last cell) and an ordinary box.
    gt_boxes = torch.tensor(
        [
            [[0.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
            [[10.0, 10, 10.4, 10.3], [0, 30, 64, 31], [0, 0, 0, 0]],
            [[48.0, 20, 80, 40], [8, 8, 30, 40], [0, 0, 0, 0]],
        ]
    )
    gt_labels = torch.tensor([[0, 0, 0], [1, 2, 0], [3, 0, 0]])
    gt_mask = torch.tensor([[False] * 3, [True, True, False], [True, True, False]])
    sizes = [(64 // s, 64 // s) for s in STRIDES]
    targets = build_yolov3_targets(gt_boxes, gt_labels, gt_mask, ANCHORS, STRIDES, sizes)
    for target in targets:
        assert not (target.image == 0).any()  # nothing for the empty image
        assert not (target.image == 1).any()  # nor for the unmatched boxes
    border = targets[2].gt_index == 0
    assert border.any() and (targets[2].gx[border] == 7).all()
    generator = torch.Generator().manual_seed(5)
    raw = [torch.randn(3, 3, h, w, 9, generator=generator, requires_grad=True) for h, w in sizes]
    losses = yolov3_loss(raw, targets)
    assert all(torch.isfinite(value) for value in losses.values())
    losses["loss"].backward()
    assert all(torch.isfinite(x.grad).all() for x in raw)
    assert_losses_close(losses, loop_loss(raw, targets))


def test_huge_wh_logits_stay_finite():
    # exp(100) overflows float32; the clamp at 1000 anchors keeps GIoU finite.
    raw = [torch.zeros(1, 1, 2, 2, 7)]
    raw[0][0, 0, 1, 0, 2:4] = 100.0
    targets = [make_targets([0], [0], [1], [0], [0.5, 0.5, 1.0, 1.0], [1], [1.0, 1.0])]
    losses = yolov3_loss(raw, targets)
    assert torch.isfinite(losses["loss"])
    assert 3.54 * 0.99 < losses["box"].item() < 3.54 * 1.0  # GIoU of a 1000 x 1000 box: ~0


def test_bad_input_is_rejected():
    raw = [torch.zeros(1, 1, 2, 2, 7)]
    target = make_targets([0], [0], [1], [0], [0.5, 0.5, 1.0, 1.0], [2], [1.0, 1.0])
    with pytest.raises(ValueError, match="labels outside 0 .. 1"):
        yolov3_loss(raw, [target])
    with pytest.raises(ValueError, match="one target per YOLO layer"):
        yolov3_loss(raw, [target, target])
    with pytest.raises(ValueError, match=r"\(B, K, H, W, 5 \+ 2\)"):
        yolov3_loss([raw[0], torch.zeros(1, 2, 2, 7)], [target, target])
    with pytest.raises(ValueError, match="gr"):
        yolov3_loss(raw, [target._replace(labels=torch.tensor([1]))], gr=1.5)
