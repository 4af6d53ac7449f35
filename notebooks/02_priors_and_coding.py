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
# # 02 · Priors and box coding
#
# A detection head does not output boxes out of nowhere. At every cell of every feature
# map it starts from a *prior*, a fixed box or point, and predicts a few numbers that
# say how to move it onto an object. This notebook builds the three kinds of priors the
# course's detectors use, shows how all of them are laid out in one flat list, and
# walks through the *coders* that turn boxes into those few numbers and back.
#
# **Learning goals**
#
# 1. Build anchor points (YOLOv8), grid cells (NanoDet) and anchor boxes (ATSS,
#    Faster R-CNN) for a multi-level feature pyramid, and count them.
# 2. Find a prior from its level and cell through the flat index
#    `level offset + y * W + x`, and back.
# 3. Encode a ground-truth box with the distance, delta-xywh and YOLO coders, and
#    decode it back.
# 4. Read a distribution over bins as a distance: the DFL integral.
#
# **Prerequisites**: notebook 01 (box formats, IoU).
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

from detutils import boxes as box_ops
from detutils import coders, priors
from detutils.checks import check_close, check_equal, check_passed, check_true
from detutils.data.shapes import CLASS_NAMES, render_sample
from detutils.viz import draw_boxes, draw_priors


def as_text(values):
    """A tensor's values with 4 decimals, for printing."""
    return "(" + ", ".join(f"{value:.4f}" for value in values.flatten().tolist()) + ")"


# %% [markdown]
# ## 1. An image and its boxes
#
# One image of the course's synthetic shapes set, drawn from its seed: 320 × 320
# pixels, with its ground-truth boxes. The set stores COCO `xywh` boxes; the course
# works in `xyxy`.

# %%
image, _, objects = render_sample(seed=0, split="val", index=0, size=320)
gt_boxes = box_ops.xywh_to_xyxy(torch.tensor([obj["bbox"] for obj in objects], dtype=torch.float32))
gt_labels = torch.tensor([obj["label"] for obj in objects])
draw_boxes(image, gt_boxes, gt_labels, class_names=CLASS_NAMES)
plt.show()

# %%
pd.DataFrame(
    {
        "class": [CLASS_NAMES[label] for label in gt_labels.tolist()],
        "x1": gt_boxes[:, 0].tolist(),
        "y1": gt_boxes[:, 1].tolist(),
        "x2": gt_boxes[:, 2].tolist(),
        "y2": gt_boxes[:, 3].tolist(),
        "w": (gt_boxes[:, 2] - gt_boxes[:, 0]).tolist(),
        "h": (gt_boxes[:, 3] - gt_boxes[:, 1]).tolist(),
    }
)

# %% [markdown]
# ## 2. Feature levels
#
# A backbone with a feature pyramid gives maps at several *strides*: a cell of the
# stride-8 map covers 8 × 8 input pixels. Small strides see small objects, large
# strides large ones. A 320-pixel input at strides 8, 16 and 32 gives maps of
# 40 × 40, 20 × 20 and 10 × 10 cells.

# %%
input_size = 320
strides = [8, 16, 32]
feature_sizes = [(input_size // stride, input_size // stride) for stride in strides]
num_per_level = priors.num_priors_per_level(feature_sizes)
pd.DataFrame(
    {"stride": strides, "H x W": [f"{h} x {w}" for h, w in feature_sizes], "priors": num_per_level}
)

# %%
assert num_per_level == [1600, 400, 100] and sum(num_per_level) == 2100
print(f"{sum(num_per_level)} priors, one per cell")

# %% [markdown]
# ## 3. Anchor points (YOLOv8)
#
# The simplest prior is a point: the centre of each cell, `((x + 0.5) s, (y + 0.5) s)`
# in pixels. ultralytics' `make_anchors` builds the same points in cell units
# (`x + 0.5`) and keeps the strides beside them; derived inline, then compared:

# %%
inline_points, inline_strides = [], []
for (height, width), stride in zip(feature_sizes, strides, strict=True):
    grid_y, grid_x = torch.meshgrid(
        torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij"
    )
    inline_points.append(torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2) * stride)  # (H W, 2)
    inline_strides.append(torch.full((height * width,), float(stride)))
points, point_strides = priors.anchor_points(feature_sizes, strides, device=device)
torch.testing.assert_close(points.cpu(), torch.cat(inline_points))
torch.testing.assert_close(point_strides.cpu(), torch.cat(inline_strides))
print(points.shape, point_strides.shape, "first points:", points[:3].tolist())

# %% [markdown]
# From now on they come from `detutils.priors.anchor_points`. Over the image, level by
# level:

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
for ax, level_points, stride in zip(axes, points.cpu().split(num_per_level), strides, strict=True):
    draw_priors(image, level_points, ax=ax, title=f"stride {stride}: {len(level_points)} points")
plt.show()

# %% [markdown]
# ## 4. Grid cells (NanoDet)
#
# NanoDet's assigner (ATSS) needs boxes to measure IoUs, but its head has no anchors.
# It makes one up per cell: a square of side `cell_scale * stride` (5 s) centred on
# the cell centre. The grid cells exist only to assign targets; the head regresses
# distances from the cell centre, the anchor point.

# %%
cells, cell_counts = priors.grid_cells(feature_sizes, strides, cell_scale=5.0, device=device)
cells = cells.cpu()
assert cell_counts == num_per_level
torch.testing.assert_close((cells[:, :2] + cells[:, 2:]) / 2, points.cpu())  # centred on the points
torch.testing.assert_close(cells[:, 2] - cells[:, 0], 5.0 * point_strides.cpu())  # side 5 s
print("cell (0, 0) of stride 8:", cells[0].tolist())

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
for ax, level_cells, stride in zip(axes, cells.split(num_per_level), strides, strict=True):
    middle = len(level_cells) // 2 + int(math.sqrt(len(level_cells))) // 2
    draw_priors(
        image,
        level_cells,
        ax=ax,
        highlight=[middle],
        title=f"stride {stride}: side {5 * stride} px",
    )
plt.show()

# %% [markdown]
# ## 5. Anchor boxes (ATSS, Faster R-CNN)
#
# mmdet's `AnchorGenerator` puts K boxes at each location: every combination of an
# aspect ratio `r = h / w` and a scale `c`. An anchor of base size `b` (the stride)
# has width `b c / sqrt(r)` and height `b c sqrt(r)`, so its area `(b c)^2` does not
# depend on `r`. Faster R-CNN's RPN uses `scales=[8], ratios=[0.5, 1, 2]`, three
# anchors per location; ATSS uses one square of side 8 s (`octave_base_scale=8`,
# one scale per octave, ratio 1).
#
# Two details matter when you compare with mmdet: the K anchors of a location are
# adjacent in the flat list (ratios outer, scales inner, `scale_major=True`), and the
# anchors are centred on the cell's **top-left corner** `(x s, y s)`, not its centre
# (`center_offset=0`, mmdet 2.x and later). The values are not rounded.

# %%
rpn_base = priors.base_anchors(base_size=4, scales=[8], ratios=[0.5, 1.0, 2.0])
pd.DataFrame(
    rpn_base.numpy(), columns=["x1", "y1", "x2", "y2"], index=["ratio 0.5", "ratio 1", "ratio 2"]
).assign(w=lambda df: df.x2 - df.x1, h=lambda df: df.y2 - df.y1)

# %%
# Hand check: ratio 0.5 at stride 4, scale 8 -> w = 32 sqrt(2) = 45.25, h = 32 / sqrt(2) = 22.63.
torch.testing.assert_close(
    rpn_base[0],
    torch.tensor([-16 * math.sqrt(2), -8 * math.sqrt(2), 16 * math.sqrt(2), 8 * math.sqrt(2)]),
)
areas = box_ops.box_area(rpn_base)
torch.testing.assert_close(areas, torch.full((3,), 32.0**2))  # same area for every ratio

# %% [markdown]
# The RPN of Faster R-CNN (with FPN) has five levels, strides 4 to 64; ATSS has five,
# strides 8 to 128 (the 320-pixel input gives the last level 3 × 3 cells, rounded up).

# %%
rpn_strides = [4, 8, 16, 32, 64]
rpn_sizes = [(math.ceil(input_size / s), math.ceil(input_size / s)) for s in rpn_strides]
rpn_anchors = priors.anchor_boxes(
    rpn_sizes, rpn_strides, scales=[8], ratios=[0.5, 1.0, 2.0], device=device
)
atss_strides = [8, 16, 32, 64, 128]
atss_sizes = [(math.ceil(input_size / s), math.ceil(input_size / s)) for s in atss_strides]
atss_anchors = priors.anchor_boxes(
    atss_sizes, atss_strides, octave_base_scale=8, scales_per_octave=1, ratios=[1.0], device=device
)
print(
    "RPN: ",
    rpn_anchors.shape,
    "=",
    " + ".join(str(n) for n in priors.num_priors_per_level(rpn_sizes, 3)),
)
print(
    "ATSS:",
    atss_anchors.shape,
    "=",
    " + ".join(str(n) for n in priors.num_priors_per_level(atss_sizes)),
)
assert rpn_anchors.shape[0] == 3 * (80 * 80 + 40 * 40 + 20 * 20 + 10 * 10 + 5 * 5)

# %% [markdown]
# The three RPN anchors of one location on each level, all at the image centre
# (160, 160), which is the top-left corner of a cell on every level. The 256- and
# 512-pixel anchors reach far outside the 320-pixel image (grey square); an assigner
# simply finds no good match for them on small objects.

# %%
fig, ax = plt.subplots(figsize=(5.5, 5.5))
ax.add_patch(plt.Rectangle((0, 0), 320, 320, color="0.85"))
for level, stride in enumerate(rpn_strides):
    y = x = 160 // stride
    first = priors.flat_prior_index(level, y, x, rpn_sizes, anchor=0, anchors_per_location=3)
    for k, (x1, y1, x2, y2) in enumerate(rpn_anchors[first : first + 3].cpu().tolist()):
        label = f"stride {stride}: area {8 * stride}\u00b2 px" if k == 0 else None
        ax.add_patch(
            plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=f"C{level}", label=label)
        )
ax.set_xlim(-120, 440)
ax.set_ylim(440, -120)  # y grows downwards, as in the image
ax.set_aspect("equal")
ax.set_xlabel("x (px)")
ax.set_ylabel("y (px)")
ax.legend(fontsize=7, loc="upper right")
ax.set_title("RPN anchors at (160, 160): ratios 0.5, 1, 2")
plt.show()

# %% [markdown]
# ## 6. The flat prior index
#
# Every head of the course flattens its outputs the same way, so prediction `i` and
# prior `i` belong together: levels one after the other, each level row-major. The
# first prior of each level sits at its *level offset*:
#
# `flat index = level offset + y * W + x` (one prior per cell), or
# `level offset + (y * W + x) * K + k` with K anchors per location.

# %%
offsets = priors.level_offsets(num_per_level)
print("level offsets:", offsets)
examples = [(0, 0, 0), (0, 1, 0), (0, 39, 39), (1, 0, 0), (1, 2, 3), (2, 9, 9)]
rows = []
for level, y, x in examples:
    index = priors.flat_prior_index(level, y, x, feature_sizes)
    height, width = feature_sizes[level]
    assert index == offsets[level] + y * width + x
    rows.append(
        {
            "level": level,
            "y": y,
            "x": x,
            "W": width,
            "flat index": index,
            "point": points[index].tolist(),
        }
    )
pd.DataFrame(rows)

# %%
# The point at flat index 1643 is cell (y=2, x=3) of the stride-16 level: ((3.5) 16, (2.5) 16).
torch.testing.assert_close(points[1643].cpu(), torch.tensor([3.5 * 16, 2.5 * 16]))
# With K = 3 RPN anchors: level 1 starts after 3 * 80 * 80 anchors; cell (2, 3), anchor 1 (ratio 1).
index = priors.flat_prior_index(1, 2, 3, rpn_sizes, anchor=1, anchors_per_location=3)
assert index == 3 * 6400 + (2 * 40 + 3) * 3 + 1
torch.testing.assert_close(
    rpn_anchors[index].cpu(), torch.tensor([3 * 8 - 32.0, 2 * 8 - 32, 3 * 8 + 32, 2 * 8 + 32])
)
print(f"RPN anchor {index}: {rpn_anchors[index].tolist()}")

# %% [markdown]
# ## 7. Coders: from boxes to numbers and back
#
# A head predicts a few numbers per prior; a *coder* defines what they mean. The
# targets of the loss are the ground-truth boxes *encoded* against their priors; the
# predictions are *decoded* into boxes for evaluation. Take one object of the image
# and the stride-16 point nearest its centre.

# %%
gt = gt_boxes[1:2]  # (1, 4)
gt_center = (gt[:, :2] + gt[:, 2:]) / 2
level1_points = points.cpu().split(num_per_level)[1]
nearest = (level1_points - gt_center).norm(dim=1).argmin()
point = level1_points[nearest : nearest + 1]  # (1, 2)
print(f"gt {CLASS_NAMES[gt_labels[1]]}: {as_text(gt[0])}")
print(f"centre {as_text(gt_center[0])}, nearest stride-16 point {as_text(point[0])}")

# %% [markdown]
# ### 7.1 Distance coder (FCOS, GFL, YOLOv8)
#
# Four distances from the point to the left, top, right and bottom sides. YOLOv8 and
# NanoDet count them in strides (bins of the DFL distribution below), so the caller
# divides by the stride before encoding and multiplies after decoding. For DFL the
# target must stay below the last bin R: ultralytics clamps to `R - 0.01`, GFL to
# `R - 0.1` (`eps=0.1`).

# %%
stride = 16
distances_px = coders.encode_distance(point, gt)
distances_bins = coders.encode_distance(point / stride, gt / stride, max_dist=15)  # R = 15: 16 bins
print("l, t, r, b in px:  ", as_text(distances_px[0]))
print("in strides (bins): ", as_text(distances_bins[0]))
torch.testing.assert_close(coders.decode_distance(point, distances_px), gt)
torch.testing.assert_close(coders.decode_distance(point / stride, distances_bins) * stride, gt)

# %%
ax = draw_boxes(
    image, gt, gt_labels[1:2], class_names=CLASS_NAMES, title="distance coding: l, t, r, b"
)
px, py = point[0].tolist()
left, top, right, bottom = distances_px[0].tolist()
for dx, dy in [(-left, 0), (0, -top), (right, 0), (0, bottom)]:
    ax.annotate(
        "",
        xy=(px + dx, py + dy),
        xytext=(px, py),
        arrowprops={"arrowstyle": "->", "color": "white"},
    )
ax.plot(px, py, "wo")
plt.show()

# %% [markdown]
# ### 7.2 Delta-xywh coder (Faster R-CNN, ATSS)
#
# Against an anchor box: the centre shift in units of the anchor's size, and the log
# of the size ratio,
# `dx = (gx - px) / pw, dy = (gy - py) / ph, dw = log(gw / pw), dh = log(gh / ph)`,
# then normalised by `means` and `stds`. Take the RPN anchor with the highest IoU:

# %%
anchor_ious = box_ops.box_iou(rpn_anchors.cpu(), gt)[:, 0]  # (A,)
best = anchor_ious.argmax()
anchor = rpn_anchors[best : best + 1].cpu()
deltas = coders.encode_delta_xywh(anchor, gt)
print(f"best anchor {best.item()} (IoU {anchor_ious[best]:.4f}): {as_text(anchor[0])}")
print(f"deltas dx, dy, dw, dh: {as_text(deltas[0])}")
torch.testing.assert_close(coders.decode_delta_xywh(anchor, deltas), gt)

# %% [markdown]
# On decoding, `dw` and `dh` are clamped to `±|log(16/1000)|` ≈ 4.135, so a wild
# prediction cannot overflow `exp`; `max_shape` clips the box to the image.

# %%
wild = coders.decode_delta_xywh(
    anchor, torch.tensor([[0.0, 0.0, 50.0, -50.0]]), max_shape=(320, 320)
)
print(f"max |dw| = {abs(math.log(16 / 1000)):.4f}; wild prediction -> {as_text(wild[0])}")
assert (wild >= 0).all() and (wild <= 320).all()

# %% [markdown]
# ### 7.3 YOLO coder (YOLOv3)
#
# YOLOv3 predicts `t_x, t_y` through a sigmoid, an offset inside the cell, and
# `t_w, t_h` through an exponential, a scale of the anchor size:
# `centre = (sigmoid(t_xy) + cell) * stride`, `size = exp(t_wh) * anchor`. Zero
# outputs give the anchor centred in its cell. Inverting it for our box at stride 16
# with the anchor 30 × 61 px (one of YOLOv3's nine):

# %%
anchor_wh = torch.tensor([30.0, 61.0])
cell_xy = torch.floor(gt_center[0] / stride)  # the cell that holds the centre
fraction = gt_center[0] / stride - cell_xy  # in (0, 1)
gt_wh = gt[0, 2:] - gt[0, :2]
raw = torch.cat([torch.logit(fraction), torch.log(gt_wh / anchor_wh)])[None]  # (1, 4)
print("cell x, y:", cell_xy.tolist(), " t:", as_text(raw[0]))
torch.testing.assert_close(coders.decode_yolo(raw, cell_xy, anchor_wh, stride=stride), gt)

# %% [markdown]
# ### 7.4 The DFL integral (GFL, NanoDet, YOLOv8)
#
# Instead of one number per side, GFL and YOLOv8 predict a distribution over the bins
# `0, 1, ..., R` (YOLOv8: `reg_max = 16` bins, R = 15) and read the distance as its
# expected value: `softmax(logits) · [0, 1, ..., R]`. A target of 5.3 bins is best
# described by weight 0.7 on bin 5 and 0.3 on bin 6, which integrate to exactly 5.3.

# %%
num_bins = 16
probabilities = torch.zeros(num_bins)
probabilities[5], probabilities[6] = 0.7, 0.3
logits = torch.log(probabilities.clamp(min=1e-12))
two_bin_value = coders.dfl_integral(logits)
random_logits = torch.randn(num_bins, generator=torch.Generator().manual_seed(0))
random_value = coders.dfl_integral(random_logits)
fig, axes = plt.subplots(1, 2, figsize=(10, 3))
for ax, bin_logits, value, name in [
    (axes[0], logits, two_bin_value, "two neighbouring bins"),
    (axes[1], random_logits, random_value, "random logits (an untrained head)"),
]:
    ax.bar(range(num_bins), torch.softmax(bin_logits, dim=0))
    ax.axvline(value.item(), color="tab:red", label=f"integral {value.item():.4f}")
    ax.set_xlabel("bin (distance in strides)")
    ax.set_ylabel("probability")
    ax.set_title(name)
    ax.legend(fontsize=8)
plt.show()

# %%
torch.testing.assert_close(two_bin_value, torch.tensor(5.3))
torch.testing.assert_close(
    random_value, (torch.softmax(random_logits, 0) * torch.arange(16.0)).sum()
)
# A head emits 4 (R + 1) = 64 channels per prior, side-major (left's 16 bins first):
head_output = torch.cat([logits, logits, random_logits, logits])[None]  # (1, 64)
print("l, t, r, b:", as_text(coders.dfl_distances(head_output)[0]))

# %% [markdown]
# ## Recap
#
# - Priors come per level and are concatenated level by level, row-major: flat index
#   `level offset + y * W + x`, or `level offset + (y * W + x) * K + k` with K anchors.
# - Anchor points (YOLOv8) and grid cells (NanoDet, side 5 s) sit on the cell centre;
#   mmdet anchor boxes (ATSS, Faster R-CNN) sit on the cell's top-left corner.
# - A 320-pixel input at strides 8, 16, 32 has 1600 + 400 + 100 = 2100 priors.
# - Coders: distances l, t, r, b (clamped below R for DFL), deltas dx, dy, dw, dh
#   (clamped on decoding), YOLO's sigmoid and exp; each decodes what it encodes.
# - The DFL integral turns a distribution over bins into a distance, with a gradient
#   to every bin.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** How many priors do YOLOv8 (strides 8, 16, 32, one point per cell)
# and Faster R-CNN's RPN (strides 4 to 64, K = 3 anchors per location) have for a
# 640 × 640 input? Compute them with `num_priors_per_level` and assign the totals A to
# `yolo_count` and `rpn_count` (integers); check them by hand.

# %% tags=["solution"]
yolo_count = rpn_count = None  # int each: A for a 640 x 640 input
### BEGIN SOLUTION
yolo_sizes = [(640 // s, 640 // s) for s in (8, 16, 32)]
rpn_640 = [(640 // s, 640 // s) for s in (4, 8, 16, 32, 64)]
yolo_count = sum(priors.num_priors_per_level(yolo_sizes))
rpn_count = sum(priors.num_priors_per_level(rpn_640, priors_per_location=3))
### END SOLUTION
print(f"YOLOv8: {yolo_count}, RPN: {rpn_count}")

# %% tags=["check"]
for name, count in (("yolo_count", yolo_count), ("rpn_count", rpn_count)):
    check_true(
        count is not None,
        f"`{name}` is still None: assign the number of priors A (an integer) to it.",
        hint="sum(priors.num_priors_per_level(sizes, priors_per_location=K)), with sizes "
        "the (H, W) of each level: 640 // s.",
    )  # fmt: skip
check_equal(
    "yolo_count", yolo_count, 80 * 80 + 40 * 40 + 20 * 20,
    hint="one prior per cell; a 640-pixel input gives 80 x 80 cells at stride 8, "
    "40 x 40 at 16 and 20 x 20 at 32.",
)  # fmt: skip
check_equal(
    "rpn_count", rpn_count, 3 * (160**2 + 80**2 + 40**2 + 20**2 + 10**2),
    hint="K = 3 anchors on each of 160 x 160, 80 x 80, ..., 10 x 10 cells: pass "
    "priors_per_location=3 to num_priors_per_level.",
)  # fmt: skip
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** Write the inverse of the flat index: `locate_prior(index,
# feature_sizes)` returns `(level, y, x)` (three integers) for one prior per cell,
# `feature_sizes` being the list of `(H, W)` per level. The check runs it on all 2100
# priors of the 320-pixel input.

# %% tags=["solution"]
locate_prior = None  # your function (index, feature_sizes) -> (level, y, x)
### BEGIN SOLUTION


def locate_prior(index, feature_sizes):
    counts = priors.num_priors_per_level(feature_sizes)
    for level, (offset, count) in enumerate(zip(priors.level_offsets(counts), counts, strict=True)):
        if index < offset + count:
            width = feature_sizes[level][1]
            return level, (index - offset) // width, (index - offset) % width
    raise ValueError(f"index {index} is past the last prior")


### END SOLUTION
if locate_prior is not None:
    print("prior 1643 is (level, y, x) =", locate_prior(1643, feature_sizes))


# %% tags=["check"]
def expected_locations(sizes):
    """(level, y, x) of every prior, placed at the index detutils gives it."""
    table = {}
    for level, (height, width) in enumerate(sizes):
        for y in range(height):
            for x in range(width):
                table[priors.flat_prior_index(level, y, x, sizes)] = (level, y, x)
    return [table[index] for index in range(len(table))]


locate_hint = (
    "find the level whose range [offset, offset + H W) holds the index; then "
    "index - offset = y W + x, so y = (index - offset) // W and x = (index - offset) % W."
)
check_true(
    callable(locate_prior),
    f"`locate_prior` should be a function (index, feature_sizes) -> (level, y, x); "
    f"got {type(locate_prior).__name__}.",
    hint=locate_hint,
)  # fmt: skip
for index, expected in enumerate(expected_locations(feature_sizes)):
    check_equal(
        f"locate_prior({index}, feature_sizes)", tuple(locate_prior(index, feature_sizes)),
        expected, hint=locate_hint,
    )  # fmt: skip
### BEGIN HIDDEN TESTS
wide_sizes = [(4, 6), (2, 3), (1, 2)]  # H != W: a swapped H and W shows here
for index, expected in enumerate(expected_locations(wide_sizes)):
    check_equal(
        f"locate_prior({index}, {wide_sizes})", tuple(locate_prior(index, wide_sizes)),
        expected, hint="feature sizes are (H, W): a row holds W priors",
    )  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** Faster R-CNN's RoI head encodes its targets with
# `stds = (0.1, 0.1, 0.2, 0.2)`. Encode the box `gt` of section 7.2 against the same
# `anchor` with these stds, `scaled` `(1, 4)`; divide by the plain `deltas` of section
# 7.2 to see how they compare, `ratio` `(1, 4)`; and decode `scaled` back into a box,
# `decoded` `(1, 4)`.

# %% tags=["solution"]
roi_stds = (0.1, 0.1, 0.2, 0.2)
scaled = ratio = decoded = None  # (1, 4) each
### BEGIN SOLUTION
scaled = coders.encode_delta_xywh(anchor, gt, stds=roi_stds)
ratio = scaled / deltas  # 10x for dx, dy; 5x for dw, dh
decoded = coders.decode_delta_xywh(anchor, scaled, stds=roi_stds)
### END SOLUTION
if scaled is not None:
    print("RoI-head deltas:", as_text(scaled[0]))

# %% tags=["check"]
# The deltas written out: centre shift in anchor sizes, log of the size ratio, / stds.
anchor_center, anchor_size = (anchor[:, :2] + anchor[:, 2:]) / 2, anchor[:, 2:] - anchor[:, :2]
gt_size = gt[:, 2:] - gt[:, :2]
by_formula = torch.cat(
    [(gt_center - anchor_center) / anchor_size, torch.log(gt_size / anchor_size)], dim=1
) / torch.tensor(roi_stds)  # (1, 4)
check_close(
    "scaled", scaled, by_formula,
    hint="encode_delta_xywh(anchor, gt, stds=roi_stds): each delta divided by its std.",
)  # fmt: skip
check_close(
    "ratio", ratio, [[10.0, 10.0, 5.0, 5.0]],
    hint="dividing by 0.1 makes dx, dy 10 times larger, by 0.2 makes dw, dh 5 times larger.",
)  # fmt: skip
check_close(
    "decoded", decoded, gt,
    hint="decode_delta_xywh(anchor, scaled, stds=roi_stds): decode with the stds you encoded with.",
)  # fmt: skip
check_passed("Exercise 3")

# %% [markdown]
# **Exercise 4.** Build `exercise_logits` `(R + 1,)` = `(16,)`, logits over 16 bins whose
# DFL integral is 7.25, using only two neighbouring bins (the others get probability 0,
# or a logit of `log(1e-12)`). Then add the same constant to every logit and assign the
# integral of the shifted logits to `shifted_integral` (a number): is it unchanged?

# %% tags=["solution"]
exercise_logits = None  # (16,)
shifted_integral = None  # a number
### BEGIN SOLUTION
target_bins = torch.zeros(16)
target_bins[7], target_bins[8] = 0.75, 0.25  # 7 * 0.75 + 8 * 0.25 = 7.25
exercise_logits = torch.log(target_bins.clamp(min=1e-12))
shifted_integral = coders.dfl_integral(exercise_logits + 3.0)
### END SOLUTION
print("integral of the shifted logits:", shifted_integral)

# %% tags=["check"]
check_true(
    isinstance(exercise_logits, torch.Tensor) and exercise_logits.shape == (16,),
    "`exercise_logits` should be a tensor of shape (16,), one logit per bin; got "
    + (f"shape {tuple(exercise_logits.shape)}." if isinstance(exercise_logits, torch.Tensor)
       else f"{type(exercise_logits).__name__}."),
    hint="start from probabilities: torch.zeros(16), two neighbouring bins set, then "
    "torch.log(probabilities.clamp(min=1e-12)).",
)  # fmt: skip
bin_weights = torch.softmax(exercise_logits.double(), dim=0)  # (16,)
used_bins = (bin_weights > 1e-6).nonzero().flatten().tolist()
check_true(
    len(used_bins) == 2 and used_bins[1] == used_bins[0] + 1,
    f"the softmax of `exercise_logits` puts weight on the bins {used_bins}; expected "
    "exactly two neighbouring bins.",
    hint="7.25 lies between bins 7 and 8; every other bin needs a very low logit.",
)  # fmt: skip
check_close(
    "dfl_integral(exercise_logits)", coders.dfl_integral(exercise_logits), 7.25,
    hint="with weights p on bin n and 1 - p on bin n + 1 the integral is n + 1 - p.",
)  # fmt: skip
check_close(
    "shifted_integral", shifted_integral, 7.25,
    hint="softmax(z + c) = softmax(z): the constant cancels, so the integral is unchanged.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_close(
    "the weights of bins 7 and 8", bin_weights[7:9], [0.75, 0.25], atol=1e-6,
    hint="7.25 = 7 * 0.75 + 8 * 0.25",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 4")

# %% [markdown]
# ## Further reading
#
# - T.-Y. Lin et al., *Feature Pyramid Networks for Object Detection*, CVPR 2017,
#   <https://arxiv.org/abs/1612.03144>
# - S. Ren et al., *Faster R-CNN*, NeurIPS 2015 (anchors, delta-xywh coding),
#   <https://arxiv.org/abs/1506.01497>
# - J. Redmon, A. Farhadi, *YOLOv3: An Incremental Improvement*, 2018,
#   <https://arxiv.org/abs/1804.02767>
# - S. Zhang et al., *Bridging the Gap Between Anchor-based and Anchor-free Detection
#   via ATSS*, CVPR 2020, <https://arxiv.org/abs/1912.02424>
# - X. Li et al., *Generalized Focal Loss* (the DFL integral), NeurIPS 2020,
#   <https://arxiv.org/abs/2006.04388>
# - mmdet `prior_generators/anchor_generator.py` and `coders/delta_xywh_bbox_coder.py`:
#   <https://github.com/open-mmlab/mmdetection/tree/main/mmdet/models/task_modules>
# - ultralytics `utils/tal.py` (`make_anchors`, `bbox2dist`, `dist2bbox`):
#   <https://github.com/ultralytics/ultralytics/blob/main/ultralytics/utils/tal.py>
# - NanoDet `gfl_head.py` (grid cells, `Integral`):
#   <https://github.com/RangiLyu/nanodet/blob/main/nanodet/model/head/gfl_head.py>
