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
# # 20 · NanoDet: what the network emits
#
# NanoDet (RangiLyu, 2020) is a detector made for phones: under a million parameters,
# no anchors, one prediction per feature-map cell. It puts three published pieces
# together: a ShuffleNetV2 backbone (Ma et al., 2018), a path aggregation network (PAN,
# Liu et al., 2018) as the neck, and the head of Generalized Focal Loss (GFL, Li et al.,
# 2020), which predicts each side of a box not as one number but as a distribution
# over eight bins. This notebook follows a 320-pixel image through the three pieces of
# NanoDet-m with the tracer, accounts for its 950,036 parameters, and reads what the
# head emits at every cell: 80 class logits and 32 distribution logits.
#
# **Learning goals**
#
# 1. Give the shape of every stage at 320 px: backbone maps of 116, 232 and 464
#    channels, PAN maps of 96, and per level a class map `(B, 80, H, W)` and a
#    distribution map `(B, 32, H, W)`.
# 2. Account for NanoDet-m's 950,036 parameters by part, and count the neck's and
#    the head's by hand.
# 3. Count the priors (2100 at 320 px) and flatten the per-level maps into `(B, A, C)`
#    and `(B, A, 32)` in the course's prior order.
# 4. Read the 32 channels of a distribution map as 4 sides × 8 bins, and decode them
#    into a box in pixels.
# 5. Say what an untrained NanoDet predicts, and why.
#
# **Prerequisites**: notebook 02 (grid cells, the distance coder, the DFL integral),
# notebook 10 (reading a network with the tracer); depthwise convolutions.
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
import torch.nn.functional as F
from torchvision.models.shufflenetv2 import channel_shuffle

from detutils import boxes as box_ops
from detutils.checks import check_close, check_equal, check_passed, check_true
from detutils.coders import dfl_distances, dfl_integral
from detutils.data.shapes import CLASS_NAMES, render_sample
from detutils.models.nanodet import NanoDet, NanoDetConfig, build_nanodet_m
from detutils.priors import anchor_points
from detutils.trace import trace
from detutils.viz import draw_boxes


def count_parameters(module):
    """Number of parameters of a module, its children included."""
    return sum(parameter.numel() for parameter in module.parameters())


# %% [markdown]
# ## 1. NanoDet-m at a glance
#
# `detutils.models.nanodet` builds NanoDet from one `@dataclass` config; its defaults
# are NanoDet-m, the smallest published model (COCO mAP 20.6 at 320 px). The fields
# that shape the network:

# %%
config = NanoDetConfig()
fields = [
    "num_classes",
    "img_size",
    "backbone_channels",
    "neck_channels",
    "head_channels",
    "stacked_convs",
    "share_cls_reg",
    "reg_max",
    "strides",
]
pd.DataFrame({"value": [str(getattr(config, name)) for name in fields]}, index=fields)

# %%
model = build_nanodet_m(num_classes=80).to(device).eval()
parts = {name: count_parameters(getattr(model, name)) for name in ("backbone", "neck", "head")}
for name, count in parts.items():
    print(f"{name:9s} {count:>9,}")
print(f"{'total':9s} {count_parameters(model):>9,}")
assert count_parameters(model) == 950_036 == sum(parts.values())

# %% [markdown]
# The backbone holds 82 % of the weights; the neck and the head together fewer than
# 175,000. Compare YOLOv3 (notebook 10): 61.9 million, 65 times more.
#
# ## 2. One image through the network
#
# The network takes RGB images in [0, 1], `(B, 3, H, W)` with H and W multiples of 32
# (the largest stride), and normalises them itself with the ImageNet mean and
# standard deviation. The image: number 1797 of the shapes set's training split, with
# three objects of very different sizes, which notebook 21 assigns and notebook 22
# trains on.

# %%
image, _, objects = render_sample(seed=0, split="train", index=1797, size=320)
gt_boxes = box_ops.xywh_to_xyxy(torch.tensor([obj["bbox"] for obj in objects], dtype=torch.float32))
gt_labels = torch.tensor([obj["label"] for obj in objects])
images = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255).to(device)  # (1, 3, H, W)
draw_boxes(image, gt_boxes, gt_labels, class_names=CLASS_NAMES, title="train image 1797")
plt.show()

# %% [markdown]
# The tracer (notebook 10) at depth 1: what goes into and comes out of the backbone,
# the neck and the head. The backbone returns three maps; the neck three; the head
# a pair of lists, class maps (`[0][l]`) and distribution maps (`[1][l]`), one per
# level.

# %%
table, outputs = trace(model, images, max_depth=1)
table.drop(columns=["call", "dtype"])

# %%
class_maps, dist_maps = outputs
assert [tuple(x.shape) for x in class_maps] == [(1, 80, 40, 40), (1, 80, 20, 20), (1, 80, 10, 10)]
assert [tuple(x.shape) for x in dist_maps] == [(1, 32, 40, 40), (1, 32, 20, 20), (1, 32, 10, 10)]
print("class maps:", [tuple(x.shape) for x in class_maps])
print("distribution maps:", [tuple(x.shape) for x in dist_maps])

# %% [markdown]
# ## 3. Backbone: ShuffleNetV2
#
# A stride-2 3 × 3 conv and a 3 × 3 max-pool bring the image to stride 4 with 24
# channels; then three stages of 4, 8 and 4 blocks. The first block of each stage
# halves the map and widens it: 116, 232, 464 channels at strides 8, 16 and 32.
# torchvision's last 1 × 1 conv and classifier are not built; the three stage
# outputs go to the neck.

# %%
normalised = (images - model.pixel_mean) / model.pixel_std
backbone_table, features = trace(model.backbone, normalised, max_depth=1)
backbone_table.drop(columns=["call", "dtype"])

# %%
assert [tuple(x.shape) for x in features] == [(1, 116, 40, 40), (1, 232, 20, 20), (1, 464, 10, 10)]
assert model.backbone.out_channels == (116, 232, 464)

# %% [markdown]
# A ShuffleNetV2 block of stride 1 is cheap by design: it splits the channels in two
# halves, leaves the first half alone, runs the second through a 1 × 1 conv, a 3 × 3
# *depthwise* conv (one filter per channel) and another 1 × 1 conv, and concatenates
# the halves again. Left like that, the first half would never meet a conv; so the
# block ends with a *channel shuffle*: view the n channels as a 2 × n/2 grid,
# transpose it, and read it row by row, which interleaves the two halves. (A stride-2
# block sends the whole input through two branches, one per half of the output.)
# The shuffle, on eight numbered channels:


# %%
def shuffle_inline(x, groups):
    """(B, n, H, W) -> (B, n, H, W), the n channels interleaved across the groups."""
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width)  # (B, groups, n / groups, H, W)
    return x.transpose(1, 2).reshape(batch, channels, height, width)


numbered = torch.arange(8.0).view(1, 8, 1, 1)
print("before:", numbered.flatten().int().tolist())
print("after: ", shuffle_inline(numbered, 2).flatten().int().tolist())
torch.testing.assert_close(shuffle_inline(numbered, 2), channel_shuffle(numbered, 2))

# %% [markdown]
# The whole stride-1 block, written out, against the second block of stage 2 (its
# `branch2` is the 1 × 1, depthwise 3 × 3, 1 × 1 path; its `branch1` is empty):

# %%
block = model.backbone.stage2[1]
x = model.backbone.stage2[0](model.backbone.maxpool(model.backbone.conv1(normalised)))
kept, processed = x.chunk(2, dim=1)  # (B, 58, 40, 40) each
block_inline = shuffle_inline(torch.cat([kept, block.branch2(processed)], dim=1), 2)
torch.testing.assert_close(block_inline, block(x))
print(f"block input {tuple(x.shape)}, halves {tuple(kept.shape)}, output {tuple(block(x).shape)}")

# %% [markdown]
# ## 4. Neck: PAN, from 116 / 232 / 464 channels to 96
#
# The head wants every level with the same number of channels, and every level
# should know what the others see. NanoDet-m's PAN does both with very little:
#
# 1. a 1 × 1 conv per level (with bias) brings 116, 232 and 464 channels to 96;
# 2. top-down: from the coarsest level, each map is upsampled × 2 (bilinear) and added
#    to the next finer one, so the fine maps learn what the coarse ones see;
# 3. bottom-up: from the finest level, each (already mixed) map is downsampled × 0.5
#    and added to the next coarser one.
#
# No conv follows the sums, so the three 1 × 1 convs are the neck's only weights.

# %%
neck = model.neck
maps = [conv(feature) for conv, feature in zip(neck.lateral_convs, features, strict=True)]
for level in (2, 1):  # top-down: 10 -> 20 -> 40
    maps[level - 1] = maps[level - 1] + F.interpolate(maps[level], scale_factor=2, mode="bilinear")
for level in (0, 1):  # bottom-up: 40 -> 20 -> 10
    maps[level + 1] = maps[level + 1] + F.interpolate(
        maps[level], scale_factor=0.5, mode="bilinear"
    )
neck_outputs = neck(features)
for inline, reference in zip(maps, neck_outputs, strict=True):
    torch.testing.assert_close(inline, reference)
print("PAN:", [tuple(x.shape) for x in neck_outputs])

# %%
neck_by_hand = (116 + 232 + 464) * 96 + 3 * 96  # 1x1 weights + biases
assert count_parameters(neck) == neck_by_hand == 78_240
print(f"neck: {neck_by_hand:,} parameters")

# %% [markdown]
# ## 5. Head: a class map and a distribution map per level
#
# Each level has its own small tower (nothing is shared between levels): two
# depthwise-separable convs, each a 3 × 3 depthwise conv and a 1 × 1 conv with batch
# norm and LeakyReLU, then one 1 × 1 conv with `C + 4 (R + 1) = 80 + 32 = 112`
# outputs. The first 80 channels are the class logits; the other 32 are the box,
# as four distributions of R + 1 = 8 bins, numbered 0 to R: R = 7 is the last bin,
# the config field `reg_max` of section 1. (The GFL paper's head has separate
# towers for classes and boxes; NanoDet-m shares one, `share_cls_reg`.) The traced
# head:

# %%
head_table, _ = trace(model.head, neck_outputs, max_depth=2)
head_table[head_table["type"] != "NanoDetHead"].drop(columns=["call", "dtype"])

# %% [markdown]
# Level 0 by hand: the tower, the output conv, and the split of its 112 channels.

# %%
head = model.head
level_output = head.gfl_cls[0](head.cls_convs[0](neck_outputs[0]))  # (B, 112, 40, 40)
class_map, dist_map = level_output.split([80, 32], dim=1)  # (B, 80, 40, 40), (B, 32, 40, 40)
torch.testing.assert_close(class_map, class_maps[0])
torch.testing.assert_close(dist_map, dist_maps[0])
print(tuple(level_output.shape), "->", tuple(class_map.shape), "+", tuple(dist_map.shape))

# %% [markdown]
# ## 6. 2100 priors, flattened
#
# Each cell of each level is one prior: it predicts one box (from its centre) and
# one score per class. At 320 px that is 40² + 20² + 10² = 2100 priors. The loss and
# the post-processing want all of them in one tensor: `NanoDet.flatten` turns each
# map into rows, level by level, row-major inside a level, the prior order of the
# whole course (flat index = level offset + y · W + x).

# %%
cls_logits, dist_logits = model.flatten(outputs)  # (B, A, C), (B, A, 4 (R + 1))
feature_sizes = [tuple(x.shape[-2:]) for x in class_maps]
num_per_level = [height * width for height, width in feature_sizes]
print("priors per level:", num_per_level, "total:", sum(num_per_level))
print("flattened:", tuple(cls_logits.shape), tuple(dist_logits.shape))
assert sum(num_per_level) == 2100
assert tuple(cls_logits.shape) == (1, 2100, 80) and tuple(dist_logits.shape) == (1, 2100, 32)

# %%
level, y, x = 1, 17, 17  # the cell of the stride-16 level whose centre is (280, 280)
flat = num_per_level[0] + y * feature_sizes[1][1] + x
torch.testing.assert_close(cls_logits[0, flat], class_maps[level][0, :, y, x])
torch.testing.assert_close(dist_logits[0, flat], dist_maps[level][0, :, y, x])
print(f"level {level}, cell (y={y}, x={x}) is prior {flat}")

# %% [markdown]
# | level | stride | grid | priors | grid cell for ATSS (5 s) | longest side distance (7 s) |
# | --- | --- | --- | --- | --- | --- |
# | 0 | 8 | 40 × 40 | 1600 | 40 px | 56 px |
# | 1 | 16 | 20 × 20 | 400 | 80 px | 112 px |
# | 2 | 32 | 10 × 10 | 100 | 160 px | 224 px |
#
# The grid cells are the boxes the assigner measures IoUs with (notebook 21); the
# head itself only knows the cell centre, the point its four distances start from.
#
# ## 7. What the 32 channels mean
#
# The 32 distribution channels of a prior are four blocks of eight, side-major:
#
# | channels | side | bins |
# | --- | --- | --- |
# | 0-7 | left (centre x − x1) | 0, 1, ..., 7 |
# | 8-15 | top (centre y − y1) | 0, 1, ..., 7 |
# | 16-23 | right (x2 − centre x) | 0, 1, ..., 7 |
# | 24-31 | bottom (y2 − centre y) | 0, 1, ..., 7 |
#
# Bin `k` stands for a distance of `k` strides. A softmax over each block of eight
# gives a distribution; its expected value (notebook 02's DFL integral) is the
# distance in strides, a real number between 0 and R = 7; times the stride it is in
# pixels. So at stride 8 a side reaches at most 56 px, at stride 32 at most 224 px:
# large objects must be learnt by the coarse levels.
#
# What would a trained head emit for the cross at the bottom right? Its box is
# `(253, 231, 320, 320)`; the prior of section 6 sits at (280, 280) on the stride-16
# level. Its four distances in strides, and a distribution per side that puts all its
# mass on the two bins around each distance (the target shape of notebook 22's
# distribution focal loss):

# %%
cross = gt_boxes[1]
centre = torch.tensor([280.0, 280.0])
stride = 16
distances = torch.cat([centre - cross[:2], cross[2:] - centre]) / stride  # l, t, r, b in strides
weights = torch.zeros(4, 8)  # (4 sides, R + 1 bins)
left_bin = distances.floor().long()
weights[torch.arange(4), left_bin] = left_bin + 1 - distances
weights[torch.arange(4), left_bin + 1] = distances - left_bin
hand_made = torch.log(weights.clamp(min=1e-12)).flatten()  # (32,) logits, side-major
pd.DataFrame(
    weights.numpy(),
    index=[f"{side} = {d:.4f}" for side, d in zip("ltrb", distances.tolist(), strict=True)],
    columns=[f"bin {k}" for k in range(8)],
)

# %% [markdown]
# Decoding by hand: softmax per side, expected bin, times the stride, then the box
# around the centre. Put into the network's output at that prior, `NanoDet.decode`
# (which decodes all 2100 priors at once) must give the same box, the cross:

# %%
probabilities = torch.softmax(hand_made.view(4, 8), dim=-1)  # (4, R + 1)
expected_bins = (probabilities * torch.arange(8.0)).sum(dim=-1)  # (4,)
box_by_hand = torch.cat([centre - expected_bins[:2] * stride, centre + expected_bins[2:] * stride])
edited_maps = [x.clone() for x in dist_maps]
edited_maps[level][0, :, y, x] = hand_made.to(device)
decoded_boxes, class_probabilities = model.decode((class_maps, edited_maps))  # (B, A, 4), (B, A, C)
torch.testing.assert_close(expected_bins, dfl_integral(hand_made.view(4, 8)))
torch.testing.assert_close(box_by_hand, cross)
torch.testing.assert_close(decoded_boxes[0, flat].cpu(), cross)
print("decoded box of prior", flat, [f"{v:.4f}" for v in decoded_boxes[0, flat].tolist()])

# %%
fig, axes = plt.subplots(1, 4, figsize=(12, 2.6), sharey=True)
for ax, side, side_probabilities, value in zip(
    axes, ("left", "top", "right", "bottom"), probabilities, expected_bins, strict=True
):
    ax.bar(range(8), side_probabilities)
    ax.set_xticks(range(8))
    ax.axvline(value.item(), color="tab:red", label=f"{value.item():.4f} bins")
    ax.set_xlabel("bin (strides)")
    ax.set_title(f"{side}: {value.item() * stride:.0f} px")
    ax.legend(fontsize=8)
axes[0].set_ylabel("probability")
plt.show()

# %% [markdown]
# ## 8. What an untrained NanoDet predicts
#
# Two choices of NanoDet's initialisation fix the answer before any training:
#
# - the output conv's weights are tiny (normal, standard deviation 0.01) and its bias
#   is −4.595 on every channel, so every class logit is about −4.595: a probability
#   of 0.01 (RetinaNet's prior probability, so that the 2100 × 80 background outputs
#   do not flood the first loss);
# - the same bias on the 32 distribution channels changes nothing (a constant added to
#   all eight logits of a side leaves the softmax alone), so every side's distribution
#   is nearly uniform: expected bin (0 + 1 + ... + 7) / 8 = 3.5.
#
# In eval mode, at initialisation, batch norm uses its starting statistics (mean 0,
# variance 1), so the signal fades through the random backbone and the head sees
# almost nothing but its bias:

# %%
print(f"class logits: mean {cls_logits.mean().item():.4f}, std {cls_logits.std().item():.4f}")
print(f"class probabilities: max {class_probabilities.max().item():.4f}")
untouched = dfl_distances(dist_logits[0])  # (A, 4) bins
print(f"distances (bins): min {untouched.min().item():.4f}, max {untouched.max().item():.4f}")
torch.testing.assert_close(
    torch.sigmoid(torch.tensor(-4.595)), torch.tensor(0.01), atol=1e-5, rtol=0
)
torch.testing.assert_close(
    class_probabilities, torch.full_like(class_probabilities, 0.01), atol=1e-5, rtol=0
)
torch.testing.assert_close(untouched, torch.full_like(untouched, 3.5))

# %% [markdown]
# So every prior predicts a square of 7 strides centred on its cell: 56 px on the
# stride-8 level, 112 px and 224 px on the others (clipped to the image), all with
# probability 0.01. A few of them, drawn (the network's own output this time, without
# the hand-made prior):

# %%
untrained_boxes = model.decode(outputs)[0].cpu()  # (B, A, 4) px
points, point_strides = anchor_points(feature_sizes, [8, 16, 32])
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
offsets = [0] + torch.tensor(num_per_level).cumsum(0).tolist()
for level_index, ax in enumerate(axes):
    side = feature_sizes[level_index][1]
    rows = [
        offsets[level_index] + y_cell * side + x_cell
        for y_cell, x_cell in [(2, 2), (side // 2, side // 2)]
    ]
    level_stride = 8 * 2**level_index
    title = f"stride {level_stride}: squares of {7 * level_stride} px"
    draw_boxes(image, untrained_boxes[0, rows], ax=ax, title=title)
    ax.scatter(points[rows, 0], points[rows, 1], color="white", s=12)
plt.show()

# %%
sizes = untrained_boxes[0, :, 2:] - untrained_boxes[0, :, :2]  # (A, 2) px, after clipping
inside = (points - 3.5 * point_strides[:, None] >= 0).all(1) & (
    points + 3.5 * point_strides[:, None] <= 320
).all(1)  # priors whose square is not clipped
torch.testing.assert_close(sizes[inside], 7 * point_strides[inside, None].expand(-1, 2))
detections = model.predict(outputs, score_thr=0.05)
print(f"{int(inside.sum())} priors with an unclipped 7-stride square")
print(f"detections above 0.05: {len(detections[0]['boxes'])}")
assert len(detections[0]["boxes"]) == 0  # every probability is 0.01 < 0.05

# %% [markdown]
# Training (notebooks 21 and 22) moves a few priors per object away from this
# starting point: their class probability towards the IoU of their box, their
# distributions towards the two bins around each true distance.
#
# ## Recap
#
# - NanoDet-m: ShuffleNetV2 1.0x (776,420 parameters), a PAN of three 1 × 1 convs
#   (78,240) and a GFL head of three small towers (95,376): 950,036 in all.
# - At 320 px the backbone gives 116 × 40², 232 × 20², 464 × 10²; the PAN brings all
#   three to 96 channels and mixes them top-down then bottom-up; the head gives per
#   level a class map `(B, 80, H, W)` and a distribution map `(B, 32, H, W)`.
# - 2100 priors at 320 px; `NanoDet.flatten` gives `(B, 2100, 80)` and
#   `(B, 2100, 32)`, level by level, row-major.
# - The 32 channels are 4 sides (l, t, r, b) × 8 bins; a side's distance is the
#   expected bin of its softmax, in strides (at most 7).
# - Untrained: every class probability 0.01, every box a square of 7 strides.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** Count the head's parameters by hand: per level, two
# depthwise-separable convs (3 × 3 depthwise on 96 channels and 1 × 1 from 96 to 96,
# no bias, each followed by a batch norm whose weight and bias count) and the 1 × 1
# output conv to 112 channels with bias. Assign the count of one level,
# `per_level_by_hand`, and of the whole head, `head_by_hand` (two ints), as arithmetic
# on these numbers, without `count_parameters`; the check counts `model.head`.

# %% tags=["solution"]
per_level_by_hand = head_by_hand = None  # int each
### BEGIN SOLUTION
separable = (96 * 3 * 3 + 2 * 96) + (96 * 96 + 2 * 96)  # depthwise + BN, pointwise + BN
output_conv = 96 * 112 + 112
per_level_by_hand = 2 * separable + output_conv
head_by_hand = 3 * per_level_by_hand
### END SOLUTION
print(f"per level: {per_level_by_hand}; head: {head_by_hand}")

# %% tags=["check"]
check_equal(
    "per_level_by_hand", per_level_by_hand,
    count_parameters(model.head.cls_convs[0]) + count_parameters(model.head.gfl_cls[0]),
    hint="a separable conv is 96 * 3 * 3 (depthwise) + 2 * 96 (its BN) + 96 * 96 "
    "(pointwise) + 2 * 96 (its BN); a level has two, plus the output conv 96 * 112 + 112.",
)  # fmt: skip
check_equal(
    "head_by_hand", head_by_hand, count_parameters(model.head),
    hint="the three levels have a tower and an output conv each, with nothing shared: "
    "three times one level.",
)  # fmt: skip
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** NanoDet also runs at 416 px. Derive the number of priors,
# `num_priors_416` (an int), by hand. Then build the model on the `meta` device (shapes
# only, no memory, no arithmetic), run a batch of two 416-px images through it and
# flatten the output: assign `meta_cls` `(B, A, C)` and `meta_dist` `(B, A, 4 (R + 1))`.

# %% tags=["solution"]
num_priors_416 = None  # int
meta_cls = meta_dist = None  # (2, A, 80), (2, A, 32)
### BEGIN SOLUTION
# 416 / 8 = 52, 416 / 16 = 26, 416 / 32 = 13: 52^2 + 26^2 + 13^2 = 3549 priors.
num_priors_416 = 52**2 + 26**2 + 13**2
with torch.device("meta"):
    meta_model = build_nanodet_m(num_classes=80)
    meta_cls, meta_dist = meta_model.flatten(meta_model(torch.empty(2, 3, 416, 416)))
print(tuple(meta_cls.shape), tuple(meta_dist.shape))
### END SOLUTION
print(f"{num_priors_416} priors")

# %% tags=["check"]
check_equal(
    "num_priors_416", num_priors_416, (416 // 8) ** 2 + (416 // 16) ** 2 + (416 // 32) ** 2,
    hint="one prior per cell: at stride s a 416-px image has a (416 / s) x (416 / s) grid; "
    "add the three levels.",
)  # fmt: skip
check_true(
    meta_cls is not None and meta_dist is not None,
    "`meta_cls` and `meta_dist` are still None: assign the two flattened outputs.",
    hint="inside `with torch.device('meta'):` build the model, call it on "
    "torch.empty(2, 3, 416, 416) and pass its output to `model.flatten`.",
)
check_equal(
    "meta_cls.shape", tuple(meta_cls.shape), (2, 3549, 80),
    hint="`flatten` gives (B, A, C): a batch of two, every prior, 80 classes.",
)  # fmt: skip
check_equal(
    "meta_dist.shape", tuple(meta_dist.shape), (2, 3549, 32),
    hint="`flatten` gives (B, A, 4 (R + 1)): 4 sides of R + 1 = 8 bins per prior.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_equal(
    "meta_cls.device.type", meta_cls.device.type, "meta",
    hint="build the model and its input under `with torch.device('meta'):`",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** On the stride-32 level, a side must reach 100 px. Which two bins
# carry its distribution, with which weights? Assign the distribution `side_weights`
# `(R + 1,)` and eight logits `side_logits` `(R + 1,)` whose softmax it is (the log of
# the weights, clamped away from 0, will do), then check the distance with
# `dfl_integral`. What is the largest distance, `largest_px` (a number, in px), that any
# distribution can express there?

# %% tags=["solution"]
side_weights = side_logits = None  # (R + 1,) each
largest_px = None  # px
### BEGIN SOLUTION
# 100 / 32 = 3.125 bins: weight 0.875 on bin 3 and 0.125 on bin 4. Largest: R x 32 = 224 px.
side_weights = torch.zeros(8)
side_weights[3], side_weights[4] = 0.875, 0.125
side_logits = torch.log(side_weights.clamp(min=1e-12))
largest_px = 7 * 32
print(f"{dfl_integral(side_logits).item() * 32:.4g} px")
### END SOLUTION

# %% tags=["check"]
check_close(
    "side_weights", side_weights, [0.0, 0.0, 0.0, 0.875, 0.125, 0.0, 0.0, 0.0],
    hint="100 px / 32 = 3.125 bins: the two bins around it are 3 and 4, weighted "
    "4 - 3.125 and 3.125 - 3 so that the expected bin is 3.125.",
)  # fmt: skip
check_true(
    side_logits is not None,
    "`side_logits` is still None: assign eight logits whose softmax is `side_weights`.",
    hint="torch.log(side_weights.clamp(min=1e-12)): the softmax of log-weights gives the "
    "weights back when they sum to 1.",
)
check_close(
    "dfl_integral(side_logits) * 32", dfl_integral(torch.as_tensor(side_logits)) * 32, 100.0,
    hint="the expected bin of softmax(side_logits), times the stride 32, must be 100 px.",
)  # fmt: skip
check_close(
    "largest_px", largest_px, 7 * 32,
    hint="the expected bin is at most R = 7 (all the mass on the last bin), times the stride.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_close(
    "softmax(side_logits)", torch.softmax(torch.as_tensor(side_logits), dim=-1),
    [0.0, 0.0, 0.0, 0.875, 0.125, 0.0, 0.0, 0.0], atol=1e-4,
    hint="the logits must give the two-bin distribution itself, not only its mean",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 3")

# %% [markdown]
# **Exercise 4.** The GFL paper's head has two towers per level, one for classes and
# one for boxes (`share_cls_reg=False`). Predict how many parameters that adds to
# NanoDet-m and assign it to `extra_by_hand` (an int, arithmetic as in exercise 1);
# the check builds `NanoDet(NanoDetConfig(share_cls_reg=False))` and counts. (Hint: the
# two output convs together have as many weights as the shared one.)

# %% tags=["solution"]
extra_by_hand = None  # int
### BEGIN SOLUTION
# Per level one more tower (2 separable convs: 20,928); output convs 96 x 80 + 80 and
# 96 x 32 + 32, together 96 x 112 + 112, as before. 3 x 20,928 = 62,784 more.
extra_by_hand = 3 * 2 * ((96 * 3 * 3 + 2 * 96) + (96 * 96 + 2 * 96))
### END SOLUTION
print(f"{extra_by_hand} more parameters")

# %% tags=["check"]
separate = NanoDet(NanoDetConfig(share_cls_reg=False))
check_equal(
    "extra_by_hand", extra_by_hand, count_parameters(separate) - count_parameters(model),
    hint="per level one more tower of two separable convs, each (96 * 3 * 3 + 2 * 96) + "
    "(96 * 96 + 2 * 96); the two output convs add up to the shared one, so they add nothing.",
)  # fmt: skip
check_passed("Exercise 4")

# %% [markdown]
# ## Further reading
#
# - RangiLyu, *NanoDet: super fast and lightweight anchor-free object detection model*,
#   2020, <https://github.com/RangiLyu/nanodet> (`config/nanodet-m.yml`,
#   `nanodet/model/head/nanodet_head.py`, `nanodet/model/fpn/pan.py`)
# - N. Ma et al., *ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
#   Design*, ECCV 2018, <https://arxiv.org/abs/1807.11164>; torchvision's
#   `models/shufflenetv2.py`,
#   <https://github.com/pytorch/vision/blob/main/torchvision/models/shufflenetv2.py>
# - S. Liu et al., *Path Aggregation Network for Instance Segmentation*, CVPR 2018,
#   <https://arxiv.org/abs/1803.01534>
# - X. Li et al., *Generalized Focal Loss: Learning Qualified and Distributed Bounding
#   Boxes for Dense Object Detection*, NeurIPS 2020 (the head and its distributions),
#   <https://arxiv.org/abs/2006.04388>
# - mmdet `GFLHead` (`mmdet/models/dense_heads/gfl_head.py`),
#   <https://github.com/open-mmlab/mmdetection>
