"""From the per-image ground truth of a batch to the padded tensors batched assigners take."""

import torch
from torch import Tensor

from detutils.boxes import invalid_boxes

__all__ = ["check_ground_truth", "check_gt_boxes", "pad_ground_truth"]


def check_ground_truth(image: int | str, boxes: Tensor, labels: Tensor) -> None:
    """Raise a ``ValueError`` naming the first bad box or label of one image.

    Args:
        image: how the message names the image (its index in the batch, or a file).
        boxes: (M, 4) xyxy, pixels.
        labels: (M,) class ids.
    """
    bad = invalid_boxes(boxes)  # (M,)
    if bad.any():
        box = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"targets[{image}]: box {box} = {boxes[box].tolist()} is not an xyxy box in "
            "pixels (finite, x2 >= x1, y2 >= y1); convert xywh or cxcywh boxes first"
        )
    negative = labels < 0
    if negative.any():
        box = int(negative.nonzero()[0, 0])
        raise ValueError(
            f"targets[{image}]: box {box} has label {int(labels[box])}; class ids run 0 .. C-1"
        )


def check_gt_boxes(gt_boxes: Tensor, gt_mask: Tensor | None = None) -> None:
    """Raise a ``ValueError`` naming the first box that is not a finite xyxy box.

    Args:
        gt_boxes: (..., 4) xyxy px: (M, 4) for one image, (B, M, 4) padded for a batch.
        gt_mask: (...) bool, True for the real boxes; None checks every box.
    """
    bad = invalid_boxes(gt_boxes)  # (...)
    if gt_mask is not None:
        bad &= gt_mask
    if bad.any():
        where = tuple(bad.nonzero()[0].tolist())
        raise ValueError(
            f"gt_boxes[{', '.join(map(str, where))}] = {gt_boxes[where].tolist()} is not an "
            "xyxy box in pixels (finite, x2 >= x1, y2 >= y1)"
        )


def pad_ground_truth(
    targets: list[dict[str, Tensor]], device: torch.device | str | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image ground truth -> padded ``gt_boxes``, ``gt_labels`` and ``gt_mask``.

    Images hold different numbers of boxes; a batched assigner wants one tensor, so
    every image is padded to the largest count M and a mask says which entries are real.

    Args:
        targets: B dicts ``{"boxes": (M_i, 4) xyxy px, "labels": (M_i,)}``.
        device: of the results (default: that of the first image's boxes, else CPU).

    Returns:
        gt_boxes (B, M, 4) float32, gt_labels (B, M) long, gt_mask (B, M) bool; M is the
        largest M_i (0 when no image has a box); padded entries are zeros and False.

    Raises:
        ValueError: a target without boxes or labels, with mismatched shapes, with a box
            that is not a finite xyxy box (x2 >= x1, y2 >= y1), or with a label that is
            not an integer class id >= 0. The message names the image and the box.

    The values are checked where the ground truth lives on the CPU (the dataset's
    tensors, a learner's hand-made boxes), where a check costs no device round trip;
    on a GPU it would stop the pipeline every step, and the ground truth of a training
    run was checked by the dataset as it was loaded (``detutils.data.coco``).
    """
    for image, target in enumerate(targets):
        if "boxes" not in target or "labels" not in target:
            raise ValueError(f"targets[{image}] needs 'boxes' and 'labels', got {sorted(target)}")
        boxes, labels = target["boxes"], target["labels"]
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
            raise ValueError(
                f"targets[{image}]: boxes must be (M, 4) and labels (M,), got "
                f"{tuple(boxes.shape)} and {tuple(labels.shape)}"
            )
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(
                f"targets[{image}]: labels must be integer class ids, got {labels.dtype}"
            )
        if boxes.device.type == "cpu" and len(boxes):
            check_ground_truth(image, boxes, labels)
    if device is None:
        device = targets[0]["boxes"].device if targets else "cpu"
    num_gt = max((len(target["boxes"]) for target in targets), default=0)
    gt_boxes = torch.zeros(len(targets), num_gt, 4, device=device)  # (B, M, 4)
    gt_labels = torch.zeros(len(targets), num_gt, dtype=torch.long, device=device)  # (B, M)
    gt_mask = torch.zeros(len(targets), num_gt, dtype=torch.bool, device=device)  # (B, M)
    for image, target in enumerate(targets):
        count = len(target["boxes"])
        gt_boxes[image, :count] = target["boxes"].to(device=device, dtype=torch.float32)
        gt_labels[image, :count] = target["labels"].to(device=device, dtype=torch.long)
        gt_mask[image, :count] = True
    return gt_boxes, gt_labels, gt_mask
