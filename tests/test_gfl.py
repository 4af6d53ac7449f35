"""Tests of detutils.losses.gfl: golden values by hand, and NanoDet's per-level computation."""

import math

import pytest
import torch
import torch.nn.functional as F

from detutils.assigners import BACKGROUND, IGNORE, AssignResult, assign_atss, assign_atss_batched
from detutils.losses import gfl_loss, quality_focal_loss
from detutils.priors import grid_cells

LN2, LN8 = math.log(2.0), math.log(8.0)


def _assignment(gt_index, labels, iou=None) -> AssignResult:
    gt_index = torch.tensor(gt_index)
    labels = torch.tensor(labels)
    iou = torch.zeros(gt_index.shape) if iou is None else torch.tensor(iou)
    return AssignResult(gt_index, labels, iou)


def test_golden_values_with_zero_logits():
    # One image, one level of 2 x 2 cells at stride 8 (centres (4, 4), (12, 4), (4, 12),
    # (12, 12)), 2 classes, R = 7. Prior 0 learns the box (0, 0, 16, 16), class 1.
    # All logits 0: every class probability is 0.5 (so the positive's weight is 0.5,
    # which cancels), every distribution uniform over 8 bins (each side 3.5 bins).
    # In grid units (pixels / 8): centre (0.5, 0.5), predicted box (-3, -3, 4, 4) of
    # area 49, target box (0, 0, 2, 2) of area 4 inside it: IoU = GIoU = 4 / 49.
    #   QFL: 7 negative entries cost ln 2 * 0.5^2 each; the positive entry (target 4/49)
    #        costs BCE(0, t) = ln 2 times |4/49 - 0.5|^2; divided by 1 positive.
    #   GIoU: 2 * (1 - 4/49).
    #   DFL: uniform bins cost ln 8 on every side, weighted mean ln 8, times 0.25.
    cells, _ = grid_cells([(2, 2)], [8])
    assignment = _assignment([[0, -1, -1, -1]], [[1, -1, -1, -1]])
    gt_boxes = torch.tensor([[[0.0, 0.0, 16.0, 16.0]]])
    losses = gfl_loss(
        torch.zeros(1, 4, 2),
        torch.zeros(1, 4, 32),
        cells,
        torch.full((4,), 8.0),
        assignment,
        gt_boxes,
    )
    iou = 4 / 49
    expected = {
        "qfl": 7 * LN2 * 0.25 + LN2 * (0.5 - iou) ** 2,
        "bbox": 2 * (1 - iou),
        "dfl": 0.25 * LN8,
    }
    expected["loss"] = sum(expected.values())
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], torch.tensor(value), msg=name)


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _giou_by_hand(pred, target):
    """Scalar GIoU of two xyxy lists, as mmdet's bbox_overlaps (eps 1e-6, by max)."""
    overlap_w = max(0.0, min(pred[2], target[2]) - max(pred[0], target[0]))
    overlap_h = max(0.0, min(pred[3], target[3]) - max(pred[1], target[1]))
    overlap = overlap_w * overlap_h
    area_pred = (pred[2] - pred[0]) * (pred[3] - pred[1])
    area_target = (target[2] - target[0]) * (target[3] - target[1])
    union = max(area_pred + area_target - overlap, 1e-6)
    enclose_w = max(pred[2], target[2]) - min(pred[0], target[0])
    enclose_h = max(pred[3], target[3]) - min(pred[1], target[1])
    enclose = max(enclose_w * enclose_h, 1e-6)
    iou = overlap / union
    return iou, iou - (enclose - union) / enclose


def test_golden_values_with_two_weighted_positives():
    # Two levels, strides 8 (2 x 2 cells) and 16 (1 cell); one class. Prior 1 (centre
    # (12, 4), stride 8) and prior 4 (centre (8, 8), stride 16) learn two boxes. Class
    # logits 2 and -1 give weights sigmoid(2), sigmoid(-1); distribution logits put
    # mass on chosen bins. Every term is recomputed here from the GFL formulas.
    cells, _ = grid_cells([(2, 2), (1, 1)], [8, 16])
    strides = torch.tensor([8.0, 8, 8, 8, 16])
    gt_boxes = torch.tensor([[[2.0, 1.0, 30.0, 14.0], [0.0, 0.0, 20.0, 28.0]]])
    assignment = _assignment([[-1, 0, -1, -1, 1]], [[-1, 0, -1, -1, 0]])
    cls_logits = torch.tensor([[[0.3], [2.0], [-0.5], [0.1], [-1.0]]])
    generator = torch.Generator().manual_seed(0)
    dist_logits = torch.randn(1, 5, 32, generator=generator) * 2
    losses = gfl_loss(cls_logits, dist_logits, cells, strides, assignment, gt_boxes)

    qfl_terms, bbox_terms, dfl_terms, weights = [], [], [], []
    scores = {}
    for prior, box in ((1, 0), (4, 1)):
        stride = float(strides[prior])
        center = ((cells[prior, :2] + cells[prior, 2:]) / 2 / stride).tolist()
        target = [v / stride for v in gt_boxes[0, box].tolist()]
        probs = F.softmax(dist_logits[0, prior].view(4, 8).double(), dim=1)
        dist = (probs * torch.arange(8.0, dtype=torch.float64)).sum(dim=1).tolist()
        pred = [center[0] - dist[0], center[1] - dist[1], center[0] + dist[2], center[1] + dist[3]]
        iou, giou = _giou_by_hand(pred, target)
        weight = _sigmoid(cls_logits[0, prior, 0].item())
        weights.append(weight)
        scores[prior] = iou
        bbox_terms.append(weight * (1 - giou))
        sides = [
            center[0] - target[0],
            center[1] - target[1],
            target[2] - center[0],
            target[3] - center[1],
        ]
        for side, distance in enumerate(sides):
            y = min(max(distance, 0.0), 7 - 0.1)
            left = int(y)
            log_p = torch.log(probs[side])
            dfl_terms.append(
                weight * -((left + 1 - y) * log_p[left] + (y - left) * log_p[left + 1])
            )
    for prior in range(5):
        x = cls_logits[0, prior, 0].item()
        t = scores.get(prior, 0.0)
        bce = max(x, 0) - x * t + math.log1p(math.exp(-abs(x)))
        qfl_terms.append(bce * abs(t - _sigmoid(x)) ** 2)
    weight_sum = sum(weights)
    expected = {
        "qfl": sum(qfl_terms) / 2,  # 2 positives
        "bbox": 2.0 * sum(bbox_terms) / weight_sum,
        "dfl": 0.25 * float(sum(dfl_terms)) / (4 * weight_sum),
    }
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], torch.tensor(value, dtype=torch.float32), msg=name)


def _reference_gfl(cls_logits, dist_logits, cells, num_per_level, strides, targets, reg_max=7):
    """NanoDet's GFLHead.loss written the reference's way: per image assignment with
    labels C for background, then one loss per level, summed; mmdet-style IoUs."""
    batch, _, num_classes = cls_logits.shape
    labels, box_targets, num_total_pos = [], [], 0
    for image in range(batch):
        result = assign_atss(cells, num_per_level, targets[image][0], targets[image][1])
        positive = result.gt_index >= 0
        num_total_pos += max(int(positive.sum()), 1)
        image_labels = torch.full_like(result.labels, num_classes)
        image_labels[positive] = result.labels[positive]
        image_boxes = torch.zeros(len(cells), 4)
        image_boxes[positive] = targets[image][0][result.gt_index[positive]]
        labels.append(image_labels)
        box_targets.append(image_boxes)
    labels, box_targets = torch.stack(labels), torch.stack(box_targets)  # (B, A), (B, A, 4)
    qfl, bbox, dfl, weight_sum, start = 0.0, 0.0, 0.0, 0.0, 0
    for count, stride in zip(num_per_level, strides, strict=True):
        level = slice(start, start + count)
        start += count
        level_cls = cls_logits[:, level].reshape(-1, num_classes)
        level_dist = dist_logits[:, level].reshape(-1, 4 * (reg_max + 1))
        level_labels = labels[:, level].reshape(-1)
        level_boxes = box_targets[:, level].reshape(-1, 4)
        level_cells = cells[level].repeat(batch, 1)
        pos = ((level_labels >= 0) & (level_labels < num_classes)).nonzero().squeeze(1)
        score = torch.zeros(len(level_labels))
        if len(pos):
            centers = (level_cells[pos, :2] + level_cells[pos, 2:]) / 2 / stride
            weight = level_cls.sigmoid().max(dim=1).values[pos]
            probs = level_dist[pos].reshape(-1, reg_max + 1).softmax(dim=1)
            corners = (probs @ torch.arange(reg_max + 1.0)).reshape(-1, 4)
            pred = torch.cat([centers - corners[:, :2], centers + corners[:, 2:]], dim=1)
            target = level_boxes[pos] / stride
            gious, ious = [], []
            for p, t in zip(pred.tolist(), target.tolist(), strict=True):
                iou, giou = _giou_by_hand(p, t)
                ious.append(iou)
                gious.append(giou)
            score[pos] = torch.tensor(ious)
            bbox = bbox + (weight * (1 - torch.tensor(gious))).sum()
            distances = torch.cat([centers - target[:, :2], target[:, 2:] - centers], dim=1)
            y = distances.clamp(0, reg_max - 0.1).reshape(-1)
            left = y.long()
            log_p = F.log_softmax(level_dist[pos].reshape(-1, reg_max + 1), dim=1)
            rows = torch.arange(len(y))
            side_loss = -((left + 1 - y) * log_p[rows, left] + (y - left) * log_p[rows, left + 1])
            dfl = dfl + (weight[:, None].expand(-1, 4).reshape(-1) * side_loss).sum() / 4.0
            weight_sum = weight_sum + weight.sum()
        background = torch.where(level_labels == num_classes, -1, level_labels)
        qfl = qfl + quality_focal_loss(level_cls, background, score, reduction="sum") / max(
            num_total_pos, 1
        )
    return {"qfl": qfl, "bbox": 2.0 * bbox / weight_sum, "dfl": 0.25 * dfl / weight_sum}


@pytest.mark.parametrize("seed", range(3))
def test_equals_nanodet_per_level_computation(seed):
    # three images at 64 px (8 x 8, 4 x 4, 2 x 2 cells), one of them without boxes
    generator = torch.Generator().manual_seed(seed)
    cells, num_per_level = grid_cells([(8, 8), (4, 4), (2, 2)], [8, 16, 32])
    strides = [8, 16, 32]
    prior_strides = torch.repeat_interleave(
        torch.tensor(strides).float(), torch.tensor(num_per_level)
    )
    targets, padded = [], torch.zeros(3, 4, 4)
    for image, count in enumerate((3, 0, 4)):
        corner = torch.rand(count, 2, generator=generator) * 40
        boxes = torch.cat([corner, corner + 4 + torch.rand(count, 2, generator=generator) * 30], 1)
        targets.append((boxes, torch.randint(0, 5, (count,), generator=generator)))
        padded[image, :count] = boxes
    cls_logits = torch.randn(3, 84, 5, generator=generator) * 2 - 2
    dist_logits = torch.randn(3, 84, 32, generator=generator) * 2
    labels = torch.zeros(3, 4, dtype=torch.long)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    for image, (boxes, image_labels) in enumerate(targets):
        labels[image, : len(boxes)] = image_labels
        mask[image, : len(boxes)] = True
    assignment = assign_atss_batched(cells, num_per_level, padded, labels, mask)
    losses = gfl_loss(cls_logits, dist_logits, cells, prior_strides, assignment, padded)
    expected = _reference_gfl(cls_logits, dist_logits, cells, num_per_level, strides, targets)
    for name in ("qfl", "bbox", "dfl"):
        torch.testing.assert_close(losses[name], expected[name].float(), msg=name)
    torch.testing.assert_close(losses["loss"], losses["qfl"] + losses["bbox"] + losses["dfl"])


def test_images_without_positives_count_one_in_the_normaliser():
    # image 0 has 2 positives, image 1 none: the QFL sum is divided by 2 + 1
    cells, _ = grid_cells([(2, 2)], [8])
    assignment = _assignment([[0, 0, -1, -1], [-1, -1, -1, -1]], [[1, 1, -1, -1], [-1] * 4])
    gt_boxes = torch.tensor([[[0.0, 0.0, 16.0, 12.0]], [[0.0, 0.0, 0.0, 0.0]]])
    cls_logits = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(0))
    dist_logits = torch.zeros(2, 4, 32)
    losses = gfl_loss(cls_logits, dist_logits, cells, torch.full((4,), 8.0), assignment, gt_boxes)
    # the quality targets: the IoU of the uniform-distribution box with the target
    centers = torch.tensor([[0.5, 0.5], [1.5, 0.5]])
    pred = torch.cat([centers - 3.5, centers + 3.5], dim=1)
    target = gt_boxes[0, 0] / 8
    inter = (torch.min(pred[:, 2:], target[2:]) - torch.max(pred[:, :2], target[:2])).clamp(min=0)
    inter = inter.prod(dim=1)
    iou = inter / (49 + (target[2:] - target[:2]).prod() - inter)
    scores = torch.tensor([iou[0], iou[1], 0, 0, 0, 0, 0, 0])
    total = quality_focal_loss(
        cls_logits.reshape(-1, 3), assignment.labels.reshape(-1), scores, reduction="sum"
    )
    torch.testing.assert_close(losses["qfl"], total / 3)


def test_ignored_priors_take_no_part():
    cells, _ = grid_cells([(2, 2)], [8])
    gt_boxes = torch.tensor([[[0.0, 0.0, 16.0, 16.0]]])
    cls_logits = torch.randn(1, 4, 2, generator=torch.Generator().manual_seed(1))
    dist_logits = torch.zeros(1, 4, 32)
    strides = torch.full((4,), 8.0)
    with_ignore = _assignment([[0, IGNORE, -1, -1]], [[1, IGNORE, -1, -1]])
    ignoring = gfl_loss(cls_logits, dist_logits, cells, strides, with_ignore, gt_boxes)
    # the same as dropping prior 1 from the batch
    kept = [0, 2, 3]
    without = _assignment([[0, -1, -1]], [[1, -1, -1]])
    dropped = gfl_loss(
        cls_logits[:, kept], dist_logits[:, kept], cells[kept], strides[kept], without, gt_boxes
    )
    for name in ("qfl", "bbox", "dfl"):
        torch.testing.assert_close(ignoring[name], dropped[name], msg=name)


def test_no_positive_anywhere_gives_zeros_that_backpropagate():
    cells, _ = grid_cells([(2, 2)], [8])
    cls_logits = torch.randn(2, 4, 3, requires_grad=True)
    dist_logits = torch.randn(2, 4, 32, requires_grad=True)
    background = _assignment([[BACKGROUND] * 4] * 2, [[BACKGROUND] * 4] * 2)
    losses = gfl_loss(
        cls_logits, dist_logits, cells, torch.full((4,), 8.0), background, torch.zeros(2, 0, 4)
    )
    assert all(value.item() == 0.0 for value in losses.values())
    losses["loss"].backward()
    assert cls_logits.grad.eq(0).all() and dist_logits.grad.eq(0).all()


def test_bad_shapes_are_refused():
    cells, _ = grid_cells([(2, 2)], [8])
    good = dict(
        cls_logits=torch.zeros(1, 4, 2),
        dist_logits=torch.zeros(1, 4, 32),
        priors=cells,
        prior_strides=torch.full((4,), 8.0),
        assignment=_assignment([[0, -1, -1, -1]], [[1, -1, -1, -1]]),
        gt_boxes=torch.zeros(1, 1, 4),
    )
    for name, bad, message in [
        ("cls_logits", torch.zeros(4, 2), "cls_logits"),
        ("dist_logits", torch.zeros(1, 4, 30), "dist_logits"),
        ("prior_strides", torch.zeros(3), "prior_strides"),
        ("assignment", _assignment([[0, -1]], [[1, -1]]), "assignment.gt_index"),
        ("gt_boxes", torch.zeros(2, 1, 4), "gt_boxes"),
    ]:
        with pytest.raises(ValueError, match=message):
            gfl_loss(**{**good, name: bad})


def test_normalisers_are_averaged_over_processes(monkeypatch):
    # Under DDP both normalisers (positives, sum of weights) are means over the
    # processes. Pretend the other processes make both means 10: every term is then
    # this process's sum divided by 10.
    import detutils.losses.focal as focal_module  # the positives' normaliser
    import detutils.losses.gfl as gfl_module  # the weights' normaliser

    for module in (focal_module, gfl_module):
        monkeypatch.setattr(module, "all_reduce_mean", lambda value: torch.full_like(value, 10.0))
    cells, _ = grid_cells([(2, 2)], [8])
    assignment = _assignment([[0, -1, -1, -1]], [[1, -1, -1, -1]])
    gt_boxes = torch.tensor([[[0.0, 0.0, 16.0, 16.0]]])
    losses = gfl_loss(
        torch.zeros(1, 4, 2),
        torch.zeros(1, 4, 32),
        cells,
        torch.full((4,), 8.0),
        assignment,
        gt_boxes,
    )
    # the golden case above, with the weight 0.5 of the one positive: sums, not means
    iou = 4 / 49
    torch.testing.assert_close(
        losses["qfl"], torch.tensor((7 * LN2 / 4 + LN2 * (0.5 - iou) ** 2) / 10)
    )
    torch.testing.assert_close(losses["bbox"], torch.tensor(2 * 0.5 * (1 - iou) / 10))
    torch.testing.assert_close(losses["dfl"], torch.tensor(0.25 * 0.5 * 4 * LN8 / (4 * 10)))
