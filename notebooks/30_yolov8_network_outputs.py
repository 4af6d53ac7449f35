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
# A word on notation first. Ultralytics calls the number of bins per side `reg_max`,
# and YOLOv8 uses `reg_max = 16`: bins 0, 1, ..., 15. The course's dimension letter R
# is the *last bin*, bins minus one, as in GFL's paper: a distribution has R + 1 = 16
# bins, R = 15, and a side's distance lies in [0, 15] strides.
#
# Flattening: each map `(B, 4 (R + 1) + C, H, W)` becomes `(B, channels, H W)`, the
# levels are concatenated along the points, the channels moved last, and split into the
# first 64 (four distributions, side-major: left, top, right, bottom) and the C class
# logits.

# %%
num_bins = model.config.reg_max  # R + 1 = 16
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
# - Each level's map has 4 × 16 + C channels: four distributions of 16 bins
#   (`reg_max = 16`, R = 15 in the course's letters), side-major l, t, r, b, then C
#   class logits.
# - Decoding: softmax, expected bin, times the stride, around the point; the class
#   probabilities are independent sigmoids.
# - Untrained, every point predicts a square of 15 strides and the prior class score
#   set by `bias_init`.
#
# ## Exercises
#
# **Exercise 1.** How many anchor points does YOLOv8 have at 1280 × 1280, and at a
# 384 × 640 (H × W) input? Predict, then check with `anchor_points` and with a `meta`
# forward pass of YOLOv8n.

# %% tags=["solution"]
for height, width in [(1280, 1280), (384, 640)]:
    expected = sum((height // s) * (width // s) for s in strides)
    points_hw, _ = anchor_points([(height // s, width // s) for s in strides], strides)
    shapes = sizes["yolov8n"](torch.empty(1, 3, height, width, device="meta"))
    from_maps = sum(x.shape[-2] * x.shape[-1] for x in shapes)
    assert len(points_hw) == from_maps == expected
    print(f"{height} x {width}: {expected} anchor points")
assert expected == 48 * 80 + 24 * 40 + 12 * 20 == 5040

# %% [markdown]
# **Exercise 2.** The largest box a point can predict: put all of every distribution's
# mass on the last bin and decode. What is the widest box at each stride? Why can a
# stride-8 point never learn a 300-px object, even one centred on it?

# %% tags=["solution"]
peaked = torch.full((1, 2100, 4 * num_bins), -1e4, device=device)  # (B, A, 4 (R + 1))
peaked.view(1, 2100, 4, num_bins)[..., -1] = 0.0  # every side on bin 15
wide_boxes = decode_distance(points, dfl_distances(peaked) * point_strides[:, None])
widths = wide_boxes[0, :, 2] - wide_boxes[0, :, 0]  # (A,)
for stride in strides:
    print(f"stride {stride}: widest box {widths[point_strides == stride].max().item():.4f} px")
torch.testing.assert_close(widths, 30.0 * point_strides)
# A side's distance is at most R = 15 strides, so a stride-8 point covers at most
# 2 x 15 x 8 = 240 px; a 300-px object must be learnt by the coarser levels.

# %% [markdown]
# **Exercise 3.** Decode the box of the point with flat index 1234 by hand from the raw
# maps: find its level and its (y, x) from the index, read its 64 box channels directly
# from `maps`, and compare with `model_boxes[0, 1234]`.

# %% tags=["solution"]
index = 1234  # < 1600: level 0, stride 8, 40 x 40
level, stride, width = 0, 8, 40
cell_y, cell_x = divmod(index, width)
raw = maps[level][0, : 4 * num_bins, cell_y, cell_x]  # (64,)
sides = raw.view(4, num_bins).softmax(dim=-1) @ bins  # (4,) strides
point = torch.tensor([cell_x + 0.5, cell_y + 0.5], device=device) * stride
box = torch.cat([point - sides[:2] * stride, point + sides[2:] * stride])
torch.testing.assert_close(box, model_boxes[0, index])
print(f"index {index}: level {level}, (y, x) = ({cell_y}, {cell_x}), box {box.round().tolist()}")

# %% [markdown]
# **Exercise 4.** Does the flattening order matter? Build, for each level, a map whose
# two channels hold the pixel x and y of its own cell centre, and flatten it as the
# model does and column-major (`x.transpose(-1, -2).flatten(2)`). Which flat indices
# still land on their anchor point when the order is wrong?

# %% tags=["solution"]
coordinate_maps = []
for stride in strides:
    size = 320 // stride
    cell_y, cell_x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    coordinate_maps.append(torch.stack([cell_x + 0.5, cell_y + 0.5])[None] * stride)  # (1, 2, H, W)
right = torch.cat([x.flatten(2) for x in coordinate_maps], dim=2)[0].T  # (A, 2)
wrong = torch.cat([x.transpose(-1, -2).flatten(2) for x in coordinate_maps], dim=2)[0].T
assert torch.equal(right, points.cpu())
same_point = (wrong == points.cpu()).all(dim=-1)  # (A,)
# Only the diagonal cells (y == x) of each square level keep their index.
diagonal = [
    offset + i * (size + 1)
    for offset, size in [(0, 40), (1600, 20), (2000, 10)]
    for i in range(size)
]
assert same_point.nonzero().flatten().tolist() == diagonal
print(f"{int(same_point.sum())} of 2100 points agree: the diagonal cells")

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
