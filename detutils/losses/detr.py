"""The set loss of (Deformable) DETR: focal classification, L1 and GIoU on matched queries.

After Hungarian matching (``detutils.assigners.assign_hungarian``) each query has one
target: a box and its class, or "no object". On one decoder layer's output:

- class: sigmoid focal loss (alpha 0.25, gamma 2) of every query against the one-hot
  class of its box (all zeros for "no object"), summed and divided by the matched
  queries of the batch (at least 1; averaged over processes under DDP), weight 2;
- L1: on the matched queries' boxes in cxcywh divided by the image size, summed over
  the four coordinates, same divisor, weight 5;
- GIoU: 1 - GIoU of the matched boxes in pixels, same divisor, weight 2.

Deformable DETR adds this loss on every decoder layer (each matched on its own: the
auxiliary losses), and with two stages on the encoder's proposals, matched against the
same boxes with every label set to class 0 (the proposals only say "object here").
The divisor is the matched queries: min(Q, M) per image, the number of boxes whenever
there are fewer boxes than queries.

Reference: mmdet 3.3 ``DETRHead.loss_by_feat_single`` / ``_get_targets_single`` and
``DeformableDETRHead.loss_by_feat`` (``mmdet/models/dense_heads/``); tests compare with
values recorded from it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detutils.assigners.result import AssignResult
from detutils.boxes import box_iou_aligned, cxcywh_norm_to_xyxy, xyxy_to_cxcywh_norm
from detutils.distributed import all_reduce_mean
from detutils.losses.focal import sigmoid_focal_loss

__all__ = ["set_loss", "set_loss_on_targets", "set_targets"]


def set_targets(
    assignment: AssignResult,
    targets: list[dict[str, Tensor]],
    num_classes: int,
    image_size: tuple[int, int],
    class_agnostic: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """What each query learns, from a batched assignment.

    Args:
        assignment: fields (B, Q), ``gt_index`` into each image's boxes (-1: none).
        targets: B dicts ``{"boxes": (M_i, 4) xyxy px, "labels": (M_i,)}``.
        num_classes: C.
        image_size: (H, W) px.
        class_agnostic: every matched query learns class 0 (the encoder's proposals).

    Returns:
        class targets (B, Q, C) one-hot floats (zeros for "no object"), box targets
        (B, Q, 4) cxcywh normalised (zeros where unmatched), positive (B, Q) bool.
    """
    positive = assignment.gt_index >= 0
    batch, num_queries = positive.shape
    device = assignment.gt_index.device
    class_targets = torch.zeros(batch, num_queries, num_classes, device=device)
    box_targets = torch.zeros(batch, num_queries, 4, device=device)
    for image, target in enumerate(targets):
        queries = positive[image].nonzero().squeeze(1)
        if queries.numel() == 0:
            continue
        matched = assignment.gt_index[image, queries]
        labels = target["labels"][matched].long()
        if class_agnostic:
            labels = torch.zeros_like(labels)
        class_targets[image, queries, labels] = 1.0
        boxes = target["boxes"][matched].float()
        box_targets[image, queries] = xyxy_to_cxcywh_norm(boxes, image_size)
    return class_targets, box_targets, positive


def set_loss(
    cls_logits: Tensor,
    boxes_cxcywh_norm: Tensor,
    assignment: AssignResult,
    targets: list[dict[str, Tensor]],
    image_size: tuple[int, int],
    cls_weight: float = 2.0,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
    class_agnostic: bool = False,
) -> dict[str, Tensor]:
    """The three terms on one set of predictions (one decoder layer, or the encoder).

    Args:
        cls_logits: (B, Q, C) raw class scores.
        boxes_cxcywh_norm: (B, Q, 4) predicted boxes, cxcywh in [0, 1].
        assignment: the Hungarian matching of these predictions, fields (B, Q).
        targets: B dicts ``{"boxes": (M_i, 4) xyxy px, "labels": (M_i,)}``.
        image_size: (H, W) px of the network input.
        cls_weight, l1_weight, giou_weight: loss weights (mmdet: 2, 5, 2).
        alpha, gamma: of the focal loss.
        class_agnostic: match labels all 0 (the two-stage encoder's proposals).

    Returns:
        ``{"cls", "l1", "giou"}`` scalars, each weighted and divided by the matched
        queries of the batch (averaged over processes, at least 1).
    """
    if not cls_logits.shape[:2] == boxes_cxcywh_norm.shape[:2] == assignment.gt_index.shape:
        raise ValueError("cls_logits, boxes_cxcywh_norm and assignment must share (B, Q)")
    num_classes = cls_logits.shape[-1]
    class_targets, box_targets, positive = set_targets(
        assignment, targets, num_classes, image_size, class_agnostic
    )
    return set_loss_on_targets(
        cls_logits, boxes_cxcywh_norm, class_targets, box_targets, positive, image_size,
        cls_weight=cls_weight, l1_weight=l1_weight, giou_weight=giou_weight, alpha=alpha,
        gamma=gamma,
    )  # fmt: skip


def set_loss_on_targets(
    cls_logits: Tensor,
    boxes_cxcywh_norm: Tensor,
    class_targets: Tensor,
    box_targets: Tensor,
    positive: Tensor,
    image_size: tuple[int, int],
    cls_weight: float = 2.0,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
    query_weights: Tensor | None = None,
) -> dict[str, Tensor]:
    """The three terms when each query's target is already known (no matching here):
    after :func:`set_targets`, or for Co-DETR's positive queries, whose targets the
    auxiliary heads' assignment gave.

    Args:
        cls_logits: (B, Q, C) raw class scores.
        boxes_cxcywh_norm: (B, Q, 4) predicted boxes, cxcywh in [0, 1].
        class_targets: (B, Q, C) one-hot floats, zeros for "no object".
        box_targets: (B, Q, 4) cxcywh in [0, 1] (read where ``positive``).
        positive: (B, Q) bool, the queries that learn a box.
        image_size: (H, W) px.
        cls_weight, l1_weight, giou_weight, alpha, gamma: as :func:`set_loss`.
        query_weights: (B, Q) weights of each query's class term (0: left out, e.g.
            padding); ``None``: all 1.

    Returns:
        ``{"cls", "l1", "giou"}`` scalars, divided by the positives of the batch
        (averaged over processes, at least 1).
    """
    if not cls_logits.shape[:2] == boxes_cxcywh_norm.shape[:2] == positive.shape:
        raise ValueError("cls_logits, boxes_cxcywh_norm and positive must share (B, Q)")
    if class_targets.shape != cls_logits.shape or box_targets.shape != boxes_cxcywh_norm.shape:
        raise ValueError("class_targets and box_targets must be shaped as the predictions")
    normaliser = all_reduce_mean(positive.sum().float()).clamp(min=1.0)
    weight = None if query_weights is None else query_weights[..., None].float()
    cls = (
        sigmoid_focal_loss(
            cls_logits.float(), class_targets, alpha, gamma, reduction="sum", weight=weight
        )
        / normaliser
    )
    pred = boxes_cxcywh_norm.float()[positive]  # [P, 4]
    goal = box_targets[positive]  # [P, 4]
    l1 = (pred - goal).abs().sum() / normaliser
    giou = box_iou_aligned(
        cxcywh_norm_to_xyxy(pred, image_size), cxcywh_norm_to_xyxy(goal, image_size),
        kind="giou", eps=1e-6,
    )  # fmt: skip
    giou_loss = (1 - giou).sum() / normaliser
    return {"cls": cls * cls_weight, "l1": l1 * l1_weight, "giou": giou_loss * giou_weight}
