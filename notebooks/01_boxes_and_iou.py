# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Boxes and the IoU family
#
# Every detector in this course compares boxes: an assigner asks which prior overlaps a
# ground-truth box best, a box loss asks how far a prediction is from its target. The
# comparison is the intersection over union (IoU) or one of its three descendants,
# GIoU, DIoU and CIoU. This notebook derives all four from scratch and shows why the
# descendants exist: plain IoU gives a loss no gradient when the boxes do not touch.
#
# **Learning goals**
#
# 1. Convert boxes between the xyxy, xywh (COCO) and cxcywh formats, in pixels and
#    normalised.
# 2. Compute IoU, GIoU, DIoU and CIoU by hand and as a pairwise matrix.
# 3. Explain, with a loss curve and its gradient, why GIoU trains where IoU cannot.
# 4. Tell what each penalty term adds (enclosing box, centre distance, aspect ratio).
# 5. Know how the references guard against zero-area boxes, and where they differ.
#
# **Prerequisites**: PyTorch tensors and broadcasting, `autograd` (`backward`, `.grad`).
#
# **Notation**: the letters of the shapes (B, A, M, C, K, R, ...), the box formats and
# the flat prior index are those of [notebook 09](09_notation.ipynb).

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ['png']

# %%
# NBVAL_IGNORE_OUTPUT
# (versions and device differ from machine to machine)
from detutils.course import setup

device = setup()["device"]

# %%
import math

import matplotlib.pyplot as plt
import pandas as pd
import torch
import torchvision.ops as tv_ops

from detutils import boxes as box_ops
from detutils.checks import check_close, check_function, check_passed, check_true
from detutils.viz import draw_boxes

# %% [markdown]
# ## 1. Box formats
#
# A box is four numbers, but which four depends on who wrote the file:
#
# | format | numbers | used by |
# | --- | --- | --- |
# | `xyxy` | corners `x1, y1` (top-left) and `x2, y2` (bottom-right) | `detutils`, torchvision |
# | `xywh` | top-left corner `x1, y1`, width, height | COCO annotation files |
# | `cxcywh` | centre `cx, cy`, width, height | YOLO label files, DETR (both normalised) |
#
# Pixel `x` runs left to right, `y` top to bottom. *Normalised* means divided by the
# image width (for x and w) and height (for y and h), so the box no longer depends on
# the image size. In `detutils` a box is `xyxy` in pixels unless its name says
# otherwise (`boxes_cxcywh_norm`).

# %%
image_size = (120, 160)  # (H, W)
box = torch.tensor([[40.0, 30.0, 120.0, 90.0]])  # xyxy, pixels
formats = {
    "xyxy": box,
    "xywh": box_ops.xyxy_to_xywh(box),
    "cxcywh": box_ops.xyxy_to_cxcywh(box),
    "cxcywh_norm": box_ops.xyxy_to_cxcywh_norm(box, image_size),
}
pd.DataFrame(
    {name: value[0].tolist() for name, value in formats.items()}, index=["0", "1", "2", "3"]
).T

# %% [markdown]
# Converting there and back must give the same box, and torchvision's `box_convert`
# must agree:

# %%
torch.testing.assert_close(box_ops.xywh_to_xyxy(formats["xywh"]), box)
torch.testing.assert_close(box_ops.cxcywh_to_xyxy(formats["cxcywh"]), box)
torch.testing.assert_close(box_ops.cxcywh_norm_to_xyxy(formats["cxcywh_norm"], image_size), box)
torch.testing.assert_close(formats["cxcywh"], tv_ops.box_convert(box, "xyxy", "cxcywh"))
print("round trips and torchvision agree")

# %%
ax = draw_boxes(image_size, box, title="one box, three ways to write it")
x1, y1, x2, y2 = box[0].tolist()
cx, cy, width, height = formats["cxcywh"][0].tolist()
ax.plot([x1, x2], [y1, y2], "ko")
ax.plot([cx], [cy], "k+", markersize=12)
ax.annotate("(x1, y1)", (x1, y1), xytext=(x1 - 30, y1 - 8))
ax.annotate("(x2, y2)", (x2, y2), xytext=(x2 - 10, y2 + 14))
ax.annotate("(cx, cy)", (cx, cy), xytext=(cx + 4, cy - 4))
ax.annotate(f"w = {width:.0f}", ((x1 + x2) / 2, y2), xytext=(cx - 15, y2 + 14))
ax.annotate(f"h = {height:.0f}", (x1, cy), xytext=(x1 - 38, cy))
plt.show()

# %% [markdown]
# ## 2. IoU: intersection over union
#
# The intersection of two axis-aligned boxes is again a box: its left side is the
# larger of the two left sides, its right side the smaller of the two right sides
# (and likewise for y). If the sides cross, the boxes do not overlap and the width is
# clamped to zero. Then
#
# $$\mathrm{IoU}(A, B) = \frac{|A \cap B|}{|A \cup B|} = \frac{I}{|A| + |B| - I}.$$
#
# Written for two *sets* of boxes at once, broadcasting `(N, 1, 4)` against `(1, M, 4)`
# gives the pairwise matrix: element `i, j` is the IoU of box `i` of the first set
# and box `j` of the second.


# %%
def inter_union(boxes1, boxes2):
    """Pairwise intersection and union areas of (N, 4) and (M, 4) xyxy boxes -> (N, M) each."""
    a, b = boxes1[:, None, :], boxes2[None, :, :]  # (N, 1, 4), (1, M, 4)
    inter_w = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(
        min=0
    )
    inter_h = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(
        min=0
    )
    inter = inter_w * inter_h  # (N, M)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])  # (N, 1)
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # (1, M)
    return inter, area_a + area_b - inter


def iou_inline(boxes1, boxes2, eps=1e-7):
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes -> (N, M)."""
    inter, union = inter_union(boxes1, boxes2)
    return inter / (union + eps)


# %% [markdown]
# Three hand-checkable cases: two 4 × 4 squares offset by (2, 2) share a 2 × 2 square,
# so IoU = 4 / (16 + 16 − 4) = 1/7; a 2 × 2 square in the middle of a 4 × 4 one has
# IoU 4 / 16 = 0.25; two squares that only touch have IoU 0.

# %%
square = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
others = torch.tensor([[2.0, 2.0, 6.0, 6.0], [1.0, 1.0, 3.0, 3.0], [4.0, 0.0, 8.0, 4.0]])
values = iou_inline(square, others)
print([f"{v:.4f}" for v in values[0].tolist()])
torch.testing.assert_close(values[0], torch.tensor([1 / 7, 0.25, 0.0]))

# %% [markdown]
# The same matrix on random boxes, against `detutils.boxes.box_iou` and torchvision.
# The `eps` in the denominator is the only difference: torchvision divides 0 by 0 for
# two empty boxes (section 6).

# %%
generator = torch.Generator().manual_seed(0)
top_left = torch.rand(6, 2, generator=generator) * 80
random_boxes = torch.cat(
    [top_left, top_left + 10 + torch.rand(6, 2, generator=generator) * 40], dim=1
)
boxes_a, boxes_b = random_boxes[:4], random_boxes[4:]
iou_matrix = iou_inline(boxes_a, boxes_b)
torch.testing.assert_close(iou_matrix, box_ops.box_iou(boxes_a, boxes_b))
torch.testing.assert_close(iou_matrix, tv_ops.box_iou(boxes_a, boxes_b))
pd.DataFrame(iou_matrix.numpy(), index=[f"a{i}" for i in range(4)], columns=["b0", "b1"])

# %% [markdown]
# From here on the IoU family lives in `detutils.boxes`: `box_iou(boxes1, boxes2, kind)`
# for the `(N, M)` matrix an assigner needs, and `box_iou_aligned(boxes1, boxes2, kind)`
# for the `(N,)` values of N prediction–target pairs that a loss needs.
#
# ## 3. Why IoU alone is a poor loss
#
# A box loss such as `1 − IoU` must tell the network which way to move a prediction.
# Slide a 20 × 20 prediction horizontally past a 20 × 20 target and watch the loss and
# its gradient with respect to the offset.

# %%
target = torch.tensor([[40.0, 40.0, 60.0, 60.0]])
offsets = torch.linspace(-50, 50, 201, requires_grad=True)  # prediction x shift, px
zeros = torch.zeros_like(offsets)
predictions = target + torch.stack([offsets, zeros, offsets, zeros], dim=1)  # (201, 4)
curves, slopes = {}, {}
for kind in box_ops.IOU_KINDS:
    loss = 1 - box_ops.box_iou_aligned(predictions, target.expand_as(predictions), kind=kind)
    (gradient,) = torch.autograd.grad(loss.sum(), offsets)
    curves[kind], slopes[kind] = loss.detach(), gradient

# %%
fig, (ax_loss, ax_slope) = plt.subplots(1, 2, figsize=(10, 3.6))
for kind in ("iou", "giou"):
    ax_loss.plot(offsets.detach(), curves[kind], label=f"1 - {kind}")
    ax_slope.plot(offsets.detach(), slopes[kind], label=f"d(1 - {kind}) / d offset")
for ax in (ax_loss, ax_slope):
    ax.axvspan(-50, -20, color="0.9")
    ax.axvspan(20, 50, color="0.9")
    ax.set_xlabel("offset of the prediction (px); grey: no overlap")
    ax.legend(fontsize=8)
ax_loss.set_title("loss")
ax_slope.set_title("gradient")
plt.show()

# %% [markdown]
# Inside the grey bands the boxes do not overlap: `1 − IoU` is flat at 1 and its
# gradient is exactly zero, so a prediction that starts away from its target never
# learns to move. `1 − GIoU` keeps rising with the distance, and its gradient keeps
# pointing back to the target.

# %%
apart = offsets.detach().abs() > 20
assert (slopes["iou"][apart] == 0).all()
assert (slopes["giou"][apart] != 0).all()
# Right of the target the slope is positive (moving left lowers the loss), and mirrored.
assert (slopes["giou"][offsets.detach() > 20] > 0).all()
assert (slopes["giou"][offsets.detach() < -20] < 0).all()
print(f"GIoU slope 10 px past contact: {slopes['giou'][offsets.detach() == 30].item():.4f} per px")

# %% [markdown]
# ## 4. GIoU: the enclosing box
#
# Rezatofighi et al. (2019) add a penalty measured on $C$, the smallest box that
# encloses both: the share of $C$ that neither box covers,
#
# $$\mathrm{GIoU} = \mathrm{IoU} - \frac{|C| - |A \cup B|}{|C|}.$$
#
# When the boxes are far apart, $|A \cup B|$ stays fixed while $|C|$ grows, so GIoU
# tends to −1; when they coincide, $C = A \cup B$ and GIoU = IoU = 1. The range is
# (−1, 1].


# %%
def enclosing_box(boxes1, boxes2):
    """Pairwise smallest enclosing boxes -> (N, M, 4) xyxy."""
    a, b = boxes1[:, None, :], boxes2[None, :, :]
    return torch.cat(
        [torch.minimum(a[..., :2], b[..., :2]), torch.maximum(a[..., 2:], b[..., 2:])], dim=-1
    )


def giou_inline(boxes1, boxes2, eps=1e-7):
    """Pairwise GIoU -> (N, M)."""
    inter, union = inter_union(boxes1, boxes2)
    enclose = enclosing_box(boxes1, boxes2)  # (N, M, 4)
    enclose_area = (enclose[..., 2] - enclose[..., 0]) * (enclose[..., 3] - enclose[..., 1])
    return inter / (union + eps) - (enclose_area - union) / (enclose_area + eps)


# %%
giou_matrix = giou_inline(boxes_a, boxes_b)
torch.testing.assert_close(giou_matrix, box_ops.box_iou(boxes_a, boxes_b, kind="giou"))
torch.testing.assert_close(giou_matrix, tv_ops.generalized_box_iou(boxes_a, boxes_b))
# Two 10 px squares with a 10 px gap: union 200, enclosing box 30 x 10 = 300.
apart_pair = torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[20.0, 0.0, 30.0, 10.0]])
print(f"GIoU of two squares 10 px apart: {giou_inline(*apart_pair).item():.4f} (hand: -1/3)")
torch.testing.assert_close(giou_inline(*apart_pair), torch.tensor([[-1 / 3]]))

# %% [markdown]
# ## 5. DIoU and CIoU: centre distance and aspect ratio
#
# GIoU has a blind spot of its own: when one box lies inside the other, $C$ is the
# larger box, which the union fills, so the penalty vanishes and GIoU = IoU wherever
# the small box sits. Zheng et al. (2020) penalise the distance between the centres
# instead, normalised by the diagonal $c$ of the enclosing box:
#
# $$\mathrm{DIoU} = \mathrm{IoU} - \frac{\rho^2(b_A, b_B)}{c^2}.$$
#
# The same paper's CIoU also penalises a mismatch of aspect ratios,
#
# $$\mathrm{CIoU} = \mathrm{DIoU} - \alpha v,\quad
# v = \frac{4}{\pi^2}\Big(\arctan\frac{w_B}{h_B} - \arctan\frac{w_A}{h_A}\Big)^2,\quad
# \alpha = \frac{v}{(1 - \mathrm{IoU}) + v},$$
#
# where $\alpha$ is treated as a constant weight: both torchvision and ultralytics
# compute it under `torch.no_grad()`.


# %%
def diou_inline(boxes1, boxes2, eps=1e-7):
    """Pairwise DIoU -> (N, M)."""
    iou = iou_inline(boxes1, boxes2, eps)
    enclose = enclosing_box(boxes1, boxes2)
    diagonal2 = (enclose[..., 2] - enclose[..., 0]) ** 2 + (enclose[..., 3] - enclose[..., 1]) ** 2
    centers1 = (boxes1[:, :2] + boxes1[:, 2:]) / 2  # (N, 2)
    centers2 = (boxes2[:, :2] + boxes2[:, 2:]) / 2  # (M, 2)
    center_distance2 = ((centers1[:, None, :] - centers2[None, :, :]) ** 2).sum(-1)  # (N, M)
    return iou - center_distance2 / (diagonal2 + eps)


def ciou_inline(boxes1, boxes2, eps=1e-7):
    """Pairwise CIoU -> (N, M); alpha is a constant for autograd."""
    iou = iou_inline(boxes1, boxes2, eps)
    width1, height1 = boxes1[:, 2] - boxes1[:, 0], boxes1[:, 3] - boxes1[:, 1]
    width2, height2 = boxes2[:, 2] - boxes2[:, 0], boxes2[:, 3] - boxes2[:, 1]
    angle1 = torch.atan(width1 / (height1 + eps))[:, None]  # (N, 1)
    angle2 = torch.atan(width2 / (height2 + eps))[None, :]  # (1, M)
    v = 4 / math.pi**2 * (angle2 - angle1) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + 1 + eps)
    return diou_inline(boxes1, boxes2, eps) - alpha * v


# %%
for name, inline, torchvision_version in [
    ("diou", diou_inline, tv_ops.distance_box_iou),
    ("ciou", ciou_inline, tv_ops.complete_box_iou),
]:
    torch.testing.assert_close(
        inline(boxes_a, boxes_b), box_ops.box_iou(boxes_a, boxes_b, kind=name)
    )
    torch.testing.assert_close(inline(boxes_a, boxes_b), torchvision_version(boxes_a, boxes_b))
print("inline DIoU and CIoU equal detutils.boxes and torchvision")

# %% [markdown]
# The blind spot made visible: a 10 × 10 box slides inside a 40 × 40 target, from
# its left edge to its right edge.

# %%
inside_target = torch.tensor([[0.0, 0.0, 40.0, 40.0]])
shifts = torch.arange(0.0, 31.0, 1.0)
inside = torch.stack([shifts, 15 + 0 * shifts, shifts + 10, 25 + 0 * shifts], dim=1)  # (31, 4)
table = {
    kind: box_ops.box_iou(inside, inside_target, kind=kind)[:, 0] for kind in box_ops.IOU_KINDS
}
fig, ax = plt.subplots(figsize=(5, 3.2))
for kind in ("iou", "giou", "diou"):
    ax.plot(shifts, table[kind], label=kind, linestyle="--" if kind == "giou" else "-")
ax.set_xlabel("x1 of the 10 px box inside the 40 px target")
ax.set_ylabel("value")
ax.set_title("a box inside its target: GIoU = IoU")
ax.legend(fontsize=8)
plt.show()

# %%
torch.testing.assert_close(table["giou"], table["iou"])
assert table["iou"].unique().numel() == 1  # 100 / 1600 everywhere
assert table["diou"].argmax().item() == 15  # best when the centres coincide
print(
    f"IoU {table['iou'][0]:.4f} everywhere; DIoU {table['diou'][0]:.4f} at the edge, "
    f"{table['diou'][15]:.4f} at the centre"
)

# %% [markdown]
# And CIoU's extra term: three boxes with the target's centre and area (400 px²) but
# different aspect ratios. DIoU sees only the overlap; CIoU also charges for the shape.

# %%
square_target = torch.tensor([[40.0, 40.0, 60.0, 60.0]])
shapes = torch.tensor(
    [[40.0, 40.0, 60.0, 60.0], [30.0, 45.0, 70.0, 55.0], [10.0, 47.5, 90.0, 52.5]]
)
rows = {
    "w x h": ["20 x 20", "40 x 10", "80 x 5"],
    **{
        kind: box_ops.box_iou(shapes, square_target, kind=kind)[:, 0].tolist()
        for kind in box_ops.IOU_KINDS
    },
}
pd.DataFrame(rows)

# %%
values = {
    kind: box_ops.box_iou(shapes, square_target, kind=kind)[:, 0] for kind in box_ops.IOU_KINDS
}
torch.testing.assert_close(values["diou"], values["iou"])  # same centre: no distance penalty
assert (values["ciou"][1:] < values["diou"][1:]).all()  # the aspect-ratio penalty
assert values["ciou"][2] < values["ciou"][1]  # grows with the mismatch

# %% [markdown]
# ## 6. Degenerate boxes and the `eps`
#
# A zero-area box, a point or a line, turns up in practice: a prediction at
# initialisation, a clipped annotation. torchvision's pairwise functions divide 0 by 0
# and return NaN, which poisons a loss. `detutils.boxes` puts a small `eps = 1e-7`
# in every denominator so the value and its gradient stay finite:
#
# | term | torchvision (pairwise) | ultralytics `bbox_iou` | `detutils.boxes` |
# | --- | --- | --- | --- |
# | IoU | I / U | I / (U + eps), heights + eps | I / (U + eps) |
# | GIoU | (C − U) / C | (C − U) / (C + eps) | (C − U) / (C + eps) |
# | DIoU | ρ² / (c² + eps) | ρ² / (c² + eps) | ρ² / (c² + eps) |
# | CIoU | atan(w / h) | atan(w / (h + eps)) | atan(w / (h + eps)) |
#
# For boxes of more than a few pixels the three agree to about `eps / union`.

# %%
point = torch.tensor([[5.0, 5.0, 5.0, 5.0]], requires_grad=True)
line = torch.tensor([[0.0, 2.0, 8.0, 2.0]])
print(
    "torchvision IoU of a point with itself:", tv_ops.box_iou(point.detach(), point.detach()).item()
)
for kind in box_ops.IOU_KINDS:
    value = box_ops.box_iou(torch.cat([point, line]), torch.cat([point, line]), kind=kind)
    (gradient,) = torch.autograd.grad(value.sum(), point)
    assert torch.isfinite(value).all() and torch.isfinite(gradient).all()
    print(f"{kind:5s} point/line matrix:", " ".join(f"{v:.4f}" for v in value.flatten().tolist()))

# %% [markdown]
# Empty sets give empty results of the right shape, so an image without ground truth
# needs no special case:

# %%
print(
    box_ops.box_iou(torch.zeros(0, 4), boxes_b).shape,
    box_ops.box_iou(boxes_a, torch.zeros(0, 4)).shape,
)

# %% [markdown]
# ## Recap
#
# - `detutils` boxes are `xyxy` pixels; COCO files hold `xywh`, YOLO files normalised
#   `cxcywh`; `detutils.boxes` converts between them.
# - IoU = intersection / union. As a loss it is flat, with zero gradient, whenever
#   the boxes do not overlap.
# - GIoU subtracts the uncovered share of the enclosing box: it keeps a gradient when
#   the boxes are apart, but equals IoU when one box contains the other.
# - DIoU subtracts the squared centre distance over the squared enclosing diagonal;
#   CIoU also subtracts an aspect-ratio term weighted by a gradient-free α.
# - `box_iou` gives the `(N, M)` matrix, `box_iou_aligned` the `(N,)` pairs; both
#   stay finite for zero-area boxes.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** Two boxes `(0, 0, 6, 4)` and `(3, 1, 9, 7)`: compute by hand their
# intersection, union, IoU and GIoU; assign the last two to `iou_by_hand` and
# `giou_by_hand` (plain numbers, no `detutils`).

# %% tags=["solution"]
iou_by_hand = giou_by_hand = None  # your two numbers
### BEGIN SOLUTION
# Intersection: x 3..6 = 3, y 1..4 = 3 -> 9. Areas 24 and 36: union 51.
# Enclosing box: x 0..9, y 0..7 -> 63.
iou_by_hand = 9 / 51
giou_by_hand = 9 / 51 - (63 - 51) / 63
### END SOLUTION
print(f"IoU {iou_by_hand}, GIoU {giou_by_hand}")

# %% tags=["check"]
box1, box2 = torch.tensor([[0.0, 0, 6, 4]]), torch.tensor([[3.0, 1, 9, 7]])
check_close(
    "iou_by_hand", iou_by_hand, box_ops.box_iou_aligned(box1, box2),
    hint="IoU = intersection / union; the union counts the overlap once: 24 + 36 - 9.",
)  # fmt: skip
check_close(
    "giou_by_hand", giou_by_hand, box_ops.box_iou_aligned(box1, box2, kind="giou"),
    hint="GIoU = IoU - (C - union) / C, with C the area of the smallest box around both.",
)  # fmt: skip
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** A YOLO label file stores `class cx cy w h`, normalised. Turn the line
# `2 0.5 0.25 0.2 0.1` of a 480 × 640 (H × W) image into an `xyxy` pixel box
# `pixel_box` `(1, 4)`, then into the COCO `xywh` of the annotation file, `coco_box`
# `(1, 4)`, with the functions of `detutils.boxes`.

# %% tags=["solution"]
label = torch.tensor([[0.5, 0.25, 0.2, 0.1]])
pixel_box = coco_box = None  # (1, 4) each
### BEGIN SOLUTION
pixel_box = box_ops.cxcywh_norm_to_xyxy(label, (480, 640))
coco_box = box_ops.xyxy_to_xywh(pixel_box)
### END SOLUTION
print(pixel_box, coco_box)

# %% tags=["check"]
# Centre (0.5 * 640, 0.25 * 480) = (320, 120), size 128 x 48: corners (256, 96), (384, 144).
check_close(
    "pixel_box", pixel_box, [[256.0, 96.0, 384.0, 144.0]],
    hint="cx and w scale with the width (640), cy and h with the height (480).",
)  # fmt: skip
check_close(
    "coco_box", coco_box, [[256.0, 96.0, 128.0, 48.0]],
    hint="COCO's xywh is the top-left corner, then width and height.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
back = box_ops.xyxy_to_cxcywh_norm(box_ops.xywh_to_xyxy(torch.as_tensor(coco_box)), (480, 640))
check_close("coco_box converted back", back, label, hint="the round trip gives the label")
### END HIDDEN TESTS
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** For two equal 20 × 20 squares sliding apart along x (as in section 3),
# at what gap `gap` (px) does GIoU reach −0.5? Derive it (union 800, enclosing box
# (40 + gap) × 20), then confirm with `box_iou_aligned`.

# %% tags=["solution"]
gap = None  # px
### BEGIN SOLUTION
# GIoU = 0 - (C - 800) / C = -0.5  =>  C = 1600  =>  (40 + gap) * 20 = 1600  =>  gap = 40.
gap = 40.0
### END SOLUTION
print(f"gap {gap} px")

# %% tags=["check"]
check_true(gap is not None, "`gap` is still None: assign the gap in pixels to it.")
left = torch.tensor([[0.0, 0.0, 20.0, 20.0]])
right = torch.tensor([[20.0 + gap, 0.0, 40.0 + gap, 20.0]])
check_close(
    "GIoU at your gap", box_ops.box_iou_aligned(left, right, kind="giou"), -0.5,
    hint="apart, IoU is 0, so GIoU = -(C - 800) / C; solve for C, then C = (40 + gap) * 20.",
)  # fmt: skip
check_passed("Exercise 3")

# %% [markdown]
# **Exercise 4.** `box_iou_aligned` on a batch `(B, A, 4)` must equal `box_iou` applied
# image by image, taking the diagonal. Write `aligned_by_loop(boxes1, boxes2, kind)`
# that computes the `(B, A)` result with a loop over images, `box_iou` and
# `.diagonal()`; the check compares it with `box_iou_aligned` for all four kinds.

# %% tags=["solution"]
aligned_by_loop = None  # your function (boxes1 (B, A, 4), boxes2 (B, A, 4), kind) -> (B, A)
### BEGIN SOLUTION


def aligned_by_loop(boxes1, boxes2, kind):
    per_image = [
        box_ops.box_iou(b1, b2, kind=kind).diagonal()  # (A,)
        for b1, b2 in zip(boxes1, boxes2, strict=True)
    ]
    return torch.stack(per_image)  # (B, A)


### END SOLUTION

# %% tags=["check"]
generator = torch.Generator().manual_seed(1)
corner = torch.rand(2, 5, 2, generator=generator) * 50
batch1 = torch.cat([corner, corner + 5 + torch.rand(2, 5, 2, generator=generator) * 30], dim=-1)
batch2 = batch1 + torch.randn(2, 5, 4, generator=generator) * 3
for kind in box_ops.IOU_KINDS:
    check_function(
        "aligned_by_loop", aligned_by_loop, [(batch1, batch2, kind)],
        lambda b1, b2, kind: box_ops.box_iou_aligned(b1, b2, kind=kind),
        hint="box_iou(b1, b2) is (A, A): pair i with i is its diagonal; stack to (B, A).",
    )  # fmt: skip
### BEGIN HIDDEN TESTS
single = batch1[:1, :1], batch2[:1, :1]
check_function(
    "aligned_by_loop", aligned_by_loop, [(*single, "giou")],
    lambda b1, b2, kind: box_ops.box_iou_aligned(b1, b2, kind=kind),
    hint="one image with one box gives a (1, 1) result",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 4")

# %% [markdown]
# ## Further reading
#
# - H. Rezatofighi et al., *Generalized Intersection over Union*, CVPR 2019,
#   <https://arxiv.org/abs/1902.09630>
# - Z. Zheng et al., *Distance-IoU Loss: Faster and Better Learning for Bounding Box
#   Regression*, AAAI 2020 (DIoU and CIoU), <https://arxiv.org/abs/1911.08287>
# - torchvision `ops/boxes.py` (pairwise IoU family) and `ops/giou_loss.py`,
#   `ops/ciou_loss.py` (aligned losses):
#   <https://github.com/pytorch/vision/blob/main/torchvision/ops/boxes.py>
# - ultralytics `bbox_iou` (the CIoU used by YOLOv8's box loss):
#   <https://github.com/ultralytics/ultralytics/blob/main/ultralytics/utils/metrics.py>
# - DETR's `box_ops.py`, the compact pairwise GIoU used by its Hungarian matcher:
#   <https://github.com/facebookresearch/detr/blob/main/util/box_ops.py>
