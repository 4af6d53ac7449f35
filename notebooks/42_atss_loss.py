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
# # 42 · ATSS: focal, GIoU and centerness losses
#
# ATSS (Zhang et al., 2020) chooses, for every ground-truth box, the few anchors that
# learn it (notebook 41; notebook 21 ran the same selection on NanoDet's grid cells).
# What do those anchors, and all the others, learn? The ATSS head (notebook 40) has
# three outputs per anchor and one loss term for each:
#
# - **sigmoid focal loss** (RetinaNet, Lin et al., 2017) on the C class logits of
#   *every* anchor: the positives learn their class, everything else learns
#   "background", and the many easy background anchors are turned down;
# - **GIoU loss** (Rezatofighi et al., 2019) on the boxes decoded from the positives'
#   deltas, each weighted by how central its anchor sits in its box;
# - **centerness** (FCOS, Tian et al., 2019): a binary cross-entropy that teaches one
#   more logit per anchor to predict that centrality, which multiplies the class score
#   at test time.
#
# This notebook writes each term by hand on small cases, explains the two numbers
# every focal-loss detector carries (the class bias −4.595 and α = 0.25), computes the
# loss of one real batch step by step with every shape, and checks the course's
# `atss_loss` against the values mmdet 3.3 computed on the same inputs.
#
# **Learning goals**
#
# 1. Write the sigmoid focal loss, plot it against the probability of the true class,
#    and explain why the class bias starts at −4.595 and why α is 0.25.
# 2. Compute the normaliser: the positives of the batch, each image counting at least
#    once, averaged over processes.
# 3. Decode the positives' deltas into boxes and compute their GIoU loss, weighted by
#    the centerness targets; say why the weights focus the box loss on central anchors.
# 4. Compute the centerness term, and the whole loss of a real batch with every shape,
#    and match `ATSS.loss` and mmdet's numbers.
# 5. Predict what the loss does with no box, a sub-pixel box or a box larger than the
#    image.
#
# **Prerequisites**: notebook 01 (GIoU), notebook 02 (the delta-xywh coder),
# notebooks 40 and 41 (ATSS's outputs, anchors and assignment, the centerness target),
# notebook 22 (NanoDet's losses, for comparison); binary cross-entropy. Notebook 43
# trains with this loss.
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
import torch.nn.functional as F

from detutils.boxes import box_iou_aligned
from detutils.checks import check_close, check_function, check_passed, check_true
from detutils.coders import decode_delta_xywh, encode_delta_xywh
from detutils.course import significant
from detutils.data import CocoDetection, build_transforms, collate, ensure_shapes, find_split
from detutils.losses import iou_loss, sigmoid_focal_loss
from detutils.losses.atss import centerness_targets
from detutils.models.atss import build_atss_r18half_fpn64
from detutils.trace import record, trace_calls

# %% [markdown]
# ## 1. The three terms
#
# For a batch whose assignment (ATSS) gives P positives, positive `i` with its anchor,
# its decoded box $\hat b_i$, its target box $g_i$ and its centerness target $c_i$,
# mmdet's `ATSSHead.loss_by_feat` computes
#
# $$
# \mathcal{L} = \underbrace{1 \cdot \frac{1}{N} \sum_{\text{anchors, classes}}
# \mathrm{FL}}_{\texttt{cls}}
# + \underbrace{2 \cdot \frac{\sum_i c_i\,\big(1 - \mathrm{GIoU}(\hat b_i, g_i)\big)}
# {\max\left(\sum_i c_i,\ 1\right)}}_{\texttt{bbox}}
# + \underbrace{1 \cdot \frac{1}{N} \sum_i \mathrm{BCE}(z_i, c_i)}_{\texttt{centerness}},
# $$
#
# where N is the number of positives of the batch with every image counting at least
# 1 (section 3), and $z_i$ the centerness logit of positive `i`. The focal loss runs
# over all A × C (anchor, class) pairs of every image; the other two over the
# positives only. The weights 1, 2 and 1 are those of mmdet's
# `atss_r50_fpn_1x_coco.py` (`loss_cls`, `loss_bbox`, `loss_centerness`), and those of
# the course's `ATSSConfig`.
#
# ## 2. Sigmoid focal loss
#
# Each (anchor, class) pair is a binary problem: target t = 1 at the true class of a
# positive, 0 everywhere else. With p = σ(x) the predicted probability and
# $p_t$ the probability given to the right answer (p where t = 1, 1 − p where t = 0),
# the binary cross-entropy is $-\log p_t$. The focal loss multiplies it by two factors:
#
# $$\mathrm{FL}(x, t) = -\,\alpha_t\,(1 - p_t)^{\gamma}\,\log p_t,\qquad
# \alpha_t = \begin{cases}\alpha & t = 1\\ 1 - \alpha & t = 0\end{cases},\qquad
# \gamma = 2,\ \alpha = 0.25.$$
#
# By hand for five pairs, and with `sigmoid_focal_loss`:

# %%
logits = torch.tensor([-3.0, -1.0, 0.0, 2.0, -4.595])  # (5,) raw class scores
labels = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0])  # (5,) targets t
p = torch.sigmoid(logits)
p_t = torch.where(labels == 1, p, 1 - p)
bce = -torch.log(p_t)  # (5,) the cross-entropy
modulating = (1 - p_t) ** 2  # gamma = 2
alpha_t = torch.where(labels == 1, 0.25, 0.75)
focal_manual = alpha_t * modulating * bce  # (5,)
focal = sigmoid_focal_loss(logits, labels, alpha=0.25, gamma=2.0)  # reduction "none"
torch.testing.assert_close(focal, focal_manual)
torch.testing.assert_close(
    bce, F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
)
significant(
    pd.DataFrame(
        {
            "logit x": logits,
            "target t": labels.long(),
            "p": p,
            "p_t": p_t,
            "BCE": bce,
            "(1 - p_t)^2": modulating,
            "alpha_t": alpha_t,
            "focal": focal,
        }
    )
)

# %% [markdown]
# Row by row: a negative the head already gets right (x = −3, p_t = 0.95) keeps 0.2 %
# of its cross-entropy; an undecided negative (x = 0) keeps a quarter; a positive the
# head gets wrong (x = −1, p_t = 0.27) keeps more than half, before α; a positive it
# gets right (x = 2) keeps 1.4 %; and a positive at the initial probability 0.01 (the
# last row, see below) keeps 98 %. The plot of the loss against $p_t$ for four values
# of γ (α left out), the figure RetinaNet's paper opens with (its fig. 1):

# %%
p_true = torch.linspace(0.001, 1.0, 1000)  # p_t
fig, ax = plt.subplots(figsize=(6, 3.5))
for gamma in (0, 1, 2, 5):
    curve = -((1 - p_true) ** gamma) * torch.log(p_true)
    ax.plot(p_true, curve, label=f"γ = {gamma}" + (" (cross-entropy)" if gamma == 0 else ""))
ax.axvspan(0.6, 1.0, color="0.9", zorder=0)
ax.text(0.62, 3.6, "well classified", fontsize=8)
ax.set_xlabel("probability of the true answer $p_t$")
ax.set_ylabel("loss")
ax.set_ylim(0, 4)
ax.legend(fontsize=8)
ax.set_title("focal loss $-(1 - p_t)^γ \\log p_t$")
plt.show()

# %% [markdown]
# With γ = 2, a pair at $p_t$ = 0.9 costs $(1 - 0.9)^2$ = 1/100 of its cross-entropy,
# at $p_t$ = 0.99 1/10,000; at $p_t$ = 0.1 it keeps 81 %. A dense detector's image is
# almost all easy background, so this is what keeps thousands of easy pairs from
# outweighing the few dozen that matter.
#
# ### Why the class bias starts at −4.595
#
# Notebook 40 showed that an untrained ATSS detects nothing because of its class bias;
# here is what the bias does to the loss. An untrained head with zero class bias says
# p = 0.5 for every pair, and the first loss is the background's. RetinaNet (and
# mmdet's ATSS after it) sets the bias of the class conv so that every class starts at
# a *prior* probability π = 0.01:
#
# $$b = -\log\frac{1 - \pi}{\pi} = -\log 99 = -4.595.$$
#
# The count for the CPU preset at 320 px: levels of 40, 20, 10, 5 and 3 locations a
# side (P6 and P7 round up), one anchor each, A = 2134, and C = 6 classes; an image
# with, say, P = 54 positives (six boxes of nine positives each, as in section 6).

# %%
strides = (8, 16, 32, 64, 128)
sides = [math.ceil(320 / stride) for stride in strides]  # 40, 20, 10, 5, 3
num_anchors = sum(side * side for side in sides)  # A
num_classes, num_pos = 6, 54  # C, P
prior_bias = -math.log((1 - 0.01) / 0.01)
first_targets = torch.zeros(num_anchors, num_classes)  # (A, C)
first_targets[:num_pos, 0] = 1.0  # P positives (which anchors does not matter here)
negative = first_targets == 0  # (A, C)
rows = {}
for name, bias in (("bias 0 (p = 0.5)", 0.0), (f"bias {prior_bias:.4g} (p = 0.01)", prior_bias)):
    first_logits = torch.full((num_anchors, num_classes), bias)  # (A, C)
    bce_pairs = F.binary_cross_entropy_with_logits(first_logits, first_targets, reduction="none")
    focal_pairs = sigmoid_focal_loss(first_logits, first_targets)  # (A, C)
    rows[name] = {
        "BCE, sum over negatives": bce_pairs[negative].sum().item(),
        "focal, sum over negatives": focal_pairs[negative].sum().item(),
        "focal, sum over positives": focal_pairs[~negative].sum().item(),
        "cls term (/ P)": focal_pairs.sum().item() / num_pos,
    }
print(f"A = {num_anchors} anchors x C = {num_classes} classes = {num_anchors * num_classes} pairs")
first_loss = significant(pd.DataFrame(rows))  # one column per bias
first_loss

# %% [markdown]
# With bias 0 the 12,750 negative pairs cost 0.693 each in cross-entropy, and still
# 0.13 each after the focal factors (0.75 × 0.5² × 0.693): the first focal term is
# about 31, and 99.9 % of it says "background". The first gradient steps then push
# every class logit down, whatever the image shows. With the prior, a negative pair
# costs 0.75 × 0.01² × 0.01 ≈ 7.5 × 10⁻⁷: the negatives add up to 0.01, and the first
# term, 1.13, is the positives' (0.25 × 0.99² × 4.605 each). RetinaNet's authors found
# this initialisation made training stable under heavy class imbalance, for the
# cross-entropy and the focal loss alike; mmdet's `ATSSHead` and the course's
# `ATSSHead` both set it (`prior_prob=0.01`).

# %%
assert rows[f"bias {prior_bias:.4g} (p = 0.01)"]["focal, sum over negatives"] < 0.02
assert rows["bias 0 (p = 0.5)"]["cls term (/ P)"] > 25

# %% [markdown]
# ### Why α = 0.25
#
# α weighs the positives' pairs (α) against the negatives' (1 − α). Used on the plain
# cross-entropy (γ = 0), α is a class-balancing weight, and RetinaNet's ablation found
# its best value there above 0.5: the rare positives need extra weight. With γ = 2 the
# easy negatives are already turned down by $(1 - p_t)^2$, so the positives need less
# help, and the best α dropped to 0.25, which even favours the negatives; the paper's
# rule is that α should be lowered as γ is raised, and γ = 2, α = 0.25 are the values
# of RetinaNet, of mmdet's ATSS config and of this course.
#
# ## 3. The normaliser
#
# The focal and the centerness sums are divided by N, the number of positives of the
# batch, each image counting at least 1: an image without any box (or whose boxes
# found no anchor) adds 1, so N is never 0 and an empty image still learns
# "background" at a sensible scale. On a batch of four images with 12, 0, 5 and 0
# positives:

# %%
toy_gt_index = torch.full((4, num_anchors), -1)  # (B, A): BACKGROUND everywhere
toy_gt_index[0, :12] = 0  # 12 positives of box 0
toy_gt_index[2, 100:105] = 1  # 5 positives of box 1
toy_positive = toy_gt_index >= 0  # (B, A)
per_image = toy_positive.sum(dim=1)  # (B,)
toy_normaliser = per_image.clamp(min=1).sum().float()
print(f"positives per image {per_image.tolist()}: N = {toy_normaliser.item():.0f}")

# %% [markdown]
# Under distributed data parallel training each process computes its own N and the
# processes then *average* it (`all_reduce_mean`, mmdet's `reduce_mean`). Two
# processes with N = 19 and 31 both divide by 25; since DDP also averages the
# gradients, the step is (g₁ / 25 + g₂ / 25) / 2 = (g₁ + g₂) / 50: exactly the step of
# one batch of both processes' images, divided by its 50 positives. Without the
# average each process would divide by its own count, and an image in a sparse batch
# would weigh more than the same image in a crowded one.
#
# NanoDet (notebook 22) counts its normaliser the same way (`max(positives, 1)` per
# image, summed, in its `target_assign`). The two detectors differ elsewhere:
#
# | | NanoDet (GFL) | ATSS |
# |---|---|---|
# | class term divided by | N | N |
# | box weights | highest class probability (detached) | centerness target |
# | box terms divided by | sum of the weights | max(sum of the targets, 1) |
# | third term | DFL over 4 sides, weighted | centerness BCE, divided by N |
# | no positive in the batch | all terms 0 | focal term on the background |
#
# ## 4. GIoU on decoded boxes, weighted by centerness
#
# mmdet's ATSS sets `reg_decoded_bbox=True`: the box loss does not compare deltas with
# encoded targets, it decodes the predicted deltas into a box (delta-xywh, notebook 02,
# with stds 0.1, 0.1, 0.2, 0.2) and compares that box with the ground-truth box itself,
# by 1 − GIoU. Take a P3 anchor (stride 8, a 64 px square centred on the grid point
# (200, 120)) and a box it learns; the deltas that reach the box exactly, zero deltas
# (the anchor itself), and a guess in between:

# %%
stds = (0.1, 0.1, 0.2, 0.2)  # ATSS's delta coder
anchor = torch.tensor([[168.0, 88.0, 232.0, 152.0]])  # (1, 4): 8 strides, 64 px, around (200, 120)
gt_box = torch.tensor([[150.0, 70.0, 260.0, 140.0]])  # (1, 4) xyxy px
exact = encode_delta_xywh(anchor, gt_box, stds=stds)  # (1, 4) normalised deltas
tried = torch.cat([exact, torch.zeros(1, 4), exact / 2])  # (3, 4)
decoded = decode_delta_xywh(anchor.expand(3, 4), tried, stds=stds)  # (3, 4) xyxy px
giou_terms = iou_loss(decoded, gt_box.expand(3, 4), "giou", reduction="none")  # (3,)
torch.testing.assert_close(decoded[0], gt_box[0])
print("exact deltas:", [f"{v:.4g}" for v in exact[0].tolist()])
significant(
    pd.DataFrame(
        {
            "deltas": ["exact", "zero (the anchor)", "half of exact"],
            "decoded box": [tuple(round(v, 1) for v in box) for box in decoded.tolist()],
            "1 - GIoU": giou_terms,
        }
    )
)

# %% [markdown]
# The stds make the network's numbers of order 1: a dx of 1 moves the centre by 0.1
# anchor widths, a dw of 1 scales the width by e^0.2 = 1.22. GIoU does not change when
# both boxes are scaled alike, so a 20 px box and a 300 px box count the same, and
# unlike the IoU it still has a gradient when the boxes do not overlap (notebook 01).
#
# Each positive's term is weighted by its **centerness target** (notebook 41), how
# central the anchor's centre sits in its box, from the distances l, t, r, b to the
# four sides (FCOS, eq. 3):
#
# $$c = \sqrt{\frac{\min(l, r)}{\max(l, r)} \cdot \frac{\min(t, b)}{\max(t, b)}},$$
#
# 1 at the box's centre, falling to 0 at its edges. Over a 160 × 80 box:

# %%
box = torch.tensor([20.0, 10.0, 180.0, 90.0])  # xyxy px
xs, ys = torch.meshgrid(
    torch.linspace(20.5, 179.5, 160), torch.linspace(10.5, 89.5, 80), indexing="xy"
)
points = torch.stack([xs, ys], dim=-1).reshape(-1, 2)  # (80 160, 2) pixel centres
point_boxes = torch.cat([points, points], dim=1)  # (80 160, 4): zero-size "anchors" there
heat = centerness_targets(point_boxes, box.expand(len(points), 4)).reshape(80, 160)
fig, ax = plt.subplots(figsize=(6, 3.2))
image = ax.imshow(heat, extent=(20, 180, 90, 10), cmap="viridis", vmin=0, vmax=1)
ax.contour(xs, ys, heat, levels=[0.25, 0.5, 0.75], colors="white", linewidths=0.8)
fig.colorbar(image, ax=ax, label="centerness target")
ax.set_title("centerness target at each pixel of a box")
ax.set_xlabel("x (px)")
ax.set_ylabel("y (px)")
plt.show()

# %% [markdown]
# Why weight by it: an anchor centred near the object's middle sees the whole object
# within its receptive field and can place all four sides; one near an edge sees part
# of it and of the background. Its box will be worse, and at test time the centerness
# branch marks it down anyway. The weights spend the box loss where the good boxes
# come from. Dividing by the sum of the weights makes the term a weighted mean of
# 1 − GIoU; the sum is clamped to at least 1, which avoids 0 / 0 in a batch without
# positives, and makes the term the weighted *sum* when a few off-centre positives
# have targets that add up to less than 1. By hand for three positives, with
# `iou_loss` doing the same:

# %%
pred_three = torch.tensor([[10.0, 10, 50, 50], [0, 0, 40, 30], [100, 100, 120, 140]])  # (P, 4)
target_three = torch.tensor([[12.0, 8, 48, 56], [5, 5, 45, 45], [90, 95, 130, 130]])  # (P, 4)
weights_three = torch.tensor([0.9, 0.6, 0.3])  # (P,) centerness targets
giou_three = box_iou_aligned(pred_three, target_three, "giou", eps=1e-6)  # (P,)
bbox_by_hand = 2.0 * (weights_three * (1 - giou_three)).sum() / weights_three.sum().clamp(min=1)
bbox_library = 2.0 * iou_loss(
    pred_three, target_three, "giou", weight=weights_three, reduction="sum"
) / weights_three.sum().clamp(min=1)  # fmt: skip
torch.testing.assert_close(bbox_by_hand, bbox_library)
print("1 - GIoU:", [f"{v:.4f}" for v in (1 - giou_three).tolist()])
print(f"bbox term = 2 x {(weights_three * (1 - giou_three)).sum().item():.4f} / 1.8 = "
      f"{bbox_by_hand.item():.4f}")  # fmt: skip

# %% [markdown]
# ## 5. Centerness: a binary cross-entropy against a soft target
#
# The head's third output, one logit $z_i$ per anchor from the *regression* tower,
# learns the centerness target of each positive by binary cross-entropy:
#
# $$\mathrm{BCE}(z, c) = -\big(c \log \sigma(z) + (1 - c) \log (1 - \sigma(z))\big),$$
#
# summed over the positives and divided by the same N as the focal term (not by the
# sum of the targets). Only positives learn it: a background anchor's centerness is
# never trained, and does not need to be, since its class score is already low. At
# test time mmdet multiplies each class score by σ(z) (after the score threshold and
# the 1000 best pairs per level), so that boxes from the edges of an object rank below
# those from its centre in NMS (notebook 43 measures what that does to AP). The
# target is soft: the smallest BCE, at σ(z) = c, is the entropy of c, not 0
# (exercise 4).
#
# ## 6. One real batch, step by step
#
# Two validation images of the shapes set at 320 px (seven and five boxes), and the
# CPU preset `atss-r18half-fpn64` for its six classes, freshly built (random weights,
# seeded; the class bias at −4.595): the loss of a first training step.

# %%
root = ensure_shapes("data/shapes")
val_set = CocoDetection(*find_split(root, "val"), transforms=build_transforms(320, train=False))
images, batch_targets = collate([val_set[0], val_set[1]])  # (B, 3, 320, 320), B dicts
targets = [
    {"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in batch_targets
]
images = images.to(device)
torch.manual_seed(0)
model = build_atss_r18half_fpn64(num_classes=val_set.num_classes).to(device).train()
outputs = model(images)
class_maps, delta_maps, centerness_maps = outputs
print("boxes per image:", [len(t["boxes"]) for t in targets])
print("class maps:     ", [tuple(x.shape) for x in class_maps])
print("delta maps:     ", [tuple(x.shape) for x in delta_maps])
print("centerness maps:", [tuple(x.shape) for x in centerness_maps])


# %% [markdown]
# a. Flatten the maps (level by level, row-major, as notebook 09's flat index), build
# the anchors and assign (ATSS, `topk` 9). Each intermediate is named with `record`,
# so that `trace_calls` lists its shape.


# %%
def shapes(recording):
    """The recorded intermediates: name, item, shape, dtype."""
    return recording.table()[["name", "item", "shape", "dtype"]]


feature_sizes = [tuple(x.shape[-2:]) for x in class_maps]
with trace_calls() as step_a:
    cls_logits, deltas, centerness = record("flatten", model.flatten(outputs))
    anchors, num_per_level = model.anchors(feature_sizes, device)
    record("anchors", anchors)  # (A, 4) xyxy px
    assignment, gt_boxes = record("assign", model.assign(outputs, targets))
shapes(step_a)

# %% [markdown]
# `flatten` gives the class logits (B, A, C) = (2, 2134, 6), the deltas (B, A, 4) and
# the centerness logits (B, A); `assign` the three (B, A) fields of the assignment
# (`gt_index` into the padded boxes, `labels`, `iou`) and the padded boxes (B, M, 4),
# M = 7, the most boxes of an image.
#
# b. The normaliser and the focal term over every (anchor, class) pair. The targets
# are a one-hot of each positive's label, all zeros for the background; an `IGNORE`
# anchor (ATSS produces none) would get weight 0.

# %%
with trace_calls() as step_b:
    positive = record("positive", assignment.gt_index >= 0)  # (B, A)
    num_positive = positive.sum(dim=1).clamp(min=1).sum().float()  # N
    one_hot = F.one_hot(assignment.labels.clamp(min=0), model.num_classes).float()
    one_hot = record("one_hot", one_hot * positive[..., None])  # (B, A, C)
    focal_pairs = record("focal_pairs", sigmoid_focal_loss(cls_logits, one_hot))  # (B, A, C)
    cls_term = 1.0 * focal_pairs.sum() / num_positive
print(f"positives per image {positive.sum(dim=1).tolist()}: N = {num_positive.item():.0f}")
print(f"focal term {cls_term.item():.4g}; its negatives' share "
      f"{(focal_pairs * (1 - one_hot)).sum().item() / focal_pairs.sum().item():.2%}")  # fmt: skip
shapes(step_b)

# %% [markdown]
# As in section 2, the positives carry the first focal term. Had the class bias been
# left at 0 (the same logits without it), the same batch would start at:

# %%
unbiased = cls_logits - model.head.atss_cls.bias  # (B, A, C): the logits with bias 0
unbiased_term = sigmoid_focal_loss(unbiased, one_hot).sum() / num_positive
print(f"focal term with bias 0: {unbiased_term.item():.4g}, with the prior: {cls_term.item():.4g}")

# %% [markdown]
# c. The positives: their anchors, target boxes and centerness targets; the predicted
# deltas decoded into boxes; the weighted GIoU term and the centerness term.

# %%
with trace_calls() as step_c:
    image_index, anchor_index = positive.nonzero(as_tuple=True)  # (P,), (P,)
    record("anchor_index", anchor_index)
    matched = assignment.gt_index[image_index, anchor_index]  # (P,) into gt_boxes
    target_boxes = record("target_boxes", gt_boxes[image_index, matched])  # (P, 4)
    positive_anchors = record("positive_anchors", anchors[anchor_index])  # (P, 4)
    ctr_targets = record("ctr_targets", centerness_targets(positive_anchors, target_boxes))
    positive_deltas = record("positive_deltas", deltas[image_index, anchor_index])  # (P, 4)
    pred_boxes = decode_delta_xywh(positive_anchors, positive_deltas, stds=stds)
    record("pred_boxes", pred_boxes)  # (P, 4) xyxy px
    giou_terms = record("giou_terms", iou_loss(pred_boxes, target_boxes, reduction="none"))
    bbox_term = 2.0 * (ctr_targets * giou_terms).sum() / ctr_targets.sum().clamp(min=1)
    positive_ctr = record("positive_ctr_logits", centerness[image_index, anchor_index])  # (P,)
    ctr_terms = F.binary_cross_entropy_with_logits(positive_ctr, ctr_targets, reduction="none")
    centerness_term = 1.0 * record("ctr_terms", ctr_terms).sum() / num_positive
print(f"P = {len(anchor_index)} positives, sum of centerness targets "
      f"{ctr_targets.sum().item():.4g}")  # fmt: skip
shapes(step_c)

# %% [markdown]
# The positives of the smallest box of the first image, one row each: its nine
# anchors all lie on P3 (level 0, stride 8), and their centerness targets drop with
# the distance from the box's centre. The untrained deltas are all below 1 in size: a
# predicted box is its anchor shifted by less than a tenth of its side and scaled by
# at most e^0.2 ≈ 1.22 a side, so nearly a 64 px square around a 28 px box, hence the
# large 1 − GIoU.

# %%
assert positive_deltas.abs().max() < 1
first = image_index == 0
areas = (target_boxes[:, 2] - target_boxes[:, 0]) * (target_boxes[:, 3] - target_boxes[:, 1])
smallest = first & (areas == areas[first].min())  # (P,) the positives of that box
level_starts = torch.tensor(num_per_level, device=device).cumsum(0)
table = pd.DataFrame(
    {
        "anchor": anchor_index[smallest].tolist(),
        "level": torch.searchsorted(level_starts, anchor_index[smallest], right=True).tolist(),
        "anchor centre": [
            (int((a[0] + a[2]) / 2), int((a[1] + a[3]) / 2))
            for a in positive_anchors[smallest].tolist()
        ],
        "centerness target": ctr_targets[smallest].tolist(),
        "1 - GIoU": giou_terms[smallest].tolist(),
    }
)
print("target box:", [round(v) for v in target_boxes[smallest][0].tolist()])
significant(table)

# %% [markdown]
# Where the positives sit in the first image, coloured by their centerness target:

# %%
fig, ax = plt.subplots(figsize=(5, 5))
ax.imshow(images[0].permute(1, 2, 0).cpu())
for gt_box in targets[0]["boxes"].tolist():
    x1, y1, x2, y2 = gt_box
    ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="white", lw=1))
centres = ((positive_anchors[:, :2] + positive_anchors[:, 2:]) / 2)[first].cpu()
dots = ax.scatter(centres[:, 0], centres[:, 1], c=ctr_targets[first].cpu(), cmap="viridis",
                  vmin=0, vmax=1, s=18, edgecolors="black", linewidths=0.5)  # fmt: skip
fig.colorbar(dots, ax=ax, fraction=0.046, label="centerness target")
ax.set_title("positive anchor centres (grid points) of image 0")
ax.set_xlim(0, 320)
ax.set_ylim(320, 0)
plt.show()

# %% [markdown]
# d. The whole loss, against `ATSS.loss`, which runs `detutils.losses.atss_loss` on
# the same outputs. Its own `record` calls list the positives, their target boxes,
# predicted boxes and centerness targets: the shapes of step c.

# %%
with trace_calls() as library_steps:
    losses = model.loss(outputs, targets, (assignment, gt_boxes))
by_hand = {"cls": cls_term, "bbox": bbox_term, "centerness": centerness_term}
by_hand["loss"] = by_hand["cls"] + by_hand["bbox"] + by_hand["centerness"]
for name, value in by_hand.items():
    torch.testing.assert_close(losses[name], value)
ours = [anchor_index, target_boxes, pred_boxes, ctr_targets]
assert list(library_steps.table()["shape"]) == [tuple(x.shape) for x in ours]
print("ATSS.loss:", {name: f"{value.item():.4g}" for name, value in losses.items()})
shapes(library_steps)

# %% [markdown]
# Where the gradient goes: the focal loss reaches the class logits of every anchor;
# the GIoU and centerness terms reach only the positives' deltas and centerness logits.

# %%
for output_map in class_maps + delta_maps + centerness_maps:
    output_map.retain_grad()
losses["loss"].backward()
cls_grad, delta_grad, ctr_grad = model.flatten(
    ([x.grad for x in class_maps], [x.grad for x in delta_maps], [x.grad for x in centerness_maps])
)  # (B, A, C), (B, A, 4), (B, A)
assert (cls_grad.abs().sum(dim=-1) > 0).all()
assert torch.equal(delta_grad.abs().sum(dim=-1) > 0, positive)
assert torch.equal(ctr_grad != 0, positive)
with_grad = int((cls_grad.abs().sum(-1) > 0).sum())
print(f"class logits with a gradient: {with_grad} of {positive.numel()} anchors")
print(f"deltas and centerness logits with a gradient: {int(positive.sum())}, the positives")

# %% [markdown]
# ## 7. Against the reference: mmdet 3.3
#
# `tests/test_atss_model.py` feeds the same head outputs to mmdet 3.3's
# `ATSSHead.loss_by_feat` and to the course's `ATSS.loss`: three 128 px images, three
# classes, five levels of 16, 8, 4, 2 and 1 locations a side, random outputs drawn with
# seed 0. The first image has three boxes of different sizes, the second a sub-pixel
# box and a box the size of the image, the third no box. The same tensors, drawn in the
# same order:

# %%
torch.manual_seed(0)
small_sides = [16, 8, 4, 2, 1]
small_outputs = (
    [torch.randn(3, 3, s, s) * 1.5 - 2.0 for s in small_sides],  # class maps (B, C, H, W)
    [torch.randn(3, 4, s, s) * 0.5 for s in small_sides],  # delta maps (B, 4, H, W)
    [torch.randn(3, 1, s, s) for s in small_sides],  # centerness maps (B, 1, H, W)
)
small_targets = [
    {"boxes": torch.tensor([[10.0, 12, 40, 50], [60, 20, 120, 110], [5, 70, 20, 78]]),
     "labels": torch.tensor([0, 2, 1])},
    {"boxes": torch.tensor([[30.2, 30.1, 30.7, 30.6], [0.0, 0, 128, 128]]),
     "labels": torch.tensor([1, 0])},
    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
]  # fmt: skip
small_model = build_atss_r18half_fpn64(num_classes=3)  # only its anchors and loss are used
small_assignment = small_model.assign(small_outputs, small_targets)
small_losses = small_model.loss(small_outputs, small_targets, small_assignment)
mmdet_losses = {"cls": 5.688523769378662, "bbox": 1.0240094661712646,
                "centerness": 0.7351202964782715, "loss": 7.447653293609619}  # fmt: skip
for name, value in mmdet_losses.items():
    torch.testing.assert_close(small_losses[name].item(), value, rtol=2e-6, atol=0)
small_positive = small_assignment.assignment.gt_index >= 0
print("positives per image:", small_positive.sum(dim=1).tolist())
pd.DataFrame(
    {"mmdet 3.3": [f"{value:.4g}" for value in mmdet_losses.values()],
     "course": [f"{small_losses[name].item():.4g}" for name in mmdet_losses]},
    index=list(mmdet_losses),
)  # fmt: skip

# %% [markdown]
# 20 + 9 + 0 positives, N = 20 + 9 + 1 = 30 (the empty image counts 1); mmdet's
# assignment has the same positives, anchor for anchor (the test checks them). The
# sub-pixel box found no anchor: no grid point (multiples of 8 px) lies inside
# 30.2 to 30.7. The two implementations agree to a relative 2 × 10⁻⁶: mmdet divides by
# N + 1.19 × 10⁻⁷ (float32's epsilon, in its `weight_reduce_loss`) and computes in
# another order.
#
# ## 8. Edge cases
#
# A batch without a single box: every anchor is background, N = B = 2, and the box and
# centerness terms are exact zeros (which still keep the graph of every output, so an
# optimiser step is harmless); the focal term still teaches every anchor "background".

# %%
no_box = [
    {"boxes": torch.zeros(0, 4, device=device), "labels": torch.zeros(0, dtype=torch.long,
                                                                      device=device)}
] * 2  # fmt: skip
empty_losses = model.loss(outputs, no_box)
assert empty_losses["bbox"].item() == 0 and empty_losses["centerness"].item() == 0
background_only = sigmoid_focal_loss(cls_logits, torch.zeros_like(cls_logits)).sum() / 2
torch.testing.assert_close(empty_losses["cls"], background_only)
print({name: f"{value.item():.4g}" for name, value in empty_losses.items()})

# %% [markdown]
# Two awkward boxes (notebook 41 followed such boxes through the assigner; here,
# through the loss): in the first image, a sub-pixel box that holds no grid point and
# one that holds the grid point (40, 40); in the second, a box that overflows the
# image on every side. The loss does not rely on the data pipeline's clipping: the
# values and the gradients must stay finite. (Copies of the outputs that require a
# gradient let us check that without a backward pass through the network.)

# %%
odd_targets = [
    {"boxes": torch.tensor([[150.2, 150.1, 150.7, 150.6], [39.6, 39.7, 40.3, 40.2]]),
     "labels": torch.tensor([0, 1])},
    {"boxes": torch.tensor([[-50.0, -20.0, 400.0, 380.0]]), "labels": torch.tensor([2])},
]  # fmt: skip
odd_targets = [{key: value.to(device) for key, value in t.items()} for t in odd_targets]
leaves = tuple([x.detach().requires_grad_(True) for x in maps] for maps in outputs)
odd_assignment = model.assign(leaves, odd_targets)
odd_losses = model.loss(leaves, odd_targets, odd_assignment)
odd_losses["loss"].backward()
assert all(torch.isfinite(value) for value in odd_losses.values())
assert all(torch.isfinite(x.grad).all() for maps in leaves for x in maps)
odd_gt_index, odd_gt_boxes = odd_assignment.assignment.gt_index, odd_assignment.gt_boxes
for image, t in enumerate(odd_targets):
    assigned = odd_gt_index[image][odd_gt_index[image] >= 0]
    per_box = torch.bincount(assigned, minlength=len(t["boxes"]))
    print(f"image {image}: positives per box {per_box.tolist()}")
odd_image, odd_anchor = (odd_gt_index >= 0).nonzero(as_tuple=True)  # (P,), (P,)
odd_boxes = odd_gt_boxes[odd_image, odd_gt_index[odd_image, odd_anchor]]  # (P, 4)
odd_ctr = centerness_targets(anchors[odd_anchor], odd_boxes)  # (P,)
odd_deltas = model.flatten(leaves)[1][odd_image, odd_anchor]  # (P, 4)
odd_pred = decode_delta_xywh(anchors[odd_anchor], odd_deltas, stds=stds)  # (P, 4)
odd_giou = iou_loss(odd_pred, odd_boxes, reduction="none")  # (P,)
print("centerness targets:", [f"{v:.3g}" for v in odd_ctr.tolist()])
print("1 - GIoU:          ", [f"{v:.3g}" for v in odd_giou.tolist()])
print({name: f"{value.item():.4g}" for name, value in odd_losses.items()})

# %% [markdown]
# The sub-pixel box with no grid point inside found no anchor at all: ATSS keeps only
# anchors whose centre lies in the box, and grid points are 8 px apart on P3. Such a
# box is never learnt; it only leaves its anchors as background. The other one caught
# the anchor at (40, 40), with distances 0.4, 0.3, 0.3 and 0.2 px to its sides
# (centerness √(0.3/0.4 × 0.2/0.3) = 0.707), and a 1 − GIoU near 1: a 64 px square
# against a box of a third of a square pixel. The box larger than the image took nine
# anchors like any other; its target is the box itself, corners outside the image
# included. Every value and gradient is finite.

# %%
torch.testing.assert_close(odd_ctr[0], torch.tensor(0.5**0.5, device=device))
assert odd_gt_index[0].ge(0).sum() == 1 and odd_gt_index[1].ge(0).sum() == 9

# %% [markdown]
# ## Recap
#
# - ATSS's loss has three terms, weights 1, 2 and 1: a sigmoid focal loss over every
#   (anchor, class) pair, a GIoU loss on the positives' decoded boxes weighted by
#   their centerness targets, and a binary cross-entropy of the positives' centerness
#   logits against those targets.
# - Focal loss: cross-entropy × $(1 - p_t)^\gamma$ × $\alpha_t$, γ = 2, α = 0.25; easy
#   pairs count almost nothing. The class bias −log 99 = −4.595 starts every pair at
#   p = 0.01, so the first loss is the positives' (about 1.1 here), not a flood of
#   background (about 30 with bias 0).
# - N = Σ over images of max(positives, 1), averaged over processes: divides the focal
#   and the centerness sums; NanoDet counts it the same way.
# - Boxes: deltas decoded with stds (0.1, 0.1, 0.2, 0.2) from the anchors, compared with
#   the ground-truth boxes by 1 − GIoU; weighted mean with the centerness targets
#   $\sqrt{\min(l, r)/\max(l, r) \cdot \min(t, b)/\max(t, b)}$, divided by their sum
#   (at least 1).
# - `ATSS.loss` (`detutils.losses.atss_loss`) equals mmdet 3.3's `ATSSHead.loss_by_feat`
#   on the test's case: 5.689, 1.024, 0.7351, total 7.448.
# - No box: box and centerness terms exactly 0, the focal term still trains the
#   background; degenerate boxes give finite values.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** Write `focal_by_hand(logit, target, alpha=0.25, gamma=2.0)`, the
# focal loss of one (anchor, class) pair as a Python float, with `math` only (no
# torch): `logit` a number, `target` 0 or 1. Then use it for a positive pair with
# logit 1.5 (`fl_positive`) and a negative pair with logit −1.0 (`fl_negative`).

# %% tags=["solution"]
focal_by_hand = None  # function (logit, target, alpha, gamma) -> float
fl_positive = fl_negative = None  # numbers
### BEGIN SOLUTION


def focal_by_hand(logit, target, alpha=0.25, gamma=2.0):
    """-alpha_t (1 - p_t)^gamma log p_t for one pair."""
    probability = 1 / (1 + math.exp(-logit))
    p_t = probability if target == 1 else 1 - probability
    alpha_t = alpha if target == 1 else 1 - alpha
    return -alpha_t * (1 - p_t) ** gamma * math.log(p_t)


fl_positive = focal_by_hand(1.5, 1)
fl_negative = focal_by_hand(-1.0, 0)
print(f"positive, logit 1.5: {fl_positive:.5f}; negative, logit -1: {fl_negative:.5f}")
### END SOLUTION


# %% tags=["check"]
def library_focal(logit, target, alpha=0.25, gamma=2.0):
    """The pair's loss from detutils, for comparison."""
    return sigmoid_focal_loss(
        torch.tensor([float(logit)]), torch.tensor([float(target)]), alpha, gamma
    ).item()


check_function(
    "focal_by_hand", focal_by_hand, [(1.5, 1), (-1.0, 0), (-4.595, 1), (0.0, 0)], library_focal,
    hint="p = 1 / (1 + exp(-logit)); p_t = p for target 1, 1 - p for target 0; alpha_t = "
    "alpha for target 1, 1 - alpha for target 0; loss = -alpha_t (1 - p_t)^gamma log(p_t).",
)  # fmt: skip
check_close(
    "fl_positive", fl_positive, library_focal(1.5, 1),
    hint="focal_by_hand(1.5, 1): p = 0.8176, p_t = p, alpha_t = 0.25.",
)  # fmt: skip
check_close(
    "fl_negative", fl_negative, library_focal(-1.0, 0),
    hint="focal_by_hand(-1.0, 0): p = 0.2689, p_t = 1 - p, alpha_t = 0.75.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "focal_by_hand", focal_by_hand,
    [(3.0, 0, 0.25, 2.0), (-2.0, 1, 0.5, 0.0), (0.7, 1, 0.25, 5.0), (-6.0, 0, 0.1, 1.0)],
    library_focal,
    hint="use the alpha and gamma arguments, not the constants 0.25 and 2",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** Write `atss_normaliser(positives_per_image)`: from a list of the
# numbers of positives of each image of a batch, the N that ATSS divides by (one
# process). What is N for a batch whose images have 20, 9 and 0 positives? Under DDP,
# one process has N = 30 and another N = 10: assign `ddp_divisor`, the number each of
# them divides its sums by.

# %% tags=["solution"]
atss_normaliser = None  # function (list of ints) -> number
ddp_divisor = None  # number
### BEGIN SOLUTION


def atss_normaliser(positives_per_image):
    """Sum over the images of max(positives, 1)."""
    return float(sum(max(count, 1) for count in positives_per_image))


ddp_divisor = (atss_normaliser([20, 9, 0]) + 10) / 2  # the mean over the two processes
print(f"N = {atss_normaliser([20, 9, 0]):.0f}; both processes divide by {ddp_divisor:.0f}")
### END SOLUTION

# %% tags=["check"]
check_function(
    "atss_normaliser", atss_normaliser, [([20, 9, 0],), ([0, 0],), ([5],), ([3, 1, 4],)],
    lambda counts: sum(count if count > 0 else 1 for count in counts),
    hint="every image counts its positives, but at least 1: sum(max(count, 1) for count in "
    "positives_per_image). [20, 9, 0] gives 20 + 9 + 1.",
)  # fmt: skip
check_close(
    "atss_normaliser([20, 9, 0])", atss_normaliser([20, 9, 0]), 30,
    hint="the image without a positive adds 1: 20 + 9 + 1",
)  # fmt: skip
check_close(
    "ddp_divisor", ddp_divisor, 20,
    hint="all_reduce_mean averages the processes' N: (30 + 10) / 2",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "atss_normaliser", atss_normaliser, [([0],), ([1, 0, 0, 7],), ([12, 0, 5, 0],)],
    lambda counts: sum(count if count > 0 else 1 for count in counts),
    hint="an image with no positive adds exactly 1",
)  # fmt: skip
check_close(
    "atss_normaliser on section 3's batch", atss_normaliser(per_image.tolist()), toy_normaliser,
    hint="[12, 0, 5, 0] gives 19",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** Write `centerness_giou_term(pred_boxes, target_boxes, weights)`, the
# `bbox` term of ATSS, weight 2 included, for P pairs: `pred_boxes` and `target_boxes`
# (P, 4) xyxy tensors, `weights` (P,) their centerness targets; returns a 0-d tensor.
# Use it on the three pairs below: with the weights 0.8, 0.5, 0.2 (`bbox_three`),
# and with the weights 0.4, 0.25, 0.1 (`bbox_three_small`): why is the second not
# simply the first?

# %%
pred_pairs = torch.tensor([[0.0, 0, 20, 20], [30, 30, 60, 50], [5, 5, 10, 40]])  # (3, 4)
target_pairs = torch.tensor([[2.0, 2, 22, 24], [35, 25, 55, 55], [20, 20, 30, 30]])  # (3, 4)

# %% tags=["solution"]
centerness_giou_term = None  # function ((P, 4), (P, 4), (P,)) -> 0-d tensor
bbox_three = bbox_three_small = None  # 0-d tensors (or numbers)
### BEGIN SOLUTION


def centerness_giou_term(pred_boxes, target_boxes, weights):
    """2 * sum(w (1 - GIoU)) / max(sum(w), 1)."""
    giou = box_iou_aligned(pred_boxes, target_boxes, "giou", eps=1e-6)  # (P,)
    return 2.0 * (weights * (1 - giou)).sum() / weights.sum().clamp(min=1.0)


bbox_three = centerness_giou_term(pred_pairs, target_pairs, torch.tensor([0.8, 0.5, 0.2]))
bbox_three_small = centerness_giou_term(pred_pairs, target_pairs, torch.tensor([0.4, 0.25, 0.1]))
# The weights sum to 1.5 and to 0.75: the second sum is clamped to 1, so the term is
# the weighted sum (not the weighted mean): half of the first times 1.5.
print(f"{bbox_three.item():.4f} and {bbox_three_small.item():.4f}")
### END SOLUTION


# %% tags=["check"]
def library_term(pred_boxes, target_boxes, weights):
    """The bbox term from detutils' iou_loss, for comparison."""
    weighted = iou_loss(pred_boxes, target_boxes, "giou", weight=weights, reduction="sum")
    return 2.0 * weighted / weights.sum().clamp(min=1.0)


large_weights, small_weights = torch.tensor([0.8, 0.5, 0.2]), torch.tensor([0.4, 0.25, 0.1])
check_close(
    "bbox_three", bbox_three, library_term(pred_pairs, target_pairs, large_weights),
    hint="2 * sum(w * (1 - GIoU)) / max(sum(w), 1); box_iou_aligned(..., 'giou') gives the "
    "GIoU of each pair.",
)  # fmt: skip
check_close(
    "bbox_three_small", bbox_three_small, library_term(pred_pairs, target_pairs, small_weights),
    hint="these weights sum to 0.75: the divisor is clamped to 1, so the term is "
    "2 * sum(w * (1 - GIoU)) itself.",
)  # fmt: skip
check_function(
    "centerness_giou_term", centerness_giou_term,
    [(pred_pairs, target_pairs, large_weights), (pred_pairs[:1], target_pairs[:1],
                                                 torch.tensor([0.3]))],
    library_term,
    hint="clamp the sum of the weights to at least 1 before dividing",
)  # fmt: skip
### BEGIN HIDDEN TESTS
generator = torch.Generator().manual_seed(42)
corners = torch.rand(6, 2, generator=generator) * 100
random_pred = torch.cat([corners, corners + 5 + torch.rand(6, 2, generator=generator) * 50], 1)
corners = torch.rand(6, 2, generator=generator) * 100
random_target = torch.cat([corners, corners + 5 + torch.rand(6, 2, generator=generator) * 50], 1)
check_function(
    "centerness_giou_term", centerness_giou_term,
    [(random_pred, random_target, torch.rand(6, generator=generator)),
     (random_pred, random_target, torch.rand(6, generator=generator) * 0.1)],
    library_term,
    hint="the term must work for any number of pairs and any weights",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 3")

# %% [markdown]
# **Exercise 4.** The centerness target is soft, so its cross-entropy cannot reach 0.
# On the batch of section 6, what is the smallest centerness term (weight 1) any
# network could reach? Assign it to `ctr_floor` (a number), and the (P,) logits that
# reach it to `best_ctr_logits`. (Hint: for which σ(z) is BCE(z, c) smallest, and
# what is it there?)

# %% tags=["solution"]
ctr_floor = None  # number
best_ctr_logits = None  # (P,) tensor
### BEGIN SOLUTION
# BCE(z, c) is smallest at sigma(z) = c, z = logit(c), where it equals the entropy of c:
# -(c log c + (1 - c) log(1 - c)); summed over the positives and divided by N.
best_ctr_logits = torch.logit(ctr_targets)
entropy = -(ctr_targets * ctr_targets.log() + (1 - ctr_targets) * (1 - ctr_targets).log())
ctr_floor = (entropy.sum() / num_positive).item()
print(
    f"smallest centerness term {ctr_floor:.4f}; the untrained head's {centerness_term.item():.4f}"
)
### END SOLUTION

# %% tags=["check"]
entropies = torch.special.entr(ctr_targets) + torch.special.entr(1 - ctr_targets)  # (P,)
check_close(
    "ctr_floor", ctr_floor, entropies.sum() / num_positive,
    hint="at sigma(z) = c the cross-entropy equals the entropy of c, -(c log c + (1 - c) "
    "log(1 - c)); sum it over the P positives and divide by N (108), not by P.",
)  # fmt: skip
check_true(
    isinstance(best_ctr_logits, torch.Tensor) and best_ctr_logits.shape == ctr_targets.shape,
    f"`best_ctr_logits` should be a tensor of shape {tuple(ctr_targets.shape)}.",
    hint="one logit per positive: torch.logit of its centerness target",
)
check_close(
    "the centerness term of best_ctr_logits",
    F.binary_cross_entropy_with_logits(best_ctr_logits, ctr_targets, reduction="sum")
    / num_positive,
    entropies.sum() / num_positive,
    hint="the logit whose sigmoid is c: log(c / (1 - c))",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_true(
    float(ctr_floor) < centerness_term.item(),
    "`ctr_floor` should be below the untrained head's centerness term.",
    hint="the floor is the smallest value any logits can give",
)
### END HIDDEN TESTS
check_passed("Exercise 4")

# %% [markdown]
# ## Further reading
#
# - T.-Y. Lin, P. Goyal, R. Girshick, K. He, P. Dollár, *Focal Loss for Dense Object
#   Detection*, ICCV 2017, <https://arxiv.org/abs/1708.02002> (the focal loss: eq. 5;
#   its plot: fig. 1; α and γ: table 1; the prior initialisation: sections 3.3 and 4.1)
# - H. Rezatofighi et al., *Generalized Intersection over Union: A Metric and A Loss
#   for Bounding Box Regression*, CVPR 2019, <https://arxiv.org/abs/1902.09630>
# - Z. Tian, C. Shen, H. Chen, T. He, *FCOS: Fully Convolutional One-Stage Object
#   Detection*, ICCV 2019, <https://arxiv.org/abs/1904.01355> (centerness: eq. 3)
# - S. Zhang, C. Chi, Y. Yao, Z. Lei, S. Z. Li, *Bridging the Gap Between Anchor-based
#   and Anchor-free Detection via Adaptive Training Sample Selection*, CVPR 2020,
#   <https://arxiv.org/abs/1912.02424>
# - mmdet `ATSSHead.loss_by_feat` and `centerness_target`
#   (`mmdet/models/dense_heads/atss_head.py`), `FocalLoss`, `GIoULoss`,
#   <https://github.com/open-mmlab/mmdetection>; the original code,
#   <https://github.com/sfzhang15/ATSS>
