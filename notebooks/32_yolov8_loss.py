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

from detutils import boxes as box_ops
from detutils.assigners import pad_ground_truth
from detutils.assigners.tal import assign_task_aligned
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
# target score of point a and class c (notebook 31), $w_a = \sum_c \hat s_{ac}$ the
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
num_bins = dist_logits.shape[-1] // 4  # R + 1 = 16
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
# **Exercise 1.** A batch with no box at all: which terms are zero, and what is the
# class term? Check with `yolov8_loss`.

# %% tags=["solution"]
no_boxes = torch.zeros(2, 0, 4, device=device)
no_labels = torch.zeros(2, 0, dtype=torch.long, device=device)
no_mask = torch.zeros(2, 0, dtype=torch.bool, device=device)
with torch.no_grad():
    empty = yolov8_loss(
        cls_logits, dist_logits, points, point_strides, no_boxes, no_labels, no_mask
    )
    all_background = F.binary_cross_entropy_with_logits(
        cls_logits, torch.zeros_like(cls_logits), reduction="sum"
    )
# No positive: box and DFL are 0; S = max(1, 0) = 1, so cls = 0.5 x the summed BCE.
assert empty["box"] == 0 and empty["dfl"] == 0
torch.testing.assert_close(empty["cls"], 0.5 * all_background)
print(f"cls {empty['cls'].item():.4f} = 0.5 x {all_background.item():.4f}")

# %% [markdown]
# **Exercise 2.** The best a distribution can do: for a target of 3.3 bins, build the
# logits of the distribution with 0.7 on bin 3 and 0.3 on bin 4. Show that its DFL
# equals the entropy of (0.7, 0.3), that its expected bin is 3.3, and that moving some
# mass to bin 5 raises the loss.

# %% tags=["solution"]
target = torch.tensor([3.3])
best = torch.full((1, 16), -30.0)
best[0, 3], best[0, 4] = torch.tensor(0.7).log(), torch.tensor(0.3).log()
entropy = -(0.7 * torch.tensor(0.7).log() + 0.3 * torch.tensor(0.3).log())
torch.testing.assert_close(distribution_focal_loss(best, target, reduction="sum"), entropy)
torch.testing.assert_close(dfl_distances(best.repeat(1, 4))[0, 0], torch.tensor(3.3))
worse = best.clone()
worse[0, 4], worse[0, 5] = torch.tensor(0.2).log(), torch.tensor(0.1).log()
assert distribution_focal_loss(worse, target) > distribution_focal_loss(best, target)
print(f"minimum DFL at 3.3: {entropy.item():.4f}")

# %% [markdown]
# **Exercise 3.** A 300 × 300 px box centred on (164, 164), learnt by the point of each
# level nearest its centre. Which level must clamp its DFL targets, and by how many
# strides does the decoded box fall short there?

# %% tags=["solution"]
big_box = torch.tensor([14.0, 14.0, 314.0, 314.0])
for stride in (8, 16, 32):
    point = (torch.tensor([164.0, 164.0]) / stride).floor() + 0.5  # grid units, a cell centre
    exact = encode_distance(point, big_box / stride)
    kept = encode_distance(point, big_box / stride, max_dist=15, eps=0.01)
    print(f"stride {stride}: needs {exact.max().item():.4f}, gets {kept.max().item():.4f} strides")
    if stride == 8:
        assert (exact > 15).all() and torch.allclose(kept, torch.full((4,), 14.99))
    else:
        torch.testing.assert_close(kept, exact)
# 150 px per side is 18.75 strides at stride 8, more than 15: clamped to 14.99, 3.76
# strides (30 px) short on every side. At strides 16 and 32 (points at 168 and 176 px)
# every side is below 15 strides: learnt exactly.

# %% [markdown]
# **Exercise 4.** The normaliser S is shared by the three terms. Scale every target
# score by 0.5 (as if the assigner's metrics were twice smaller): what happens to the
# box term? Explain with the formula, then check with the inline computation.

# %% tags=["solution"]
half_scores = target_scores * 0.5
half_sum = half_scores.sum().clamp(min=1)
half_box = ((1 - ciou) * half_scores.sum(-1)[fg_mask]).sum() / half_sum
print(f"S {target_scores_sum.item():.4f} -> {half_sum.item():.4f}")
print(f"box {loss_box.item():.4f} -> {half_box.item():.4f}")
# The weights and S halve together, so the term is unchanged, as long as S stays above
# its floor of 1; only a batch whose target scores sum below 1 feels the floor.
assert half_sum > 1
torch.testing.assert_close(half_box, loss_box)

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
