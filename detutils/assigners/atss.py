"""ATSS, Adaptive Training Sample Selection: each box sets its own IoU threshold.

For every ground-truth box j of an image:

1. measure the IoU of every prior with box j, and the distance from every prior's
   centre to the centre of box j;
2. on each level, take the k = min(topk, priors of the level) priors whose centres are
   nearest: the box's N candidates (N = the sum of k over the levels);
3. set the box's threshold to the mean plus the (unbiased) standard deviation of its
   candidates' IoUs: a box that overlaps its candidates well sets a high bar, a thin
   or odd-shaped box a low one;
4. keep the candidates whose IoU reaches the threshold (``>=``) and whose centre lies
   inside box j by more than ``center_eps`` (0.01 px) on all four sides;
5. a prior kept by several boxes learns the one it overlaps most (the lowest box index
   among equal IoUs). Every other prior is background.

NanoDet runs it on grid cells (squares of side 5 x stride centred on each cell, see
``detutils.priors.grid_cells``) with topk = 9: up to 27 candidates per box over three
levels.

Where this module pins down what the reference leaves open, or differs from it:

- Ties in step 2. The reference calls ``topk``, which picks arbitrarily among priors at
  the same distance. On a grid ties are common: a box centred on a cell corner has four
  nearest cells at one distance, then eight at the next, so ``topk=9`` must choose five
  of those eight. Here the lowest prior index wins a tie (row-major: upper rows first,
  then left columns), so the result is reproducible on every device.
- IoUs come from :func:`detutils.boxes.box_iou` (``inter / (union + 1e-7)``); mmdet's
  ``bbox_overlaps`` divides by ``max(union, 1e-6)``. For any union above 2 px^2 the
  ``1e-7`` is below half a float32 step, so the two agree bit for bit.
- Distances are ``sqrt(dx^2 + dy^2)`` between centres ``(x1 + x2) / 2``, as there.
- The mean and standard deviation are taken over the same N IoUs as the reference,
  laid out (M, N) instead of (N, M); the order of the float additions may differ, and
  with it the threshold by a rounding step (about 1e-8), which only matters for an IoU
  equal to the threshold to the last bit.
- With a single candidate in all (one level of one prior, or ``topk=1`` on one level)
  the unbiased standard deviation is undefined (NaN) and, as in the reference, the box
  gets no positive.
- A box can end with no positive even with many candidates, as in the reference: when
  a few candidates overlap it a little and the rest hardly at all (a long thin bar
  whose two best levels tie, say), mean + std can exceed the best candidate's IoU
  (notebook 21, exercise 2).
- mmdet's ``ignore_iof_thr`` (priors covered by "ignore" boxes) is not implemented;
  NanoDet sets it to -1, off.

:func:`assign_atss` is the per-image algorithm step by step, :func:`explain_atss`
returns every intermediate of it, and :func:`assign_atss_batched` does a padded batch at
once and equals a loop of :func:`assign_atss` exactly (``tests/test_atss.py``).

Reference: Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free
Detection via Adaptive Training Sample Selection", CVPR 2020; mmdet ``ATSSAssigner``
(``mmdet/models/task_modules/assigners/atss_assigner.py``); NanoDet ``ATSSAssigner``
(``nanodet/model/head/assigner/atss_assigner.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from detutils.assigners.batch import check_gt_boxes
from detutils.assigners.result import BACKGROUND, AssignResult
from detutils.boxes import box_iou, box_iou_aligned

if TYPE_CHECKING:
    import pandas

__all__ = ["ATSSExplanation", "assign_atss", "assign_atss_batched", "explain_atss"]


# ----------------------------------------------------------------------------- checks
def _check_priors(priors: Tensor, num_per_level: Sequence[int]) -> list[int]:
    if not isinstance(priors, Tensor) or priors.ndim != 2 or priors.shape[-1] != 4:
        raise ValueError(f"priors must be a (A, 4) tensor, got {getattr(priors, 'shape', priors)}")
    counts = [int(count) for count in num_per_level]
    if any(count < 0 for count in counts) or sum(counts) != priors.shape[0]:
        raise ValueError(
            f"num_per_level must be counts >= 0 that sum to the {priors.shape[0]} priors, "
            f"got {list(num_per_level)}"
        )
    return counts


def _check_topk(topk: int) -> None:
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk must be an int >= 1, got {topk!r}")


def _check_gt(gt_boxes: Tensor, gt_labels: Tensor, batched: bool) -> None:
    box_shape = "(B, M, 4)" if batched else "(M, 4)"
    ndim = 3 if batched else 2
    if not isinstance(gt_boxes, Tensor) or gt_boxes.ndim != ndim or gt_boxes.shape[-1] != 4:
        raise ValueError(f"gt_boxes must be {box_shape}, got {getattr(gt_boxes, 'shape', None)}")
    if not isinstance(gt_labels, Tensor) or gt_labels.shape != gt_boxes.shape[:-1]:
        raise ValueError(
            f"gt_labels must have shape {tuple(gt_boxes.shape[:-1])} (one label per box), "
            f"got {getattr(gt_labels, 'shape', None)}"
        )
    if gt_labels.is_floating_point():
        raise ValueError(f"gt_labels must hold integer class ids, got {gt_labels.dtype}")
    if gt_boxes.device.type == "cpu":  # on a GPU a check would cost a round trip a step
        check_gt_boxes(gt_boxes)  # (M, 4) or (B, M, 4); padding (zeros) is a valid box


def _centers(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 2) centres, computed as the reference does."""
    return torch.stack(
        [(boxes[..., 0] + boxes[..., 2]) / 2.0, (boxes[..., 1] + boxes[..., 3]) / 2.0], dim=-1
    )


def _distances(prior_centers: Tensor, gt_centers: Tensor) -> Tensor:
    """(A, 2) and (..., M, 2) centres -> (..., M, A) Euclidean distances.

    ``sqrt(dx * dx + dy * dy)``: the reference's ``(p - g).pow(2).sum(-1).sqrt()`` to the
    bit, without the (..., M, A, 2) intermediate.
    """
    # contiguous columns (broadcasting strided views is several times slower) and
    # in-place squares, sum and root: the same float operations, fewer passes over memory
    dx = prior_centers[:, 0].contiguous() - gt_centers[..., 0:1]  # (..., M, A)
    dy = prior_centers[:, 1].contiguous() - gt_centers[..., 1:2]  # (..., M, A)
    return dx.mul_(dx).add_(dy.mul_(dy)).sqrt_()


def _unbiased_std(values: Tensor) -> Tensor:
    """Unbiased standard deviation over the last dimension; NaN (silently) for one value."""
    if values.shape[-1] < 2:
        return torch.full_like(values[..., 0], torch.nan)
    return values.std(dim=-1)


def _center_inside(centers: Tensor, boxes: Tensor, eps: float) -> Tensor:
    """(..., 2) points, (..., 4) boxes -> (...) bool: inside by more than ``eps`` on all sides."""
    sides = torch.stack(
        [
            centers[..., 0] - boxes[..., 0],  # left
            centers[..., 1] - boxes[..., 1],  # top
            boxes[..., 2] - centers[..., 0],  # right
            boxes[..., 3] - centers[..., 1],  # bottom
        ],
        dim=-1,
    )  # (..., 4)
    return sides.min(dim=-1).values > eps


def _level_slices(num_per_level: list[int], topk: int) -> list[tuple[int, int, int]]:
    """(start, end, k) of every level, k = min(topk, level size) (0 for an empty level)."""
    slices, start = [], 0
    for count in num_per_level:
        slices.append((start, start + count, min(topk, count)))
        start += count
    return slices


# ------------------------------------------------------------------ the per-image steps
@dataclass(frozen=True)
class ATSSExplanation:
    """Every intermediate of :func:`assign_atss` for one image, one row per box.

    N is the number of candidates per box, ``sum(min(topk, n) for n in num_per_level)``;
    row j, column c describes candidate c of box j (levels in order, nearest first).
    """

    candidate_index: Tensor  # (M, N) long, flat prior index of each candidate
    candidate_level: Tensor  # (M, N) long, its level
    candidate_distance: Tensor  # (M, N) px, prior centre to box centre
    candidate_iou: Tensor  # (M, N) IoU of the candidate prior with the box
    iou_mean: Tensor  # (M,) mean of the box's candidate IoUs
    iou_std: Tensor  # (M,) their unbiased standard deviation
    iou_threshold: Tensor  # (M,) mean + std
    passes_iou: Tensor  # (M, N) bool, candidate IoU >= threshold
    center_inside: Tensor  # (M, N) bool, prior centre inside the box (by > center_eps)
    positive: Tensor  # (M, N) bool, both tests passed: the box claims this prior
    result: AssignResult  # (A,) fields, after each prior went to its best box

    def table(self, box: int) -> pandas.DataFrame:
        """The candidates of box ``box`` as a table, one row per candidate.

        Columns: level, prior, distance, iou, passes_iou, center_inside, positive, and
        ``assigned`` (the prior finally learns this box: it may lose it to a box it
        overlaps more).
        """
        import pandas as pd

        if not 0 <= box < self.candidate_index.shape[0]:
            raise ValueError(f"box must be in [0, {self.candidate_index.shape[0]}), got {box}")
        priors = self.candidate_index[box].cpu()
        return pd.DataFrame(
            {
                "level": self.candidate_level[box].cpu().numpy(),
                "prior": priors.numpy(),
                "distance": self.candidate_distance[box].cpu().numpy(),
                "iou": self.candidate_iou[box].cpu().numpy(),
                "passes_iou": self.passes_iou[box].cpu().numpy(),
                "center_inside": self.center_inside[box].cpu().numpy(),
                "positive": self.positive[box].cpu().numpy(),
                "assigned": (self.result.gt_index.cpu()[priors] == box).numpy(),
            }
        )


@torch.no_grad()
def explain_atss(
    priors: Tensor,
    num_per_level: Sequence[int],
    gt_boxes: Tensor,
    gt_labels: Tensor,
    topk: int = 9,
    center_eps: float = 0.01,
) -> ATSSExplanation:
    """ATSS on one image, keeping every intermediate (see :class:`ATSSExplanation`).

    Args:
        priors: (A, 4) xyxy, pixels, levels concatenated (grid cells, anchors).
        num_per_level: priors of each level, summing to A.
        gt_boxes: (M, 4) xyxy, pixels; M may be 0.
        gt_labels: (M,) class ids 0 .. C-1.
        topk: candidates per level and box.
        center_eps: how far inside the box (pixels) a candidate's centre must be.

    Returns:
        the explanation; its ``result`` is what :func:`assign_atss` returns.

    Raises:
        ValueError: malformed priors, counts, boxes, labels or topk.

    Reference: mmdet / NanoDet ``ATSSAssigner.assign`` (steps numbered as there).
    """
    counts = _check_priors(priors, num_per_level)
    _check_topk(topk)
    _check_gt(gt_boxes, gt_labels, batched=False)
    device, num_priors, num_gt = priors.device, priors.shape[0], gt_boxes.shape[0]
    gt_boxes = gt_boxes.to(priors.dtype)
    slices = _level_slices(counts, topk)
    num_candidates = sum(k for _, _, k in slices)

    if num_gt == 0 or num_priors == 0:  # nothing to assign: every prior is background
        background = torch.full((num_priors,), BACKGROUND, dtype=torch.long, device=device)
        per_candidate = torch.zeros(num_gt, num_candidates, dtype=priors.dtype, device=device)
        per_box = torch.zeros(num_gt, dtype=priors.dtype, device=device)
        return ATSSExplanation(
            candidate_index=per_candidate.long(),
            candidate_level=per_candidate.long(),
            candidate_distance=per_candidate,
            candidate_iou=per_candidate,
            iou_mean=per_box,
            iou_std=per_box,
            iou_threshold=per_box,
            passes_iou=per_candidate.bool(),
            center_inside=per_candidate.bool(),
            positive=per_candidate.bool(),
            result=AssignResult(background, background.clone(), priors.new_zeros(num_priors)),
        )

    # 1. IoU and centre distance of every (box j, prior i) pair: element j, i.
    iou = box_iou(priors, gt_boxes).T  # (M, A)
    prior_centers = _centers(priors)  # (A, 2)
    gt_centers = _centers(gt_boxes)  # (M, 2)
    distances = _distances(prior_centers, gt_centers)  # (M, A)

    # 2. On each level, the k nearest priors; a stable sort breaks ties by lowest index.
    candidate_index, candidate_level = [], []
    for level, (start, end, k) in enumerate(slices):
        order = torch.sort(distances[:, start:end], dim=1, stable=True).indices  # (M, n)
        candidate_index.append(order[:, :k] + start)  # (M, k)
        candidate_level.append(torch.full((num_gt, k), level, dtype=torch.long, device=device))
    candidate_index = torch.cat(candidate_index, dim=1)  # (M, N)
    candidate_level = torch.cat(candidate_level, dim=1)  # (M, N)

    # 3. Each box's threshold: mean + unbiased std of its candidates' IoUs.
    candidate_iou = iou.gather(1, candidate_index)  # (M, N)
    iou_mean = candidate_iou.mean(dim=1)  # (M,)
    iou_std = _unbiased_std(candidate_iou)  # (M,)
    iou_threshold = iou_mean + iou_std
    passes_iou = candidate_iou >= iou_threshold[:, None]  # (M, N)

    # 4. The candidate's centre must lie inside the box.
    boxes = gt_boxes[:, None, :].expand(-1, num_candidates, -1)  # (M, N, 4)
    center_inside = _center_inside(prior_centers[candidate_index], boxes, center_eps)  # (M, N)
    positive = passes_iou & center_inside

    # 5. A prior claimed by several boxes learns the one with the highest IoU; max over
    # boxes returns the first (lowest) box index among equal IoUs.
    claimed = torch.zeros_like(iou, dtype=torch.bool).scatter_(1, candidate_index, positive)
    claimed_iou = torch.where(claimed, iou, torch.full_like(iou, -torch.inf))  # (M, A)
    best_iou, best_gt = claimed_iou.max(dim=0)  # (A,), (A,)
    result = _to_result(best_iou, best_gt, gt_labels)
    return ATSSExplanation(
        candidate_index,
        candidate_level,
        distances.gather(1, candidate_index),
        candidate_iou,
        iou_mean,
        iou_std,
        iou_threshold,
        passes_iou,
        center_inside,
        positive,
        result,
    )


def _to_result(best_iou: Tensor, best_gt: Tensor, gt_labels: Tensor) -> AssignResult:
    """(..., A) best IoU over boxes (-inf: unclaimed) and its box index -> AssignResult."""
    assigned = best_iou > -torch.inf
    background = torch.full_like(best_gt, BACKGROUND)
    gt_index = torch.where(assigned, best_gt, background)
    if gt_labels.ndim == 1:
        labels = gt_labels.long()[best_gt]  # (A,)
    else:
        labels = gt_labels.long().gather(1, best_gt)  # (B, A)
    labels = torch.where(assigned, labels, background)
    iou = torch.where(assigned, best_iou, torch.zeros_like(best_iou))
    return AssignResult(gt_index, labels, iou)


def assign_atss(
    priors: Tensor,
    num_per_level: Sequence[int],
    gt_boxes: Tensor,
    gt_labels: Tensor,
    topk: int = 9,
    center_eps: float = 0.01,
) -> AssignResult:
    """ATSS on one image: which box (if any) each prior learns.

    Args:
        priors: (A, 4) xyxy, pixels, levels concatenated (grid cells, anchors).
        num_per_level: priors of each level, summing to A.
        gt_boxes: (M, 4) xyxy, pixels; M may be 0 (every prior is background).
        gt_labels: (M,) class ids 0 .. C-1.
        topk: candidates per level and box (9 in ATSS, GFL and NanoDet).
        center_eps: how far inside the box (pixels) a candidate's centre must be; the
            reference's 0.01 ("strictly inside").

    Returns:
        ``AssignResult`` with (A,) fields: gt_index, labels (``BACKGROUND`` = -1 where no
        box) and iou (the IoU with the assigned box, 0 elsewhere).

    Raises:
        ValueError: malformed priors, counts, boxes, labels or topk.

    Reference: mmdet ``ATSSAssigner`` (topk=9); NanoDet GFL head (topk=9, grid cells of
        side 5 x stride, ``ignore_iof_thr=-1``).
    """
    return explain_atss(priors, num_per_level, gt_boxes, gt_labels, topk, center_eps).result


# ------------------------------------------------------------------------ the batch
def _nearest_stable(distances: Tensor, k: int) -> Tensor:
    """(R, N) -> (R, k): the stable-sort answer, for the few rows that need it.

    A non-negative float32 read as an int32 keeps its order, so ``bits * 2^32 + index``
    is a unique int64 key ordered by (distance, index), and ``topk`` on the keys is
    exact without a full sort. Other dtypes take the sort.
    """
    if distances.dtype != torch.float32:
        return distances.sort(dim=-1, stable=True).indices[:, :k]
    index = torch.arange(distances.shape[-1], device=distances.device)
    keys = (distances.view(torch.int32).long() << 32) | index  # (R, N)
    return keys.topk(k, dim=-1, largest=False).values & 0xFFFFFFFF


def _nearest(distances: Tensor, k: int) -> Tensor:
    """Indices of the k smallest distances along the last dimension, nearest first, ties
    broken by the lowest index: what ``sort(stable=True).indices[..., :k]`` gives.

    ``topk`` finds the k nearest without sorting everything, but picks arbitrarily among
    equal distances. Asking it for k + 1 shows where that matters: when the (k + 1)-th
    distance equals the k-th, a tie straddles the cut (on a grid: boxes centred on a
    cell edge or corner), and those rows are redone exactly. In the other rows the set
    of k is right, and is put in (distance, index) order.

    Args:
        distances: (..., N) non-negative, N >= k >= 1.

    Returns:
        (..., k) long.
    """
    if distances.shape[-1] == k:  # every prior of the level is a candidate
        return distances.sort(dim=-1, stable=True).indices
    values, index = distances.topk(k + 1, dim=-1, largest=False)  # (..., k + 1) each
    straddles = values[..., k] == values[..., k - 1]  # (...)
    values, index = values[..., :k], index[..., :k]
    # (distance, index) order: sort by index, then a stable sort by distance
    index, order = index.sort(dim=-1)
    index = index.gather(-1, values.gather(-1, order).sort(dim=-1, stable=True).indices)
    if straddles.any():
        index[straddles] = _nearest_stable(distances[straddles], k)
    return index


@torch.no_grad()
def assign_atss_batched(
    priors: Tensor,
    num_per_level: Sequence[int],
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_mask: Tensor,
    topk: int = 9,
    center_eps: float = 0.01,
) -> AssignResult:
    """ATSS on a padded batch at once; equals :func:`assign_atss` image by image exactly.

    The same five steps with a batch dimension, and three shortcuts that change no
    value: IoUs are computed for the candidates only (N per box instead of A); the k
    nearest priors come from ``topk`` plus an explicit tie rule instead of a full sort;
    and each prior's winning box comes from scattering the claims onto the priors
    instead of a (B, M, A) matrix. ``benchmarks/atss.py`` times it against the loop.

    Args:
        priors: (A, 4) xyxy, pixels, shared by every image.
        num_per_level: priors of each level, summing to A.
        gt_boxes: (B, M, 4) xyxy, pixels, padded.
        gt_labels: (B, M) class ids, padded.
        gt_mask: (B, M) bool, True for real boxes, False for padding.
        topk, center_eps: as in :func:`assign_atss`.

    Returns:
        ``AssignResult`` with (B, A) fields.

    Raises:
        ValueError: malformed inputs (shapes, counts, topk).

    Reference: mmdet ``ATSSAssigner``; the batched layout of ultralytics ``tal.py``.
    """
    counts = _check_priors(priors, num_per_level)
    _check_topk(topk)
    _check_gt(gt_boxes, gt_labels, batched=True)
    if not isinstance(gt_mask, Tensor) or gt_mask.shape != gt_labels.shape:
        raise ValueError(
            f"gt_mask must have shape {tuple(gt_labels.shape)}, got "
            f"{getattr(gt_mask, 'shape', None)}"
        )
    gt_mask = gt_mask.bool()
    device = priors.device
    batch_size, num_gt, _ = gt_boxes.shape
    num_priors = priors.shape[0]
    if num_gt == 0 or num_priors == 0:
        background = torch.full((batch_size, num_priors), BACKGROUND, dtype=torch.long)
        background = background.to(device)
        return AssignResult(background, background.clone(), priors.new_zeros(background.shape))
    gt_boxes = gt_boxes.to(priors.dtype)

    # 1. Centre distances, element b, j, i: box j of image b to prior i.
    prior_centers = _centers(priors)  # (A, 2)
    gt_centers = _centers(gt_boxes)  # (B, M, 2)
    distances = _distances(prior_centers, gt_centers)  # (B, M, A)

    # 2. The k nearest priors of each level (lowest index first among equal distances).
    candidate_index = torch.cat(
        [
            _nearest(distances[..., start:end], k) + start
            for start, end, k in _level_slices(counts, topk)
            if k > 0
        ],
        dim=-1,
    )  # (B, M, N)
    num_candidates = candidate_index.shape[-1]

    # 3. IoUs of the candidates only, and each box's threshold.
    candidate_boxes = priors[candidate_index]  # (B, M, N, 4)
    boxes = gt_boxes[:, :, None, :].expand(-1, -1, num_candidates, -1)  # (B, M, N, 4)
    candidate_iou = box_iou_aligned(candidate_boxes, boxes)  # (B, M, N)
    iou_threshold = candidate_iou.mean(dim=-1) + _unbiased_std(candidate_iou)  # (B, M)
    passes_iou = candidate_iou >= iou_threshold[..., None]

    # 4. Centre inside the box; padded boxes claim nothing.
    center_inside = _center_inside(prior_centers[candidate_index], boxes, center_eps)
    positive = passes_iou & center_inside & gt_mask[..., None]  # (B, M, N)

    # 5. Highest IoU wins a prior claimed by several boxes (lowest box index on ties).
    # Scatters from the M N claims of each image to its A priors rather than a (B, M, A)
    # matrix: first the best IoU of each prior, then the lowest box index among the
    # claims that reach it (a losing claim carries M, which never wins the minimum).
    claims = candidate_index.flatten(1)  # (B, M N) the prior of each claim
    claim_iou = torch.where(positive, candidate_iou, -torch.inf).flatten(1)  # (B, M N)
    best_iou = torch.full((batch_size, num_priors), -torch.inf, dtype=priors.dtype, device=device)
    best_iou.scatter_reduce_(1, claims, claim_iou, reduce="amax")  # (B, A)
    claim_box = torch.arange(num_gt, device=device)[None, :, None].expand_as(candidate_index)
    wins = positive.flatten(1) & (claim_iou == best_iou.gather(1, claims))  # (B, M N)
    best_gt = torch.full((batch_size, num_priors), num_gt, dtype=torch.long, device=device)
    best_gt.scatter_reduce_(1, claims, torch.where(wins, claim_box.flatten(1), num_gt), "amin")
    best_gt = best_gt.clamp(max=num_gt - 1)  # unclaimed priors: a valid index, masked next
    return _to_result(best_iou, best_gt, gt_labels)
