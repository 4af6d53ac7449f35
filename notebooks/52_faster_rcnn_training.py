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
# # 52 · Faster R-CNN: training on the shapes set, from a pre-trained backbone
#
# [Notebook 50](50_rpn.ipynb) built the first stage of Faster R-CNN, the region
# proposal network, and [notebook 51](51_roi_head.ipynb) the second, the RoI head that
# names and refines the proposals. This notebook trains the two together: the CPU preset
# `faster-rcnn-r18half-fpn64` with the course's engine, starting, as the reference
# starts from ImageNet weights, from the backbone the course pre-trained on the shapes
# set (notebook 04). A two-stage detector has two sets of losses to watch, and a
# question a one-stage detector does not raise: how good are the proposals? The notebook
# keeps a copy of the network every 100 steps and measures the recall of its proposals,
# then scores the final network with COCO mAP.
#
# **Learning goals**
#
# 1. Read Faster R-CNN's three schedules beside mmdet's 1x recipe, and say what the
#    `cpu` one changes.
# 2. Train with `detutils.engine.train`; read the four losses of the two stages, and what
#    the RoI head's accuracy does and does not say.
# 3. Measure the recall of the proposals as training goes on, at IoU 0.5 and 0.7, with
#    all of them and with the first 100; say why the RPN learns first and why the RoI head
#    cannot find an object that no proposal covers.
# 4. Read the COCO mAP table, overall, by size, by class and with the classes merged.
#
# **Prerequisites**: notebooks 50 (the RPN and its proposals), 51 (the RoI head and both
# stages' losses), 04 (the pre-trained backbone), 43 (the same engine, schedule and
# evaluation for ATSS).
#
# **Notation**: the letters of the shapes (B, A, M, C, K, R, ...), the box formats and
# the flat prior index are those of [notebook 09](09_notation.ipynb).
#
# **The stored outputs come from a run on the `cpu` schedule** (about a quarter of an
# hour on a 2-core CPU). In CI the notebook runs on the `ci` schedule (three iterations
# at 64 px, seconds), so every cell whose output depends on the schedule is marked to be
# left out of the comparison; run it yourself to see your own numbers.

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ['png']

# %%
# NBVAL_IGNORE_OUTPUT
# (versions and device differ from machine to machine)
from detutils.course import setup

device = setup()["device"]

# %%
import copy
import time

import matplotlib.pyplot as plt
import pandas as pd
import torch
from matplotlib.patches import Rectangle
from torch.utils.data import DataLoader

from detutils import current_schedule
from detutils.assigners import BACKGROUND, assign_max_iou
from detutils.boxes import box_iou, box_recall
from detutils.checks import check_close, check_equal, check_function, check_passed, check_true
from detutils.course import exercise_network
from detutils.data import (
    CocoDetection,
    build_train_set,
    build_transforms,
    collate,
    ensure_shapes,
    find_split,
)
from detutils.engine import evaluate, read_training_log, train
from detutils.engine.presets import schedules_for
from detutils.engine.pretrain import load_pretrained
from detutils.models import build_detector
from detutils.viz import compare_detections, draw_boxes, plot_losses

# %% [markdown]
# ## 1. Three schedules
#
# Faster R-CNN's schedules, by name (`DETUTILS_SCHEDULE` picks one, notebook 00); the
# fields where they differ:

# %%
schedules = schedules_for("faster-rcnn-r18half-fpn64")
table = pd.DataFrame({name: schedule.to_dict() for name, schedule in schedules.items()})
table[table.astype(str).nunique(axis=1) > 1]

# %% [markdown]
# - **`gpu`** is mmdet's 1x schedule for `faster-rcnn_r50_fpn_1x_coco` on the R50 build
#   (`faster-rcnn-r50`): 12 epochs of SGD at 0.02 for 16 images a step (twice ATSS's
#   rate), the rate divided by 10 after epochs 8 and 11, a linear warm-up over 500 steps
#   from 0.001 of the rate, no gradient clipping, and ImageNet weights for the ResNet-50
#   with its stem and first stage frozen and its batch norms fixed
#   (`FasterRCNNConfig.pretrained`, `frozen_stages`, `norm_eval`). The table below shows
#   where it differs.
# - **`cpu`** trains the preset `faster-rcnn-r18half-fpn64`: a half-width ResNet-18, an
#   FPN and an RPN of 64 channels, a box head of two 256-wide layers; 1000 anchors per
#   level before NMS and 500 proposals per image in training (500 and 500 at test time,
#   where mmdet keeps 2000 and 1000, then 1000 and 1000), 128 RoIs sampled per image
#   (mmdet: 512). Everything else, anchors, thresholds, samplers, losses and test
#   settings, is the reference's. It trains 500 steps of 16 images at 320 px in float32,
#   AdamW at 0.002 after half an epoch of warm-up, a cosine planned in iterations, flips
#   and colour jitter, images decoded into memory once, channels-last weights (notebook
#   92), the same recipe as ATSS's in notebook 43; a time guard of 18 minutes ends it on
#   a slow machine. Its backbone starts from the course's pre-training (notebook 04) and
#   trains whole: nothing frozen, batch norms updated.
# - **`ci`** only checks that everything runs: three steps of four 64 px images.
#
# mmdet's recipe (`configs/faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py` with
# `schedule_1x.py` and `coco_detection.py`), the `gpu` schedule and the `cpu` one; the
# two course columns are read from the schedules:

# %%
reference = {
    "optimizer": "SGD, momentum 0.9 (not Nesterov)",
    "learning rate": "0.02",
    "weight decay": "0.0001",
    "images per step": "16 (8 GPUs x 2)",
    "length": "12 epochs",
    "image size": "shorter side 800, longer at most 1333, ratio kept",
    "warm-up": "500 steps from 0.001 lr",
    "decay": "x 0.1 at epochs 8, 11",
    "EMA of the weights": "no",
    "mixed precision": "no (float32)",
    "augmentation": "flip",
    "gradient clipping": "none",
    "time guard": "none",
    "initial weights": "ResNet-50 trained on ImageNet",
}
recipes = pd.DataFrame(
    {
        "reference": reference,
        "gpu": schedules["gpu"].recipe() | {"initial weights": "ResNet-50 trained on ImageNet"},
        "cpu": schedules["cpu"].recipe()
        | {"initial weights": "half-width ResNet-18 pre-trained on shapes crops"},
    }
)
recipes

# %% [markdown]
# ## 2. Data and model
#
# `build_detector` builds the network from its initialisation; the backbone weights
# that `config.pretrained` names are loaded by the trainer when a new run starts
# (notebook 04).

# %%
# NBVAL_IGNORE_OUTPUT
# (prints a line only on the first run, while the set is written)
root = ensure_shapes()

# %%
schedule_name = current_schedule()
schedule = schedules[schedule_name]
train_set = CocoDetection(*find_split(root, "train"))
val_set = CocoDetection(*find_split(root, "val"))
train_data = build_train_set(train_set, schedule)
val_set.transforms = build_transforms(schedule.img_size, train=False)
print(f"{len(train_set)} training and {len(val_set)} validation images")
print("classes:", ", ".join(train_set.class_names))

# %%
# NBVAL_IGNORE_OUTPUT
# (the schedule of this run)
torch.manual_seed(0)
model = build_detector("faster-rcnn-r18half-fpn64", num_classes=train_set.num_classes)
print(
    f"schedule {schedule_name}: {schedule.iterations} iterations of {schedule.batch_size} "
    f"images at {schedule.img_size} px, {schedule.optimizer} lr {schedule.lr}"
)
print(f"backbone weights to load: {model.config.pretrained}")

# %% [markdown]
# The parameters by part, at the set's six classes. The box head holds most of what is
# not backbone: its first layer alone maps 64 x 7 x 7 pooled values to 256.

# %%
parts = {
    "backbone": model.backbone,
    "FPN": model.neck,
    "RPN": model.rpn_head,
    "RoI head": model.roi_head,
}
counts = pd.Series(
    {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
)
counts["total"] = sum(p.numel() for p in model.parameters())
counts.to_frame("parameters")

# %% [markdown]
# ## 3. Training
#
# The same loop as every detector of the course, with Faster R-CNN's `loss`: the
# network's forward pass makes the pyramid, the RPN's maps and the proposals; `loss`
# assigns and samples anchors and proposals, runs the RoI head on the sampled
# proposals and adds both stages' terms (notebook 51). The callback keeps a copy of the
# network every 100 steps (every step on the `ci` schedule, whose run has three); the
# copy at step 0 is the network the trainer starts from: the initialisation with the
# pre-trained backbone loaded, as `train` loads it. The command line trains the same
# way:
#
# ```
# python -m detutils.train --model faster-rcnn-r18half-fpn64 --data data/shapes --schedule cpu
# ```

# %%
# NBVAL_IGNORE_OUTPUT
# (a training log: its timings and losses depend on the schedule and the machine)
every = 100 if schedule.iterations >= 100 else 1
snapshots = {0: copy.deepcopy(model)}
load_pretrained(snapshots[0], verbose=False)  # what train() does first: step 0


def keep(step: int, network: torch.nn.Module) -> None:
    if step % every == 0:
        snapshots[step] = copy.deepcopy(network).to(memory_format=torch.contiguous_format)


run_dir = root.parents[1] / "runs" / "52_faster_rcnn"
start = time.monotonic()
result = train(
    model, train_data, schedule, out_dir=run_dir, device=str(device), progress=False,
    on_step=keep,
)  # fmt: skip
minutes = (time.monotonic() - start) / 60
print(f"{result.iterations} iterations in {minutes:.1f} min, out of time: {result.out_of_time}")
model = result.model.eval()
snapshots[result.iterations] = model  # the last step, also when the time guard ended the run
print("networks kept after steps", sorted(snapshots))

# %% [markdown]
# ## 4. Both stages' losses
#
# The trainer's log has one row per step: the four terms of the loss, each with weight
# 1, their sum `loss`, and `roi_accuracy`, the percentage of the sampled RoIs whose
# highest class score is their class (background included), which is logged but not
# part of the loss. Top: the RPN's objectness cross-entropy (`rpn_cls`) and L1 on the
# anchor deltas (`rpn_bbox`); the RoI head's cross-entropy over C + 1 classes
# (`roi_cls`) and L1 on the deltas of the true class (`roi_bbox`). Bottom: the RoI
# head's accuracy, and the learning rate.

# %%
# NBVAL_IGNORE_OUTPUT
# (the curves of this run)
train_log, _ = read_training_log(run_dir)
smooth = max(1, len(train_log) // 20)
figure, axes = plt.subplots(2, 2, figsize=(9, 6.4))
plot_losses(train_log, x="iteration", columns=["rpn_cls", "rpn_bbox"], ax=axes[0, 0],
            smooth=smooth, title="stage 1: RPN")  # fmt: skip
plot_losses(train_log, x="iteration", columns=["roi_cls", "roi_bbox"], ax=axes[0, 1],
            smooth=smooth, title="stage 2: RoI head")  # fmt: skip
plot_losses(train_log, x="iteration", columns=["roi_accuracy"], ax=axes[1, 0], smooth=smooth,
            title="RoI head: sampled RoIs classified right")  # fmt: skip
axes[1, 0].set_ylabel("percent")
axes[1, 1].plot(train_log["iteration"], train_log["lr"])
axes[1, 1].set(xlabel="iteration", ylabel="learning rate", title="schedule")
figure.tight_layout()
plt.show()
fifth = max(1, len(train_log) // 5)
first, last = train_log.iloc[:fifth], train_log.iloc[-fifth:]
columns = ["rpn_cls", "rpn_bbox", "roi_cls", "roi_bbox", "loss", "roi_accuracy"]
pd.DataFrame({"first fifth": first.mean(), "last fifth": last.mean()}).loc[columns]

# %% [markdown]
# How to read them:
#
# - **Where they start.** `rpn_cls` starts at ln 2 = 0.69, the cross-entropy of a
#   0.5 guess for every anchor; `roi_cls` near ln 7 = 1.95, a uniform guess over the
#   C + 1 = 7 classes. `rpn_bbox` is small from the start: it sums the deltas of the
#   positives only, and divides by every anchor sampled, 256 per image, of which the
#   positives are at most half and usually far fewer (a shape has a handful of anchors
#   that overlap it by 0.7).
# - **The RoI head learns from what the RPN gives it.** Each image's positives are its
#   ground-truth boxes, added as proposals, plus the proposals that overlap a box by 0.5
#   or more, at most 32 of the 128 sampled. Before training the proposals are anchors
#   picked almost at random (section 5): on the 320 px images they give about 18
#   positives per image, 7 of them the ground truth itself. As the proposals improve,
#   more of them overlap the shapes, the positives reach their cap of 32, and the RoI
#   head's two terms are computed on more, and harder, positives. In the stored run
#   `rpn_cls` fell from 0.32 (the mean of steps 0 to 49) to 0.08 (steps 50 to 99),
#   while over those first 100 steps `roi_cls` went only from 0.83 to 0.70, `roi_bbox`
#   stayed at 0.67 and `roi_accuracy` dipped from 80.6 % to 78.4 % as the positives
#   grew to their cap; then both terms fell steadily, to 0.22 and 0.28 over the last
#   50 steps.
# - **`roi_accuracy` is not a detection metric.** The sampled RoIs are mostly
#   background: a head that answered "background" for every RoI would score the share of
#   negatives, 75 % or more (86 % with the 18 positives of step 0), without naming one
#   shape. The share of positives grows with the proposals, so the same answer scores
#   less later; exercise 3 measures it. What counts is `roi_cls` and, in the end, AP.
#
# ## 5. The recall of the proposals
#
# The RoI head can only refine and name a box that some proposal overlaps: an object
# that no proposal covers is lost before the second stage starts. The *recall* of the
# proposals measures that: the share of ground-truth boxes that at least one proposal
# of their image overlaps by an IoU threshold or more (`detutils.boxes.box_recall`, as
# mmdet's `eval_recalls`). It is measured with all the proposals of an image (at test
# time 500) and with the first 100 by objectness, at IoU 0.5 (the box is found) and 0.7
# (it is found well). Each network kept in section 3 runs in eval mode on the first 100
# validation images (16 on the `ci` schedule). The last column counts the RoIs the
# sampler would draw as positives per image from those proposals (`model.assign`, at
# most 32).

# %%
num_recall = 16 if schedule_name == "ci" else 100
recall_samples = [val_set[index] for index in range(num_recall)]
recall_targets = [target for _, target in recall_samples]
recall_boxes = [target["boxes"] for target in recall_targets]  # per image (M_i, 4)


@torch.no_grad()
def proposals_and_positives(network: torch.nn.Module, batch_size: int = 20):
    """Eval-mode proposals of the recall images, and the RoI positives per image."""
    network = network.to(device).eval()
    proposals, positives = [], 0
    for begin in range(0, num_recall, batch_size):
        chunk = recall_samples[begin : begin + batch_size]
        outputs = network(torch.stack([image for image, _ in chunk]).to(device))
        assignment = network.assign(outputs, [target for _, target in chunk])
        positives += int((assignment.roi_labels >= 0).sum())
        proposals += [p.cpu() for p in outputs.proposals]
    return proposals, positives / num_recall


def recall_row(proposals: list[torch.Tensor]) -> dict[str, float]:
    every_one = box_recall(proposals, recall_boxes, iou_thrs=(0.5, 0.7))
    first_100 = box_recall(proposals, recall_boxes, iou_thrs=(0.5, 0.7), max_proposals=100)
    return {
        "R@0.5": every_one[0.5],
        "R@0.7": every_one[0.7],
        "R@0.5, first 100": first_100[0.5],
        "R@0.7, first 100": first_100[0.7],
        "proposals per image": sum(len(p) for p in proposals) / len(proposals),
    }


# %%
# NBVAL_IGNORE_OUTPUT
# (the networks of this run)
torch.manual_seed(0)  # assign() samples at random; the counts of positives do not depend on it
rows, kept_proposals = {}, {}
for step, network in snapshots.items():
    kept_proposals[step], positives = proposals_and_positives(network)
    rows[step] = recall_row(kept_proposals[step]) | {"RoI positives per image": positives}
recall = pd.DataFrame(rows).T.rename_axis("step")
recall

# %% [markdown]
# For scale, the anchors themselves, every one of them, as if they were the proposals
# (no objectness ranking, no regression: the first 100 would be an arbitrary choice, so
# only all of them are scored), and the share of boxes whose best anchor overlaps them
# by less than 0.3: those get no positive anchor at all, not even the low-quality match
# (`min_pos_iou` 0.3, notebook 50), so the RPN is never taught to find them.

# %%
# NBVAL_IGNORE_OUTPUT
# (depends on the image size of the schedule)
sizes = [(schedule.img_size // stride,) * 2 for stride in model.config.strides]  # P2 .. P6
anchors, _ = model.anchors(sizes)  # (A, 4)
anchor_recall = box_recall([anchors] * num_recall, recall_boxes, iou_thrs=(0.5, 0.7))
best_anchor_iou = box_iou(torch.cat(recall_boxes), anchors).max(dim=1).values  # (sum M_i,)
pd.Series(
    {
        "anchors": len(anchors),
        "R@0.5, all anchors": anchor_recall[0.5],
        "R@0.7, all anchors": anchor_recall[0.7],
        "boxes without a positive anchor": float((best_anchor_iou < 0.3).float().mean()),
    }
).round(4)

# %%
# NBVAL_IGNORE_OUTPUT
# (the networks of this run)
figure, axis = plt.subplots(figsize=(6, 3.6))
for column, style in zip(recall.columns[:4], ["-", "-", "--", "--"], strict=True):
    axis.plot(recall.index, recall[column], style, marker="o", label=column)
axis.axhline(anchor_recall[0.5], color="gray", linewidth=0.8, linestyle=":")
axis.axhline(anchor_recall[0.7], color="gray", linewidth=0.8, linestyle=":")
axis.set(xlabel="training step", ylabel="recall of the proposals", ylim=(0, 1.02),
         title="proposal recall (dotted: all anchors at 0.5 and 0.7)")  # fmt: skip
axis.legend(fontsize=8)
figure.tight_layout()
plt.show()

# %% [markdown]
# What the curves show:
#
# - **At step 0** the RPN's convs start at normal(0, 0.01): every anchor's objectness
#   lies between 0.5 and 0.6 and the deltas move the anchors only a little. The 500
#   proposals are anchors picked by noise and thinned by NMS. All 500 together still
#   find about half of the boxes at 0.5, because anchors are everywhere; the first 100
#   find almost none: the ranking means nothing yet.
# - **The RPN learns first.** Its task is the easier one (object or not, starting from
#   anchors placed everywhere) and it is taught on 256 anchors of every image from the
#   first step, while the RoI head learns on what the RPN proposes. In the stored run,
#   recall at 0.5 went from 0.50 to 0.89 in the first 100 steps, and the first 100
#   proposals from almost nothing to 0.80: once the objectness ranks the anchors on the
#   shapes first, cutting the rest costs little.
# - **Recall at 0.7 keeps rising after recall at 0.5 has levelled off**: it needs the
#   deltas, not only the ranking. An anchor is a square or a 1:2 box of 8 strides, and a
#   shape that its best anchor overlaps by 0.5 needs a regressed box to reach 0.7.
#   Regression is what lifts the proposals above the dotted line of the anchors at 0.7
#   (0.416 at 320 px, against 0.816 at 0.5): 0.17 at step 0, 0.79 after 100 steps, 0.86
#   at the end, while recall at 0.5 stays near 0.90 from step 200 on.
# - **The RoI head can only find what the proposals cover.** Every box missed at 0.5
#   here is a box the detector cannot report, whatever the second stage learns. The
#   smallest shapes are the usual misses: a shape of less than about 18 x 18 px
#   overlaps even the smallest anchor (32 x 32 px, area 1024 px²) by less than 0.3, so
#   no anchor is taught to find it (15 % of the boxes at 320 px, printed above); a
#   proposal reaches it only by a neighbouring anchor's regression, which was taught
#   for other boxes.
#
# The first 20 proposals of one validation image before training and after it (boxes
# drawn in white dashes are the ground truth):

# %%
# NBVAL_IGNORE_OUTPUT
# (the networks of this run)
image, target = recall_samples[0]
figure, axes = plt.subplots(1, 2, figsize=(8, 4.2))
for axis, step in zip(axes, [0, result.iterations], strict=True):
    draw_boxes(image, kept_proposals[step][0][:20], ax=axis, linewidth=0.8,
               title=f"step {step}: first 20 proposals")  # fmt: skip
    for x1, y1, x2, y2 in target["boxes"].tolist():
        axis.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="white",
                                 linestyle="--", linewidth=1.2))  # fmt: skip
figure.tight_layout()
plt.show()

# %% [markdown]
# ## 6. COCO mAP
#
# `evaluate` runs the model over the validation images, maps the detections back to
# each image file and scores them with pycocotools (notebook 13, section 5). It uses
# the course's evaluation settings for every detector (score above 0.001, NMS at 0.6,
# 100 per image), not mmdet's test settings for Faster R-CNN (0.05 and 0.5), so that
# the detectors of the course and the peer of section 8 are scored alike. The `ci` run
# evaluates 16 images only. The second row scores boxes only: every class merged into
# one.

# %%
num_val = 16 if schedule_name == "ci" else len(val_set)
val_loader = DataLoader(
    val_set, batch_size=16, sampler=list(range(num_val)), collate_fn=collate, num_workers=0
)

# %%
# NBVAL_IGNORE_OUTPUT
# (the metrics of this run)
evaluation = evaluate(model, val_loader, device)
boxes_only = evaluate(model, val_loader, device, class_agnostic=True)
print(f"{evaluation.num_images} images, {evaluation.num_detections} detections")
pd.DataFrame([evaluation.metrics, boxes_only.metrics], index=["six classes", "one class"])

# %%
# NBVAL_IGNORE_OUTPUT
# (per-class AP of this run)
evaluation.per_class

# %% [markdown]
# Compare APs with section 5: the small shapes are the ones the proposals miss most,
# and a box that is never proposed costs recall at every IoU threshold of COCO's AP.
#
# ## 7. Detections
#
# Detections with a score of at least 0.3 on four validation images, at the network's
# input size, under the ground truth; `predict` uses Faster R-CNN's own NMS per class at
# 0.5.

# %%
# NBVAL_IGNORE_OUTPUT
# (the detections of this run)
samples = [val_set[index] for index in range(4)]
batch = torch.stack([image for image, _ in samples]).to(device)
with torch.no_grad():
    detections = model.predict(model(batch), score_thr=0.3, iou_thr=0.5, max_det=100)
compare_detections(samples, detections, val_set.class_names)
plt.show()

# %% [markdown]
# ## 8. What to expect
#
# **Per step, beside a peer.** `benchmarks/faster_rcnn_peer.py` trains the preset on its
# `cpu` schedule in float32 for exactly 500 steps, keeps its weights every 100 steps
# and scores them on the 500 validation images; then it does the same for torchvision's
# Faster R-CNN built from the same parts: the same half-width ResNet-18 with the same
# pre-trained weights, an FPN of 64 channels over C2 to C5 with P6 max-pooled from P5,
# the same anchors, 64-channel RPN conv, proposal numbers, samplers and box head, on the
# same schedule and evaluator. What stays torchvision's own: smooth L1 (beta 1/9)
# where mmdet and the course use L1, losses divided by the samples actually drawn (mmdet
# counts at least one positive and one negative per image), RoIAlign with
# `aligned=False` and two samples per bin side, and class 0 as background. Measured on a
# 2-core AMD EPYC with AVX-512, float32, 2 threads, nothing else running, seed 0:
#
# | AP50 after | 100 | 200 | 300 | 400 | 500 | AP @500 | s / step |
# | --- | --- | --- | --- | --- | --- | --- | --- |
# | course, `faster-rcnn-r18half-fpn64` | 0.291 | 0.527 | 0.636 | 0.715 | 0.726 | 0.547 | 1.86 |
# | torchvision's Faster R-CNN, same parts | 0.191 | 0.408 | 0.580 | 0.694 | 0.712 | 0.521 | 1.63 |
#
# The course's detector learns faster early on and ends 0.014 AP50 and 0.026 AP ahead
# (AP75 0.640 against 0.611, APm 0.717 against 0.668, APl 0.534 against 0.465); the
# peer ends ahead on small shapes (APs 0.409 against 0.359). A course step takes 1.14
# times the peer's.
#
# **In a quarter of an hour, on one CPU.** The run stored above, the schedule as it is
# (float32, 2 torch threads); its minutes and metrics are printed in sections 3 and 6.
# A slower CPU takes longer per step; the time guard (18 minutes) ends the run early
# there, and section 5's table then ends at the last step reached.
#
# **`gpu`** (mmdet's 1x on the R50 build): not run for this course, so no figure is
# promised. For scale, mmdet's model zoo gives `faster-rcnn_r50_fpn_1x_coco` 37.4 box AP
# on COCO val2017, from ImageNet weights.

# %% [markdown]
# ## Recap
#
# - The `cpu` schedule keeps Faster R-CNN's anchors, assigners, samplers and losses,
#   shrinks the network (half-width ResNet-18, 64-channel FPN and RPN, a 256-wide box
#   head, fewer proposals and sampled RoIs) and replaces ImageNet by the course's own
#   pre-training, then optimises as ATSS's `cpu` schedule does.
# - Four losses, two per stage, all divided by the number of sampled anchors or RoIs.
#   The RoI head's accuracy is dominated by the background RoIs the sampler draws; the
#   share of positives sets its floor.
# - The recall of the proposals bounds what the detector can find. The RPN learns
#   first: recall at 0.5 rises first, with the ranking, recall at 0.7 later, with the
#   deltas; shapes smaller than about 18 px have no positive anchor and are the usual
#   misses.
#
# ## Exercises
#
# Exercises 2 and 3 need a trained network, `exercise_model`. If you ran the lesson,
# the cell below loads the network of its run. To do them without the lesson's run,
# execute the set-up, import and data cells of section 2 (`root`, `train_set`,
# `val_set`, `schedule`), then the cell below: it trains Faster R-CNN for 45 seconds
# the first time (a network that has only started to learn, so expect small numbers)
# and loads the stored network after.

# %%
# NBVAL_IGNORE_OUTPUT
lesson_run = root.parents[1] / "runs" / "52_faster_rcnn"  # the lesson's run, if it finished
exercise_model = exercise_network("faster-rcnn-r18half-fpn64", root, lesson_run=lesson_run)
images, targets = next(iter(DataLoader(val_set, batch_size=16, collate_fn=collate)))
with torch.no_grad():
    outputs = exercise_model(images)  # eval mode: 500 proposals per image at most
gt_boxes = [target["boxes"] for target in targets]

# %% [markdown]
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** Write `first_step_above(log, column, value)`: given a training log as
# `read_training_log` returns it (a DataFrame with an `iteration` column and one
# column per logged value), return the iteration (an int) of the first row whose
# `column` is strictly greater than `value`, or -1 if no row is. The cell applies it to
# the log of section 4, if you ran the lesson: when did `roi_accuracy` first exceed 90 %?

# %% tags=["solution"]
# NBVAL_IGNORE_OUTPUT
# (depends on the log of this run)
first_step_above = None  # your function (DataFrame, str, float) -> int
### BEGIN SOLUTION


def first_step_above(log: pd.DataFrame, column: str, value: float) -> int:
    above = log.loc[log[column] > value, "iteration"]
    return int(above.iloc[0]) if len(above) else -1


### END SOLUTION
if first_step_above is not None and "train_log" in globals():  # section 4 was run
    print(first_step_above(train_log, "roi_accuracy", 90.0))

# %% tags=["check"]
check_true(
    callable(first_step_above),
    f"`first_step_above` should be a function, got {type(first_step_above).__name__}",
    hint="def first_step_above(log, column, value): ...",
)
log = pd.DataFrame(
    {
        "iteration": [1, 2, 3, 4, 5],
        "roi_accuracy": [62.0, 81.5, 88.0, 91.25, 93.0],
        "rpn_cls": [0.69, 0.41, 0.30, 0.25, 0.21],
    }
)
for frame, column, value, expected in [
    (log, "roi_accuracy", 90.0, 4), (log, "roi_accuracy", 85.0, 3), (log, "roi_accuracy", 50.0, 1),
    (log, "rpn_cls", 0.35, 1), (log.iloc[2:], "roi_accuracy", 80.0, 3),
]:  # fmt: skip
    check_equal(
        f"first_step_above(<{len(frame)} rows from iteration {frame['iteration'].iloc[0]}>, "
        f"{column!r}, {value})", first_step_above(frame, column, value), expected,
        hint="the value of the `iteration` column in the first row where log[column] > value "
        "(not the row's position)",
    )  # fmt: skip
### BEGIN HIDDEN TESTS
for column, value in [("roi_accuracy", 93.0), ("rpn_cls", 1.0)]:
    check_equal(
        f"first_step_above(log, {column!r}, {value})", first_step_above(log, column, value), -1,
        hint="strictly greater; -1 when no row is above the value",
    )  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** Write `proposal_recall(proposals, gt_boxes, iou_thr, max_proposals)`
# without `box_recall`: `proposals` and `gt_boxes` are lists with one tensor per image,
# (P_i, 4) and (M_i, 4) xyxy px, the proposals best first; return the share (a float)
# of all the ground-truth boxes of all the images that at least one of their image's
# first `max_proposals` proposals (all of them when it is None) overlaps with an IoU of
# `iou_thr` or more; 0.0 when there is no box at all. `box_iou(a, b)` gives the (N, K)
# IoUs. The check compares it with `box_recall` on `exercise_model`'s proposals for the
# 16 validation images (`outputs.proposals`, `gt_boxes`).

# %% tags=["solution"]
# NBVAL_IGNORE_OUTPUT
# (depends on the weights of the exercise network)
proposal_recall = None  # your function (list, list, float, int | None) -> float
### BEGIN SOLUTION


def proposal_recall(proposals, gt_boxes, iou_thr, max_proposals=None) -> float:
    found = total = 0
    for image_proposals, boxes in zip(proposals, gt_boxes, strict=True):
        total += len(boxes)
        candidates = image_proposals[:max_proposals]
        if len(boxes) and len(candidates):
            best = box_iou(boxes, candidates).max(dim=1).values  # (M_i,)
            found += int((best >= iou_thr).sum())
    return found / total if total else 0.0


### END SOLUTION
if proposal_recall is not None:
    first_100 = proposal_recall(outputs.proposals, gt_boxes, 0.5, 100)
    print(f"recall at 0.5 of the first 100 proposals: {first_100:.3f}")

# %% tags=["check"]
check_function(
    "proposal_recall", proposal_recall,
    [(outputs.proposals, gt_boxes, 0.5, None), (outputs.proposals, gt_boxes, 0.7, 100),
     (outputs.proposals, gt_boxes, 0.5, 10)],
    lambda proposals, boxes, thr, first: box_recall(proposals, boxes, (thr,), first)[thr],
    hint="per image: box_iou(boxes, proposals[:max_proposals]).max(dim=1).values >= iou_thr; "
    "sum the boxes found over the images and divide by the number of boxes",
)  # fmt: skip
proposals_by_hand = [
    torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]),
    torch.zeros(0, 4),  # an image without proposals: its box is missed
]
boxes_by_hand = [
    torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 35.0], [50.0, 50.0, 60.0, 60.0]]),
    torch.tensor([[5.0, 5.0, 15.0, 15.0]]),
]
# IoUs: box 1 with proposal 1 is 1, box 2 with proposal 2 is 100 / 150, box 3 and the
# second image's box overlap nothing: 2 of 4 boxes at 0.5, 1 of 4 at 0.7
check_close(
    "proposal_recall(proposals_by_hand, boxes_by_hand, 0.5, None)",
    proposal_recall(proposals_by_hand, boxes_by_hand, 0.5, None), 2 / 4,
    hint="a box counts once; an image without proposals still counts its boxes in the total",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_close(
    "proposal_recall(proposals_by_hand, boxes_by_hand, 0.7, None)",
    proposal_recall(proposals_by_hand, boxes_by_hand, 0.7, None), 1 / 4,
    hint="IoU 100 / 150 is below 0.7",
)  # fmt: skip
check_close(
    "proposal_recall(proposals_by_hand, boxes_by_hand, 0.5, 1)",
    proposal_recall(proposals_by_hand, boxes_by_hand, 0.5, 1), 1 / 4,
    hint="max_proposals=1 keeps only each image's first proposal",
)  # fmt: skip
check_close(
    "proposal_recall([torch.zeros(0, 4)], [torch.zeros(0, 4)], 0.5, None)",
    proposal_recall([torch.zeros(0, 4)], [torch.zeros(0, 4)], 0.5, None), 0.0,
    hint="no box at all: 0.0",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** How much of the RoI head's training is background? Run
# `exercise_model.assign(outputs, targets)` on the 16 validation images (with the
# proposals of eval mode) and read its sampled RoIs: `assignment.rois` is (N, 5), its
# first column the image index, and `assignment.roi_labels` (N,) the class of a
# positive or `BACKGROUND` (-1). Set `positives_per_image`, a list of 16 ints, the
# number of positive RoIs sampled in each image, and `positive_share`, a float, the
# share of positives among all the sampled RoIs of the batch. A head that answered
# "background" for every RoI would score `1 - positive_share` as `roi_accuracy`.

# %% tags=["solution"]
# NBVAL_IGNORE_OUTPUT
# (depends on the weights of the exercise network)
positives_per_image = None  # list of 16 ints
positive_share = None  # float
### BEGIN SOLUTION
assignment = exercise_model.assign(outputs, targets)
image_index = assignment.rois[:, 0].long()  # (N,)
positive = assignment.roi_labels >= 0  # (N,)
positives_per_image = [int(positive[image_index == image].sum()) for image in range(len(images))]
positive_share = float(positive.float().mean())
### END SOLUTION
if positive_share is not None:
    print(positives_per_image)
    print(
        f"positive share {positive_share:.3f}: 'always background' scores {1 - positive_share:.1%}"
    )

# %% tags=["check"]
config = exercise_model.config
cap = int(config.roi_num * config.roi_pos_fraction)  # at most 32 positives per image
expected_positives, expected_sampled = [], 0
for proposals, target in zip(outputs.proposals, targets, strict=True):
    result = assign_max_iou(
        proposals, target["boxes"], target["labels"], config.roi_pos_iou, config.roi_neg_iou,
        config.roi_min_pos_iou, config.roi_low_quality,
    )  # fmt: skip
    boxes = target["boxes"]
    usable = int(((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).sum())
    num_positive = min(int((result.gt_index >= 0).sum()) + usable, cap)  # boxes count too
    num_negative = min(int((result.gt_index == BACKGROUND).sum()), config.roi_num - num_positive)
    expected_positives.append(num_positive)
    expected_sampled += num_positive + num_negative
check_equal(
    "positives_per_image", positives_per_image, expected_positives,
    hint="positive = assignment.roi_labels >= 0; count it where assignment.rois[:, 0] == image",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_close(
    "positive_share", positive_share, sum(expected_positives) / expected_sampled,
    hint="the positives of all images over all the sampled RoIs (len(assignment.roi_labels))",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 3")

# %% [markdown]
# ## Further reading
#
# - S. Ren, K. He, R. Girshick, J. Sun, *Faster R-CNN: Towards Real-Time Object Detection
#   with Region Proposal Networks*, NeurIPS 2015, <https://arxiv.org/abs/1506.01497>
#   (section 4: the recall of the proposals against IoU, and against their number).
# - T.-Y. Lin et al., *Feature Pyramid Networks for Object Detection*, CVPR 2017,
#   <https://arxiv.org/abs/1612.03144> (the RPN and the RoI head on a pyramid).
# - J. Hosang, R. Benenson, P. Dollár, B. Schiele, *What makes for effective detection
#   proposals?*, TPAMI 2016, <https://arxiv.org/abs/1502.05082> (recall at IoU
#   thresholds, and why recall at higher IoU matters for detection).
# - mmdet, `configs/faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py`,
#   `configs/_base_/models/faster-rcnn_r50_fpn.py` and `configs/_base_/schedules/schedule_1x.py`.
