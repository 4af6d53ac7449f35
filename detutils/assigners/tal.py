"""Task-aligned assignment (TOOD, YOLOv8): the anchors that already predict a box well learn it.

For every ground-truth box j and anchor point a of an image:

1. Candidates: a is a candidate of j when it lies strictly inside box j, every one of
   its four distances to the sides above ``1e-9`` px.
2. Alignment metric t = s^alpha x u^beta, with s the predicted probability of box j's
   class at a and u the CIoU of box j with the box predicted at a, clamped at 0.
   Non-candidates have t = 0. YOLOv8: alpha = 0.5, beta = 6, so the box overlap
   dominates: a CIoU of 0.9 counts 0.53, one of 0.5 counts 0.016.
3. Top k: the k (10) candidates of j with the largest t are its positives.
4. Conflicts: an anchor among the positives of several boxes learns the one whose box
   has the highest CIoU with its prediction (the first box among equal CIoUs), looked up
   over every box the anchor is a candidate of, as the reference's ``argmax`` does.
5. Targets: a positive learns its box, its box's label and, for that class only, the
   score t / t_max(j) x u_max(j), where t_max(j) and u_max(j) are the largest metric and
   the largest CIoU over the final positives of box j: the box's best-aligned anchor
   learns its best CIoU, the others less in proportion to their metric.

Where this module pins down what the reference leaves open, or differs from it:

- Step 1 is the classic YOLOv8 test, with no widening: later ultralytics releases enlarge
  boxes narrower than the smallest stride before it, so that tiny boxes get candidates.
- Step 3, ties and zero metrics. The reference takes ``topk`` over all A anchors, where
  every non-candidate has t = 0: a box with fewer than k candidates of positive t fills
  its top k with zero-metric anchors chosen by ``topk``'s implementation (on the CPU,
  anchors of low index, almost never inside the box). Here an anchor with t = 0 is
  never a positive, and equal metrics go to the lower anchor index, so the result is the
  same on every device. A zero-metric positive of the reference has target score 0 and
  weighs 0 in every YOLOv8 loss term.
- CIoU comes from :func:`detutils.boxes.box_iou_aligned` (where its ``eps`` sits: see
  :mod:`detutils.boxes`), and u^beta is computed by multiplications when beta is a whole
  number (:func:`alignment_power`): ``torch.pow`` rounds differently in its vectorised
  and scalar CPU paths, so that the same value would get two results depending on where
  it sits in a tensor.
- Background anchors get label and gt index ``BACKGROUND`` (-1) and a zero box; the
  reference fills them with box 0's label and box, meaningful only through ``fg_mask``.
  Every loss reads them only through ``fg_mask`` (and ``scores``, zero there), as here.

:func:`assign_task_aligned_dense` is the reference's dense formulation: (B, M, A)
tensors for every box and anchor of the batch, plus a (B, M, A, 4) one for the inside
test. At B = 16, M = 500 and A = 8400 one (B, M, A) float32 tensor takes 269 MB, and
crowded images run out of memory. :func:`assign_task_aligned` gives the same result, bit
for bit, with the boxes taken ``chunk_size`` at a time: only the running best per anchor
is kept between chunks, so its memory grows with B x A, not with B x M x A.
``benchmarks/tal.py`` measures both: at 500 boxes per image the chunked one needs about
a twentieth of the dense one's peak memory (some 0.2 GB against 3.6 GB) and half its
time on one CPU thread.

Reference: Feng et al., "TOOD: Task-aligned One-stage Object Detection", ICCV 2021;
ultralytics ``ultralytics/utils/tal.py`` ``TaskAlignedAssigner`` (8.1: topk 10, alpha 0.5,
beta 6 in ``v8DetectionLoss``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from detutils.assigners.batch import check_gt_boxes
from detutils.assigners.result import BACKGROUND
from detutils.boxes import box_iou_aligned

__all__ = [
    "TaskAlignedResult",
    "alignment_power",
    "assign_task_aligned",
    "assign_task_aligned_dense",
    "top_k_mask",
]

INSIDE_EPS = 1e-9  # px, the margin of step 1
NORM_EPS = 1e-9  # keeps t / t_max finite in step 5


class TaskAlignedResult(NamedTuple):
    """What the task-aligned assigner gives every anchor of a batch; ``fg_mask`` is the truth.

    labels: (B, A) long, class of the box the anchor learns; ``BACKGROUND`` elsewhere.
    boxes: (B, A, 4) xyxy, pixels, that box; zeros elsewhere.
    scores: (B, A, C) float, the soft class target: the normalised metric at the label's
        column, zeros elsewhere (and everywhere for background anchors).
    fg_mask: (B, A) bool, the anchor learns a box.
    gt_index: (B, A) long, index of that box in the padded ground truth; ``BACKGROUND``
        elsewhere.
    """

    labels: Tensor
    boxes: Tensor
    scores: Tensor
    fg_mask: Tensor
    gt_index: Tensor

    @property
    def num_positive(self) -> int:
        """How many anchors learn a box, over the whole batch."""
        return int(self.fg_mask.sum())


def _check_inputs(
    pred_scores: Tensor,
    pred_boxes: Tensor,
    points: Tensor,
    gt_labels: Tensor,
    gt_boxes: Tensor,
    gt_mask: Tensor,
    topk: int,
) -> None:
    """Raise ValueError naming the first argument with a wrong shape, type or value."""
    if pred_scores.ndim != 3:
        raise ValueError(f"pred_scores must be (B, A, C), got {tuple(pred_scores.shape)}")
    batch_size, num_anchors, num_classes = pred_scores.shape
    if pred_boxes.shape != (batch_size, num_anchors, 4):
        raise ValueError(
            f"pred_boxes must be ({batch_size}, {num_anchors}, 4), got {tuple(pred_boxes.shape)}"
        )
    if points.shape != (num_anchors, 2):
        raise ValueError(f"points must be ({num_anchors}, 2), got {tuple(points.shape)}")
    if gt_boxes.ndim != 3 or gt_boxes.shape[0] != batch_size or gt_boxes.shape[2] != 4:
        raise ValueError(f"gt_boxes must be ({batch_size}, M, 4), got {tuple(gt_boxes.shape)}")
    num_gt = gt_boxes.shape[1]
    if gt_labels.shape != (batch_size, num_gt) or gt_mask.shape != (batch_size, num_gt):
        raise ValueError(
            f"gt_labels and gt_mask must be ({batch_size}, {num_gt}), got "
            f"{tuple(gt_labels.shape)} and {tuple(gt_mask.shape)}"
        )
    if gt_mask.dtype != torch.bool:
        raise ValueError(f"gt_mask must be bool, got {gt_mask.dtype}")
    if gt_labels.is_floating_point():
        raise ValueError(f"gt_labels must hold integer class ids, got {gt_labels.dtype}")
    if topk < 1:
        raise ValueError(f"topk must be at least 1, got {topk}")
    if pred_scores.device.type != "cpu":
        # Checking values would cost a device round trip every step; the ground truth
        # was checked on its way in (pad_ground_truth, the dataset), and a NaN score
        # makes the loss NaN, which stops the trainer with the iteration's components.
        return
    real_labels = gt_labels[gt_mask]
    if real_labels.numel() and (real_labels.min() < 0 or real_labels.max() >= num_classes):
        raise ValueError(
            f"gt_labels must lie in [0, {num_classes}) where gt_mask is True, got values from "
            f"{int(real_labels.min())} to {int(real_labels.max())}"
        )
    check_gt_boxes(gt_boxes, gt_mask)
    if not torch.isfinite(pred_scores).all() or not torch.isfinite(pred_boxes).all():
        raise ValueError("pred_scores and pred_boxes must be finite (a NaN in the network?)")
    if pred_scores.numel() and (pred_scores.min() < 0 or pred_scores.max() > 1):
        raise ValueError(
            "pred_scores must be probabilities in [0, 1] (apply sigmoid to the class logits)"
        )


def alignment_power(values: Tensor, exponent: float) -> Tensor:
    """``values ** exponent`` for values >= 0, the same bits wherever a value sits.

    A whole exponent is done by repeated squaring (each multiplication rounds exactly),
    0.5 by ``sqrt``; any other exponent falls back to ``torch.pow``. The result differs
    from ``torch.pow`` by a few units in the last place at most.
    """
    if exponent == 0.5:
        return values.sqrt()
    if exponent != int(exponent) or exponent < 0:
        return values.pow(exponent)
    result, base, remaining = torch.ones_like(values), values, int(exponent)
    while remaining:
        if remaining & 1:
            result = result * base
        remaining >>= 1
        if remaining:
            base = base * base
    return result


def top_k_mask(metric: Tensor, k: int) -> Tensor:
    """(..., A) -> (..., A) bool: the k largest *positive* entries of every row.

    Equal values at the k-th place go to the lowest indices; entries <= 0 are never kept,
    so a row with fewer than k positive entries keeps all of them.
    """
    k = min(k, metric.shape[-1])
    if k == 0 or metric.numel() == 0:
        return torch.zeros_like(metric, dtype=torch.bool)
    kth = metric.topk(k, dim=-1).values[..., -1:]  # (..., 1) the k-th largest value
    above = metric > kth  # (..., A) certainly kept (and positive: kth >= 0 for t >= 0)
    on_kth = (metric == kth) & (kth > 0)  # (..., A) kept while places are left
    room = k - above.sum(-1, keepdim=True)  # (..., 1) places left for them
    crowded = (on_kth.sum(-1, keepdim=True) > room).squeeze(-1)  # (...,) more ties than room
    if crowded.any():  # rare: the lowest indices win
        ties = on_kth[crowded]  # (R, A)
        on_kth[crowded] = ties & (ties.cumsum(-1) <= room[crowded])
    return above | on_kth


def _targets(
    gt_index: Tensor,
    fg_mask: Tensor,
    norm_metric: Tensor,
    gt_labels: Tensor,
    gt_boxes: Tensor,
    num_classes: int,
) -> TaskAlignedResult:
    """(B, A) final gt index, fg mask and normalised metric -> the result's five fields."""
    safe_index = gt_index.clamp(min=0)  # (B, A)
    labels = torch.gather(gt_labels.long(), 1, safe_index)  # (B, A)
    boxes = torch.gather(gt_boxes, 1, safe_index[..., None].expand(-1, -1, 4))  # (B, A, 4)
    labels = torch.where(fg_mask, labels, BACKGROUND)
    boxes = torch.where(fg_mask[..., None], boxes, 0.0)
    norm_metric = norm_metric * fg_mask  # (B, A) zero on the background
    scores = torch.zeros(*fg_mask.shape, num_classes, dtype=norm_metric.dtype, device=boxes.device)
    scores.scatter_(2, labels.clamp(min=0)[..., None], norm_metric[..., None])  # (B, A, C)
    gt_index = torch.where(fg_mask, gt_index, BACKGROUND)
    return TaskAlignedResult(labels, boxes, scores, fg_mask, gt_index)


def _no_boxes(pred_scores: Tensor, pred_boxes: Tensor) -> TaskAlignedResult:
    """The result of a batch without any box (M = 0): every anchor is background."""
    background = torch.full(pred_scores.shape[:2], BACKGROUND, device=pred_scores.device)
    return TaskAlignedResult(
        labels=background,
        boxes=torch.zeros_like(pred_boxes),
        scores=torch.zeros_like(pred_scores),
        fg_mask=torch.zeros_like(background, dtype=torch.bool),
        gt_index=background.clone(),
    )


@torch.no_grad()
def assign_task_aligned_dense(
    pred_scores: Tensor,
    pred_boxes: Tensor,
    points: Tensor,
    gt_labels: Tensor,
    gt_boxes: Tensor,
    gt_mask: Tensor,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
) -> TaskAlignedResult:
    """Task-aligned assignment with (B, M, A) tensors: the reference's formulation.

    The five steps of the module docstring on every (image, box, anchor) triple at once.
    Clear but hungry: see :func:`assign_task_aligned` for the same result in less memory.

    Args:
        pred_scores: (B, A, C) class probabilities (after the sigmoid), detached.
        pred_boxes: (B, A, 4) xyxy, pixels, the predicted boxes.
        points: (A, 2) x, y, pixels, the anchor points.
        gt_labels: (B, M) class ids of the padded ground truth.
        gt_boxes: (B, M, 4) xyxy, pixels.
        gt_mask: (B, M) bool, True for real boxes, False for padding.
        topk: positives per box before conflicts (k).
        alpha, beta: exponents of the class score and of the CIoU in the metric.

    Returns:
        a :class:`TaskAlignedResult`.

    Raises:
        ValueError: shapes disagree; on the CPU also labels out of range, a ground-truth
            box that is not a finite xyxy box, non-finite predictions, scores outside
            [0, 1] (on a GPU the values are not read back: see ``pad_ground_truth``).

    Reference: ultralytics ``TaskAlignedAssigner.forward`` (``get_pos_mask``,
        ``select_highest_overlaps``, ``get_targets``).
    """
    _check_inputs(pred_scores, pred_boxes, points, gt_labels, gt_boxes, gt_mask, topk)
    num_classes = pred_scores.shape[-1]
    if gt_boxes.shape[1] == 0:
        return _no_boxes(pred_scores, pred_boxes)
    labels = torch.where(gt_mask, gt_labels.long(), 0)  # (B, M) padding reads class 0

    # 1. Candidates: the distances from every point to the four sides of every box.
    left_top = points[None, None] - gt_boxes[:, :, None, :2]  # (B, M, A, 2)
    right_bottom = gt_boxes[:, :, None, 2:] - points[None, None]  # (B, M, A, 2)
    sides = torch.cat([left_top, right_bottom], dim=-1)  # (B, M, A, 4)
    candidate = (sides.amin(dim=-1) > INSIDE_EPS) & gt_mask[..., None]  # (B, M, A)

    # 2. The metric, computed on the candidate pairs only; zero elsewhere.
    image, box, anchor = candidate.nonzero(as_tuple=True)  # (P,) each
    pair_overlaps = box_iou_aligned(gt_boxes[image, box], pred_boxes[image, anchor], "ciou")
    pair_overlaps = pair_overlaps.clamp(min=0)  # (P,)
    pair_scores = pred_scores[image, anchor, labels[image, box]]  # (P,)
    overlaps = torch.zeros(candidate.shape, dtype=pred_boxes.dtype, device=pred_boxes.device)
    metric = torch.zeros_like(overlaps)  # (B, M, A)
    overlaps[image, box, anchor] = pair_overlaps
    metric[image, box, anchor] = alignment_power(pair_scores, alpha) * alignment_power(
        pair_overlaps, beta
    )

    # 3. The top k candidates of every box.
    selected = top_k_mask(metric, topk) & candidate  # (B, M, A)

    # 4. An anchor selected by several boxes keeps the box of highest CIoU.
    contested = selected.sum(dim=1) > 1  # (B, A)
    best_box = overlaps.argmax(dim=1)  # (B, A) the first box among equal CIoUs
    is_best = torch.zeros_like(selected).scatter_(1, best_box[:, None], True)  # (B, M, A)
    positive = torch.where(contested[:, None], is_best, selected)  # (B, M, A)
    fg_mask = positive.any(dim=1)  # (B, A)
    gt_index = positive.to(torch.uint8).argmax(dim=1)  # (B, A) the one positive box

    # 5. Normalise: t / t_max(j) x u_max(j) over the final positives of each box j.
    metric = metric * positive
    best_metric = metric.amax(dim=-1, keepdim=True)  # (B, M, 1)
    best_overlap = (overlaps * positive).amax(dim=-1, keepdim=True)  # (B, M, 1)
    norm_metric = (metric * best_overlap / (best_metric + NORM_EPS)).amax(dim=1)  # (B, A)
    return _targets(gt_index, fg_mask, norm_metric, labels, gt_boxes, num_classes)


@torch.no_grad()
def assign_task_aligned(
    pred_scores: Tensor,
    pred_boxes: Tensor,
    points: Tensor,
    gt_labels: Tensor,
    gt_boxes: Tensor,
    gt_mask: Tensor,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
    chunk_size: int = 32,
) -> TaskAlignedResult:
    """Task-aligned assignment, ``chunk_size`` boxes of every image at a time.

    The same five steps and the same result, bit for bit, as
    :func:`assign_task_aligned_dense`. Steps 1 to 3 concern one box at a time, so they
    run on (B, chunk_size, A) slices. Step 4 needs, per anchor, how many boxes selected
    it, the box that did (enough when only one did), and the box of highest CIoU among
    all its boxes (when several did); these are (B, A) tensors updated chunk after
    chunk, boxes in index order, so that the first box wins a tie as ``argmax`` does.
    Step 5 then needs only the metric and CIoU of each anchor's final box.

    Args:
        pred_scores, pred_boxes, points, gt_labels, gt_boxes, gt_mask, topk, alpha, beta:
            as in :func:`assign_task_aligned_dense`.
        chunk_size: boxes per step; memory grows with B x chunk_size x A.

    Returns:
        a :class:`TaskAlignedResult`.

    Raises:
        ValueError: as :func:`assign_task_aligned_dense`, or ``chunk_size < 1``.

    Reference: ultralytics ``TaskAlignedAssigner`` (the semantics, not the layout).
    """
    _check_inputs(pred_scores, pred_boxes, points, gt_labels, gt_boxes, gt_mask, topk)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    dtype = pred_boxes.dtype
    batch_size, num_anchors, num_classes = pred_scores.shape
    if gt_boxes.shape[1] == 0:
        return _no_boxes(pred_scores, pred_boxes)
    labels = torch.where(gt_mask, gt_labels.long(), 0)  # (B, M)

    def state(dtype: torch.dtype) -> Tensor:  # one value per anchor, carried over chunks
        return torch.zeros(batch_size, num_anchors, dtype=dtype, device=pred_boxes.device)

    claims = state(torch.long)  # (B, A) boxes that selected the anchor
    chosen_box, chosen_metric, chosen_overlap = state(torch.long), state(dtype), state(dtype)
    best_box, best_metric, best_overlap = state(torch.long), state(dtype), state(dtype)
    x, y = points[:, 0], points[:, 1]  # (A,) each

    for start in range(0, gt_boxes.shape[1], chunk_size):
        boxes = gt_boxes[:, start : start + chunk_size, :, None]  # (B, K, 4, 1)
        # 1. Candidates, four comparisons instead of a (B, K, A, 4) tensor.
        candidate = (
            (x - boxes[:, :, 0] > INSIDE_EPS)
            & (y - boxes[:, :, 1] > INSIDE_EPS)
            & (boxes[:, :, 2] - x > INSIDE_EPS)
            & (boxes[:, :, 3] - y > INSIDE_EPS)
            & gt_mask[:, start : start + chunk_size, None]
        )  # (B, K, A)
        # 2. The metric of the candidate pairs.
        image, box, anchor = candidate.nonzero(as_tuple=True)  # (P,) each, box within chunk
        pair_overlaps = box_iou_aligned(
            gt_boxes[image, start + box], pred_boxes[image, anchor], "ciou"
        ).clamp(min=0)  # (P,)
        pair_scores = pred_scores[image, anchor, labels[image, start + box]]  # (P,)
        pair_metric = alignment_power(pair_scores, alpha) * alignment_power(pair_overlaps, beta)
        metric = torch.zeros(candidate.shape, dtype=dtype, device=pred_boxes.device)
        overlaps = torch.zeros_like(metric)  # (B, K, A)
        metric[image, box, anchor] = pair_metric
        overlaps[image, box, anchor] = pair_overlaps
        # 3. Top k per box; record the selecting box of each selected anchor.
        selected = top_k_mask(metric, topk) & candidate  # (B, K, A)
        claims += selected.sum(dim=1)
        image, box, anchor = selected.nonzero(as_tuple=True)
        chosen_box[image, anchor] = start + box
        chosen_metric[image, anchor] = metric[image, box, anchor]
        chosen_overlap[image, anchor] = overlaps[image, box, anchor]
        # 4. Running highest CIoU per anchor; a later chunk wins only if strictly higher.
        chunk_best = overlaps.argmax(dim=1, keepdim=True)  # (B, 1, A)
        chunk_overlap = overlaps.gather(1, chunk_best).squeeze(1)  # (B, A)
        better = chunk_overlap > best_overlap  # (B, A)
        best_box = torch.where(better, start + chunk_best.squeeze(1), best_box)
        best_metric = torch.where(better, metric.gather(1, chunk_best).squeeze(1), best_metric)
        best_overlap = torch.where(better, chunk_overlap, best_overlap)

    # 4. The final box of every anchor.
    fg_mask, contested = claims > 0, claims > 1  # (B, A)
    gt_index = torch.where(contested, best_box, chosen_box)  # (B, A)
    final_metric = torch.where(contested, best_metric, chosen_metric) * fg_mask
    final_overlap = torch.where(contested, best_overlap, chosen_overlap) * fg_mask

    # 5. Per box, the largest metric and CIoU over its final positives, then normalise.
    per_box = torch.zeros(gt_boxes.shape[:2], dtype=dtype, device=pred_boxes.device)  # (B, M)
    box_metric = per_box.scatter_reduce(1, gt_index, final_metric, "amax")  # (B, M)
    box_overlap = per_box.scatter_reduce(1, gt_index, final_overlap, "amax")  # (B, M)
    norm_metric = (
        final_metric * box_overlap.gather(1, gt_index) / (box_metric.gather(1, gt_index) + NORM_EPS)
    )  # (B, A)
    return _targets(gt_index, fg_mask, norm_metric, labels, gt_boxes, num_classes)
