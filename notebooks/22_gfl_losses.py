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
# # 22 · NanoDet: the GFL losses, term by term
#
# Notebook 21 told each ground-truth box which of NanoDet's 2100 priors learn it. What
# do they learn? NanoDet trains its head with the losses of Generalized Focal Loss
# (GFL, Li et al., 2020), three terms that each fix a weakness of the usual
# classification + box regression pair:
#
# - **quality focal loss** (QFL): the score of the true class learns the IoU of the
#   predicted box with its target, not 1, so that at test time the score ranks boxes
#   by how well they are placed, not only by what they show;
# - **distribution focal loss** (DFL): each side's distribution (notebook 20) learns
#   to put its mass on the two bins around the true distance;
# - **GIoU loss** (notebook 01) on the decoded box, weighted by how confident the
#   prior already is.
#
# This notebook computes each term by hand on small cases, then one level of a real
# image's loss step by step with every shape shown, and finally checks that the three
# levels add up to `NanoDet.loss`.
#
# **Learning goals**
#
# 1. Write the quality focal loss and explain why its target is the IoU, not 1.
# 2. Split a real distance between two bins, compute the distribution focal loss by
#    hand, and show that its minimum integrates to the target distance.
# 3. Compute the weighted GIoU loss of the positives in grid units.
# 4. Compute one level's loss step by step, with every shape, and add the levels up
#    to NanoDet's loss, normalisers included.
#
# **Prerequisites**: notebook 01 (GIoU), notebook 02 (the DFL integral), notebooks 20
# and 21 (NanoDet's outputs, ATSS); binary cross-entropy and the focal loss.
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

from detutils import boxes as box_ops
from detutils.checks import check_close, check_passed, check_true
from detutils.coders import decode_distance, dfl_distances, dfl_integral, encode_distance
from detutils.data.shapes import CLASS_NAMES, render_sample
from detutils.losses import distribution_focal_loss, iou_loss, quality_focal_loss
from detutils.models.nanodet import build_nanodet_m
from detutils.trace import record, trace_calls

# %% [markdown]
# ## 1. The three terms
#
# For a batch with assignment `gt_index` (ATSS), P positives, and for positive `i`
# its predicted box `b_i` and target box `g_i` (both in grid units: pixels divided by
# the stride of the prior's level), NanoDet-m's loss is
#
# $$
# \mathcal{L} = \underbrace{1 \cdot \frac{1}{P}\sum_{\text{priors, classes}}
# \mathrm{QFL}}_{\texttt{qfl}}
# + \underbrace{2 \cdot \frac{\sum_i w_i\,(1 - \mathrm{GIoU}(b_i, g_i))}
# {\sum_i w_i}}_{\texttt{bbox}}
# + \underbrace{0.25 \cdot \frac{\sum_i w_i \sum_{\text{4 sides}} \mathrm{DFL}}
# {4 \sum_i w_i}}_{\texttt{dfl}},
# $$
#
# where the weight $w_i$ of a positive is its highest class probability (a constant
# for autograd): priors that already fire count more in the box terms. The quality
# focal loss runs over every prior and every class; the other two over the positives
# only.
#
# ## 2. Quality focal loss
#
# A dense detector keeps, at test time, the boxes with the highest class scores, and
# non-maximum suppression keeps the highest-scoring box of each cluster. If the score
# only says "this is a star", a badly placed box with a confident class can beat a
# well-placed one. GFL trains the score of the true class towards the IoU `y` of the
# prior's predicted box with its target (every other class, and every background
# prior, towards 0), so the score means *class and quality at once*. With a soft
# target the focal loss's `(1 − p_t)^γ` becomes the distance to the target:
#
# $$\mathrm{QFL}(\sigma) = -\,|y - \sigma|^{\beta}\,\big((1 - y)\log(1 - \sigma) +
# y \log \sigma\big),\qquad \beta = 2.$$
#
# By hand on three priors and four classes: prior 0 is a positive of class 2 whose
# box has IoU 0.8 with its target, prior 1 a positive of class 0 with IoU 0.3, prior
# 2 is background.

# %%
toy_logits = torch.tensor(
    [[-3.0, -2.0, 1.0, -4.0], [0.5, -1.0, -2.0, -3.0], [-1.0, -5.0, -2.0, 0.0]]
)  # (A, C): A = 3 priors, C = 4 classes
toy_labels = torch.tensor([2, 0, -1])  # -1: background
toy_ious = torch.tensor([0.8, 0.3, 0.0])  # IoU targets of the true classes
soft_target = torch.zeros(3, 4)  # (A, C): the soft one-hot
soft_target[0, 2], soft_target[1, 0] = 0.8, 0.3
sigma = torch.sigmoid(toy_logits)
bce = -((1 - soft_target) * torch.log(1 - sigma) + soft_target * torch.log(sigma))  # (A, C)
qfl_by_hand = ((soft_target - sigma).abs() ** 2 * bce).sum(dim=1)  # (A,) summed over classes
qfl = quality_focal_loss(toy_logits, toy_labels, toy_ious, beta=2.0, reduction="none")
torch.testing.assert_close(qfl, qfl_by_hand)
qfl_mean = quality_focal_loss(toy_logits, toy_labels, toy_ious, avg_factor=2.0)
print("QFL per prior:", [f"{v:.4f}" for v in qfl.tolist()])
print(f"sum over priors / 2 positives: {qfl_mean.item():.4f}")

# %% [markdown]
# The loss of one (prior, class) entry as a function of the predicted probability,
# for four targets: it vanishes exactly where the probability equals the target, and
# the factor `|y − σ|²` flattens it around there, so entries that are nearly right
# (the many easy background entries, with target 0) add almost nothing.

# %%
probabilities = torch.linspace(0.001, 0.999, 999)
fig, ax = plt.subplots(figsize=(6, 3.5))
minima = {}
for target_value in (0.0, 0.3, 0.8, 1.0):
    entry_target = torch.full_like(probabilities, target_value)
    entry_bce = F.binary_cross_entropy(probabilities, entry_target, reduction="none")
    entry_loss = (entry_target - probabilities).abs() ** 2 * entry_bce
    minima[target_value] = probabilities[entry_loss.argmin()].item()
    ax.plot(probabilities, entry_loss, label=f"target {target_value}")
ax.set_xlabel("predicted probability σ")
ax.set_ylabel("QFL of one entry")
ax.set_ylim(0, 1.5)
ax.legend(fontsize=8)
ax.set_title("quality focal loss: minimum at σ = target")
plt.show()

# %%
for target_value, argmin in minima.items():
    assert abs(argmin - target_value) <= 0.001 + 1e-6, (target_value, argmin)
print("argmin:", {key: round(value, 4) for key, value in minima.items()})

# %% [markdown]
# From here on the quality focal loss lives in `detutils.losses.quality_focal_loss`
# (background is a negative label; mmdet uses the label C).
#
# ## 3. Distribution focal loss
#
# A side's distance is the expected bin of its distribution over the bins
# 0, 1, ..., R: R is the last bin, so a side has R + 1 bins (R = 7 for NanoDet-m, its
# config field `reg_max`). Many distributions have the same expected value;
# DFL asks for the sharpest one near the truth. A target `y` between two bins,
# $y_l = \lfloor y \rfloor$ and $y_r = y_l + 1$, is split between them with weights
# that integrate back to `y`:
#
# $$\mathrm{DFL}(S, y) = -\big((y_r - y)\log S_{y_l} + (y - y_l)\log S_{y_r}\big),$$
#
# a cross-entropy against a two-bin target. For y = 2.3: weight 0.7 on bin 2, 0.3 on
# bin 3.

# %%
side_logits = torch.tensor([[0.1, 0.5, 1.2, 1.0, 0.3, -0.5, -1.0, -2.0]])  # (1, R + 1)
y = torch.tensor([2.3])
log_softmax = torch.log_softmax(side_logits, dim=-1)
dfl_by_hand = -(0.7 * log_softmax[0, 2] + 0.3 * log_softmax[0, 3])
dfl = distribution_focal_loss(side_logits, y, reduction="none")
torch.testing.assert_close(dfl, dfl_by_hand[None])
print(
    f"DFL {dfl.item():.4f}; this distribution integrates to {dfl_integral(side_logits).item():.4f}"
)

# %% [markdown]
# The minimum of the cross-entropy is the target itself: $S_{y_l} = 0.7$, $S_{y_r} =
# 0.3$, whose integral is exactly 2.3. Gradient descent on the eight logits, starting
# from the distribution above, shows the mass gathering on bins 2 and 3:

# %%
trained_logits = side_logits.clone().requires_grad_(True)
optimizer = torch.optim.SGD([trained_logits], lr=1.0)
snapshots = {}
for step in range(201):
    if step in (0, 20, 200):
        snapshots[step] = torch.softmax(trained_logits.detach()[0], dim=0)
    optimizer.zero_grad()
    distribution_focal_loss(trained_logits, y).backward()
    optimizer.step()
fig, axes = plt.subplots(1, 3, figsize=(12, 2.8), sharey=True)
for ax, (step, distribution) in zip(axes, snapshots.items(), strict=True):
    ax.bar(range(8), distribution)
    value = (distribution * torch.arange(8.0)).sum().item()
    ax.axvline(2.3, color="tab:red", label="target 2.3")
    ax.set_title(f"step {step}: integral {value:.4f}")
    ax.set_xlabel("bin")
    ax.set_xticks(range(8))
    ax.legend(fontsize=8)
plt.show()

# %%
final = snapshots[200]
torch.testing.assert_close(final[2:4], torch.tensor([0.7, 0.3]), atol=0.01, rtol=0)
assert abs((final * torch.arange(8.0)).sum().item() - 2.3) < 0.01
best = torch.tensor([0.7, 0.3])
print(f"loss at the minimum: {-(best * best.log()).sum().item():.4f} (the two-bin entropy)")

# %% [markdown]
# A target must lie in [0, R): y = 7 would need a bin 8. NanoDet therefore clamps the
# target distances to R − 0.1 = 6.9 bins (`encode_distance(..., max_dist=7, eps=0.1)`)
# before this loss; a box side farther than 6.9 strides from the prior's centre is
# learnt as 6.9.

# %%
try:
    distribution_focal_loss(side_logits, torch.tensor([7.0]))
except ValueError as error:
    print(error)

# %% [markdown]
# ## 4. GIoU loss, in grid units
#
# The decoded box of a positive, against its target, by `1 − GIoU` (notebook 01).
# NanoDet computes it in grid units (the prior's centre and its target box divided by
# the stride); GIoU does not change when both boxes are scaled alike, so the value
# is that of the pixel boxes. Each positive is weighted by its `w`.

# %%
centre = torch.tensor([[17.5, 17.5]])  # a stride-16 prior at (280, 280) px, in grid units
pred_distances = torch.tensor([[1.5, 2.5, 2.0, 3.0]])  # l, t, r, b in bins
pred_box = decode_distance(centre, pred_distances)  # (1, 4) grid units
target_box = torch.tensor([[253.0, 231.0, 320.0, 320.0]]) / 16  # the cross of notebook 20
giou_loss = iou_loss(pred_box, target_box, kind="giou", reduction="none")
torch.testing.assert_close(giou_loss, 1 - box_ops.box_iou_aligned(pred_box, target_box, "giou"))
torch.testing.assert_close(giou_loss, iou_loss(pred_box * 16, target_box * 16, reduction="none"))
print(f"predicted {pred_box[0].tolist()}, target {target_box[0].tolist()}")
print(f"1 - GIoU = {giou_loss.item():.4f}, the same in pixels")

# %% [markdown]
# ## 5. One level of a real image, step by step
#
# The image of notebooks 20 and 21 (three boxes, six classes), a freshly built
# NanoDet-m for the six classes of the shapes set, in training mode: the loss of the
# very first training step.

# %%
image, _, objects = render_sample(seed=0, split="train", index=1797, size=320)
gt_boxes = box_ops.xywh_to_xyxy(torch.tensor([obj["bbox"] for obj in objects], dtype=torch.float32))
gt_labels = torch.tensor([obj["label"] for obj in objects])
targets = [{"boxes": gt_boxes.to(device), "labels": gt_labels.to(device)}]
images = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255).to(device)  # (1, 3, H, W)
model = build_nanodet_m(num_classes=len(CLASS_NAMES)).to(device).train()
outputs = model(images)
class_maps, dist_maps = outputs
print("class maps:", [tuple(x.shape) for x in class_maps])
print("distribution maps:", [tuple(x.shape) for x in dist_maps])

# %% [markdown]
# Assignment first (notebook 21), over all 2100 priors, and the two normalisers, which
# are counted over the whole batch and all levels: P, the number of positives (each
# image counting at least 1), and the sum of the positives' weights `Σ w`.

# %%
assignment, padded_boxes = model.assign(outputs, targets)  # (B, A) fields, (B, M, 4) px
cells, num_per_level, prior_strides = model.priors([(40, 40), (20, 20), (10, 10)], device)
cls_logits, dist_logits = model.flatten(outputs)  # (B, A, C), (B, A, 32)
positive = assignment.gt_index >= 0  # (B, A)
num_positive = positive.sum(dim=1).clamp(min=1).sum().float()
all_weights = cls_logits.detach().sigmoid().amax(dim=-1)[positive]  # (P,)
weight_sum = all_weights.sum()
print(f"P = {num_positive.item():.0f} positives, sum of weights {weight_sum.item():.4f}")
print("positives per level:", [int(p.sum()) for p in positive[0].split(num_per_level)])

# %% [markdown]
# The weights are all close to 0.01, the initial class probability (notebook 20): at
# the first step every positive counts about the same in the box terms.
#
# Now level 1 (stride 16, 20 × 20 cells, priors 1600 to 1999), where the cross has its
# five positives, in four steps. Each intermediate is named with `record`, so that
# `trace_calls` lists its shape (notebook 10's tracer, for code that is not a module).

# %%
level, stride = 1, 16
start, end = num_per_level[0], num_per_level[0] + num_per_level[1]
reg_max = 7  # R, the last bin (NanoDet's config field `reg_max`)


def shapes(recording):
    """The recorded intermediates: name, shape, dtype."""
    return recording.table()[["name", "shape", "dtype"]]


# a. The level's maps, flattened as NanoDet.flatten does, and its assignment.
with trace_calls() as step_a:
    level_cls = record("level_cls", class_maps[level].flatten(2).transpose(1, 2))  # (B, HW, C)
    level_dist = record("level_dist", dist_maps[level].flatten(2).transpose(1, 2))  # (B, HW, 32)
    level_labels = record("level_labels", assignment.labels[:, start:end])  # (B, HW)
    level_gt = record("level_gt_index", assignment.gt_index[:, start:end])  # (B, HW)
shapes(step_a)

# %% [markdown]
# b. The level's positives: their prior centres and target boxes in grid units (pixels
# divided by the stride), and their 32 distribution logits. In this section's shape
# comments P counts the level's positives (5), not the batch's.

# %%
with trace_calls() as step_b:
    image_index, prior_index = (level_gt >= 0).nonzero(as_tuple=True)  # (P,) each
    level_cells = cells[start:end]
    centres = (level_cells[prior_index, :2] + level_cells[prior_index, 2:]) / 2 / stride
    record("centres", centres)  # (P, 2)
    matched = level_gt[image_index, prior_index]  # (P,)
    target_boxes = record("target_boxes", padded_boxes[image_index, matched] / stride)  # (P, 4)
    positive_dist = record("positive_dist", level_dist[image_index, prior_index])  # (P, 32)
shapes(step_b)

# %% [markdown]
# c. Predicted boxes (the four distributions integrated, decoded around the centre),
# the weights (each positive's highest class probability, no gradient), and the
# quality targets: the IoU of each (detached) predicted box with its target, 0 at
# every other prior of the level.

# %%
with trace_calls() as step_c:
    distances = record("distances", dfl_distances(positive_dist))  # (P, 4) bins
    pred_boxes = record("pred_boxes", decode_distance(centres, distances))  # (P, 4)
    top_probability = level_cls.detach().sigmoid().amax(dim=-1)  # (B, HW)
    weights = record("weights", top_probability[image_index, prior_index])  # (P,)
    scores = torch.zeros_like(level_labels, dtype=torch.float32)  # (B, HW)
    scores[image_index, prior_index] = box_ops.box_iou_aligned(pred_boxes.detach(), target_boxes)
    record("scores", scores)
shapes(step_c)

# %% [markdown]
# d. The three terms of the level. QFL over all its priors and classes, divided by the
# batch's number of positives (`num_positive`, 12);
# GIoU over its positives, weighted, divided by the batch's `Σ w`; DFL over the 4 P
# sides, targets clamped to R − 0.1, weighted, divided by `4 Σ w`.

# %%
with trace_calls() as step_d:
    qfl_terms = quality_focal_loss(
        record("qfl_logits", level_cls.reshape(-1, level_cls.shape[-1])),  # (B HW, C)
        level_labels.reshape(-1),
        scores.reshape(-1),
        reduction="none",
    )
    level_qfl = record("qfl_terms", qfl_terms).sum() / num_positive  # (B HW,) -> ()
    giou_terms = record("giou_terms", iou_loss(pred_boxes, target_boxes, reduction="none"))
    level_bbox = (weights * giou_terms).sum() / weight_sum  # (P,) -> ()
    target_distances = encode_distance(centres, target_boxes, max_dist=reg_max, eps=0.1)
    record("target_distances", target_distances)  # (P, 4) bins
    dfl_terms = distribution_focal_loss(
        record("dfl_logits", positive_dist.reshape(-1, reg_max + 1)),  # (4 P, R + 1)
        target_distances.reshape(-1),  # (4 P,)
        reduction="none",
    )
    record("dfl_terms", dfl_terms)  # (4 P,)
    level_dfl = (weights.repeat_interleave(4) * dfl_terms).sum() / (4 * weight_sum)
shapes(step_d)

# %% [markdown]
# In words: the level's `(1, 400, 6)` class logits and `(1, 400, 32)` distribution
# logits; five positives (P = 5), each with a centre, a target box and 32 logits;
# four distances and a box per positive; five weights; a quality target for each of
# the 400 priors; 400 QFL terms; five GIoU terms; 20 DFL terms, one per side. The
# level's five positives:

# %%
pd.DataFrame(
    {
        "prior": (prior_index + start).tolist(),
        "centre (grid)": [tuple(c) for c in centres.tolist()],
        "distances (bins)": [tuple(round(v, 2) for v in d) for d in distances.tolist()],
        "targets (bins)": [tuple(round(v, 2) for v in d) for d in target_distances.tolist()],
        "weight": weights.tolist(),
        "IoU target": scores[image_index, prior_index].tolist(),
        "1 - GIoU": giou_terms.tolist(),
    }
)

# %% [markdown]
# An untrained distribution is nearly uniform, so every predicted distance is close to
# 3.5 bins and every predicted box a square of 7 strides: far from the cross, hence
# the low IoU targets. The level's share of the three terms (weights applied):

# %%
level_terms = {"qfl": 1.0 * level_qfl, "bbox": 2.0 * level_bbox, "dfl": 0.25 * level_dfl}
print({name: f"{value.item():.4f}" for name, value in level_terms.items()})
assert (scores[image_index, prior_index] < 0.5).all()
assert torch.count_nonzero(scores) == len(prior_index) == 5

# %% [markdown]
# ## 6. The full head loss
#
# The same steps for every level, as one function; since the normalisers, P (the
# batch's positives) and `Σ w`, are those of the whole batch, the levels' shares simply
# add up. Checked against `NanoDet.loss`, which does all 2100 priors at once
# (`detutils.losses.gfl_loss`).


# %%
def level_loss(level, stride, start, end):
    """(qfl, bbox, dfl) shares of one level, weights applied, as in section 5."""
    level_cls = class_maps[level].flatten(2).transpose(1, 2)  # (B, HW, C)
    level_dist = dist_maps[level].flatten(2).transpose(1, 2)  # (B, HW, 4 (R + 1))
    level_labels = assignment.labels[:, start:end]  # (B, HW)
    level_gt = assignment.gt_index[:, start:end]  # (B, HW)
    image_index, prior_index = (level_gt >= 0).nonzero(as_tuple=True)  # (P,) each
    level_cells = cells[start:end]
    centres = (level_cells[prior_index, :2] + level_cells[prior_index, 2:]) / 2 / stride
    target_boxes = padded_boxes[image_index, level_gt[image_index, prior_index]] / stride
    positive_dist = level_dist[image_index, prior_index]  # (P, 4 (R + 1))
    pred_boxes = decode_distance(centres, dfl_distances(positive_dist))  # (P, 4)
    weights = level_cls.detach().sigmoid().amax(dim=-1)[image_index, prior_index]  # (P,)
    scores = torch.zeros_like(level_labels, dtype=torch.float32)
    scores[image_index, prior_index] = box_ops.box_iou_aligned(pred_boxes.detach(), target_boxes)
    qfl = quality_focal_loss(
        level_cls.reshape(-1, level_cls.shape[-1]),
        level_labels.reshape(-1),
        scores.reshape(-1),
        reduction="sum",
    )
    bbox = (weights * iou_loss(pred_boxes, target_boxes, reduction="none")).sum()
    target_distances = encode_distance(centres, target_boxes, max_dist=reg_max, eps=0.1)
    dfl = distribution_focal_loss(
        positive_dist.reshape(-1, reg_max + 1), target_distances.reshape(-1), reduction="none"
    )
    dfl = (weights.repeat_interleave(4) * dfl).sum()
    return {
        "qfl": 1.0 * qfl / num_positive,
        "bbox": 2.0 * bbox / weight_sum,
        "dfl": 0.25 * dfl / (4 * weight_sum),
    }


starts = [0, num_per_level[0], num_per_level[0] + num_per_level[1]]
shares = [
    level_loss(level, stride, start, start + count)
    for level, (stride, start, count) in enumerate(
        zip([8, 16, 32], starts, num_per_level, strict=True)
    )
]
share_table = pd.DataFrame(
    {name: [share[name].item() for share in shares] for name in ("qfl", "bbox", "dfl")},
    index=["stride 8", "stride 16", "stride 32"],
)
share_table.loc["sum"] = share_table.sum()
share_table

# %% [markdown]
# The quality focal loss comes almost entirely from the positives. A background entry
# at σ ≈ 0.01 costs about 0.01² × 0.01 = 10⁻⁶, and there are 2100 × 6 of them; a
# positive entry costs about y² × (−y log 0.01) ≈ 4.6 y³. The stride-32 positives have
# the best untrained boxes (224-px squares against the 232 × 186 star), so the highest
# IoU targets and the largest share; the small star's target is tiny (a 56-px square
# against a 10-px box).

# %%
background = ~positive.reshape(-1)  # (B A,)
background_qfl = (
    quality_focal_loss(
        cls_logits.detach().reshape(-1, cls_logits.shape[-1])[background],  # (B A - P, C)
        assignment.labels.reshape(-1)[background],  # all BACKGROUND
        torch.zeros(int(background.sum()), device=device),  # not read for background
        reduction="sum",
    )
    / num_positive
)
total_qfl = share_table.loc["sum", "qfl"]
print(f"{int(background.sum())} background priors: {background_qfl.item():.6f} of {total_qfl:.4f}")
assert background_qfl.item() < 0.01 * total_qfl

# %%
losses = model.loss(outputs, targets)
for name in ("qfl", "bbox", "dfl"):
    torch.testing.assert_close(sum(share[name] for share in shares), losses[name])
torch.testing.assert_close(losses["loss"], losses["qfl"] + losses["bbox"] + losses["dfl"])
for name, value in level_terms.items():
    torch.testing.assert_close(shares[1][name], value)
print("NanoDet.loss:", {name: f"{value.item():.4f}" for name, value in losses.items()})

# %% [markdown]
# Where the gradient goes: the quality focal loss reaches the class logits of every
# prior; the box terms reach only the positives' distribution logits. (Within the
# shared output conv, both flow back into the same tower.)

# %%
model.zero_grad()
for output_map in class_maps + dist_maps:
    output_map.retain_grad()
losses["loss"].backward()
cls_grad, dist_grad = model.flatten(
    ([x.grad for x in class_maps], [x.grad for x in dist_maps])
)  # (B, A, C), (B, A, 32)
has_dist_grad = dist_grad.abs().sum(dim=-1) > 0  # (B, A)
has_cls_grad = cls_grad.abs().sum(dim=-1) > 0  # (B, A)
assert torch.equal(has_dist_grad, positive)
assert has_cls_grad.all()
print(f"class logits with a gradient: {int(has_cls_grad.sum())} of {has_cls_grad.numel()} priors")
print(f"distribution logits with a gradient: {int(has_dist_grad.sum())} (the positives)")

# %% [markdown]
# ## Recap
#
# - QFL: binary cross-entropy against a soft target (the IoU of the predicted box at
#   the true class, 0 elsewhere), scaled by `|y − σ|^β` with β = 2; summed over all
#   priors and classes, divided by the number of positives.
# - DFL: cross-entropy of a side's distribution against the two bins around the
#   target distance, weights `y_r − y` and `y − y_l`; its minimum integrates to the
#   target. Targets are clamped to R − 0.1.
# - GIoU loss on the decoded boxes in grid units.
# - Both box terms are weighted by each positive's highest class probability
#   (detached) and divided by the batch's sum of those weights; DFL also by 4 sides.
#   Weights 1, 2 and 0.25 for NanoDet-m.
# - The normalisers are batch-wide, so per-level shares add up to `NanoDet.loss`
#   (`detutils.losses.gfl_loss`).
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** With β = 0 the quality focal loss is the plain binary cross-entropy
# against the soft target. On the three priors of section 2, assign `qfl_beta0` `(A,)`,
# `quality_focal_loss` with `beta=0.0` per prior (`reduction="none"`), and `bce_soft`
# `(A,)`, `F.binary_cross_entropy_with_logits` of `toy_logits` against `soft_target`,
# summed over the classes.

# %% tags=["solution"]
qfl_beta0 = bce_soft = None  # (A,) each, A = 3 priors
### BEGIN SOLUTION
qfl_beta0 = quality_focal_loss(toy_logits, toy_labels, toy_ious, beta=0.0, reduction="none")
bce_soft = F.binary_cross_entropy_with_logits(toy_logits, soft_target, reduction="none")
bce_soft = bce_soft.sum(dim=1)  # (A, C) -> (A,)
print("beta = 0:", [f"{v:.4f}" for v in qfl_beta0.tolist()])
### END SOLUTION

# %% tags=["check"]
bce_per_prior = bce.sum(dim=1)  # (A,): section 2's cross-entropy, written out
check_close(
    "qfl_beta0", qfl_beta0, bce_per_prior,
    hint="quality_focal_loss(toy_logits, toy_labels, toy_ious, beta=0.0, reduction='none'): "
    "with beta = 0 the factor |y - sigma|^beta is 1, so QFL is the cross-entropy.",
)  # fmt: skip
check_close(
    "bce_soft", bce_soft, bce_per_prior,
    hint="F.binary_cross_entropy_with_logits(toy_logits, soft_target, reduction='none') is "
    "(A, C): sum it over the classes (dim=1).",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_true(
    bool((torch.as_tensor(qfl_beta0) >= qfl).all()),
    "`qfl_beta0` should be at least the beta = 2 loss `qfl` of section 2 for every prior.",
    hint="|y - sigma|^2 <= 1 scales every entry down: beta = 0 gives the largest loss",
)
### END HIDDEN TESTS
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** A target that falls exactly on a bin, y = 3.0: what are the two
# weights, and what does DFL reduce to? Assign `on_bin` `(1,)`, the
# `distribution_focal_loss` of section 3's `side_logits` for y = 3.0
# (`reduction="none"`). Then derive the smallest DFL any distribution can reach for
# y = 3.0 and for y = 3.5, `smallest_at_3` and `smallest_at_3_5` (two numbers), and
# confirm them with distributions of your choice.

# %% tags=["solution"]
on_bin = None  # (1,)
smallest_at_3 = smallest_at_3_5 = None  # numbers
### BEGIN SOLUTION
# y = 3.0: weight 1 on bin 3 and 0 on bin 4, so DFL = -log S_3, the cross-entropy of
# a hard label; its minimum is 0 (all mass on bin 3). For y = 3.5 the best is 0.5/0.5,
# whose loss is the entropy ln 2.
on_bin = distribution_focal_loss(side_logits, torch.tensor([3.0]), reduction="none")
smallest_at_3, smallest_at_3_5 = 0.0, math.log(2.0)
all_on_3 = torch.log(torch.tensor([[1e-9] * 3 + [1.0] + [1e-9] * 4]))
half = torch.log(torch.tensor([[1e-9] * 3 + [0.5, 0.5] + [1e-9] * 3]))
print(f"-log S_3 = {on_bin.item():.4f}")
print(f"all on bin 3: {distribution_focal_loss(all_on_3, torch.tensor([3.0])).item():.4f}")
print(f"half on 3 and 4: {distribution_focal_loss(half, torch.tensor([3.5])).item():.4f}")
### END SOLUTION

# %% tags=["check"]
check_close(
    "on_bin", on_bin, -torch.log_softmax(side_logits, dim=-1)[:, 3],
    hint="y = 3.0 gives the weights 1 (bin 3) and 0 (bin 4): DFL is -log S_3, the "
    "cross-entropy of a hard label. distribution_focal_loss(side_logits, torch.tensor([3.0]), "
    "reduction='none').",
)  # fmt: skip
check_close(
    "smallest_at_3", smallest_at_3, 0.0, atol=1e-5,
    hint="-log S_3 vanishes when S_3 = 1: all the mass on bin 3.",
)  # fmt: skip
check_close(
    "smallest_at_3_5", smallest_at_3_5, math.log(2.0), atol=1e-5,
    hint="the weights are 0.5 and 0.5; the cross-entropy is smallest when S_3 = S_4 = 0.5, "
    "where it equals their entropy, -2 * 0.5 * log 0.5.",
)  # fmt: skip
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** mmdet's `GFLHead` (versions 2.x and 3.x) clamps the weight sum `Σ w`
# to at least 1 before dividing the box terms by it; NanoDet and the original GFL code
# (implus/GFocal) do not. At the first step of this image, what would mmdet's `bbox`
# term be? Assign it to `clamped_bbox` (a number), from `losses["bbox"]` and
# `weight_sum`, and the ratio of mmdet's term to NanoDet's, `ratio` (a number).

# %% tags=["solution"]
clamped_bbox = ratio = None  # numbers
### BEGIN SOLUTION
# Both divide the same weighted sum; mmdet by max(sum w, 1) = 1, NanoDet by sum w ~ 0.13.
clamped_bbox = (losses["bbox"] * weight_sum / weight_sum.clamp(min=1.0)).item()
ratio = clamped_bbox / losses["bbox"].item()
print(f"sum of weights {weight_sum.item():.4f}: mmdet's bbox term is {ratio:.4f} x NanoDet's")
### END SOLUTION

# %% tags=["check"]
check_true(weight_sum.item() < 1, "this check assumes the weights sum to less than 1")
check_close(
    "clamped_bbox", clamped_bbox, losses["bbox"] * weight_sum,
    hint="NanoDet's term is 2 * (weighted sum) / sum w; mmdet divides the same weighted sum by "
    "max(sum w, 1) = 1 here: multiply NanoDet's term by sum w.",
)  # fmt: skip
check_close(
    "ratio", ratio, weight_sum,
    hint="mmdet's term over NanoDet's: sum w / max(sum w, 1), which is sum w when it is below 1.",
)  # fmt: skip
check_passed("Exercise 3")

# %% [markdown]
# **Exercise 4.** Make the cross's five positives perfect: give each of them, on every
# side, the two-bin distribution of its target distance (as in notebook 20), written
# as logits into a copy of level 1's distribution map. `level_loss` reads the global
# list `dist_maps`: replace it by one holding your edited map. Predict what happens to
# their IoU targets, their GIoU terms, their DFL terms and the level's QFL share, then
# assign `perfect_share = level_loss(1, 16, start, end)` (a dict of three numbers).

# %% tags=["solution"]
perfect_share = None  # dict "qfl", "bbox", "dfl" -> () tensor
### BEGIN SOLUTION
# Perfect boxes: IoU targets 1, GIoU terms 0; DFL terms the two-bin entropies, its
# smallest possible values (none of the cross's distances reaches the 6.9 clamp). The
# QFL share rises: the class scores, still near 0.01, must now learn 1.
perfect = target_distances.clamp(max=reg_max - 0.1)  # (P, 4) bins
left = perfect.floor().long()
two_bin = torch.zeros(len(prior_index), 4, reg_max + 1, device=device)  # (P, 4, R + 1)
two_bin.scatter_(-1, left[..., None], (left + 1 - perfect)[..., None])
two_bin.scatter_(-1, left[..., None] + 1, (perfect - left)[..., None])
edited = dist_maps[1].detach().clone()  # (1, 32, 20, 20)
rows, columns = prior_index // 20, prior_index % 20
edited[0, :, rows, columns] = torch.log(two_bin.clamp(min=1e-12)).flatten(1).T  # (32, P)
dist_maps = [dist_maps[0], edited, dist_maps[2]]
perfect_share = level_loss(1, 16, start, end)
print({name: f"{value.item():.4f}" for name, value in perfect_share.items()})
### END SOLUTION

# %% tags=["check"]
check_true(
    isinstance(perfect_share, dict) and {"qfl", "bbox", "dfl"} <= set(perfect_share),
    f"`perfect_share` should be the dict level_loss returns, got {perfect_share!r}.",
    hint="edit a copy of dist_maps[1] at the five positives' cells, put it in `dist_maps`, "
    "then perfect_share = level_loss(1, 16, start, end).",
)
check_close(
    'perfect_share["bbox"]', perfect_share["bbox"], 0.0, atol=1e-5,
    hint="a perfect box equals its target: GIoU 1, so every 1 - GIoU term is 0. Are the "
    "logits at the right cells (row prior_index // 20, column prior_index % 20)?",
)  # fmt: skip
fraction = target_distances - target_distances.floor()  # (P, 4): weight of the right bin
entropy = torch.special.entr(fraction) + torch.special.entr(1 - fraction)  # (P, 4)
check_close(
    'perfect_share["dfl"]', perfect_share["dfl"],
    0.25 * (weights[:, None] * entropy).sum() / (4 * weight_sum), atol=1e-5,
    hint="at the two-bin target, each side's DFL is the entropy of its two weights; the "
    "share is 0.25 * sum(w * entropy) / (4 sum w). Put the log of the weights (clamped "
    "away from 0) in the side-major order l, t, r, b.",
)  # fmt: skip
check_true(
    bool(perfect_share["qfl"] > shares[1]["qfl"]),
    "`perfect_share['qfl']` should be larger than the untouched level's QFL share.",
    hint="the IoU targets rise to 1 while the class scores stay near 0.01",
)
### BEGIN HIDDEN TESTS
one_targets = torch.zeros_like(level_labels, dtype=torch.float32)  # (B, HW)
one_targets[image_index, prior_index] = 1.0
qfl_at_one = quality_focal_loss(
    level_cls.detach().reshape(-1, level_cls.shape[-1]), level_labels.reshape(-1),
    one_targets.reshape(-1), reduction="sum",
) / num_positive  # fmt: skip
check_close(
    'perfect_share["qfl"]', perfect_share["qfl"], qfl_at_one, rtol=1e-3,
    hint="with perfect boxes the QFL share is that of IoU targets 1 at the five positives",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 4")

# %% [markdown]
# ## Further reading
#
# - X. Li et al., *Generalized Focal Loss: Learning Qualified and Distributed Bounding
#   Boxes for Dense Object Detection*, NeurIPS 2020, <https://arxiv.org/abs/2006.04388>
#   (QFL: eq. 5, DFL: eq. 6)
# - NanoDet's `GFLHead.loss` and `gfocal_loss.py`,
#   <https://github.com/RangiLyu/nanodet/blob/main/nanodet/model/head/gfl_head.py>
# - mmdet `GFLHead.loss_by_feat` and `mmdet/models/losses/gfocal_loss.py`,
#   <https://github.com/open-mmlab/mmdetection>
# - T.-Y. Lin et al., *Focal Loss for Dense Object Detection*, ICCV 2017,
#   <https://arxiv.org/abs/1708.02002>
# - H. Rezatofighi et al., *Generalized Intersection over Union*, CVPR 2019,
#   <https://arxiv.org/abs/1902.09630>
