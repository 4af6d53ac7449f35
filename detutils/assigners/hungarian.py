"""Hungarian matching: DETR's one-to-one assignment of queries to ground-truth boxes.

Each image's Q queries and M boxes get a cost matrix (Q, M), the sum of three weighted
terms, and the assignment of least total cost that gives every box a different query
(``scipy.optimize.linear_sum_assignment``). min(Q, M) queries learn a box; every other
query learns "no object". Since no two queries learn the same box, a trained DETR
predicts each object once, and needs no NMS.

Costs, for query q and box m of class c (weights: mmdet's Deformable DETR config):

- class (2): the focal loss of q saying "yes, c" minus that of q saying "no, c", with p
  = sigmoid(logit of class c): ``alpha (1 - p)^gamma (-log p) - (1 - alpha) p^gamma
  (-log(1 - p))``; a query already confident in c costs little.
- L1 (5): the L1 distance between the boxes in cxcywh divided by the image size.
- GIoU (2): minus the GIoU between the boxes (in pixels).

Reference: mmdet 3.3 ``HungarianAssigner`` with ``FocalLossCost``, ``BBoxL1Cost``
(``box_format="xywh"``) and ``IoUCost(iou_mode="giou")``
(``mmdet/models/task_modules/assigners/``); facebookresearch/detr ``models/matcher.py``;
Carion et al., "End-to-End Object Detection with Transformers", ECCV 2020.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from detutils.assigners.result import BACKGROUND, AssignResult
from detutils.boxes import box_iou, box_iou_aligned, xyxy_to_cxcywh_norm

__all__ = ["assign_hungarian", "assign_hungarian_batched", "hungarian_costs"]


def hungarian_costs(
    cls_logits: Tensor,
    pred_boxes: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    image_size: tuple[int, int],
    cls_weight: float = 2.0,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
    eps: float = 1e-12,
) -> dict[str, Tensor]:
    """The three weighted cost matrices of one image (see the module docstring).

    Args:
        cls_logits: (Q, C) raw class scores.
        pred_boxes: (Q, 4) xyxy px.
        gt_boxes: (M, 4) xyxy px.
        gt_labels: (M,) long, 0 .. C-1.
        image_size: (H, W) px, the divisor of the L1 cost.
        eps: inside the logs, as mmdet's ``FocalLossCost``.

    Returns:
        ``{"cls": (Q, M), "l1": (Q, M), "giou": (Q, M)}``, each already weighted (float32,
        no gradient); the matching minimises their sum.
    """
    with torch.no_grad():
        probs = cls_logits.float().sigmoid()
        negative = -(1 - probs + eps).log() * (1 - alpha) * probs.pow(gamma)  # [Q, C]
        positive = -(probs + eps).log() * alpha * (1 - probs).pow(gamma)  # [Q, C]
        cls_cost = (positive - negative)[:, gt_labels]  # [Q, M]
        pred_norm = xyxy_to_cxcywh_norm(pred_boxes.float(), image_size)
        gt_norm = xyxy_to_cxcywh_norm(gt_boxes.float(), image_size)
        l1_cost = torch.cdist(pred_norm, gt_norm, p=1)  # [Q, M]
        giou_cost = -box_iou(pred_boxes.float(), gt_boxes.float(), kind="giou", eps=1e-6)
    return {
        "cls": cls_cost * cls_weight,
        "l1": l1_cost * l1_weight,
        "giou": giou_cost * giou_weight,
    }


def assign_hungarian(
    cls_logits: Tensor,
    pred_boxes: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    image_size: tuple[int, int],
    cls_weight: float = 2.0,
    l1_weight: float = 5.0,
    giou_weight: float = 2.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> AssignResult:
    """One-to-one assignment of Q queries to M boxes of one image, at least total cost.

    Args:
        cls_logits: (Q, C) raw class scores of the queries.
        pred_boxes: (Q, 4) xyxy px, the queries' boxes.
        gt_boxes: (M, 4) xyxy px.
        gt_labels: (M,) long, 0 .. C-1.
        image_size: (H, W) px.
        cls_weight, l1_weight, giou_weight: weights of the three costs.
        alpha, gamma: of the focal class cost.

    Returns:
        ``AssignResult`` with fields (Q,): the box each query learns (``BACKGROUND``
        for the unmatched), its label, and the IoU of the query's box with it (0 for
        the unmatched). With M > Q (more boxes than queries) Q boxes get a query and
        the other M - Q none: they are left out of the loss, as in mmdet (give the model
        more queries than objects per image). No box or no query: all background.

    Raises:
        ValueError: shapes that do not agree, or a label outside 0 .. C-1.
    """
    num_queries, num_classes = cls_logits.shape
    if pred_boxes.shape != (num_queries, 4):
        raise ValueError(f"pred_boxes must be ({num_queries}, 4), got {tuple(pred_boxes.shape)}")
    if gt_boxes.ndim != 2 or gt_boxes.shape[-1] != 4 or gt_labels.shape != gt_boxes.shape[:1]:
        raise ValueError(
            f"gt_boxes (M, 4) and gt_labels (M,) must agree, got {tuple(gt_boxes.shape)} "
            f"and {tuple(gt_labels.shape)}"
        )
    if gt_labels.numel() and (gt_labels.min() < 0 or gt_labels.max() >= num_classes):
        raise ValueError(f"gt_labels must lie in 0 .. {num_classes - 1}, got {gt_labels.tolist()}")
    device = cls_logits.device
    gt_index = torch.full((num_queries,), BACKGROUND, dtype=torch.long, device=device)
    labels = torch.full((num_queries,), BACKGROUND, dtype=torch.long, device=device)
    iou = torch.zeros(num_queries, device=device)
    if num_queries == 0 or len(gt_boxes) == 0:
        return AssignResult(gt_index, labels, iou)
    costs = hungarian_costs(
        cls_logits, pred_boxes, gt_boxes, gt_labels, image_size,
        cls_weight, l1_weight, giou_weight, alpha, gamma,
    )  # fmt: skip
    cost = (costs["cls"] + costs["l1"] + costs["giou"]).cpu()
    rows, cols = linear_sum_assignment(cost.numpy())
    rows = torch.as_tensor(rows, dtype=torch.long, device=device)
    cols = torch.as_tensor(cols, dtype=torch.long, device=device)
    gt_index[rows] = cols
    labels[rows] = gt_labels[cols].long()
    with torch.no_grad():
        iou[rows] = box_iou_aligned(pred_boxes[rows].float(), gt_boxes[cols].float())
    return AssignResult(gt_index, labels, iou)


def assign_hungarian_batched(
    cls_logits: Tensor,
    pred_boxes: Tensor,
    targets: list[dict[str, Tensor]],
    image_size: tuple[int, int],
    **weights: float,
) -> AssignResult:
    """:func:`assign_hungarian` on every image of a batch (each solved on its own).

    Args:
        cls_logits: (B, Q, C).
        pred_boxes: (B, Q, 4) xyxy px.
        targets: B dicts ``{"boxes": (M_i, 4) xyxy px, "labels": (M_i,)}``.
        image_size: (H, W) px of the (equally sized) images.
        **weights: ``cls_weight``, ``l1_weight``, ``giou_weight``, ``alpha``, ``gamma``.

    Returns:
        ``AssignResult`` with fields (B, Q); ``gt_index`` indexes each image's own boxes.
    """
    if len(targets) != cls_logits.shape[0]:
        raise ValueError(f"{cls_logits.shape[0]} images but {len(targets)} targets")
    results = [
        assign_hungarian(logits, boxes, target["boxes"], target["labels"], image_size, **weights)
        for logits, boxes, target in zip(cls_logits, pred_boxes, targets, strict=True)
    ]
    return AssignResult(*(torch.stack(field) for field in zip(*results, strict=True)))
