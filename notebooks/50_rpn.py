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
# # 50 · Faster R-CNN: the region proposal network
#
# Every detector of the course so far is a *one-stage* detector: one head looks at every
# prior once and says, for each, which class and which box. A *two-stage* detector
# splits that work. Stage one, the **region proposal network** (RPN), looks at every
# anchor and says only how likely it is to hold *some* object, whatever its class, and
# how to move the anchor onto it; its best boxes, a thousand per image, are the
# *proposals*. Stage two, the **RoI head**, pools a small feature map from inside each
# proposal, classifies it into C classes or background, and refines its box once more.
#
# Faster R-CNN (Ren et al., NeurIPS 2015) introduced the RPN, and with the feature
# pyramid of Lin et al. (CVPR 2017) it became the reference two-stage detector: mmdet's
# `faster-rcnn_r50_fpn_1x_coco` reaches 37.4 box AP on COCO. Its max-IoU assignment,
# which RetinaNet kept, is the baseline that adaptive assigners such as ATSS (notebooks
# 21 and 41) were measured against, and both stages live on in Co-DETR, which attaches
# an RPN and an RoI head to its transformer encoder as auxiliary heads that train the
# encoder with many more positives.
#
# This notebook takes apart stage one on the course's CPU preset at 320 px, with real
# numbers from `detutils`: the maps the RPN emits, its 25,575 anchors, the max-IoU
# assignment with its low-quality matches, the random sampler, the loss, and the way
# the maps become proposals. Notebook 51 takes the proposals into the RoI head,
# notebook 52 trains both stages.
#
# **Learning goals**
#
# 1. Give the shape of every stage: ResNet maps C2 to C5, the FPN's P2 to P6 (strides 4
#    to 64, P6 a max-pool of P5), and per level objectness `(B, K, H, W)` and deltas
#    `(B, 4 K, H, W)`, K = 3; account for the 41,753,056 parameters of the R50 model.
# 2. Build the anchors: area (8 s)², ratios 0.5, 1 and 2, five levels, 25,575 at
#    320 px; find an anchor from its flat index `offset + (y W + x) K + k`.
# 3. Apply the max-IoU rule (0.7 / 0.3): positives, negatives, ignored anchors; explain
#    why low-quality matches exist, how a box claims every anchor at its own best IoU,
#    and why a later box can take an earlier box's only positive.
# 4. Say what the random sampler (256 anchors, at most half positive) does to the
#    balance of positives and negatives.
# 5. Compute the RPN loss by hand (BCE and L1 over the sampled anchors, divided by their
#    number, each image counting at least one positive and one negative).
# 6. Follow the maps into proposals: top-k per level, decode and clip, empty boxes
#    dropped, NMS within each level, the best 1000 (the preset: 500); say why no
#    gradient flows through them.
#
# **Prerequisites**: notebook 01 (IoU), notebook 02 (anchor boxes, the delta-xywh
# coder), notebook 03 (NMS, `batched_nms`), notebook 40 (ResNet, FPN, the meta device,
# counting parameters); notebooks 41 and 42 (assignment and loss of another anchor
# detector) help but are not needed.
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
from torchvision.ops import batched_nms

from detutils import boxes as box_ops
from detutils.assigners import BACKGROUND, IGNORE, AssignResult, assign_max_iou, sample_random
from detutils.checks import check_close, check_equal, check_function, check_passed
from detutils.coders import decode_delta_xywh, encode_delta_xywh
from detutils.course import significant
from detutils.data import CocoDetection, build_transforms, ensure_shapes, find_split
from detutils.losses.faster_rcnn import rpn_loss
from detutils.models.faster_rcnn import build_faster_rcnn_r18half_fpn64, build_faster_rcnn_r50
from detutils.postprocess import select_proposals
from detutils.priors import base_anchors, flat_prior_index, level_offsets
from detutils.viz import draw_assignment, draw_boxes


def count_parameters(module):
    """Number of parameters of a module, its children included."""
    return sum(parameter.numel() for parameter in module.parameters())


LEVELS = ["P2", "P3", "P4", "P5", "P6"]

# %% [markdown]
# ## 1. Two stages, one config
#
# `detutils.models.faster_rcnn` builds Faster R-CNN from one frozen dataclass,
# `FasterRCNNConfig`, whose defaults are mmdet's R50-FPN 1x. Two builders use it:
#
# - `build_faster_rcnn_r50(num_classes)`: mmdet's model, a ResNet-50 from ImageNet
#   weights, an FPN of 256 channels, an RPN of 256 channels, an RoI head of two fully
#   connected layers of 1024;
# - `build_faster_rcnn_r18half_fpn64(num_classes)`: the course's CPU preset, a
#   ResNet-18 at half width (from the backbone notebook 04 pre-trains), FPN and RPN at
#   64 channels, a box head of two layers of 256, and fewer proposals (below).
#
# As in notebook 40, the R50 is built on the `meta` device (shapes, no memory, no
# arithmetic); the preset is built for real, with the six classes of the shapes set,
# and is not loaded with any weights: every number of this notebook is one of an
# untrained network, or does not depend on the weights at all. The fields of stage one:

# %%
with torch.device("meta"):
    r50 = build_faster_rcnn_r50(num_classes=80)
root = ensure_shapes("data/shapes")
val_set = CocoDetection(*find_split(root, "val"), transforms=build_transforms(320, train=False))
torch.manual_seed(0)
model = build_faster_rcnn_r18half_fpn64(num_classes=val_set.num_classes).to(device).eval()
fields = [
    "depth", "backbone_width", "fpn_channels", "strides", "rpn_channels", "anchor_scales",
    "anchor_ratios", "rpn_pos_iou", "rpn_neg_iou", "rpn_min_pos_iou", "rpn_low_quality",
    "rpn_num", "rpn_pos_fraction", "rpn_stds", "train_nms_pre", "train_proposals",
    "test_nms_pre", "test_proposals", "proposal_iou",
]  # fmt: skip
pd.DataFrame(
    {
        "Faster R-CNN R50-FPN": [str(getattr(r50.config, name)) for name in fields],
        "CPU preset": [str(getattr(model.config, name)) for name in fields],
    },
    index=fields,
)

# %% [markdown]
# Everything that defines the RPN is shared: five levels of strides 4 to 64, three
# anchors per location, the thresholds 0.7 and 0.3, 256 sampled anchors, the coder's
# stds of 1 and NMS at 0.7. The preset is narrower, and keeps fewer proposals: per
# level the 1000 anchors of highest objectness in training (500 at test time), then
# 500 proposals per image, where mmdet keeps 2000 (1000) and 1000.
#
# ## 2. What the network emits
#
# Image 18 of the validation split: six objects, from a 127 × 128 ellipse down to a
# 16 × 13 rectangle. The same image serves the whole notebook.

# %%
image, target = val_set[18]  # (3, 320, 320) in [0, 1], {"boxes", "labels", ...}
gt_boxes, gt_labels = target["boxes"].to(device), target["labels"].to(device)  # (M, 4), (M,)
class_names = val_set.class_names
box_sizes = (gt_boxes[:, 2:] - gt_boxes[:, :2]).cpu()  # (M, 2) w, h
pd.DataFrame(
    {
        "class": [class_names[label] for label in gt_labels.tolist()],
        "xyxy": [tuple(int(v) for v in box) for box in gt_boxes.tolist()],
        "w x h": [f"{w:.0f} x {h:.0f}" for w, h in box_sizes.tolist()],
    }
)

# %%
draw_boxes(image, gt_boxes.cpu(), gt_labels.cpu(), class_names=class_names,
           title="val image 18")  # fmt: skip
plt.show()

# %% [markdown]
# The network normalises the image itself (ImageNet's mean and standard deviation),
# runs the ResNet, which returns C2 to C5 (strides 4 to 32), and the FPN, which turns
# them into P2 to P5 of 64 channels and adds P6. On every level the RPN runs one 3 × 3
# conv with ReLU, then two 1 × 1 convs: K objectness logits and 4 K deltas per
# location, the same weights on every level. `model(images)` returns a
# `FasterRCNNOutputs` with the pyramid, both lists of maps and the proposals.

# %%
images = image[None].to(device)  # (B, 3, H, W), B = 1
outputs = model(images)
backbone_maps = model.backbone((images - model.pixel_mean) / model.pixel_std)
feature_sizes = [tuple(x.shape[-2:]) for x in outputs.objectness]
K = model.config.num_anchors
pd.DataFrame(
    {
        "stride s": model.config.strides,
        "C (backbone)": [str(tuple(x.shape)) for x in backbone_maps] + ["-"],
        "P (FPN)": [str(tuple(x.shape)) for x in outputs.features],
        "objectness": [str(tuple(x.shape)) for x in outputs.objectness],
        "deltas": [str(tuple(x.shape)) for x in outputs.deltas],
        "anchors H W K": [h * w * K for h, w in feature_sizes],
    },
    index=LEVELS,
)

# %%
sides = [80, 40, 20, 10, 5]
assert [tuple(x.shape) for x in outputs.objectness] == [(1, 3, s, s) for s in sides]
assert [tuple(x.shape) for x in outputs.deltas] == [(1, 12, s, s) for s in sides]
# P6: a max-pool of kernel 1 and stride 2 of P5, every other pixel, no weights
assert torch.equal(outputs.features[4], outputs.features[3][..., ::2, ::2])
print("anchors at 320 px:", sum(h * w * K for h, w in feature_sizes))

# %% [markdown]
# P6 exists only for the RPN: its anchors of 512² px find the largest objects. It is
# P5 read at every other pixel (mmdet's `add_extra_convs=False`), so it costs nothing.
# The RoI head pools from P2 to P5 only (notebook 51).
#
# The RPN's convs start from normal(0, 0.01) weights and zero biases, so an untrained
# RPN says 0.5 everywhere: unlike RetinaNet or ATSS (notebook 40), it has no prior
# probability in its bias. It does not need one: only 256 sampled anchors per image
# enter the loss (section 6), not all 25,575, so the many easy negatives cannot swamp
# the first steps.

# %%
probabilities = torch.cat([x.sigmoid().flatten() for x in outputs.objectness])
print(f"objectness probabilities: {probabilities.min():.3f} to {probabilities.max():.3f}")
print(f"deltas: {min(x.min() for x in outputs.deltas):.2g} to "
      f"{max(x.max() for x in outputs.deltas):.2g}")  # fmt: skip

# %% [markdown]
# ## 3. 41,753,056 parameters
#
# The four parts of both builds (the meta tensors know their sizes):

# %%
parts = ("backbone", "neck", "rpn_head", "roi_head")
counts = pd.DataFrame(
    {
        "R50-FPN (C = 80)": [count_parameters(getattr(r50, part)) for part in parts],
        "CPU preset (C = 6)": [count_parameters(getattr(model, part)) for part in parts],
    },
    index=["backbone (ResNet)", "neck (FPN)", "RPN head", "RoI head"],
)
counts.loc["total"] = counts.sum()
assert counts["R50-FPN (C = 80)"].tolist() == [
    23_508_032, 3_344_384, 593_935, 14_306_705, 41_753_056
]  # fmt: skip
counts.map("{:,}".format)  # thousands separated

# %% [markdown]
# The ResNet-50 holds 56 % of mmdet's model, the RoI head 34 % (almost all in its first
# fully connected layer, 256 × 7 × 7 → 1024: notebook 51), the FPN 8 %, the RPN 1.4 %.
# By hand, with F the FPN's channels and K = 3: the FPN has a 1 × 1 lateral conv per
# backbone map and a 3 × 3 output conv per level, P2 to P5, and nothing for P6; the RPN
# has its 3 × 3 conv, a 1 × 1 conv to K logits and a 1 × 1 conv to 4 K deltas, all
# with a bias.


# %%
def fpn_by_hand(in_channels, channels):
    """An FPN with 1x1 laterals and 3x3 outputs on len(in_channels) levels, P6 pooled."""
    laterals = sum(c * channels + channels for c in in_channels)
    return laterals + len(in_channels) * (9 * channels * channels + channels)


def rpn_by_hand(in_channels, channels, num_anchors=3):
    """The RPN head: a 3x3 conv, then 1x1 convs to K logits and 4 K deltas."""
    conv = 9 * in_channels * channels + channels
    objectness = channels * num_anchors + num_anchors
    deltas = channels * 4 * num_anchors + 4 * num_anchors
    return conv + objectness + deltas


by_hand = {
    "R50 FPN": (fpn_by_hand([256, 512, 1024, 2048], 256), r50.neck),
    "R50 RPN": (rpn_by_hand(256, 256), r50.rpn_head),
    "preset FPN": (fpn_by_hand([32, 64, 128, 256], 64), model.neck),
    "preset RPN": (rpn_by_hand(64, 64), model.rpn_head),
}
for name, (count, module) in by_hand.items():
    assert count == count_parameters(module), name
    print(f"{name:11s} {count:>10,} by hand = count of the module")

# %% [markdown]
# The RPN is 9 × 256 × 256 + 256 = 590,080 parameters of 3 × 3 conv and 3,855 of output
# convs: deciding "object or not" and moving 3 anchors per location is cheap. The same
# head runs on all five levels, so it sees objects of every size through anchors of
# every size.
#
# ## 4. Anchors: three shapes, five levels
#
# Each level has one anchor area, (8 s)², and three aspect ratios, height / width
# 0.5, 1 and 2: K = 3 shapes per location, 15 in all, from 32² px on P2 to 512² px on
# P6 (the FPN paper's choice; the original Faster R-CNN put 3 areas × 3 ratios on one
# map of stride 16). A ratio r gives width 8 s / √r and height 8 s √r, the same area.
# `base_anchors` gives a location's K shapes, centred on (0, 0):

# %%
rows = {}
ratios = model.config.anchor_ratios  # (0.5, 1.0, 2.0): height / width
for level, stride in enumerate(model.config.strides):
    shapes = base_anchors(stride, model.config.anchor_scales, ratios)  # (K, 4) xyxy px
    sizes = shapes[:, 2:] - shapes[:, :2]  # (K, 2) w, h
    rows[LEVELS[level]] = {"stride s": stride, "area": f"{8 * stride}²"} | {
        f"k = {k}: ratio {ratio}": f"{w:.1f} x {h:.1f}"
        for k, (ratio, (w, h)) in enumerate(zip(ratios, sizes.tolist(), strict=True))
    }
pd.DataFrame(rows).T

# %% [markdown]
# `model.anchors(feature_sizes)` (which calls `detutils.priors.anchor_boxes` with the
# config's strides, scales and ratios) shifts the K shapes onto every grid point
# (x s, y s) of every level, and returns them flattened as the head's maps are, with
# the number per level:

# %%
anchors, num_per_level = model.anchors(feature_sizes, device)  # (A, 4) xyxy px, 5 ints
offsets = level_offsets(num_per_level)
print(f"anchors {tuple(anchors.shape)}, per level {num_per_level}, offsets {offsets}")
assert num_per_level == [3 * s * s for s in sides] and len(anchors) == 25_575

# %% [markdown]
# 25,575 anchors at 320 px, three quarters of them on P2. Where the image's centre
# (160, 160) is a grid point (P2 to P5), the three anchors of that location are drawn
# over the image; on P6 (stride 64) the nearest grid point is (128, 128). Left: the
# image; right: the same anchors zoomed out: each anchor of P6 has 2.6 times the
# image's area.

# %%
colours = ["tab:red", "tab:orange", "tab:green", "tab:blue", "tab:purple"]
fig, axes = plt.subplots(1, 2, figsize=(12, 6))
for ax, limits in zip(axes, [(0, 320), (-260, 580)], strict=True):
    ax.imshow(image.permute(1, 2, 0), extent=(0, 320, 320, 0))
    for level, stride in enumerate(model.config.strides):
        width = feature_sizes[level][1]
        x = y = min(160 // stride, width - 1) if 160 % stride == 0 else 128 // stride
        first = flat_prior_index(level, y, x, feature_sizes, 0, K)
        for k in range(K):
            x1, y1, x2, y2 = anchors[first + k].tolist()
            style = {"color": colours[level], "lw": 2, "ls": ["--", "-", ":"][k]}
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, **style))
        ax.plot([], [], color=colours[level], label=f"{LEVELS[level]}: area {8 * stride}², "
                f"centre ({x * stride}, {y * stride})")  # fmt: skip
    ax.set_xlim(*limits)
    ax.set_ylim(limits[1], limits[0])
axes[0].set_title("on the image (dashed: ratio 0.5, solid: 1, dotted: 2)")
axes[1].set_title("zoomed out: P5 and P6 reach far beyond the image")
axes[1].legend(fontsize=8, loc="lower right")
plt.tight_layout()
plt.show()

# %% [markdown]
# The flat index. The maps are flattened level by level, row-major, with the K anchors
# of one location adjacent (mmdet's layout, `model.flatten`): the anchor k of location
# (y, x) on level l is number `offset_l + (y W_l + x) K + k`. Its logit is channel k
# of the level's objectness map, its deltas channels 4 k to 4 k + 3 of the delta map.
# For P4 (offset 19200 + 4800 = 24000, W = 20), y = 7, x = 12, k = 2:

# %%
level, y, x, k = 2, 7, 12, 2
index = offsets[level] + (y * feature_sizes[level][1] + x) * K + k
assert index == flat_prior_index(level, y, x, feature_sizes, anchor=k, anchors_per_location=K)
# (B, A), (B, A, 4)
flat_objectness, flat_deltas = model.flatten(outputs.objectness, outputs.deltas)
stride = model.config.strides[level]
shape_k = base_anchors(stride, model.config.anchor_scales, model.config.anchor_ratios)[k]
assert torch.equal(anchors[index].cpu(), shape_k + torch.tensor([x, y, x, y]) * stride)
assert flat_objectness[0, index] == outputs.objectness[level][0, k, y, x]
assert torch.equal(flat_deltas[0, index], outputs.deltas[level][0, 4 * k : 4 * k + 4, y, x])
print(f"index {index}: anchor {[round(v, 1) for v in anchors[index].tolist()]}, "
      f"centre ({x * stride}, {y * stride}), ratio {model.config.anchor_ratios[k]}")  # fmt: skip

# %% [markdown]
# ## 5. Max-IoU assignment
#
# Which anchors learn "object", and which box? The RPN's `MaxIoUAssigner` (mmdet;
# `detutils.assigners.assign_max_iou`) works from the IoU of every anchor with every
# box of the image:
#
# 1. every anchor starts ignored (`IGNORE`, −2);
# 2. an anchor whose best IoU with any box is below 0.3 is background (`BACKGROUND`,
#    −1);
# 3. an anchor whose best IoU reaches 0.7 is positive, and learns that box;
# 4. **low-quality matches**: every box whose best IoU with any anchor reaches
#    `min_pos_iou` 0.3 claims *all* the anchors at that best IoU, boxes taken in order.
#
# Anchors between 0.3 and 0.7 stay ignored: neither clearly an object nor clearly
# background, they never enter the loss. The RPN is class-agnostic, so the model passes
# labels of zeros: only "object" or "not" matters. On image 18:

# %%
agnostic = torch.zeros_like(gt_labels)  # (M,) one class: "object"
result = assign_max_iou(anchors, gt_boxes, agnostic, 0.7, 0.3, 0.3)  # fields (A,)
strict = assign_max_iou(anchors, gt_boxes, agnostic, 0.7, 0.3, 0.3, match_low_quality=False)
for name, assigned in [("with low-quality matches", result), ("without", strict)]:
    print(f"{name:24s}: {(assigned.gt_index >= 0).sum().item():3d} positives, "
          f"{(assigned.gt_index == BACKGROUND).sum().item()} negatives, "
          f"{(assigned.gt_index == IGNORE).sum().item()} ignored")  # fmt: skip

# %% [markdown]
# Of 25,575 anchors, 19 are positive, 568 ignored, and the rest, 98 %, background;
# 11 of the 19 positives come from low-quality matches. Per box:

# %%
ious = box_ops.box_iou(gt_boxes, anchors)  # (M, A)
anchor_level = torch.repeat_interleave(
    torch.arange(5, device=device), torch.tensor(num_per_level, device=device)
)  # (A,) level of each anchor
per_box = pd.DataFrame(
    {
        "class": [class_names[label] for label in gt_labels.tolist()],
        "w x h": [f"{w:.0f} x {h:.0f}" for w, h in box_sizes.tolist()],
        "best IoU": ious.max(dim=1).values.cpu(),
        "anchors >= 0.7": (ious >= 0.7).sum(dim=1).cpu(),
        "positives": [(result.gt_index == j).sum().item() for j in range(len(gt_boxes))],
        "without low-quality": [(strict.gt_index == j).sum().item() for j in range(len(gt_boxes))],
        "levels": [
            " ".join(LEVELS[lv] for lv in anchor_level[result.gt_index == j].unique().tolist())
            for j in range(len(gt_boxes))
        ],
    }
)
significant(per_box, 3)

# %% [markdown]
# The large ellipse (127 × 128 px, close to P4's 128² square) and the star (24 × 43,
# close to P2's tall 22.6 × 45.3 anchor) have anchors above 0.7 and get their positives
# from step 3. The other ellipse (85 × 102) and the hexagon of 25 × 17 fall *between*
# anchor sizes and shapes: their best anchors overlap them by 0.53 and 0.42. Without
# step 4 they would have no positive at all, and the RPN would learn to call them
# background wherever an anchor overlaps them by less than 0.3. The two smallest boxes
# (18 × 13 and 16 × 13) are so much smaller than the smallest anchors (32 × 32, 45 × 23)
# that no IoU reaches even 0.3: they get no positive, low-quality matches or not. Small
# objects are the RPN's known weakness; ATSS (notebook 21) was designed around this very
# failure of a fixed threshold.
#
# Positives in colour (one colour per box), ignored anchors as grey crosses at their
# centres:

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 6))
panels = [(result, "with low-quality matches"), (strict, "without: two boxes lose every positive")]
for ax, (assigned, title) in zip(axes, panels, strict=True):
    draw_assignment(image, anchors.cpu(), gt_boxes.cpu(), assigned.gt_index.cpu(), ax=ax,
                    gt_labels=gt_labels.cpu(), class_names=class_names,
                    show_background=False, title=title)  # fmt: skip
plt.tight_layout()
plt.show()

# %% [markdown]
# How common are such boxes? Every box of the first 250 images of the validation split
# against the same anchors (they depend only on the image size, 320 px for all):

# %%
all_boxes = torch.cat(
    [
        val_set.load_target(image_id)["boxes"].as_subclass(torch.Tensor)
        for image_id in val_set.image_ids[:250]
    ]
).to(device)  # (M_all, 4): the boxes of 250 images (the files are 320 px)
best_iou = torch.cat([box_ops.box_iou(chunk, anchors).max(dim=1).values
                      for chunk in all_boxes.split(512)])  # fmt: skip
shares = {
    "best IoU >= 0.7: positives from step 3": (best_iou >= 0.7).float().mean().item(),
    "0.3 <= best IoU < 0.7: only low-quality matches": (
        ((best_iou >= 0.3) & (best_iou < 0.7)).float().mean().item()
    ),
    "best IoU < 0.3: no positive at all": (best_iou < 0.3).float().mean().item(),
}
print(f"{len(all_boxes)} boxes")
for name, share in shares.items():
    print(f"{share:6.1%}  {name}")

# %% [markdown]
# On the shapes set, with its many small objects, 44 % of the boxes are trained only
# through low-quality matches: without them the RPN would never learn these objects;
# and 17 %, the smallest, get no positive at all. The anchors are dense in position
# (every 4 px on P2) but coarse in size and shape (an octave apart, three ratios), so a
# box between two sizes cannot reach 0.7: a square of side 45 px centred on a grid
# point, between the areas 32² and 64², has IoU 32² / 45² = 0.51 with P2's square
# anchor and 45² / 64² = 0.49 with P3's.
#
# **Ties.** A box claims *all* the anchors at its own best IoU, not just one. The
# 85 × 102 ellipse has six of them:

# %%
j = 1  # the 85 x 102 ellipse
claimed = torch.nonzero(ious[j] == ious[j].max()).squeeze(1)
claimed_rows = []
for a in claimed.tolist():
    lv = int(anchor_level[a])
    cell, k_a = divmod(a - offsets[lv], K)
    y_a, x_a = divmod(cell, feature_sizes[lv][1])
    claimed_rows.append({"anchor": a, "level": LEVELS[lv], "y": y_a, "x": x_a, "k": k_a,
                         "xyxy": tuple(round(v, 1) for v in anchors[a].tolist()),
                         "IoU": ious[j, a].item()})  # fmt: skip
assert torch.equal(claimed, torch.nonzero(result.gt_index == j).squeeze(1))
significant(pd.DataFrame(claimed_rows), 4)

# %% [markdown]
# The ellipse lies entirely inside each of these six 128-px squares of P4, so each
# overlaps it by the box's area over the anchor's, 85 × 102 / 128² = 0.529, exactly:
# all six learn it. Ties are common with axis-aligned boxes on a regular grid.
#
# **A later box overwrites an earlier one.** Step 4 takes the boxes in order, and a
# box's claim overrides whatever steps 3 or 4 gave the anchor before. The hand-made case
# of `tests/test_max_iou.py`: two anchors (A = 2) and two boxes, a 21 × 21 box that
# overlaps both anchors well, and a 10 × 10 box inside them that overlaps each by 0.25
# exactly, a tie.

# %%
toy_anchors = torch.tensor([[20.0, 20.0, 40.0, 40.0], [22.0, 22.0, 42.0, 42.0]])  # (2, 4)
toy_boxes = torch.tensor([[20.0, 20.0, 41.0, 41.0], [25.0, 25.0, 35.0, 35.0]])  # (M, 4)
toy_labels = torch.zeros(2, dtype=torch.long)
print("IoU (boxes x anchors):\n", box_ops.box_iou(toy_boxes, toy_anchors).numpy().round(4))
toy_rows = {}
for min_pos in (0.3, 0.2):
    for order, name in [([0, 1], "big box first"), ([1, 0], "small box first")]:
        toy = assign_max_iou(toy_anchors, toy_boxes[order], toy_labels, 0.7, 0.3, min_pos)
        owners = ["big" if order[i] == 0 else "small" for i in toy.gt_index.tolist()]
        toy_rows[(min_pos, name)] = {"anchor 0": owners[0], "anchor 1": owners[1]}
pd.DataFrame(toy_rows).T.rename_axis(["min_pos_iou", "box order"])

# %% [markdown]
# With the RPN's `min_pos_iou` 0.3 the small box's best IoU, 0.25, is too low to claim
# anything: both anchors learn the big box (IoUs 0.907 and 0.752, step 3). At 0.2 the
# small box claims both tied anchors; when it comes second, it takes them from the big
# box, which is left with **no positive at all**. When it comes first, the big box
# claims its own best anchor back (0.907) and the small box keeps the other. On the
# test's boxes (these two among others, the big one first) mmdet 3.3 assigns the same:
# the test keeps its numbers. torchvision's
# `Matcher` differs here: a claimed anchor goes to the box it overlaps most, and there
# is no `min_pos_iou`.
#
# ## 6. Sampling 256 anchors
#
# An image has a few dozen positives and some 25,000 negatives. The RPN does not weigh
# them, as a focal loss does; it draws a sample: `sample_random(result, 256, 0.5)`
# (mmdet's `RandomSampler`) takes at most 128 positives at random, then negatives at
# random to fill up to 256. Ignored anchors are never drawn. It draws from torch's
# global random stream, which the trainer seeds.

# %%
torch.manual_seed(0)
pos_index, neg_index = sample_random(result, 256, 0.5)  # (P,), (N,) anchor indices
num_pos, num_neg = (result.gt_index >= 0).sum().item(), (result.gt_index == BACKGROUND).sum().item()
print(f"sampled {len(pos_index)} positives (of {num_pos}) and {len(neg_index)} negatives "
      f"(of {num_neg})")  # fmt: skip

# %% [markdown]
# Over the first eight images of the validation split (the anchors do not depend on
# the image, only the boxes do):

# %%
torch.manual_seed(0)
rows = []
for val_index, image_id in enumerate(val_set.image_ids[:8]):
    boxes = val_set.load_target(image_id)["boxes"].as_subclass(torch.Tensor).to(device)
    agnostic_labels = torch.zeros(len(boxes), dtype=torch.long, device=device)
    assigned = assign_max_iou(anchors, boxes, agnostic_labels, 0.7, 0.3, 0.3)
    positives = (assigned.gt_index >= 0).sum().item()
    negatives = (assigned.gt_index == BACKGROUND).sum().item()
    pos, neg = sample_random(assigned, 256, 0.5)
    rows.append({
        "val image": val_index, "boxes": len(boxes), "positives": positives,
        "negatives": negatives, "ignored": (assigned.gt_index == IGNORE).sum().item(),
        "sampled pos": len(pos), "sampled neg": len(neg),
        "pos share before": positives / (positives + negatives),
        "pos share after": len(pos) / (len(pos) + len(neg)),
    })  # fmt: skip
sampling = pd.DataFrame(rows).set_index("val image")
significant(sampling, 3)

# %% [markdown]
# Before sampling, positives are at most 0.2 % of the anchors that could enter the
# loss; after it, 1 % to 18 %. No image here comes near 128 positives, so every
# positive is taken and negatives fill the rest: for image 0, 28 positives against
# 24,593 negatives (1 : 880) become 28 against 228 (1 : 8). The negatives drawn change
# at every step, so over training every background anchor is seen now and then.
#
# Had an image more than 128 positives (a hand-made result, 300 positives and 25,000
# negatives), the cap would show; and with `num` above the number of candidates the
# sampler takes every positive and every negative, whatever the random stream, which
# the tests use to compare with mmdet without sharing its random numbers:

# %%
crowded = torch.tensor([0] * 300 + [BACKGROUND] * 25_000 + [IGNORE] * 275)
crowded = AssignResult(crowded, crowded.clone(), torch.zeros(len(crowded)))
pos, neg = sample_random(crowded, 256, 0.5)
print(f"crowded image: {len(pos)} positives, {len(neg)} negatives sampled")
for seed in (0, 1):
    torch.manual_seed(seed)
    pos, neg = sample_random(result, 10**6, 0.5)
    print(f"num = 10**6, seed {seed}: {len(pos)} positives, {len(neg)} negatives: "
          f"{torch.equal(pos, torch.nonzero(result.gt_index >= 0).squeeze(1))}")  # fmt: skip

# %% [markdown]
# ## 7. The RPN loss
#
# Over the sampled anchors of a batch, with z the objectness logit, t = 1 for a
# positive and 0 for a negative, d the predicted and d* the target deltas:
#
# L_cls = (1 / N) Σ_sampled BCE(z, t),   L_bbox = (1 / N) Σ_sampled positives |d − d*|₁
#
# where d* = ((g_x − a_x) / a_w, (g_y − a_y) / a_h, log(g_w / a_w), log(g_h / a_h)), the
# delta-xywh coder of notebook 02 with stds 1 (the RoI head uses 0.1, 0.1, 0.2, 0.2).
# Both terms have weight 1. The normaliser N is the number of sampled anchors of the
# batch, but mmdet counts **at least one positive and one negative per image**: an
# image without boxes, whose 256 samples are all negatives, counts 257. (The paper
# divided the class term by 256 and the box term by the number of anchor locations,
# about 2400, with a weight of 10; mmdet uses one normaliser and L1 in place of smooth
# L1.)
#
# A tiny case by hand: four anchors of 16 × 16 px, a batch of two images. Image 0 has
# one box, 18 × 16; image 1 has none.

# %%
tiny_anchors = torch.tensor([[0.0, 0, 16, 16], [8, 0, 24, 16], [32, 32, 48, 48], [0, 32, 16, 48]])
tiny_box = torch.tensor([[1.0, 0, 19, 16]])  # (M, 4), image 0
print("IoU with the box:", box_ops.box_iou(tiny_box, tiny_anchors)[0].numpy().round(4))
tiny = [
    assign_max_iou(tiny_anchors, tiny_box, torch.zeros(1, dtype=torch.long), 0.7, 0.3, 0.3),
    assign_max_iou(tiny_anchors, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long),
                   0.7, 0.3, 0.3),
]  # fmt: skip
tiny_gt_index = torch.stack([r.gt_index for r in tiny])  # (B, A)
tiny_sampled = torch.stack(
    [
        torch.zeros(4, dtype=torch.bool).index_fill(0, torch.cat(sample_random(r, 256, 0.5)), True)
        for r in tiny
    ]
)  # (B, A): 256 is more than there are, so every positive and negative
print("gt_index:", tiny_gt_index.tolist(), " sampled:", tiny_sampled.int().tolist())

# %% [markdown]
# Anchor 0 overlaps the box by 0.789: positive. Anchor 1 by 0.478: ignored. Anchors 2
# and 3 do not touch it: negative. Image 1 has no box: all four are negatives. So 7
# anchors are sampled, but N = (1 + 2) + (max(0, 1) + 4) = 8. Made-up logits and
# deltas, then the loss by hand:

# %%
tiny_logits = torch.tensor([[2.0, 0.5, -1.0, 0.0], [-2.0, 1.0, 0.0, -3.0]])  # (B, A)
tiny_deltas = torch.zeros(2, 4, 4)  # (B, A, 4)
tiny_deltas[0, 0] = torch.tensor([0.1, 0.0, 0.05, -0.1])  # the positive's prediction


def bce(logit, positive):
    """Binary cross-entropy of one logit: -log sigmoid(z) or -log(1 - sigmoid(z))."""
    return math.log(1 + math.exp(-logit)) if positive else math.log(1 + math.exp(logit))


cls_sum = bce(2.0, True) + bce(-1.0, False) + bce(0.0, False)  # image 0: anchors 0, 2, 3
cls_sum += bce(-2.0, False) + bce(1.0, False) + bce(0.0, False) + bce(-3.0, False)  # image 1
# target deltas of anchor 0 (centre (8, 8), 16 x 16) for the box (centre (10, 8), 18 x 16)
target = [(10 - 8) / 16, (8 - 8) / 16, math.log(18 / 16), math.log(16 / 16)]
l1_sum = sum(abs(p - t) for p, t in zip([0.1, 0.0, 0.05, -0.1], target, strict=True))
normaliser = (1 + 2) + (1 + 4)  # each image: max(P, 1) + max(negatives, 1)
by_hand = {"rpn_cls": cls_sum / normaliser, "rpn_bbox": l1_sum / normaliser}
tiny_loss = rpn_loss(tiny_logits, tiny_deltas, tiny_anchors, tiny_gt_index, tiny_sampled,
                     tiny_box[None].expand(2, 1, 4))  # fmt: skip
for name, value in by_hand.items():
    print(f"{name}: by hand {value:.5f}, rpn_loss {tiny_loss[name].item():.5f}")
    assert math.isclose(value, tiny_loss[name].item(), rel_tol=1e-5)
torch.testing.assert_close(
    encode_delta_xywh(tiny_anchors[0], tiny_box[0], stds=model.config.rpn_stds),
    torch.tensor(target),
)

# %% [markdown]
# Had N been the 7 anchors actually sampled, both terms would be 8 / 7 larger. With 256
# samples per image the extra count changes little (257 instead of 256 for an image
# without boxes); the course keeps it to match mmdet to the last digit. The box term
# only sees positives; image 1 adds to the class term (its negatives) and to N.
#
# The same on a real batch: images 18 and 7 of the validation split, and a plain grey
# image without any object. In training mode `model(images)` gives the maps, and
# `model.assign` assigns and samples every image of the batch (one batched call of the
# assigner on the shared anchors, then the sampler per image, from the global stream):

# %%
image_7, target_7 = val_set[7]
batch = torch.stack([image, image_7, torch.full_like(image, 0.5)]).to(device)  # (B, 3, H, W)
batch_targets = [
    {"boxes": gt_boxes, "labels": gt_labels},
    {"boxes": target_7["boxes"].to(device), "labels": target_7["labels"].to(device)},
    {"boxes": torch.zeros(0, 4, device=device),
     "labels": torch.zeros(0, dtype=torch.long, device=device)},
]  # fmt: skip
torch.manual_seed(0)
batch_outputs = model.train()(batch)
assignment = model.assign(batch_outputs, batch_targets)  # both stages; here: .rpn, .rpn_sampled
sampled_positive = (assignment.rpn_sampled & (assignment.rpn.gt_index >= 0)).sum(dim=1)  # (B,)
sampled_all = assignment.rpn_sampled.sum(dim=1)  # (B,)
counted = sampled_positive.clamp(min=1) + (sampled_all - sampled_positive).clamp(min=1)
pd.DataFrame(
    {
        "boxes": [len(t["boxes"]) for t in batch_targets],
        "sampled positives": sampled_positive.cpu(),
        "sampled negatives": (sampled_all - sampled_positive).cpu(),
        "counted in N": counted.cpu(),
    },
    index=["val 18", "val 7", "grey, no box"],
)

# %%
batch_objectness, batch_deltas = model.flatten(batch_outputs.objectness, batch_outputs.deltas)
losses = rpn_loss(batch_objectness, batch_deltas, anchors, assignment.rpn.gt_index,
                  assignment.rpn_sampled, assignment.gt_boxes)  # fmt: skip
full = model.loss(batch_outputs, batch_targets, assignment)  # both stages
N = counted.sum().item()
print(f"N = {N} (sampled: {sampled_all.sum().item()})")
S = sampled_all.sum().item()
print(f"rpn_cls {losses['rpn_cls'].item():.4f} (ln 2 x {S} / {N} = {math.log(2) * S / N:.4f})")
print(f"rpn_bbox {losses['rpn_bbox'].item():.4g}")
for name in ("rpn_cls", "rpn_bbox"):
    torch.testing.assert_close(full[name], losses[name])
print("model.loss returns", list(full))

# %% [markdown]
# The untrained RPN says about 0.5 for every anchor, so each sampled anchor costs about
# ln 2 and the class term is close to ln 2 × 768 / 769: the grey image's missing
# positive adds one to N. The box term is small because the untrained deltas are near 0
# and each positive's target deltas are small too (its anchor overlaps its box by 0.3 or
# more). `model.loss` returns the same two RPN terms next to the RoI head's (notebook
# 51) and their sum.
#
# This is mmdet's loss: on the inputs of `tests/test_faster_rcnn_model.py` (three
# images, one without boxes, random maps, every candidate sampled), mmdet 3.3 computes
# `loss_rpn_cls` 1.061051 and `loss_rpn_bbox` 0.002608352, divided by 11,560 = 11,559
# sampled anchors + 1 for the image without boxes; `rpn_loss` matches both within a
# relative 2 × 10⁻⁶.
#
# ## 8. From maps to proposals
#
# At test time, and in training for the RoI head's sake, the RPN's maps become
# proposals (mmdet's `RPNHead.predict_by_feat`, `model.propose`):
#
# 1. per level, the `nms_pre` anchors of highest objectness probability (the preset at
#    test time: 500; mmdet: 1000; training: 1000 and 2000);
# 2. their deltas decoded (stds 1) and the boxes clipped to the image;
# 3. boxes of zero width or height dropped (`detutils.postprocess.select_proposals`);
# 4. NMS at IoU 0.7 **within each level**: `batched_nms` with the level as the "class",
#    so a box of P2 never suppresses one of P3;
# 5. the best `max_num` of all levels (the preset: 500; mmdet: 1000), best first.
#
# Step by step on image 18, with the untrained network in eval mode:


# %%
def proposals_by_hand(flat_objectness, flat_deltas, nms_pre, max_num, image_size=(320, 320)):
    """One image's proposals, step by step -> (boxes (P, 4), scores (P,), levels (P,), table)."""
    scores_all = flat_objectness.sigmoid()  # (A,)
    boxes, scores, levels, table = [], [], [], {}
    for level, (start, count) in enumerate(zip(offsets, num_per_level, strict=True)):
        top_scores, top = scores_all[start : start + count].topk(min(nms_pre, count))
        decoded = decode_delta_xywh(anchors[start + top], flat_deltas[start + top],
                                    stds=model.config.rpn_stds, max_shape=image_size)  # fmt: skip
        nonempty = (decoded[:, 2] > decoded[:, 0]) & (decoded[:, 3] > decoded[:, 1])
        decoded, top_scores = decoded[nonempty], top_scores[nonempty]
        kept = batched_nms(decoded, top_scores, torch.zeros_like(top_scores).long(), 0.7)
        table[LEVELS[level]] = {"anchors": count, "top-k": len(top), "non-empty":
                                int(nonempty.sum()), "after NMS": len(kept)}  # fmt: skip
        boxes.append(decoded)
        scores.append(top_scores)
        levels.append(torch.full_like(top_scores, level).long())
    boxes, scores, levels = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
    keep = batched_nms(boxes, scores, levels, 0.7)[:max_num]  # NMS per level, then the best
    for level, name in enumerate(LEVELS):
        table[name]["kept"] = int((levels[keep] == level).sum())
    return boxes[keep], scores[keep], levels[keep], pd.DataFrame(table).T


model = model.eval()
outputs = model(images)
flat_objectness, flat_deltas = model.flatten(outputs.objectness, outputs.deltas)
config = model.config
boxes, scores, levels, table = proposals_by_hand(
    flat_objectness[0], flat_deltas[0], config.test_nms_pre, config.test_proposals
)
assert torch.equal(boxes, outputs.proposals[0]) and torch.equal(scores, outputs.proposal_scores[0])
print(f"objectness of the 500 proposals: {scores.min():.3f} to {scores.max():.3f}")
table.loc["total"] = table.sum()
table

# %% [markdown]
# `model.propose` (called by `forward`) gives the very same 500 boxes. Of the 1875
# candidates, NMS within the levels removes more than half on every level: with deltas
# near zero the decoded boxes sit on their anchors, and neighbouring anchors overlap by
# more than 0.7 (two 32-px squares of P2, 4 px apart: IoU 28 / 36 = 0.78). The best
# 500 of the 680 survivors are then mostly from P2 and P3, whose scores happen to be
# higher. Untrained, the scores differ only by noise, so which 500 survive says nothing
# yet.
#
# No box was empty: an anchor's centre lies inside the image, and small deltas keep it
# there. A box becomes empty after clipping when the deltas push it out of the image
# altogether, for example P2's first anchor (centred on the corner (0, 0)) moved left by
# two widths:

# %%
corner = anchors[1].cpu()  # P2, y = x = 0, k = 1: the 32 x 32 square centred on (0, 0)
pushed = decode_delta_xywh(corner, torch.tensor([-2.0, 0.0, 0.0, 0.0]), max_shape=(320, 320))
two = torch.stack([pushed, corner.clamp(0, 320)])  # (2, 4)
kept, kept_scores = select_proposals(two, torch.tensor([0.9, 0.8]), torch.zeros(2).long())
print("decoded and clipped:", pushed.tolist(), "-> kept:", kept.tolist())

# %% [markdown]
# **No gradient through the proposals.** In training mode the maps carry gradients, the
# proposals do not:

# %%
train_outputs = model.train()(images)
model = model.eval()
print("objectness requires grad:", train_outputs.objectness[0].requires_grad)
print("proposals requires grad: ", train_outputs.proposals[0].requires_grad,
      f"({len(train_outputs.proposals[0])} proposals in training mode)")  # fmt: skip

# %% [markdown]
# `propose` runs under `torch.no_grad()`. The RoI head treats the proposals as fixed
# boxes: it pools features inside them and learns targets relative to them, and its loss
# does not say how the proposal's coordinates should have moved. The RPN learns its
# boxes from its own loss only (section 7). Ren et al. call this *approximate joint
# training*: the exact gradient would need a pooling layer differentiable with respect
# to the box coordinates (torchvision's `roi_align` gives none for the boxes), and the
# choice of the boxes by top-k and NMS has no gradient at all. mmdet and torchvision
# detach the proposals in the same way.
#
# **What a trained RPN would propose.** Write into the untrained maps what an ideal RPN
# would emit at the positive anchors of section 5: a high logit, 10 × the anchor's IoU
# with its box, and the deltas that move the anchor exactly onto its box. The other
# anchors keep their untrained values (about 0.5).

# %%
ideal_objectness, ideal_deltas = flat_objectness[0].clone(), flat_deltas[0].clone()
positive = torch.nonzero(result.gt_index >= 0).squeeze(1)  # (P,)
ideal_objectness[positive] = 10 * result.iou[positive]
ideal_deltas[positive] = encode_delta_xywh(anchors[positive], gt_boxes[result.gt_index[positive]],
                                           stds=config.rpn_stds)  # fmt: skip
ideal = proposals_by_hand(ideal_objectness, ideal_deltas, config.test_nms_pre,
                          config.test_proposals)  # fmt: skip
confident = ideal[1] > 0.9  # the proposals from the positive anchors
print(f"{len(positive)} positive anchors -> {int(confident.sum())} proposals above 0.9")
print("their levels:", [LEVELS[lv] for lv in ideal[2][confident].tolist()])

# %% [markdown]
# Every positive anchor decodes onto its box, so on one level all the positives of a
# box give the same box and NMS keeps one. Here each box has its positives on one
# level: four boxes, four proposals. A box with positives on two levels would keep one
# proposal on each, since NMS runs within levels; the RoI head does not mind two
# proposals on one object, its own NMS per class removes the duplicate detection.
#
# Left: the best 100 proposals of the untrained RPN, near their anchors, all on P2 and
# in two clusters where the random features happen to respond most; right: the
# confident proposals of the ideal maps, on the four objects that have positives,
# tagged with their level and objectness.

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 6))
axes[0].imshow(image.permute(1, 2, 0), extent=(0, 320, 320, 0))
for (x1, y1, x2, y2), level in zip(boxes[:100].tolist(), levels[:100].tolist(), strict=True):
    axes[0].add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1,
                                    color=colours[level]))  # fmt: skip
for level in levels[:100].unique().tolist():
    axes[0].plot([], [], color=colours[level], label=LEVELS[level])
axes[0].set_xlim(0, 320)
axes[0].set_ylim(320, 0)
axes[0].legend(loc="lower right", fontsize=8)
axes[0].set_title("untrained RPN: the best 100 proposals")
draw_boxes(image, ideal[0][confident].cpu(), ideal[2][confident].cpu(), ideal[1][confident].cpu(),
           class_names=LEVELS, ax=axes[1], title="ideal maps: proposals above 0.9")  # fmt: skip
plt.tight_layout()
plt.show()

# %% [markdown]
# The two smallest boxes have no positive anchor (section 5), so even an RPN trained to
# perfection on these targets proposes nothing for them. At test time the RoI head can
# find them only through a proposal that happens to cover them; in training it also
# receives the ground-truth boxes as proposals (notebook 51).
#
# ## Recap
#
# - A two-stage detector: the RPN proposes class-agnostic boxes, the RoI head
#   classifies and refines features pooled from each. Faster R-CNN R50-FPN: 41,753,056
#   parameters (ResNet-50 23,508,032, FPN 3,344,384, RPN 593,935, RoI head 14,306,705).
# - Pyramid P2 to P6, strides 4 to 64, P6 a max-pool of P5 without weights; per level
#   objectness `(B, K, H, W)` and deltas `(B, 4 K, H, W)`, one shared 3 × 3 conv and
#   two 1 × 1 convs, K = 3.
# - Anchors: area (8 s)², ratios 0.5, 1, 2, centred on (x s, y s); 25,575 at 320 px;
#   flat index `offset + (y W + x) K + k`.
# - Max-IoU: positive from 0.7, negative below 0.3, ignored between; low-quality
#   matches give every box with a best IoU of at least 0.3 all its anchors at that IoU
#   (ties included, later boxes overwriting earlier ones). On the shapes set 44 % of the
#   boxes depend on them, 17 % get no positive at all.
# - Sampler: at most 128 positives and negatives up to 256 per image; about 1 : 1000
#   becomes about 1 : 10.
# - Loss: BCE over the sampled anchors + L1 on the positives' deltas (stds 1), both
#   divided by the sampled anchors of the batch, each image counting at least one
#   positive and one negative.
# - Proposals: top-k per level, decode and clip, empty boxes dropped, NMS 0.7 within each
#   level, the best 1000 (preset 500), no gradient.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** An input of H × W = 416 × 608 px (both multiples of 32). Derive by
# hand the number of anchors of each level, `anchors_per_level` (a list of five ints,
# P2 first), and the flat index `p4_index` (an int) of the anchor k = 2 (ratio 2) at
# P4, y = 5, x = 7. Remember how P6's max-pool of stride 2 rounds an odd side.

# %% tags=["solution"]
anchors_per_level = None  # list of 5 ints, P2 .. P6
p4_index = None  # int
### BEGIN SOLUTION
# Sides: 416 / 4 = 104, 608 / 4 = 152; then 52 x 76, 26 x 38, 13 x 19; P6 = ceil: 7 x 10.
exercise_sizes = [(104, 152), (52, 76), (26, 38), (13, 19), (7, 10)]
anchors_per_level = [3 * h * w for h, w in exercise_sizes]
p4_index = anchors_per_level[0] + anchors_per_level[1] + (5 * 38 + 7) * 3 + 2
### END SOLUTION
print(anchors_per_level, p4_index)

# %% tags=["check"]
with torch.no_grad():  # the preset's own pyramid at 416 x 608 px
    pyramid = model.neck(model.backbone(torch.zeros(1, 3, 416, 608, device=device)))
pyramid_sizes = [tuple(p.shape[-2:]) for p in pyramid]
check_equal(
    "anchors_per_level", anchors_per_level, model.anchors(pyramid_sizes)[1],
    hint="K = 3 anchors per location: 3 (H / s) (W / s) for s = 4 .. 32; P6 takes every "
    "other pixel of P5 (13 x 19), so its side is ceil(13 / 2) x ceil(19 / 2).",
)  # fmt: skip
check_equal(
    "p4_index", p4_index, flat_prior_index(2, 5, 7, pyramid_sizes, 2, 3),
    hint="offset of P4 (the anchors of P2 and P3) + (y W + x) K + k, with W = 608 / 16 = 38.",
)  # fmt: skip
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** A thin bar, `bar = (150, 40, 162, 130)` xyxy px (12 × 90), in an
# image of 320 px. Find its best IoU over the 25,575 anchors, `bar_best_iou` (a
# number), the anchors it claims by a low-quality match, `bar_claimed` (a 1-D tensor of
# flat indices, ascending), and `bar_strong`, the number of anchors that overlap it by
# 0.7 or more (an int). You may use `box_ops.box_iou` and `anchors`, not
# `assign_max_iou`.

# %% tags=["solution"]
bar = torch.tensor([[150.0, 40.0, 162.0, 130.0]], device=device)  # (1, 4)
bar_best_iou = None  # number
bar_claimed = None  # (n,) long, ascending
bar_strong = None  # int
### BEGIN SOLUTION
bar_ious = box_ops.box_iou(bar, anchors)[0]  # (A,)
bar_best_iou = bar_ious.max().item()
bar_claimed = torch.nonzero(bar_ious == bar_ious.max()).squeeze(1)
bar_strong = int((bar_ious >= 0.7).sum())
### END SOLUTION
print(bar_strong, bar_claimed)

# %% tags=["check"]
bar_result = assign_max_iou(anchors, bar, torch.zeros(1, dtype=torch.long, device=device),
                            0.7, 0.3, 0.3)  # fmt: skip
check_close(
    "bar_best_iou", bar_best_iou, bar_result.iou.max(),
    hint="the largest entry of box_iou(bar, anchors): the bar is thinner than even the "
    "tall anchors (ratio 2), so it stays well below 0.7.",
)  # fmt: skip
check_equal(
    "bar_claimed", bar_claimed, torch.nonzero(bar_result.gt_index == 0).squeeze(1),
    hint="every anchor whose IoU equals the best one, ties included: compare the IoUs with "
    "their max using ==, then torch.nonzero(...).squeeze(1).",
)  # fmt: skip
check_equal(
    "bar_strong", bar_strong, 0,
    hint="count the anchors with IoU >= 0.7; the best IoU already tells you the answer.",
)  # fmt: skip
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** Write `rpn_normaliser(gt_index, sampled)`: the N that divides the
# RPN loss, from an assignment's `gt_index` (B, A) (box index, `BACKGROUND` or `IGNORE`)
# and the sampler's mask `sampled` (B, A) bool. Each image counts its sampled anchors,
# but at least one positive and at least one negative. The check compares with the N
# that `rpn_loss` divides by, on the batch of section 7 and on small cases.

# %% tags=["solution"]
rpn_normaliser = None  # your function (gt_index (B, A), sampled (B, A) bool) -> number
### BEGIN SOLUTION


def rpn_normaliser(gt_index, sampled):
    positives = (sampled & (gt_index >= 0)).sum(dim=1)  # (B,)
    negatives = sampled.sum(dim=1) - positives  # (B,)
    return (positives.clamp(min=1) + negatives.clamp(min=1)).sum().item()


### END SOLUTION


# %% tags=["check"]
def normaliser_of_rpn_loss(gt_index, sampled):
    """N read back from rpn_loss: with every logit 0 each sampled anchor costs ln 2."""
    batch_size, num_anchors = gt_index.shape
    loss = rpn_loss(
        torch.zeros(batch_size, num_anchors), torch.zeros(batch_size, num_anchors, 4),
        torch.tensor([[0.0, 0.0, 10.0, 10.0]]).expand(num_anchors, 4), gt_index.cpu(),
        sampled.cpu(), torch.tensor([[0.0, 0.0, 10.0, 10.0]]).expand(batch_size, 4, 4),
    )["rpn_cls"]  # fmt: skip
    return math.log(2) * sampled.sum().item() / loss.item()


P, G, X = 0, BACKGROUND, IGNORE  # a positive (of box 0), background, ignored
check_function(
    "rpn_normaliser", rpn_normaliser,
    [(torch.tensor([[P, G, X, G]]), torch.tensor([[True, True, False, True]]))],
    normaliser_of_rpn_loss,
    hint="one image with a positive and two negatives sampled: 3; sampled & (gt_index >= 0) "
    "are the positives, the other sampled anchors the negatives.",
)  # fmt: skip
check_function(
    "rpn_normaliser", rpn_normaliser,
    [(torch.tensor([[G, G, G, G], [P, P, X, G]]), torch.tensor([[True] * 4, [True] * 4])),
     (assignment.rpn.gt_index.cpu(), assignment.rpn_sampled.cpu())],
    normaliser_of_rpn_loss,
    hint="per image max(positives, 1) + max(negatives, 1), then the sum over the batch: an "
    "image without positives still counts one.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "rpn_normaliser", rpn_normaliser,
    [(torch.tensor([[P, P, X], [X, X, G], [P, G, G]]),
      torch.tensor([[True, True, False], [False, False, True], [True, False, True]]))],
    normaliser_of_rpn_loss,
    hint="an image whose sampled anchors are all positive still counts one negative",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 3")

# %% [markdown]
# **Exercise 4.** The NMS of the proposals runs within each level. Write
# `suppresses(box, level, other, other_level)`: True when the proposal `box` (4,) of
# level `level`, scored higher, removes the proposal `other` (4,) of `other_level` in
# the NMS at IoU 0.7 of `model.propose` (torchvision's `nms` removes a box whose IoU
# with a kept, better box is *above* the threshold). The check runs two-box cases
# through `select_proposals`.

# %% tags=["solution"]
suppresses = None  # your function (box (4,), level int, other (4,), other_level int) -> bool
### BEGIN SOLUTION


def suppresses(box, level, other, other_level):
    iou = box_ops.box_iou(box[None], other[None])[0, 0]
    return bool(level == other_level and iou > 0.7)


### END SOLUTION


# %% tags=["check"]
def suppresses_in_select_proposals(box, level, other, other_level):
    """1.0 when select_proposals keeps only the better of the two boxes."""
    kept, _ = select_proposals(torch.stack([box, other]), torch.tensor([0.9, 0.8]),
                               torch.tensor([level, other_level]), 0.7, 10)  # fmt: skip
    return float(len(kept) == 1)


square = torch.tensor([0.0, 0.0, 100.0, 100.0])
check_function(
    "suppresses", suppresses,
    [(square, 1, torch.tensor([0.0, 0.0, 100.0, 80.0]), 1),  # IoU 0.8, same level
     (square, 1, torch.tensor([0.0, 0.0, 100.0, 50.0]), 1)],  # IoU 0.5
    suppresses_in_select_proposals,
    hint="on one level, NMS removes the worse box when its IoU with the better one is above "
    "0.7 (box_ops.box_iou of the two boxes).",
)  # fmt: skip
check_function(
    "suppresses", suppresses,
    [(square, 0, square.clone(), 1)],  # the same box on P2 and on P3
    suppresses_in_select_proposals,
    hint="the levels act as classes in batched_nms: boxes of different levels never "
    "suppress each other, whatever their IoU.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "suppresses", suppresses,
    [(square, 3, torch.tensor([0.0, 0.0, 75.0, 100.0]), 3),
     (square, 2, torch.tensor([5.0, 5.0, 100.0, 100.0]), 4),
     (square, 2, torch.tensor([200.0, 200.0, 300.0, 300.0]), 2)],
    suppresses_in_select_proposals,
    hint="same level and IoU > 0.7, nothing else",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 4")

# %% [markdown]
# ## Further reading
#
# - S. Ren, K. He, R. Girshick, J. Sun, *Faster R-CNN: Towards Real-Time Object
#   Detection with Region Proposal Networks*, NeurIPS 2015 (the RPN, anchors, the 0.7 /
#   0.3 rule with the best anchor of each box, 256 sampled anchors, approximate joint
#   training), <https://arxiv.org/abs/1506.01497>
# - T.-Y. Lin et al., *Feature Pyramid Networks for Object Detection*, CVPR 2017 (P2 to
#   P6, one anchor area per level, the RPN shared over levels),
#   <https://arxiv.org/abs/1612.03144>
# - Z. Zong, G. Song, Y. Liu, *DETRs with Collaborative Hybrid Assignments Training*,
#   ICCV 2023 (Co-DETR: an RPN and an RoI head as auxiliary heads),
#   <https://arxiv.org/abs/2211.12860>
# - mmdet: `configs/_base_/models/faster-rcnn_r50_fpn.py`, `RPNHead`
#   (`mmdet/models/dense_heads/rpn_head.py`), `MaxIoUAssigner`
#   (`mmdet/models/task_modules/assigners/max_iou_assigner.py`), `RandomSampler`
#   (`mmdet/models/task_modules/samplers/random_sampler.py`),
#   <https://github.com/open-mmlab/mmdetection>
# - torchvision: `RegionProposalNetwork` and `AnchorGenerator`
#   (`torchvision/models/detection/rpn.py`, `anchor_utils.py`), `Matcher`
#   (`_utils.py`): the same design with 2000 proposals kept in training, a smooth L1 box
#   loss and the low-quality rule of section 5's last paragraph,
#   <https://github.com/pytorch/vision>
