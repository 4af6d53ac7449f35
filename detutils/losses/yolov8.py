"""The YOLOv8 loss: BCE on soft class targets, CIoU box loss and DFL, on task-aligned targets.

Given the head's outputs over all anchor points (class logits and four distributions of
R + 1 = 16 bins per anchor), the loss of a batch is built in these steps:

1. Decode: each side's distance is the expected bin of its distribution, in strides;
   the predicted box is the anchor point minus / plus those distances, in grid units
   (pixels divided by the stride of the anchor's level).
2. Assign, without gradient: :func:`detutils.assigners.assign_task_aligned` on the
   sigmoid of the class logits and the predicted boxes in pixels (grid units times the
   stride), with the anchor points and the ground truth in pixels.
3. The normaliser: the sum of all target scores of the batch, at least 1.
4. cls: BCE with logits of every (anchor, class) against its target score (the
   normalised alignment metric at the label of a positive, 0 everywhere else), summed
   and divided by the normaliser.
5. box: over the positives, 1 - CIoU(predicted box, target box), both in grid units,
   weighted by the anchor's target score, summed and divided by the normaliser.
6. dfl: over the positives, the distribution focal loss of each side
   (:func:`detutils.losses.distribution_focal_loss`) averaged over the four sides,
   target distances in grid units clamped to [0, R - 0.01] = [0, 14.99], weighted and
   normalised as the box loss.
7. Gains: box 7.5, cls 0.5, dfl 1.5.

What is returned, and how it relates to the reference's two return values:
``v8DetectionLoss`` returns ``(loss.sum() * batch_size, loss.detach())``: the value it
calls ``backward`` on is the sum of the three terms *times the batch size*, and
``loss_items`` are the three terms after their gains and before that multiplication,
detached (what its training log prints as box_loss, cls_loss, dfl_loss). Here ``"box"``,
``"cls"`` and ``"dfl"`` are those three terms (with their gradient) and ``"loss"`` is
their sum, *not* multiplied by the batch size: as for every detector of the course the
loss does not grow with the batch, and scaling it is the trainer's business. The
reference's backward value is ``losses["loss"] * B``.

With no positive in the batch the box and DFL terms are zero, as in the reference; the
class loss still teaches every anchor "no object".

Reference: ultralytics ``ultralytics/utils/loss.py`` (8.1) ``v8DetectionLoss``,
``BboxLoss`` (``_df_loss``); ``ultralytics/cfg/default.yaml`` (box 7.5, cls 0.5, dfl 1.5).
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from detutils.assigners.tal import TaskAlignedResult, assign_task_aligned
from detutils.boxes import box_iou_aligned
from detutils.coders import decode_distance, dfl_distances, encode_distance
from detutils.losses.dfl import distribution_focal_loss
from detutils.trace import record

__all__ = ["yolov8_assign", "yolov8_loss"]

DFL_EPS = 0.01  # targets stay below the last bin R by this much (ultralytics bbox2dist)


def _check_inputs(
    cls_logits: Tensor, dist_logits: Tensor, points: Tensor, point_strides: Tensor
) -> int:
    """Raise ValueError on inconsistent shapes; return R (bins per side minus one)."""
    if cls_logits.ndim != 3:
        raise ValueError(f"cls_logits must be (B, A, C), got {tuple(cls_logits.shape)}")
    batch_size, num_anchors, _ = cls_logits.shape
    if dist_logits.shape[:2] != (batch_size, num_anchors) or dist_logits.shape[-1] % 4:
        raise ValueError(
            f"dist_logits must be ({batch_size}, {num_anchors}, 4 (R + 1)), got "
            f"{tuple(dist_logits.shape)}"
        )
    if dist_logits.shape[-1] < 8:
        raise ValueError(f"dist_logits needs at least 2 bins per side, got {dist_logits.shape}")
    if points.shape != (num_anchors, 2) or point_strides.shape != (num_anchors,):
        raise ValueError(
            f"points must be ({num_anchors}, 2) and point_strides ({num_anchors},), got "
            f"{tuple(points.shape)} and {tuple(point_strides.shape)}"
        )
    return dist_logits.shape[-1] // 4 - 1


def _decode_grid(
    dist_logits: Tensor, points: Tensor, point_strides: Tensor
) -> tuple[Tensor, Tensor]:
    """Step 1: anchor points (A, 2) and predicted boxes (B, A, 4) xyxy, in grid units."""
    grid_points = points.float() / point_strides.float()[:, None]  # (A, 2) cell centres
    distances = record("pred_distances", dfl_distances(dist_logits.float()))  # (B, A, 4)
    pred_boxes = record("pred_boxes", decode_distance(grid_points, distances))  # (B, A, 4)
    return grid_points, pred_boxes


def _assign(
    assigner: Callable[..., TaskAlignedResult],
    cls_logits: Tensor,
    pred_boxes: Tensor,
    points: Tensor,
    point_strides: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    **hyperparameters: float,
) -> TaskAlignedResult:
    """Step 2: the assigner on detached probabilities and boxes in pixels (grid units x
    stride), with the anchor points and the ground truth in pixels."""
    return assigner(
        cls_logits.detach().float().sigmoid(),
        pred_boxes.detach() * point_strides.float()[:, None],
        points.float(),
        gt_labels,
        gt_boxes.float(),
        gt_mask,
        **hyperparameters,
    )


@torch.no_grad()
def yolov8_assign(
    cls_logits: Tensor,
    dist_logits: Tensor,
    points: Tensor,
    point_strides: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    *,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
    assigner: Callable[..., TaskAlignedResult] = assign_task_aligned,
) -> TaskAlignedResult:
    """Steps 1 and 2 of the loss alone: decode the predictions, then assign.

    The task-aligned assigner looks at the predictions (class probabilities and boxes),
    so who learns what changes as the network learns. Arguments as :func:`yolov8_loss`.

    Returns:
        the :class:`~detutils.assigners.TaskAlignedResult` that ``yolov8_loss`` makes
        for the same inputs (pass it as ``assignment=`` to skip that step there).
    """
    _check_inputs(cls_logits, dist_logits, points, point_strides)
    with torch.autocast(cls_logits.device.type, enabled=False):
        _, pred_boxes = _decode_grid(dist_logits, points, point_strides)
        return _assign(
            assigner, cls_logits, pred_boxes, points, point_strides, gt_boxes, gt_labels,
            gt_mask, topk=topk, alpha=alpha, beta=beta,
        )  # fmt: skip


def yolov8_loss(
    cls_logits: Tensor,
    dist_logits: Tensor,
    points: Tensor,
    point_strides: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    *,
    box_gain: float = 7.5,
    cls_gain: float = 0.5,
    dfl_gain: float = 1.5,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
    assigner: Callable[..., TaskAlignedResult] = assign_task_aligned,
    assignment: TaskAlignedResult | None = None,
) -> dict[str, Tensor]:
    """The YOLOv8 loss of a batch: the seven steps of the module docstring.

    Args:
        cls_logits: (B, A, C) class logits of every anchor point.
        dist_logits: (B, A, 4 (R + 1)) distribution logits, sides l, t, r, b, each R + 1
            bins (side-major, as :func:`detutils.coders.dfl_distances` reads them).
        points: (A, 2) x, y, pixels, the anchor points (cell centres).
        point_strides: (A,) stride of each point's level, pixels.
        gt_boxes: (B, M, 4) xyxy, pixels, padded ground truth.
        gt_labels: (B, M) class ids.
        gt_mask: (B, M) bool, True for real boxes.
        box_gain, cls_gain, dfl_gain: the weights of the three terms.
        topk, alpha, beta: of the task-aligned assigner.
        assigner: :func:`~detutils.assigners.assign_task_aligned` or its dense twin.
        assignment: the result of step 2 made beforehand (:func:`yolov8_assign` on the
            same outputs and ground truth); ``None`` assigns here.

    Returns:
        ``{"box", "cls", "dfl", "loss"}`` scalars, gains applied, ``loss`` their sum (not
        multiplied by B: see the module docstring).

    Raises:
        ValueError: inconsistent shapes (and what the assigner raises).

    Reference: ultralytics ``v8DetectionLoss.__call__`` (its ``loss_items``).
    """
    reg_max = _check_inputs(cls_logits, dist_logits, points, point_strides)
    # float32 throughout, also under mixed precision (softmax, CIoU and BCE sums)
    with torch.autocast(cls_logits.device.type, enabled=False):
        cls_logits, dist_logits = cls_logits.float(), dist_logits.float()
        strides = point_strides.float()[:, None]  # (A, 1)

        # 1. Decode the predicted boxes, in grid units.
        grid_points, pred_boxes = _decode_grid(dist_logits, points, point_strides)

        # 2. Assign, in pixels, on detached predictions.
        if assignment is None:
            assignment = _assign(
                assigner, cls_logits, pred_boxes, points, point_strides, gt_boxes, gt_labels,
                gt_mask, topk=topk, alpha=alpha, beta=beta,
            )  # fmt: skip
        record("assignment", assignment)
        target_scores, fg_mask = assignment.scores, assignment.fg_mask  # (B, A, C), (B, A)

        # 3. The normaliser.
        target_scores_sum = record("target_scores_sum", target_scores.sum().clamp(min=1))

        # 4. Class loss over every anchor and class.
        loss_cls = F.binary_cross_entropy_with_logits(cls_logits, target_scores, reduction="sum")
        loss_cls = loss_cls / target_scores_sum

        # 5. Box loss over the positives, weighted by their target scores.
        anchor = fg_mask.nonzero(as_tuple=True)[1]  # (P,) anchor index of each positive
        weight = record("weight", target_scores.sum(-1)[fg_mask])  # (P,)
        target_boxes = assignment.boxes[fg_mask] / strides[anchor]  # (P, 4) grid units
        ciou = box_iou_aligned(pred_boxes[fg_mask], target_boxes, "ciou")  # (P,)
        loss_box = ((1.0 - ciou) * weight).sum() / target_scores_sum

        # 6. DFL over the positives' four sides, averaged over the sides.
        target_distances = encode_distance(
            grid_points[anchor], target_boxes, max_dist=reg_max, eps=DFL_EPS
        )  # (P, 4) in [0, R - 0.01]
        loss_dfl = distribution_focal_loss(
            dist_logits[fg_mask].reshape(-1, reg_max + 1),  # (4 P, R + 1)
            target_distances.reshape(-1),  # (4 P,)
            reduction="none",
        ).reshape(-1, 4)  # (P, 4)
        loss_dfl = (loss_dfl.mean(-1) * weight).sum() / target_scores_sum

    losses = {"box": box_gain * loss_box, "cls": cls_gain * loss_cls, "dfl": dfl_gain * loss_dfl}
    losses["loss"] = losses["box"] + losses["cls"] + losses["dfl"]
    return losses
