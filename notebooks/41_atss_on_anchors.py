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
# # 41 · ATSS: the same rule on anchor boxes
#
# Notebook 21 ran ATSS on NanoDet's grid cells. Zhang et al. (2020) wrote it for
# anchor boxes: a RetinaNet-like detector with five levels, P3 to P7, and a single
# square anchor of side 8 × stride at every location. The course's ATSS detector is
# built that way, and its assigner is the very function notebook 21 took apart,
# `detutils.assigners.assign_atss`, given other priors. This notebook runs it on the
# 2134 anchors of the CPU preset at 320 px, for a small, a medium and a large box,
# puts the result beside the same boxes on NanoDet's grid cells, and follows the
# assignment into the loss: the centerness target each positive learns, the batched
# assigner the model calls, and what bad boxes do.
#
# **Learning goals**
#
# 1. Build ATSS's anchors at 320 px (five levels, one 8 s square per location centred
#    on the grid point (x s, y s)) and tell them from NanoDet's grid cells.
# 2. Read `explain_atss` on anchors: 45 candidates per box, their IoUs, the threshold
#    mean + std, the centre test, the positives per level.
# 3. Explain why the same box lands on other levels, or gets more or fewer positives,
#    on anchors than on grid cells, while the rule and the code stay the same.
# 4. Compute a centerness target by hand and see which positives it weighs most.
# 5. Check that `assign_atss_batched` and `model.assign` equal the per-image function,
#    and what a box smaller than a pixel or larger than the image does.
#
# **Prerequisites**: notebook 01 (IoU), notebook 02 (anchor boxes on the cell's
# top-left corner, the flat prior index), notebook 21 (ATSS on grid cells, step by
# step).
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
import statistics

import matplotlib.pyplot as plt
import pandas as pd
import torch

from detutils import boxes as box_ops
from detutils.assigners import (
    BACKGROUND,
    assign_atss,
    assign_atss_batched,
    explain_atss,
    pad_ground_truth,
)
from detutils.checks import check_close, check_equal, check_function, check_passed, check_true
from detutils.course import significant
from detutils.data.shapes import CLASS_NAMES, render_sample
from detutils.losses.atss import centerness_targets
from detutils.models.atss import build_atss_r18half_fpn64
from detutils.priors import grid_cells
from detutils.viz import draw_assignment, draw_boxes, draw_priors


def load_sample(index, split="val", size=320):
    """One image of the shapes set with its boxes (M, 4) xyxy px and labels (M,)."""
    image, _, objects = render_sample(seed=0, split=split, index=index, size=size)
    boxes = [obj["bbox"] for obj in objects]
    gt_boxes = box_ops.xywh_to_xyxy(torch.tensor(boxes, dtype=torch.float32).view(-1, 4))
    gt_labels = torch.tensor([obj["label"] for obj in objects], dtype=torch.long)
    return image, gt_boxes, gt_labels


# %% [markdown]
# ## 1. Three boxes and 2134 anchors
#
# Image 285 of the validation split holds exactly one box of each COCO size: a hexagon
# of 175 × 192 px, a star of 56 × 55 px and a cross of 12 × 16 px.

# %%
image, gt_boxes, gt_labels = load_sample(285)
gt_boxes, gt_labels = gt_boxes.to(device), gt_labels.to(device)
sizes = (gt_boxes[:, 2:] - gt_boxes[:, :2]).cpu()  # (M, 2) w, h px
areas = sizes.prod(dim=1)
names = ["0 hexagon", "1 star", "2 cross"]
pd.DataFrame(
    {
        "class": [CLASS_NAMES[label] for label in gt_labels.tolist()],
        "xyxy": [tuple(int(v) for v in box) for box in gt_boxes.tolist()],
        "w x h": [f"{w:.0f} x {h:.0f}" for w, h in sizes.tolist()],
        "COCO size": ["small" if a < 32**2 else "medium" if a < 96**2 else "large" for a in areas],
    },
    index=names,
)

# %%
ax = draw_boxes(image, gt_boxes.cpu(), gt_labels.cpu(), class_names=CLASS_NAMES)
ax.set_title("val image 285: a large, a medium and a small box")
plt.show()

# %% [markdown]
# The priors come from the detector itself: `model.anchors(feature_sizes)` returns the
# anchors of every level, flattened as the head's outputs are (level by level,
# row-major). At 320 px the five maps have 40, 20, 10, 5 and 3 locations a side: P6
# and P7 come from stride-2 convolutions, which round a side n up to ⌈n / 2⌉ (10 → 5
# → 3), so P7's 3 × 3 grid reaches x = 256 px, and no further. Building the preset
# loads no weights: the anchors do not depend on them.

# %%
model = build_atss_r18half_fpn64(num_classes=6).to(device)
strides = list(model.config.strides)  # [8, 16, 32, 64, 128]
level_names = [f"P{level}" for level in range(3, 8)]
feature_sizes = [(40, 40), (20, 20), (10, 10), (5, 5), (3, 3)]
anchors, num_per_level = model.anchors(feature_sizes, device)  # (A, 4) xyxy px, [5 ints]
level_starts = [sum(num_per_level[:level]) for level in range(5)]
print(f"anchors {tuple(anchors.shape)}, per level {num_per_level}, starts {level_starts}")
pd.DataFrame(
    {
        "stride s": strides,
        "map H x W": [f"{h} x {w}" for h, w in feature_sizes],
        "anchors": num_per_level,
        "first index": level_starts,
        "side 8 s (px)": [int(model.config.octave_base_scale * s) for s in strides],
        "first anchor (xyxy)": [tuple(int(v) for v in anchors[i].tolist()) for i in level_starts],
    },
    index=level_names,
)

# %% [markdown]
# Each anchor is one square of side 8 s centred on the grid point (x s, y s), the
# cell's top-left corner (mmdet's `center_offset=0`, notebook 02): the first anchor of
# every level is centred on the image's corner (0, 0) and hangs three quarters outside
# it. The anchor of flat index `offset + y W + x` has its centre at (x s, y s):

# %%
anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2  # (A, 2)
for level, (stride, (height, width)) in enumerate(zip(strides, feature_sizes, strict=True)):
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    grid_points = torch.stack([xs, ys], dim=-1).reshape(-1, 2).to(device) * stride  # (H W, 2)
    level_anchors = anchors[level_starts[level] : level_starts[level] + num_per_level[level]]
    assert torch.equal((level_anchors[:, :2] + level_anchors[:, 2:]) / 2, grid_points.float())
    assert (level_anchors[:, 2:] - level_anchors[:, :2] == 8 * stride).all()
print("every anchor: a square of side 8 s centred on (x s, y s)")

# %% [markdown]
# One anchor of each level, the one centred nearest the image's centre, against the
# 320-px image (left): P3's 64-px square fits inside it, P7's 1024-px square covers
# ten times its area. NanoDet's grid cells (notebook 21) are squares of 5 s centred on
# the cell centres ((x + ½) s, (y + ½) s): in the image's top-left corner (right), the
# centres of the stride-8 anchors sit on the grid lines, those of the stride-8 cells
# between them.

# %%
cells, cell_counts = grid_cells(feature_sizes[:3], strides[:3], cell_scale=5.0, device=device)
cell_centres = (cells[:, :2] + cells[:, 2:]) / 2  # (2100, 2)
image_centre = torch.tensor([160.0, 160.0], device=device)
fig, (ax, ax_zoom) = plt.subplots(1, 2, figsize=(12, 5.5), width_ratios=[3, 2])
ax.imshow(image, extent=(0, 320, 320, 0))
for level, colour in enumerate(["tab:red", "tab:orange", "tab:green", "tab:blue", "tab:purple"]):
    start, count = level_starts[level], num_per_level[level]
    distance = (anchor_centres[start : start + count] - image_centre).norm(dim=1)
    nearest = start + int(torch.sort(distance, stable=True).indices[0])
    x1, y1, x2, y2 = anchors[nearest].tolist()
    ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=colour, lw=2))
    ax.plot([], [], color=colour, label=f"{level_names[level]}: {x2 - x1:.0f} px at "
            f"({(x1 + x2) / 2:.0f}, {(y1 + y2) / 2:.0f})")  # fmt: skip
ax.set_xlim(-400, 720)
ax.set_ylim(720, -400)
ax.legend(fontsize=8, loc="lower right")
ax.set_title("one anchor per level, around the 320-px image")
corner = 48  # px shown
ax_zoom.imshow(image[:corner, :corner], extent=(0, corner, corner, 0))
p3 = anchor_centres[: num_per_level[0]].cpu()
p3_cells = cell_centres[: cell_counts[0]].cpu()
ax_zoom.scatter(p3[:, 0], p3[:, 1], s=30, color="tab:red", label="anchor centres (x s, y s)")
ax_zoom.scatter(
    p3_cells[:, 0], p3_cells[:, 1], s=30, marker="x", color="k",
    label="grid-cell centres ((x + ½) s, (y + ½) s)",
)  # fmt: skip
ax_zoom.set_xticks(range(0, corner + 1, 8))
ax_zoom.set_yticks(range(0, corner + 1, 8))
ax_zoom.grid(color="w", linewidth=0.5)
ax_zoom.set_xlim(-2, corner)
ax_zoom.set_ylim(corner, -2)
ax_zoom.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=1)
ax_zoom.set_title("stride 8, the top-left 48 px")
plt.show()

# %% [markdown]
# ## 2. ATSS step by step, on anchors
#
# Nothing in the assigner knows what its priors are: it measures IoUs and centre
# distances, picks the k = min(9, priors of the level) nearest on every level, sets
# mean + std of their IoUs as the threshold, and keeps the candidates that reach it
# with their centre inside the box by more than 0.01 px. `explain_atss` keeps every
# step. On five levels a box has 5 × 9 = 45 candidates; P7 has exactly nine anchors
# at 320 px, so all of P7 is a candidate of every box.

# %%
explanation = explain_atss(anchors, num_per_level, gt_boxes, gt_labels, topk=model.config.topk)
result = explanation.result
print("candidate_index", tuple(explanation.candidate_index.shape), "(M, N)")
print("candidates per level:", [min(9, count) for count in num_per_level])
p7 = torch.arange(level_starts[4], len(anchors), device=device)  # the 9 anchors of P7
for j in range(len(gt_boxes)):
    p7_candidates = explanation.candidate_index[j][explanation.candidate_level[j] == 4]
    assert torch.equal(p7_candidates.sort().values, p7)
print("every box's P7 candidates: all nine P7 anchors")


# %% [markdown]
# Two functions read the explanation of one box: a table per level (its candidates, the
# range of their IoUs, how many pass each test) and a figure per level (the candidate
# anchors in blue, the positives in red, the box in black; anchors larger than the
# image show only their centre and the sides that cross it).


# %%
def level_table(explained, box, names=level_names):
    """Box ``box``'s candidates per level: IoU range, tests passed, positives."""
    table = explained.table(box)
    per_level = table.groupby("level")
    summary = pd.DataFrame(
        {
            "candidates": per_level.size(),
            "IoU min": per_level["iou"].min(),
            "IoU max": per_level["iou"].max(),
            "pass IoU": per_level["passes_iou"].sum(),
            "centre inside": per_level["center_inside"].sum(),
            "positive": per_level["positive"].sum(),
        }
    )
    summary.index = [names[level] for level in summary.index]
    return significant(summary, 4)


def draw_candidates(explained, box, priors, names=level_names, title="", zoom=None):
    """One panel per level: box ``box``'s candidates (blue) and positives (red);
    ``zoom`` (x0, x1, y0, y1) px narrows the first panel to a window."""
    num_levels = len(names)
    fig, axes = plt.subplots(1, num_levels, figsize=(3.2 * num_levels, 3.6))
    x1, y1, x2, y2 = gt_boxes[box].tolist()
    for level, ax in enumerate(axes):
        rows = explained.candidate_level[box] == level
        positive = explained.positive[box][rows]
        draw_priors(
            image,
            priors[explained.candidate_index[box][rows]].cpu(),
            ax=ax,
            every=1,
            highlight=positive.cpu().numpy(),
            title=f"{names[level]}: {int(positive.sum())} of {int(rows.sum())} positive",
        )
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="k", lw=2))
        if ax.get_legend() is not None:
            ax.get_legend().remove()
        ax.set_xlabel("")
        ax.set_ylabel("")
    if zoom is not None:
        axes[0].set_xlim(zoom[0], zoom[1])
        axes[0].set_ylim(zoom[3], zoom[2])
    threshold = explained.iou_threshold[box].item()
    fig.suptitle(
        f"{title}: threshold {threshold:.4f}, {int(explained.positive[box].sum())} positive"
    )
    return fig


# %% [markdown]
# ### 2.1 The star, 56 × 55 px
#
# First the threshold and the centre test by hand from the explanation's fields, as
# notebook 21 did on grid cells: the mean and the unbiased standard deviation (divided
# by 45 − 1) of the 45 candidate IoUs, then the four distances from each candidate's
# centre to the sides of the box.

# %%
star = 1
star_box = gt_boxes[star]  # (4,) xyxy px
star_iou = explanation.candidate_iou[star]  # (45,)
threshold = star_iou.mean() + star_iou.std()  # unbiased: divides by 44
centres = anchor_centres[explanation.candidate_index[star]]  # (45, 2)
sides = torch.cat([centres - star_box[:2], star_box[2:] - centres], dim=1)  # (45, 4) l, t, r, b
inside = sides.min(dim=1).values > 0.01
torch.testing.assert_close(threshold, explanation.iou_threshold[star])
assert torch.equal(inside, explanation.center_inside[star])
assert torch.equal((star_iou >= threshold) & inside, explanation.positive[star])
print(
    f"mean {explanation.iou_mean[star].item():.4f} + std {explanation.iou_std[star].item():.4f}"
    f" = threshold {threshold.item():.4f}"
)
level_table(explanation, star)

# %%
draw_candidates(explanation, star, anchors, title="the star")
plt.show()

# %% [markdown]
# The star is a little smaller than P3's 64-px anchors: the nine nearest of them
# overlap it by 0.57 to 0.75, every other level by 0.19 or less. Those nine pull the
# standard deviation up and the threshold (0.4344) lands between P3 and the rest; all
# nine centres lie on the star's box, so all nine are positive.
#
# ### 2.2 The cross, 12 × 16 px
#
# A 64-px anchor that contains the whole cross overlaps it by 12 · 16 / 64² = 0.0469,
# the most a box this small can reach on P3; on P4 it is 192 / 128² = 0.0117, four
# times less. The threshold is relative, so 0.0469 clears it easily:

# %%
cross = 2
print(f"IoU of a 64-px anchor around the cross: {12 * 16 / 64**2:.4f}")
level_table(explanation, cross)

# %%
draw_candidates(explanation, cross, anchors, title="the cross (P3: its top-left 96 px)",
                zoom=(0, 96, 0, 96))  # fmt: skip
plt.show()

# %% [markdown]
# All nine P3 candidates pass the IoU test; the centre test keeps four of them. The
# anchor centres are the grid points, multiples of 8: the cross spans x from 21 to 33
# and y from 37 to 53, which holds x = 24 and 32, y = 40 and 48, four grid points.

# %%
cross_table = explanation.table(cross)
cross_positive = cross_table.loc[cross_table["positive"], "prior"].tolist()
positive_centres = anchor_centres[torch.tensor(cross_positive, device=device)]
print("positive priors:", cross_positive)
print("their centres:", [tuple(int(v) for v in c) for c in positive_centres.tolist()])
assert sorted(map(tuple, positive_centres.tolist())) == [(24, 40), (24, 48), (32, 40), (32, 48)]

# %% [markdown]
# ### 2.3 The hexagon, 175 × 192 px
#
# The hexagon's box lies between two anchor sizes: 128 px (P4) is too small, 256 px
# (P5) too large, and the box's side is close to their geometric mean, √(128 · 256) ≈
# 181 px. The two levels fit it about equally well (0.49 and up to 0.51), far better
# than the others, and the threshold falls below both: 18 positives on two levels.
# P3's 64-px anchors lie wholly inside the box, so all nine overlap it by the same
# 64² / (175 · 192) = 0.1219.

# %%
hexagon = 0
level_table(explanation, hexagon)

# %%
draw_candidates(explanation, hexagon, anchors, title="the hexagon")
plt.show()

# %% [markdown]
# The three boxes together: candidates and positives per level for each box, and the
# assignment of the whole image (step 5, a prior wanted by several boxes learns the
# one it overlaps most, has nothing to settle here: no anchor is claimed twice).

# %%
per_box = pd.DataFrame(
    {
        "threshold": explanation.iou_threshold.tolist(),
        **{
            f"{name} cand / pos": [
                f"{int((explanation.candidate_level[j] == level).sum())} / "
                f"{int(explanation.positive[j][explanation.candidate_level[j] == level].sum())}"
                for j in range(len(gt_boxes))
            ]
            for level, name in enumerate(level_names)
        },
        "positive": explanation.positive.sum(dim=1).tolist(),
    },
    index=names,
)
claimed = explanation.candidate_index[explanation.positive]  # every claim of every box
assert len(claimed.unique()) == len(claimed) == result.num_positive == 31
significant(per_box, 4)

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 4.4))
for ax, level in zip(axes, range(3), strict=True):
    start, count = level_starts[level], num_per_level[level]
    draw_assignment(
        image,
        anchors[start : start + count].cpu(),
        gt_boxes.cpu(),
        result.gt_index[start : start + count].cpu(),
        ax=ax,
        gt_labels=gt_labels.cpu(),
        class_names=CLASS_NAMES,
        title=f"{level_names[level]} ({8 * strides[level]} px anchors)",
    )
plt.show()
assert (result.gt_index[level_starts[3] :] == BACKGROUND).all()  # nothing on P6 and P7

# %% [markdown]
# ## 3. Beside NanoDet's grid cells
#
# The same three boxes, the same function, NanoDet's 2100 grid cells of notebook 21
# (strides 8, 16 and 32, side 5 s) instead of the 2134 anchors. What differs is all in
# the first two arguments:

# %%
cell_explanation = explain_atss(cells, cell_counts, gt_boxes, gt_labels, topk=9)
pd.DataFrame(
    {
        "levels": ["3: strides 8, 16, 32", "5: strides 8 to 128"],
        "prior side": ["5 s (40, 80, 160 px)", "8 s (64 to 1024 px)"],
        "centre": ["cell centre ((x + ½) s, (y + ½) s)", "grid point (x s, y s)"],
        "priors A": [len(cells), len(anchors)],
        "candidates per box": [
            cell_explanation.candidate_index.shape[1],
            explanation.candidate_index.shape[1],
        ],
    },
    index=["grid cells (NanoDet)", "anchors (ATSS)"],
)

# %% [markdown]
# Box by box: the threshold, the best candidate IoU and the positives per level on each
# prior set ("–": the grid cells have no P6 and P7).

# %%
rows = []
for j, name in enumerate(names):
    for prior_set, explained, num_levels in [
        ("grid cells", cell_explanation, 3),
        ("anchors", explanation, 5),
    ]:
        positives = [
            int(explained.positive[j][explained.candidate_level[j] == level].sum())
            for level in range(num_levels)
        ]
        rows.append(
            {
                "box": name,
                "priors": prior_set,
                "threshold": explained.iou_threshold[j].item(),
                "best IoU": explained.candidate_iou[j].max().item(),
                **{
                    level_names[level]: positives[level] if level < num_levels else "–"
                    for level in range(5)
                },
                "positive": sum(positives),
            }
        )
side_by_side = pd.DataFrame(rows).set_index(["box", "priors"])
significant(side_by_side, 4)

# %%
cell_positive = cell_explanation.positive.sum(dim=1).tolist()
anchor_positive = explanation.positive.sum(dim=1).tolist()
assert cell_positive == [8, 0, 2] and anchor_positive == [18, 9, 4]
star_best_cells = cell_explanation.candidate_iou[star].max().item()
assert cell_explanation.iou_threshold[star].item() > star_best_cells  # no cell can pass
print(f"star on grid cells: best IoU {star_best_cells:.4f}, "
      f"threshold {cell_explanation.iou_threshold[star].item():.4f}")  # fmt: skip
level_table(cell_explanation, star, names=["stride 8", "stride 16", "stride 32"])

# %% [markdown]
# What changes, and why:
#
# - **The level.** A box lands where the prior's side is near its own, and the prior
#   side is 5 s on grid cells but 8 s on anchors: the same box sits about two thirds of
#   a level lower on anchors (log₂(8 / 5) ≈ 0.68). The hexagon goes from stride 32
#   (160-px cells) to P4 and P5 (128- and 256-px anchors); the star from nowhere (see
#   next point) to P3.
# - **The thresholds**, because the IoUs are different numbers. On grid cells the star
#   fits two levels fairly (the table below): its nine 40-px cells at stride 8 overlap
#   it by 0.48 to 0.52, all alike, and the 80-px cells at stride 16 by 0.33 to 0.48,
#   while stride 32 is far off (0.12). The spread comes mostly from stride 32, and
#   mean + std (0.5221) lands just above the best candidate (0.5195): no positive, as
#   the 240-px bar of notebook 21's exercise 2. On anchors P3 stands out alone
#   (0.57 to 0.75) and takes it.
# - **The centres.** The cross contains four grid points (multiples of 8) but only two
#   cell centres (8 x + 4): four positives on anchors, two on cells.
# - **Five levels.** P6 and P7 (512- and 1024-px anchors) add 18 candidates per box but,
#   at 320 px, no positive for any box of this image, and for a square box only above
#   √(256 · 512) ≈ 362 px, more than the image (section 6 makes one).
#
# What does not change: the rule and the code. The two results come from one call of
# `explain_atss`, and the batched assigner of section 5 runs the same steps.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 5))
for ax, priors, explained, title in [
    (axes[0], cells, cell_explanation, "grid cells (5 s), strides 8 to 32"),
    (axes[1], anchors, explanation, "anchors (8 s), P3 to P7"),
]:
    draw_assignment(
        image,
        priors.cpu(),
        gt_boxes.cpu(),
        explained.result.gt_index.cpu(),
        ax=ax,
        gt_labels=gt_labels.cpu(),
        class_names=CLASS_NAMES,
        title=f"{title}: {explained.result.num_positive} positive",
    )
plt.show()

# %% [markdown]
# ## 4. Centerness targets
#
# ATSS adds one output per anchor to RetinaNet's head, FCOS's *centerness*: how close
# the anchor's centre lies to the middle of the box it learns. For a positive whose
# centre is at distances l, t, r, b from the left, top, right and bottom sides of its
# box, the target is
#
# $$\text{centerness} = \sqrt{\frac{\min(l, r)}{\max(l, r)} \cdot \frac{\min(t, b)}{\max(t, b)}},$$
#
# 1 at the box's centre, falling to 0 at its sides (Tian et al., 2019, eq. 3).
# `detutils.losses.atss.centerness_targets` computes it for (anchor, box) pairs. The
# loss uses it twice: it is the target of the centerness branch (binary cross-entropy),
# and it weighs each positive's GIoU term (divided by the sum of the targets), so the
# anchors near a box's centre count most. At test time the predicted centerness
# multiplies the class score. It is only defined for positives: a centre outside the
# box makes a ratio negative and the square root NaN, which the centre test of ATSS
# rules out.
#
# By hand, for the first positive of the star:

# %%
prior = int(explanation.table(star)["prior"][0])  # its nearest P3 candidate, a positive
cx, cy = anchor_centres[prior].tolist()
x1, y1, x2, y2 = star_box.tolist()
left, top, right, bottom = cx - x1, cy - y1, x2 - cx, y2 - cy
by_hand = math.sqrt(min(left, right) / max(left, right) * min(top, bottom) / max(top, bottom))
from_detutils = centerness_targets(anchors[prior][None], star_box[None])  # (1,)
print(f"prior {prior}, centre ({cx:.0f}, {cy:.0f}); l, t, r, b = {left}, {top}, {right}, {bottom}")
print(f"by hand {by_hand:.4f}, centerness_targets {from_detutils.item():.4f}")
assert abs(by_hand - from_detutils.item()) < 1e-6

# %% [markdown]
# Over the whole hexagon: the target at every pixel centre of its box (as if an anchor
# were centred there), with the hexagon's 18 positives on top. The target falls fast
# towards the sides (a square root of two ratios): half-way from the centre to a side,
# l : r = 1 : 3 on that axis, √(1/3) ≈ 0.58 already.

# %%
x1, y1, x2, y2 = gt_boxes[hexagon].tolist()
xs = torch.arange(x1 + 0.5, x2, 1.0, device=device)  # pixel centres
ys = torch.arange(y1 + 0.5, y2, 1.0, device=device)
grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (h, w) each
points = torch.stack([grid_x, grid_y, grid_x, grid_y], dim=-1).reshape(-1, 4)  # (h w, 4)
heat = centerness_targets(points, gt_boxes[hexagon].expand(len(points), 4))
heat = heat.reshape(len(ys), len(xs))  # (h, w)
hexagon_positive = (result.gt_index == hexagon).nonzero().flatten()  # (18,)
fig, ax = plt.subplots(figsize=(6, 5.5))
shown = ax.imshow(heat.cpu(), extent=(x1, x2, y2, y1), cmap="viridis", vmin=0, vmax=1)
fig.colorbar(shown, ax=ax, label="centerness target")
for level, marker, colour in [(1, "o", "tab:red"), (2, "s", "w")]:
    on_level = hexagon_positive[
        (hexagon_positive >= level_starts[level])
        & (hexagon_positive < level_starts[level] + num_per_level[level])
    ]
    centre = anchor_centres[on_level].cpu()
    ax.scatter(centre[:, 0], centre[:, 1], marker=marker, s=50, facecolors="none",
               edgecolors=colour, label=f"{level_names[level]} positives")  # fmt: skip
ax.set_xlim(x1 - 8, x2 + 8)
ax.set_ylim(y2 + 8, y1 - 8)
ax.set_facecolor("0.6")
ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, facecolor="0.6")
ax.set_title("centerness target over the hexagon's box")
plt.show()
print(
    f"target at the box's centre {heat.max().item():.4f}, at a corner pixel {heat[0, 0].item():.4f}"
)

# %% [markdown]
# The targets the loss will use: every positive of the image, coloured by its target.

# %%
positive = result.gt_index >= 0  # (A,)
positive_index = positive.nonzero().flatten()  # (P,)
targets_per_positive = centerness_targets(
    anchors[positive_index], gt_boxes[result.gt_index[positive_index]]
)  # (P,)
ax = draw_boxes(image, gt_boxes.cpu(), gt_labels.cpu(), class_names=CLASS_NAMES)
centre = anchor_centres[positive_index].cpu()
shown = ax.scatter(centre[:, 0], centre[:, 1], c=targets_per_positive.cpu(), cmap="viridis",
                   vmin=0, vmax=1, s=40, edgecolors="k")  # fmt: skip
plt.colorbar(shown, ax=ax, label="centerness target")
ax.set_title(f"the {len(positive_index)} positives' targets")
plt.show()

# %%
centerness_table = pd.DataFrame(
    {
        "positives": [int((result.gt_index[positive_index] == j).sum()) for j in range(3)],
        "min": [
            targets_per_positive[result.gt_index[positive_index] == j].min().item()
            for j in range(3)
        ],  # fmt: skip
        "mean": [
            targets_per_positive[result.gt_index[positive_index] == j].mean().item()
            for j in range(3)
        ],  # fmt: skip
        "max": [
            targets_per_positive[result.gt_index[positive_index] == j].max().item()
            for j in range(3)
        ],  # fmt: skip
    },
    index=names,
)
assert (targets_per_positive > 0).all() and (targets_per_positive <= 1).all()
significant(centerness_table, 4)

# %% [markdown]
# The cross's four positives sit near its corners, 1 to 5 px from two of its sides:
# their targets are small (0.14 to 0.39), so its GIoU terms weigh little in the loss.
# The hexagon's P4 positives cluster around its centre and get the highest targets;
# its P5 positives, 32 px apart, reach further out.
#
# ## 5. The batch: three routes, one answer
#
# Training assigns a batch at once. `assign_atss_batched` takes the ground truth
# padded by `pad_ground_truth`; `model.assign(outputs, targets)`, what the training
# step calls, builds the anchors from the sizes of the output maps and calls it. A
# batch of three: our image, image 0 of the validation split (seven boxes) and a grey
# image without boxes.

# %%
val_image, val_boxes, val_labels = load_sample(0)
targets = [
    {"boxes": gt_boxes, "labels": gt_labels},
    {"boxes": val_boxes.to(device), "labels": val_labels.to(device)},
    {"boxes": torch.zeros(0, 4, device=device), "labels": torch.zeros(0, dtype=torch.long)},
]
padded_boxes, padded_labels, mask = pad_ground_truth(targets, device)
print("padded:", tuple(padded_boxes.shape), tuple(padded_labels.shape), tuple(mask.shape))
batched = assign_atss_batched(anchors, num_per_level, padded_boxes, padded_labels, mask)
for image_index, target in enumerate(targets):
    single = assign_atss(anchors, num_per_level, target["boxes"], target["labels"].to(device))
    for field_batched, field_single in zip(batched, single, strict=True):
        assert torch.equal(field_batched[image_index], field_single)
print("batched == per image; positives per image:", batched.positive.sum(dim=1).tolist())

# %% [markdown]
# The model's route needs outputs: the preset runs on the three images (untrained; the
# predictions do not matter). ATSS reads only the maps' sizes, unlike the
# task-aligned assigner of notebook 31, which scores the predictions: outputs of zeros
# of the same sizes give the same assignment.

# %%
images = (
    torch.stack(
        [
            torch.as_tensor(image).permute(2, 0, 1),
            torch.as_tensor(val_image).permute(2, 0, 1),
            torch.full((3, 320, 320), 128, dtype=torch.uint8),
        ]
    )
    .to(device)
    .float()
    / 255
)  # (B, 3, H, W) in [0, 1]
model.eval()
with torch.no_grad():
    outputs = model(images)  # class, delta and centerness maps per level
for name, maps in zip(["classes", "deltas", "centerness"], outputs, strict=True):
    print(f"{name:10s}", [tuple(m.shape) for m in maps])
assignment, assigned_boxes = model.assign(outputs, targets)
zeros = tuple([torch.zeros_like(m) for m in maps] for maps in outputs)
for field_model, field_zeros, field_batched in zip(
    assignment, model.assign(zeros, targets).assignment, batched, strict=True
):
    assert torch.equal(field_model, field_batched) and torch.equal(field_zeros, field_batched)
assert torch.equal(assigned_boxes, padded_boxes)
print("model.assign == assign_atss_batched == assign_atss, with real or zero outputs")

# %% [markdown]
# ## 6. Bad boxes
#
# Two boxes a dataset should not hold, and what ATSS and the loss make of them.
#
# **A box smaller than a pixel**, 0.5 × 0.5 px at (100.3, 100.3). It still has 45
# candidates, tiny IoUs and a threshold, which its nine P3 candidates (0.25 / 64² =
# 6.1e-5 each) even pass; but no anchor centre, a multiple of 8, lies inside it: no
# positive.
#
# **A box larger than the image**, 400 × 400 px from (−40, −40): boxes reach the
# assigner as the data pipeline leaves them, so an unclipped box is assigned as it is.
# At 400 px it is the first box of this lesson that lands on P6 (section 3: a square
# box moves from P5 to P6 between 340 and 380 px, around √(256 · 512) ≈ 362 px).

# %%
tiny = torch.tensor([[100.3, 100.3, 100.8, 100.8]], device=device)
huge = torch.tensor([[-40.0, -40.0, 360.0, 360.0]], device=device)
one_label = torch.tensor([0], device=device)
bad_rows = []
for name, box in [("tiny 0.5 px", tiny), ("huge 400 px", huge)]:
    explained = explain_atss(anchors, num_per_level, box, one_label)
    table = explained.table(0)
    bad_rows.append(
        {
            "box": name,
            "threshold": explained.iou_threshold[0].item(),
            "best IoU": explained.candidate_iou[0].max().item(),
            "pass IoU": int(table["passes_iou"].sum()),
            "centre inside": int(table["center_inside"].sum()),
            **{
                f"pos {level_names[level]}": int(
                    table.loc[table["level"] == level, "positive"].sum()
                )
                for level in range(5)
            },
        }
    )
bad = pd.DataFrame(bad_rows).set_index("box")
assert bad.loc["tiny 0.5 px", "centre inside"] == 0
assert bad.loc["huge 400 px", "pos P6"] == 9
significant(bad, 4)

# %% [markdown]
# The loss on random outputs (standard normal logits and deltas) for a batch of two
# images, one with each box: finite. The tiny box's image has no positive and counts 1
# in the normaliser (the class term, summed over 2134 × 6 (anchor, class) pairs of
# which random logits call half "object", is large for that reason alone); its box
# and centerness terms are exactly 0. The huge box's nine P6 positives learn a box
# whose sides lie 40 px outside the image, which their decoded boxes can reach (no
# clipping in training).

# %%
generator = torch.Generator().manual_seed(0)
random_outputs = tuple(
    [torch.randn(2, *m.shape[1:], generator=generator).to(device) for m in maps] for maps in outputs
)
bad_targets = [{"boxes": tiny, "labels": one_label}, {"boxes": huge, "labels": one_label}]
bad_assignment = model.assign(random_outputs, bad_targets)
losses = model.loss(random_outputs, bad_targets, bad_assignment)
print("positives per image:", bad_assignment.assignment.positive.sum(dim=1).tolist())
print({name: f"{value.item():.4g}" for name, value in losses.items()})
assert all(torch.isfinite(value) for value in losses.values())
tiny_losses = model.loss(tuple([m[:1] for m in maps] for maps in random_outputs), bad_targets[:1])
print("tiny box alone:", {name: f"{value.item():.4g}" for name, value in tiny_losses.items()})
assert tiny_losses["bbox"] == 0 and tiny_losses["centerness"] == 0

# %% [markdown]
# What the assigner does refuse is a box that is not a box: a NaN or inverted corner
# raises a `ValueError` naming it, before any IoU is computed.

# %%
try:
    assign_atss(
        anchors.cpu(), num_per_level, torch.tensor([[50.0, 50.0, 40.0, 60.0]]), one_label.cpu()
    )
except ValueError as error:
    print("ValueError:", error)

# %% [markdown]
# ## Recap
#
# - ATSS's priors are anchors: five levels P3 to P7 (strides 8 to 128), one square of
#   side 8 s per location centred on the grid point (x s, y s); 2134 at 320 px, built
#   by `model.anchors(feature_sizes)`.
# - The assigner is the function of notebook 21, unchanged: per box the k = 9 nearest
#   anchors on each level (45 candidates; at 320 px all nine of P7), the threshold
#   mean + unbiased std of their IoUs, the centre test by 0.01 px, the highest IoU
#   among boxes for a prior claimed twice.
# - Other priors give other IoUs, so other thresholds and levels: a box lands where the
#   prior side is near its own, 8 s on anchors against 5 s on grid cells. The star that
#   NanoDet's cells could not take (two levels tied) lands on P3; the hexagon splits
#   over P4 and P5; the cross gets four grid points instead of two cell centres. At
#   320 px P6 and P7 take only boxes larger than the image.
# - Each positive learns a centerness target √(min(l, r)/max(l, r) · min(t, b)/max(t, b)),
#   1 at the box's centre and 0 at its sides; it weighs the GIoU term and is the target
#   of the centerness branch.
# - `assign_atss_batched` and `model.assign` equal the per-image function exactly;
#   ATSS reads only the sizes of the outputs, never their values.
# - A box with no anchor centre inside gets no positive, and the loss stays finite.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** How many candidates does a box get on ATSS's anchors? Write
# `num_candidates(img_size)`, returning that number (an int) for a square input of
# `img_size` px (a multiple of 32) with `topk = 9`: P3, P4 and P5 have `img_size / s`
# locations a side, P6 and P7 round up (a side n becomes ⌈n / 2⌉), and a level cannot
# give more candidates than it has anchors. Predict 320 and 640 before you run it: why
# do they give the same number?

# %% tags=["solution"]
num_candidates = None  # your function (img_size) -> int
### BEGIN SOLUTION


def num_candidates(img_size):
    sides = [img_size // 8, img_size // 16, img_size // 32]
    sides += [math.ceil(sides[-1] / 2)]  # P6
    sides += [math.ceil(sides[-1] / 2)]  # P7
    return sum(min(9, side * side) for side in sides)


# 320 px: P7 is 3 x 3 = 9 anchors, exactly k, so 5 x 9 = 45; at 640 px every level has
# more than nine anchors: 45 again. Only below 320 px (P7 smaller than 3 x 3) fewer.
print({size: num_candidates(size) for size in (320, 640)})
### END SOLUTION


# %% tags=["check"]
def candidates_from_model(img_size):
    """Candidates per box from the preset's own maps and anchors at img_size px."""
    with torch.no_grad():
        maps = model(torch.zeros(1, 3, img_size, img_size, device=device))[0]
    level_anchors, counts = model.anchors([tuple(m.shape[-2:]) for m in maps], device)
    box = torch.tensor([[10.0, 10.0, 20.0, 20.0]], device=device)
    return explain_atss(level_anchors, counts, box, one_label).candidate_index.shape[1]


check_function(
    "num_candidates", num_candidates, [(320,), (640,)], candidates_from_model,
    hint="per level min(9, H W); at 320 px the sides are 40, 20, 10, 5 and 3, at 640 px "
    "80, 40, 20, 10 and 5: every level has at least nine anchors.",
)  # fmt: skip
check_true(
    isinstance(num_candidates(320), int),
    f"`num_candidates(320)` should be an int, got {type(num_candidates(320)).__name__}.",
    hint="sum Python ints (min(9, side * side)), or convert with int(...).",
)
### BEGIN HIDDEN TESTS
check_function(
    "num_candidates", num_candidates, [(96,), (160,), (128,)], candidates_from_model,
    hint="below 320 px P6 or P7 has fewer than nine anchors: at 160 px P7 is 2 x 2 = 4.",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** The threshold by hand. Write `atss_threshold(ious)`: for a list of
# candidate IoUs (plain Python floats), return mean + standard deviation, the
# *unbiased* one (divide the sum of squared deviations by n − 1), as a float, with no
# library statistics. Then assign for the nine IoUs `given_ious` below (a box's
# candidates with `topk = 3` on three levels) the threshold `given_threshold` and the
# number of candidates that reach it, `given_passing`.

# %% tags=["solution"]
given_ious = [0.10, 0.12, 0.11, 0.52, 0.47, 0.44, 0.20, 0.18, 0.15]
atss_threshold = None  # your function (list of floats) -> float
given_threshold = None  # a number
given_passing = None  # an int
### BEGIN SOLUTION


def atss_threshold(ious):
    n = len(ious)
    mean = sum(ious) / n
    variance = sum((iou - mean) ** 2 for iou in ious) / (n - 1)  # unbiased
    return mean + variance**0.5


given_threshold = atss_threshold(given_ious)
given_passing = sum(iou >= given_threshold for iou in given_ious)
print(f"threshold {given_threshold:.4f}, passing {given_passing}")
### END SOLUTION

# %% tags=["check"]
reference_threshold = lambda ious: statistics.mean(ious) + statistics.stdev(ious)  # noqa: E731
check_function(
    "atss_threshold", atss_threshold, [(given_ious,)], reference_threshold,
    hint="mean = sum / n; std = sqrt(sum((iou - mean)^2) / (n - 1)); return mean + std. "
    "Dividing by n instead of n - 1 gives a threshold a little too low.",
)  # fmt: skip
check_close(
    "given_threshold", given_threshold, reference_threshold(given_ious),
    hint="atss_threshold(given_ious)",
)  # fmt: skip
check_equal(
    "given_passing", given_passing, 3,
    hint="the threshold is about 0.42: count the IoUs >= it (the three of the second level).",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "atss_threshold", atss_threshold,
    [([0.25, 0.25, 0.25],), ([0.0, 0.6],), ([0.0469] * 9 + [0.0117] * 9 + [0.0029] * 27,)],
    reference_threshold, hint="equal IoUs: std 0, threshold = the mean",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** A centerness target by hand. A box `(20, 16, 102, 80)` xyxy and the
# P3 anchor at location (y, x) = (5, 6), centred on (48, 40). Assign
# `centerness_by_hand`, its centerness target computed from l, t, r, b without
# `detutils`. Then, among the P3 anchors whose centre lies inside the box, find the one
# with the highest target and assign its flat index `best_p3_prior` (P3 starts at
# index 0, the anchor at (y, x) is `40 y + x`), with `centerness_targets` or by
# reasoning.

# %% tags=["solution"]
exercise_box = torch.tensor([[20.0, 16.0, 102.0, 80.0]], device=device)  # (1, 4)
centerness_by_hand = None  # a number
best_p3_prior = None  # an int, flat index into `anchors`
### BEGIN SOLUTION
# l = 48 - 20 = 28, r = 102 - 48 = 54, t = 40 - 16 = 24, b = 80 - 40 = 40
centerness_by_hand = math.sqrt(28 / 54 * 24 / 40)
# The box's centre is (61, 48). The nearest grid points: y = 48 exactly (t = b = 32);
# x = 64 (l 44, r 38: 38/44) beats x = 56 (l 36, r 46: 36/46). Index 40 * 6 + 8.
p3 = anchors[: num_per_level[0]]  # (1600, 4)
p3_centres = (p3[:, :2] + p3[:, 2:]) / 2
inside_box = ((p3_centres > exercise_box[0, :2]) & (p3_centres < exercise_box[0, 2:])).all(dim=1)
inside_index = inside_box.nonzero().flatten()
scores = centerness_targets(p3[inside_index], exercise_box.expand(len(inside_index), 4))
best_p3_prior = int(inside_index[scores.argmax()])
print(f"centerness {centerness_by_hand:.4f}, best P3 prior {best_p3_prior}")
### END SOLUTION

# %% tags=["check"]
check_close(
    "centerness_by_hand", centerness_by_hand,
    centerness_targets(anchors[5 * 40 + 6][None], exercise_box),
    hint="l = 48 - 20, r = 102 - 48, t = 40 - 16, b = 80 - 40; "
    "sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)).",
)  # fmt: skip
check_true(
    isinstance(best_p3_prior, int) and not isinstance(best_p3_prior, bool),
    f"`best_p3_prior` should be an int (a flat anchor index), got {best_p3_prior!r}.",
    hint="int(...) of the index; P3's anchor at (y, x) has index 40 y + x.",
)
check_equal(
    "best_p3_prior", best_p3_prior, 40 * 6 + 8,
    hint="the box's centre is (61, 48): y = 48 is a grid point (t = b); of x = 56 and 64, "
    "which gives the larger min(l, r) / max(l, r)? Then 40 y/8 + x/8.",
)  # fmt: skip
check_passed("Exercise 3")

# %% [markdown]
# **Exercise 4.** Which level suits a large box? Write `centred_iou(side, stride)`: the
# IoU of a `side` × `side` square with the anchor of a level of stride `stride` (a
# square of side 8 × stride) centred on the same point, by hand (one square contains
# the other). Then assign `best_level_300`, the level (0 for P3 ... 4 for P7) whose
# anchor has the highest IoU with a 300-px square, and `crossover_side`, the side
# (px) above which a square box overlaps the P6 anchor more than the P5 anchor.

# %% tags=["solution"]
centred_iou = None  # your function (side, stride) -> float
best_level_300 = None  # an int, 0 .. 4
crossover_side = None  # a number, px
### BEGIN SOLUTION


def centred_iou(side, stride):
    anchor_side = 8 * stride
    return min(side, anchor_side) ** 2 / max(side, anchor_side) ** 2


# 300 px: P3 0.0455, P4 0.182, P5 (256) 0.7282, P6 (512) 0.3433, P7 0.0858
best_level_300 = max(range(5), key=lambda level: centred_iou(300, strides[level]))
# P5 vs P6: 256^2 / d^2 = d^2 / 512^2  <=>  d^2 = 256 * 512
crossover_side = math.sqrt(256 * 512)
print(f"best level {best_level_300}, crossover {crossover_side:.4g} px")
### END SOLUTION


# %% tags=["check"]
def iou_from_boxes(side, stride):
    """The IoU of the two squares centred on (0, 0), from detutils' box_iou."""
    half, anchor_half = side / 2, 4.0 * stride
    square = torch.tensor([[-half, -half, half, half]])
    anchor = torch.tensor([[-anchor_half, -anchor_half, anchor_half, anchor_half]])
    return box_ops.box_iou(square, anchor)[0, 0]


check_function(
    "centred_iou", centred_iou, [(300, s) for s in strides], iou_from_boxes,
    hint="the smaller square lies inside the larger: IoU = smaller area / larger area = "
    "min(side, 8 s)^2 / max(side, 8 s)^2.",
)  # fmt: skip
check_equal(
    "best_level_300", best_level_300, 2,
    hint="the anchor sides are 64, 128, 256, 512 and 1024 px: which IoU with a 300-px "
    "square is largest? Levels count from 0 for P3.",
)  # fmt: skip
check_close(
    "crossover_side", crossover_side, (256 * 512) ** 0.5,
    hint="set the IoU with the 256-px anchor (256^2 / d^2) equal to that with the 512-px "
    "anchor (d^2 / 512^2) and solve for d.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "centred_iou", centred_iou, [(40, 8), (64, 8), (700, 64), (2000, 128)], iou_from_boxes,
    hint="also for squares smaller than the anchor: min^2 / max^2",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 4")

# %% [markdown]
# ## Further reading
#
# - S. Zhang et al., *Bridging the Gap Between Anchor-based and Anchor-free Detection
#   via Adaptive Training Sample Selection*, CVPR 2020,
#   <https://arxiv.org/abs/1912.02424> (section 3.2 and algorithm 1; one 8 S anchor
#   per location), code <https://github.com/sfzhang15/ATSS>
# - mmdet `ATSSHead` (`mmdet/models/dense_heads/atss_head.py`, `centerness_target`),
#   `ATSSAssigner` (`mmdet/models/task_modules/assigners/atss_assigner.py`) and
#   `AnchorGenerator` (`mmdet/models/task_modules/prior_generators/anchor_generator.py`),
#   config `configs/atss/atss_r50_fpn_1x_coco.py`,
#   <https://github.com/open-mmlab/mmdetection>
# - Z. Tian et al., *FCOS: Fully Convolutional One-Stage Object Detection*, ICCV 2019
#   (centerness, eq. 3), <https://arxiv.org/abs/1904.01355>
# - T.-Y. Lin et al., *Focal Loss for Dense Object Detection*, ICCV 2017 (RetinaNet:
#   P3 to P7 and their anchors), <https://arxiv.org/abs/1708.02002>
