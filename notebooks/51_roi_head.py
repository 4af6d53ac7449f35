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
# # 51 · Faster R-CNN: the RoI head
#
# Faster R-CNN (Ren et al., NeurIPS 2015) detects in two stages. The region proposal
# network of [notebook 50](50_rpn.ipynb) looks at every anchor and proposes, per image, up
# to a thousand boxes that may hold an object, whatever its class. The second stage, the
# *RoI head* (region of interest), takes each proposal in turn: it cuts a fixed 7 × 7
# window of features out of the pyramid at the proposal's place, whatever its size, and a
# small fully connected network says which class the proposal holds (or background) and
# how to move its sides onto the object.
#
# This notebook follows that second stage with real numbers from the course's
# `detutils.models.faster_rcnn`, mmdet's `faster-rcnn_r50_fpn_1x_coco` design: RoIAlign
# by hand on a map small enough to read, the rule that picks the pyramid level of each
# RoI, the second assignment (proposals against the ground truth) and its sampler, the
# box head, its loss, and the way the head's outputs become detections at test time.
#
# **Learning goals**
#
# 1. Compute a RoIAlign output by hand: the half-pixel shift of `aligned=True`, the bins,
#    the sample points per bin (`sampling_ratio`), bilinear interpolation, the average;
#    match `torchvision.ops.roi_align`, and say what `aligned=False` changes.
# 2. Say which level P2 to P5 a RoI pools from (`RoIExtractor.map_levels`), relate it to
#    the FPN paper's equation, and pool (N, 64, 7, 7) maps from a real pyramid.
# 3. Follow the second assignment: max IoU at 0.5 / 0.5 with no ignored RoI, the ground
#    truth added to the proposals, 128 (mmdet: 512) RoIs sampled per image with at most
#    a quarter positive, in mmdet's order.
# 4. Read the box head's outputs (C + 1 class logits, background last; 4 C class-specific
#    deltas) and compute the RoI loss by hand: cross-entropy and L1 on the true class's
#    deltas, both divided by the number of sampled RoIs; the GIoU variant of Co-DETR.
# 5. Follow prediction: softmax, one decoded box per class and proposal, score > 0.05,
#    NMS at 0.5 per class, 100 per image.
#
# **Prerequisites**: notebook 01 (IoU, GIoU), notebook 02 (the delta-xywh coder and its
# stds), notebook 03 (NMS per class), notebook 40 (ResNet and FPN);
# [notebook 50](50_rpn.ipynb) (the RPN, its anchors and its proposals). Notebook 52
# trains the whole detector.
#
# **Notation**: the letters of the shapes (B, A, M, C, K, R, ...), the box formats and
# the flat prior index are those of [notebook 09](09_notation.ipynb). Here N counts RoIs:
# the sampled proposals in training, all the proposals of an image at test time.

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
import torch.nn.functional as F
from torchvision.ops import batched_nms, roi_align
from torchvision.ops.poolers import LevelMapper

from detutils.assigners import BACKGROUND, IGNORE, AssignResult, assign_max_iou, sample_random
from detutils.boxes import box_iou, box_iou_aligned
from detutils.checks import check_equal, check_function, check_passed, check_true
from detutils.coders import decode_delta_xywh, encode_delta_xywh
from detutils.course import significant
from detutils.data import CocoDetection, build_transforms, collate, ensure_shapes, find_split
from detutils.data.shapes import CLASS_NAMES
from detutils.losses.faster_rcnn import ROI_STDS, roi_loss
from detutils.models.faster_rcnn import (
    FasterRCNN,
    FasterRCNNConfig,
    FasterRCNNOutputs,
    build_faster_rcnn_r18half_fpn64,
    build_faster_rcnn_r50,
)
from detutils.viz import draw_boxes


def count_parameters(module):
    """Number of parameters of a module, its children included."""
    return sum(parameter.numel() for parameter in module.parameters())


# %% [markdown]
# ## 1. Where the RoI head sits
#
# mmdet's Faster R-CNN R50-FPN, and the course's `FasterRCNN` built from the same
# `FasterRCNNConfig` defaults:
#
# 1. ResNet-50 and an FPN give P2 to P6 (strides 4 to 64, 256 channels);
# 2. the RPN proposes boxes from all five levels: 1000 per image after NMS
#    (notebook 50);
# 3. **RoIAlign** cuts a 7 × 7 × 256 window for each proposal out of *one* of P2 to P5,
#    chosen by the proposal's size (P6 serves the RPN only);
# 4. the **box head**, two fully connected layers of 1024 with ReLU, then class logits
#    `(N, C + 1)` and deltas `(N, 4 C)`.
#
# In training the RoI head does not see all the proposals: they are first assigned to
# the ground truth and 512 per image are sampled (section 4). The course's CPU preset
# `faster-rcnn-r18half-fpn64` keeps the design at a smaller size: a half-width
# ResNet-18, 64 channels, a box head of 2 × 256, 500 proposals and 128 sampled RoIs per
# image. The settings of this notebook, side by side:

# %%
with torch.device("meta"):  # shapes only: no memory, no arithmetic
    r50 = build_faster_rcnn_r50(num_classes=80)
torch.manual_seed(0)
model = build_faster_rcnn_r18half_fpn64(num_classes=len(CLASS_NAMES)).to(device)
fields = [
    "num_classes",
    "fpn_channels",
    "roi_strides",
    "roi_size",
    "roi_sampling_ratio",
    "finest_scale",
    "fc_channels",
    "train_proposals",
    "test_proposals",
    "roi_pos_iou",
    "roi_neg_iou",
    "roi_low_quality",
    "add_gt_as_proposals",
    "roi_num",
    "roi_pos_fraction",
    "roi_stds",
    "roi_bbox_loss",
]
pd.DataFrame(
    {
        "R50-FPN (mmdet)": [str(getattr(r50.config, name)) for name in fields],
        "CPU preset": [str(getattr(model.config, name)) for name in fields],
    },
    index=fields,
)

# %% [markdown]
# ## 2. RoIAlign by hand
#
# A proposal is a box in image pixels, with corners anywhere between pixels; a feature
# map of stride s holds one value per s × s block of pixels. RoIAlign (He et al., Mask
# R-CNN, 2017) turns any box into a fixed S × S grid of values (S = 7 in Faster R-CNN)
# without rounding a coordinate anywhere:
#
# 1. divide the box's corners by s, and, with `aligned=True`, subtract 0.5: the value at
#    index i of a map describes the block of pixels [i s, (i + 1) s), whose centre is at
#    (i + ½) s; so image coordinate x lies at map coordinate x / s − ½;
# 2. cut the box on the map into S × S equal bins;
# 3. in each bin, place a regular grid of sample points, `sampling_ratio` a side, or,
#    when it is 0 (mmdet's and the course's setting), ⌈bin size⌉ a side, a sample per
#    map cell or so;
# 4. read the map at every sample point by bilinear interpolation of its four nearest
#    values;
# 5. average the samples of each bin.
#
# Its predecessor, RoIPool (Fast R-CNN), rounded the box and the bins to whole cells and
# took a maximum; the rounding moves the window by up to half a stride, 16 px on a
# stride-32 map, which costs little to classification and much to localisation and masks.
#
# ### 2.1 One map, one box
#
# A map of 8 × 8 digits, at stride 4 (it covers a 32 × 32 image), and one RoI in image
# pixels, `(6, 2, 26, 18)`: 20 × 16 px.

# %%
generator = torch.Generator().manual_seed(0)
feature = torch.randint(0, 10, (8, 8), generator=generator).float()  # (H, W), one channel
stride = 4
box = (6.0, 2.0, 26.0, 18.0)  # xyxy, image px
pd.DataFrame(feature.long().numpy())

# %% [markdown]
# On the map, with the half-pixel shift, the box runs from x = 6 / 4 − 0.5 = 1.0 to
# 26 / 4 − 0.5 = 6.0 and from y = 2 / 4 − 0.5 = 0.0 to 18 / 4 − 0.5 = 4.0: 5 cells by 4.
# For a 2 × 2 output the bins are 2.5 cells wide and 2 high; with `sampling_ratio=0`
# each bin gets ⌈2.5⌉ = 3 sample columns and ⌈2⌉ = 2 sample rows, at the centres of a
# 3 × 2 grid of equal sub-cells. Bilinear interpolation at (y, x) reads the four values
# around it, with y₀ = ⌊y⌋, x₀ = ⌊x⌋, l_y = y − y₀, l_x = x − x₀:
#
# $$f(y, x) = (1 - l_y)(1 - l_x)\,f_{y_0 x_0} + (1 - l_y)\,l_x\,f_{y_0, x_0 + 1}
# + l_y (1 - l_x)\,f_{y_0 + 1, x_0} + l_y\,l_x\,f_{y_0 + 1, x_0 + 1}.$$
#
# Near the border torchvision's kernel (and mmcv's) adds three rules: a point more than
# one cell outside the map reads 0, a point between −1 and 0 is moved to 0, and a point
# on or past the last row or column reads that row or column.


# %%
def bilinear(feature, y, x):
    """The value of a (H, W) map at the point (y, x), as RoIAlign reads it."""
    height, width = feature.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0  # more than a cell outside the map
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= height - 1:  # on or past the last row: read the last row
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return (
        (1 - ly) * (1 - lx) * feature[y0, x0].item()
        + (1 - ly) * lx * feature[y0, x1].item()
        + ly * (1 - lx) * feature[y1, x0].item()
        + ly * lx * feature[y1, x1].item()
    )


def roi_align_by_hand(feature, box, stride, size, sampling_ratio=0, aligned=True):
    """RoIAlign of one xyxy box (image px) on a (H, W) map -> (size, size) output and
    the sample points [(bin row, bin col, y, x)] in map coordinates."""
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (value / stride - offset for value in box)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # the original RoIAlign: at least one cell a side
        roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    bin_w, bin_h = roi_w / size, roi_h / size
    grid_w = sampling_ratio or math.ceil(bin_w)  # sample columns per bin
    grid_h = sampling_ratio or math.ceil(bin_h)  # sample rows per bin
    output, points = torch.zeros(size, size), []
    for row in range(size):
        for col in range(size):
            values = []
            for iy in range(grid_h):
                y = y1 + row * bin_h + (iy + 0.5) * bin_h / grid_h
                for ix in range(grid_w):
                    x = x1 + col * bin_w + (ix + 0.5) * bin_w / grid_w
                    values.append(bilinear(feature, y, x))
                    points.append((row, col, y, x))
            output[row, col] = sum(values) / max(len(values), 1)
    return output, points


pooled_2, points_2 = roi_align_by_hand(feature, box, stride, size=2)
samples = pd.DataFrame(points_2, columns=["bin row", "bin col", "y", "x"])
samples["f(y, x)"] = [bilinear(feature, p[2], p[3]) for p in points_2]
significant(samples[samples["bin row"].eq(0) & samples["bin col"].eq(0)], 4)

# %% [markdown]
# The first sample of bin (0, 0), written out: (y, x) = (0.5, 1.4167), so y₀ = 0,
# x₀ = 1, l_y = 0.5, l_x = 0.4167, between the values 9, 3 (row 0) and 3, 1 (row 1):

# %%
y, x = points_2[0][2:]
ly, lx = y - 0, x - 1
by_hand = (1 - ly) * (1 - lx) * 9 + (1 - ly) * lx * 3 + ly * (1 - lx) * 3 + ly * lx * 1
assert feature[0, 1] == 9 and feature[0, 2] == 3 and feature[1, 1] == 3 and feature[1, 2] == 1
assert abs(by_hand - bilinear(feature, y, x)) < 1e-12
print(f"(1 - {ly}) (1 - {lx:.4f}) 9 + (1 - {ly}) {lx:.4f} 3 + {ly} (1 - {lx:.4f}) 3 + "
      f"{ly} {lx:.4f} 1 = {by_hand:.4f}")  # fmt: skip
print(f"bin (0, 0): the mean of its 6 samples = {samples['f(y, x)'][:6].mean():.4f}")

# %% [markdown]
# The four bins by hand, and `torchvision.ops.roi_align` on the same map (a batch of one
# image with one channel), the box given as `(image index, x1, y1, x2, y2)` and the scale
# 1 / s: equal to float32's precision.

# %%
rois_one = torch.tensor([[0.0, *box]])  # (1, 5): image index, xyxy px
reference_2 = roi_align(feature[None, None], rois_one, 2, 1 / stride, 0, aligned=True)[0, 0]
torch.testing.assert_close(pooled_2, reference_2)
print("by hand:\n", pooled_2.numpy().round(4))
print("roi_align:\n", reference_2.numpy().round(4))

# %% [markdown]
# The bins and samples over the map (left), in map coordinates, where the cell of index
# (i, j) is centred on (i, j); the top and right axes give image pixels.
# `aligned=False` (right) skips the half-pixel shift: the same box lands half a cell
# lower and further right on the map, and reads values that belong to pixels 2 px (half a
# stride) away from those the box covers.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 5.5))
for ax, aligned in zip(axes, (True, False), strict=True):
    _, points = roi_align_by_hand(feature, box, stride, size=2, aligned=aligned)
    ax.imshow(feature, cmap="Greys", vmin=-4, vmax=14)
    for i in range(8):
        for j in range(8):
            ax.text(j - 0.42, i - 0.42, int(feature[i, j]), ha="left", va="top", fontsize=8)
    shift = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (value / stride - shift for value in box)
    ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="tab:red", lw=2))
    ax.plot([(x1 + x2) / 2] * 2, [y1, y2], color="tab:red", lw=1, ls="--")
    ax.plot([x1, x2], [(y1 + y2) / 2] * 2, color="tab:red", lw=1, ls="--")
    ax.scatter([p[3] for p in points], [p[2] for p in points], s=18, color="tab:blue",
               zorder=3, label="sample points")  # fmt: skip
    to_px = (lambda u: (u + 0.5) * stride, lambda v: v / stride - 0.5)
    ax.secondary_xaxis("top", functions=to_px).set_xlabel("x (image px)")
    ax.secondary_yaxis("right", functions=to_px).set_ylabel("y (image px)")
    ax.set_xlabel("x (map)")
    ax.set_ylabel("y (map)")
    ax.set_title(f"aligned={aligned}: box ({x1:g}, {y1:g}) to ({x2:g}, {y2:g}) on the map",
                 fontsize=10, pad=30)  # fmt: skip
    ax.legend(loc="lower left", fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ### 2.2 7 × 7, a fixed sampling ratio, and `aligned=False`
#
# The same box at the head's size, S = 7: bins of 5 / 7 = 0.71 by 4 / 7 = 0.57 cells,
# so ⌈·⌉ = 1 sample per bin, at its centre. mmdet's setting, `sampling_ratio=0`, takes
# about one sample per map cell the bin covers, more for a larger RoI; a fixed
# `sampling_ratio=2` (what torchvision's Faster R-CNN gives its `MultiScaleRoIAlign`)
# takes 2 × 2 in every bin. Both by hand, both equal to `roi_align`:

# %%
rows = []
for sampling_ratio in (0, 2):
    for aligned in (True, False):
        mine, points = roi_align_by_hand(feature, box, stride, 7, sampling_ratio, aligned)
        theirs = roi_align(feature[None, None], rois_one, 7, 1 / stride, sampling_ratio, aligned)
        torch.testing.assert_close(mine, theirs[0, 0])
        rows.append(
            {
                "sampling_ratio": sampling_ratio,
                "aligned": aligned,
                "samples per bin": len(points) // 49,
                "bin (0, 0)": mine[0, 0].item(),
                "bin (3, 3)": mine[3, 3].item(),
                "mean of the 49 bins": mine.mean().item(),
            }
        )
significant(pd.DataFrame(rows), 4)

# %% [markdown]
# Bin (0, 0) reads 5.551 with one sample or with four: it lies (x from 1.0 to 1.71, y
# from 0 to 0.57) inside one square between four neighbouring values, x from 1 to 2 and
# y from 0 to 1, where the interpolated surface is a single bilinear function, and four
# samples placed symmetrically about the bin's centre average to the value at the
# centre. Bin (3, 3), y from 1.71 to 2.29, straddles two such squares and reads 4.500
# with one sample, 4.929 with four.

# %% [markdown]
# `aligned=False` is the RoIAlign of the first implementations (Detectron, the Mask
# R-CNN authors' code): no half-pixel shift, and a RoI at least one cell a side
# (`max(w, 1)`). Every sample moves by +0.5 cells in x and y, which shifts the whole
# window by half a stride: 2 px on P2, 16 px on P5. Detectron2 introduced
# `aligned=True` as the correct pixel model; mmcv's `RoIAlign` defaults to it and
# mmdet's Faster R-CNN configs use it, as does the course's `RoIExtractor`;
# torchvision's `MultiScaleRoIAlign` still uses `aligned=False`. The second rule
# matters for tiny RoIs: a 2 × 2 px box on a stride-4 map covers half a cell,
# 2.5 to 3.0 on the map; `aligned=False` moves it to 3.0 and stretches it to one cell,
# 3.0 to 4.0 (2 × 2 bins, 2 × 2 samples each: four sample columns).

# %%
tiny = (12.0, 12.0, 14.0, 14.0)
for aligned in (True, False):
    _, tiny_points = roi_align_by_hand(feature, tiny, stride, 2, 2, aligned)
    xs = sorted({round(p[3], 4) for p in tiny_points})
    print(f"aligned={aligned!s:5}: sample columns at x = {xs} (map)")

# %% [markdown]
# ## 3. Which level a RoI pools from
#
# An FPN has four maps a RoI could pool from. Lin et al. (FPN, 2017, eq. 1) assign a RoI
# of width w and height h (image pixels) to level
#
# $$k = \left\lfloor k_0 + \log_2\!\left(\sqrt{w h} / 224\right) \right\rfloor,
# \qquad k_0 = 4,$$
#
# clamped to P2 .. P5: a RoI of ImageNet's 224 px pools from P4 (as the single-map
# Faster R-CNN on a ResNet pools every RoI from C4, stride 16), one half that size from
# P3, and so on. mmdet's `SingleRoIExtractor` writes it with `finest_scale = 56` as a level
# *index* from 0 = P2:
#
# $$\text{index} = \left\lfloor \log_2\!\left(\sqrt{w h} / 56 + 10^{-6}\right)
# \right\rfloor,\ \text{clamped to } 0 \ldots 3.$$
#
# They are the same rule: 2 + log₂(s / 56) = log₂(4 s / 56) = log₂(s / 14) = 4 + log₂(s /
# 224), with s = √(wh). Below 112 px a RoI pools from P2, from 112 to 224 px from P3,
# from 224 to 448 px from P4, above from P5. `RoIExtractor.map_levels` is mmdet's; the
# FPN paper's form, as torchvision's `LevelMapper` computes it, agrees on every box:

# %%
extractor = model.roi_head.extractor  # RoIExtractor(strides (4, 8, 16, 32), 7, 0, 56)
sizes = [(16, 16), (32, 32), (64, 64), (111, 111), (112, 112), (160, 160), (400, 100),
         (223, 223), (224, 224), (320, 320), (447, 447), (448, 448), (800, 800)]  # fmt: skip
size_boxes = torch.tensor([[0.0, 0.0, w, h] for w, h in sizes])  # (13, 4) xyxy px
scale = (size_boxes[:, 2] * size_boxes[:, 3]).sqrt()  # (13,) sqrt(w h)
mmdet_level = extractor.map_levels(size_boxes) + 2  # index 0 .. 3 -> P2 .. P5
fpn_level = torch.floor(4 + torch.log2(scale / 224)).clamp(2, 5).long()
torchvision_level = LevelMapper(2, 5)([size_boxes]) + 2
assert torch.equal(mmdet_level, fpn_level) and torch.equal(mmdet_level, torchvision_level)
level_stride = torch.tensor([4, 8, 16, 32])[mmdet_level - 2]
bins = scale / level_stride / 7  # side of a bin on the level, in cells (square RoIs)
level_table = pd.DataFrame(
    {
        "w x h (px)": [f"{w} x {h}" for w, h in sizes],
        "sqrt(wh)": scale.tolist(),
        "log2(sqrt(wh) / 56)": torch.log2(scale / 56).tolist(),
        "level": [f"P{k}" for k in mmdet_level.tolist()],
        "side on the level (cells)": (scale / level_stride).tolist(),
        "samples per bin side": [math.ceil(v) for v in bins.tolist()],
    }
)
significant(level_table, 4)

# %% [markdown]
# Two consequences. The rule keeps a RoI 14 to 28 cells a side on its level (except
# below 56 px on P2 and above 896 px on P5), so a 7 × 7 grid has bins of 2 to 4 cells
# and `sampling_ratio=0` takes 2 × 2 to 4 × 4 samples per bin, about one per cell.
# And at 320 px no RoI can pool from P5: the largest box an image holds,
# 320 × 320, has s = 320 < 448. The course's preset keeps P5 in the extractor (the
# mmdet design, and larger inputs use it); at 320 px it stays idle.
#
# ### 3.1 `RoIExtractor.forward` on a real pyramid
#
# Two images of the validation split of the shapes set at 320 px, through the preset
# (randomly initialised: the pooling does not care what the features mean). Its
# `forward` returns the pyramid P2 to P6 with the RPN's outputs and proposals; the
# RoI head reads P2 to P5.

# %%
root = ensure_shapes("data/shapes")
val_set = CocoDetection(*find_split(root, "val"), transforms=build_transforms(320, train=False))
images, batch_targets = collate([val_set[0], val_set[1]])  # (B, 3, 320, 320), B dicts
images = images.to(device)
targets = [{key: t[key].to(device) for key in ("boxes", "labels")} for t in batch_targets]
model.train()
with torch.no_grad():
    outputs = model(images)  # FasterRCNNOutputs
for level, x in enumerate(outputs.features):
    print(f"P{level + 2}: {tuple(x.shape)}  (B, F, H, W), stride {320 // x.shape[-1]}")
print("boxes per image:", [len(t["boxes"]) for t in targets])

# %% [markdown]
# The twelve ground-truth boxes of the two images as RoIs, `(N, 5)`: image index, then
# xyxy px. Each pools from the level its size gives; `forward` runs one `roi_align` per
# level on the RoIs of that level and puts the results back in the RoIs' order:

# %%
gt_rois = torch.cat(
    [
        torch.cat([torch.full((len(t["boxes"]), 1), float(i), device=device), t["boxes"]], 1)
        for i, t in enumerate(targets)
    ]
)  # (N, 5)
gt_levels = extractor.map_levels(gt_rois[:, 1:])  # (N,) 0 .. 3
with torch.no_grad():
    pooled = extractor(outputs.features[:4], gt_rois)  # (N, F, 7, 7)
print("pooled:", tuple(pooled.shape), "(N, F, 7, 7)")
for i in range(len(gt_rois)):  # the same numbers, one RoI at a time
    level = int(gt_levels[i])
    alone = roi_align(outputs.features[level], gt_rois[i : i + 1], 7, 1 / (4 * 2**level), 0,
                      aligned=True)  # fmt: skip
    torch.testing.assert_close(pooled[i : i + 1], alone)
gt_wh = gt_rois[:, 3:] - gt_rois[:, 1:3]
significant(
    pd.DataFrame(
        {
            "image": gt_rois[:, 0].long().tolist(),
            "w x h (px)": [f"{w:.0f} x {h:.0f}" for w, h in gt_wh.tolist()],
            "sqrt(wh)": gt_wh.prod(dim=1).sqrt().tolist(),
            "level": [f"P{k + 2}" for k in gt_levels.tolist()],
        }
    ),
    4,
)

# %% [markdown]
# The first box of image 0, 245 × 203 px, has s = 223.0, just under 224: P3, by one
# pixel of s. Its 7 × 7 bins over the image (left), the same RoI on P3, 40 × 40 cells,
# at x / 8 − 0.5 (centre, channel 0 of 64), and the 7 × 7 values RoIAlign averaged out
# of it (right):

# %%
x1, y1, x2, y2 = gt_rois[0, 1:].tolist()
fig, (ax_image, ax_map, ax_pooled) = plt.subplots(1, 3, figsize=(13, 4.4))
ax_image.imshow(images[0].permute(1, 2, 0).cpu(), extent=(0, 320, 320, 0))
for k in range(8):  # the 7 x 7 bins: 8 lines each way
    ax_image.plot([x1 + k * (x2 - x1) / 7] * 2, [y1, y2], color="w", lw=0.8)
    ax_image.plot([x1, x2], [y1 + k * (y2 - y1) / 7] * 2, color="w", lw=0.8)
ax_image.set_xlim(0, 320)
ax_image.set_ylim(320, 0)
ax_image.set_title("RoI 0 and its 7 x 7 bins (image px)", fontsize=10)
p3 = outputs.features[1][0, 0].cpu()  # (40, 40), channel 0 of P3
ax_map.imshow(p3, cmap="viridis")
u1, v1, u2, v2 = (value / 8 - 0.5 for value in (x1, y1, x2, y2))
ax_map.add_patch(plt.Rectangle((u1, v1), u2 - u1, v2 - v1, fill=False, color="w", lw=2))
ax_map.set_title("P3, channel 0 (map cells)", fontsize=10)
ax_pooled.imshow(pooled[0, 0].cpu(), cmap="viridis")
ax_pooled.set_title("pooled[0, 0]: 7 x 7", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. The second assignment and sampling
#
# ### 4.1 Max IoU at 0.5 / 0.5
#
# Each proposal is compared with every ground-truth box of its image by IoU, by the
# assigner of the RPN (`assign_max_iou`) with other thresholds: a proposal whose best
# IoU reaches 0.5 learns that box and its class; below 0.5 it is background. With both
# thresholds at 0.5 there is no gap between them, so no proposal is ignored; and
# there is no low-quality matching (the RPN's rule that lets every box claim its best
# anchors, however poor): a box that no proposal overlaps by 0.5 gets no positive from
# the proposals. (Fast R-CNN took its background RoIs only from IoUs in [0.1, 0.5), as
# likely hard negatives; mmdet, and the course, take every IoU below 0.5.) One box and
# six proposals, against the RPN's 0.7 / 0.3:

# %%
gt_box = torch.tensor([[100.0, 100.0, 200.0, 200.0]])  # (M, 4), M = 1
gt_label = torch.tensor([3])
proposals_toy = torch.tensor(
    [
        [100.0, 100.0, 200.0, 200.0],
        [105.0, 110.0, 210.0, 205.0],
        [120.0, 110.0, 220.0, 210.0],
        [130.0, 100.0, 230.0, 200.0],
        [150.0, 150.0, 250.0, 250.0],
        [300.0, 0.0, 320.0, 40.0],
    ]
)  # (6, 4)
roi_result = assign_max_iou(proposals_toy, gt_box, gt_label, 0.5, 0.5, 0.5, False)
rpn_result = assign_max_iou(proposals_toy, gt_box, gt_label, 0.7, 0.3, 0.3, True)
names = {BACKGROUND: "background", IGNORE: "ignored"}
significant(
    pd.DataFrame(
        {
            "IoU": box_iou(proposals_toy, gt_box)[:, 0].tolist(),
            "RoI head 0.5 / 0.5": [names.get(v, f"class {v}") for v in roi_result.labels.tolist()],
            "RPN 0.7 / 0.3": [names.get(v, f"box {v}") for v in rpn_result.gt_index.tolist()],
        }
    ),
    4,
)

# %% [markdown]
# ### 4.2 The proposals, and why the ground truth joins them
#
# The proposals of [notebook 50](50_rpn.ipynb)'s untrained RPN are its anchors, barely
# moved, ranked by near-equal objectness scores. How many of the 500 kept per image
# overlap a box by 0.5?

# %%
# NBVAL_IGNORE_OUTPUT
# (an untrained RPN's objectness scores are near-ties: other CPUs order them otherwise)
for image, (rpn_proposals, target) in enumerate(zip(outputs.proposals, targets, strict=True)):
    untrained = assign_max_iou(rpn_proposals, target["boxes"], target["labels"], 0.5, 0.5, 0.5,
                               False)  # fmt: skip
    positives = int((untrained.gt_index >= 0).sum())
    print(f"image {image}: {len(rpn_proposals)} proposals, {positives} positive, "
          f"for {len(target['boxes'])} boxes")  # fmt: skip

# %% [markdown]
# A handful, or none: early in training the RoI head would see almost no positive, and
# the boxes no proposal finds would teach it nothing. So mmdet's sampler (and
# `FasterRCNN.assign`) puts the ground-truth boxes themselves in front of the
# proposals, as extra proposals that are positives of their own box with IoU 1
# (`add_gt_as_proposals=True`): from the first step, every box trains the head at least
# through its own perfect RoI, with target deltas 0. Later, as the RPN learns, the
# proposals bring the many near misses that teach the head to correct a box.
#
# To follow the rest with numbers that do not hang on an untrained network's ties, the
# proposals here are made by hand, 500 per image, as from an RPN half-way trained: two
# copies of every box with their sides moved by 10 % of its size (Gaussian), then random
# boxes of 16 to 128 px a side.


# %%
def make_proposals(boxes, count, generator, size=320):
    """``count`` proposals (count, 4) xyxy px: two jittered copies of every box, then
    random boxes of 16 to 128 px, clipped to the image."""
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # (M, 4)
    jittered = [boxes + 0.1 * wh * torch.randn(boxes.shape, generator=generator)
                for _ in range(2)]  # fmt: skip
    num_random = count - 2 * len(boxes)
    xy = torch.rand((num_random, 2), generator=generator) * (size - 16)
    side = torch.rand((num_random, 2), generator=generator) * 112 + 16
    proposals = torch.cat([*jittered, torch.cat([xy, xy + side], dim=1)]).clamp(0, size)
    proposals[:, 2:] = torch.maximum(proposals[:, 2:], proposals[:, :2] + 1.0)
    return proposals


generator = torch.Generator().manual_seed(51)
hand_proposals = [
    make_proposals(t["boxes"].cpu(), 500, generator).to(device) for t in targets
]  # B tensors (500, 4)
outputs = outputs._replace(proposals=hand_proposals)

# %% [markdown]
# ### 4.3 `model.assign`: assign, add the ground truth, sample
#
# `FasterRCNN.assign(outputs, targets)` runs both stages' assignments (the RPN's is
# notebook 50's). For the RoI head, per image: `assign_max_iou` on the proposals at
# 0.5 / 0.5; the boxes put in front, as positives; then `sample_random` draws at most
# `roi_num × roi_pos_fraction` positives (preset: 128 × 0.25 = 32; mmdet: 512 × 0.25 =
# 128) and fills up to `roi_num` with negatives, all at random (the global stream,
# seeded here). The pool before sampling, and what the sampler drew:

# %%
torch.manual_seed(0)
assignment = model.assign(outputs, targets)  # FasterRCNNAssignment
rows = []
for image, (proposals, target) in enumerate(zip(hand_proposals, targets, strict=True)):
    alone = assign_max_iou(proposals, target["boxes"], target["labels"], 0.5, 0.5, 0.5, False)
    assert not (alone.gt_index == IGNORE).any()  # nothing ignored at 0.5 / 0.5
    mine = assignment.rois[:, 0] == image
    labels, is_gt = assignment.roi_labels[mine], assignment.roi_is_gt[mine]
    rows.append(
        {
            "boxes (gt added)": len(target["boxes"]),
            "positive proposals": int((alone.gt_index >= 0).sum()),
            "negative proposals": int((alone.gt_index == BACKGROUND).sum()),
            "sampled positives": int((labels >= 0).sum()),
            "of which gt": int(is_gt.sum()),
            "sampled negatives": int((labels == BACKGROUND).sum()),
            "sampled": int(mine.sum()),
        }
    )
pd.DataFrame(rows, index=["image 0", "image 1"])

# %% [markdown]
# Image 0 has 7 + 27 = 34 positives, more than 32: the sampler draws 32 of them at
# random (the ground-truth RoIs are in the draw and could be left out, as in mmdet; here
# all seven were drawn) and 96 negatives. Image 1 has 5 + 20 = 25: all are taken, and
# 103 negatives fill the 128. At mmdet's 512 per image both images would keep every
# positive, and the negatives would fill the rest. The cap matters once the RPN is
# trained and many proposals land on objects: the negatives then still make at least
# three quarters of the samples.
#
# The fields of the assignment, for the N = 256 sampled RoIs of the batch:

# %%
for name in ("rois", "roi_labels", "roi_targets", "roi_is_gt"):
    value = getattr(assignment, name)
    print(f"{name:12} {tuple(value.shape)} {value.dtype}")
first = pd.DataFrame(
    {
        "image": assignment.rois[:, 0].long().tolist(),
        "roi (xyxy)": [tuple(round(v) for v in r) for r in assignment.rois[:, 1:].tolist()],
        "label": assignment.roi_labels.tolist(),
        "is gt": assignment.roi_is_gt.tolist(),
        "target (xyxy)": [tuple(round(v) for v in r) for r in assignment.roi_targets.tolist()],
    }
)
first.iloc[[0, 1, 2, 30, 31, 32, 33, 127, 128, 129, 152, 153, 255]]

# %% [markdown]
# The order is mmdet's: image by image; within an image the sampled positives, then the
# negatives, each in the order of the candidates (ground truth first, then proposals by
# index). A negative's label is `BACKGROUND` (−1) and its target zeros (unused). The
# `rois` tensor is what `roi_align` takes: the image index in column 0.
#
# Over image 0, the 32 positives (coloured by the class they learn) and 20 of the
# negatives (grey, dashed):

# %%
image0 = assignment.rois[:, 0] == 0
positive0 = image0 & (assignment.roi_labels >= 0)
negative0 = torch.nonzero(image0 & (assignment.roi_labels == BACKGROUND)).squeeze(1)[:20]
fig, ax = plt.subplots(figsize=(7, 7))
draw_boxes(images[0].cpu(), assignment.rois[positive0, 1:].cpu(),
           assignment.roi_labels[positive0].cpu(), class_names=CLASS_NAMES, ax=ax,
           linewidth=1.0)  # fmt: skip
for x1, y1, x2, y2 in assignment.rois[negative0, 1:].tolist():
    ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="0.6", lw=1,
                               ls="--"))  # fmt: skip
ax.set_title("image 0: 32 sampled positives, 20 of the 96 negatives")
plt.show()

# %% [markdown]
# Where they pool from: the sampled RoIs by level. Large ground-truth copies reach P3
# and P4; the random negatives of 16 to 128 px mostly stay on P2; no RoI reaches P5.

# %%
sampled_levels = extractor.map_levels(assignment.rois[:, 1:])  # (N,)
print({f"P{k + 2}": int(n) for k, n in enumerate(sampled_levels.bincount(minlength=4))})

# %% [markdown]
# ### 4.4 A box of zero width is not added
#
# A ground-truth box whose width or height is 0 (a degenerate annotation) cannot serve as
# a RoI: its target deltas against itself divide by its zero size ((g_x − r_x) / r_w =
# 0 / 0, log(g_w / r_w) = log(0 / 0)), and one non-finite target turns the whole loss
# into NaN. The course's coder refuses such a RoI, and `FasterRCNN.assign` only adds
# boxes of positive width and height. The box stays in the targets, but with zero area
# its IoU with every proposal is 0: nothing learns it. (mmdet's COCO loader drops boxes
# narrower or lower than 1 px when it reads the annotations, so its sampler never meets
# one.)

# %%
flat_box = torch.tensor([[60.0, 40.0, 60.0, 90.0]], device=device)  # 0 x 50 px
try:
    encode_delta_xywh(flat_box, flat_box, stds=ROI_STDS)  # its deltas against itself
except ValueError as error:
    print("ValueError:", error)
odd_targets = [
    {"boxes": torch.cat([targets[0]["boxes"][:1], flat_box]),
     "labels": torch.tensor([3, 1], device=device)},
    targets[1],
]  # fmt: skip
odd_assignment = model.assign(outputs, odd_targets)
odd_gt = [int(odd_assignment.roi_is_gt[odd_assignment.rois[:, 0] == i].sum()) for i in (0, 1)]
print("ground-truth RoIs per image:", odd_gt, "for boxes per image:", [2, 5])

# %% [markdown]
# ## 5. The box head
#
# `BoxHead` (mmdet's `Shared2FCBBoxHead`) flattens each pooled map (F × 7 × 7 = 3136 for
# the preset, 12,544 for R50) and runs two fully connected layers with ReLU, then two
# linear layers side by side:
#
# - `fc_cls`: C + 1 logits, the classes 0 .. C − 1 and, **last**, background (mmdet's
#   convention since 2.0; torchvision puts background first, at index 0);
# - `fc_reg`: 4 C deltas, four per class ("class-specific"): the deltas of class c are
#   columns 4c to 4c + 3. Each class proposes its own correction of the RoI; the loss
#   trains only the true class's four, and at test time each class's box is decoded from
#   its own.

# %%
box_head = model.roi_head.box_head
print(box_head)
head_rows = []
for built, classes in [(model, len(CLASS_NAMES)), (r50, 80)]:
    f, hidden = built.config.fpn_channels, built.config.fc_channels
    by_hand = (f * 49 * hidden + hidden) + (hidden * hidden + hidden)  # two shared FCs
    by_hand += hidden * (classes + 1) + (classes + 1) + hidden * 4 * classes + 4 * classes
    assert by_hand == count_parameters(built.roi_head)  # RoIAlign has no parameters
    head_rows.append({"C": classes, "F x 7 x 7": f * 49, "hidden": hidden,
                      "RoI head parameters": by_hand,
                      "whole detector": count_parameters(built)})  # fmt: skip
pd.DataFrame(head_rows, index=["CPU preset", "R50-FPN"])

# %% [markdown]
# mmdet's R50 RoI head has 14,306,705 parameters, a third of the detector's 41,753,056,
# almost all of them in the first layer (12,544 × 1024). The sampled RoIs of the batch
# through the preset's head, `model.roi_forward(outputs, rois)`:

# %%
with torch.no_grad():
    cls_logits, roi_deltas = model.roi_forward(outputs, assignment.rois)
print("class logits:", tuple(cls_logits.shape), "(N, C + 1)")
print("deltas:      ", tuple(roi_deltas.shape), "(N, 4 C)")
per_class = roi_deltas.view(len(roi_deltas), len(CLASS_NAMES), 4)  # (N, C, 4)
torch.testing.assert_close(per_class[:, 2], roi_deltas[:, 8:12])  # class 2: columns 8 .. 11
probabilities = cls_logits.softmax(dim=1)  # (N, C + 1)
print(f"logits in [{cls_logits.min().item():.2g}, {cls_logits.max().item():.2g}], "
      f"probabilities in [{probabilities.min().item():.2g}, {probabilities.max().item():.2g}], "
      f"deltas in [{roi_deltas.min().item():.2g}, {roi_deltas.max().item():.2g}]")  # fmt: skip

# %% [markdown]
# The initialisation keeps an untrained head quiet: `fc_cls` normal(0, 0.01) and
# `fc_reg` normal(0, 0.001), zero biases. The logits stay within about 1 of 0
# (probabilities from 0.06 to 0.34, around 1 / (C + 1) = 1 / 7), the deltas within
# ±0.12: times the stds 0.1 and 0.2, a decoded box moves its centre by about 1 % of the
# RoI's size and scales it by about 2 %. Decoded boxes sit on their RoIs.
#
# ## 6. The RoI loss
#
# For the N sampled RoIs of the batch (all images together), with $t_i$ the class RoI i
# learns (C, the last column, for background) and $P$ its positives:
#
# $$\mathcal L_{\text{cls}} = \frac{1}{N}\sum_{i=1}^{N} \mathrm{CE}(z_i, t_i), \qquad
# \mathcal L_{\text{bbox}} = \frac{1}{N}\sum_{i \in P} \big\lVert d_{i, t_i} -
# \mathrm{enc}(r_i, g_i) \big\rVert_1,$$
#
# where $z_i$ are its C + 1 logits, $d_{i, t_i}$ the four deltas of its true class,
# $r_i$ the RoI, $g_i$ its box, and enc the delta-xywh coder with stds (0.1, 0.1, 0.2,
# 0.2): $((g_x - r_x)/r_w/0.1,\ (g_y - r_y)/r_h/0.1,\ \log(g_w/r_w)/0.2,\ \log(g_h/
# r_h)/0.2)$ in centre-size form. Both terms divide by N, the sampled RoIs, positives
# and negatives together (mmdet's `avg_factor` for both): the box term's sum over the P
# positives is *not* divided by P. Weights 1 and 1.
#
# ### 6.1 By hand, on five RoIs
#
# C = 3, two positives (classes 2 and 0) and three negatives, logits and deltas drawn at
# random:

# %%
generator = torch.Generator().manual_seed(5)
toy_logits = torch.randn((5, 4), generator=generator)  # (N, C + 1), C = 3
toy_deltas = torch.randn((5, 12), generator=generator) * 0.5  # (N, 4 C)
toy_rois = torch.tensor(
    [
        [10.0, 10.0, 50.0, 60.0],
        [100.0, 40.0, 180.0, 100.0],
        [0.0, 0.0, 30.0, 30.0],
        [200.0, 200.0, 260.0, 240.0],
        [60.0, 150.0, 90.0, 210.0],
    ]
)  # (N, 4)
toy_labels = torch.tensor([2, 0, BACKGROUND, BACKGROUND, BACKGROUND])  # (N,)
toy_targets = torch.zeros(5, 4)
toy_targets[:2] = torch.tensor([[14.0, 8.0, 52.0, 66.0], [96.0, 45.0, 170.0, 98.0]])
# the class term: cross-entropy over C + 1 = 4 columns, background = column 3
class_targets = torch.where(toy_labels >= 0, toy_labels, 3)  # (N,)
log_probs = toy_logits - toy_logits.logsumexp(dim=1, keepdim=True)  # (N, C + 1)
ce = -log_probs[torch.arange(5), class_targets]  # (N,)
cls_by_hand = ce.sum() / 5
# the box term: positives only, the four deltas of their true class
positive = toy_labels >= 0
positive_index = positive.nonzero().flatten().tolist()  # [0, 1]
columns = [range(4 * toy_labels[i], 4 * toy_labels[i] + 4) for i in positive_index]
pred = torch.stack([toy_deltas[i, list(c)] for i, c in zip(positive_index, columns, strict=True)])
r, g = toy_rois[positive], toy_targets[positive]  # (P, 4) each
r_wh, g_wh = r[:, 2:] - r[:, :2], g[:, 2:] - g[:, :2]
r_xy, g_xy = (r[:, :2] + r[:, 2:]) / 2, (g[:, :2] + g[:, 2:]) / 2
target_deltas = torch.cat([(g_xy - r_xy) / r_wh / 0.1, torch.log(g_wh / r_wh) / 0.2], dim=1)
torch.testing.assert_close(target_deltas, encode_delta_xywh(r, g, stds=ROI_STDS))
bbox_by_hand = (pred - target_deltas).abs().sum() / 5  # divided by N = 5, not P = 2
toy_loss = roi_loss(toy_logits, toy_deltas, toy_rois, toy_labels, toy_targets)
torch.testing.assert_close(toy_loss["roi_cls"], cls_by_hand)
torch.testing.assert_close(toy_loss["roi_bbox"], bbox_by_hand)
print("cross-entropies:", [f"{v:.4g}" for v in ce.tolist()])
print("target deltas:\n", target_deltas.numpy().round(4))
print({name: f"{value.item():.4g}" for name, value in toy_loss.items()},
      f"(by hand: {cls_by_hand.item():.4g}, {bbox_by_hand.item():.4g})")  # fmt: skip

# %% [markdown]
# `roi_accuracy` is the percent of RoIs whose highest logit is their class (background
# included); it is reported, not trained. Note the class columns: RoI 0 learns class 2,
# so its box term reads `deltas[0, 8:12]`; RoI 1 learns class 0, `deltas[1, 0:4]`; the
# other eight deltas of each positive, and all twelve of each negative, receive no
# gradient from this RoI.
#
# ### 6.2 The real batch
#
# The 256 sampled RoIs of section 4 through the untrained preset. The class term is of
# the order of log 7 = 1.946, the cross-entropy of seven equal probabilities. The
# predicted deltas are near 0, so the box term is about the size of the targets: the
# L1 norms of the 57 positives' target deltas (0 for the 12 ground-truth RoIs), divided
# by 256. `model.loss` runs the same head on the same RoIs and adds the RPN's terms.

# %%
batch_loss = roi_loss(
    cls_logits, roi_deltas, assignment.rois[:, 1:], assignment.roi_labels,
    assignment.roi_targets,
)  # fmt: skip
with torch.no_grad():
    model_losses = model.loss(outputs, targets, assignment)
for name in ("roi_cls", "roi_bbox"):
    torch.testing.assert_close(model_losses[name], batch_loss[name])
print(f"N = {len(assignment.roi_labels)}, positives {int((assignment.roi_labels >= 0).sum())}")
print({name: f"{value.item():.4g}" for name, value in model_losses.items()})

# %% [markdown]
# ### 6.3 The GIoU variant (Co-DETR's auxiliary head)
#
# Co-DETR (Zong et al., ICCV 2023) trains a DETR together with auxiliary heads, one of
# them this RoI head, and changes its box term: with `reg_decoded_bbox=True` the
# predicted deltas of the true class are decoded into a box (stds 0.1, 0.1, 0.2, 0.2,
# from the RoI) and compared with the target box by the GIoU loss 1 − GIoU, summed over
# the positives and divided by the same N. Its weight is 10 × 12 = 120, the 12 being 6
# decoder layers × λ₂ = 2 (the class term's is 1 × 12). In the course:
# `roi_loss(..., bbox_loss="giou", reg_decoded=True)`, or the config's `roi_bbox_loss`
# and `roi_reg_decoded`. On the five RoIs:

# %%
decoded = decode_delta_xywh(r, pred, stds=ROI_STDS)  # (P, 4) xyxy px
giou_by_hand = 120 * (1 - box_iou_aligned(decoded, g, kind="giou")).sum() / 5
toy_giou = roi_loss(toy_logits, toy_deltas, toy_rois, toy_labels, toy_targets, cls_weight=12,
                    bbox_weight=120, bbox_loss="giou", reg_decoded=True)  # fmt: skip
torch.testing.assert_close(toy_giou["roi_bbox"], giou_by_hand)
giou_terms = 1 - box_iou_aligned(decoded, g, kind="giou")  # (P,)
print("1 - GIoU per positive:", [f"{v:.4g}" for v in giou_terms.tolist()])
print({name: f"{value.item():.4g}" for name, value in toy_giou.items() if name != "roi_accuracy"})

# %% [markdown]
# ### 6.4 Against the reference: mmdet 3.3
#
# `tests/test_faster_rcnn_model.py` feeds the same inputs to mmdet 3.3 (its
# `MaxIoUAssigner`, `RandomSampler` with `add_gt_as_proposals`, and `BBoxHead.loss`) and
# to the course's code: three 128 px images, with five boxes (one of 0.6 × 0.5 px), one
# box the size of the image, and none; per image three jittered copies of each box and
# 40 random proposals; a sampler of 10⁶ that takes every candidate, so that no random
# draw enters. mmdet's numbers, kept in the test: 144 RoIs (60, 44, 40 per image), the
# ground truth at rows 0 to 4 and 60, then on random head outputs (seed 3) `roi_cls`
# 2.474, `roi_bbox` 0.2823 and, with GIoU at weight 10, 0.3389. The course reproduces
# them to a relative 2 × 10⁻⁶. The same inputs, rebuilt:

# %%
ref_targets = [
    {"boxes": torch.tensor([[10.0, 12.0, 60.0, 50.0], [70.0, 20.0, 120.0, 110.0],
                            [30.0, 80.0, 42.0, 90.0], [5.0, 5.0, 5.6, 5.5],
                            [40.0, 30.0, 90.0, 70.0]]),
     "labels": torch.tensor([0, 1, 2, 0, 1])},
    {"boxes": torch.tensor([[0.0, 0.0, 128.0, 128.0]]), "labels": torch.tensor([2])},
    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
]  # fmt: skip
generator = torch.Generator().manual_seed(1)
ref_proposals = []
for target in ref_targets:
    boxes = target["boxes"]
    jitter = boxes.repeat(3, 1) + torch.randn((3 * len(boxes), 4), generator=generator) * 6
    xy = torch.rand((40, 2), generator=generator) * 110.0
    wh = torch.rand((40, 2), generator=generator) * 60.0 + 2.0
    proposals = torch.cat([jitter, torch.cat([xy, xy + wh], 1)]).clamp(0, 128)
    proposals[:, 2:] = torch.maximum(proposals[:, 2:], proposals[:, :2] + 1.0)
    ref_proposals.append(proposals)
small = FasterRCNN(FasterRCNNConfig(num_classes=3, img_size=128, depth=18, backbone_width=8,
                                    pretrained=None, fpn_channels=8, rpn_channels=8,
                                    fc_channels=16, rpn_num=10**6, roi_num=10**6))  # fmt: skip
rpn_maps = [torch.zeros(3, 3, 128 // s, 128 // s) for s in (4, 8, 16, 32, 64)]  # shapes only
ref_outputs = FasterRCNNOutputs([], rpn_maps, rpn_maps, ref_proposals, ref_proposals)
ref_assignment = small.assign(ref_outputs, ref_targets)
generator = torch.Generator().manual_seed(3)
ref_logits = torch.randn((144, 4), generator=generator) * 2.0  # (N, C + 1)
ref_deltas = torch.randn((144, 12), generator=generator) * 0.5  # (N, 4 C)
ref_args = (ref_logits, ref_deltas, ref_assignment.rois[:, 1:], ref_assignment.roi_labels,
            ref_assignment.roi_targets)  # fmt: skip
ref_l1 = roi_loss(*ref_args)
ref_giou = roi_loss(*ref_args, bbox_weight=10.0, bbox_loss="giou", reg_decoded=True)
mmdet = {"roi_cls": 2.4740355014801025, "roi_bbox": 0.2823069393634796,
         "roi_bbox (GIoU, weight 10)": 0.33894461393356323}  # fmt: skip
course = [ref_l1["roi_cls"].item(), ref_l1["roi_bbox"].item(), ref_giou["roi_bbox"].item()]
for value, expected in zip(course, mmdet.values(), strict=True):
    assert abs(value - expected) <= 2e-6 * expected
assert ref_assignment.rois[:, 0].long().bincount().tolist() == [60, 44, 40]
assert ref_assignment.roi_is_gt.nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 60]
pd.DataFrame({"mmdet 3.3": [f"{v:.4g}" for v in mmdet.values()],
              "course": [f"{v:.4g}" for v in course]}, index=list(mmdet))  # fmt: skip

# %% [markdown]
# The 0.6 × 0.5 px box is added as a RoI (row 3): positive width and height, however
# small. The empty image contributes 40 negatives and no positive.
#
# ## 7. Prediction at test time
#
# At test time nothing is sampled: the RoI head runs on every proposal of every image
# (preset: 500; mmdet: 1000), and mmdet's `BBoxHead.predict_by_feat`, which
# `FasterRCNN.decode` and `FasterRCNN.predict` follow, turns its outputs into detections:
#
# 1. softmax over the C + 1 logits, background dropped: `(N, C)` probabilities;
# 2. every class's deltas decoded from the proposal and clipped to the image: one box
#    per class and proposal, `(N, C, 4)`;
# 3. every (proposal, class) pair whose probability exceeds 0.05 is a candidate;
# 4. NMS at IoU 0.5 within each class;
# 5. the 100 best per image.
#
# The preset in evaluation mode, on the same two images and the hand-made proposals:

# %%
model.eval()
with torch.no_grad():
    eval_outputs = model(images)._replace(proposals=hand_proposals)
    decoded_per_image = model.decode(eval_outputs)  # per image ((N, C, 4), (N, C))
    detections = model.predict(eval_outputs)  # per image {"boxes", "scores", "labels"}
steps = []
for (boxes, scores), dets in zip(decoded_per_image, detections, strict=True):
    proposal_index, labels = torch.nonzero(scores > 0.05, as_tuple=True)  # step 3
    candidate_boxes = boxes[proposal_index, labels]  # (n, 4): each pair's own class box
    candidate_scores = scores[proposal_index, labels]
    keep = batched_nms(candidate_boxes, candidate_scores, labels, 0.5)  # step 4, per class
    top = keep[:100]  # step 5, keep is sorted by score
    torch.testing.assert_close(dets["scores"], candidate_scores[top])
    assert torch.equal(dets["labels"], labels[top])
    steps.append(
        {
            "boxes": str(tuple(boxes.shape)),
            "scores": str(tuple(scores.shape)),
            "pairs": scores.numel(),
            "score > 0.05": len(proposal_index),
            "after NMS 0.5": len(keep),
            "kept (100 best)": len(dets["scores"]),
            "best score": dets["scores"][0].item(),
        }
    )
significant(pd.DataFrame(steps, index=["image 0", "image 1"]), 3)

# %% [markdown]
# The untrained head gives the classes probabilities around 1 / 7 = 0.14, nearly all
# above the threshold: 2989 and 3000 of the 3000 pairs are candidates. NMS per class
# removes about a third of them (the copies of a box overlap, and so do many random
# boxes), and the 100 best come out, all meaningless. Compare the untrained ATSS of
# notebook 40, which detects nothing: its class bias starts every score at 0.01, below
# the threshold. A softmax head has no such prior: its logits start close together,
# background included, so every probability starts near 1 / (C + 1). With the six
# classes of the shapes set that is well above 0.05; with COCO's 80 it is near
# 1 / 81 = 0.012, below it.
#
# One proposal, its six class boxes and probabilities; the boxes differ only by the
# small untrained deltas of each class:

# %%
boxes0, scores0 = decoded_per_image[0]
print("proposal:", [round(v, 1) for v in hand_proposals[0][0].tolist()])
significant(
    pd.DataFrame(
        {
            "probability": scores0[0].tolist(),
            "decoded box": [tuple(round(v, 1) for v in b) for b in boxes0[0].tolist()],
        },
        index=CLASS_NAMES,
    ),
    3,
)

# %% [markdown]
# ## Recap
#
# - The RoI head is Faster R-CNN's second stage: per proposal a 7 × 7 RoIAlign window
#   from one of P2 to P5, two FC layers (1024; preset 256) with ReLU, C + 1 class logits
#   (background last) and 4 C class-specific deltas.
# - RoIAlign (`aligned=True`): box corners at x / s − 0.5 on the map, S × S bins,
#   ⌈bin size⌉ (or `sampling_ratio`) samples a side per bin, bilinear interpolation, the
#   mean per bin; equal to `torchvision.ops.roi_align` to float32's precision.
#   `aligned=False` reads half a cell off and stretches RoIs to at least one cell.
# - Level: ⌊log₂(√(wh) / 56 + 10⁻⁶)⌋ clamped to P2..P5, the FPN paper's
#   ⌊4 + log₂(√(wh) / 224)⌋: below 112 px P2, to 224 P3, to 448 P4, above P5; a RoI
#   spans 14 to 28 cells of its level. At 320 px no RoI reaches P5.
# - Second assignment: max IoU 0.5 / 0.5, no low-quality matches, nothing ignored; the
#   ground truth (of positive size) prepended as positives; `sample_random` 512 per
#   image (preset 128), at most a quarter positive; rows per image, positives then
#   negatives.
# - Loss: CE over C + 1 plus L1 on the true class's four deltas (stds 0.1, 0.1, 0.2,
#   0.2), both divided by the number of sampled RoIs; Co-DETR: GIoU on decoded boxes,
#   weight 10 × 12. Equal to mmdet 3.3 on the test's inputs.
# - Test: softmax, one box per class and proposal `(N, C, 4)`, score > 0.05, NMS 0.5 per
#   class, 100 per image; untrained, every pair scores about 1 / (C + 1).
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** One RoIAlign bin by hand. Write `align_bin(feature, box, stride, row,
# col, size, ratio)`: the value of output bin (`row`, `col`) of RoIAlign with
# `aligned=True`, an output of `size` × `size` and `ratio` × `ratio` sample points per
# bin, for a (H, W) map `feature`, a box `(x1, y1, x2, y2)` in image pixels and the
# map's `stride`; return a float. Write the bilinear interpolation yourself (the cases
# keep every sample inside the map, so the border rules are not needed); do not call
# `roi_align` or this notebook's `roi_align_by_hand`.

# %% tags=["solution"]
align_bin = None  # your function (feature, box, stride, row, col, size, ratio) -> float
### BEGIN SOLUTION


def align_bin(feature, box, stride, row, col, size, ratio):
    x1, y1, x2, y2 = (value / stride - 0.5 for value in box)
    bin_w, bin_h = (x2 - x1) / size, (y2 - y1) / size
    total = 0.0
    for iy in range(ratio):
        y = y1 + row * bin_h + (iy + 0.5) * bin_h / ratio
        for ix in range(ratio):
            x = x1 + col * bin_w + (ix + 0.5) * bin_w / ratio
            y0, x0 = math.floor(y), math.floor(x)
            ly, lx = y - y0, x - x0
            total += (
                (1 - ly) * (1 - lx) * feature[y0, x0].item()
                + (1 - ly) * lx * feature[y0, x0 + 1].item()
                + ly * (1 - lx) * feature[y0 + 1, x0].item()
                + ly * lx * feature[y0 + 1, x0 + 1].item()
            )
    return total / ratio**2


print(f"{align_bin(feature, (6.0, 2.0, 26.0, 18.0), 4, 1, 0, 2, 2):.4f}")
### END SOLUTION


# %% tags=["check"]
def bin_from_torchvision(feature, box, stride, row, col, size, ratio):
    """The same bin from torchvision's roi_align (aligned=True)."""
    rois = torch.tensor([[0.0, *box]])
    pooled = roi_align(feature[None, None], rois, size, 1 / stride, ratio, aligned=True)
    return pooled[0, 0, row, col]


check_function(
    "align_bin", align_bin,
    [(feature, box, 4, 1, 0, 2, 2), (feature, box, 4, 0, 1, 2, 2)],
    bin_from_torchvision,
    hint="map corners: x1 / stride - 0.5 ...; bin w = (x2 - x1) / size; sample (iy, ix) at "
    "y1 + row bin_h + (iy + 0.5) bin_h / ratio; interpolate between floor(y), floor(y) + 1 "
    "(and x) with weights (1 - ly)(1 - lx), ...; average the ratio^2 samples.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "align_bin", align_bin,
    [(feature, (10.0, 7.0, 25.0, 27.0), 4, 2, 1, 3, 1),
     (feature, (4.0, 4.0, 28.0, 28.0), 4, 6, 6, 7, 2),
     (feature * 0.5, (20.0, 10.0, 60.0, 50.0), 8, 0, 1, 2, 3)],
    bin_from_torchvision,
    hint="other boxes, strides, sizes and ratios: nothing may be fixed to the example.",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** The level of a RoI. Write `roi_level(w, h)`, returning the pyramid
# level (an int, 2 for P2 ... 5 for P5) that a RoI of `w` × `h` image pixels pools from
# in the R50-FPN (and the preset), from the FPN paper's equation with k₀ = 4 and 224
# (do not call `map_levels`). Then set `largest_level_640` to the highest level any RoI
# inside a 640 × 640 input can pool from, and `smallest_p4_side` to the side (px, an int)
# of the smallest square RoI that pools from P4.

# %% tags=["solution"]
roi_level = None  # your function (w, h) -> int, 2 .. 5
largest_level_640 = None  # an int
smallest_p4_side = None  # an int, px
### BEGIN SOLUTION


def roi_level(w, h):
    level = math.floor(4 + math.log2(math.sqrt(w * h) / 224))
    return min(max(level, 2), 5)


largest_level_640 = roi_level(640, 640)  # sqrt(wh) = 640 >= 448: P5
smallest_p4_side = 224  # 4 + log2(224 / 224) = 4
### END SOLUTION

# %% tags=["check"]
size_cases = [(50, 50), (150, 100), (300, 200), (500, 500), (30, 900)]
check_function(
    "roi_level", roi_level, size_cases,
    lambda w, h: int(extractor.map_levels(torch.tensor([[0.0, 0.0, w, h]]))[0]) + 2,
    hint="floor(4 + log2(sqrt(w h) / 224)), then clamp to 2 .. 5 (min / max).",
)  # fmt: skip
check_true(
    isinstance(roi_level(50, 50), int),
    f"`roi_level(50, 50)` should be an int, got {type(roi_level(50, 50)).__name__}.",
    hint="math.floor returns an int; min(max(level, 2), 5) keeps it one.",
)
check_equal(
    "largest_level_640", largest_level_640, 5,
    hint="the largest RoI of a 640-px input is 640 x 640: sqrt(wh) = 640, above 448.",
)  # fmt: skip
check_equal(
    "smallest_p4_side", smallest_p4_side, 224,
    hint="P4 starts where 4 + log2(s / 224) reaches 4.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "roi_level", roi_level, [(8, 8), (111, 111), (112, 112), (447, 447), (448, 448), (2000, 50)],
    lambda w, h: int(extractor.map_levels(torch.tensor([[0.0, 0.0, w, h]]))[0]) + 2,
    hint="at the borders 112, 224, 448 px the RoI already pools from the higher level",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** What the sampler draws. An image has `num_gt` boxes (all of positive
# size), and among its proposals `num_pos` reach IoU 0.5 and `num_neg` do not. Write
# `sampled_counts(num_gt, num_pos, num_neg, num, fraction)` returning the pair
# `(positives, negatives)` (ints) that the RoI sampler draws with `roi_num = num` and
# `roi_pos_fraction = fraction`. Then set `mmdet_counts` to the pair for an image with 3
# boxes, 60 positive and 937 negative proposals at mmdet's settings.

# %% tags=["solution"]
sampled_counts = None  # your function (num_gt, num_pos, num_neg, num, fraction) -> (int, int)
mmdet_counts = None  # a pair of ints
### BEGIN SOLUTION


def sampled_counts(num_gt, num_pos, num_neg, num, fraction):
    positives = min(num_gt + num_pos, int(num * fraction))  # the boxes count as positives
    negatives = min(num_neg, num - positives)
    return positives, negatives


mmdet_counts = sampled_counts(3, 60, 937, 512, 0.25)  # (63, 449)
### END SOLUTION


# %% tags=["check"]
def counts_from_sampler(num_gt, num_pos, num_neg, num, fraction):
    """sample_random on an assignment with the ground truth in front, as FasterRCNN.assign."""
    gt_index = torch.tensor([0] * (num_gt + num_pos) + [BACKGROUND] * num_neg)
    result = AssignResult(gt_index, gt_index.clone(), torch.zeros(len(gt_index)))
    pos, neg = sample_random(result, num, fraction, generator=torch.Generator().manual_seed(0))
    return torch.tensor([len(pos), len(neg)])


check_function(
    "sampled_counts", sampled_counts, [(7, 27, 466, 128, 0.25), (5, 20, 475, 128, 0.25)],
    counts_from_sampler,
    hint="positives: the boxes plus the positive proposals, at most int(num * fraction); "
    "negatives fill up to num, as many as there are.",
)  # fmt: skip
check_equal(
    "mmdet_counts", tuple(mmdet_counts) if mmdet_counts is not None else None, (63, 449),
    hint="512 RoIs, at most 128 positive; 3 + 60 positives are all taken.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "sampled_counts", sampled_counts,
    [(0, 0, 300, 128, 0.25), (2, 1, 40, 128, 0.25), (10, 200, 50, 512, 0.25), (4, 4, 4, 8, 0.5)],
    counts_from_sampler,
    hint="few negatives: the sampler does not add positives to fill up num",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 3")

# %% [markdown]
# **Exercise 4.** The RoI loss without `roi_loss`. Write `roi_loss_by_hand(logits,
# deltas, rois, labels, target_boxes)` returning the pair `(cls, bbox)` (tensors or
# floats): `logits` (N, C + 1) with background last, `deltas` (N, 4 C), `rois` and
# `target_boxes` (N, 4) xyxy px, `labels` (N,) with `BACKGROUND` (−1) for a negative.
# Cross-entropy and L1 on the true class's deltas against the encoded targets (stds
# 0.1, 0.1, 0.2, 0.2; you may use `encode_delta_xywh`), both divided by N. Then set
# `columns_class_4`, the list of the four column indices of `deltas` the box term reads
# for a RoI of class 4.

# %% tags=["solution"]
roi_loss_by_hand = None  # your function -> (cls, bbox)
columns_class_4 = None  # a list of 4 ints
### BEGIN SOLUTION


def roi_loss_by_hand(logits, deltas, rois, labels, target_boxes):
    num_rois, num_classes = logits.shape[0], logits.shape[1] - 1
    targets = torch.where(labels >= 0, labels, num_classes)
    cls = F.cross_entropy(logits, targets, reduction="sum") / num_rois
    index = torch.nonzero(labels >= 0).flatten()
    if len(index) == 0:
        return cls, 0.0
    columns = 4 * labels[index, None] + torch.arange(4)  # (P, 4)
    pred = deltas[index[:, None], columns]
    target = encode_delta_xywh(rois[index], target_boxes[index], stds=(0.1, 0.1, 0.2, 0.2))
    return cls, (pred - target).abs().sum() / num_rois


columns_class_4 = [16, 17, 18, 19]
### END SOLUTION


# %% tags=["check"]
def loss_pair(*args):
    """The two terms of detutils' roi_loss."""
    losses = roi_loss(*args)
    return torch.stack([losses["roi_cls"], losses["roi_bbox"]])


def answer_pair(*args):
    cls, bbox = roi_loss_by_hand(*args)
    return torch.stack([torch.as_tensor(cls, dtype=torch.float32).reshape(()),
                        torch.as_tensor(bbox, dtype=torch.float32).reshape(())])  # fmt: skip


check_function(  # (cls, bbox) compared as one pair of numbers
    "roi_loss_by_hand", roi_loss_by_hand and answer_pair,
    [(toy_logits, toy_deltas, toy_rois, toy_labels, toy_targets)], loss_pair,
    hint="CE targets: the label, or C (the last column) for -1; the box term reads columns "
    "4 label .. 4 label + 3 of the positives only; both sums divided by N, not P.",
)  # fmt: skip
check_equal(
    "columns_class_4", columns_class_4, [16, 17, 18, 19],
    hint="class c's four deltas are columns 4 c to 4 c + 3.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "roi_loss_by_hand", roi_loss_by_hand and answer_pair,
    [ref_args, (ref_logits[:40], ref_deltas[:40], *(x[:40] for x in ref_args[2:])),
     (toy_logits[2:], toy_deltas[2:], toy_rois[2:], toy_labels[2:], toy_targets[2:])],
    loss_pair, hint="also without any positive: the box term is then 0",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 4")

# %% [markdown]
# ## Further reading
#
# - K. He, G. Gkioxari, P. Dollár, R. Girshick, *Mask R-CNN*, ICCV 2017 (section 3,
#   RoIAlign; table 2c, RoIAlign against RoIPool), <https://arxiv.org/abs/1703.06870>
# - S. Ren, K. He, R. Girshick, J. Sun, *Faster R-CNN: Towards Real-Time Object
#   Detection with Region Proposal Networks*, NeurIPS 2015 (the RPN feeding a Fast R-CNN
#   head, section 3), <https://arxiv.org/abs/1506.01497>; R. Girshick, *Fast R-CNN*,
#   ICCV 2015 (section 2: RoI pooling, mini-batch sampling with a quarter foreground,
#   class-specific regression, the multi-task loss), <https://arxiv.org/abs/1504.08083>
# - T.-Y. Lin et al., *Feature Pyramid Networks for Object Detection*, CVPR 2017
#   (section 4.2, eq. 1: the level of a RoI), <https://arxiv.org/abs/1612.03144>
# - Z. Zong, G. Song, Y. Liu, *DETRs with Collaborative Hybrid Assignments Training*
#   (Co-DETR), ICCV 2023, <https://arxiv.org/abs/2211.12860>
# - mmdet `SingleRoIExtractor` (`mmdet/models/roi_heads/roi_extractors/
#   single_level_roi_extractor.py`, `map_roi_levels`), `Shared2FCBBoxHead`
#   (`roi_heads/bbox_heads/convfc_bbox_head.py`), `BBoxHead` (`bbox_head.py`: `loss`,
#   `predict_by_feat`), `StandardRoIHead` (`roi_heads/standard_roi_head.py`),
#   `RandomSampler` (`task_modules/samplers/random_sampler.py`, `base_sampler.py`:
#   `add_gt_as_proposals`), config `configs/_base_/models/faster-rcnn_r50_fpn.py`,
#   <https://github.com/open-mmlab/mmdetection>
# - torchvision `ops.roi_align` (the `aligned` flag) and `ops.MultiScaleRoIAlign`
#   (`LevelMapper`; it calls `roi_align` with `aligned=False`; torchvision's Faster
#   R-CNN builds it with `sampling_ratio=2`),
#   <https://pytorch.org/vision/stable/ops.html>; Detectron2's `ROIAlign` documents the
#   half-pixel shift, <https://detectron2.readthedocs.io/en/latest/modules/layers.html>
