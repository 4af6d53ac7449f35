"""IoU-family box losses: 1 - IoU, 1 - GIoU, 1 - DIoU, 1 - CIoU of aligned box pairs.

The overlap itself comes from :func:`detutils.boxes.box_iou_aligned` (which documents
where its ``eps`` sits); this module only turns it into a weighted, reduced loss.

Against mmdet's losses: ``kind="giou"`` is ``GIoULoss`` (``eps=1e-6`` there too, but
mmdet divides by ``max(union, eps)`` where this adds ``eps``: the two agree to a
relative ``eps / union``, below float32 precision for any box pair whose union exceeds
about 10 square units); ``kind="iou"`` is ``IoULoss(mode="linear")``, 1 - IoU, not mmdet's
default ``-log(IoU)``. As in mmdet, when every weight is zero the loss is an exact zero
that keeps the graph.
"""

import torch
from torch import Tensor

from detutils.boxes import box_iou_aligned
from detutils.losses.focal import weight_reduce_loss

__all__ = ["iou_loss"]


def iou_loss(
    pred_boxes: Tensor,
    target_boxes: Tensor,
    kind: str = "giou",
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """``1 - IoU`` (of the chosen kind) between each predicted box and its target.

    Args:
        pred_boxes: (N, 4) xyxy, any unit (pixels, or pixels / stride as in GFL).
        target_boxes: (N, 4) xyxy, the same unit.
        kind: ``"iou"``, ``"giou"`` (default), ``"diou"`` or ``"ciou"``.
        weight: optional (N,) weight of each pair.
        reduction: ``"none"`` (N,), ``"mean"`` (default) or ``"sum"``.
        avg_factor: divisor of ``"mean"`` (GFL: the sum of the positives' weights).
        eps: keeps the divisions finite (see :mod:`detutils.boxes`).

    Returns:
        (N,) for ``"none"``, else a scalar; GIoU loss lies in [0, 2).

    Raises:
        ValueError: shapes differ, unknown kind or reduction.

    Reference: mmdet ``mmdet/models/losses/iou_loss.py`` (``GIoULoss``, ``IoULoss``,
        ``DIoULoss``, ``CIoULoss``); torchvision ``ops.generalized_box_iou_loss``.
    """
    loss = 1.0 - box_iou_aligned(pred_boxes, target_boxes, kind=kind, eps=eps)  # (N,)
    if weight is not None and reduction != "none":
        # mmdet returns an exact zero when no weight is positive; here every pair of
        # weight 0 counts exactly 0 (even a degenerate pair whose loss is not finite),
        # which gives the same values without reading the weights back every step.
        loss = torch.where(weight.reshape(loss.shape) > 0, loss, loss.new_zeros(()))
    return weight_reduce_loss(loss, weight, reduction, avg_factor)
