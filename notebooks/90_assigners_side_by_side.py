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
# # 90 · Every assigner on one image
#
# Each detector of the course decides, before any loss is computed, which of its
# priors or queries learn which ground-truth box: YOLOv3 by the width-height IoU of
# its anchors (notebook 11), NanoDet by ATSS on grid cells (21), YOLOv8 by the
# task-aligned assigner (31), ATSS by ATSS on anchor boxes (41), Faster R-CNN by max
# IoU and a random sampler, twice (50, 51), Deformable DETR by Hungarian matching (61),
# and Co-DETR by all of the last three at once (70). Every one of them is behind the
# same call, `model.assign(outputs, targets)`.
#
# This notebook sends one image and its boxes through all seven detectors' `assign`
# and sets the answers side by side: where the positives of each box lie, on which
# level, how well they overlap their box, and which boxes get none. Then it trains
# the networks and asks again: the assigners that look at the predictions change their
# answer as the network learns, the others give the same answer as before.
#
# **Learning goals**
#
# 1. Read any detector's assignment of one image as the same three things per
#    positive: the box it learns, its level, the box the assigner measured it by
#    (`detutils.positives.positives_of`).
# 2. Compare the assigners on small, medium, large, touching and cut-off boxes:
#    positives per box and level, their mean IoU, the boxes left without any, and
#    say for each such box which rule left it out.
# 3. Tell the static assigners (wh-IoU, ATSS, max IoU on anchors) from the
#    prediction-aware ones (task-aligned, Hungarian) and see the second kind change
#    with training; see that the RoI head's max-IoU rule, static itself, follows the
#    RPN's proposals.
# 4. See the same comparison on a crowded image with many small, overlapping objects.
#
# **Prerequisites**: the assigner notebooks 11, 21, 31, 41, 50, 51, 61 and 70.
#
# **Notation**: as in [notebook 09](09_notation.ipynb): M boxes, P positives; a
# *level* is a stride of a feature pyramid (or, for a DETR's decoder, its queries).

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
import numpy as np
import pandas as pd
import torch

from detutils.assigners.atss import explain_atss
from detutils.boxes import box_iou
from detutils.checks import check_close, check_equal, check_passed, check_true
from detutils.course import exercise_network, significant
from detutils.data import ensure_shapes
from detutils.data.shapes import CLASS_NAMES, render_scene
from detutils.models import build_detector
from detutils.positives import (
    draw_positives,
    level_order,
    positives_of,
    positives_summary,
    positives_table,
)
from detutils.viz import draw_boxes

root = ensure_shapes("data/shapes")

# %% [markdown]
# ## 1. The fixture: one image with every kind of box
#
# `render_scene` draws chosen objects in the style of the shapes set (textured
# background, distractor strokes, each box the tight box of the visible pixels).
# The image is 320 px, the size the `cpu` schedules train at. Its eight boxes, by
# role:

# %%
SIZE = 320
fixture_objects = [  # (class, centre x, centre y, longer side px)
    ("rectangle", 110, 150, 190),  # 0 large
    ("star", 250, 60, 10),  # 1 tiny (COCO small: under 32 x 32 px)
    ("ellipse", 280, 110, 16),  # 2 small
    ("triangle", 232, 215, 44),  # 3 touching 4
    ("cross", 276, 215, 44),  # 4 touching 3
    ("hexagon", 250, 285, 60),  # 5 medium
    ("ellipse", 318, 180, 90),  # 6 cut off by the right border
    ("star", 40, 5, 50),  # 7 cut off by the top border
]
roles = ["large", "tiny", "small", "touching 4", "touching 3", "medium", "cut off right",
         "cut off top"]  # fmt: skip
image, boxes, labels = render_scene(fixture_objects, size=SIZE, seed=3)
gt_boxes, gt_labels = torch.from_numpy(boxes), torch.from_numpy(labels)
num_boxes = len(gt_boxes)
sides = gt_boxes[:, 2:] - gt_boxes[:, :2]
boxes_table = pd.DataFrame({
    "role": roles, "class": [CLASS_NAMES[int(c)] for c in labels],
    "x0": boxes[:, 0], "y0": boxes[:, 1], "x1": boxes[:, 2], "y1": boxes[:, 3],
    "w": sides[:, 0].numpy(), "h": sides[:, 1].numpy(),
})  # fmt: skip
boxes_table.index.name = "box"
boxes_table

# %%
fig, ax = plt.subplots(figsize=(4.5, 4.5))
draw_boxes(image, gt_boxes, labels=torch.arange(num_boxes), ax=ax,
           class_names=[str(i) for i in range(num_boxes)],
           title="the fixture: 8 boxes, numbered, in the colours used below")  # fmt: skip
plt.show()

# %% [markdown]
# ## 2. Seven detectors, one call each
#
# Each detector is the course's `cpu` preset at six classes, as built: random weights
# (the trainer would load the course's pre-trained backbone into the ResNet detectors
# at its first step; the static assigners do not look at any weights, and for the
# others an untrained network is what "before training" means). In training mode,
# `model(images)` gives the outputs `assign` reads; Faster R-CNN's and Co-DETR's
# samplers draw from the global random stream, so it is seeded before each call.
#
# `positives_of(model, outputs, assignment, targets)` reads one image's positives out
# of whatever `assign` returned: for each positive the box it learns (`gt_index`),
# its level, and the box it was measured by. For the static assigners that box is a
# prior's: a YOLO anchor placed on its cell, a grid cell, an anchor box, a proposal.
# The task-aligned assigner and Hungarian matching measure the network's predicted
# boxes instead.

# %%
DETECTORS = {
    "YOLOv3": "yolov3-tiny",
    "NanoDet": "nanodet-m",
    "YOLOv8": "yolov8n",
    "ATSS": "atss-r18half-fpn64",
    "Faster R-CNN": "faster-rcnn-r18half-fpn64",
    "Deformable DETR": "deformable-detr-r18half-d128",
    "Co-DETR": "co-deformable-detr-r18half-d128",
}
num_classes = len(CLASS_NAMES)


def as_batch(image_array):
    """(H, W, 3) uint8 -> (1, 3, H, W) float in [0, 1], what the data loader gives."""
    return torch.from_numpy(image_array).permute(2, 0, 1).float()[None] / 255


def assign_all(models, image_array, boxes, labels):
    """Every detector's assignment of one image: {assigner: Positives}, and for each
    detector the type ``assign`` returned and the names of its assigners."""
    batch = as_batch(image_array).to(device)
    targets = [{"boxes": boxes.to(device), "labels": labels.to(device)}]
    records, returned = {}, {}
    for name, model in models.items():
        model.train()
        torch.manual_seed(0)  # the samplers' draws
        with torch.no_grad():
            outputs = model(batch)
            assignment = model.assign(outputs, targets)
        mine = positives_of(model, outputs, assignment, targets)
        returned[name] = (type(assignment).__name__, ", ".join(mine))
        records.update(mine)
    return records, returned


torch.manual_seed(0)
untrained = {}
for name, model_name in DETECTORS.items():
    untrained[name] = build_detector(model_name, num_classes=num_classes).to(device)
before, returned = assign_all(untrained, image, gt_boxes, gt_labels)
pd.DataFrame(
    [(name, DETECTORS[name], *returned[name]) for name in DETECTORS],
    columns=["detector", "preset", "assign returns", "assigners"],
).set_index("detector")

# %% [markdown]
# Thirteen sets of positives from seven calls: Faster R-CNN assigns twice (its RPN's
# anchors, its RoI head's proposals), a two-stage Deformable DETR matches its last
# decoder layer's queries and, class-agnostically, its encoder's proposals, and
# Co-DETR does both of those plus its ATSS head, RPN and RoI head:

# %%
summary_before = positives_summary(before, num_boxes)
significant(summary_before, 3)

# %% [markdown]
# ## 3. Where the positives lie
#
# One panel per assigner, all levels at once: a dot at the centre of each positive's
# box, in the colour of the ground-truth box it learns; a box drawn dashed has no
# positive.

# %%
names = list(before)
fig, axes = plt.subplots(4, 4, figsize=(12, 12.5), dpi=72)
for ax, name in zip(axes.flat, names, strict=False):
    draw_positives(ax, image, gt_boxes, before[name],
                   title=f"{name}: {len(before[name].gt_index)}")  # fmt: skip
for ax in axes.flat[len(names) :]:
    ax.axis("off")
fig.tight_layout()
plt.show()

# %% [markdown]
# Now level by level (assigners in rows, their levels in columns, finest first). The
# one-to-many assigners spread a box's positives over the levels whose priors fit it:
# the large rectangle on the coarse levels, the small shapes on stride 8 (stride 4
# for the RoI head's small proposals). YOLOv3-tiny has only two levels, strides 16
# and 32, so its small boxes sit on stride 16 or nowhere.


# %%
def level_grid(records, image_array, boxes, names):
    """Assigners in rows, their levels in columns, finest first."""
    columns = max(len(records[name].levels) for name in names)
    fig, axes = plt.subplots(len(names), columns, figsize=(2.1 * columns, 2.2 * len(names)), dpi=72,
                             squeeze=False)  # fmt: skip
    for row, name in zip(axes, names, strict=True):
        record = records[name]
        order = sorted(range(len(record.levels)), key=lambda i: level_order(record.levels[i]))
        for ax, level in zip(row, order, strict=False):
            count = int((record.level == level).sum())
            draw_positives(ax, image_array, boxes, record, level=level,
                           title=f"{record.levels[level]}: {count}")  # fmt: skip
        row[0].set_ylabel(name, fontsize=8)
        for ax in row[len(order) :]:
            ax.axis("off")
    fig.tight_layout()
    return fig


level_grid(before, image, gt_boxes, names[:6])
plt.show()

# %%
level_grid(before, image, gt_boxes, names[6:])
plt.show()

# %% [markdown]
# ## 4. Per box: positives per level and their mean IoU
#
# `positives_table` counts each box's positives on each level, with the mean IoU of
# their boxes with it (a prior's box for the static assigners, a predicted box for the
# task-aligned assigner and Hungarian matching). One table per assigner family:

# %%
table_before = positives_table(before, num_boxes)


def family(table, names):
    """The rows of some assigners, without the level columns none of them uses."""
    part = table.loc[names]
    used = [c for c in part.columns if c in ("positives", "mean IoU") or part[c].sum() > 0]
    return significant(part[used], 3)


family(table_before, ["YOLOv3 wh-IoU", "ATSS on grid cells", "ATSS on anchors"])

# %%
family(table_before, ["task-aligned", "RPN max IoU + sampler", "RoI head max IoU + sampler"])

# %%
family(table_before, [n for n in names if "Hungarian" in n or "Co-DETR" in n])

# %% [markdown]
# What the tables say:
#
# - **Counts.** ATSS on anchors and the task-aligned assigner give every box several
#   positives (up to 9 and 10 per level, their `topk`); Hungarian matching gives
#   exactly one per box, on the decoder and on the encoder alike; YOLOv3 gives one per
#   anchor whose shape fits (wh-IoU above `iou_t`), on any level.
# - **IoU.** The static assigners' positives overlap their box as well as their
#   priors can; a predicted box of an untrained network hardly overlaps anything, so
#   the task-aligned and Hungarian IoUs are low before training.
# - **The same rule on the same priors.** Co-DETR's ATSS head is ATSS on anchors of the
#   same five strides at the same size: its positives are ATSS's, one for one:

# %%
same_atss = torch.equal(before["Co-DETR ATSS head"].gt_index, before["ATSS on anchors"].gt_index)
same_atss &= torch.equal(before["Co-DETR ATSS head"].boxes, before["ATSS on anchors"].boxes)
print("Co-DETR's ATSS head and ATSS choose the same anchors:", same_atss)

# %% [markdown]
# ## 5. Boxes left without a positive, and why
#
# A box without a positive teaches the network nothing in that image: the class loss
# calls every prior on it background. Which boxes each assigner leaves out:

# %%
left_out = summary_before[summary_before["boxes without"] > 0][["boxes without", "which"]]
left_out.assign(roles=[", ".join(roles[int(i)] for i in w.split()) for w in left_out["which"]])

# %% [markdown]
# Each has its own reason, which the assigner's own numbers show:
#
# - **YOLOv3, the tiny star (box 1).** A box goes to every anchor whose width-height
#   IoU with it is above `iou_t` = 0.2 (notebook 11). The 10 px star is smaller than
#   YOLOv3-tiny's smallest anchor by far:

# %%
yolo = untrained["YOLOv3"]
anchors_px = torch.cat([head.anchors for head in yolo.heads])  # (K per layer x layers, 2) px
wh = sides[1]
inter = torch.minimum(anchors_px, wh).prod(1)
wh_iou = inter / (anchors_px.prod(1) + wh.prod() - inter)
print(f"box 1: {wh[0]:.0f} x {wh[1]:.0f} px; best wh-IoU with an anchor "
      f"{wh_iou.max():.3f} < iou_t {yolo.config.iou_t}")  # fmt: skip

# %% [markdown]
# - **ATSS on grid cells, the medium hexagon (box 5).** ATSS's threshold is the mean
#   plus the standard deviation of its 27 candidates' IoUs (9 nearest cells on each of
#   three levels). Here the candidates on stride 8 all overlap the box about equally
#   and those on stride 32 hardly: the spread is large, and the threshold lands just
#   above the best candidate's IoU. No candidate passes, and the box gets no cell. On
#   anchors (five levels, smaller squares) the same rule gives it 9.

# %%
nanodet = untrained["NanoDet"]
with torch.no_grad():
    sizes = [tuple(m.shape[-2:]) for m in nanodet(as_batch(image).to(device))[0]]
cells, per_level, _ = nanodet.priors(sizes)
why = explain_atss(cells.cpu(), per_level, gt_boxes, gt_labels, topk=nanodet.config.topk)
print(f"box 5: best candidate IoU {why.candidate_iou[5].max():.4f}")
print(
    f"threshold {why.iou_threshold[5]:.4f} = mean {why.iou_mean[5]:.4f} + std {why.iou_std[5]:.4f}"
)

# %% [markdown]
# - **The RPN, the tiny star and the small ellipse (boxes 1 and 2).** An anchor is
#   positive at IoU ≥ 0.7; a box whose best anchor stays under that still gets it as a
#   *low-quality* match, but only at IoU ≥ 0.3 (notebook 50). The smallest anchors are
#   32 px squares (8 × stride 4): a 10 or 16 px box cannot reach 0.3 with them.

# %%
rpn = untrained["Faster R-CNN"]
with torch.no_grad():
    rpn_sizes = [tuple(m.shape[-2:]) for m in rpn(as_batch(image).to(device)).objectness]
rpn_anchors, _ = rpn.anchors(rpn_sizes)
best_anchor_iou = box_iou(gt_boxes, rpn_anchors.cpu()).max(1).values
print("best anchor IoU per box:", " ".join(f"{v:.3f}" for v in best_anchor_iou.tolist()))
print("low-quality matches need IoU >=", rpn.config.rpn_min_pos_iou)

# %% [markdown]
# The RoI head never leaves a box out here: it adds the ground-truth boxes to its
# proposals, so each box has at least itself at IoU 1. And Hungarian matching cannot
# leave one out while there are more queries than boxes: every box gets one.
#
# ## 6. A crowded image
#
# COCO's crowded images (a flock, a crowd, a shelf) hold dozens of small, overlapping
# boxes. The generated one below has 42: six rows of seven shapes, 14 to 36 px, each
# row overlapping the next.

# %%
rng = np.random.default_rng(5)
crowd_objects = []
for row in range(6):
    for column in range(7):
        side = float(rng.uniform(14, 36))
        cx = 30 + column * 43 + rng.uniform(-6, 6)
        cy = 40 + row * 46 + rng.uniform(-6, 6)
        crowd_objects.append((int(rng.integers(num_classes)), cx, cy, side))
crowd, crowd_np_boxes, crowd_np_labels = render_scene(crowd_objects, size=SIZE, seed=4,
                                                      distractors=False)  # fmt: skip
crowd_boxes, crowd_labels = torch.from_numpy(crowd_np_boxes), torch.from_numpy(crowd_np_labels)
crowd_before, _ = assign_all(untrained, crowd, crowd_boxes, crowd_labels)
crowd_summary = positives_summary(crowd_before, len(crowd_boxes))
significant(crowd_summary.drop(columns="which"), 3)

# %%
fig, axes = plt.subplots(1, 4, figsize=(14, 3.8), dpi=72)
for ax, name in zip(axes, ["ATSS on anchors", "RPN max IoU + sampler",
                           "RoI head max IoU + sampler", "Hungarian (last decoder layer)"],
                    strict=True):  # fmt: skip
    draw_positives(ax, crowd, crowd_boxes, crowd_before[name],
                   title=f"{name}: {len(crowd_before[name].gt_index)}")  # fmt: skip
fig.tight_layout()
plt.show()

# %% [markdown]
# In the crowd the rules part ways:
#
# - ATSS picks each box's nearest priors on every level and keeps those above its
#   box's own threshold, so every box gets some. YOLOv3-tiny's smallest anchors
#   (10 × 14 px and 23 × 27 px on stride 16) fit boxes of this size, so here it
#   leaves none out either.
# - The task-aligned assigner and Hungarian matching give every box at least one
#   positive while there are enough anchor points or queries (100 queries for 42 boxes).
# - The RPN leaves some boxes out: the smallest ones reach IoU 0.3 with no 32 px
#   anchor.
# - The RoI head leaves the most out, and not because of IoU: its sampler keeps at
#   most a quarter of its 128 RoIs positive per image, and 42 boxes need more:

# %%
roi_config = untrained["Faster R-CNN"].config
cap = int(roi_config.roi_num * roi_config.roi_pos_fraction)
print(f"positive RoIs at most: {roi_config.roi_num} x {roi_config.roi_pos_fraction} = {cap}")
print("RoI head positives in the crowd:", len(crowd_before["RoI head max IoU + sampler"].gt_index))

# %% [markdown]
# ## 7. After training
#
# Train the networks, ask again. The static assigners read only the priors and the
# boxes: their answer cannot change. The task-aligned assigner ranks by
# `score^α · IoU^β` of the predictions and Hungarian matching by the class, L1 and GIoU
# costs of the predictions: as the network learns, both move their positives to the
# priors and queries that predict the box best. The RoI head's max-IoU rule is static,
# but it reads the RPN's proposals, which the network makes.
#
# The trained networks: if the training notebooks (13, 23, 33, 43, 52, 63, 72) ran on
# this machine, their runs' last networks; otherwise each detector trains here for
# 90 seconds on the `cpu` schedule cut to that time (on the `ci` schedule, its few
# quick steps), which is enough for the predictions, and so these two assigners, to
# move.

# %%
# NBVAL_IGNORE_OUTPUT
# (training time and its last bits differ from machine to machine)
LESSON_RUNS = {
    "YOLOv3": "13_yolov3_tiny", "NanoDet": "23_nanodet_m", "YOLOv8": "33_yolov8n",
    "ATSS": "43_atss", "Faster R-CNN": "52_faster_rcnn",
    "Deformable DETR": "63_deformable_detr", "Co-DETR": "72_co-deformable-detr-r18half-d128",
}  # fmt: skip
trained = {}
for name, model_name in DETECTORS.items():
    print(f"{name}: ", end="")
    lesson_run = root.parents[1] / "runs" / LESSON_RUNS[name]
    trained[name] = exercise_network(
        model_name, root, lesson_run=lesson_run, device=device.type, seconds=90
    )
after, _ = assign_all(trained, image, gt_boxes, gt_labels)

# %% [markdown]
# Before and after, per assigner (the same image, boxes and seed):

# %%
# NBVAL_IGNORE_OUTPUT
# (the trained networks differ from machine to machine in their last bits)
summary_after = positives_summary(after, num_boxes)
side_by_side = pd.concat({"before": summary_before, "after": summary_after}, axis=1)
side_by_side = side_by_side[[(when, column) for column in ("positives", "mean IoU",
                             "boxes without") for when in ("before", "after")]]  # fmt: skip
significant(side_by_side, 3)

# %% [markdown]
# The static assigners' positives are the same ones, prior for prior:

# %%
static = ["YOLOv3 wh-IoU", "ATSS on grid cells", "ATSS on anchors", "RPN max IoU + sampler",
          "Co-DETR ATSS head", "Co-DETR RPN"]  # fmt: skip
for name in static:
    same = torch.equal(before[name].gt_index, after[name].gt_index) and torch.equal(
        before[name].boxes, after[name].boxes
    )
    print(f"{name:24s} unchanged: {same}")
    assert same, name

# %% [markdown]
# The others moved. Their positives per box, before and after, and how many of the
# positives after training (box and prior or query) were positives before:

# %%
# NBVAL_IGNORE_OUTPUT
# (the trained networks differ from machine to machine in their last bits)
moving = [
    "task-aligned", "RoI head max IoU + sampler", "Hungarian (last decoder layer)",
    "Hungarian (encoder proposals)", "Co-DETR last decoder layer", "Co-DETR RoI head",
]  # fmt: skip


def per_box_counts(records, names):
    """Positives of each box, one row per assigner."""
    return pd.DataFrame(
        [torch.bincount(records[name].gt_index, minlength=num_boxes).tolist() for name in names],
        index=names, columns=[f"box {i}" for i in range(num_boxes)],
    )  # fmt: skip


def kept(name):
    """Of the positives after training, how many are the same prior or query as before
    (not defined for the RoI head, whose proposals change)."""
    if name.endswith("RoI head") or name.startswith("RoI head"):
        return "-"
    pairs_before = set(zip(before[name].gt_index.tolist(), before[name].prior.tolist(),
                           strict=True))  # fmt: skip
    pairs_after = set(zip(after[name].gt_index.tolist(), after[name].prior.tolist(),
                          strict=True))  # fmt: skip
    return f"{len(pairs_before & pairs_after)} of {len(pairs_after)}"


moved = pd.concat({"before": per_box_counts(before, moving),
                   "after": per_box_counts(after, moving)}, axis=1)  # fmt: skip
moved[("kept", "")] = [kept(name) for name in moving]
moved

# %%
fig, axes = plt.subplots(2, 3, figsize=(11, 7.6), dpi=72)
for column, name in enumerate(["task-aligned", "Hungarian (last decoder layer)",
                               "RoI head max IoU + sampler"]):  # fmt: skip
    for row, (when, records) in enumerate((("before", before), ("after", after))):
        draw_positives(axes[row, column], image, gt_boxes, records[name], box_outline=True,
                       title=f"{name}, {when}: {len(records[name].gt_index)}")  # fmt: skip
fig.tight_layout()
plt.show()

# %% [markdown]
# Before training, the task-aligned assigner's positives are the anchor points inside
# each box whose random predictions happen to score best, and Hungarian matching picks,
# for each box, whichever query's random box costs least. As the network learns, both
# move to the anchor points and queries that predict the box: the "kept" column falls
# and the mean IoU of their predicted boxes rises. How far they have moved depends on
# how long the networks trained: ninety seconds each moves the queries of a DETR at once
# (few or none of its matches are kept) but hardly changes a YOLOv8n that starts from random
# weights; the lesson runs' networks (500 steps) move them all. The RoI head's
# positives are proposals: as the RPN learns, they land on the objects.
#
# How much the networks learnt, on this image (their mean IoU before and after, and the
# change):

# %%
# NBVAL_IGNORE_OUTPUT
# (the trained networks differ from machine to machine in their last bits)
change = pd.DataFrame({
    "mean IoU before": summary_before.loc[moving, "mean IoU"],
    "mean IoU after": summary_after.loc[moving, "mean IoU"],
})  # fmt: skip
change["change"] = change["mean IoU after"] - change["mean IoU before"]
significant(change, 3)

# %% [markdown]
# ## Summary
#
# - Every assigner answers the same question, *which prior or query learns which box*,
#   and `positives_of` reads every detector's answer in one form.
# - One-to-many assigners give a box several positives across the levels that fit it;
#   one-to-one matching gives exactly one. Small boxes are where they differ most: a
#   fixed threshold on prior IoU (the RPN's, YOLOv3's wh-IoU) leaves them out, while
#   ATSS adapts its threshold per box, and can still, rarely, leave one out.
# - The static assigners give the same answer before and after training; the
#   task-aligned assigner and Hungarian matching follow the predictions, and the RoI
#   head follows the proposals.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer.
#
# **Exercise 1.** Count the positives of each box for one assigner by hand. For the
# task-aligned assigner's positives before training, `before["task-aligned"]`, set
# `tal_per_box` to a tensor of 8 ints: the positives of boxes 0 to 7 (each positive's
# box is in its `gt_index`).

# %% tags=["solution"]
tal_per_box = None  # (8,) long
### BEGIN SOLUTION
tal_per_box = torch.bincount(before["task-aligned"].gt_index, minlength=num_boxes)
print(tal_per_box.tolist())
### END SOLUTION

# %% tags=["check"]
check_true(
    torch.is_tensor(tal_per_box),
    f"`tal_per_box` should be a tensor, got {type(tal_per_box).__name__}.",
    hint="torch.bincount(before['task-aligned'].gt_index, minlength=8)",
)
check_equal(
    "tal_per_box", tal_per_box.long(),
    torch.tensor(table_before.loc["task-aligned"]["positives"].to_numpy()),
    hint="bincount with minlength=8, so that a box without positives still has its 0.",
)  # fmt: skip
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** ATSS's threshold by hand. From `why`, the explanation of ATSS on
# grid cells for the fixture, take box 5's candidate IoUs `why.candidate_iou[5]` and
# compute its threshold: their mean plus their *unbiased* standard deviation. Set
# `threshold_5` (a float) and `passes_5`, the number of candidates whose IoU reaches
# it.

# %% tags=["solution"]
threshold_5 = None  # float
passes_5 = None  # int
### BEGIN SOLUTION
candidate_iou = why.candidate_iou[5]
threshold_5 = float(candidate_iou.mean() + candidate_iou.std(unbiased=True))
passes_5 = int((candidate_iou >= threshold_5).sum())
print(f"{threshold_5:.4f}, {passes_5}")
### END SOLUTION

# %% tags=["check"]
check_close(
    "threshold_5", threshold_5, float(why.iou_threshold[5]), atol=1e-5,
    hint="candidate_iou.mean() + candidate_iou.std(unbiased=True): torch's std is unbiased "
    "by default; numpy's is not.",
)  # fmt: skip
check_equal(
    "passes_5", passes_5, int(why.passes_iou[5].sum()),
    hint="(candidate_iou >= threshold_5).sum(): here none reaches the threshold.",
)  # fmt: skip
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** The crowd in numbers. In the crowded image, which assigner leaves the
# most boxes without a positive, and how many? Set `most_name` to its name (a key of
# `crowd_before`) and `most_count` to the number, from `crowd_summary` or from the
# records themselves.

# %% tags=["solution"]
most_name = None  # str
most_count = None  # int
### BEGIN SOLUTION
most_name = crowd_summary["boxes without"].idxmax()
most_count = int(crowd_summary["boxes without"].max())
print(most_name, most_count)
### END SOLUTION

# %% tags=["check"]
counts = {
    name: int((torch.bincount(record.gt_index, minlength=len(crowd_boxes)) == 0).sum())
    for name, record in crowd_before.items()
}
check_equal(
    "most_count", most_count, max(counts.values()),
    hint="count, per assigner, the boxes whose bincount is 0, and take the largest.",
)  # fmt: skip
check_true(
    counts.get(most_name) == max(counts.values()),
    f"{most_name!r} leaves {counts.get(most_name)} boxes without, not the most.",
    hint="crowd_summary['boxes without'].idxmax() names the assigner.",
)
check_passed("Exercise 3")
