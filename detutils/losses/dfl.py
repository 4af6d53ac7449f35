"""Distribution focal loss: teach a distribution over bins to put its mass around a distance.

A GFL / NanoDet / YOLOv8 head predicts each side's distance as a distribution over the
bins 0, 1, ..., R (its expected value is the distance, see ``detutils.coders``). A real
target y between two bins, y_l = floor(y) and y_r = y_l + 1, is split between them:

    DFL(S, y) = -( (y_r - y) log S(y_l) + (y - y_l) log S(y_r) )

the cross-entropy against a target that puts weight y_r - y on bin y_l and y - y_l on
bin y_r. Its minimum, S(y_l) = y_r - y and S(y_r) = y - y_l, has expected value exactly
y, and the loss sharpens the distribution around the target instead of letting it
spread over far bins. A target must lie in [0, R): y = R would need a bin R + 1. That
is why the targets are clamped to ``R - 0.1`` in GFL / NanoDet (``R - 0.01`` in
YOLOv8) before this loss.

Reference: Li et al., "Generalized Focal Loss", NeurIPS 2020, eq. 6; mmdet / NanoDet
``gfocal_loss.py`` ``distribution_focal_loss``.
"""

import torch.nn.functional as F
from torch import Tensor

from detutils.losses.focal import weight_reduce_loss

__all__ = ["distribution_focal_loss"]


def distribution_focal_loss(
    pred_logits: Tensor,
    targets: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Cross-entropy of a distribution over R + 1 bins with the two bins around a target.

    Args:
        pred_logits: (N, R + 1) logits of N distributions (one per box side).
        targets: (N,) real target distances in bins, in [0, R).
        weight: optional (N,) weight of each distribution.
        reduction: ``"none"`` (N,), ``"mean"`` (default) or ``"sum"``.
        avg_factor: divisor of ``"mean"`` (GFL: 4 x the sum of the positives' weights).

    Returns:
        (N,) for ``"none"``, else a scalar.

    Raises:
        ValueError: shapes disagree, or (on the CPU) a target outside [0, R).

    Reference: mmdet / NanoDet ``distribution_focal_loss``.
    """
    if pred_logits.ndim != 2 or pred_logits.shape[1] < 2:
        raise ValueError(f"pred_logits must be (N, R + 1), R >= 1, got {tuple(pred_logits.shape)}")
    num_bins = pred_logits.shape[1]
    if targets.shape != (pred_logits.shape[0],):
        raise ValueError(f"targets must be ({pred_logits.shape[0]},), got {tuple(targets.shape)}")
    # The range is checked where it is free, on the CPU; on a GPU reading it back would
    # stop the pipeline every step (the course's losses clamp their targets first).
    on_cpu = targets.device.type == "cpu"
    if on_cpu and targets.numel() and (targets.min() < 0 or targets.max() >= num_bins - 1):
        raise ValueError(
            f"targets must lie in [0, R) = [0, {num_bins - 1}), got values from "
            f"{float(targets.min())} to {float(targets.max())} (clamp them to R - eps first)"
        )
    left = targets.long()  # floor: targets are >= 0
    right = left + 1
    weight_left = right.to(targets.dtype) - targets  # (N,)
    weight_right = targets - left.to(targets.dtype)  # (N,)
    loss = (
        F.cross_entropy(pred_logits, left, reduction="none") * weight_left
        + F.cross_entropy(pred_logits, right, reduction="none") * weight_right
    )  # (N,)
    return weight_reduce_loss(loss, weight, reduction, avg_factor)
