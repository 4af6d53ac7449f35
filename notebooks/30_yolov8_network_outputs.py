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
# # 30 · YOLOv8: 8400 points, a distribution per side, a score per class
#
# YOLOv8 (Ultralytics, 2023) drops the anchor boxes of YOLOv3 and the objectness score:
# every cell of its three feature maps is an *anchor point*, and the head predicts at
# each point the four distances to the sides of a box, each as a distribution over 16
# bins (as NanoDet does, notebook 20), and one independent probability per class.
# This notebook builds YOLOv8n and YOLOv8s, accounts for their parameters, counts the
# 8400 anchor points of a 640-px input, and turns the raw output maps into boxes and
# scores by hand, checking every step against `detutils`.
#
# **Learning goals**
#
# 1. Check the parameter counts of YOLOv8n (3,157,200) and YOLOv8s (11,166,560) and
#    say where the parameters sit.
# 2. Count the anchor points of an input size, and locate a point from its flat index.
# 3. Split a raw output map of `4 × 16 + C` channels into four distributions and C
#    class logits.
# 4. Decode distributions into boxes: softmax, expected bin, times the stride, around
#    the anchor point.
# 5. Explain what an untrained YOLOv8 predicts, and why.
#
# **Prerequisites**: notebook 02 (anchor points, distance coding, the integral of a
# distribution), notebook 20 (NanoDet's distribution head and the tracer).
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
import matplotlib.pyplot as plt
import pandas as pd
import torch

from detutils import boxes as box_ops
from detutils.checks import check_close, check_equal, check_function, check_passed
from detutils.coders import decode_distance, dfl_distances, dfl_integral
from detutils.data.shapes import CLASS_NAMES, render_sample
from detutils.models.yolov8 import YOLOV8_PRESETS, build_yolov8n, build_yolov8s
from detutils.priors import anchor_points
from detutils.trace import trace
from detutils.viz import draw_boxes, draw_priors


def count_parameters(module):
    """Number of parameters of a module, its children included."""
    return sum(parameter.numel() for parameter in module.parameters())


# %% [markdown]
# ## 1. YOLOv8n and YOLOv8s
#
# `detutils.models.yolov8` builds YOLOv8 from one `@dataclass` config. The two sizes
# share the layout and differ only in width: `n` multiplies the channels of the base
# network (64 ... 1024) by 0.25, `s` by 0.5; both multiply the C2f block depths by 0.33.
# The field `reg_max` is ultralytics' name for the number of bins of each side's
# distance distribution, R + 1 = 16 in the course's letters (R = 15 is the last bin;
# section 4 says more).

# %%
fields = ["depth", "width", "max_channels", "img_size", "reg_max", "strides"]
pd.DataFrame(
    {
        name: [str(getattr(preset, field)) for field in fields]
        for name, preset in YOLOV8_PRESETS.items()
    },
    index=fields,
)

# %% [markdown]
# On the `meta` device a model has shapes but no memory and no values: enough to count
# parameters without allocating YOLOv8s's 45 MB.

# %%
with torch.device("meta"):
    sizes = {"yolov8n": build_yolov8n(num_classes=80), "yolov8s": build_yolov8s(num_classes=80)}
parts = pd.DataFrame(
    {
        name: {
            part: count_parameters(getattr(model, part))
            for part in ("backbone", "neck", "head", "dfl")
        }
        for name, model in sizes.items()
    }
)
parts.loc["total"] = parts.sum()
parts

# %%
assert parts.loc["total", "yolov8n"] == count_parameters(sizes["yolov8n"]) == 3_157_200
assert parts.loc["total", "yolov8s"] == count_parameters(sizes["yolov8s"]) == 11_166_560
assert parts.loc["dfl", "yolov8n"] == 16  # the frozen bin values 0 .. 15, as in ultralytics
print("official counts: yolov8n 3,157,200, yolov8s 11,166,560")

# %% [markdown]
# Doubling the width multiplies a convolution's weights by four (inputs and outputs
# both double): YOLOv8s has 3.5 times YOLOv8n's parameters. The last row is not a
# layer that learns: the DFL integral keeps its bin values 0, 1, ..., 15 as a frozen
# parameter, as ultralytics does, whose model summary therefore counts 16 more
# parameters than gradients.
#
# ## 2. 8400 anchor points at 640 px
#
# The three output levels have strides 8, 16 and 32: at 640 × 640 they are 80 × 80,
# 40 × 40 and 20 × 20 maps, and each cell is one anchor point, at the cell's centre
# ((x + 0.5) s, (y + 0.5) s). `anchor_points` lists them level by level, each level
# row-major, as the rest of the course does.

# %%
strides = [8, 16, 32]
feature_sizes_640 = [(640 // stride, 640 // stride) for stride in strides]
points_640, point_strides_640 = anchor_points(feature_sizes_640, strides)  # (A, 2), (A,)
per_level = [height * width for height, width in feature_sizes_640]
print(f"points {tuple(points_640.shape)}, per level {per_level}")
assert len(points_640) == sum(per_level) == 8400

# %% [markdown]
# The flat index of cell (y, x) of level l is the level's offset plus y W + x. The
# first point of each level, and a point in the middle of level 1:

# %%
offsets = [0, per_level[0], per_level[0] + per_level[1]]  # 0, 6400, 8000
index = offsets[1] + 10 * 40 + 25  # level 1 (stride 16), y = 10, x = 25
rows = offsets + [index]
pd.DataFrame(
    {
        "flat index": rows,
        "point (x, y) px": [tuple(points_640[i].tolist()) for i in rows],
        "stride": point_strides_640[rows].tolist(),
    }
)

# %%
torch.testing.assert_close(points_640[index], torch.tensor([(25 + 0.5) * 16, (10 + 0.5) * 16]))
print("cell (y=10, x=25) of stride 16 sits at (408, 168) px")

# %% [markdown]
# The network at 640 px on the `meta` device: three maps, each with 4 × 16 + 80 = 144
# channels, box channels first. Shapes, and nothing computed.

# %%
meta_maps = sizes["yolov8n"](torch.empty(1, 3, 640, 640, device="meta"))
print([tuple(x.shape) for x in meta_maps])
assert [tuple(x.shape) for x in meta_maps] == [(1, 144, 80, 80), (1, 144, 40, 40), (1, 144, 20, 20)]
assert sum(x.shape[-2] * x.shape[-1] for x in meta_maps) == 8400

# %% [markdown]
# ## 3. One image through the network
#
# For a real forward pass we stay at 320 px (2100 anchor points), which is a quarter of
# the work. The image is the shapes set's training image 1797 of notebooks 20 to 22:
# a large star, a cross and a 10-px star. The set has six classes, so C = 6 and each
# map has 4 × 16 + 6 = 70 channels. YOLOv8 takes RGB in [0, 1] and does no other
# normalisation.

# %%
image, _, objects = render_sample(seed=0, split="train", index=1797, size=320)
gt_boxes = box_ops.xywh_to_xyxy(torch.tensor([obj["bbox"] for obj in objects], dtype=torch.float32))
gt_labels = torch.tensor([obj["label"] for obj in objects])
images = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255).to(device)  # (1, 3, H, W)
draw_boxes(image, gt_boxes, gt_labels, class_names=CLASS_NAMES, title="train image 1797")
plt.show()

# %%
model = build_yolov8n(num_classes=len(CLASS_NAMES)).to(device).eval()
table, (decoded, maps) = trace(model, images, max_depth=1)
table.drop(columns=["call", "dtype"])

# %% [markdown]
# In eval mode the model returns a pair: the decoded predictions `(B, 4 + C, A)` and the
# raw maps. In training mode it returns the raw maps alone, which is what the loss
# reads (notebook 32).

# %%
assert [tuple(x.shape) for x in maps] == [(1, 70, 40, 40), (1, 70, 20, 20), (1, 70, 10, 10)]
assert tuple(decoded.shape) == (1, 4 + 6, 2100)
print("raw maps:", [tuple(x.shape) for x in maps], " decoded:", tuple(decoded.shape))

# %% [markdown]
# ## 4. Splitting the maps into distributions and scores
#
# A word on notation first. The course's letter R is the *last bin* of a distance
# distribution, as in GFL's paper: a distribution has R + 1 bins, 0, 1, ..., R. YOLOv8
# has R + 1 = 16 bins per side (R = 15), so a side's distance lies in [0, 15] strides.
# Ultralytics, and the config field of `detutils.models.yolov8`, call the number of
# bins R + 1 `reg_max`: YOLOv8's `reg_max = 16` is R + 1, not R. (NanoDet's `reg_max`,
# notebook 20, is R itself, 7.)
#
# Flattening: each map `(B, 4 (R + 1) + C, H, W)` becomes `(B, channels, H W)`, the
# levels are concatenated along the points, the channels moved last, and split into the
# first 64 (four distributions, side-major: left, top, right, bottom) and the C class
# logits.

# %%
num_bins = model.config.reg_max  # R + 1 = 16 (ultralytics' reg_max)
flat = torch.cat([x.flatten(2) for x in maps], dim=2)  # (B, 4 (R + 1) + C, A)
flat = flat.transpose(1, 2)  # (B, A, 4 (R + 1) + C)
dist_logits, cls_logits = flat.split([4 * num_bins, len(CLASS_NAMES)], dim=-1)
print(f"dist_logits {tuple(dist_logits.shape)}, cls_logits {tuple(cls_logits.shape)}")

# %%
model_dist, model_cls, points, point_strides = model.flatten(maps)
torch.testing.assert_close(dist_logits, model_dist)
torch.testing.assert_close(cls_logits, model_cls)
print("inline split == YOLOv8.flatten; points", tuple(points.shape))

# %% [markdown]
# From here on `YOLOv8.flatten` does this; it also returns the anchor points and their
# strides for the map sizes it was given.
#
# ## 5. Decoding boxes
#
# Each side's distance is the *expected bin* of its distribution: softmax over the 16
# logits, then the dot product with [0, 1, ..., 15]. That is in strides; times the
# point's stride it is in pixels; the box is the anchor point minus (left, top) and
# plus (right, bottom).

# %%
side_logits = dist_logits.unflatten(-1, (4, num_bins))  # (B, A, 4, R + 1)
probabilities = side_logits.softmax(dim=-1)  # (B, A, 4, R + 1)
bins = torch.arange(num_bins, dtype=torch.float32, device=device)  # (R + 1,)
distances = (probabilities * bins).sum(dim=-1)  # (B, A, 4) l, t, r, b in strides
distances_px = distances * point_strides[:, None]  # (B, A, 4) px
x, y = points[:, 0], points[:, 1]  # (A,) each
boxes_inline = torch.stack(
    [
        x - distances_px[..., 0],
        y - distances_px[..., 1],
        x + distances_px[..., 2],
        y + distances_px[..., 3],
    ],
    dim=-1,
)  # (B, A, 4) xyxy px
print(f"boxes {tuple(boxes_inline.shape)}")

# %%
torch.testing.assert_close(distances, dfl_distances(dist_logits))
torch.testing.assert_close(distances, dfl_integral(side_logits))
torch.testing.assert_close(boxes_inline, decode_distance(points, distances_px))
model_boxes, model_scores = model.decode(maps)
torch.testing.assert_close(boxes_inline, model_boxes)
torch.testing.assert_close(cls_logits.sigmoid(), model_scores)
torch.testing.assert_close(decoded, torch.cat([model_boxes, model_scores], -1).transpose(1, 2))
print("inline decode == dfl_distances, decode_distance, YOLOv8.decode and the eval output")

# %% [markdown]
# The class scores are independent sigmoids, one per class: there is no softmax over
# classes and no objectness, so an anchor may score two classes high, or none.
# The eval output keeps ultralytics' layout `(B, 4 + C, A)`, with one difference:
# the four box rows are x1, y1, x2, y2 here, cx, cy, w, h in ultralytics.
#
# ## 6. What an untrained YOLOv8 predicts
#
# Every distribution of the untrained network is flat, and every class score tiny:

# %%
spread = probabilities.amax(dim=-1) - probabilities.amin(dim=-1)  # (B, A, 4)
level_scores = [
    model_scores[0, start : start + count].mean().item()
    for start, count in zip([0, 1600, 2000], [1600, 400, 100], strict=True)
]
print(f"largest spread of a distribution's probabilities: {spread.max().item():.4f}")
print(f"distances: min {distances.min().item():.4f}, max {distances.max().item():.4f} strides")
print("mean class probability per level:", [f"{s:.4e}" for s in level_scores])

# %% [markdown]
# Why: the biases of the last layers are set at construction (ultralytics'
# `bias_init`). Every box bias is 1.0, the same for all 16 bins, and in eval mode the
# random convolutions of a fresh network shrink their input layer after layer (batch
# norm, not yet trained, does not rescale), so every logit is about its bias: a flat
# distribution, whose expected bin is (0 + 15) / 2 = 7.5. Every anchor point predicts a
# square of 15 strides centred on itself: 120 px at stride 8, 240 at 16, 480 at 32.
# The class bias of stride s is log(5 / C / (640 / s)²), a prior of about five objects
# per 640-px image: the probabilities above are sigmoid(log p) = p / (1 + p), those
# priors to a thousandth.

# %%
torch.testing.assert_close(distances, torch.full_like(distances, 7.5), atol=1e-4, rtol=0)
for stride, score in zip(strides, level_scores, strict=True):
    prior = 5 / len(CLASS_NAMES) / (640 / stride) ** 2
    expected = prior / (1 + prior)  # sigmoid(log p) = p / (1 + p)
    assert abs(score - expected) < 1e-3 * expected, (stride, score, expected)
print("flat distributions: 7.5 strides per side; scores = the bias priors")

# %% [markdown]
# The three default squares of the points nearest the image centre, one per level
# (the image is the 320-px square in the middle):

# %%
centre_points = [20 * 40 + 20, 1600 + 10 * 20 + 10, 2000 + 5 * 10 + 5]  # (y, x) = (20, 20), ...
ax = draw_boxes(image, model_boxes[0, centre_points].cpu())
draw_priors(image, points[centre_points].cpu(), ax=ax, every=1)
ax.set_xlim(-80, 430)  # the stride-32 square reaches beyond the image
ax.set_ylim(430, -80)
ax.set_title("untrained: a square of 15 strides per level")
plt.show()
print(model_boxes[0, centre_points].round().tolist())

# %% [markdown]
# Training moves these flat distributions towards the two bins around each target
# distance (DFL, notebook 32) and the scores of the positives towards their task-aligned
# targets (notebook 31). Nothing of the untrained predictions survives past the first
# few hundred steps, but they are what the assigner sees first.
#
# ## Recap
#
# - YOLOv8n has 3,157,200 parameters and YOLOv8s 11,166,560 at 80 classes; 16 of
#   them are the frozen bin values of the DFL integral.
# - At 640 px the three levels (strides 8, 16, 32) have 6400 + 1600 + 400 = 8400 anchor
#   points, one per cell centre; flat index = level offset + y W + x.
# - Each level's map has 4 (R + 1) + C = 4 × 16 + C channels: four distributions of
#   R + 1 = 16 bins (R = 15; ultralytics' `reg_max = 16` is R + 1), side-major l, t,
#   r, b, then C class logits.
# - Decoding: softmax, expected bin, times the stride, around the point; the class
#   probabilities are independent sigmoids.
# - Untrained, every point predicts a square of 15 strides and the prior class score
#   set by `bias_init`.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** Write `count_points(height, width)`, the number of anchor points
# YOLOv8 has at a `height × width` input (both multiples of 32), and use it for
# `points_1280` (1280 × 1280) and `points_384x640` (384 × 640, H × W), two integers.
# Predict them by hand first; you can confirm with `anchor_points` or with a `meta`
# forward pass of YOLOv8n (`sizes["yolov8n"]`).

# %% tags=["solution"]
count_points = None  # your function (height, width) -> int
points_1280 = points_384x640 = None  # int each
### BEGIN SOLUTION


def count_points(height, width):
    return sum((height // stride) * (width // stride) for stride in strides)


points_1280 = count_points(1280, 1280)
points_384x640 = count_points(384, 640)
for height, width in [(1280, 1280), (384, 640)]:  # the two confirmations
    points_hw, _ = anchor_points([(height // s, width // s) for s in strides], strides)
    shapes = sizes["yolov8n"](torch.empty(1, 3, height, width, device="meta"))
    from_maps = sum(x.shape[-2] * x.shape[-1] for x in shapes)
    print(f"{height} x {width}: anchor_points {len(points_hw)}, maps {from_maps}")
### END SOLUTION
print(f"1280 x 1280: {points_1280} anchor points; 384 x 640: {points_384x640}")

# %% tags=["check"]
# 160² + 80² + 40² = 33,600; 48 × 80 + 24 × 40 + 12 × 20 = 5,040.
check_equal(
    "points_1280", points_1280, 33_600,
    hint="one point per cell of the maps at strides 8, 16, 32: (1280 / s)² summed over s.",
)  # fmt: skip
check_equal(
    "points_384x640", points_384x640, 5_040,
    hint="each level has (H / s) × (W / s) cells: 48 × 80 at stride 8, then 24 × 40, 12 × 20.",
)  # fmt: skip
check_function(
    "count_points", count_points, [(640, 640), (320, 480)],
    lambda height, width: len(
        anchor_points([(height // s, width // s) for s in strides], strides)[0]
    ),
    hint="sum over the strides 8, 16, 32 of (height // s) * (width // s); 640 x 640 gives 8400.",
    rtol=0, atol=0.5,
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "count_points", count_points, [(1280, 736), (96, 160)],
    lambda height, width: sum(
        x.shape[-2] * x.shape[-1]
        for x in sizes["yolov8n"](torch.empty(1, 3, height, width, device="meta"))
    ),
    hint="the count must hold for any size that is a multiple of 32, square or not.",
    rtol=0, atol=0.5,
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** The largest box a point can predict: put all of every distribution's
# mass on the last bin, R = 15, and decode the 2100 points of section 3. Assign to
# `widest` `(3,)` the widest box (px) at strides 8, 16 and 32, and to
# `stride8_learns_300` (True or False) whether a stride-8 point can learn a 300-px wide
# object, even one centred on it.

# %% tags=["solution"]
widest = None  # (3,) px, strides 8, 16, 32
stride8_learns_300 = None  # True or False
### BEGIN SOLUTION
peaked = torch.full((1, 2100, 4 * num_bins), -1e4, device=device)  # (B, A, 4 (R + 1))
peaked.view(1, 2100, 4, num_bins)[..., -1] = 0.0  # every side on bin R = 15
wide_boxes = decode_distance(points, dfl_distances(peaked) * point_strides[:, None])
widths = wide_boxes[0, :, 2] - wide_boxes[0, :, 0]  # (A,)
widest = torch.stack([widths[point_strides == stride].max() for stride in strides])  # (3,)
# A side's distance is at most R = 15 strides, so a stride-8 point covers at most
# 2 x 15 x 8 = 240 px; a 300-px object must be learnt by the coarser levels.
stride8_learns_300 = False
### END SOLUTION
print(f"widest boxes at strides 8, 16, 32: {widest} px")

# %% tags=["check"]
check_close(
    "widest", widest, [240.0, 480.0, 960.0],
    hint="with all the mass on bin R = 15 each side is 15 strides: the box is 2 × 15 × s "
    "wide. Set one logit per side high (0) and the others very low (-1e4), then decode "
    "with dfl_distances, times the stride, and decode_distance.",
)  # fmt: skip
check_equal(
    "stride8_learns_300", stride8_learns_300, False,
    hint="compare 300 px with the widest box of stride 8: the distances cannot exceed R "
    "strides on either side of the point.",
)  # fmt: skip
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** Write `locate(flat_index)` that returns the level (0, 1, 2), y and x
# of an anchor point of the 320-px input (maps 40 × 40, 20 × 20, 10 × 10) from its flat
# index, as a tuple `(level, y, x)`. Then decode the box of the point with flat index
# 1234 by hand from the raw `maps` (its 4 (R + 1) = 64 box channels, a softmax per
# side, the expected bin, the stride, the point): `box_1234` `(4,)` xyxy px.

# %% tags=["solution"]
locate = None  # your function (flat_index) -> (level, y, x)
box_1234 = None  # (4,) xyxy px
### BEGIN SOLUTION


def locate(flat_index):
    for level, (offset, size) in enumerate([(0, 40), (1600, 20), (2000, 10)]):
        if flat_index < offset + size * size:
            return (level, *divmod(flat_index - offset, size))
    raise IndexError(flat_index)


level_1234, y_1234, x_1234 = locate(1234)  # 1234 < 1600: level 0, stride 8
stride_1234 = strides[level_1234]
raw = maps[level_1234][0, : 4 * num_bins, y_1234, x_1234]  # (4 (R + 1),)
sides_1234 = raw.view(4, num_bins).softmax(dim=-1) @ bins  # (4,) strides
point_1234 = torch.tensor([x_1234 + 0.5, y_1234 + 0.5], device=device) * stride_1234
sides_px = sides_1234 * stride_1234  # (4,) px
box_1234 = torch.cat([point_1234 - sides_px[:2], point_1234 + sides_px[2:]])  # (4,) xyxy px
### END SOLUTION
if box_1234 is not None:
    print(f"box of point 1234: {[round(v) for v in box_1234.tolist()]} px")


# %% tags=["check"]
def locate_from_points(flat_index):  # the cell behind points[flat_index]
    stride = point_strides[flat_index].item()
    x, y = (points[flat_index] / stride - 0.5).tolist()
    return (strides.index(stride), y, x)


check_function(
    "locate", locate, [(1234,), (0,), (1600,), (2099,)], locate_from_points,
    hint="subtract the level's offset (0, 1600, 2000), then divmod by the level's width "
    "(40, 20, 10): flat index = offset + y W + x. Index 1600 is (1, 0, 0).",
)  # fmt: skip
check_close(
    "box_1234", box_1234, model_boxes[0, 1234],
    hint="read maps[0][0, :64, 30, 34], view it as (4, 16), softmax each side, take the "
    "expected bin (@ bins), times 8; the point is ((34 + 0.5) 8, (30 + 0.5) 8); subtract "
    "(l, t), add (r, b).", rtol=1e-4, atol=1e-4,
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "locate", locate, [(1599,), (1999,), (2000,), (1850,)], locate_from_points,
    hint="the last cell of a level and the first of the next must both be right.",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 3")

# %% [markdown]
# **Exercise 4.** Does the flattening order matter? For each level, build a map
# `(1, 2, H, W)` whose two channels hold the pixel x and y of its own cell centre, and
# flatten the three maps as the model does (`x.flatten(2)`, levels concatenated, points
# last) into `row_major` `(A, 2)`, and column-major (`x.transpose(-1, -2).flatten(2)`)
# into `column_major` `(A, 2)`. Then `same_point` `(A,)` (bool): which flat indices of
# `column_major` still hold the anchor point `points` has at that index?

# %% tags=["solution"]
row_major = column_major = None  # (A, 2) px each
same_point = None  # (A,) bool
### BEGIN SOLUTION
coordinate_maps = []
for stride in strides:
    size = 320 // stride
    grid_y, grid_x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    coordinate_maps.append(torch.stack([grid_x + 0.5, grid_y + 0.5])[None] * stride)  # (1, 2, H, W)
row_major = torch.cat([x.flatten(2) for x in coordinate_maps], dim=2)[0].T  # (A, 2)
column_major = torch.cat([x.transpose(-1, -2).flatten(2) for x in coordinate_maps], dim=2)[0].T
same_point = (column_major == points.cpu()).all(dim=-1)  # (A,)
# Only the diagonal cells (y == x) of each square level keep their index.
### END SOLUTION
if same_point is not None:
    print(f"{int(same_point.sum())} of 2100 points agree")

# %% tags=["check"]
check_close(
    "row_major", row_major, points,
    hint="flatten(2) of a (1, 2, H, W) map is (1, 2, H W), row by row; concatenate the "
    "levels on the last dimension, take [0] and transpose to (A, 2).",
)  # fmt: skip
# Column-major, level by level: position x H + y holds the cell (y, x).
permutation = torch.cat([
    offset + torch.arange(size * size).view(size, size).T.flatten()
    for offset, size in [(0, 40), (1600, 20), (2000, 10)]
])  # fmt: skip
check_close(
    "column_major", column_major, points[permutation],
    hint="transpose each map to (1, 2, W, H) before flatten(2): the index then runs "
    "down the columns.",
)  # fmt: skip
diagonal = torch.zeros(2100, dtype=torch.bool)
for offset, size in [(0, 40), (1600, 20), (2000, 10)]:
    diagonal[offset + torch.arange(size) * (size + 1)] = True  # cells with y == x
check_equal(
    "same_point", same_point, diagonal,
    hint="compare column_major with points row by row: (column_major == points).all(-1), "
    "a (2100,) bool tensor.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_close(
    "same_point.sum()", same_point.sum(), 40 + 20 + 10,
    hint="one diagonal per level: 40 + 20 + 10 cells.",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 4")

# %% [markdown]
# ## Further reading
#
# - Ultralytics YOLOv8: `ultralytics/nn/modules/head.py` (`Detect`, `bias_init`),
#   `nn/modules/block.py` (`DFL`), `utils/tal.py` (`make_anchors`, `dist2bbox`),
#   `cfg/models/v8/yolov8.yaml`, <https://github.com/ultralytics/ultralytics>
# - X. Li et al., *Generalized Focal Loss*, NeurIPS 2020 (the distribution over bins),
#   <https://arxiv.org/abs/2006.04388>
# - Z. Tian et al., *FCOS: Fully Convolutional One-Stage Object Detection*, ICCV 2019
#   (anchor points and distances to the sides), <https://arxiv.org/abs/1904.01355>
# - C. Feng et al., *TOOD: Task-aligned One-stage Object Detection*, ICCV 2021 (the
#   assigner of notebook 31), <https://arxiv.org/abs/2108.07755>
