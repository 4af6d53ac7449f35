"""Priors: the fixed boxes or points, one set per feature level, that predictions start from.

Three kinds, one per detector family of the course:

    anchor boxes   Faster R-CNN, ATSS, RetinaNet (mmdet ``AnchorGenerator``): K boxes of
                   several sizes and aspect ratios at every feature-map location
    grid cells     NanoDet / GFL: one square box of side ``cell_scale * stride`` centred
                   on each cell, used only to assign targets
    anchor points  YOLOv8, FCOS-style heads: the centre of each cell, no box at all

Ordering, the same for all three: levels one after the other; inside a level, row-major
(y, then x). With K anchor boxes per location the K boxes of one location are adjacent
(location-major), so the flat index of anchor ``k`` at cell (y, x) of level ``l`` is
``level_offsets(...)[l] + (y * W + x) * K + k``; with K = 1 that is the course's
``offset + y * W + x``.

Where the centre sits differs between the references, and this module keeps each one:
grid cells and anchor points sit at the cell centre ``((x + 0.5) s, (y + 0.5) s)``;
mmdet v2 anchor boxes sit at the cell's top-left corner ``(x s, y s)`` (``center_offset=0``)
unless ``center_offset=0.5`` is asked for.
"""

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "anchor_boxes",
    "anchor_points",
    "base_anchors",
    "flat_prior_index",
    "grid_cells",
    "level_offsets",
    "num_priors_per_level",
]


def _check_levels(
    feature_sizes: Sequence[Sequence[int]], strides: Sequence[float]
) -> list[tuple[int, int]]:
    """Validate per-level (H, W) sizes and strides; return the sizes as int pairs."""
    if len(feature_sizes) != len(strides):
        raise ValueError(
            f"feature_sizes and strides need one entry per level, got {len(feature_sizes)} "
            f"and {len(strides)}"
        )
    sizes = []
    for level, size in enumerate(feature_sizes):
        if len(size) != 2 or min(size) < 0 or any(int(side) != side for side in size):
            raise ValueError(f"feature_sizes[{level}] must be (H, W), integers >= 0, got {size}")
        sizes.append((int(size[0]), int(size[1])))
    for level, stride in enumerate(strides):
        if not stride > 0:
            raise ValueError(f"strides[{level}] must be positive, got {stride}")
    return sizes


def _cell_centers(height: int, width: int, stride: float, offset: float, device, dtype) -> Tensor:
    """(H W, 2) x, y of ``(index + offset) * stride``, row-major."""
    xs = (torch.arange(width, device=device, dtype=dtype) + offset) * stride  # (W,)
    ys = (torch.arange(height, device=device, dtype=dtype) + offset) * stride  # (H,)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
    return torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2)  # (H W, 2)


def num_priors_per_level(
    feature_sizes: Sequence[Sequence[int]], priors_per_location: int = 1
) -> list[int]:
    """Number of priors of each level: H * W * priors_per_location."""
    return [int(height) * int(width) * priors_per_location for height, width in feature_sizes]


def level_offsets(num_per_level: Sequence[int]) -> list[int]:
    """Flat index of the first prior of each level: [0, n0, n0 + n1, ...], one per level."""
    if any(count < 0 for count in num_per_level):
        raise ValueError(f"num_per_level must hold counts >= 0, got {list(num_per_level)}")
    offsets, total = [], 0
    for count in num_per_level:
        offsets.append(total)
        total += int(count)
    return offsets


def flat_prior_index(
    level: int,
    y: int,
    x: int,
    feature_sizes: Sequence[Sequence[int]],
    anchor: int = 0,
    anchors_per_location: int = 1,
) -> int:
    """Flat index of prior ``anchor`` at cell (y, x) of ``level``: offset + (y W + x) K + k."""
    if not 0 <= level < len(feature_sizes):
        raise ValueError(f"level must be in [0, {len(feature_sizes)}), got {level}")
    height, width = feature_sizes[level]
    if not (0 <= y < height and 0 <= x < width):
        raise ValueError(f"cell (y={y}, x={x}) is outside level {level} of size {(height, width)}")
    if not 0 <= anchor < anchors_per_location:
        raise ValueError(f"anchor must be in [0, {anchors_per_location}), got {anchor}")
    offsets = level_offsets(num_priors_per_level(feature_sizes, anchors_per_location))
    return offsets[level] + (y * width + x) * anchors_per_location + anchor


def grid_cells(
    feature_sizes: Sequence[Sequence[int]],
    strides: Sequence[float],
    cell_scale: float = 5.0,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, list[int]]:
    """Square grid cells centred on every feature-map cell of every level.

    The cell of (y, x) at stride s is centred on ((x + 0.5) s, (y + 0.5) s) with side
    ``cell_scale * s``; NanoDet's ATSS assigner measures IoUs and centre distances on them.

    Args:
        feature_sizes: (H, W) of each level.
        strides: pixels per feature-map cell of each level.
        cell_scale: side of a cell in strides (NanoDet's ``octave_base_scale``, 5).
        device, dtype: of the result.

    Returns:
        cells: (A, 4) xyxy, pixels, A = sum of H * W.
        num_per_level: H * W of each level.

    Reference: NanoDet GFLHead.get_grid_cells.
    """
    sizes = _check_levels(feature_sizes, strides)
    if not cell_scale > 0:
        raise ValueError(f"cell_scale must be positive, got {cell_scale}")
    cells = [torch.zeros(0, 4, device=device, dtype=dtype)]
    for (height, width), stride in zip(sizes, strides, strict=True):
        centers = _cell_centers(height, width, stride, 0.5, device, dtype)  # (H W, 2)
        half_side = 0.5 * (stride * cell_scale)
        cells.append(torch.cat([centers - half_side, centers + half_side], dim=-1))  # (H W, 4)
    return torch.cat(cells), num_priors_per_level(sizes)  # (A, 4)


def anchor_points(
    feature_sizes: Sequence[Sequence[int]],
    strides: Sequence[float],
    offset: float = 0.5,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """The point ((x + offset) s, (y + offset) s) of every cell of every level, in pixels.

    ultralytics' ``make_anchors`` returns the same points in cell units (x + offset);
    multiply those by ``point_strides`` to get these.

    Args:
        feature_sizes: (H, W) of each level.
        strides: pixels per feature-map cell of each level.
        offset: position inside the cell, 0.5 = its centre.
        device, dtype: of the results.

    Returns:
        points: (A, 2) x, y, pixels.
        point_strides: (A,) stride of the level of each point.

    Reference: ultralytics.utils.tal.make_anchors.
    """
    sizes = _check_levels(feature_sizes, strides)
    points = [torch.zeros(0, 2, device=device, dtype=dtype)]
    point_strides = [torch.zeros(0, device=device, dtype=dtype)]
    for (height, width), stride in zip(sizes, strides, strict=True):
        points.append(_cell_centers(height, width, stride, offset, device, dtype))  # (H W, 2)
        point_strides.append(torch.full((height * width,), stride, device=device, dtype=dtype))
    return torch.cat(points), torch.cat(point_strides)  # (A, 2), (A,)


def base_anchors(
    base_size: float,
    scales: Sequence[float],
    ratios: Sequence[float],
    scale_major: bool = True,
    center_offset: float = 0.0,
) -> Tensor:
    """The K = len(ratios) * len(scales) anchors of one location, around (0, 0) + offset.

    An anchor of ratio r (height / width) and scale c has width ``base_size / sqrt(r) * c``
    and height ``base_size * sqrt(r) * c``: its area ``(base_size * c)^2`` does not depend
    on r. Order: ``scale_major=True`` (mmdet's default) puts ratios in the outer loop and
    scales in the inner one, anchor k = ratio_index * len(scales) + scale_index;
    ``scale_major=False`` swaps the loops. Computed in float32 with mmdet's order of
    operations, so the values match it bit for bit; no rounding (mmdet 1.x rounded the
    corners and measured sizes as x2 - x1 + 1: its ``LegacyAnchorGenerator``).

    Returns:
        (K, 4) xyxy, pixels, relative to the location's top-left corner.

    Reference: mmdet AnchorGenerator.gen_single_level_base_anchors.
    """
    scales_tensor = torch.tensor(scales, dtype=torch.float32)  # (S,)
    ratios_tensor = torch.tensor(ratios, dtype=torch.float32)  # (R,)
    if scales_tensor.numel() == 0 or not (scales_tensor > 0).all():
        raise ValueError(f"scales must be positive and non-empty, got {list(scales)}")
    if ratios_tensor.numel() == 0 or not (ratios_tensor > 0).all():
        raise ValueError(f"ratios must be positive and non-empty, got {list(ratios)}")
    if not 0 <= center_offset <= 1:
        raise ValueError(f"center_offset must be in [0, 1], got {center_offset}")
    height_ratios = torch.sqrt(ratios_tensor)
    width_ratios = 1 / height_ratios
    if scale_major:
        widths = (base_size * width_ratios[:, None] * scales_tensor[None, :]).reshape(-1)  # (K,)
        heights = (base_size * height_ratios[:, None] * scales_tensor[None, :]).reshape(-1)
    else:
        widths = (base_size * scales_tensor[:, None] * width_ratios[None, :]).reshape(-1)
        heights = (base_size * scales_tensor[:, None] * height_ratios[None, :]).reshape(-1)
    center_x = center_y = center_offset * base_size
    return torch.stack(
        [
            center_x - 0.5 * widths,
            center_y - 0.5 * heights,
            center_x + 0.5 * widths,
            center_y + 0.5 * heights,
        ],
        dim=-1,
    )  # (K, 4)


def anchor_boxes(
    feature_sizes: Sequence[Sequence[int]],
    strides: Sequence[int],
    *,
    ratios: Sequence[float] = (1.0,),
    scales: Sequence[float] | None = None,
    octave_base_scale: float | None = None,
    scales_per_octave: int | None = None,
    base_sizes: Sequence[float] | None = None,
    scale_major: bool = True,
    center_offset: float = 0.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Anchor boxes of every level: the base anchors shifted to every cell (x s, y s).

    Give ``scales`` (Faster R-CNN RPN: ``scales=[8], ratios=[0.5, 1.0, 2.0]``, strides
    4 ... 64) or ``octave_base_scale`` with ``scales_per_octave``, which make the scales
    ``octave_base_scale * 2 ** (i / scales_per_octave)`` (ATSS: 8 and 1, ratios [1.0],
    strides 8 ... 128: one 8 s square per cell). The same ratios and scales serve every
    level; ``base_sizes`` (default: the strides) sets each level's size.

    Args:
        feature_sizes: (H, W) of each level.
        strides: pixels per feature-map cell of each level.
        ratios: height / width of the anchors.
        scales: anchor side in base sizes, or None to use the octave scales.
        octave_base_scale, scales_per_octave: the octave scales, or None.
        base_sizes: base size of each level, pixels, or None for the strides.
        scale_major: loop order of the K anchors of a location (see :func:`base_anchors`).
        center_offset: anchor centre inside the cell in strides; mmdet v2 uses 0.
        device, dtype: of the result (base anchors are made in float32, then cast).

    Returns:
        (A, 4) xyxy, pixels, A = sum of H * W * K, ordered level by level, row-major,
        the K anchors of one location adjacent.

    Reference: mmdet AnchorGenerator.grid_priors.
    """
    sizes = _check_levels(feature_sizes, strides)
    if (scales is not None) == (octave_base_scale is not None or scales_per_octave is not None):
        raise ValueError("give either scales or octave_base_scale with scales_per_octave")
    if scales is None:
        if octave_base_scale is None or scales_per_octave is None or scales_per_octave < 1:
            raise ValueError("octave_base_scale and scales_per_octave (>= 1) go together")
        octave_scales = np.array([2 ** (i / scales_per_octave) for i in range(scales_per_octave)])
        scales = (octave_scales * octave_base_scale).tolist()
    base_sizes = list(strides) if base_sizes is None else list(base_sizes)
    if len(base_sizes) != len(sizes):
        raise ValueError(f"base_sizes needs one entry per level, got {len(base_sizes)}")
    anchors = [torch.zeros(0, 4, device=device, dtype=dtype)]
    for (height, width), stride, base_size in zip(sizes, strides, base_sizes, strict=True):
        level_base = base_anchors(base_size, scales, ratios, scale_major, center_offset)
        level_base = level_base.to(device=device, dtype=dtype)  # (K, 4)
        corners = _cell_centers(height, width, stride, 0.0, device, dtype)  # (H W, 2)
        shifts = corners.repeat(1, 2)  # (H W, 4) x, y, x, y
        anchors.append((shifts[:, None, :] + level_base[None, :, :]).reshape(-1, 4))  # (H W K, 4)
    return torch.cat(anchors)  # (A, 4)
