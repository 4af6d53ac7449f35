"""Box coders: how a head's raw numbers become boxes, and how target boxes become numbers.

Four codings, one per detector family of the course:

    distance (ltrb)   FCOS, GFL / NanoDet, YOLOv8: distances from a point to the four sides
    delta-xywh        Faster R-CNN, RetinaNet, ATSS: centre shift and log size ratio to a prior
    YOLO              YOLOv3: sigmoid offset inside a grid cell, exp scale of an anchor size
    integral (DFL)    GFL / NanoDet, YOLOv8: the expected value of a distribution over bins

Strides are the caller's business: the distance coder works in whatever unit its points
and boxes share. YOLOv8 and NanoDet divide boxes and points by the level's stride before
``encode_distance`` (so distances are counted in bins) and multiply after decoding.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "YOLO_MAX_SCALE",
    "decode_delta_xywh",
    "decode_distance",
    "decode_yolo",
    "dfl_distances",
    "dfl_integral",
    "encode_delta_xywh",
    "encode_distance",
]

YOLO_MAX_SCALE = 1e3  # the largest exp(t_wh) of a YOLO box, in anchor sizes (as the loss)


def _check_tensor(tensor: Tensor, name: str) -> None:
    if not isinstance(tensor, Tensor) or tensor.ndim == 0:
        raise ValueError(f"{name} must be a torch.Tensor with a last dimension, got {tensor!r}")


def _check_last_dim(tensor: Tensor, size: int, name: str) -> None:
    _check_tensor(tensor, name)
    if tensor.shape[-1] != size:
        raise ValueError(f"{name} must have shape (..., {size}), got {tuple(tensor.shape)}")


def _check_max_shape(max_shape: Sequence[int] | None) -> None:
    if max_shape is not None and (len(max_shape) < 2 or min(max_shape[:2]) <= 0):
        raise ValueError(f"max_shape must be (H, W) with positive sides, got {max_shape}")


def _clip_xyxy(boxes: Tensor, max_shape: Sequence[int]) -> Tensor:
    """Clamp x to [0, W] and y to [0, H], without writing into ``boxes``."""
    height, width = max_shape[0], max_shape[1]
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(
        [x1.clamp(0, width), y1.clamp(0, height), x2.clamp(0, width), y2.clamp(0, height)], dim=-1
    )


def encode_distance(
    points: Tensor, boxes: Tensor, max_dist: float | None = None, eps: float = 0.01
) -> Tensor:
    """Distances (left, top, right, bottom) from each point to the sides of its box.

    With ``max_dist`` the distances are clamped to ``[0, max_dist - eps]``: a DFL target
    must fall strictly below the last bin ``max_dist = R`` so that it has a right
    neighbour bin. ultralytics' ``bbox2dist`` clamps to ``reg_max - 0.01`` (its
    ``reg_max`` being R there), the default here; mmdet's and NanoDet's ``bbox2distance``
    use ``max_dis - eps`` with ``eps=0.1`` (pass ``eps=0.1`` to match GFL / NanoDet).
    Without ``max_dist`` nothing is clamped, so a point outside its box gets a negative
    distance.

    Args:
        points: (..., 2) x, y; the same unit as the boxes (pixels, or pixels / stride).
        boxes: (..., 4) xyxy, the box each point regresses.
        max_dist: largest bin value R, in the same unit, or None for no clamp.
        eps: distance kept below ``max_dist``.

    Returns:
        (..., 4) l, t, r, b.

    Reference: ultralytics.utils.tal.bbox2dist; mmdet DistancePointBBoxCoder.encode.
    """
    _check_last_dim(points, 2, "points")
    _check_last_dim(boxes, 4, "boxes")
    distances = torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1)  # (..., 4)
    if max_dist is not None:
        if max_dist - eps <= 0:
            raise ValueError(f"max_dist - eps must be positive, got {max_dist} - {eps}")
        distances = distances.clamp(min=0, max=max_dist - eps)
    return distances


def decode_distance(
    points: Tensor, distances: Tensor, max_shape: Sequence[int] | None = None
) -> Tensor:
    """Boxes from points and their (left, top, right, bottom) distances.

    Args:
        points: (..., 2) x, y.
        distances: (..., 4) l, t, r, b, the same unit as the points.
        max_shape: (H, W) to clip the boxes to (x to [0, W], y to [0, H]), or None.

    Returns:
        (..., 4) xyxy.

    Reference: ultralytics.utils.tal.dist2bbox (xywh=False); mmdet distance2bbox.
    """
    _check_last_dim(points, 2, "points")
    _check_last_dim(distances, 4, "distances")
    _check_max_shape(max_shape)
    boxes = torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)
    return boxes if max_shape is None else _clip_xyxy(boxes, max_shape)


def _center_size(boxes: Tensor) -> tuple[Tensor, Tensor]:
    """(..., 4) xyxy -> centre (..., 2), size (..., 2); no +1 (mmdet v2 convention)."""
    return (boxes[..., :2] + boxes[..., 2:]) * 0.5, boxes[..., 2:] - boxes[..., :2]


def encode_delta_xywh(
    proposals: Tensor,
    gt_boxes: Tensor,
    means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
    stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
) -> Tensor:
    """Deltas (dx, dy, dw, dh) that move each proposal onto its target box.

    dx = (gx - px) / pw, dy = (gy - py) / ph, dw = log(gw / pw), dh = log(gh / ph),
    then ``(delta - means) / stds``. Centres and sizes use no +1: width = x2 - x1.

    Args:
        proposals: (..., 4) xyxy, pixels: anchors or proposals, width and height > 0.
        gt_boxes: (..., 4) xyxy, pixels, the same shape; width and height > 0.
        means: subtracted from the deltas (Faster R-CNN: zeros).
        stds: divide the deltas (Faster R-CNN RPN: ones; RoI head: 0.1, 0.1, 0.2, 0.2).

    Returns:
        (..., 4) normalised deltas.

    Raises:
        ValueError: shapes differ, or a proposal or target has no width or height.

    Reference: mmdet DeltaXYWHBBoxCoder.encode (bbox2delta).
    """
    _check_last_dim(proposals, 4, "proposals")
    _check_last_dim(gt_boxes, 4, "gt_boxes")
    if proposals.shape != gt_boxes.shape:
        raise ValueError(
            f"proposals and gt_boxes must have the same shape, got {tuple(proposals.shape)} "
            f"and {tuple(gt_boxes.shape)}"
        )
    proposal_center, proposal_size = _center_size(proposals)
    gt_center, gt_size = _center_size(gt_boxes)
    # A zero size gives an infinite delta; say which input holds it.
    if (proposal_size <= 0).any():
        raise ValueError("proposals must have positive width and height")
    if (gt_size <= 0).any():
        raise ValueError("gt_boxes must have positive width and height")
    deltas = torch.cat(
        [(gt_center - proposal_center) / proposal_size, torch.log(gt_size / proposal_size)], dim=-1
    )  # (..., 4)
    return (deltas - deltas.new_tensor(means)) / deltas.new_tensor(stds)


def decode_delta_xywh(
    proposals: Tensor,
    deltas: Tensor,
    means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
    stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    max_shape: Sequence[int] | None = None,
    wh_ratio_clip: float = 16 / 1000,
) -> Tensor:
    """Apply deltas to proposals: the inverse of :func:`encode_delta_xywh`.

    The deltas are de-normalised (``delta * stds + means``), then dw and dh are clamped
    to ``+-|log(wh_ratio_clip)|`` (about 4.135: a box grows or shrinks at most 62.5 times
    per side), so that ``exp`` cannot overflow on a wild prediction.

    Args:
        proposals: (..., 4) xyxy, pixels.
        deltas: (..., 4 K) dx, dy, dw, dh, K >= 1 boxes per proposal (K = classes in a
            class-specific Faster R-CNN RoI head).
        means, stds: the ones the targets were encoded with.
        max_shape: (H, W) to clip the boxes to (x to [0, W], y to [0, H]), or None.
        wh_ratio_clip: the smallest allowed size ratio, 16 / 1000 as in mmdet.

    Returns:
        (..., 4 K) xyxy, pixels.

    Reference: mmdet DeltaXYWHBBoxCoder.decode (delta2bbox, add_ctr_clamp=False).
    """
    _check_last_dim(proposals, 4, "proposals")
    _check_tensor(deltas, "deltas")
    if deltas.shape[-1] % 4 != 0:
        raise ValueError(f"deltas must have shape (..., 4 K), got {tuple(deltas.shape)}")
    if deltas.shape[:-1] != proposals.shape[:-1]:
        raise ValueError(
            f"deltas {tuple(deltas.shape)} and proposals {tuple(proposals.shape)} must "
            "agree in every dimension but the last"
        )
    if not 0 < wh_ratio_clip < 1:
        raise ValueError(f"wh_ratio_clip must be in (0, 1), got {wh_ratio_clip}")
    _check_max_shape(max_shape)
    deltas = deltas.unflatten(-1, (-1, 4))  # (..., K, 4)
    deltas = deltas * deltas.new_tensor(stds) + deltas.new_tensor(means)
    center, size = _center_size(proposals[..., None, :])  # (..., 1, 2) each
    max_ratio = abs(math.log(wh_ratio_clip))
    delta_size = deltas[..., 2:].clamp(min=-max_ratio, max=max_ratio)
    new_center = center + size * deltas[..., :2]
    new_size = size * delta_size.exp()
    boxes = torch.cat([new_center - new_size * 0.5, new_center + new_size * 0.5], dim=-1)
    if max_shape is not None:
        boxes = _clip_xyxy(boxes, max_shape)
    return boxes.flatten(-2)  # (..., 4 K)


def decode_yolo(raw: Tensor, grid_xy: Tensor, anchor_wh: Tensor, stride: float) -> Tensor:
    """YOLOv3 boxes from raw head outputs: sigmoid offset in the cell, exp scale of the anchor.

    centre = (sigmoid(t_xy) + grid_xy) * stride, size = min(exp(t_wh), 1000) * anchor_wh
    (the clamp of the loss, ``YOLO_MAX_SCALE``). The reference returns the centre and
    size (cxcywh); here they are turned into xyxy.

    Args:
        raw: (..., 4 + X) with t_x, t_y, t_w, t_h first; the other X channels (objectness,
            classes) are not read. For example (B, 3, H, W, 5 + C).
        grid_xy: (..., 2) cell column x and row y, broadcastable to ``raw[..., :2]``,
            for example (H, W, 2).
        anchor_wh: (..., 2) anchor width and height in pixels, broadcastable, for example
            (3, 1, 1, 2).
        stride: pixels per cell of this level.

    Returns:
        (..., 4) xyxy, pixels.

    Reference: ultralytics/yolov3 (archive) models.py YOLOLayer.forward (inference).
    """
    _check_tensor(raw, "raw")
    if raw.shape[-1] < 4:
        raise ValueError(f"raw must have shape (..., 4 + X), got {tuple(raw.shape)}")
    _check_last_dim(grid_xy, 2, "grid_xy")
    _check_last_dim(anchor_wh, 2, "anchor_wh")
    if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
    center = (raw[..., :2].sigmoid() + grid_xy) * stride
    # exp clamped at 1000 x the anchor, as the loss does: an untrained or diverging
    # head would otherwise give infinite boxes (exp(89) overflows float32).
    size = raw[..., 2:4].exp().clamp(max=YOLO_MAX_SCALE) * anchor_wh
    return torch.cat([center - size / 2, center + size / 2], dim=-1)


def dfl_integral(pred_dist: Tensor, bin_values: Tensor | None = None) -> Tensor:
    """Expected value of a distribution over the bins 0, 1, ..., R given as logits.

    softmax over the last dimension, then the dot product with [0, 1, ..., R]: the
    result is a real number in [0, R], with a gradient to every bin. This is the one
    implementation of the integral in the package; YOLOv8's ``DFLIntegral`` module
    calls it with its frozen bin values.

    Args:
        pred_dist: (..., R + 1) logits.
        bin_values: (R + 1,) the value of each bin; default [0, 1, ..., R].

    Returns:
        (...) expected bin value.

    Reference: ultralytics.nn.modules.block.DFL; NanoDet / mmdet GFL ``Integral``.
    """
    _check_tensor(pred_dist, "pred_dist")
    if pred_dist.shape[-1] < 2:
        raise ValueError(
            f"pred_dist must have shape (..., R + 1), R >= 1, got {tuple(pred_dist.shape)}"
        )
    num_bins = pred_dist.shape[-1]
    if bin_values is None:
        bin_values = torch.arange(num_bins, device=pred_dist.device)  # (R + 1,)
    elif bin_values.shape != (num_bins,):
        raise ValueError(f"bin_values must have shape ({num_bins},), got {tuple(bin_values.shape)}")
    return F.softmax(pred_dist, dim=-1) @ bin_values.to(pred_dist.dtype)


def dfl_distances(pred_dist: Tensor, bin_values: Tensor | None = None) -> Tensor:
    """Four side distances from a head's DFL channels (..., 4 (R + 1)) -> (..., 4).

    The channels are side-major: the first R + 1 are the left side's bins, then top,
    right, bottom, as in ultralytics and NanoDet. The distances are in bins (the level's
    stride is one bin); multiply by the stride for pixels.

    Args:
        pred_dist: (..., 4 (R + 1)) logits.
        bin_values: (R + 1,) the value of each bin; default [0, 1, ..., R].

    Returns:
        (..., 4) l, t, r, b.

    Reference: ultralytics v8DetectionLoss.bbox_decode; NanoDet GFLHead.
    """
    _check_tensor(pred_dist, "pred_dist")
    if pred_dist.shape[-1] % 4 != 0 or pred_dist.shape[-1] < 8:
        raise ValueError(
            f"pred_dist must have shape (..., 4 (R + 1)), got {tuple(pred_dist.shape)}"
        )
    sides = pred_dist.unflatten(-1, (4, -1))  # (..., 4, R + 1)
    return dfl_integral(sides, bin_values)  # (..., 4)
