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
# # 21 · NanoDet: ATSS, each box sets its own threshold
#
# Notebook 20 left NanoDet with 2100 priors at 320 px, each predicting class scores
# and a box. Training must first decide which priors learn which ground-truth box:
# the *assignment*. Faster R-CNN and RetinaNet compare every prior with every box and
# call it positive above one fixed IoU, the same for every box. Zhang et al. (2020)
# found that much of the gap between anchor-based and anchor-free detectors came from
# this choice alone, and proposed Adaptive Training Sample Selection (ATSS): each box
# picks a few candidates near its centre on every level and sets its own threshold
# from their IoUs. NanoDet uses ATSS on *grid cells*, squares of 5 strides centred
# on each cell. This notebook runs ATSS by hand, step by step, on one 320-px image
# with three boxes of very different sizes, and compares it with what a fixed IoU
# threshold would have done.
#
# **Learning goals**
#
# 1. Run the five steps of ATSS by hand for one box: candidates per level by centre
#    distance, their IoUs, the threshold mean + standard deviation, the centre test.
# 2. Read `explain_atss` tables and `draw_assignment` figures for small, medium and
#    large boxes, and see each size land on its own level.
# 3. Resolve a prior wanted by two boxes.
# 4. Explain why a fixed IoU threshold gives a small box nothing, and what ATSS does
#    instead.
# 5. Assign a padded batch with `assign_atss_batched` and check it against the
#    per-image assigner.
#
# **Prerequisites**: notebook 01 (IoU), notebook 02 (grid cells, flat prior index),
# notebook 20 (NanoDet's levels and priors).
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
from ipywidgets import IntSlider, interact

from detutils import boxes as box_ops
from detutils.assigners import (
    BACKGROUND,
    assign_atss,
    assign_atss_batched,
    explain_atss,
    pad_ground_truth,
)
from detutils.checks import check_close, check_equal, check_function, check_passed, check_true
from detutils.data.shapes import CLASS_NAMES, render_sample
from detutils.priors import grid_cells
from detutils.viz import draw_assignment, draw_boxes, draw_priors


def load_sample(index, split="train", size=320):
    """One image of the shapes set with its boxes (M, 4) xyxy px and labels (M,)."""
    image, _, objects = render_sample(seed=0, split=split, index=index, size=size)
    boxes = [obj["bbox"] for obj in objects]
    gt_boxes = box_ops.xywh_to_xyxy(torch.tensor(boxes, dtype=torch.float32).view(-1, 4))
    gt_labels = torch.tensor([obj["label"] for obj in objects], dtype=torch.long)
    return image, gt_boxes, gt_labels


# %% [markdown]
# ## 1. Three boxes and 2100 grid cells
#
# The image of notebook 20: a large star (232 × 186 px), a cross cut by the image
# border (67 × 89 px) and a small star of 10 × 10 px, each a different COCO size class.

# %%
image, gt_boxes, gt_labels = load_sample(1797)
gt_boxes, gt_labels = gt_boxes.to(device), gt_labels.to(device)
sizes = (gt_boxes[:, 2:] - gt_boxes[:, :2]).cpu()  # (M, 2) w, h px
areas = sizes.prod(dim=1)
pd.DataFrame(
    {
        "class": [CLASS_NAMES[label] for label in gt_labels.tolist()],
        "xyxy": [tuple(int(v) for v in box) for box in gt_boxes.tolist()],
        "w x h": [f"{w:.0f} x {h:.0f}" for w, h in sizes.tolist()],
        "COCO size": ["small" if a < 32**2 else "medium" if a < 96**2 else "large" for a in areas],
    }
).rename_axis("box")

# %%
names = ["0 large star", "1 cross", "2 small star"]
ax = draw_boxes(image, gt_boxes.cpu(), gt_labels.cpu(), class_names=CLASS_NAMES)
ax.set_title("train image 1797: three boxes")
plt.show()

# %% [markdown]
# NanoDet's priors for ATSS are the grid cells of notebook 02: on each level, a square
# of side 5 × stride centred on each cell, so 40, 80 and 160 px. The head never sees
# them; they only give ATSS a box to measure IoUs with.

# %%
strides = [8, 16, 32]
feature_sizes = [(320 // stride, 320 // stride) for stride in strides]
cells, num_per_level = grid_cells(feature_sizes, strides, cell_scale=5.0, device=device)
level_starts = [0, num_per_level[0], num_per_level[0] + num_per_level[1]]
print(f"cells {tuple(cells.shape)}, per level {num_per_level}, levels start at {level_starts}")

# %% [markdown]
# ## 2. ATSS by hand, for the cross
#
# The algorithm, for one ground-truth box (steps numbered as in
# `detutils.assigners.atss`; mmdet's `ATSSAssigner` splits step 1 in two):
#
# 1. the IoU of every prior with the box, and the distance from every prior's centre
#    to the box's centre;
# 2. on each level, the k = 9 priors whose centres are nearest: 27 *candidates*;
# 3. the box's threshold: mean + standard deviation of the candidates' IoUs;
# 4. positive: a candidate whose IoU reaches the threshold and whose centre lies inside
#    the box (by more than 0.01 px);
# 5. a prior positive for several boxes learns the one it overlaps most.
#
# ### 2.1 IoUs and centre distances

# %%
box = gt_boxes[1]  # the cross, (4,) xyxy px
prior_centres = (cells[:, :2] + cells[:, 2:]) / 2  # (A, 2)
box_centre = (box[:2] + box[2:]) / 2  # (2,)
iou = box_ops.box_iou(cells, box[None])[:, 0]  # (A,)
distance = (prior_centres - box_centre).pow(2).sum(dim=-1).sqrt()  # (A,)
print(f"box centre {box_centre.tolist()}; iou {tuple(iou.shape)}, distance {tuple(distance.shape)}")

# %% [markdown]
# ### 2.2 The nearest nine on each level
#
# Centre distance, not IoU, picks the candidates: on every level, whatever the box's
# size, the nine cells around its centre. Equal distances are common on a grid (a box
# centred on a cell corner has four nearest cells); a stable sort takes the lowest
# prior index first, so the result does not depend on the device.

# %%
topk = 9
candidates = []
for start, count in zip(level_starts, num_per_level, strict=True):
    nearest = torch.sort(distance[start : start + count], stable=True).indices[:topk]  # (9,)
    candidates.append(nearest + start)
candidates = torch.cat(candidates)  # (27,) flat prior indices
candidate_level = torch.arange(3, device=device).repeat_interleave(topk)  # (27,)
candidate_iou = iou[candidates]  # (27,)
print("candidates:", candidates.tolist())

# %% [markdown]
# ### 2.3 The threshold: mean + standard deviation
#
# The candidates' IoUs summarise how well this box fits the priors. Their mean says
# how good a typical candidate is, their (unbiased) standard deviation how much the
# levels differ: when one level fits much better than the others, the spread is large
# and the threshold rises above the poor levels, leaving the good level's candidates.

# %%
iou_mean = candidate_iou.mean()
iou_std = candidate_iou.std()  # unbiased: divides by 27 - 1 = 26
threshold = iou_mean + iou_std
passes_iou = candidate_iou >= threshold  # (27,)
per_level = candidate_iou.view(3, topk)
print(f"mean {iou_mean.item():.4f} + std {iou_std.item():.4f} = threshold {threshold.item():.4f}")
print("mean IoU per level:", [f"{v:.4f}" for v in per_level.mean(dim=1).tolist()])

# %% [markdown]
# The 80-px cells of stride 16 fit a 67 × 89 box far better than the 40-px and
# 160-px cells; the five best of them clear the threshold, nothing else does.
#
# ### 2.4 The centre test
#
# A candidate's centre is the point its distances start from (notebook 20); a point
# outside the box would have to learn negative distances. So a positive's centre must
# lie inside the box, by more than 0.01 px on every side:

# %%
centres = prior_centres[candidates]  # (27, 2)
sides = torch.stack(
    [
        centres[:, 0] - box[0],  # left
        centres[:, 1] - box[1],  # top
        box[2] - centres[:, 0],  # right
        box[3] - centres[:, 1],  # bottom
    ],
    dim=1,
)  # (27, 4)
center_inside = sides.min(dim=1).values > 0.01
positive = passes_iou & center_inside
print(f"pass IoU {int(passes_iou.sum())}, centre inside {int(center_inside.sum())}")
print(f"positive (both): {int(positive.sum())}")

# %% [markdown]
# ### 2.5 Checked against `explain_atss`
#
# `detutils.assigners.explain_atss` runs the same steps for every box of an image and
# keeps every intermediate; its `table(j)` lists box j's candidates. From here on ATSS
# lives in `detutils.assigners` (`assign_atss` returns only the final assignment).

# %%
explanation = explain_atss(cells, num_per_level, gt_boxes, gt_labels, topk=9)
torch.testing.assert_close(explanation.candidate_index[1], candidates)
torch.testing.assert_close(explanation.candidate_distance[1], distance[candidates])
torch.testing.assert_close(explanation.candidate_iou[1], candidate_iou)
torch.testing.assert_close(explanation.iou_threshold[1], threshold)
torch.testing.assert_close(explanation.center_inside[1], center_inside)
torch.testing.assert_close(explanation.positive[1], positive)
cross_table = explanation.table(1)
cross_table

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for level, marker in zip(range(3), "os^", strict=True):
    rows = cross_table[cross_table["level"] == level]
    ax.scatter(rows["distance"], rows["iou"], marker=marker, label=f"stride {strides[level]}")
ax.axhline(iou_mean.item(), color="0.5", linestyle="--", label="mean")
ax.axhline(threshold.item(), color="tab:red", label="mean + std")
ax.set_xlabel("centre distance (px)")
ax.set_ylabel("IoU with the cross")
ax.set_title("the cross's 27 candidates")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The candidates on the image: per level, the nine cells nearest the cross's centre
# (blue), the positives in red, the cross in black.

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
for level, ax in enumerate(axes):
    level_rows = candidate_level == level
    draw_priors(
        image,
        cells[candidates[level_rows]].cpu(),
        ax=ax,
        every=1,
        highlight=positive[level_rows].cpu().numpy(),
        title=f"stride {strides[level]}: {int(positive[level_rows].sum())} positive",
    )
    x1, y1, x2, y2 = box.tolist()
    ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="k", linewidth=2))
plt.show()

# %% [markdown]
# ### 2.6 What `topk` changes
#
# NanoDet, like the ATSS paper, takes the k = 9 nearest priors of each level (the
# argument `topk`). A larger k casts a wider net: the extra candidates lie farther from
# the box's centre and overlap it less, so the mean IoU falls, and with it the
# threshold; more of the well-fitting level's cells pass. A smaller k keeps only the
# nearest few: with k = 1 the cross has three candidates, one per level, and only the
# best of them clears the threshold. The cross's candidates for a given k (left: the
# red rings are its positives) and its positives for every k from 1 to 20 (right):

# %%
topk_values = list(range(1, 21))
topk_sweep = [explain_atss(cells, num_per_level, gt_boxes, gt_labels, topk=k) for k in topk_values]
cross_thresholds = [explained.iou_threshold[1].item() for explained in topk_sweep]
cross_positives_by_k = [int(explained.positive[1].sum()) for explained in topk_sweep]
for k in (1, 9, 20):
    print(
        f"topk {k:2d}: {3 * k} candidates, threshold {cross_thresholds[k - 1]:.4f}, "
        f"positives {cross_positives_by_k[k - 1]}"
    )
assert cross_positives_by_k[8] == int(positive.sum()) == 5  # k = 9: section 2.4
assert cross_thresholds == sorted(cross_thresholds, reverse=True)  # falls as k grows


def draw_topk(k):
    """The cross's candidates for topk = k (left) and its positives for every topk (right)."""
    explained = topk_sweep[k - 1]
    table = explained.table(1)  # one row per candidate
    fig, (ax, ax_sweep) = plt.subplots(1, 2, figsize=(11, 3.6), width_ratios=[3, 2])
    for level, marker in zip(range(3), "os^", strict=True):
        rows = table[table["level"] == level]
        ax.scatter(rows["distance"], rows["iou"], marker=marker, label=f"stride {strides[level]}")
    chosen = table[table["positive"]]
    ax.scatter(chosen["distance"], chosen["iou"], s=150, facecolors="none", edgecolors="tab:red")
    ax.axhline(cross_thresholds[k - 1], color="tab:red", label="threshold")
    ax.set_xlabel("centre distance (px)")
    ax.set_ylabel("IoU with the cross")
    ax.set_ylim(0, 1)
    ax.set_title(f"topk = {k}: {len(table)} candidates, {len(chosen)} positive")
    ax.legend(fontsize=8, loc="upper right")
    colours = ["tab:red" if value == k else "0.75" for value in topk_values]
    ax_sweep.bar(topk_values, cross_positives_by_k, color=colours)
    ax_sweep.set_xticks([1, 5, 9, 13, 17, 20])
    ax_sweep.set_xlabel("topk")
    ax_sweep.set_ylabel("positives of the cross")
    ax_sweep.set_title(f"threshold at topk = {k}: {cross_thresholds[k - 1]:.3f}")
    return fig


# %%
draw_topk(9)
plt.show()


# %%
# NBVAL_IGNORE_OUTPUT
# (an interactive version of the figure above: move the slider; the figure above is
# the one the tests check)
@interact(k=IntSlider(value=9, min=1, max=20, description="topk"))
def show_topk(k):
    draw_topk(k)
    plt.show()


# %% [markdown]
# However many candidates, the cross's positives all stay on the stride-16 level: the
# threshold moves, the level that fits stays the same.

# %%
for explained in topk_sweep:
    table_k = explained.table(1)
    assert (table_k.loc[table_k["positive"], "level"] == 1).all()

# %% [markdown]
# ## 3. Three boxes, three levels
#
# The same steps for the three boxes at once: every step gains a box dimension M.
# Step 5 now matters: a prior claimed by several boxes learns the one with the highest
# IoU (here no prior is claimed twice; section 4 builds a case).


# %%
def atss_inline(priors, num_per_level, gt_boxes, topk=9, center_eps=0.01):
    """ATSS of one image, as above with a box dimension: -> gt index of each prior (A,)."""
    prior_centres = (priors[:, :2] + priors[:, 2:]) / 2  # (A, 2)
    gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # (M, 2)
    iou = box_ops.box_iou(priors, gt_boxes).T  # (M, A)
    distance = (prior_centres[None] - gt_centres[:, None]).pow(2).sum(-1).sqrt()  # (M, A)
    candidates, start = [], 0  # 2.
    for count in num_per_level:
        order = torch.sort(distance[:, start : start + count], dim=1, stable=True).indices
        candidates.append(order[:, :topk] + start)  # (M, topk)
        start += count
    candidates = torch.cat(candidates, dim=1)  # (M, L topk)
    candidate_iou = iou.gather(1, candidates)  # (M, L topk)  3.
    threshold = candidate_iou.mean(dim=1) + candidate_iou.std(dim=1)  # (M,)
    centres = prior_centres[candidates]  # (M, L topk, 2)  4.
    sides = torch.cat([centres - gt_boxes[:, None, :2], gt_boxes[:, None, 2:] - centres], dim=-1)
    positive = (candidate_iou >= threshold[:, None]) & (sides.min(dim=-1).values > center_eps)
    claimed = torch.full_like(iou, -torch.inf)  # (M, A)  5.
    claimed.scatter_(1, candidates, torch.where(positive, candidate_iou, -torch.inf))
    best_iou, best_gt = claimed.max(dim=0)  # (A,) each
    return torch.where(best_iou > -torch.inf, best_gt, BACKGROUND)


gt_index = atss_inline(cells, num_per_level, gt_boxes)
result = assign_atss(cells, num_per_level, gt_boxes, gt_labels)
torch.testing.assert_close(gt_index, result.gt_index)
torch.testing.assert_close(result.gt_index, explanation.result.gt_index)
print("inline ATSS == assign_atss;", result.num_positive, "positives of", len(cells))

# %% [markdown]
# Per box: its threshold, and where its positives are.

# %%
summary = pd.DataFrame(
    {
        "box": names,
        "iou mean": explanation.iou_mean.tolist(),
        "iou std": explanation.iou_std.tolist(),
        "threshold": explanation.iou_threshold.tolist(),
        **{
            f"pos stride {stride}": [
                int((result.gt_index[start : start + count] == j).sum()) for j in range(3)
            ]
            for stride, start, count in zip(strides, level_starts, num_per_level, strict=True)
        },
    }
)
summary

# %%
positives = summary[[f"pos stride {stride}" for stride in strides]].to_numpy()
assert positives.tolist() == [[0, 0, 6], [0, 5, 0], [1, 0, 0]]
claimed = explanation.candidate_index[explanation.positive]  # every claim of every box
assert len(claimed.unique()) == len(claimed) == result.num_positive  # none claimed twice
print("large -> stride 32, medium -> stride 16, small -> stride 8")

# %% [markdown]
# Nobody told ATSS which level suits which size: the threshold found it. For each box
# one level's cells fit much better than the others', which pulls the standard
# deviation up and the threshold above the other levels. The assignment, one panel
# per level (cells of the positives drawn in the colour of their box; grey dots are
# background):

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 4.4))
for level, ax in enumerate(axes):
    start, count = level_starts[level], num_per_level[level]
    draw_assignment(
        image,
        cells[start : start + count].cpu(),
        gt_boxes.cpu(),
        result.gt_index[start : start + count].cpu(),
        ax=ax,
        gt_labels=gt_labels.cpu(),
        class_names=CLASS_NAMES,
        title=f"stride {strides[level]} ({5 * strides[level]} px cells)",
    )
plt.show()

# %% [markdown]
# The small star is the interesting one. Its candidates on the stride-8 level are 40-px
# cells; any of them that contains the whole 10 × 10 box has IoU 100 / 1600 = 0.0625,
# which is all a 10-px box can reach against a 40-px cell. The threshold is relative,
# so 0.0625 is enough: its mean + std is only 0.0531. Several cells pass the IoU test;
# the centre test keeps the one whose centre falls on the star.

# %%
small_table = explanation.table(2)
small_table[small_table["level"] == 0]

# %%
assert abs(explanation.iou_threshold[2].item() - 0.0531) < 1e-4
assert small_table["passes_iou"].sum() > small_table["positive"].sum() == 1
print(f"small star: max IoU over all cells {box_ops.box_iou(cells, gt_boxes[2:]).max().item():.4f}")

# %% [markdown]
# ## 4. A prior wanted by two boxes
#
# Two objects close together: two 64-px boxes, the second shifted by 16 px right and
# 8 px down. Both pick their candidates independently, and a prior can pass both
# boxes' tests. Step 5 settles it: the prior learns the box it overlaps most (among
# equal IoUs, the lower box index).

# %%
pair = torch.tensor([[100.0, 100.0, 164.0, 164.0], [116.0, 108.0, 180.0, 172.0]], device=device)
pair_labels = torch.tensor([0, 0], device=device)
pair_explanation = explain_atss(cells, num_per_level, pair, pair_labels)
claims = torch.zeros(2, len(cells), dtype=torch.bool, device=device)  # (M, A)
for j in range(2):
    claims[j, pair_explanation.candidate_index[j][pair_explanation.positive[j]]] = True
contested = claims.all(dim=0).nonzero().flatten()  # priors claimed by both
pair_iou = box_ops.box_iou(cells[contested], pair)  # (n, 2)
pair_result = pair_explanation.result
pd.DataFrame(
    {
        "prior": contested.tolist(),
        "centre": [tuple(c) for c in ((cells[contested, :2] + cells[contested, 2:]) / 2).tolist()],
        "IoU box 0": pair_iou[:, 0].tolist(),
        "IoU box 1": pair_iou[:, 1].tolist(),
        "learns box": pair_result.gt_index[contested].tolist(),
    }
)

# %%
assert len(contested) == 1
torch.testing.assert_close(pair_result.gt_index[contested], pair_iou.argmax(dim=1))
print("claims per box:", claims.sum(dim=1).tolist())
print("positives per box after step 5:", [int((pair_result.gt_index == j).sum()) for j in range(2)])

# %%
start, count = level_starts[1], num_per_level[1]
ax = draw_assignment(
    (320, 320),
    cells[start : start + count].cpu(),
    pair.cpu(),
    pair_result.gt_index[start : start + count].cpu(),
)
centre = ((cells[contested, :2] + cells[contested, 2:]) / 2).cpu()
ax.scatter(centre[:, 0], centre[:, 1], s=120, facecolors="none", edgecolors="k", label="contested")
ax.legend(loc="lower right", fontsize=8)
ax.set_title("two boxes, stride 16: the contested prior learns box 0")
plt.show()

# %% [markdown]
# ## 5. What a fixed IoU threshold would have done
#
# The classic assigner (Faster R-CNN's RPN, RetinaNet; mmdet's `MaxIoUAssigner`)
# needs no candidates and no statistics: each prior takes the box it overlaps most,
# and is positive if that IoU reaches a fixed `pos_iou_thr` (0.5 in RetinaNet),
# background below `neg_iou_thr` (0.4), ignored in between. On the same grid cells:


# %%
def assign_max_iou_inline(priors, gt_boxes, pos_iou_thr=0.5):
    """Each prior -> its best box if that IoU reaches pos_iou_thr, else BACKGROUND; (A,)."""
    best_iou, best_gt = box_ops.box_iou(priors, gt_boxes).max(dim=1)  # (A,) each
    return torch.where(best_iou >= pos_iou_thr, best_gt, BACKGROUND)


max_iou_index = assign_max_iou_inline(cells, gt_boxes)
best_per_box = box_ops.box_iou(cells, gt_boxes).max(dim=0)  # values and indices (M,)
pd.DataFrame(
    {
        "box": names,
        "best IoU of any cell": best_per_box.values.tolist(),
        "ATSS threshold": explanation.iou_threshold.tolist(),
        "positives max-IoU 0.5": [int((max_iou_index == j).sum()) for j in range(3)],
        "positives ATSS": [int((result.gt_index == j).sum()) for j in range(3)],
    }
)

# %% [markdown]
# For the large star and the cross the two agree, prior for prior: their cells fit
# well, and both thresholds land in the same gap. The small star gets nothing from
# the fixed threshold: its best IoU with any cell is 0.0625, and no threshold that
# makes sense for the other two boxes can be that low. A detector trained this way
# never learns small objects. (RetinaNet patches this with "low-quality matches":
# every box also gets the priors it overlaps most, whatever the IoU; in mmdet's
# `MaxIoUAssigner` all of those tied at the maximum. For the small star, 16 cells tie
# at 0.0625 and only one of them has its centre on the star: 15 of its positives
# would have to learn a box that does not contain their own point.)

# %%
same = (max_iou_index >= 0) & (result.gt_index >= 0)
assert torch.equal(max_iou_index[result.gt_index != 2], result.gt_index[result.gt_index != 2])
assert int((max_iou_index == 2).sum()) == 0 and int((result.gt_index == 2).sum()) == 1
print(f"{int(same.sum())} positives shared by both assigners")
small_iou = box_ops.box_iou(cells, gt_boxes[2:])[:, 0]  # (A,)
tied = (small_iou == small_iou.max()).nonzero().flatten()
tied_centres = (cells[tied, :2] + cells[tied, 2:]) / 2  # (16, 2)
on_star = ((tied_centres > gt_boxes[2, :2]) & (tied_centres < gt_boxes[2, 2:])).all(dim=1)
print(f"{len(tied)} cells tie at IoU {small_iou.max().item():.4f}; centre on the star: ", end="")
print(tied[on_star].tolist())
assert len(tied) == 16 and tied[on_star].tolist() == [341]

# %% [markdown]
# Any fixed threshold is a compromise between box sizes: lower it and the large boxes
# flood with positives while the small star still gets nothing; raise it and the
# large star, whose best cell reaches 0.5933, loses all of its own. Positives per box
# as the threshold moves, against ATSS's single answer:

# %%
thresholds = [0.3, 0.4, 0.5, 0.6, 0.7]
sweep = pd.DataFrame(
    {
        f"max-IoU {thr}": [
            int((assign_max_iou_inline(cells, gt_boxes, thr) == j).sum()) for j in range(3)
        ]
        for thr in thresholds
    },
    index=names,
)
sweep["ATSS"] = [int((result.gt_index == j).sum()) for j in range(3)]
sweep

# %%
assert (sweep.loc["2 small star", [f"max-IoU {thr}" for thr in thresholds]] == 0).all()
assert sweep.loc["0 large star", "max-IoU 0.3"] > 2 * sweep.loc["0 large star", "ATSS"]
assert sweep.loc["0 large star", "max-IoU 0.6"] == 0

# %% [markdown]
# ## 6. A batch at once
#
# Training assigns a batch. `assign_atss_batched` takes the boxes padded to the largest
# count M with a mask (`pad_ground_truth`), runs the same five steps with a batch
# dimension, and equals `assign_atss` image by image exactly. A batch of three: our
# image, image 0 of the validation split (seven boxes), and an image with no box.

# %%
_, val_boxes, val_labels = load_sample(0, split="val")
targets = [
    {"boxes": gt_boxes, "labels": gt_labels},
    {"boxes": val_boxes.to(device), "labels": val_labels.to(device)},
    {"boxes": torch.zeros(0, 4, device=device), "labels": torch.zeros(0, dtype=torch.long)},
]
padded_boxes, padded_labels, mask = pad_ground_truth(targets, device)
print("padded:", tuple(padded_boxes.shape), tuple(padded_labels.shape), tuple(mask.shape))
print("mask:", mask.int().tolist())

# %%
batched = assign_atss_batched(cells, num_per_level, padded_boxes, padded_labels, mask)
for image_index, target in enumerate(targets):
    single = assign_atss(cells, num_per_level, target["boxes"], target["labels"].to(device))
    for field_batched, field_single in zip(batched, single, strict=True):
        torch.testing.assert_close(field_batched[image_index], field_single)
assert (batched.gt_index[2] == BACKGROUND).all()
print("batched == per image; positives per image:", batched.positive.sum(dim=1).tolist())

# %% [markdown]
# ## Recap
#
# - ATSS, per box: the 9 priors nearest its centre on each level are its candidates;
#   its threshold is the mean + (unbiased) standard deviation of their IoUs; a
#   candidate is positive if its IoU reaches the threshold and its centre is inside
#   the box by more than 0.01 px; a prior claimed twice learns the box it overlaps most.
# - NanoDet runs it on grid cells of 5 strides: 2100 at 320 px, three levels.
# - The threshold adapts to the box: the level whose cells fit the box stands out,
#   so the large, medium and small boxes of this lesson landed on strides 32, 16 and 8
#   by themselves. A tendency, not a rule: a box between two levels can get nothing
#   (exercise 2's 240 px bar), and notebook 23 (exercise 1) finds boxes of every size
#   without a positive among the validation images.
# - A fixed IoU threshold treats every box alike: a 10-px box, whose best IoU with a
#   40-px cell is 0.0625, gets no positive at all.
# - `explain_atss` keeps every intermediate, `assign_atss` gives the assignment of an
#   image, `assign_atss_batched` that of a padded batch, equal to the loop.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** How many candidates does a box get on NanoDet's three levels?
# Predict it for `topk=3`, `topk=9` and `topk=150`, then write `num_candidates(topk)`,
# returning that number (an int) for the 2100 cells at 320 px (a level cannot give
# more candidates than it has priors). Then assign `cross_positives`, a dict
# `{3: ..., 9: ..., 150: ...}`: the number of the cross's positives (candidates that
# pass both tests) for each of these `topk`, read from `explain_atss`.

# %% tags=["solution"]
num_candidates = None  # your function (topk) -> int
cross_positives = None  # dict: topk -> int
### BEGIN SOLUTION


def num_candidates(topk):
    # topk per level, at most the level's priors: 9, 27, and 150 + 150 + 100 = 400
    return sum(min(topk, count) for count in num_per_level)


cross_positives = {}
for k in (3, 9, 150):
    explained = explain_atss(cells, num_per_level, gt_boxes, gt_labels, topk=k)
    cross_positives[k] = int(explained.positive[1].sum())
    print(f"topk {k:3d}: {num_candidates(k)} candidates, cross positives {cross_positives[k]}")


### END SOLUTION

# %% tags=["check"]
candidates_of = lambda k: explain_atss(cells, num_per_level, gt_boxes, gt_labels, topk=k)
check_function(
    "num_candidates", num_candidates, [(3,), (9,), (150,)],
    lambda k: candidates_of(k).candidate_index.shape[1],
    hint="per level min(topk, priors of the level), summed over the levels 1600, 400 and "
    "100: 9 and 27 for topk 3 and 9; at 150 the stride-32 level has only 100 cells.",
)  # fmt: skip
check_true(
    isinstance(cross_positives, dict) and set(cross_positives) == {3, 9, 150},
    f"`cross_positives` should be a dict with the keys 3, 9 and 150, got {cross_positives!r}.",
    hint="explain_atss(cells, num_per_level, gt_boxes, gt_labels, topk=k).positive[1] marks "
    "the cross's positive candidates; count them for each k.",
)
for k in (3, 9, 150):
    check_equal(
        f"cross_positives[{k}]", cross_positives[k], int(candidates_of(k).positive[1].sum()),
        hint="the cross is box 1: count the True values of `.positive[1]` of explain_atss "
        "called with topk=k (section 2.6 drew them for k up to 20).",
    )  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "num_candidates", num_candidates, [(1,), (500,)],
    lambda k: candidates_of(k).candidate_index.shape[1],
    hint="one per level for topk 1; 500 + 400 + 100 for topk 500",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** Thin objects. Two horizontal bars 12 px high, centred on the image:
# one 120 px long, one 240 px long. Assign `bar_boxes`, a dict `{120: ..., 240: ...}`
# of their `(1, 4)` xyxy boxes, and `bar_counts`, a dict `{120: ..., 240: ...}` of
# tuples (positives from max-IoU at 0.5, positives from ATSS). One of the results shows
# that ATSS guarantees nothing: for the 240 px bar, assign its ATSS threshold
# `bar_threshold` and the best IoU among its 27 candidates, `bar_best_iou` (two
# numbers), and explain the result from the bar's candidate IoUs per level.

# %% tags=["solution"]
bar_boxes = bar_counts = None  # dict: length -> (1, 4) box; dict: length -> (int, int)
bar_threshold = bar_best_iou = None  # numbers
bar_labels = torch.tensor([0], device=device)
### BEGIN SOLUTION
bar_boxes, bar_counts = {}, {}
for length in (120, 240):
    bar = torch.tensor([[160.0 - length / 2, 154.0, 160.0 + length / 2, 166.0]], device=device)
    bar_explained = explain_atss(cells, num_per_level, bar, bar_labels)
    bar_boxes[length] = bar
    bar_counts[length] = (
        int((assign_max_iou_inline(cells, bar) == 0).sum()),
        bar_explained.result.num_positive,
    )
    level_iou = bar_explained.candidate_iou[0].view(3, 9)  # (L, topk)
    print(f"{length} px bar: max-IoU {bar_counts[length][0]}, ATSS {bar_counts[length][1]}")
    print(
        "  candidate IoUs per level (min, max):",
        [(f"{row.min().item():.4f}", f"{row.max().item():.4f}") for row in level_iou],
    )
    print(f"  threshold {bar_explained.iou_threshold[0].item():.4f}")
bar_threshold = bar_explained.iou_threshold[0].item()  # the last bar: 240 px
bar_best_iou = bar_explained.candidate_iou[0].max().item()
# Both bars are longer than the spread of a level's nine candidates, so within a level
# the candidates overlap the bar (nearly) alike, and the spread of the 27 IoUs comes
# from the differences between levels. For the 120 px bar the stride-8 level stands
# well above the others (0.1875 against at most 0.1395): mean + std falls between
# them, and the stride-8 candidates whose centre is on the bar are positive. For the
# 240 px bar the two best levels almost tie (0.1200 and 0.1154): two thirds of the
# candidates sit near the top, and mean + std (0.1247) lands above the best IoU of all.
# No candidate passes; the bar is never learnt. mmdet's ATSS behaves the same.
### END SOLUTION

# %% tags=["check"]
expected_bars = {120: [[100.0, 154.0, 220.0, 166.0]], 240: [[40.0, 154.0, 280.0, 166.0]]}
for name, answer in [("bar_boxes", bar_boxes), ("bar_counts", bar_counts)]:
    check_true(
        isinstance(answer, dict) and set(answer) == {120, 240},
        f"`{name}` should be a dict with the keys 120 and 240, got {answer!r}.",
        hint="one entry per bar length, e.g. {120: ..., 240: ...}",
    )
for length, expected in expected_bars.items():
    check_close(
        f"bar_boxes[{length}]", bar_boxes[length], expected,
        hint="centred on (160, 160): x from 160 - length / 2 to 160 + length / 2, y from "
        "160 - 6 to 160 + 6, as a (1, 4) tensor.",
    )  # fmt: skip
    bar = torch.tensor(expected, device=device)
    max_iou_count = int((box_ops.box_iou(cells, bar)[:, 0] >= 0.5).sum())
    atss_count = int(assign_atss(cells, num_per_level, bar, bar_labels).num_positive)
    counts = bar_counts[length]
    check_equal(
        f"bar_counts[{length}]", tuple(counts) if isinstance(counts, list) else counts,
        (max_iou_count, atss_count),
        hint="max-IoU: cells whose IoU with the bar reaches 0.5 (assign_max_iou_inline(cells, "
        "bar) == 0); ATSS: assign_atss(...).num_positive, or explain_atss(...).result.",
    )  # fmt: skip
bar_240 = torch.tensor(expected_bars[240], device=device)
explained_240 = explain_atss(cells, num_per_level, bar_240, bar_labels)
check_close(
    "bar_threshold", bar_threshold, explained_240.iou_threshold[0],
    hint="explain_atss(cells, num_per_level, bar, bar_labels).iou_threshold[0] for the "
    "240 px bar: the mean + std of its 27 candidate IoUs.",
)  # fmt: skip
check_close(
    "bar_best_iou", bar_best_iou, explained_240.candidate_iou[0].max(),
    hint="the largest of `.candidate_iou[0]`, the 27 candidates' IoUs with the 240 px bar "
    "(it is below the threshold: no candidate passes).",
)  # fmt: skip
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** The 0.01 margin. Build `edge_box` `(1, 4)`, a box 20 px wide with y
# from 150 to 178, whose left side passes exactly through the centre of the stride-8
# cell `(y, x) = (20, 20)` (cell `(y, x)` of stride 8 is centred on `(8x + 4, 8y + 4)`).
# Run `explain_atss` on it and read from its table whether that cell (prior
# 20 · 40 + 20 = 820) and its right neighbour (prior 821) pass the centre test: assign
# `on_edge_inside` and `neighbour_inside` (two bools).

# %% tags=["solution"]
edge_box = None  # (1, 4) xyxy px
on_edge_inside = neighbour_inside = None  # bool each
on_edge, neighbour = 20 * 40 + 20, 20 * 40 + 21
### BEGIN SOLUTION
# Cells (y=20, x=20) and (y=20, x=21) are centred on (164, 164) and (172, 164).
edge_box = torch.tensor([[164.0, 150.0, 184.0, 178.0]], device=device)
edge = explain_atss(cells, num_per_level, edge_box, torch.tensor([0], device=device))
edge_table = edge.table(0).set_index("prior")
print(edge_table.loc[[on_edge, neighbour], ["distance", "iou", "center_inside"]])
on_edge_inside = bool(edge_table.loc[on_edge, "center_inside"])
neighbour_inside = bool(edge_table.loc[neighbour, "center_inside"])
### END SOLUTION

# %% tags=["check"]
check_close(
    "edge_box", edge_box, [[164.0, 150.0, 184.0, 178.0]],
    hint="cell (20, 20) of stride 8 is centred on (8 * 20 + 4, 8 * 20 + 4) = (164, 164): "
    "x1 = 164, x2 = x1 + 20, y1 = 150, y2 = 178.",
)  # fmt: skip
check_equal(
    "on_edge_inside", on_edge_inside, False,
    hint="prior 820's centre lies on the left side: its left distance is 0, and the test "
    "asks for more than 0.01 px on every side. Read `center_inside` in the table.",
)  # fmt: skip
check_equal(
    "neighbour_inside", neighbour_inside, True,
    hint="prior 821's centre (172, 164) is 8 px inside the left side and inside the others.",
)  # fmt: skip
check_passed("Exercise 3")

# %% [markdown]
# **Exercise 4.** Two identical boxes of two classes (two labels on one object, as
# COCO sometimes has): the cross twice, `gt_boxes[1:2].repeat(2, 1)`, with labels 1 and
# 4. Every prior is claimed by both with the same IoU: which box does each positive
# learn? Predict, then run `assign_atss` and assign `twin_positives`, a tuple (positives
# of box 0, positives of box 1), and `twin_labels` `(P,)`, the labels the positives
# learn.

# %% tags=["solution"]
twins = gt_boxes[1:2].repeat(2, 1)  # (2, 4)
twin_gt_labels = torch.tensor([1, 4], device=device)
twin_positives = None  # tuple (int, int)
twin_labels = None  # (P,)
### BEGIN SOLUTION
# Equal IoUs: the lower box index wins, so box 0 takes every positive and box 1 none.
twin_result = assign_atss(cells, num_per_level, twins, twin_gt_labels)
twin_positives = tuple(int((twin_result.gt_index == j).sum()) for j in range(2))
twin_labels = twin_result.labels[twin_result.positive]
### END SOLUTION
print(f"positives of box 0 and box 1: {twin_positives}")

# %% tags=["check"]
cross_alone = assign_atss(cells, num_per_level, gt_boxes[1:2], gt_labels[1:2])
num_cross = int(cross_alone.num_positive)
check_equal(
    "twin_positives", tuple(twin_positives) if isinstance(twin_positives, list) else twin_positives,
    (num_cross, 0),
    hint="both boxes claim the same priors with the same IoU; step 5 keeps the first of equal "
    "maxima, box 0, which gets the cross's positives; count gt_index == 0 and == 1.",
)  # fmt: skip
check_equal(
    "twin_labels", twin_labels, torch.ones(num_cross, dtype=torch.long),
    hint="the labels of the positives: result.labels[result.positive]; they learn box 0, "
    "whose label is 1.",
)  # fmt: skip
check_passed("Exercise 4")

# %% [markdown]
# ## Further reading
#
# - S. Zhang et al., *Bridging the Gap Between Anchor-based and Anchor-free Detection
#   via Adaptive Training Sample Selection*, CVPR 2020,
#   <https://arxiv.org/abs/1912.02424> (section 3.2, algorithm 1)
# - mmdet `ATSSAssigner`
#   (`mmdet/models/task_modules/assigners/atss_assigner.py`),
#   <https://github.com/open-mmlab/mmdetection>
# - NanoDet's copy, used on grid cells
#   (`nanodet/model/head/assigner/atss_assigner.py`, `gfl_head.py` `get_grid_cells`),
#   <https://github.com/RangiLyu/nanodet>
# - T.-Y. Lin et al., *Focal Loss for Dense Object Detection*, ICCV 2017 (RetinaNet's
#   0.5 / 0.4 max-IoU assignment), <https://arxiv.org/abs/1708.02002>
# - X. Li et al., *Generalized Focal Loss*, NeurIPS 2020 (GFL keeps ATSS as its
#   assigner), <https://arxiv.org/abs/2006.04388>
