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
# # 32 · YOLOv8: BCE, CIoU and DFL, term by term
#
# Notebook 30 turned YOLOv8's maps into boxes and scores; notebook 31 chose, for every
# anchor point, the box it learns and a soft class target. This notebook computes the
# loss from them: a binary cross-entropy on every point and class, a CIoU loss and a
# distribution focal loss on the positives, each weighted by the positives' target
# scores. We compute each term by hand on a batch of two images, check the sum against
# `yolov8_loss` and `YOLOv8.loss`, and settle how the result relates to the number
# ultralytics calls `backward` on.
#
# **Learning goals**
#
# 1. Write the three terms of the YOLOv8 loss and their common normaliser, the sum of
#    the target scores.
# 2. Compute each term by hand and check it against `detutils.losses.yolov8_loss`.
# 3. Explain why the DFL targets are clamped to 14.99 strides and what that costs.
# 4. Explain the batch-size factor of the reference, and why the course leaves it out.
#
# **Prerequisites**: notebook 22 (DFL, the integral), notebook 30 (decoding), notebook
# 31 (the task-aligned assigner and its target scores).
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
from detutils.assigners import pad_ground_truth
from detutils.assigners.tal import assign_task_aligned
from detutils.checks import check_close, check_equal, check_passed, check_true
from detutils.coders import decode_distance, dfl_distances, encode_distance
from detutils.data.shapes import CLASS_NAMES, render_sample
from detutils.losses import distribution_focal_loss, yolov8_loss
from detutils.models.yolov8 import build_yolov8n
from detutils.trace import trace_calls


def load_sample(index, split="train", size=320):
    """One image (3, H, W) in [0, 1] with its target dict (boxes xyxy px, labels)."""
    image, _, objects = render_sample(seed=0, split=split, index=index, size=size)
    boxes = torch.tensor([obj["bbox"] for obj in objects], dtype=torch.float32).view(-1, 4)
    target = {
        "boxes": box_ops.xywh_to_xyxy(boxes).to(device),
        "labels": torch.tensor([obj["label"] for obj in objects], device=device),
    }
    return torch.from_numpy(image).permute(2, 0, 1).float().div(255), target


# %% [markdown]
# ## 1. The three terms
#
# For a batch with task-aligned targets: `fg` the positive points, $\hat s_{ac}$ the
# target score of point a and class c (notebook 31; s is TOOD's letter for a score,
# and strides are named in words in this notebook), $w_a = \sum_c \hat s_{ac}$ the
# weight of a positive, and $S = \max(1, \sum_{a,c} \hat s_{ac})$ the normaliser,
#
# $$
# \mathcal{L} = \underbrace{7.5 \cdot \frac{\sum_{a \in fg} w_a\,(1 - \mathrm{CIoU}(b_a, g_a))}
# {S}}_{\texttt{box}}
# + \underbrace{0.5 \cdot \frac{\sum_{a, c} \mathrm{BCE}(p_{ac}, \hat s_{ac})}{S}}_{\texttt{cls}}
# + \underbrace{1.5 \cdot \frac{\sum_{a \in fg} w_a \frac{1}{4}\sum_{\text{4 sides}}
# \mathrm{DFL}}{S}}_{\texttt{dfl}},
# $$
#
# with the predicted box $b_a$ and the target box $g_a$ in grid units (pixels divided
# by the point's stride). One normaliser for all three: a batch whose positives are
# poorly aligned (small $\hat s$) is divided by a small S.
#
# ## 2. A batch and its targets
#
# Two images: training image 1797 (three boxes) and validation image 0 (seven boxes),
# through a fresh YOLOv8n in training mode. This time we keep the graph: the loss
# must reach the weights.

# %%
samples = [load_sample(1797), load_sample(0, split="val")]
images = torch.stack([image for image, _ in samples]).to(device)  # (B, 3, H, W)
targets = [target for _, target in samples]
model = build_yolov8n(num_classes=len(CLASS_NAMES)).to(device).train()
maps = model(images)
dist_logits, cls_logits, points, point_strides = model.flatten(maps)
gt_boxes, gt_labels, gt_mask = pad_ground_truth(targets, device)
print(f"dist_logits {tuple(dist_logits.shape)}, cls_logits {tuple(cls_logits.shape)}")
print(f"gt_boxes {tuple(gt_boxes.shape)}, gt_mask {gt_mask.int().tolist()}")

# %% [markdown]
# Decode in grid units (the distances are in strides already; the points are divided
# by their stride), then assign in pixels on detached predictions, as notebook 31 did.

# %%
strides = point_strides[:, None]  # (A, 1)
grid_points = points / strides  # (A, 2) grid units
pred_boxes = decode_distance(grid_points, dfl_distances(dist_logits))  # (B, A, 4) grid units
assignment = assign_task_aligned(
    cls_logits.detach().sigmoid(),
    pred_boxes.detach() * strides,
    points,
    gt_labels,
    gt_boxes,
    gt_mask,
)
target_scores, fg_mask = assignment.scores, assignment.fg_mask  # (B, A, C), (B, A)
target_scores_sum = target_scores.sum().clamp(min=1)
print(f"positives per image {fg_mask.sum(dim=1).tolist()}, S = {target_scores_sum.item():.4f}")

# %% [markdown]
# ## 3. The class loss: BCE over every point and class
#
# Every point and class contributes, positives and background alike; the target is
# the soft score, 0 almost everywhere. The sum is divided by S, not by the number of
# points and classes (2 × 2100 × 6 = 25,200 terms). At the start of training the
# background terms are tiny (the class bias makes every probability about 0.001) and
# most of the loss comes from the positives, whose targets sit far above their
# predictions.

# %%
probabilities = cls_logits.sigmoid()  # (B, A, C)
bce_inline = -(
    target_scores * torch.log(probabilities) + (1 - target_scores) * torch.log(1 - probabilities)
)  # (B, A, C)
loss_cls = bce_inline.sum() / target_scores_sum
torch.testing.assert_close(
    bce_inline, F.binary_cross_entropy_with_logits(cls_logits, target_scores, reduction="none")
)
background_share = bce_inline[~fg_mask].sum() / bce_inline.sum()
print(f"cls (before gain) {loss_cls.item():.4f}; background share {background_share.item():.4f}")
assert background_share < 0.05

# %% [markdown]
# ## 4. The box loss: 1 - CIoU, weighted by the target scores
#
# Over the positives only, in grid units, each weighted by its target score (its
# normalised alignment metric): well-aligned points count more.

# %%
image_index, anchor_index = fg_mask.nonzero(as_tuple=True)  # (P,) each
weight = target_scores.sum(dim=-1)[fg_mask]  # (P,)
target_boxes = assignment.boxes[fg_mask] / strides[anchor_index]  # (P, 4) grid units
ciou = box_ops.box_iou_aligned(pred_boxes[fg_mask], target_boxes, "ciou")  # (P,)
loss_box = ((1 - ciou) * weight).sum() / target_scores_sum
print(f"P = {len(weight)}, mean CIoU {ciou.mean().item():.4f}")
print(f"box (before gain) {loss_box.item():.4f}")

# %% [markdown]
# CIoU is scale invariant in its IoU and centre-distance parts, and its aspect-ratio
# term depends only on ratios: the same boxes in pixels give the same loss.

# %%
ciou_px = box_ops.box_iou_aligned(
    pred_boxes[fg_mask] * strides[anchor_index], assignment.boxes[fg_mask], "ciou"
)
torch.testing.assert_close(ciou_px, ciou, rtol=1e-4, atol=1e-5)

# %% [markdown]
# ## 5. The DFL term: distances l, t, r, b, clamped to 14.99
#
# The DFL targets are the distances from each positive's point to the four sides of its
# box, in strides. A distribution over bins 0 .. 15 can only put its mass around a
# target below 15 (the bin above a target must exist), so the targets are clamped to
# R - 0.01 = 14.99. Each side's DFL splits the target between the two bins around it.

# %%
num_bins = dist_logits.shape[-1] // 4  # R + 1 = 16 (ultralytics' reg_max)
target_ltrb = encode_distance(
    grid_points[anchor_index], target_boxes, max_dist=num_bins - 1, eps=0.01
)
side_logits = dist_logits[fg_mask].view(-1, 4, num_bins)  # (P, 4, R + 1)
log_probabilities = side_logits.log_softmax(dim=-1)  # (P, 4, R + 1)
left_bin = target_ltrb.floor().long()  # (P, 4)
right_weight = target_ltrb - left_bin  # (P, 4)
dfl_inline = -(
    (1 - right_weight) * log_probabilities.gather(-1, left_bin[..., None]).squeeze(-1)
    + right_weight * log_probabilities.gather(-1, left_bin[..., None] + 1).squeeze(-1)
)  # (P, 4)
loss_dfl = (dfl_inline.mean(dim=-1) * weight).sum() / target_scores_sum
torch.testing.assert_close(
    dfl_inline.flatten(),
    distribution_focal_loss(
        side_logits.reshape(-1, num_bins), target_ltrb.flatten(), reduction="none"
    ),
)
print(f"largest target {target_ltrb.max().item():.4f}, dfl (before gain) {loss_dfl.item():.4f}")

# %% [markdown]
# ## 6. Gains, and the package
#
# The gains of ultralytics' default hyperparameters, box 7.5, cls 0.5, dfl 1.5, then
# the sum. `yolov8_loss` does the same steps (it records its intermediates, which
# `trace_calls` lists), and `YOLOv8.loss` wraps it for the model's outputs and the
# targets as a list of dicts.

# %%
by_hand = {"box": 7.5 * loss_box, "cls": 0.5 * loss_cls, "dfl": 1.5 * loss_dfl}
by_hand["loss"] = by_hand["box"] + by_hand["cls"] + by_hand["dfl"]
with trace_calls() as recording:
    losses = yolov8_loss(
        cls_logits, dist_logits, points, point_strides, gt_boxes, gt_labels, gt_mask
    )
model_losses = model.loss(maps, targets)
for name in by_hand:
    torch.testing.assert_close(by_hand[name], losses[name])
    torch.testing.assert_close(by_hand[name], model_losses[name])
pd.DataFrame(
    {
        "by hand": {k: v.item() for k, v in by_hand.items()},
        "yolov8_loss": {k: v.item() for k, v in losses.items()},
    }
)

# %%
recording.table().drop(columns=["call", "params"])

# %% [markdown]
# From here on the loss lives in `detutils.losses.yolov8`. It reaches every weight of
# the network:

# %%
losses["loss"].backward()
last_box_conv = model.head.box_branches[0][-1].weight.grad
last_cls_conv = model.head.class_branches[0][-1].weight.grad
first_conv = next(model.backbone.parameters()).grad
print([f"{g.abs().sum().item() > 0}" for g in (last_box_conv, last_cls_conv, first_conv)])
assert all(g.abs().sum() > 0 for g in (last_box_conv, last_cls_conv, first_conv))
model.zero_grad()

# %% [markdown]
# ## 7. The batch-size factor
#
# Ultralytics' `v8DetectionLoss` returns two things: `loss.sum() * batch_size`, the
# value it calls `backward` on, and `loss.detach()`, the three terms after their gains,
# which its log prints as box_loss, cls_loss, dfl_loss. Our `"box"`, `"cls"` and
# `"dfl"` are those three terms; our `"loss"` is their sum *without* the factor B: as
# for every detector of the course, the loss does not grow with the batch, and scaling
# it is the trainer's choice. Since each term is a sum over the batch divided by a sum
# over the batch, a batch of the same images twice gives the same three terms, while
# the reference's backward value doubles:

# %%
with torch.no_grad():
    twice = model.loss([torch.cat([x, x]) for x in maps], targets + targets)
    once = model.loss(maps, targets)
for name in once:
    torch.testing.assert_close(twice[name], once[name])
reference_backward = {
    batch: (loss["loss"] * batch).item() for batch, loss in [(2, once), (4, twice)]
}
print("loss items equal; reference backward value:")
print(f"B=2 {reference_backward[2]:.4f}, B=4 {reference_backward[4]:.4f}")

# %% [markdown]
# With SGD, multiplying the loss by B multiplies the step by B: ultralytics' learning
# rate (0.01 at batch 64 by default, with weight decay scaled to the batch) is tuned
# for that scale. To reproduce its schedule with this loss, multiply by B yourself, or
# scale the learning rate by B.
#
# ## 8. What the clamp costs
#
# A side farther than 14.99 strides from its point cannot be learnt exactly: the
# decoded box then falls short. How often does it happen for the positives here?

# %%
raw_ltrb = encode_distance(grid_points[anchor_index], target_boxes)  # (P, 4) unclamped
clamped = raw_ltrb > num_bins - 1 - 0.01
print(f"clamped sides: {int(clamped.sum())} of {clamped.numel()}")
fig, ax = plt.subplots(figsize=(6, 3))
ax.hist(raw_ltrb.flatten().cpu().numpy(), bins=30, range=(0, 16))
ax.axvline(14.99, color="tab:red", label="clamp 14.99")
ax.set_xlabel("target distance (strides)")
ax.set_ylabel("sides")
ax.set_title("DFL targets of the positives")
ax.legend()
plt.show()

# %% [markdown]
# The assigner picks positives whose *predicted* boxes overlap well, so their targets
# rarely sit at the edge of the bins; a large box assigned to a fine level would. The
# three levels' ranges (at most 120, 240 and 480 px from the point to a side)
# overlap enough that a box up to the image size always has a level able to hold it.
#
# ## Recap
#
# - cls: BCE of every point and class against the soft target scores, summed, divided
#   by S, the sum of the target scores (at least 1).
# - box: 1 - CIoU of the positives in grid units, weighted by their target scores,
#   divided by S.
# - dfl: the DFL of the four distances l, t, r, b (clamped to 14.99 strides), averaged
#   over the sides, weighted and divided the same way.
# - Gains 7.5, 0.5, 1.5. The reference calls `backward` on the sum times B; the
#   course's `"loss"` is the sum, and its three items equal the reference's
#   `loss_items`.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** A batch with no box at all (the given `no_boxes`, `no_labels`,
# `no_mask`, M = 0): which terms are zero, and what is the class term? Assign to
# `empty_losses` the dict `yolov8_loss` returns for our batch's predictions with these
# targets, and to `all_background_bce` (a number) the BCE of every point and class
# against a target of 0, summed. Predict the relation between the two first.

# %% tags=["solution"]
no_boxes = torch.zeros(2, 0, 4, device=device)  # (B, M, 4), M = 0
no_labels = torch.zeros(2, 0, dtype=torch.long, device=device)  # (B, M)
no_mask = torch.zeros(2, 0, dtype=torch.bool, device=device)  # (B, M)
empty_losses = None  # dict with "box", "cls", "dfl", "loss"
all_background_bce = None  # a number
### BEGIN SOLUTION
with torch.no_grad():
    empty_losses = yolov8_loss(
        cls_logits, dist_logits, points, point_strides, no_boxes, no_labels, no_mask
    )
    all_background_bce = F.binary_cross_entropy_with_logits(
        cls_logits, torch.zeros_like(cls_logits), reduction="sum"
    )
# No positive: box and DFL are 0; S = max(1, 0) = 1, so cls = 0.5 x the summed BCE.
### END SOLUTION
if empty_losses is not None:
    print({name: f"{value.item():.4g}" for name, value in empty_losses.items()})

# %% tags=["check"]
check_true(
    isinstance(empty_losses, dict),
    "`empty_losses` should be the dict that yolov8_loss returns (box, cls, dfl, loss).",
    hint="call yolov8_loss(cls_logits, dist_logits, points, point_strides, no_boxes, "
    "no_labels, no_mask), under torch.no_grad().",
)  # fmt: skip
for name in ("box", "dfl"):
    check_close(
        f"empty_losses['{name}']", empty_losses[name], 0.0,
        hint="without a box there is no positive, and the box and DFL terms sum over the "
        "positives only.",
    )  # fmt: skip
# With target 0, BCE(x, 0) = -log(1 - sigmoid(x)) = softplus(x).
expected_bce = F.softplus(cls_logits.detach()).sum()
check_close(
    "all_background_bce", all_background_bce, expected_bce,
    hint="F.binary_cross_entropy_with_logits(cls_logits, zeros, reduction='sum'): 2 x 2100 "
    "x 6 terms, each -log(1 - p).",
)  # fmt: skip
check_close(
    "empty_losses['cls']", empty_losses["cls"], 0.5 * expected_bce,
    hint="the target scores sum to 0, so S = max(1, 0) = 1: the class term is the gain 0.5 "
    "times the summed BCE.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_close(
    "empty_losses['loss']", empty_losses["loss"], 0.5 * expected_bce,
    hint="the total is the sum of the three terms, two of them 0.",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** The best a distribution can do: for a target of 3.3 bins, build
# `best_logits` `(1, 16)`, the logits of the distribution over the R + 1 = 16 bins with
# 0.7 on bin 3 and 0.3 on bin 4, and its DFL `best_dfl` (a number, from
# `distribution_focal_loss`). Show that `best_dfl` is the entropy of (0.7, 0.3) and
# that the expected bin is 3.3; then move some mass to bin 5 and give that
# distribution's DFL, `worse_dfl` (a number): it is larger.

# %% tags=["solution"]
target_bin = torch.tensor([3.3])  # (1,) bins
best_logits = None  # (1, 16)
best_dfl = worse_dfl = None  # a number each
### BEGIN SOLUTION
best_logits = torch.full((1, 16), -30.0)  # e^-30: practically 0 on the other bins
best_logits[0, 3], best_logits[0, 4] = torch.tensor(0.7).log(), torch.tensor(0.3).log()
best_dfl = distribution_focal_loss(best_logits, target_bin, reduction="sum")
worse_logits = best_logits.clone()
worse_logits[0, 4], worse_logits[0, 5] = torch.tensor(0.2).log(), torch.tensor(0.1).log()
worse_dfl = distribution_focal_loss(worse_logits, target_bin, reduction="sum")
### END SOLUTION
if best_dfl is not None and worse_dfl is not None:
    print(f"best DFL {float(best_dfl):.4f}, worse DFL {float(worse_dfl):.4f}")

# %% tags=["check"]
check_true(
    best_logits is not None,
    "`best_logits` is still None: assign a (1, 16) tensor of logits to it.",
    hint="start from torch.full((1, 16), -30.0) and set bins 3 and 4 to log 0.7, log 0.3.",
)  # fmt: skip
expected_probabilities = torch.zeros(1, 16)
expected_probabilities[0, 3], expected_probabilities[0, 4] = 0.7, 0.3
check_close(
    "best_logits.softmax(-1)", torch.as_tensor(best_logits).softmax(-1),
    expected_probabilities, atol=1e-6,
    hint="the softmax of logits log p is p when the p sum to 1: log 0.7 at bin 3, log 0.3 "
    "at bin 4, and a very low logit (-30) everywhere else.",
)  # fmt: skip
entropy = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))  # 0.6109
check_close(
    "best_dfl", best_dfl, entropy,
    hint="DFL = -(0.7 log p3 + 0.3 log p4) for a target of 3.3; with p3 = 0.7, p4 = 0.3 it "
    "is the entropy of (0.7, 0.3).",
)  # fmt: skip
check_true(
    worse_dfl is not None and float(worse_dfl) > entropy,
    f"`worse_dfl` should be a number above best_dfl ({entropy:.4f}); it is {worse_dfl}.",
    hint="take mass from bin 3 or 4 to bin 5 (e.g. 0.7, 0.2, 0.1) and call "
    "distribution_focal_loss on those logits with the same target.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_close(
    "the expected bin of best_logits", dfl_distances(best_logits.repeat(1, 4))[0, 0], 3.3,
    hint="0.7 x 3 + 0.3 x 4 = 3.3: the integral of the best distribution is the target.",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** A 300 × 300 px box centred on (164, 164), learnt by the point of each
# level nearest its centre. Assign `needed` `(3,)`, the largest exact distance (in
# strides) from that point to a side at strides 8, 16 and 32; `clamped_stride`, the
# stride whose DFL targets must be clamped (R = 15 is the last bin); and `shortfall`,
# by how many strides the decoded box falls short on each side there.

# %% tags=["solution"]
big_box = torch.tensor([14.0, 14.0, 314.0, 314.0])  # xyxy px
needed = None  # (3,) strides, at strides 8, 16, 32
clamped_stride = None  # int
shortfall = None  # strides
### BEGIN SOLUTION
needed = []
for stride in (8, 16, 32):
    point = (torch.tensor([164.0, 164.0]) / stride).floor() + 0.5  # grid units, a cell centre
    exact = encode_distance(point, big_box / stride)  # (4,) l, t, r, b strides
    kept = encode_distance(point, big_box / stride, max_dist=15, eps=0.01)
    needed.append(exact.max().item())
    if (exact > kept).any():
        clamped_stride, shortfall = stride, (exact - kept).max().item()
# 150 px per side is 18.75 strides at stride 8, more than 15: clamped to 14.99, 3.76
# strides (30 px) short on every side. At strides 16 and 32 (points at 168 and 176 px)
# every side is below 15 strides: learnt exactly.
### END SOLUTION
if shortfall is not None:
    print(f"needed {needed} strides; clamped at stride {clamped_stride}, short {shortfall:.4g}")

# %% tags=["check"]
# Nearest points: 164 = 4 + 8 x 20 (stride 8), 168 (16), 176 (32). Largest sides:
# 150 / 8 = 18.75, (168 - 14) / 16 = 9.625, (176 - 14) / 32 = 5.0625 strides.
check_close(
    "needed", needed, [18.75, 9.625, 5.0625],
    hint="the point of a level is at ((164 // stride) + 0.5) × stride; divide point and "
    "box by the stride and take the largest of l, t, r, b (encode_distance without "
    "max_dist).",
)  # fmt: skip
check_equal(
    "clamped_stride", clamped_stride, 8,
    hint="a distance above R - 0.01 = 14.99 strides is clamped: which entry of `needed` is "
    "above it?",
)  # fmt: skip
check_close(
    "shortfall", shortfall, 18.75 - 14.99,
    hint="the target is clamped to 14.99 strides: the decoded side falls short by the "
    "exact distance minus 14.99.",
)  # fmt: skip
check_passed("Exercise 3")

# %% [markdown]
# **Exercise 4.** The normaliser S is shared by the three terms. Scale every target
# score by 0.5 (as if the assigner's metrics were twice smaller): what happens to the
# box term? Explain with the formula, then compute `half_sum` (the new S, a number) and
# `half_box` (the box term before its gain, a number) with the inline computation of
# section 4.

# %% tags=["solution"]
half_sum = half_box = None  # a number each
### BEGIN SOLUTION
half_scores = target_scores * 0.5  # (B, A, C)
half_sum = half_scores.sum().clamp(min=1)
half_box = ((1 - ciou.detach()) * half_scores.sum(-1)[fg_mask]).sum() / half_sum
# The weights and S halve together, so the term is unchanged, as long as S stays above
# its floor of 1; only a batch whose target scores sum below 1 feels the floor.
### END SOLUTION
if half_sum is not None and half_box is not None:
    print(f"S {target_scores_sum.item():.4g} -> {float(half_sum):.4g}")
    print(f"box {loss_box.item():.4g} -> {float(half_box):.4g}")

# %% tags=["check"]
check_close(
    "half_sum", half_sum, assignment.scores.sum() / 2,
    hint="S = max(1, sum of the target scores): halving every score halves the sum, which "
    "stays above 1 here.",
)  # fmt: skip
check_close(
    "half_box", half_box, losses["box"] / 7.5,
    hint="weights w_a = sum_c s_ac and S both halve: the box term (before the gain 7.5) is "
    "the one of section 4. Recompute ((1 - ciou) * w).sum() / S with the halved scores.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_close(
    "half_box", half_box, loss_box, rtol=1e-5,
    hint="the halved weights and S cancel out exactly (up to rounding).",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 4")

# %% [markdown]
# ## Further reading
#
# - Ultralytics `ultralytics/utils/loss.py` (`v8DetectionLoss`, `BboxLoss`,
#   `_df_loss`) and `cfg/default.yaml` (box 7.5, cls 0.5, dfl 1.5),
#   <https://github.com/ultralytics/ultralytics>
# - X. Li et al., *Generalized Focal Loss*, NeurIPS 2020 (DFL, eq. 6),
#   <https://arxiv.org/abs/2006.04388>
# - Z. Zheng et al., *Distance-IoU Loss*, AAAI 2020 (CIoU), <https://arxiv.org/abs/1911.08287>
# - C. Feng et al., *TOOD*, ICCV 2021 (the target scores), <https://arxiv.org/abs/2108.07755>
