"""Figures of the course: boxes on an image, priors, assignments, loss curves.

Every function takes ``ax=None``: it draws into the given matplotlib Axes, or makes a
new 5 x 5 inch figure when there is none, and returns the Axes, so figures compose::

    ax = draw_priors((320, 320), cells)
    draw_boxes((320, 320), gt_boxes, gt_labels, class_names=names, ax=ax)
    plt.show()

Images are drawn so that pixel ``(y, x)`` covers ``[x, x + 1) x [y, y + 1)``: box
corners in pixels (xyxy, as everywhere in ``detutils``) land on pixel edges. An image
argument may also be a size ``(H, W)``, which draws on a blank canvas.

Colours: ``class_color(k)`` is the colour of class ``k`` in every figure (the ten
``tab10`` colours, then hues spaced by the golden ratio of a turn). ``draw_assignment`` colours
by ground-truth box instead, so two boxes of one class stay apart.

Reference: ``torchvision.utils.draw_bounding_boxes`` (one colour per class, a label per
box) and detectron2's ``Visualizer`` (label text dark or light by the brightness of its
background); the module draws with matplotlib instead of into the image pixels.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.patches import Rectangle

from detutils.assigners import BACKGROUND, IGNORE

__all__ = [
    "class_color",
    "compare_detections",
    "draw_assignment",
    "draw_boxes",
    "draw_priors",
    "image_to_array",
    "plot_losses",
]

FIGURE_SIZE = (5.0, 5.0)  # inches
_TAB10 = [
    to_rgb(f"tab:{name}")
    for name in ("blue orange green red purple brown pink gray olive cyan").split()
]
_GOLDEN = (math.sqrt(5) - 1) / 2  # spacing of hues beyond the first ten colours


def class_color(label: int) -> tuple[float, float, float]:
    """The colour of class ``label`` in every figure.

    Args:
        label: a class id ``0 .. C-1`` (or, in ``draw_assignment``, a gt box index).

    Returns:
        ``(red, green, blue)`` floats in [0, 1]: ``tab10`` for the first ten ids, then
        hues spaced by the golden ratio of a turn, alternating two brightnesses.

    Raises:
        ValueError: ``label`` is negative.
    """
    label = int(label)
    if label < 0:
        raise ValueError(f"class_color: label must be >= 0, got {label}")
    if label < len(_TAB10):
        return _TAB10[label]
    hue = (label * _GOLDEN) % 1.0
    value = 0.85 if label % 2 else 0.65  # neighbouring ids differ in hue and brightness
    return colorsys.hsv_to_rgb(hue, 0.75, value)


def _text_color(background: Sequence[float]) -> str:
    """Black on light backgrounds, white on dark ones (perceived brightness, ITU-R 601)."""
    red, green, blue = background[:3]
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"


def image_to_array(image: Any) -> np.ndarray:
    """An image as a numpy array that ``imshow`` draws as intended.

    Args:
        image: tensor ``(3, H, W)``, ``(1, H, W)`` or ``(H, W)``, float in [0, 1] or uint8;
            numpy ``(H, W, 3)``, ``(H, W, 4)`` or ``(H, W)``; or a PIL image.

    Returns:
        ``(H, W, 3)``, ``(H, W, 4)`` or ``(H, W)`` array, uint8 or float32 in [0, 1].

    Raises:
        ValueError: wrong shape, empty image, or float values outside [0, 1] (a
            normalised image: undo the normalisation first).
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)  # (H, W, C)
        elif image.ndim != 2:
            raise ValueError(
                f"image: a tensor image must be (3, H, W), (1, H, W) or (H, W), "
                f"got shape {tuple(image.shape)}"
            )
        array = image.numpy() if image.dtype == torch.uint8 else image.float().numpy()
    else:
        array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"image: expected (H, W, 3), (H, W, 4) or (H, W), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image: empty image of shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"image: expected uint8 or float values, got dtype {array.dtype}")
    array = array.astype(np.float32)
    low, high = float(array.min()), float(array.max())
    if not (np.isfinite(low) and np.isfinite(high)) or low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(
            f"image: float values must lie in [0, 1], got min {low:.4f} and max {high:.4f} "
            "(undo the normalisation first)"
        )
    return np.clip(array, 0.0, 1.0)


def _is_size(value: Any) -> bool:
    if isinstance(value, torch.Size):
        return len(value) == 2
    return (
        isinstance(value, tuple | list)
        and len(value) == 2
        and all(isinstance(side, int | np.integer) for side in value)
    )


def _prepare_axes(ax: Axes | None, image_or_size: Any) -> tuple[Axes, int, int]:
    """Draw the image (or a blank canvas of a size) into ``ax``; return ``ax, H, W``."""
    if ax is None:
        _, ax = plt.subplots(figsize=FIGURE_SIZE)
    if _is_size(image_or_size):
        height, width = (int(side) for side in image_or_size)
        if height <= 0 or width <= 0:
            raise ValueError(f"image: a size must be positive (H, W), got {tuple(image_or_size)}")
        ax.set_facecolor("white")
    else:
        array = image_to_array(image_or_size)
        height, width = array.shape[:2]
        grey = {"cmap": "gray", "vmin": 0, "vmax": 255 if array.dtype == np.uint8 else 1}
        ax.imshow(
            array,
            extent=(0, width, height, 0),  # pixel edges on integer coordinates
            interpolation="nearest",
            **(grey if array.ndim == 2 else {}),
        )
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)  # y grows downwards, as in the image
    ax.set_aspect("equal")
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    return ax, height, width


def _as_rows(value: Any, name: str, columns: int | tuple[int, ...]) -> np.ndarray:
    """``value`` as a float array (N, columns); a ValueError names ``name`` otherwise."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().float().numpy()
    array = np.asarray(value, dtype=np.float64)
    allowed = (columns,) if isinstance(columns, int) else columns
    if array.ndim == 1 and array.size == 0:  # [] or an empty tensor: nothing to draw
        return array.reshape(0, allowed[0])
    if array.ndim != 2 or array.shape[1] not in allowed:
        wanted = " or ".join(f"(N, {count})" for count in allowed)
        raise ValueError(f"{name}: expected shape {wanted}, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return array


def _as_vector(value: Any, name: str, length: int, integer: bool = False) -> np.ndarray:
    """``value`` as a 1-D array of ``length`` entries; a ValueError names ``name``."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = (value.float() if value.is_floating_point() else value).numpy()
    array = np.asarray(value)
    if array.ndim != 1 or array.shape[0] != length:
        raise ValueError(f"{name}: expected shape ({length},), got {array.shape}")
    if integer and length and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name}: expected integers, got dtype {array.dtype}")
    return array.astype(np.int64) if integer else array.astype(np.float64)


def _check_xyxy(boxes: np.ndarray, name: str) -> None:
    inverted = np.nonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))[0]
    if inverted.size:
        raise ValueError(
            f"{name}: box {int(inverted[0])} has x2 < x1 or y2 < y1 ({boxes[inverted[0]]}); "
            "boxes must be xyxy"
        )


def _draw_rectangle(ax: Axes, box: np.ndarray, color: Any, **style: Any) -> None:
    x1, y1, x2, y2 = box
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, **style))


def _draw_label(ax: Axes, box: np.ndarray, text: str, color: Any, height: int) -> None:
    """Text on a filled tag of ``color`` above the box's top-left corner (inside if no room)."""
    x1, y1 = box[0], box[1]
    above = y1 > 0.06 * height  # room for the tag above the box
    ax.text(
        x1,
        y1,
        text,
        color=_text_color(to_rgb(color)),
        fontsize=8,
        va="bottom" if above else "top",
        ha="left",
        bbox={"facecolor": color, "edgecolor": "none", "alpha": 0.85, "pad": 1.5},
        clip_on=True,
    )


def draw_boxes(
    image: Any,
    boxes: Any,
    labels: Any = None,
    scores: Any = None,
    class_names: Sequence[str] | None = None,
    ax: Axes | None = None,
    *,
    linewidth: float = 2.0,
    title: str | None = None,
) -> Axes:
    """Draw boxes over an image, coloured by class, with a name and score tag each.

    Each box adds one ``Rectangle`` patch, and one text when it has a label or a score.

    Args:
        image: tensor ``(3, H, W)`` float in [0, 1] or uint8, numpy ``(H, W, 3)``, a PIL
            image, or a size ``(H, W)`` for a blank canvas.
        boxes: (N, 4) xyxy, pixels.
        labels: (N,) class ids ``0 .. C-1``, or None (every box in the first colour).
        scores: (N,) confidences, printed with two decimals, or None.
        class_names: names indexed by class id; without them the tag shows the id.
        ax: Axes to draw into; None makes a new figure.
        linewidth: box line width in points.
        title: Axes title; default ``"N boxes"``.

    Returns:
        The Axes.

    Raises:
        ValueError: a wrong shape, an inverted box, or a label outside ``class_names``;
            the message names the argument.

    Reference: ``torchvision.utils.draw_bounding_boxes`` (colours, one tag per box).
    """
    boxes = _as_rows(boxes, "boxes", 4)
    count = boxes.shape[0]
    _check_xyxy(boxes, "boxes")
    if labels is not None:
        labels = _as_vector(labels, "labels", count, integer=True)
        if count and labels.min() < 0:
            raise ValueError(f"labels: class ids must be >= 0, got {int(labels.min())}")
        if class_names is not None and count and labels.max() >= len(class_names):
            raise ValueError(
                f"labels: class id {int(labels.max())} is out of range for "
                f"{len(class_names)} class_names"
            )
    if scores is not None:
        scores = _as_vector(scores, "scores", count)
    ax, height, _ = _prepare_axes(ax, image)
    for index in range(count):
        color = class_color(labels[index]) if labels is not None else class_color(0)
        _draw_rectangle(ax, boxes[index], color, linewidth=linewidth)
        parts = []
        if labels is not None:
            label = int(labels[index])
            parts.append(class_names[label] if class_names is not None else str(label))
        if scores is not None:
            parts.append(f"{scores[index]:.2f}")
        if parts:
            _draw_label(ax, boxes[index], " ".join(parts), color, height)
    ax.set_title(title if title is not None else f"{count} boxes")
    return ax


def _centres(priors: np.ndarray) -> np.ndarray:
    """Centres (A, 2) of boxes (A, 4) xyxy, or the points (A, 2) themselves."""
    if priors.shape[1] == 2:
        return priors
    return (priors[:, :2] + priors[:, 2:]) / 2


def _grid_subsample(priors: np.ndarray, every: int | None) -> tuple[np.ndarray, int]:
    """Keep the priors on every ``every``-th distinct centre column and row.

    All priors that share a kept centre are kept (several anchors per location stay
    together), centred: with 10 columns and ``every=5``, columns 2 and 7 are
    kept. ``every=None`` picks the step: boxes as far apart as their median side,
    so they barely overlap; points at most 40 per row or column.
    """
    centres = np.round(_centres(priors), 3)  # (A, 2)
    unique_x, column = np.unique(centres[:, 0], return_inverse=True)
    unique_y, row = np.unique(centres[:, 1], return_inverse=True)
    if every is None:
        if priors.shape[1] == 4 and len(priors):
            gaps = np.concatenate([np.diff(unique_x), np.diff(unique_y)])
            spacing = gaps.min() if gaps.size else math.inf
            side = float(
                np.median(np.maximum(priors[:, 2] - priors[:, 0], priors[:, 3] - priors[:, 1]))
            )
            every = max(1, math.ceil(side / spacing)) if math.isfinite(spacing) else 1
        else:
            every = max(1, math.ceil(max(len(unique_x), len(unique_y)) / 40))
    elif int(every) < 1:
        raise ValueError(f"every: must be >= 1 or None, got {every}")
    every = int(every)
    # Start each axis at a phase that centres the kept columns (rows) on the image.
    column_phase = ((len(unique_x) - 1) % every) // 2
    row_phase = ((len(unique_y) - 1) % every) // 2
    keep = ((column - column_phase) % every == 0) & ((row - row_phase) % every == 0)
    return keep, every


def _highlight_mask(highlight: Any, count: int) -> np.ndarray:
    """A bool mask (A,) from indices or a bool mask; a ValueError names ``highlight``."""
    if isinstance(highlight, torch.Tensor):
        highlight = highlight.detach().cpu().numpy()
    array = np.asarray(highlight)
    if array.dtype == bool:
        if array.shape != (count,):
            raise ValueError(f"highlight: a mask must have shape ({count},), got {array.shape}")
        return array
    array = array.reshape(-1)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"highlight: expected integer indices or a bool mask, got {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= count):
        raise ValueError(
            f"highlight: indices out of range [0, {count}): got min {int(array.min())} "
            f"and max {int(array.max())}"
        )
    mask = np.zeros(count, dtype=bool)
    mask[array.astype(np.int64)] = True
    return mask


def draw_priors(
    image_or_size: Any,
    priors: Any,
    ax: Axes | None = None,
    every: int | None = None,
    highlight: Any = None,
    *,
    color: Any = "tab:blue",
    highlight_color: Any = "tab:red",
    title: str | None = None,
) -> Axes:
    """Draw the priors of one level: boxes as rectangles with a centre dot, points as dots.

    To stay legible it draws only the priors centred on every ``every``-th distinct
    column and row of centres; highlighted priors are always drawn. Artists: one
    ``Rectangle`` per drawn box prior, one scatter of the drawn centres, and for
    highlighted priors one thicker ``Rectangle`` each (boxes) plus one scatter.

    Args:
        image_or_size: an image (see ``draw_boxes``) or a size ``(H, W)``.
        priors: (A, 4) xyxy pixels (anchor boxes, grid cells) or (A, 2) pixel points.
        ax: Axes to draw into; None makes a new figure.
        every: keep every ``every``-th column and row of centres; None picks one.
        highlight: indices into ``priors`` or a bool mask (A,), drawn in
            ``highlight_color``.
        color: colour of the priors.
        highlight_color: colour of the highlighted priors.
        title: Axes title; default says how many priors there are and how many are drawn.

    Returns:
        The Axes.

    Raises:
        ValueError: ``priors`` not (A, 4) or (A, 2), an inverted box, ``every`` below 1,
            or ``highlight`` indices out of range.
    """
    priors = _as_rows(priors, "priors", (4, 2))
    count = priors.shape[0]
    if priors.shape[1] == 4:
        _check_xyxy(priors, "priors")
    keep, every = _grid_subsample(priors, every)
    marked = _highlight_mask(highlight, count) if highlight is not None else np.zeros(count, bool)
    keep &= ~marked
    ax, _, _ = _prepare_axes(ax, image_or_size)
    centres = _centres(priors)
    for mask, shade, width, label in (
        (keep, color, 0.8, "priors"),
        (marked, highlight_color, 2.0, "highlighted"),
    ):
        if not mask.any():
            continue
        if priors.shape[1] == 4:
            for box in priors[mask]:
                _draw_rectangle(ax, box, shade, linewidth=width, alpha=0.8)
        ax.scatter(centres[mask, 0], centres[mask, 1], s=4 * width**2, color=shade, label=label)
    if marked.any():
        ax.legend(loc="upper right", fontsize=8)
    drawn = int((keep | marked).sum())
    default = f"{count} priors" if drawn == count else f"{drawn} of {count} priors (every {every})"
    ax.set_title(title if title is not None else default)
    return ax


def draw_assignment(
    image: Any,
    priors: Any,
    gt_boxes: Any,
    gt_index: Any,
    ax: Axes | None = None,
    *,
    gt_labels: Any = None,
    class_names: Sequence[str] | None = None,
    show_background: bool = True,
    title: str | None = None,
) -> Axes:
    """Show which priors learn which ground-truth box.

    Ground-truth box ``j`` is drawn in ``class_color(j)`` (its index, not its class, so
    two boxes of one class stay apart), with a tag ``"name: n pos"``. Its positive
    priors are drawn in the same colour: box priors as thin rectangles plus a scatter of
    their centres, point priors as a scatter. Ignored priors are grey crosses,
    background priors (``show_background``) small light-grey dots.

    Artists: per gt box one thick ``Rectangle`` and one text; per gt box with positives
    one thin ``Rectangle`` per positive (box priors) and one scatter; one scatter for the
    ignored priors and one for the background, each only when there are any.

    Args:
        image: an image (see ``draw_boxes``) or a size ``(H, W)``.
        priors: (A, 4) xyxy pixels or (A, 2) pixel points.
        gt_boxes: (M, 4) xyxy, pixels.
        gt_index: (A,) long: the gt box of each prior, ``BACKGROUND`` (-1) or
            ``IGNORE`` (-2), as in ``AssignResult.gt_index``.
        ax: Axes to draw into; None makes a new figure.
        gt_labels: (M,) class ids, for the tags; None tags ``gt 0``, ``gt 1``, ...
        class_names: names indexed by class id.
        show_background: draw the background priors' centres.
        title: Axes title; default counts positives and ignored priors.

    Returns:
        The Axes.

    Raises:
        ValueError: wrong shapes, an inverted box, or a ``gt_index`` value that is
            neither a gt index in ``[0, M)`` nor ``BACKGROUND`` / ``IGNORE``.
    """
    priors = _as_rows(priors, "priors", (4, 2))
    gt_boxes = _as_rows(gt_boxes, "gt_boxes", 4)
    count, num_gt = priors.shape[0], gt_boxes.shape[0]
    if priors.shape[1] == 4:
        _check_xyxy(priors, "priors")
    _check_xyxy(gt_boxes, "gt_boxes")
    gt_index = _as_vector(gt_index, "gt_index", count, integer=True)
    valid = (
        (gt_index == BACKGROUND) | (gt_index == IGNORE) | ((gt_index >= 0) & (gt_index < num_gt))
    )
    if not valid.all():
        bad = int(gt_index[~valid][0])
        raise ValueError(
            f"gt_index: value {bad} is neither a gt index in [0, {num_gt}) nor "
            f"BACKGROUND ({BACKGROUND}) / IGNORE ({IGNORE})"
        )
    if gt_labels is not None:
        gt_labels = _as_vector(gt_labels, "gt_labels", num_gt, integer=True)
        if class_names is not None and num_gt and gt_labels.max() >= len(class_names):
            raise ValueError(
                f"gt_labels: class id {int(gt_labels.max())} is out of range for "
                f"{len(class_names)} class_names"
            )
    ax, height, _ = _prepare_axes(ax, image)
    centres = _centres(priors)
    if show_background and (gt_index == BACKGROUND).any():
        background = gt_index == BACKGROUND
        ax.scatter(centres[background, 0], centres[background, 1], s=2, color="0.75")
    ignored = gt_index == IGNORE
    if ignored.any():
        ax.scatter(centres[ignored, 0], centres[ignored, 1], s=12, color="0.45", marker="x")
    for gt in range(num_gt):
        color = class_color(gt)
        positive = gt_index == gt
        if priors.shape[1] == 4:
            for box in priors[positive]:
                _draw_rectangle(ax, box, color, linewidth=0.8, alpha=0.7)
        if positive.any():
            ax.scatter(centres[positive, 0], centres[positive, 1], s=14, color=color)
        _draw_rectangle(ax, gt_boxes[gt], color, linewidth=2.5)
        if gt_labels is None:
            name = f"gt {gt}"
        else:
            label = int(gt_labels[gt])
            name = class_names[label] if class_names is not None else str(label)
        _draw_label(ax, gt_boxes[gt], f"{name}: {int(positive.sum())} pos", color, height)
    default = (
        f"{int((gt_index >= 0).sum())} positive, {int(ignored.sum())} ignored of {count} priors"
    )
    ax.set_title(title if title is not None else default)
    return ax


def plot_losses(
    df: pd.DataFrame,
    x: str | None = "iter",
    columns: Sequence[str] | None = None,
    ax: Axes | None = None,
    smooth: int | None = None,
    *,
    logy: bool = False,
    title: str = "Training losses",
) -> Axes:
    """Plot loss curves, one line per column, with optional moving-average smoothing.

    With ``smooth=k > 1`` each column is drawn twice in one colour: the raw values
    faint, their trailing mean over ``k`` rows solid (two lines per column, one legend
    entry). Missing values (a loss logged every few iterations) are skipped.

    Args:
        df: one row per logged step, one column per loss component.
        x: the column on the x axis; None uses the index.
        columns: the loss columns; default every numeric column except ``x``.
        ax: Axes to draw into; None makes a new figure.
        smooth: moving-average window in rows; None or 1 draws the raw values only.
        logy: logarithmic y axis (values <= 0 are then not drawn).
        title: Axes title.

    Returns:
        The Axes.

    Raises:
        TypeError: ``df`` is not a DataFrame.
        ValueError: ``x`` or a name in ``columns`` is not a column, a column is not
            numeric, or ``smooth`` is below 1.

    Reference: ``pandas.Series.rolling(window, min_periods=1).mean()`` for the smoothing.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"plot_losses: df must be a pandas DataFrame, got {type(df).__name__}")
    if x is not None and x not in df.columns:
        raise ValueError(f"x: {x!r} is not a column of df (columns: {list(df.columns)})")
    if columns is None:
        columns = [
            name
            for name in df.columns
            if name != x
            and pd.api.types.is_numeric_dtype(df[name])
            and not pd.api.types.is_bool_dtype(df[name])
        ]
    columns = list(columns)
    missing = [name for name in columns if name not in df.columns]
    if missing:
        raise ValueError(f"columns: {missing} not in df (columns: {list(df.columns)})")
    not_numeric = [name for name in columns if not pd.api.types.is_numeric_dtype(df[name])]
    if not_numeric:
        raise ValueError(f"columns: {not_numeric} are not numeric")
    if smooth is not None and int(smooth) < 1:
        raise ValueError(f"smooth: window must be >= 1 or None, got {smooth}")
    if ax is None:
        _, ax = plt.subplots(figsize=FIGURE_SIZE)
    steps = df[x] if x is not None else pd.Series(df.index, index=df.index)
    for position, name in enumerate(columns):
        values = df[name].astype(float)
        present = values.notna()
        color = f"C{position % 10}"
        if smooth is not None and int(smooth) > 1:
            ax.plot(steps[present], values[present], color=color, alpha=0.25, linewidth=1)
            smoothed = values[present].rolling(int(smooth), min_periods=1).mean()
            ax.plot(steps[present], smoothed, color=color, linewidth=1.5, label=name)
        else:
            ax.plot(steps[present], values[present], color=color, linewidth=1.5, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(x if x is not None else (df.index.name or "step"))
    ax.set_ylabel("loss")
    ax.set_title(
        title if smooth is None or int(smooth) <= 1 else f"{title} (mean of {int(smooth)})"
    )
    if columns:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def compare_detections(
    samples: Sequence[tuple[Any, dict]],
    detections: Sequence[dict],
    class_names: Sequence[str] | None = None,
    linewidth: float = 1.0,
):
    """Ground truth above, detections below: one column per image.

    Args:
        samples: ``(image (3, H, W), target)`` pairs; targets hold ``boxes`` and
            ``labels``.
        detections: one dict per image, ``{"boxes", "labels", "scores"}`` (any
            device), e.g. what a detector's ``predict`` returns.
        class_names: names indexed by class id.
        linewidth: box line width in points.

    Returns:
        the matplotlib Figure (2 rows, ``len(samples)`` columns).
    """
    import matplotlib.pyplot as plt

    if len(samples) != len(detections) or not samples:
        raise ValueError(
            f"need as many detections as samples (at least one), got {len(detections)} "
            f"and {len(samples)}"
        )
    figure, axes = plt.subplots(2, len(samples), figsize=(3 * len(samples), 6.4), squeeze=False)
    for column, ((image, target), found) in enumerate(zip(samples, detections, strict=True)):
        draw_boxes(image, target["boxes"], target["labels"], class_names=class_names,
                   ax=axes[0, column], linewidth=linewidth, title="ground truth")  # fmt: skip
        found = {name: value.detach().cpu() for name, value in found.items()}
        draw_boxes(image, found["boxes"], found["labels"], found["scores"],
                   class_names=class_names, ax=axes[1, column], linewidth=linewidth,
                   title=f"{len(found['boxes'])} detections")  # fmt: skip
    for ax in axes.flat:
        ax.axis("off")
    figure.tight_layout()
    return figure
