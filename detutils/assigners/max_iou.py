"""The max-IoU assigner and the random sampler of Faster R-CNN.

:func:`assign_max_iou` decides, for every prior (an anchor of the RPN, or a proposal of
the RoI head), whether it learns a box, learns "no object", or is ignored:

1. every prior starts ignored;
2. a prior whose best IoU with any box is below ``neg_iou_thr`` is background;
3. a prior whose best IoU reaches ``pos_iou_thr`` learns that box (the lowest box index
   among equal IoUs);
4. low-quality matches (``match_low_quality``): every box whose best IoU with any prior
   reaches ``min_pos_iou`` claims *all* the priors that share that best IoU, even below
   ``pos_iou_thr`` and even when step 3 gave them to another box. Boxes are taken in
   order, so a later box overwrites an earlier one. This exists for boxes that no
   anchor overlaps by 0.7 (a small or a thin object between anchor sizes): without it
   such a box would have no positive at all.

The RPN uses 0.7 / 0.3 with ``min_pos_iou`` 0.3 and low-quality matches; the RoI head
0.5 / 0.5 without them (no prior is then ignored). Priors between the two thresholds
are ``IGNORE``.

:func:`sample_random` then picks which priors enter the loss: at most
``num * pos_fraction`` positives drawn at random, and negatives to fill up to ``num``
(RPN: 256 at 0.5, RoI head: 512 at 0.25). An image with few objects thus trains on many
more negatives than positives, but not on all of them: sampling caps the imbalance that
focal loss handles by weighting instead.

Where this module differs from the reference or pins down what it leaves open:

- IoUs come from :func:`detutils.boxes.box_iou` (``inter / (union + 1e-7)``); mmdet's
  ``bbox_overlaps`` divides by ``max(union, 1e-6)``: the same for any box of 2 px^2 or more.
- ``AssignResult.iou`` holds the IoU of a positive with the box it learns and 0 elsewhere;
  mmdet's ``max_overlaps`` holds every prior's best IoU (the same number for a positive
  of step 3, not for a low-quality match given to a box other than its best).
- mmdet's ``ignore_iof_thr`` (priors covered by "crowd" boxes) and its option of running
  the assignment on the CPU for many boxes are not implemented.

:func:`assign_max_iou_batched` does a padded batch at once on shared priors (the RPN's
anchors) and equals a loop of :func:`assign_max_iou` exactly (``tests/test_max_iou.py``).

Reference: mmdet ``MaxIoUAssigner`` (``mmdet/models/task_modules/assigners/
max_iou_assigner.py``) and ``RandomSampler`` (``samplers/random_sampler.py``,
``base_sampler.py``); Ren et al., "Faster R-CNN", NeurIPS 2015, section 3.1.2.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detutils.assigners.batch import check_gt_boxes
from detutils.assigners.result import BACKGROUND, IGNORE, AssignResult
from detutils.boxes import box_iou

__all__ = ["assign_max_iou", "assign_max_iou_batched", "sample_random"]


def _check_thresholds(
    pos_iou_thr: float, neg_iou_thr: float | tuple[float, float], min_pos_iou: float
) -> tuple[float, float]:
    low, high = (0.0, neg_iou_thr) if isinstance(neg_iou_thr, (int, float)) else neg_iou_thr
    if not 0.0 <= low <= high <= pos_iou_thr <= 1.0:
        raise ValueError(
            f"thresholds must satisfy 0 <= neg_iou_thr <= pos_iou_thr <= 1, got "
            f"neg_iou_thr={neg_iou_thr}, pos_iou_thr={pos_iou_thr}"
        )
    if not 0.0 <= min_pos_iou <= 1.0:
        raise ValueError(f"min_pos_iou must lie in [0, 1], got {min_pos_iou}")
    return float(low), float(high)


def _check_priors(priors: Tensor) -> None:
    if not isinstance(priors, Tensor) or priors.ndim != 2 or priors.shape[-1] != 4:
        raise ValueError(f"priors must be a (A, 4) tensor, got {getattr(priors, 'shape', priors)}")


def _assign_from_overlaps(
    overlaps: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    pos_iou_thr: float,
    neg_range: tuple[float, float],
    min_pos_iou: float,
    match_low_quality: bool,
) -> AssignResult:
    """overlaps (B, M, A) with padded boxes at -1 -> AssignResult (B, A)."""
    batch_size, num_gt, num_priors = overlaps.shape
    device = overlaps.device
    gt_index = torch.full((batch_size, num_priors), IGNORE, dtype=torch.long, device=device)
    has_gt = gt_mask.any(dim=1)  # (B,)
    gt_index[~has_gt] = BACKGROUND  # an image without boxes: every prior is background
    if num_gt == 0 or num_priors == 0:
        labels = torch.where(gt_index == BACKGROUND, BACKGROUND, IGNORE)
        return AssignResult(gt_index, labels, overlaps.new_zeros(batch_size, num_priors))
    best_iou, best_gt = overlaps.max(dim=1)  # (B, A): each prior's best box
    # 2. background below the negative threshold (mmdet: max_overlaps >= low as well)
    low, high = neg_range
    negative = (best_iou >= low) & (best_iou < high) & has_gt[:, None]
    gt_index[negative] = BACKGROUND
    # 3. positives at or above the positive threshold
    positive = (best_iou >= pos_iou_thr) & has_gt[:, None]
    gt_index = torch.where(positive, best_gt, gt_index)
    # 4. each box claims every prior at its own best IoU, later boxes overwriting earlier
    if match_low_quality:
        gt_best = overlaps.max(dim=2).values  # (B, M)
        claims = (overlaps == gt_best[:, :, None]) & ((gt_best >= min_pos_iou) & gt_mask)[
            :, :, None
        ]  # (B, M, A)
        claimed = claims.any(dim=1)  # (B, A)
        # the last box (highest index) that claims a prior wins, as in mmdet's loop
        last = num_gt - 1 - claims.flip(1).to(torch.uint8).argmax(dim=1)  # (B, A)
        gt_index = torch.where(claimed, last, gt_index)
    is_positive = gt_index >= 0
    safe_index = gt_index.clamp(min=0)
    labels = torch.where(is_positive, gt_labels.gather(1, safe_index), gt_index)
    iou = torch.where(is_positive, overlaps.gather(1, safe_index[:, None]).squeeze(1), 0.0)
    return AssignResult(gt_index, labels, iou)


def assign_max_iou(
    priors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    pos_iou_thr: float,
    neg_iou_thr: float | tuple[float, float],
    min_pos_iou: float,
    match_low_quality: bool = True,
) -> AssignResult:
    """mmdet's ``MaxIoUAssigner`` for one image (see the module docstring).

    Args:
        priors: (A, 4) xyxy px: anchors, or proposals.
        gt_boxes: (M, 4) xyxy px; M may be 0 (every prior is then background).
        gt_labels: (M,) class ids.
        pos_iou_thr: a prior whose best IoU reaches this learns that box.
        neg_iou_thr: a prior whose best IoU is below this is background; or a pair
            ``(low, high)``: background for a best IoU in ``[low, high)``.
        min_pos_iou: the smallest best IoU with which a box still claims its priors
            through a low-quality match.
        match_low_quality: step 4 of the module docstring.

    Returns:
        :class:`AssignResult` with fields (A,): ``gt_index`` (0 .. M-1, ``BACKGROUND`` or
        ``IGNORE``), ``labels``, ``iou`` (with the box learnt, 0 elsewhere).

    Raises:
        ValueError: bad shapes or thresholds, or a box that is not a finite xyxy box.
    """
    _check_priors(priors)
    if gt_boxes.ndim != 2 or gt_boxes.shape[-1] != 4 or gt_labels.shape != gt_boxes.shape[:1]:
        raise ValueError(
            f"gt_boxes must be (M, 4) and gt_labels (M,), got {tuple(gt_boxes.shape)} and "
            f"{tuple(gt_labels.shape)}"
        )
    mask = torch.ones(1, gt_boxes.shape[0], dtype=torch.bool, device=gt_boxes.device)
    result = assign_max_iou_batched(
        priors,
        gt_boxes[None],
        gt_labels[None],
        mask,
        pos_iou_thr,
        neg_iou_thr,
        min_pos_iou,
        match_low_quality,
    )
    return AssignResult(*(field[0] for field in result))


def assign_max_iou_batched(
    priors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    pos_iou_thr: float,
    neg_iou_thr: float | tuple[float, float],
    min_pos_iou: float,
    match_low_quality: bool = True,
) -> AssignResult:
    """:func:`assign_max_iou` for a padded batch sharing one set of priors.

    Args:
        priors: (A, 4) xyxy px, the same for every image (the RPN's anchors).
        gt_boxes: (B, M, 4) xyxy px, padded; gt_labels (B, M); gt_mask (B, M) bool.
        pos_iou_thr, neg_iou_thr, min_pos_iou, match_low_quality: as in
            :func:`assign_max_iou`.

    Returns:
        :class:`AssignResult` with fields (B, A); equal to a loop of
        :func:`assign_max_iou` over the images.
    """
    _check_priors(priors)
    neg_range = _check_thresholds(pos_iou_thr, neg_iou_thr, min_pos_iou)
    if gt_boxes.ndim != 3 or gt_boxes.shape[-1] != 4:
        raise ValueError(f"gt_boxes must be (B, M, 4), got {tuple(gt_boxes.shape)}")
    if gt_labels.shape != gt_boxes.shape[:2] or gt_mask.shape != gt_boxes.shape[:2]:
        raise ValueError("gt_labels and gt_mask must be (B, M), the shape of gt_boxes[..., 0]")
    check_gt_boxes(gt_boxes, gt_mask)
    batch_size, num_gt = gt_boxes.shape[:2]
    overlaps = box_iou(gt_boxes.reshape(-1, 4).float(), priors.float())  # (B M, A)
    overlaps = overlaps.reshape(batch_size, num_gt, priors.shape[0])
    # padded boxes never win: below every real IoU (mmdet has no padding; >= 0 there)
    overlaps = overlaps.masked_fill(~gt_mask[:, :, None], -1.0)
    return _assign_from_overlaps(
        overlaps,
        gt_labels.long(),
        gt_mask,
        pos_iou_thr,
        neg_range,
        min_pos_iou,
        match_low_quality,
    )


def _random_subset(index: Tensor, count: int, generator: torch.Generator | None) -> Tensor:
    """``count`` of ``index`` drawn without replacement, as mmdet's ``random_choice``
    (a CPU ``randperm`` of the gallery), then sorted (mmdet's ``unique``)."""
    if index.numel() > count:
        order = torch.randperm(index.numel(), generator=generator)[:count]
        index = index[order.to(index.device)]
    return index.unique()


def sample_random(
    result: AssignResult,
    num: int,
    pos_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """mmdet's ``RandomSampler``: which priors of one image enter the loss.

    At most ``int(num * pos_fraction)`` positives (``gt_index >= 0``) are drawn at
    random; then negatives (``gt_index == BACKGROUND``) fill up to ``num``. Ignored
    priors are never drawn. With ``num`` at least the number of priors every positive
    and every negative is taken, and the result does not depend on the random stream.

    Args:
        result: the assignment of one image, fields (A,).
        num: priors drawn per image (RPN 256, RoI head 512).
        pos_fraction: the largest share of positives (RPN 0.5, RoI head 0.25).
        generator: a CPU ``torch.Generator``, or None for the global stream (as mmdet,
            whose draws are then the same for the same seed and the same calls).

    Returns:
        ``(pos_index (P,), neg_index (N,))``: prior indices, each sorted, P + N <= num.

    Raises:
        ValueError: a batched result, ``num < 1`` or ``pos_fraction`` outside [0, 1].
    """
    if result.gt_index.ndim != 1:
        raise ValueError("sample_random takes the result of one image, fields (A,)")
    if num < 1 or not 0.0 <= pos_fraction <= 1.0:
        raise ValueError(f"need num >= 1 and pos_fraction in [0, 1], got {num}, {pos_fraction}")
    positives = torch.nonzero(result.gt_index >= 0).squeeze(1)
    pos_index = _random_subset(positives, int(num * pos_fraction), generator)
    negatives = torch.nonzero(result.gt_index == BACKGROUND).squeeze(1)
    neg_index = _random_subset(negatives, num - pos_index.numel(), generator)
    return pos_index, neg_index
