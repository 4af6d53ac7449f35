"""The YOLOv3 loss: GIoU box loss, BCE objectness over every cell, BCE class loss.

Given the raw outputs of the YOLO layers and the targets of
:func:`detutils.assigners.build_yolov3_targets`, each layer adds three terms:

    box   mean over the layer's n positives of 1 - GIoU(predicted box, target box), the
          boxes in grid units around their cell: centre sigmoid(t_xy), size
          exp(t_wh) * anchor (exp clamped at 1000)
    obj   BCE with logits, mean over *every* (image, anchor, cell) of the layer. The
          target is 0, except at positives: (1 - gr) + gr * GIoU.clamp(0), the quality of
          the current prediction (with gr = 1 the target is the GIoU itself)
    cls   BCE with logits on one-hot class targets, mean over the n x C entries of the
          positives; only when C > 1 (a one-class model learns no class)

The terms are summed over layers, then multiplied by their gains (3.54, 64.3, 37.4 by
default) and added: ``loss = box + obj + cls``.

How the reference scales (its default ``red='mean'``): every term is a mean, so the
loss does not grow with the batch size or the number of boxes, and nothing here is
multiplied by the batch size. (The reference's ``train.py`` then multiplies the loss by
``batch_size / 64`` before ``backward`` and accumulates gradients up to 64 images; that
is the trainer's business, as is its warm-up of ``gr`` from 0 to 1 and its scaling of
the class gain by C / 80.)

Two positives in one (image, anchor, cell), say two boxes whose centres share a cell
and whose shapes both suit one anchor, each add their box and class terms; the
objectness target holds only one value, and the *last* written wins, the last in the
order of the targets (anchor, then image, then box). The reference writes with one
indexed assignment, whose result for repeated indices PyTorch leaves unspecified (on
the CPU the last write wins); here the last entry is picked explicitly, so the result
is the same on every device.

Reference: ultralytics/yolov3 (archive branch) ``utils/utils.py`` ``compute_loss``
(``hyp`` giou 3.54, obj 64.3, cls 37.4, cls_pw = obj_pw = 1, fl_gamma 0, no label
smoothing; ``model.gr = 1.0`` in ``train.py``).
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from detutils.assigners.yolov3_targets import YOLOv3Targets
from detutils.boxes import box_iou_aligned, cxcywh_to_xyxy
from detutils.coders import YOLO_MAX_SCALE
from detutils.trace import record

__all__ = ["last_write_wins", "yolov3_loss"]


def last_write_wins(flat_index: Tensor) -> Tensor:
    """(n,) bool: True for the last occurrence of each value of ``flat_index``.

    Writing ``target[flat_index[keep]] = values[keep]`` then gives what writing every
    entry one by one, in order, would give.
    """
    order = torch.arange(flat_index.numel(), device=flat_index.device)  # (n,)
    size = int(flat_index.max()) + 1 if flat_index.numel() else 0
    last = torch.full((size,), -1, dtype=torch.long, device=flat_index.device)
    last = last.scatter_reduce(0, flat_index, order, reduce="amax")  # last entry per index
    return last[flat_index] == order


def yolov3_loss(
    raw_outputs: Sequence[Tensor],
    targets: Sequence[YOLOv3Targets],
    giou_gain: float = 3.54,
    obj_gain: float = 64.3,
    cls_gain: float = 37.4,
    gr: float = 1.0,
) -> dict[str, Tensor]:
    """The YOLOv3 loss of a batch (terms and scaling in the module docstring).

    Args:
        raw_outputs: one (B, K, H, W, 5 + C) tensor per YOLO layer: t_x, t_y, t_w, t_h,
            objectness logit, C class logits.
        targets: one :class:`YOLOv3Targets` per layer, from ``build_yolov3_targets``
            (box targets and anchor sizes in grid units).
        giou_gain, obj_gain, cls_gain: weights of the three terms (``hyp``).
        gr: GIoU ratio of the objectness target at positives, in [0, 1].

    Returns:
        ``{"box", "obj", "cls", "loss"}``, scalar tensors; ``loss`` is the sum of the
        other three and carries the gradient.

    Raises:
        ValueError: the lists differ in length, an output is not (B, K, H, W, 5 + C), or
            a target label is not below C.

    Reference: ultralytics/yolov3 (archive) ``utils/utils.py`` ``compute_loss``.
    """
    if isinstance(raw_outputs, Tensor) or isinstance(targets, YOLOv3Targets):
        raise ValueError("raw_outputs and targets must be lists, one entry per YOLO layer")
    if len(raw_outputs) != len(targets) or not raw_outputs:
        raise ValueError(
            f"need one target per YOLO layer, got {len(raw_outputs)} outputs and "
            f"{len(targets)} targets"
        )
    if not 0 <= gr <= 1:
        raise ValueError(f"gr must be in [0, 1], got {gr}")
    num_classes = raw_outputs[0].shape[-1] - 5
    for layer, raw in enumerate(raw_outputs):
        if raw.dim() != 5 or raw.shape[-1] != 5 + num_classes or num_classes < 1:
            raise ValueError(
                f"raw_outputs[{layer}] must be (B, K, H, W, 5 + {num_classes}), got "
                f"{tuple(raw.shape)}"
            )
    device = raw_outputs[0].device
    box_loss = torch.zeros((), device=device)
    obj_loss = torch.zeros((), device=device)
    cls_loss = torch.zeros((), device=device)
    for layer, (raw, target) in enumerate(zip(raw_outputs, targets, strict=True)):
        num_positives = target.image.numel()
        obj_target = torch.zeros(raw.shape[:4], device=device)  # (B, K, H, W)
        if num_positives:
            if int(target.labels.max()) >= num_classes or int(target.labels.min()) < 0:
                raise ValueError(f"targets[{layer}] holds labels outside 0 .. {num_classes - 1}")
            pred = raw[target.image, target.anchor, target.gy, target.gx].float()  # (n, 5 + C)
            # Box: prediction and target in grid units, both relative to the cell corner.
            pred_xy = pred[:, :2].sigmoid()  # (n, 2)
            pred_wh = pred[:, 2:4].exp().clamp(max=YOLO_MAX_SCALE) * target.anchor_wh  # (n, 2)
            pred_boxes = cxcywh_to_xyxy(torch.cat([pred_xy, pred_wh], dim=-1))  # (n, 4)
            giou = box_iou_aligned(pred_boxes, cxcywh_to_xyxy(target.box), kind="giou")  # (n,)
            record(f"layer{layer}.giou", giou)
            box_loss = box_loss + (1.0 - giou).mean()

            # Objectness target at the positives; the last of repeated cells wins.
            quality = (1.0 - gr) + gr * giou.detach().clamp(min=0)  # (n,)
            height, width = raw.shape[2:4]
            flat = ((target.image * raw.shape[1] + target.anchor) * height + target.gy) * width
            flat = flat + target.gx  # (n,) index into obj_target.view(-1)
            keep = last_write_wins(flat)
            obj_target.view(-1)[flat[keep]] = quality[keep]

            # Class: one-hot BCE, only with more than one class.
            if num_classes > 1:
                one_hot = F.one_hot(target.labels, num_classes).float()  # (n, C)
                cls_loss = cls_loss + F.binary_cross_entropy_with_logits(pred[:, 5:], one_hot)
        record(f"layer{layer}.obj_target", obj_target)
        obj_loss = obj_loss + F.binary_cross_entropy_with_logits(raw[..., 4].float(), obj_target)

    box_loss, obj_loss, cls_loss = box_loss * giou_gain, obj_loss * obj_gain, cls_loss * cls_gain
    return {
        "box": box_loss,
        "obj": obj_loss,
        "cls": cls_loss,
        "loss": box_loss + obj_loss + cls_loss,
    }
