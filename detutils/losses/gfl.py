"""The loss of a GFL head (NanoDet): quality focal + GIoU + distribution focal.

Given the head's outputs over all priors and an assignment (ATSS), the loss is built in
these steps, the numbers of NanoDet-m in brackets:

1. The normaliser of the classification loss: the positives of the batch, each image
   counting at least 1, averaged over processes under DDP, at least 1.
2. For every positive prior: its centre and its target box in grid units (pixels
   divided by the stride of its level); the predicted distances (the expected values of
   the four distributions over the bins 0 .. R [R = 7]) decoded into a box around the
   centre; and its weight, the highest class probability the head gives it (detached):
   priors the head already finds confident count more in the box losses.
3. Quality targets: the IoU of each positive's predicted box (detached) with its target
   box. The true class of a positive learns that IoU; everything else learns 0.
4. Quality focal loss over all priors and classes [beta = 2, weight 1], divided by the
   normaliser of step 1.
5. GIoU loss over the positives, weighted by their weights, divided by the sum of the
   weights (averaged over processes) [weight 2].
6. Distribution focal loss over the positives' 4 sides, target distances clamped to
   R - 0.1, weighted likewise, divided by 4 x the sum of the weights [weight 0.25].

When no image of the batch (on any process) has a positive, NanoDet returns zero for
all three terms, the quality focal loss included; so does this function (mmdet keeps
the quality focal loss on the negatives and zeroes the other two).

Two places where NanoDet and mmdet's ``GFLHead`` differ, and which one this follows:
the sum of the weights is used as it is (NanoDet; mmdet clamps it to at least 1, so
early in training, when every weight is near 0.01 and a batch has fewer than 100
positives, mmdet's box losses are the weighted sums, smaller than the weighted means by
the factor the sum itself); and the averages over processes are real means (mmdet;
NanoDet's ``reduce_mean`` all-reduces a temporary copy and returns the local value).

Reference: NanoDet ``GFLHead.loss`` / ``loss_single`` (``nanodet/model/head/gfl_head.py``);
mmdet ``GFLHead.loss_by_feat``; Li et al., "Generalized Focal Loss", NeurIPS 2020.
"""

import torch
from torch import Tensor

from detutils.assigners.result import IGNORE, AssignResult
from detutils.boxes import box_iou_aligned
from detutils.coders import decode_distance, dfl_distances, encode_distance
from detutils.distributed import all_reduce_mean
from detutils.losses.dfl import distribution_focal_loss
from detutils.losses.focal import positives_normaliser, quality_focal_loss
from detutils.losses.iou import iou_loss
from detutils.trace import record

__all__ = ["gfl_loss"]


def _check_inputs(
    cls_logits: Tensor,
    dist_logits: Tensor,
    priors: Tensor,
    prior_strides: Tensor,
    assignment: AssignResult,
    gt_boxes: Tensor,
) -> int:
    """Raise ValueError on inconsistent shapes; return R."""
    if cls_logits.ndim != 3:
        raise ValueError(f"cls_logits must be (B, A, C), got {tuple(cls_logits.shape)}")
    batch_size, num_priors, _ = cls_logits.shape
    if dist_logits.shape[:2] != (batch_size, num_priors) or dist_logits.shape[-1] % 4:
        raise ValueError(
            f"dist_logits must be ({batch_size}, {num_priors}, 4 (R + 1)), got "
            f"{tuple(dist_logits.shape)}"
        )
    if priors.shape != (num_priors, 4) or prior_strides.shape != (num_priors,):
        raise ValueError(
            f"priors must be ({num_priors}, 4) and prior_strides ({num_priors},), got "
            f"{tuple(priors.shape)} and {tuple(prior_strides.shape)}"
        )
    for name, field in zip(AssignResult._fields, assignment, strict=True):
        if field.shape != (batch_size, num_priors):
            raise ValueError(
                f"assignment.{name} must be ({batch_size}, {num_priors}), got {tuple(field.shape)}"
            )
    if gt_boxes.ndim != 3 or gt_boxes.shape[0] != batch_size or gt_boxes.shape[-1] != 4:
        raise ValueError(f"gt_boxes must be ({batch_size}, M, 4), got {tuple(gt_boxes.shape)}")
    reg_max = dist_logits.shape[-1] // 4 - 1
    if reg_max < 1:
        raise ValueError(f"dist_logits needs at least 2 bins per side, got {dist_logits.shape[-1]}")
    return reg_max


def gfl_loss(
    cls_logits: Tensor,
    dist_logits: Tensor,
    priors: Tensor,
    prior_strides: Tensor,
    assignment: AssignResult,
    gt_boxes: Tensor,
    *,
    beta: float = 2.0,
    qfl_weight: float = 1.0,
    bbox_weight: float = 2.0,
    dfl_weight: float = 0.25,
    dfl_eps: float = 0.1,
) -> dict[str, Tensor]:
    """Quality focal, GIoU and distribution focal losses of a GFL head over a batch.

    Args:
        cls_logits: (B, A, C) class logits of every prior.
        dist_logits: (B, A, 4 (R + 1)) distribution logits, sides l, t, r, b, each
            R + 1 bins (side-major, as ``detutils.coders.dfl_distances`` reads them).
        priors: (A, 4) xyxy, pixels: the priors the assignment was made on; only their
            centres are used (the points the distances start from).
        prior_strides: (A,) stride of each prior's level, pixels.
        assignment: (B, A) fields, from ``assign_atss_batched``; ``IGNORE`` priors take
            part in no loss.
        gt_boxes: (B, M, 4) xyxy, pixels, padded (``assignment.gt_index`` points into it).
        beta: quality focal exponent.
        qfl_weight, bbox_weight, dfl_weight: the weights of the three terms.
        dfl_eps: distance targets are clamped to ``R - dfl_eps`` (see :mod:`detutils.losses.dfl`).

    Returns:
        ``{"qfl", "bbox", "dfl", "loss"}`` scalars, weights applied, ``loss`` their sum.

    Raises:
        ValueError: inconsistent shapes.

    Reference: NanoDet ``GFLHead.loss`` (NanoDet-m: QFL beta 2 weight 1, DFL weight 0.25,
        GIoU weight 2, R = 7).
    """
    reg_max = _check_inputs(cls_logits, dist_logits, priors, prior_strides, assignment, gt_boxes)
    # float32 throughout, also under mixed precision: autocast would run the integral's
    # matrix product (the predicted distances) in float16
    with torch.autocast(cls_logits.device.type, enabled=False):
        return _gfl_loss(
            cls_logits.float(),
            dist_logits.float(),
            priors.float(),
            prior_strides,
            assignment,
            gt_boxes,
            reg_max,
            beta=beta,
            qfl_weight=qfl_weight,
            bbox_weight=bbox_weight,
            dfl_weight=dfl_weight,
            dfl_eps=dfl_eps,
        )


def _gfl_loss(
    cls_logits: Tensor,
    dist_logits: Tensor,
    priors: Tensor,
    prior_strides: Tensor,
    assignment: AssignResult,
    gt_boxes: Tensor,
    reg_max: int,
    *,
    beta: float,
    qfl_weight: float,
    bbox_weight: float,
    dfl_weight: float,
    dfl_eps: float,
) -> dict[str, Tensor]:
    """The six steps of :func:`gfl_loss`, in float32."""
    num_classes = cls_logits.shape[-1]
    positive = assignment.gt_index >= 0  # (B, A)

    # 1. Normaliser of the classification loss: positives, at least 1 per image.
    num_positive = positives_normaliser(positive)

    # 2. Positives: centres and target boxes in grid units, predicted boxes, weights.
    image_index, prior_index = positive.nonzero(as_tuple=True)  # (P,), (P,)
    strides = prior_strides[prior_index].to(cls_logits.dtype)[:, None]  # (P, 1)
    centers = (priors[prior_index, :2] + priors[prior_index, 2:]) / 2 / strides  # (P, 2)
    matched = assignment.gt_index[image_index, prior_index]  # (P,)
    target_boxes = gt_boxes[image_index, matched].to(cls_logits.dtype) / strides  # (P, 4)
    positive_dist = dist_logits[image_index, prior_index]  # (P, 4 (R + 1))
    pred_boxes = decode_distance(centers, dfl_distances(positive_dist))  # (P, 4)
    record("positive_priors", prior_index)
    record("target_boxes", target_boxes)
    record("pred_boxes", pred_boxes)
    with torch.no_grad():
        weights = cls_logits.sigmoid().amax(dim=-1)[image_index, prior_index]  # (P,)

    # 3. Quality targets: the IoU of each positive's predicted box with its target.
    # No eps: a positive's target box has a positive area (ATSS keeps only priors whose
    # centre is inside it), so every union and enclosing area here is positive, and the
    # values equal NanoDet's, which divides by max(union, 1e-6).
    scores = torch.zeros_like(positive, dtype=cls_logits.dtype)  # (B, A)
    scores[image_index, prior_index] = box_iou_aligned(pred_boxes.detach(), target_boxes, eps=0.0)
    record("weights", weights)
    record("quality_targets", scores)

    # 4. Quality focal loss over every prior and class (IGNORE priors weigh 0).
    loss_qfl = quality_focal_loss(
        cls_logits.reshape(-1, num_classes),  # (B A, C)
        assignment.labels.reshape(-1),
        scores.reshape(-1),
        beta=beta,
        weight=(assignment.gt_index != IGNORE).reshape(-1).to(cls_logits.dtype),
        avg_factor=num_positive,
    )

    weight_sum = all_reduce_mean(weights.sum())
    # No positive anywhere: NanoDet returns zeros for all three terms. The test stays a
    # tensor (no read-back to Python, so no pause of the device every step).
    any_positive = weight_sum > 0
    weight_sum = weight_sum.clamp(min=torch.finfo(weight_sum.dtype).tiny)

    # 5. GIoU loss over the positives, weighted mean.
    loss_bbox = iou_loss(
        pred_boxes, target_boxes, "giou", weight=weights, avg_factor=weight_sum, eps=0.0
    )

    # 6. Distribution focal loss over the positives' four sides.
    target_distances = encode_distance(centers, target_boxes, max_dist=reg_max, eps=dfl_eps)
    record("target_distances", target_distances)
    loss_dfl = distribution_focal_loss(
        positive_dist.reshape(-1, reg_max + 1),  # (4 P, R + 1)
        target_distances.reshape(-1),  # (4 P,)
        weight=weights[:, None].expand(-1, 4).reshape(-1),  # (4 P,)
        avg_factor=4.0 * weight_sum,
    )
    terms = {"qfl": qfl_weight * loss_qfl, "bbox": bbox_weight * loss_bbox}
    terms["dfl"] = dfl_weight * loss_dfl
    losses = {name: torch.where(any_positive, term, term * 0.0) for name, term in terms.items()}
    losses["loss"] = losses["qfl"] + losses["bbox"] + losses["dfl"]
    return losses
