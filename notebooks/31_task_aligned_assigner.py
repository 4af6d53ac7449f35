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
# # 31 · YOLOv8: the task-aligned assigner
#
# ATSS (notebook 21) picks positives from the geometry of priors and boxes alone. The
# task-aligned assigner of TOOD (Feng et al., 2021), which YOLOv8 uses, asks the network
# instead: among the anchor points inside a box, the positives are the ones whose
# *current* prediction is already best, both in class score and in box overlap. The
# choice changes as training goes, and the class target of a positive is not 1 but a
# soft score that grows with the quality of its box. This notebook runs the assigner
# step by step on one 320-px image (2100 anchor points), with the predictions of a
# YOLOv8n at its first training step, and settles a few common misunderstandings by
# running the code.
#
# **Learning goals**
#
# 1. Run the five steps by hand: candidates inside the box, the alignment metric
#    t = s^0.5 × u^6, the top 10 per box, conflicts, normalised target scores.
# 2. Check the inline version against `assign_task_aligned` and its dense twin.
# 3. Tell what the assigner does *not* do: candidates outside the box, a sum instead of
#    a product, a VFL class loss, DFL bins as coordinates.
# 4. Explain, with numbers computed from shapes, why the package assigns boxes in chunks.
#
# **Prerequisites**: notebook 01 (CIoU), notebook 21 (ATSS, assignment vocabulary),
# notebook 30 (YOLOv8's anchor points and decoded predictions).
#
# **Notation**: the letters of the shapes (B, A, M, C, K, R, ...), the box formats and
# the flat prior index are those of [notebook 09](09_notation.ipynb).

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ['png']

# %%
# NBVAL_IGNORE_OUTPUT
# (versions and device differ from machine to machine)
from detutils.course import setup, significant

device = setup()["device"]

# %%
import matplotlib.pyplot as plt
import pandas as pd
import torch
import torch.nn.functional as F
from ipywidgets import FloatSlider, IntSlider, interact

from detutils import boxes as box_ops
from detutils.assigners import BACKGROUND, pad_ground_truth
from detutils.assigners.tal import (
    assign_task_aligned,
    assign_task_aligned_dense,
    top_k_mask,
)
from detutils.checks import check_close, check_equal, check_passed, check_true
from detutils.coders import encode_distance
from detutils.data.shapes import CLASS_NAMES, render_sample
from detutils.losses import yolov8_loss
from detutils.models.yolov8 import build_yolov8n
from detutils.viz import draw_assignment

# %% [markdown]
# ## 1. One image and the network's first predictions
#
# Image 1797 of the shapes set again: a large star, a cross and a 10-px star inside the
# large one. The predictions are those of a fresh YOLOv8n in training mode, as the loss
# sees them at the first step: class probabilities `(B, A, C)` and decoded boxes
# `(B, A, 4)` in pixels. The assigner never propagates gradients: it reads detached
# predictions.

# %%
image, _, objects = render_sample(seed=0, split="train", index=1797, size=320)
gt_boxes = box_ops.xywh_to_xyxy(torch.tensor([obj["bbox"] for obj in objects], dtype=torch.float32))
gt_boxes = gt_boxes.to(device)  # (M, 4) xyxy px
gt_labels = torch.tensor([obj["label"] for obj in objects], device=device)  # (M,)
names = ["0 large star", "1 cross", "2 small star"]

model = build_yolov8n(num_classes=len(CLASS_NAMES)).to(device).train()
images = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255).to(device)
with torch.no_grad():
    maps = model(images)
    pred_boxes, pred_scores = model.decode(maps)  # (1, A, 4) px, (1, A, C)
    points = model.flatten(maps)[2]  # (A, 2) px
print(f"pred_scores {tuple(pred_scores.shape)}, pred_boxes {tuple(pred_boxes.shape)}")
print(f"points {tuple(points.shape)}; gt boxes:", gt_boxes.int().tolist())

# %% [markdown]
# ## 2. Step 1: candidates lie inside the box
#
# A point is a candidate of box j when it lies strictly inside it: all four distances
# to the sides positive (above 1e-9 px). There is no IoU threshold and no radius
# around the centre: every point inside a large box is a candidate.

# %%
left_top = points[None] - gt_boxes[:, None, :2]  # (M, A, 2)
right_bottom = gt_boxes[:, None, 2:] - points[None]  # (M, A, 2)
sides = torch.cat([left_top, right_bottom], dim=-1)  # (M, A, 4)
candidate = sides.amin(dim=-1) > 1e-9  # (M, A)
level_of = torch.cat([torch.full((n,), level) for level, n in enumerate([1600, 400, 100])])
pd.DataFrame(
    {
        f"stride {stride}": candidate[:, level_of == i].sum(1).tolist()
        for i, stride in enumerate([8, 16, 32])
    },
    index=names,
)

# %% [markdown]
# The 10-px star has a single candidate: with points 8 px apart, a 10-px box always
# holds at least one, a box narrower than 8 px may hold none and then gets no positive
# at all. Newer ultralytics releases widen such boxes for this test only, so that tiny
# boxes always get candidates; the course teaches the classic YOLOv8 behaviour.

# %%
assert candidate.sum(dim=1).tolist() == [889, 118, 1]

# %% [markdown]
# *Misunderstanding: "a point near the box can learn it too".* Give a point just
# outside the cross a perfect prediction (the cross itself, probability 1): it is
# still not a positive. Its distances to the left side would be negative, and a
# distribution over bins 0 .. 15 cannot express that.

# %%
outside = int(((points[:, 0] - 250).abs() + (points[:, 1] - 252).abs()).argmin())  # (248, 252)
cheat_boxes, cheat_scores = pred_boxes.clone(), pred_scores.clone()
cheat_boxes[0, outside] = gt_boxes[1]
cheat_scores[0, outside, gt_labels[1]] = 1.0
cheat = assign_task_aligned(
    cheat_scores,
    cheat_boxes,
    points,
    gt_labels[None],
    gt_boxes[None],
    torch.ones(1, 3, dtype=torch.bool, device=device),
)
print(f"point {points[outside].tolist()} vs the cross's left side x = {gt_boxes[1, 0].item():.0f}")
assert not candidate[1, outside] and not cheat.fg_mask[0, outside]

# %% [markdown]
# ## 3. Step 2: the alignment metric is a product
#
# For each candidate pair: s, the predicted probability of the box's class at the
# point, and u, the CIoU of the box with the point's predicted box (clamped at 0).
# The metric is t = s^alpha × u^beta with alpha = 0.5, beta = 6: the overlap dominates,
# a CIoU of 0.9 counts 0.53, one of 0.5 counts 0.016. Non-candidates get t = 0.
# (s, u and t are TOOD's letters: in this notebook s is a class score; the strides,
# which the course elsewhere writes s, are named in words here.) The tensors of the
# candidate pairs have one entry per pair, 1008 of them here (889 + 118 + 1).

# %%
alpha, beta, topk = 0.5, 6.0, 10
box_index, anchor_index = candidate.nonzero(as_tuple=True)  # (pairs,) each
pair_overlaps = box_ops.box_iou_aligned(
    gt_boxes[box_index], pred_boxes[0, anchor_index], "ciou"
).clamp(min=0)  # (pairs,)
pair_scores = pred_scores[0, anchor_index, gt_labels[box_index]]  # (pairs,)
overlaps = torch.zeros(candidate.shape, device=device)  # (M, A)
metric = torch.zeros(candidate.shape, device=device)  # (M, A)
overlaps[box_index, anchor_index] = pair_overlaps
metric[box_index, anchor_index] = pair_scores.sqrt() * pair_overlaps.pow(6)
print(f"metric {tuple(metric.shape)}, candidate pairs {len(box_index)}")

# %% [markdown]
# The cross's ten best candidates, with s, u and t:

# %%
cross_best = metric[1].topk(topk).indices  # (10,)
cross_table = pd.DataFrame(
    {
        "anchor": cross_best.tolist(),
        "point": [tuple(p) for p in points[cross_best].int().tolist()],
        "s": pred_scores[0, cross_best, gt_labels[1]].tolist(),
        "u (CIoU)": overlaps[1, cross_best].tolist(),
        "t": metric[1, cross_best].tolist(),
    }
)
# 3 significant digits: s and u come from a network, whose float32 outputs differ in
# their sixth digit from one CPU to another, and t = s^0.5 u^6 multiplies u's error by 6.
print(significant(cross_table, digits=3).to_string(float_format="{:.3g}".format))

# %% [markdown]
# *Misunderstanding: "the metric adds score and overlap".* It multiplies them: a point
# whose score for the class is 0 gets t = 0 whatever its box, and in `detutils` a point
# with t = 0 is never a positive. That rule is this package's: ultralytics takes the
# top k over every anchor, so a box with fewer than k points of positive t fills its
# top k with zero-metric anchors, whichever `topk` returns first, and those inside the
# box become positives with a class target of 0 and a box weight of 0, which every loss
# term then treats as background (the docstring of `detutils.assigners.tal` says
# more). Zero the cross's class score at its best point and run the assigner:

# %%
best_point = int(cross_best[0])
zeroed = pred_scores.clone()
zeroed[0, best_point, gt_labels[1]] = 0.0
mask = torch.ones(1, 3, dtype=torch.bool, device=device)
before = assign_task_aligned(pred_scores, pred_boxes, points, gt_labels[None], gt_boxes[None], mask)
after = assign_task_aligned(zeroed, pred_boxes, points, gt_labels[None], gt_boxes[None], mask)
print(f"anchor {best_point}: u = {overlaps[1, best_point].item():.4f}")
print("positive before:", bool(before.fg_mask[0, best_point]))
print("positive after:", bool(after.fg_mask[0, best_point]))
assert before.fg_mask[0, best_point] and not after.fg_mask[0, best_point]

# %% [markdown]
# ## 4. Step 3: the top 10 of every box
#
# Each box keeps its k = 10 candidates of largest t. A box with fewer than 10
# candidates of positive t keeps them all: the small star keeps its single one.
# (`top_k_mask` also gives equal metrics to the lower index, so the result does not
# depend on the device.)

# %%
selected = top_k_mask(metric, topk) & candidate  # (M, A)
print("selected per box:", selected.sum(dim=1).tolist())
assert selected.sum(dim=1).tolist() == [10, 10, 1]
assert torch.equal(selected[1].nonzero().flatten(), cross_best.sort().values)

# %% [markdown]
# ## 5. Step 4: conflicts
#
# A point among the top 10 of several boxes learns the box whose CIoU with its
# prediction is highest. No point of our image is selected twice:

# %%
contested = selected.sum(dim=0) > 1  # (A,)
print(f"contested points: {int(contested.sum())}")
best_box = overlaps.argmax(dim=0)  # (A,) highest CIoU over the point's boxes
is_best = F.one_hot(best_box, len(gt_boxes)).T.bool()  # (M, A)
positive = torch.where(contested[None], is_best, selected)  # (M, A)
fg_mask = positive.any(dim=0)  # (A,)
gt_index = torch.where(fg_mask, positive.int().argmax(dim=0), BACKGROUND)  # (A,)

# %% [markdown]
# Two 64-px boxes 16 px apart (notebook 21's pair) share many points: each box picks its
# top 10 on its own, and a point picked by both goes to the box it overlaps more.

# %%
pair = torch.tensor([[100.0, 100.0, 164.0, 164.0], [116.0, 108.0, 180.0, 172.0]], device=device)
pair_mask = torch.ones(1, 2, dtype=torch.bool, device=device)
pair_labels = torch.zeros(1, 2, dtype=torch.long, device=device)
pair_result = assign_task_aligned(
    pred_scores, pred_boxes, points, pair_labels, pair[None], pair_mask
)
pair_inside = torch.stack([((points > box[:2]) & (points < box[2:])).all(-1) for box in pair])
pair_ciou = torch.stack(
    [box_ops.box_iou_aligned(box.expand(len(points), 4), pred_boxes[0], "ciou") for box in pair]
)
pair_ciou = pair_ciou.clamp(min=0) * pair_inside  # (2, A)
pair_metric = pred_scores[0, :, 0].sqrt() * pair_ciou.pow(6)  # (2, A), class 0
pair_selected = top_k_mask(pair_metric, topk) & pair_inside  # (2, A)
both = pair_selected.all(dim=0).nonzero().flatten()  # points picked by both boxes
pd.DataFrame(
    {
        "anchor": both.tolist(),
        "CIoU box 0": pair_ciou[0, both].tolist(),
        "CIoU box 1": pair_ciou[1, both].tolist(),
        "learns box": pair_result.gt_index[0, both].tolist(),
    }
)

# %%
torch.testing.assert_close(pair_result.gt_index[0, both], pair_ciou[:, both].argmax(dim=0))
print("positives per box:", [int((pair_result.gt_index[0] == j).sum()) for j in range(2)])
assert len(both) == 5 and pair_result.num_positive == 20 - len(both)

# %% [markdown]
# ## 6. Step 5: normalised target scores
#
# A positive of box j learns the class of j with the soft target
# t / t_max(j) × u_max(j), t_max and u_max being the largest metric and the largest
# CIoU among the final positives of j. The best-aligned point of a box learns that
# box's best CIoU, the others less in proportion to their metric. All other classes,
# and every background point, learn 0.

# %%
final_metric = metric * positive  # (M, A)
t_max = final_metric.amax(dim=1, keepdim=True)  # (M, 1)
u_max = (overlaps * positive).amax(dim=1, keepdim=True)  # (M, 1)
norm_metric = (final_metric * u_max / (t_max + 1e-9)).amax(dim=0)  # (A,)
target_scores = torch.zeros_like(pred_scores[0])  # (A, C)
target_scores[fg_mask, gt_labels[gt_index[fg_mask]]] = norm_metric[fg_mask]
table = pd.DataFrame(
    {
        "positives": positive.sum(dim=1).tolist(),
        "t_max": t_max.flatten().tolist(),
        "u_max": u_max.flatten().tolist(),
        "largest target": [target_scores[gt_index == j].max().item() for j in range(3)],
    },
    index=names,
)
significant(table, 3)  # t_max is tiny: its fourth digit differs from CPU to CPU

# %% [markdown]
# The small star's target is almost zero, not its u_max: its one positive predicts a
# 120-px box for a 10-px star, so t = s^0.5 u^6 is far below the 1e-9 that keeps
# t / t_max finite. This matches the reference (same `eps`): at the start of training
# tiny boxes teach their class almost nothing, and more as their boxes improve.
#
# The whole image, the five steps in one function, against the package:


# %%
def assign_inline(pred_scores, pred_boxes, points, gt_boxes, gt_labels, topk=10):
    """Task-aligned assignment of one image -> gt index (A,) and target scores (A, C)."""
    sides = torch.cat(
        [points[None] - gt_boxes[:, None, :2], gt_boxes[:, None, 2:] - points[None]], -1
    )
    candidate = sides.amin(dim=-1) > 1e-9  # (M, A)  1.
    box, anchor = candidate.nonzero(as_tuple=True)
    overlaps = torch.zeros(candidate.shape, device=points.device)  # (M, A)  2.
    overlaps[box, anchor] = box_ops.box_iou_aligned(
        gt_boxes[box], pred_boxes[anchor], "ciou"
    ).clamp(min=0)
    metric = torch.zeros_like(overlaps)
    metric[box, anchor] = pred_scores[anchor, gt_labels[box]].sqrt() * overlaps[box, anchor].pow(6)
    selected = top_k_mask(metric, topk) & candidate  # (M, A)  3.
    is_best = F.one_hot(overlaps.argmax(dim=0), len(gt_boxes)).T.bool()  # 4.
    positive = torch.where(selected.sum(dim=0) > 1, is_best, selected)
    fg_mask = positive.any(dim=0)  # (A,)
    gt_index = torch.where(fg_mask, positive.int().argmax(dim=0), BACKGROUND)
    final_metric = metric * positive  # 5.
    u_max = (overlaps * positive).amax(dim=1, keepdim=True)
    norm = (final_metric * u_max / (final_metric.amax(dim=1, keepdim=True) + 1e-9)).amax(dim=0)
    scores = torch.zeros_like(pred_scores)  # (A, C)
    scores[fg_mask, gt_labels[gt_index[fg_mask]]] = norm[fg_mask]
    return gt_index, scores


inline_index, inline_scores = assign_inline(
    pred_scores[0], pred_boxes[0], points, gt_boxes, gt_labels
)
result = assign_task_aligned(pred_scores, pred_boxes, points, gt_labels[None], gt_boxes[None], mask)
dense = assign_task_aligned_dense(
    pred_scores, pred_boxes, points, gt_labels[None], gt_boxes[None], mask
)
torch.testing.assert_close(inline_index, gt_index)
torch.testing.assert_close(inline_scores, target_scores)
# The package computes u^6 by repeated squaring (bit-stable); pow(6) differs in the last bits.
torch.testing.assert_close(result.gt_index[0], inline_index)
torch.testing.assert_close(result.scores[0], inline_scores)
for field_chunked, field_dense in zip(result, dense, strict=True):
    assert torch.equal(field_chunked, field_dense)
print(
    f"inline == assign_task_aligned == assign_task_aligned_dense; {result.num_positive} positives"
)

# %% [markdown]
# From here on the assigner lives in `detutils.assigners.tal`. Its result holds per
# point the label, box, target scores `(B, A, C)`, `fg_mask` and gt index. The
# positives on the image, by level (points in the colour of the box they learn), for
# the metric t = s^0.5 × u^6 and the top 10 of each box:


# %%
def draw_positives(assigned, title):
    """The positives of an assignment of our image, one panel per level."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4))
    for level, (ax, start, count) in enumerate(
        zip(axes, [0, 1600, 2000], [1600, 400, 100], strict=True)
    ):
        draw_assignment(
            image,
            points[start : start + count].cpu(),
            gt_boxes.cpu(),
            assigned.gt_index[0, start : start + count].cpu(),
            ax=ax,
            gt_labels=gt_labels.cpu(),
            class_names=CLASS_NAMES,
            title=f"stride {8 * 2**level}",
        )
    fig.suptitle(title)


draw_positives(result, f"t = s^{alpha} × u^{beta:g}, top {topk} per box")
plt.show()


# %%
# NBVAL_IGNORE_OUTPUT
# (an interactive version of the figure above: move the slider; the figure above is
# the one the tests check)
def draw_positives_for(k, a, b):
    assigned = assign_task_aligned(
        pred_scores, pred_boxes, points, gt_labels[None], gt_boxes[None], mask,
        topk=k, alpha=a, beta=b,
    )  # fmt: skip
    per_box = [int((assigned.gt_index[0] == j).sum()) for j in range(len(gt_boxes))]
    draw_positives(assigned, f"t = s^{a:g} × u^{b:g}, top {k} per box: positives {per_box}")
    plt.show()


_ = interact(
    draw_positives_for,
    k=IntSlider(value=10, min=1, max=20, description="topk"),
    a=FloatSlider(value=0.5, min=0.0, max=3.0, step=0.25, description="alpha"),
    b=FloatSlider(value=6.0, min=0.0, max=10.0, step=0.5, description="beta"),
)


# %% [markdown]
# The untrained network predicts 120-px squares at stride 8, 240 at 16, 480 at 32
# (notebook 30): the large star's positives go to stride 16, whose squares fit its
# 232 × 186 px best, the cross's to stride 8, and the small star's single candidate is
# a stride-8 point. Nobody assigned levels to sizes: the predictions did, and as they
# improve during training the choice moves with them.
#
# ## 7. What the targets feed: BCE on soft scores, DFL on distances
#
# *Misunderstanding: "YOLOv8's class loss is varifocal".* It is plain binary
# cross-entropy against the soft target scores, summed over all points and classes and
# divided by the sum of the target scores. Varifocal loss (VFL) would also down-weight
# the negatives by alpha p^gamma; YOLOv8's `cls` term equals BCE and not VFL:

# %%
with torch.no_grad():
    dist_logits, cls_logits, points_check, point_strides = model.flatten(maps)
    losses = yolov8_loss(
        cls_logits, dist_logits, points, point_strides, gt_boxes[None], gt_labels[None], mask
    )
targets = result.scores  # (1, A, C)
normaliser = targets.sum().clamp(min=1)
bce = F.binary_cross_entropy_with_logits(cls_logits, targets, reduction="sum") / normaliser
probabilities = cls_logits.sigmoid()
vfl_weight = torch.where(
    targets > 0, targets, 0.75 * probabilities.pow(2.0)
)  # VFL: alpha 0.75, gamma 2
vfl = (
    F.binary_cross_entropy_with_logits(cls_logits, targets, reduction="none") * vfl_weight
).sum() / normaliser
print(f"cls term / 0.5: {losses['cls'].item() / 0.5:.4f}")
print(f"BCE: {bce.item():.4f}, VFL: {vfl.item():.4f}")
torch.testing.assert_close(losses["cls"], 0.5 * bce)
assert abs(vfl.item() - bce.item()) > 0.1 * bce.item()

# %% [markdown]
# *Misunderstanding: "the 16 DFL bins are box coordinates".* They are the distances
# from the point to the four sides, l, t, r, b (left, top, right, bottom: this t is not
# the metric), in strides: for a positive, l + r is the box's width and t + b its
# height, in strides, wherever the point sits in the box.

# %%
positive_points = result.fg_mask[0].nonzero().flatten()[:3]  # (3,)
stride_of = point_strides[positive_points, None]  # (3, 1)
targets_ltrb = encode_distance(
    points[positive_points] / stride_of, result.boxes[0, positive_points] / stride_of
)
box_sizes = (
    result.boxes[0, positive_points, 2:] - result.boxes[0, positive_points, :2]
) / stride_of
pd.DataFrame(
    targets_ltrb.tolist(), columns=["l", "t", "r", "b"], index=positive_points.tolist()
).assign(**{"w / stride": box_sizes[:, 0].tolist(), "h / stride": box_sizes[:, 1].tolist()})

# %%
torch.testing.assert_close(targets_ltrb[:, 0] + targets_ltrb[:, 2], box_sizes[:, 0])
torch.testing.assert_close(targets_ltrb[:, 1] + targets_ltrb[:, 3], box_sizes[:, 1])
assert (targets_ltrb >= 0).all()  # candidates are inside: no negative distance

# %% [markdown]
# ## 8. Why the package assigns in chunks
#
# The reference builds `(B, M, A)` tensors: the metric, the overlaps, the candidate
# and positive masks, and a `(B, M, A, 4)` tensor for the inside test. With a batch of
# 16 crowded images at 640 px, their sizes follow from the shapes alone:

# %%
batch, num_boxes, num_points = 16, 500, 8400
float_bytes = batch * num_boxes * num_points * 4  # one (B, M, A) float32
sides_bytes = 4 * float_bytes  # (B, M, A, 4) float32
chunk_bytes = batch * 32 * num_points * 4  # (B, 32, A) float32, chunk_size 32
print(f"(B, M, A) float32: {float_bytes / 1e6:.1f} MB; (B, M, A, 4): {sides_bytes / 1e6:.1f} MB")
print(f"(B, 32, A) float32, one chunk: {chunk_bytes / 1e6:.1f} MB")
assert float_bytes == 268_800_000

# %% [markdown]
# Steps 1 to 3 concern one box at a time, so `assign_task_aligned` runs them on
# 32 boxes at once and keeps, per point, only the running best box between chunks;
# memory grows with B × A instead of B × M × A, and the result is bit for bit that of
# `assign_task_aligned_dense` (checked above, and in the package's tests).
#
# ## Recap
#
# - Candidates of a box: the anchor points strictly inside it, on every level.
# - Metric t = s^0.5 × u^6, s the class probability and u the CIoU of the predicted
#   box: a product, so both must be good; the overlap weighs most.
# - Each box keeps its 10 candidates of largest t; a point picked by several boxes
#   learns the one of highest CIoU.
# - Targets: the box, its class with the soft score t / t_max × u_max, 0 elsewhere.
# - The class loss is BCE on those scores (not VFL); the DFL targets are l, t, r, b
#   distances in strides.
# - `assign_task_aligned` chunks the boxes and equals the dense formulation exactly.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** Run `assign_task_aligned` on our image with `topk=1`. Which point is
# the positive of each box, and what is its target score? Predict, then assign
# `top1_points` `(3,)` (the anchor index of the positive of boxes 0, 1, 2) and
# `top1_targets` `(3,)` (the target score of each of them, at its box's class).

# %% tags=["solution"]
top1_points = top1_targets = None  # (3,) each: anchor indices, target scores
### BEGIN SOLUTION
one = assign_task_aligned(
    pred_scores, pred_boxes, points, gt_labels[None], gt_boxes[None], mask, topk=1
)
top1_points = torch.stack(
    [(one.gt_index[0] == j).nonzero().flatten()[0] for j in range(3)]
)  # (3,) one each (no conflict here)
top1_targets = one.scores[0, top1_points, gt_labels]  # (3,)
# t / t_max = 1, so the target is u_max, the point's own CIoU, up to the 1e-9 that keeps
# the division finite: the small star's t is far below it, so its target is almost 0.
### END SOLUTION
if top1_targets is not None:
    print(f"positives {top1_points.tolist()}")
    print("target scores", [f"{score:.3g}" for score in top1_targets.tolist()])

# %% tags=["check"]
best_anchor = top_k_mask(metric, 1).int().argmax(dim=1)  # (M,) the largest t of each box
check_equal(
    "top1_points", top1_points, best_anchor.cpu(),
    hint="with topk=1 a box keeps its candidate of largest t = s^0.5 u^6; run "
    "assign_task_aligned(..., topk=1) and read, for j = 0, 1, 2, the anchor whose "
    "gt_index[0] is j.",
)  # fmt: skip
best_t = metric[torch.arange(3), best_anchor]  # (M,)
best_u = overlaps[torch.arange(3), best_anchor]  # (M,)
check_close(
    "top1_targets", top1_targets, best_t * best_u / (best_t + 1e-9), atol=1e-5,
    hint="the target is t / t_max x u_max: with one positive t = t_max, so it is the "
    "point's own CIoU (almost 0 for the small star, whose t is below the 1e-9 of the "
    "division). Read the result's scores[0, point, gt_labels[j]].",
)  # fmt: skip
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** Set `alpha=0` and `beta=0`: every candidate's metric is 1. Which ten
# points does the cross get? Assign them to `cross_points` `(10,)`, anchor indices in
# ascending order. (Ties go to the lower index.)

# %% tags=["solution"]
cross_points = None  # (10,) long, ascending
### BEGIN SOLUTION
flat = assign_task_aligned(
    pred_scores, pred_boxes, points, gt_labels[None], gt_boxes[None], mask, alpha=0.0, beta=0.0
)
cross_points = (flat.gt_index[0] == 1).nonzero().flatten()  # (10,)
### END SOLUTION
print("the cross's positives:", cross_points)

# %% tags=["check"]
inside_cross = ((points > gt_boxes[1, :2]) & (points < gt_boxes[1, 2:])).all(dim=-1)  # (A,)
check_equal(
    "cross_points", cross_points, inside_cross.nonzero().flatten()[:10].cpu(),
    hint="with t = 1 for every candidate, the top 10 are the ten candidates of lowest "
    "index: the points strictly inside the cross, in flat order. Read them from the "
    "assignment with alpha=0.0, beta=0.0: (its gt_index[0] == 1).nonzero().flatten().",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_true(
    bool((torch.as_tensor(cross_points) < 1600).all()),
    "the cross's positives should all be stride-8 points (index < 1600).",
    hint="the lowest flat indices are those of level 0, the top rows of the box.",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** A 6 × 6 px box at (101, 97, 107, 103), and one at (98, 98, 104, 104),
# each of class `gt_labels[0]` and alone in the image. How many candidates does each
# have, and how many positives? Assign `tiny_candidates` and `tiny_positives` (two
# integers each, one per box), and explain the second box's positives.

# %% tags=["solution"]
tiny_boxes = torch.tensor([[101.0, 97.0, 107.0, 103.0], [98.0, 98.0, 104.0, 104.0]], device=device)
tiny_candidates = tiny_positives = None  # two integers each
### BEGIN SOLUTION
tiny_candidates = [
    int(((points > box[:2]) & (points < box[2:])).all(-1).sum()) for box in tiny_boxes
]
tiny_positives = []
for box in tiny_boxes:
    tiny_result = assign_task_aligned(
        pred_scores, pred_boxes, points, gt_labels[None, :1], box[None, None], mask[:, :1]
    )
    tiny_positives.append(tiny_result.num_positive)
# Stride-8 points sit at 4 + 8k, stride-16 ones at 8 + 16k, stride-32 ones at 16 + 32k.
# In the first box only x = 104 (stride 16) and y = 100 (stride 8) fall inside: no
# single point has both, so there is no candidate. The second holds the point
# (100, 100), but that point predicts a box of about 120 px: the CIoU with a 6-px box
# is below 0, clamped to 0, so t = 0, and here a zero metric is never a positive. The
# box teaches nothing until a prediction nears it (or, in newer ultralytics releases,
# the widened test gives it more candidates).
### END SOLUTION
print("candidates:", tiny_candidates, " positives:", tiny_positives)

# %% tags=["check"]
# Points at 4 + 8k (stride 8), 8 + 16k (16), 16 + 32k (32): inside (101, 107) x (97, 103)
# are x = 104 (stride 16 only) and y = 100 (stride 8 only); (100, 100) is inside the second.
check_close(
    "tiny_candidates", tiny_candidates, [0, 1],
    hint="list the point coordinates of each stride that fall strictly inside each box; a "
    "candidate needs its x and its y inside, on the same level.",
)  # fmt: skip
check_close(
    "tiny_positives", tiny_positives, [0, 0],
    hint="run assign_task_aligned with each box alone (gt_boxes (1, 1, 4)) and read "
    "num_positive; a candidate whose predicted box does not overlap gets u = 0, so t = 0.",
)  # fmt: skip
check_passed("Exercise 3")

# %% [markdown]
# **Exercise 4.** A batch: our image and an image without boxes. Pad their ground truth
# with `pad_ground_truth` (`padded_boxes` `(2, 3, 4)`, `padded_labels` `(2, 3)`,
# `padded_mask` `(2, 3)` bool) and run the assigner on the batch (the predictions of our
# image twice, `pred_scores.expand(2, -1, -1)`): `batched`, its `TaskAlignedResult`.
# The first image's result must equal the single-image `result`, and the empty image
# must be all background.

# %% tags=["solution"]
batch_targets = [
    {"boxes": gt_boxes, "labels": gt_labels},
    {
        "boxes": torch.zeros(0, 4, device=device),
        "labels": torch.zeros(0, dtype=torch.long, device=device),
    },
]
padded_boxes = padded_labels = padded_mask = None  # (2, 3, 4), (2, 3), (2, 3)
batched = None  # the TaskAlignedResult of the batch
### BEGIN SOLUTION
padded_boxes, padded_labels, padded_mask = pad_ground_truth(batch_targets, device)
batched = assign_task_aligned(
    pred_scores.expand(2, -1, -1),
    pred_boxes.expand(2, -1, -1),
    points,
    padded_labels,
    padded_boxes,
    padded_mask,
)
### END SOLUTION
if batched is not None:
    print(f"positives per image: {batched.fg_mask.sum(dim=1).tolist()}")

# %% tags=["check"]
check_equal(
    "padded_mask", padded_mask, torch.tensor([[True, True, True], [False, False, False]]),
    hint="pad_ground_truth(batch_targets) returns (boxes, labels, mask); the mask says "
    "which of the M = 3 entries of each image are real boxes.",
)  # fmt: skip
check_true(
    batched is not None and hasattr(batched, "fg_mask"),
    "`batched` should be the TaskAlignedResult of assign_task_aligned on the batch.",
    hint="pass the expanded predictions (2, A, C) and (2, A, 4), the points, and "
    "padded_labels, padded_boxes, padded_mask.",
)  # fmt: skip
for field in result._fields:
    check_equal(
        f"batched.{field}[0]", getattr(batched, field)[0], getattr(result, field)[0].cpu(),
        hint="padding adds no box to the first image: its result is the single-image one.",
    )  # fmt: skip
check_true(
    not batched.fg_mask[1].any() and bool((batched.scores[1] == 0).all()),
    "the image without boxes should have no positive and all-zero target scores.",
    hint="its padded entries are masked out: every point is background.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_equal(
    "batched.gt_index[1]", batched.gt_index[1], torch.full((2100,), BACKGROUND),
    hint="every point of the empty image has the gt index BACKGROUND (-1).",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 4")

# %% [markdown]
# ## Further reading
#
# - C. Feng et al., *TOOD: Task-aligned One-stage Object Detection*, ICCV 2021
#   (section 3.2, task alignment learning), <https://arxiv.org/abs/2108.07755>
# - Ultralytics `ultralytics/utils/tal.py` (`TaskAlignedAssigner`: `get_pos_mask`,
#   `select_candidates_in_gts`, `select_highest_overlaps`, `get_targets`),
#   <https://github.com/ultralytics/ultralytics>
# - H. Zhang et al., *VarifocalNet*, CVPR 2021 (the VFL that YOLOv8 does *not* use),
#   <https://arxiv.org/abs/2008.13367>
# - Z. Zheng et al., *Enhancing Geometric Factors in Model Learning and Inference for
#   Object Detection and Instance Segmentation* (CIoU), <https://arxiv.org/abs/2005.03572>
