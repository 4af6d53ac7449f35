"""From the per-image ground truth of a batch to the padded tensors batched assigners take."""

import torch
from torch import Tensor

__all__ = ["pad_ground_truth"]


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
        ValueError: a target without boxes or labels, or with mismatched shapes.
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
