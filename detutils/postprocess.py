"""From scores and boxes to detections: threshold, class-aware NMS, ``max_det``.

Every detector's ``predict`` ends here, so all of them filter their raw outputs the
same way:

1. keep each (prior, class) pair whose score exceeds ``score_thr`` (a prior may give
   several detections of different classes, as in mmdet's ``multiclass_nms``; with
   ``multi_label=False`` a prior gives only its best class);
2. keep the ``max_candidates`` best of those, to bound the cost of NMS when an
   untrained network scores everything alike;
3. run NMS per class (``torchvision.ops.batched_nms``): a box suppresses only boxes
   of its own class whose IoU with it exceeds ``iou_thr``;
4. keep the ``max_det`` best survivors.
"""

import torch
from torch import Tensor
from torchvision.ops import batched_nms

__all__ = [
    "postprocess_detections",
    "select_dense_detections",
    "select_detections",
    "select_proposals",
]


def select_detections(
    boxes: Tensor,
    scores: Tensor,
    score_thr: float = 0.05,
    iou_thr: float = 0.6,
    max_det: int = 100,
    multi_label: bool = True,
    max_candidates: int = 10000,
) -> dict[str, Tensor]:
    """Detections of one image: score threshold, class-aware NMS, then ``max_det``.

    Args:
        boxes: (A, 4) xyxy, pixels of the network input, one box per prior; or
            (A, C, 4) with one box per prior and class (two-stage detectors).
        scores: (A, C) class probabilities in [0, 1].
        score_thr: a (prior, class) pair is kept only if its score is above this.
        iou_thr: NMS threshold; a box suppresses boxes of the same class whose IoU
            with it is above this.
        max_det: detections kept per image, best scores first.
        multi_label: allow one prior to give detections of several classes.
        max_candidates: at most this many best-scoring pairs go into NMS.

    Returns:
        ``{"boxes": (N, 4) xyxy px, "scores": (N,), "labels": (N,) int64}``, sorted by
        decreasing score, ``N <= max_det``. Boxes with a NaN or infinite coordinate are
        dropped before NMS (torchvision's class offsets would turn them, and with them
        every box of their class, into NaN).

    Reference:
        torchvision ``ops.batched_nms`` (class-aware NMS by per-class offsets);
        mmdet ``multiclass_nms`` (every class above threshold is a candidate).
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (A, C), got shape {tuple(scores.shape)}")
    num_priors, num_classes = scores.shape
    if boxes.shape not in ((num_priors, 4), (num_priors, num_classes, 4)):
        raise ValueError(
            f"boxes must be (A, 4) or (A, C, 4) with A={num_priors}, C={num_classes}; "
            f"got shape {tuple(boxes.shape)}"
        )
    if max_det < 1:
        raise ValueError(f"max_det must be at least 1, got {max_det}")
    if num_classes == 0:  # nothing to score, no detections (and max over C would fail)
        scores, boxes = scores.new_zeros(0, 1), boxes.new_zeros(0, 4)
    # 1. candidates: (prior, class) pairs above the score threshold
    if multi_label:
        prior_index, labels = torch.nonzero(scores > score_thr, as_tuple=True)  # (N,), (N,)
        candidate_scores = scores[prior_index, labels]  # (N,)
    else:
        best_scores, best_labels = scores.max(dim=1)  # (A,), (A,)
        prior_index = torch.nonzero(best_scores > score_thr, as_tuple=True)[0]  # (N,)
        candidate_scores, labels = best_scores[prior_index], best_labels[prior_index]
    candidate_boxes = boxes[prior_index] if boxes.dim() == 2 else boxes[prior_index, labels]
    # a non-finite box would make batched_nms's class offset NaN and spoil its whole class
    finite = torch.isfinite(candidate_boxes).all(dim=1) & torch.isfinite(candidate_scores)
    candidate_boxes, candidate_scores, labels = (
        candidate_boxes[finite],
        candidate_scores[finite],
        labels[finite],
    )
    # 2. bound the work of NMS
    if candidate_scores.numel() > max_candidates:
        candidate_scores, top = candidate_scores.topk(max_candidates)
        candidate_boxes, labels = candidate_boxes[top], labels[top]
    # 3. class-aware NMS, 4. the best max_det survivors
    return _nms_best(candidate_boxes, candidate_scores, labels, iou_thr, max_det)


def _nms_best(
    boxes: Tensor, scores: Tensor, labels: Tensor, iou_thr: float, max_det: int
) -> dict[str, Tensor]:
    """Class-aware NMS (its result sorted by decreasing score), then the best ``max_det``."""
    keep = batched_nms(boxes.float(), scores.float(), labels, iou_thr)[:max_det]
    return {
        "boxes": boxes[keep].float(),
        "scores": scores[keep].float(),
        "labels": labels[keep].long(),
    }


def postprocess_detections(
    boxes: Tensor,
    scores: Tensor,
    score_thr: float = 0.05,
    iou_thr: float = 0.6,
    max_det: int = 100,
    multi_label: bool = True,
    max_candidates: int = 10000,
) -> list[dict[str, Tensor]]:
    """``select_detections`` for every image of a batch.

    Args:
        boxes: (B, A, 4) or (B, A, C, 4) xyxy, pixels of the network input.
        scores: (B, A, C) class probabilities.
        score_thr, iou_thr, max_det, multi_label, max_candidates: as in
            ``select_detections``.

    Returns:
        list of B dicts ``{"boxes" (N_i, 4), "scores" (N_i,), "labels" (N_i,)}``.

    Reference:
        torchvision ``ops.batched_nms``; ultralytics ``utils/ops.py``
        ``non_max_suppression`` (the per-image loop of a batch).
    """
    if boxes.shape[0] != scores.shape[0]:
        raise ValueError(
            f"boxes and scores disagree on the batch size: {boxes.shape[0]} vs {scores.shape[0]}"
        )
    return [
        select_detections(
            image_boxes,
            image_scores,
            score_thr=score_thr,
            iou_thr=iou_thr,
            max_det=max_det,
            multi_label=multi_label,
            max_candidates=max_candidates,
        )
        for image_boxes, image_scores in zip(boxes, scores, strict=True)
    ]


def select_dense_detections(
    boxes: Tensor,
    scores: Tensor,
    num_per_level: list[int],
    score_factors: Tensor | None = None,
    score_thr: float = 0.05,
    nms_pre: int = 1000,
    iou_thr: float = 0.6,
    max_det: int = 100,
    min_size: float = 0.0,
) -> dict[str, Tensor]:
    """Detections of one image the way mmdet's dense heads make them (RetinaNet, ATSS).

    1. on each level, the (prior, class) pairs whose class score exceeds ``score_thr``,
       and of those the ``nms_pre`` best;
    2. the kept scores multiplied by their prior's ``score_factors`` (ATSS, FCOS: the
       predicted centerness), so the threshold and the top-k read the class score alone;
    3. boxes no wider or taller than ``min_size`` dropped;
    4. class-aware NMS at ``iou_thr``, then the ``max_det`` best.

    Args:
        boxes: (A, 4) xyxy px, priors of all levels concatenated.
        scores: (A, C) class probabilities.
        num_per_level: priors of each level, summing to A.
        score_factors: (A,) in [0, 1], or None.
        score_thr, nms_pre, iou_thr, max_det, min_size: as above (mmdet's ATSS test
            settings are the defaults).

    Returns:
        ``{"boxes": (N, 4), "scores": (N,), "labels": (N,)}``, best first, N <= max_det.

    Reference: mmdet ``BaseDenseHead._predict_by_feat_single`` and ``_bbox_post_process``,
        ``mmdet/structures/bbox`` ``filter_scores_and_topk``.
    """
    if scores.dim() != 2 or boxes.shape != (scores.shape[0], 4):
        raise ValueError(
            f"boxes must be (A, 4) and scores (A, C), got {tuple(boxes.shape)} and "
            f"{tuple(scores.shape)}"
        )
    if sum(num_per_level) != scores.shape[0]:
        raise ValueError(f"num_per_level {list(num_per_level)} must sum to {scores.shape[0]}")
    if score_factors is not None and score_factors.shape != scores.shape[:1]:
        raise ValueError(f"score_factors must be ({scores.shape[0]},)")
    if max_det < 1 or nms_pre < 1:
        raise ValueError(f"max_det and nms_pre must be at least 1, got {max_det}, {nms_pre}")
    kept_priors, kept_labels, kept_scores = [], [], []
    start = 0
    for count in num_per_level:
        level_scores = scores[start : start + count]  # (A_l, C)
        prior_index, labels = torch.nonzero(level_scores > score_thr, as_tuple=True)
        values = level_scores[prior_index, labels]
        values, order = values.sort(descending=True, stable=True)
        order = order[:nms_pre]
        kept_priors.append(prior_index[order] + start)
        kept_labels.append(labels[order])
        kept_scores.append(values[:nms_pre])
        start += count
    prior_index, labels = torch.cat(kept_priors), torch.cat(kept_labels)
    candidate_scores, candidate_boxes = torch.cat(kept_scores), boxes[prior_index]
    if score_factors is not None:
        candidate_scores = candidate_scores * score_factors[prior_index]
    widths = candidate_boxes[:, 2] - candidate_boxes[:, 0]
    heights = candidate_boxes[:, 3] - candidate_boxes[:, 1]
    valid = (widths > min_size) & (heights > min_size) & torch.isfinite(candidate_boxes).all(1)
    candidate_boxes, candidate_scores = candidate_boxes[valid], candidate_scores[valid]
    labels = labels[valid]
    return _nms_best(candidate_boxes, candidate_scores, labels, iou_thr, max_det)


def select_proposals(
    boxes: Tensor,
    scores: Tensor,
    level_ids: Tensor,
    iou_thr: float = 0.7,
    max_num: int = 1000,
    min_size: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """The proposals of one image from an RPN's best boxes, the way mmdet keeps them.

    1. boxes no wider or taller than ``min_size`` (0: boxes of zero width or height,
       which clipping makes of anchors outside the image) are dropped, as are boxes
       with a non-finite coordinate;
    2. NMS at ``iou_thr`` among the boxes of each level, ``level_ids`` acting as the
       class (mmdet's and torchvision's ``batched_nms`` with the level ids): a box of P2
       does not suppress one of P3;
    3. the ``max_num`` best survivors of all levels, best first.

    Args:
        boxes: (P, 4) xyxy px, decoded and clipped: the per-level top-k of the caller.
        scores: (P,) objectness probabilities.
        level_ids: (P,) long, the level of each box.
        iou_thr, max_num, min_size: as above (mmdet's Faster R-CNN: 0.7, 1000, 0).

    Returns:
        ``(proposals (N, 4), scores (N,))``, best first, N <= max_num.

    Reference: mmdet ``RPNHead._bbox_post_process``; torchvision
        ``RegionProposalNetwork.filter_proposals``.
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (P, 4), got {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1] or level_ids.shape != boxes.shape[:1]:
        raise ValueError("scores and level_ids must be (P,), one per box")
    if max_num < 1:
        raise ValueError(f"max_num must be at least 1, got {max_num}")
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    valid = (widths > min_size) & (heights > min_size) & torch.isfinite(boxes).all(dim=1)
    boxes, scores, level_ids = boxes[valid], scores[valid], level_ids[valid]
    keep = batched_nms(boxes.float(), scores.float(), level_ids, iou_thr)[:max_num]
    return boxes[keep], scores[keep]
