"""Focal losses: the sigmoid focal loss (RetinaNet, ATSS) and the quality focal loss (GFL).

Both are binary cross-entropies, one per (sample, class) pair, scaled down where the
prediction is already good, so the many easy background priors of a dense detector do
not drown the few hard ones:

    sigmoid focal   BCE(x, t) * |t - p|^gamma * alpha_t,    t in {0, 1}, p = sigmoid(x)
    quality focal   BCE(x, t) * |t - p|^beta,               t in [0, 1]

With a hard target, ``|t - p|`` is the focal loss's ``1 - p_t``. The quality focal loss
lets the target of the true class be a soft quality score (the IoU of the predicted box
with its target), so one number per class says both "which class" and "how well
localised"; every other class, and every background sample, has target 0.

Reductions follow mmdet's ``weight_reduce_loss``: the element-wise loss is multiplied
by ``weight``, then ``"none"`` returns it, ``"sum"`` sums it and ``"mean"`` divides the
sum by ``avg_factor`` (for example the number of positives), or takes the plain mean
without one. An empty input gives a zero (with a gradient path), not the NaN of an
empty mean, as torchvision's box losses do.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from detutils.distributed import all_reduce_mean

__all__ = ["positives_normaliser", "quality_focal_loss", "sigmoid_focal_loss", "weight_reduce_loss"]

REDUCTIONS = ("none", "mean", "sum")


def weight_reduce_loss(
    loss: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Multiply an element-wise loss by ``weight``, then reduce it.

    Args:
        loss: (N, ...) element-wise loss.
        weight: None, or a tensor that broadcasts to ``loss``; a (N,) weight with a
            (N, C) loss weights whole rows.
        reduction: ``"none"`` (return the weighted loss), ``"sum"``, or ``"mean"``
            (the sum divided by ``avg_factor``, or the plain mean without one).
        avg_factor: the divisor of ``"mean"``; not allowed with ``"sum"``.

    Returns:
        the weighted loss (``"none"``) or a scalar; 0 for an empty loss.

    Raises:
        ValueError: unknown reduction, ``avg_factor`` with ``"sum"``, or a weight that
            does not broadcast.

    Reference: mmdet ``mmdet/models/losses/utils.py`` ``weight_reduce_loss``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if avg_factor is not None and reduction == "sum":
        raise ValueError('avg_factor cannot be used with reduction="sum"')
    if weight is not None:
        if weight.ndim == loss.ndim - 1 and weight.shape == loss.shape[:-1]:
            weight = weight.unsqueeze(-1)  # (N,) -> (N, 1): one weight per row
        try:
            loss = loss * weight
        except RuntimeError as error:
            raise ValueError(
                f"weight of shape {tuple(weight.shape)} does not broadcast to the loss of "
                f"shape {tuple(loss.shape)}"
            ) from error
    if reduction == "none":
        return loss
    if loss.numel() == 0:
        return loss.sum() * 0.0  # a zero that keeps the graph (and never divides 0 / 0)
    if reduction == "sum":
        return loss.sum()
    return loss.mean() if avg_factor is None else loss.sum() / avg_factor


def positives_normaliser(positive: Tensor) -> Tensor:
    """The divisor of a dense detector's focal loss: the positives of the batch, each
    image counting at least 1, averaged over processes under DDP, at least 1.

    Args:
        positive: (B, A) bool, the positive priors of each image.

    Returns:
        a float scalar.

    Reference: mmdet's sampling results (``avg_factor = max(num_pos, 1)`` per image) and
        ``reduce_mean``; NanoDet ``GFLHead.loss`` (the same count).
    """
    num_positive = positive.sum(dim=1).clamp(min=1).sum().float()
    return all_reduce_mean(num_positive).clamp(min=1.0)


def sigmoid_focal_loss(
    pred_logits: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    *,
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Focal loss on sigmoid outputs: BCE scaled by ``(1 - p_t)^gamma`` and ``alpha_t``.

    ``p_t`` is the probability given to the true answer (p where the target is 1, 1 - p
    where it is 0), so a confident right prediction (``p_t`` near 1) adds almost
    nothing; ``alpha_t`` is ``alpha`` for targets 1 and ``1 - alpha`` for targets 0.

    Args:
        pred_logits: (N, C) or any shape, raw scores (before the sigmoid).
        targets: the same shape, 0 or 1 (one-hot classes; all zeros for background).
        alpha: weight of the positive targets in [0, 1]; a negative value turns the
            alpha weighting off.
        gamma: focusing exponent; 0 gives the plain (alpha-weighted) BCE.
        reduction: ``"none"`` (default, as torchvision), ``"mean"`` or ``"sum"``.
        weight: optional element-wise weight (broadcast, see :func:`weight_reduce_loss`).
        avg_factor: divisor of ``"mean"`` (RetinaNet and ATSS use the positives).

    Returns:
        the loss, shaped as ``pred_logits`` for ``"none"``, else a scalar.

    Raises:
        ValueError: shapes differ, or a bad reduction.

    Reference: torchvision ``ops.sigmoid_focal_loss``; Lin et al., "Focal Loss for Dense
        Object Detection", ICCV 2017, eq. 5.
    """
    if pred_logits.shape != targets.shape:
        raise ValueError(
            f"pred_logits and targets must have the same shape, got {tuple(pred_logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    targets = targets.to(pred_logits.dtype)
    probs = torch.sigmoid(pred_logits)
    bce = F.binary_cross_entropy_with_logits(pred_logits, targets, reduction="none")
    p_t = probs * targets + (1 - probs) * (1 - targets)
    loss = bce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


def quality_focal_loss(
    pred_logits: Tensor,
    labels: Tensor,
    scores: Tensor,
    beta: float = 2.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """Quality focal loss: BCE against a soft target, scaled by ``|target - p|^beta``.

    Row n's target is ``scores[n]`` at class ``labels[n]`` and 0 at every other class;
    a background row (``labels[n] < 0``) has target 0 everywhere. mmdet marks the
    background with the label C; here it is ``BACKGROUND = -1`` (``IGNORE = -2`` rows are
    also background for the formula: give them ``weight`` 0 to drop them, as mmdet's
    label weights do).

    Args:
        pred_logits: (N, C) raw class scores (before the sigmoid).
        labels: (N,) class of each row, 0 .. C-1, or negative for background.
        scores: (N,) quality target of each row's class, in [0, 1] (the IoU of the
            predicted box with its target box); not read for background rows.
        beta: the modulating exponent (2 in GFL and NanoDet).
        weight: optional (N,) weight of each row.
        reduction: ``"none"`` returns (N,), the loss of each row summed over classes;
            ``"mean"`` (default) or ``"sum"``.
        avg_factor: divisor of ``"mean"`` (GFL: the number of positives).

    Returns:
        (N,) for ``"none"``, else a scalar.

    Raises:
        ValueError: shapes disagree, or a label is C or more.

    Reference: mmdet / NanoDet ``gfocal_loss.py`` ``quality_focal_loss``; Li et al.,
        "Generalized Focal Loss", NeurIPS 2020, eq. 5.
    """
    if pred_logits.ndim != 2:
        raise ValueError(f"pred_logits must be (N, C), got {tuple(pred_logits.shape)}")
    num_rows, num_classes = pred_logits.shape
    if labels.shape != (num_rows,) or scores.shape != (num_rows,):
        raise ValueError(
            f"labels and scores must be ({num_rows},), got {tuple(labels.shape)} and "
            f"{tuple(scores.shape)}"
        )
    if labels.numel() and int(labels.max()) >= num_classes:
        raise ValueError(
            f"label {int(labels.max())} is not a class of the {num_classes}-class logits "
            "(background is a negative label here, not C)"
        )
    # The soft one-hot target: the quality score at the true class of each positive row.
    positive = labels >= 0  # (N,)
    target = torch.zeros_like(pred_logits)  # (N, C)
    rows = positive.nonzero(as_tuple=True)[0]  # (P,)
    target[rows, labels[rows]] = scores[rows].to(target.dtype)
    probs = torch.sigmoid(pred_logits)
    bce = F.binary_cross_entropy_with_logits(pred_logits, target, reduction="none")  # (N, C)
    loss = (bce * (target - probs).abs().pow(beta)).sum(dim=1)  # (N,)
    return weight_reduce_loss(loss, weight, reduction, avg_factor)
