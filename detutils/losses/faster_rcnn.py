"""The two losses of Faster R-CNN: the RPN's and the RoI head's.

Both train only on the priors their sampler drew (``detutils.assigners.sample_random``)
and divide by how many it drew, positives and negatives together, over the batch:

RPN (mmdet's ``RPNHead.loss_by_feat``; its numbers in brackets), for the sampled anchors:

1. binary cross-entropy of the objectness logit, target 1 for a positive (whatever its
   class: the RPN only tells objects from background) and 0 for a negative [weight 1];
2. L1 between the predicted deltas and the deltas that move the anchor onto its box
   (delta-xywh with stds 1, 1, 1, 1), over the positives [weight 1];
3. both sums divided by the number of sampled anchors of the batch, each image counting
   at least one positive and one negative (mmdet's ``SamplingResult``: an image without
   a box adds 1 to the count).

RoI head (mmdet's ``BBoxHead.loss``), for the sampled proposals:

1. cross-entropy over C + 1 classes, the last one "background" [weight 1];
2. for the positives only, L1 between the deltas predicted *for the true class* (the
   head predicts 4 deltas for each of the C classes) and the target deltas, stds 0.1,
   0.1, 0.2, 0.2 [weight 1]; or, with ``reg_decoded=True`` (Co-DETR's auxiliary head),
   the GIoU loss of the decoded box with its target [Co-DETR: weight 10 x 12];
3. both sums divided by the number of sampled proposals of the batch.

Without any positive the box terms are zero, with a gradient path. The normalisers are
not averaged over processes (mmdet does not either): under DDP each process divides by
its own samples and the gradients are averaged. mmdet divides by ``count + 1.2e-7``
(float32's eps), a relative difference below 1e-11 for any count of samples.

Reference: mmdet ``AnchorHead.loss_by_feat_single``, ``RPNHead``, ``BBoxHead.loss``
(``mmdet/models/dense_heads/anchor_head.py``, ``roi_heads/bbox_heads/bbox_head.py``);
Ren et al., "Faster R-CNN", NeurIPS 2015, eq. 1.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from detutils.coders import decode_delta_xywh, encode_delta_xywh
from detutils.losses.iou import iou_loss
from detutils.trace import record

__all__ = ["ROI_STDS", "RPN_STDS", "roi_loss", "rpn_loss"]

RPN_STDS = (1.0, 1.0, 1.0, 1.0)  # the RPN's delta coder
ROI_STDS = (0.1, 0.1, 0.2, 0.2)  # the RoI head's delta coder


def _box_loss(pred: Tensor, target: Tensor, kind: str) -> Tensor:
    """Element sums of the box loss: L1 on deltas (``"l1"``), or GIoU on boxes."""
    if kind == "l1":
        return (pred - target).abs().sum()
    if kind == "giou":
        return iou_loss(pred, target, kind="giou", reduction="sum")
    raise ValueError(f"box loss must be 'l1' or 'giou', got {kind!r}")


def rpn_loss(
    objectness: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    gt_index: Tensor,
    sampled: Tensor,
    gt_boxes: Tensor,
    stds: Sequence[float] = RPN_STDS,
    cls_weight: float = 1.0,
    bbox_weight: float = 1.0,
) -> dict[str, Tensor]:
    """The RPN loss of a batch (see the module docstring).

    Args:
        objectness: (B, A) logits, anchors of all levels concatenated.
        deltas: (B, A, 4) predicted deltas.
        anchors: (A, 4) xyxy px.
        gt_index: (B, A) long, the box each anchor learns (>= 0), ``BACKGROUND`` or
            ``IGNORE`` (an :class:`~detutils.assigners.AssignResult`'s field).
        sampled: (B, A) bool, the anchors the sampler drew.
        gt_boxes: (B, M, 4) xyxy px, padded, what ``gt_index`` points into.
        stds: of the delta coder.
        cls_weight, bbox_weight: weights of the two terms.

    Returns:
        ``{"rpn_cls", "rpn_bbox"}`` scalars, weights applied.
    """
    if objectness.shape != gt_index.shape or sampled.shape != gt_index.shape:
        raise ValueError(
            f"objectness {tuple(objectness.shape)}, gt_index {tuple(gt_index.shape)} and "
            f"sampled {tuple(sampled.shape)} must all be (B, A)"
        )
    if deltas.shape != (*gt_index.shape, 4) or anchors.shape != (gt_index.shape[1], 4):
        raise ValueError("deltas must be (B, A, 4) and anchors (A, 4)")
    positive = sampled & (gt_index >= 0)  # (B, A)
    num_positive = positive.sum(dim=1)
    # mmdet's SamplingResult counts at least one positive and one negative per image
    num_sampled = (
        (num_positive.clamp(min=1) + (sampled.sum(dim=1) - num_positive).clamp(min=1)).sum().float()
    )
    record("rpn positives", num_positive)
    record("rpn samples", sampled.sum(dim=1))
    targets = positive.to(objectness.dtype)
    cls = F.binary_cross_entropy_with_logits(objectness, targets, reduction="none")
    cls = (cls * sampled).sum() / num_sampled
    image, prior = positive.nonzero(as_tuple=True)
    if image.numel():
        target_boxes = gt_boxes[image, gt_index[image, prior]]  # (P, 4)
        target_deltas = encode_delta_xywh(anchors[prior], target_boxes, stds=stds)
        bbox = _box_loss(deltas[image, prior], target_deltas, "l1") / num_sampled
    else:
        bbox = deltas.sum() * 0.0  # no positive: zero, with a gradient path
    return {"rpn_cls": cls * cls_weight, "rpn_bbox": bbox * bbox_weight}


def roi_loss(
    cls_logits: Tensor,
    deltas: Tensor,
    rois: Tensor,
    labels: Tensor,
    target_boxes: Tensor,
    stds: Sequence[float] = ROI_STDS,
    cls_weight: float = 1.0,
    bbox_weight: float = 1.0,
    bbox_loss: str = "l1",
    reg_decoded: bool = False,
) -> dict[str, Tensor]:
    """The RoI head's loss over the sampled proposals of a batch.

    Args:
        cls_logits: (N, C + 1), the last column background.
        deltas: (N, 4 C), four deltas per class.
        rois: (N, 4) xyxy px, the sampled proposals (ground-truth boxes among them).
        labels: (N,) long: the class of the box a proposal learns, or ``BACKGROUND``
            (-1) for a negative.
        target_boxes: (N, 4) xyxy px, the box each positive learns (anything for the
            negatives).
        stds: of the delta coder.
        cls_weight, bbox_weight: weights of the two terms.
        bbox_loss: ``"l1"`` on deltas (Faster R-CNN) or ``"giou"`` (with
            ``reg_decoded=True``: on decoded boxes, Co-DETR's auxiliary head).
        reg_decoded: decode the predicted deltas and compare boxes, not deltas.

    Returns:
        ``{"roi_cls", "roi_bbox"}`` scalars, weights applied, and ``"roi_accuracy"``
        (percent of the proposals whose top class is right; no gradient).
    """
    num_rois = labels.shape[0]
    num_classes = cls_logits.shape[-1] - 1
    if cls_logits.shape != (num_rois, num_classes + 1) or deltas.shape != (
        num_rois,
        4 * num_classes,
    ):
        raise ValueError(
            f"cls_logits must be (N, C + 1) and deltas (N, 4 C) for N = {num_rois}, got "
            f"{tuple(cls_logits.shape)} and {tuple(deltas.shape)}"
        )
    if rois.shape != (num_rois, 4) or target_boxes.shape != (num_rois, 4):
        raise ValueError("rois and target_boxes must be (N, 4)")
    if (labels >= num_classes).any():
        raise ValueError(f"labels must be class ids below {num_classes}, or BACKGROUND (-1)")
    if bbox_loss == "giou" and not reg_decoded:
        raise ValueError("the GIoU loss compares boxes: set reg_decoded=True")
    positive = labels >= 0
    class_targets = torch.where(positive, labels, num_classes)  # background: the last column
    normaliser = max(num_rois, 1)
    cls = F.cross_entropy(cls_logits, class_targets, reduction="sum") / normaliser
    with torch.no_grad():
        accuracy = (cls_logits.argmax(dim=1) == class_targets).float().mean() * 100.0
    index = positive.nonzero().squeeze(1)
    if index.numel():
        pred = deltas.view(num_rois, num_classes, 4)[index, labels[index]]  # (P, 4)
        if reg_decoded:
            pred = decode_delta_xywh(rois[index], pred, stds=stds)
            target = target_boxes[index]
        else:
            target = encode_delta_xywh(rois[index], target_boxes[index], stds=stds)
        bbox = _box_loss(pred, target, bbox_loss) / normaliser
    else:
        bbox = deltas.sum() * 0.0
    return {
        "roi_cls": cls * cls_weight,
        "roi_bbox": bbox * bbox_weight,
        "roi_accuracy": torch.nan_to_num(accuracy),
    }
