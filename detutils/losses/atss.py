"""The loss of an ATSS head: sigmoid focal + GIoU weighted by centerness + centerness BCE.

Given the head's outputs over all anchors and an ATSS assignment, the loss is built in
these steps (mmdet's ``ATSSHead.loss_by_feat``; its numbers in brackets):

1. The normaliser: the positives of the batch, each image counting at least 1 (mmdet's
   sampling results: an image without a positive adds 1), averaged over processes
   under DDP.
2. Sigmoid focal loss over every anchor and class [gamma 2, alpha 0.25, weight 1]: a
   positive's true class has target 1, everything else 0; divided by the normaliser.
3. For every positive anchor: its target box, and its centerness target, the square
   root of ``min(l, r) / max(l, r) * min(t, b) / max(t, b)`` for the distances from
   the anchor's centre to the four sides of the box (1 at the box's centre, towards 0
   at its edges).
4. The predicted deltas decoded into boxes (delta-xywh with stds 0.1, 0.1, 0.2, 0.2,
   no clipping) and the GIoU loss with the target boxes, each weighted by its
   centerness target and divided by the sum of those targets (averaged over processes,
   at least 1) [weight 2]: anchors near a box's centre count more.
5. Binary cross-entropy of the predicted centerness (a logit) with its target over the
   positives, divided by the normaliser of step 1 [weight 1].

Without any positive in the batch the box and centerness terms are zero (with a
gradient path) and the focal loss still teaches every anchor "background".

mmdet keeps the three terms per level and sums them; the sums are the same numbers
(``tests/test_atss_model.py`` compares with values computed by mmdet 3.3).

Reference: mmdet ``mmdet/models/dense_heads/atss_head.py`` (``loss_by_feat``,
``loss_by_feat_single``, ``centerness_target``); Zhang et al., CVPR 2020.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from detutils.assigners.result import IGNORE, AssignResult
from detutils.coders import decode_delta_xywh
from detutils.distributed import all_reduce_mean
from detutils.losses.focal import positives_normaliser, sigmoid_focal_loss
from detutils.losses.iou import iou_loss
from detutils.trace import record

__all__ = ["atss_loss", "centerness_targets"]

ATSS_STDS = (0.1, 0.1, 0.2, 0.2)  # the delta coder's normalisation in ATSS


def centerness_targets(anchors: Tensor, gt_boxes: Tensor) -> Tensor:
    """How central each anchor's centre sits in its box, in [0, 1].

    Args:
        anchors: (P, 4) xyxy px, centres inside their boxes.
        gt_boxes: (P, 4) xyxy px, the box each anchor learns.

    Returns:
        (P,) ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``.

    Reference: mmdet ``ATSSHead.centerness_target``; FCOS (Tian et al., ICCV 2019), eq. 3.
    """
    center_x = (anchors[:, 0] + anchors[:, 2]) / 2
    center_y = (anchors[:, 1] + anchors[:, 3]) / 2
    left, top = center_x - gt_boxes[:, 0], center_y - gt_boxes[:, 1]
    right, bottom = gt_boxes[:, 2] - center_x, gt_boxes[:, 3] - center_y
    left_right = torch.stack([left, right], dim=1)  # (P, 2)
    top_bottom = torch.stack([top, bottom], dim=1)
    return torch.sqrt(
        left_right.amin(dim=1) / left_right.amax(dim=1) * top_bottom.amin(dim=1)
        / top_bottom.amax(dim=1)
    )  # fmt: skip


def _check_inputs(
    cls_logits: Tensor,
    deltas: Tensor,
    centerness: Tensor,
    anchors: Tensor,
    assignment: AssignResult,
    gt_boxes: Tensor,
) -> None:
    if cls_logits.ndim != 3:
        raise ValueError(f"cls_logits must be (B, A, C), got {tuple(cls_logits.shape)}")
    batch_size, num_anchors, _ = cls_logits.shape
    expected = {
        "deltas": (deltas, (batch_size, num_anchors, 4)),
        "centerness": (centerness, (batch_size, num_anchors)),
        "anchors": (anchors, (num_anchors, 4)),
    }
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must be {shape}, got {tuple(tensor.shape)}")
    for name, field in zip(AssignResult._fields, assignment, strict=True):
        if field.shape != (batch_size, num_anchors):
            raise ValueError(
                f"assignment.{name} must be ({batch_size}, {num_anchors}), got {tuple(field.shape)}"
            )
    if gt_boxes.ndim != 3 or gt_boxes.shape[0] != batch_size or gt_boxes.shape[-1] != 4:
        raise ValueError(f"gt_boxes must be ({batch_size}, M, 4), got {tuple(gt_boxes.shape)}")


def atss_loss(
    cls_logits: Tensor,
    deltas: Tensor,
    centerness: Tensor,
    anchors: Tensor,
    assignment: AssignResult,
    gt_boxes: Tensor,
    *,
    stds: tuple[float, float, float, float] = ATSS_STDS,
    alpha: float = 0.25,
    gamma: float = 2.0,
    cls_weight: float = 1.0,
    bbox_weight: float = 2.0,
    centerness_weight: float = 1.0,
) -> dict[str, Tensor]:
    """Focal, GIoU and centerness losses of an ATSS head over a batch.

    Args:
        cls_logits: (B, A, C) class logits of every anchor.
        deltas: (B, A, 4) predicted deltas (dx, dy, dw, dh), normalised by ``stds``.
        centerness: (B, A) centerness logits.
        anchors: (A, 4) xyxy px, the anchors the assignment was made on.
        assignment: (B, A) fields, from ``assign_atss_batched``; ``IGNORE`` anchors take
            part in no loss.
        gt_boxes: (B, M, 4) xyxy px, padded (``assignment.gt_index`` points into it).
        stds: of the delta coder.
        alpha, gamma: of the focal loss.
        cls_weight, bbox_weight, centerness_weight: the weights of the three terms
            (Co-DETR multiplies all three by 12 for its auxiliary ATSS head).

    Returns:
        ``{"cls", "bbox", "centerness", "loss"}`` scalars, weights applied, ``loss``
        their sum.

    Raises:
        ValueError: inconsistent shapes.

    Reference: mmdet ``ATSSHead.loss_by_feat`` (``atss_r50_fpn_1x_coco.py``).
    """
    _check_inputs(cls_logits, deltas, centerness, anchors, assignment, gt_boxes)
    # float32 throughout, also under mixed precision
    with torch.autocast(cls_logits.device.type, enabled=False):
        cls_logits, deltas = cls_logits.float(), deltas.float()
        centerness, anchors = centerness.float(), anchors.float()
        num_classes = cls_logits.shape[-1]
        positive = assignment.gt_index >= 0  # (B, A)

        # 1. The normaliser: positives, each image counting at least 1 (an image without
        # boxes adds 1), averaged over processes.
        num_positive = positives_normaliser(positive)

        # 2. Focal loss over every anchor and class; IGNORE anchors weigh 0.
        labels = assignment.labels.clamp(min=0)  # a valid index; masked by `positive`
        one_hot = F.one_hot(labels, num_classes).to(cls_logits.dtype) * positive[..., None]
        weight = (assignment.gt_index != IGNORE).to(cls_logits.dtype)[..., None]  # (B, A, 1)
        loss_cls = sigmoid_focal_loss(
            cls_logits, one_hot, alpha, gamma, "mean", weight=weight, avg_factor=num_positive
        )

        # 3. Positives: anchors, target boxes, centerness targets.
        image_index, anchor_index = positive.nonzero(as_tuple=True)  # (P,), (P,)
        matched = assignment.gt_index[image_index, anchor_index]  # (P,)
        target_boxes = gt_boxes[image_index, matched].float()  # (P, 4)
        positive_anchors = anchors[anchor_index]  # (P, 4)
        ctr_targets = centerness_targets(positive_anchors, target_boxes)  # (P,)

        # 4. Decoded boxes, GIoU weighted by centerness, over the sum of the targets.
        pred_boxes = decode_delta_xywh(
            positive_anchors, deltas[image_index, anchor_index], stds=stds
        )  # (P, 4)
        record("positive_anchors", anchor_index)
        record("target_boxes", target_boxes)
        record("pred_boxes", pred_boxes)
        record("centerness_targets", ctr_targets)
        ctr_sum = all_reduce_mean(ctr_targets.sum()).clamp(min=1.0)
        loss_bbox = (
            iou_loss(pred_boxes, target_boxes, "giou", weight=ctr_targets, reduction="sum")
            / ctr_sum
        )

        # 5. Centerness BCE over the positives.
        loss_ctr = (
            F.binary_cross_entropy_with_logits(
                centerness[image_index, anchor_index], ctr_targets, reduction="sum"
            )
            / num_positive
        )

        # no positive: zeros that keep the graph of every output
        loss_bbox = loss_bbox + deltas.sum() * 0.0
        loss_ctr = loss_ctr + centerness.sum() * 0.0
        losses = {
            "cls": cls_weight * loss_cls,
            "bbox": bbox_weight * loss_bbox,
            "centerness": centerness_weight * loss_ctr,
        }
        losses["loss"] = losses["cls"] + losses["bbox"] + losses["centerness"]
        return losses
