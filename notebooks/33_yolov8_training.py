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
# # 33 · YOLOv8: training YOLOv8n on the shapes set
#
# Notebooks 30 to 32 took YOLOv8 apart: 2100 anchor points at 320 px, the task-aligned
# assigner that picks each box's positives from the network's own predictions, and the
# BCE, CIoU and DFL terms of the loss. This notebook trains YOLOv8n from scratch on the
# shapes set with the course's engine, on a schedule sized for ten minutes of a laptop
# CPU, and measures it with COCO mAP. It then looks at what makes this detector
# different to train: its assigner moves with the predictions, so the targets of the
# last step are not those of the first.
#
# **Learning goals**
#
# 1. Read YOLOv8n's three schedules and say why the `cpu` one differs from the
#    reference's recipe.
# 2. Train with `detutils.engine.train`; read the three loss terms' curves.
# 3. Read the COCO mAP table, overall, by size and by class, and with the classes
#    merged (`evaluate(..., class_agnostic=True)`).
# 4. Measure how the task-aligned targets change between an untrained and a trained
#    network.
#
# **Prerequisites**: notebooks 30 (outputs), 31 (assigner), 32 (loss); notebook 13
# (planning a schedule for a time budget; the same engine and evaluation).
#
# **Notation**: the letters of the shapes (B, A, M, C, K, R, ...), the box formats and
# the flat prior index are those of [notebook 09](09_notation.ipynb).
#
# **The stored outputs come from a run on the `cpu` schedule** (about ten minutes on a
# 2-core CPU). In CI the notebook runs on the `ci` schedule (three iterations at
# 64 px, seconds), so every cell whose output depends on the schedule is marked to be
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
import math
import time

import matplotlib.pyplot as plt
import pandas as pd
import torch
from torch.utils.data import DataLoader

from detutils import boxes as box_ops
from detutils import current_schedule
from detutils.assigners import pad_ground_truth
from detutils.assigners.tal import assign_task_aligned
from detutils.checks import check_equal, check_passed, check_true
from detutils.course import exercise_network
from detutils.data import (
    CocoDetection,
    build_train_set,
    build_transforms,
    collate,
    ensure_shapes,
    find_split,
)
from detutils.engine import evaluate, plot_training_log, read_training_log, train
from detutils.engine.presets import schedules_for
from detutils.models import build_detector
from detutils.priors import anchor_points
from detutils.viz import compare_detections

# %% [markdown]
# ## 1. Three schedules
#
# YOLOv8n's config carries a `TrainSchedule` per schedule name; `DETUTILS_SCHEDULE`
# picks one (notebook 00). The fields where they differ:

# %%
schedules = schedules_for("yolov8n")
table = pd.DataFrame({name: schedule.to_dict() for name, schedule in schedules.items()})
table[table.astype(str).nunique(axis=1) > 1]

# %% [markdown]
# - **`gpu`** follows ultralytics' default recipe for YOLOv8 on COCO where the course's
#   trainer can; the table below sets them side by side and shows where they differ.
# - **`cpu`** has ten minutes of a 2-core CPU, evaluation included, and is designed for
#   float32, the arithmetic every CPU has: 500 steps of 16 images at the set's 320 px,
#   four passes over the 2,000 training images. AdamW at 0.002 moves much faster than
#   SGD at the start, half an epoch of warm-up is enough for it, and the plan is in
#   iterations so that the cosine reaches its floor at the last one; `max_minutes` and
#   `lr_by_time` keep it inside the budget on a slower machine (notebook 13, section
#   1). The training images are decoded into memory once, and the weights are laid out
#   channels-last (`channels_last`), the layout the CPU's convolution kernels read
#   fastest. On a CPU with native bfloat16 kernels, `--amp` runs the convolutions in
#   bfloat16, which makes each step cheaper still. These choices (bfloat16 and native
#   kernels, channels-last, the time-driven learning rate, images decoded once) are
#   explained and measured in [notebook 92](92_training_fast_on_a_cpu.ipynb).
# - **`ci`** only checks that everything runs: three steps of four 64 px images.
#
# How many steps fit in ten minutes depends on the CPU; how much a network learns from
# a number of steps does not. That is how the recipe was chosen, with
# `benchmarks/sample_efficiency.py`: AP50 on the validation images after 100, 200, ...
# 500 steps, which hardly depends on the CPU (section 8). The same benchmark trains ultralytics'
# own YOLOv8n on this set, with a recipe fitted to the same budget (AdamW at 0.002,
# half an epoch of warm-up, batch 16, 320 px, its augmentation without mosaic, its
# EMA), for the same number of steps: the course's recipe learns at least as much per
# step, and its steps are no slower.

#
# ultralytics' recipe (`ultralytics/cfg/default.yaml` and its trainer, for the 500-epoch
# COCO runs of its YOLOv8 models), the `gpu` schedule and the `cpu` one, side by side;
# the two course columns are read from the schedules:

# %%
reference = {
    "optimizer": "SGD, Nesterov momentum 0.937 (from 0.8 in the warm-up)",
    "learning rate": "0.01 (biases' rate falls from 0.1 in the warm-up)",
    "weight decay": "0.0005",
    "images per step": "64 (batches of 16, gradients accumulated to 64)",
    "length": "500 epochs",
    "image size": "640 px",
    "warm-up": "3 epochs from 0",
    "decay": "linear to 0.01 lr",
    "EMA of the weights": "yes",
    "mixed precision": "yes",
    "augmentation": "flip, HSV, scale +-0.5, translate +-0.1, mosaic 1 (off the last 10 epochs)",
    "gradient clipping": "norm 10",
    "time guard": "none",
    "initial weights": "random",
}
recipes = pd.DataFrame(
    {
        "reference": reference,
        "gpu": schedules["gpu"].recipe() | {"initial weights": "random"},
        "cpu": schedules["cpu"].recipe() | {"initial weights": "random"},
    }
)
recipes

# %% [markdown]
# Today's `default.yaml` says `optimizer: auto`, which for a run of more than 10,000
# steps picks SGD at 0.01 with momentum 0.9 and no bias warm-up; the table gives the
# yaml's own `momentum` 0.937 and `warmup_bias_lr` 0.1, which the `gpu` schedule keeps.

# %% [markdown]
# ## 2. Data and model

# %%
# NBVAL_IGNORE_OUTPUT
# (prints a line only on the first run, while the set is written)
root = ensure_shapes()

# %%
schedule_name = current_schedule()
schedule = schedules_for("yolov8n")[schedule_name]
train_set = CocoDetection(*find_split(root, "train"))
val_set = CocoDetection(*find_split(root, "val"))
train_data = build_train_set(train_set, schedule)  # flips and colour jitter (no mosaic)
val_set.transforms = build_transforms(schedule.img_size, train=False)
print(f"{len(train_set)} training and {len(val_set)} validation images")
print("classes:", ", ".join(train_set.class_names))

# %%
# NBVAL_IGNORE_OUTPUT
# (the schedule of this run)
torch.manual_seed(0)
model = build_detector("yolov8n", num_classes=train_set.num_classes)
untrained = build_detector("yolov8n", num_classes=train_set.num_classes)
untrained.load_state_dict(model.state_dict())  # kept for section 6
print(
    f"schedule {schedule_name}: {schedule.iterations} iterations of {schedule.batch_size} "
    f"images at {schedule.img_size} px, {schedule.optimizer} lr {schedule.lr}"
)
print(f"{sum(p.numel() for p in model.parameters()):,} parameters")

# %% [markdown]
# ## 3. Training
#
# The same loop as every detector of the course (`detutils.engine.train`): forward,
# `model.loss` (notebook 32), backward, gradient clipping, optimizer step, learning
# rate. The command line does the same:
#
# ```
# python -m detutils.train --model yolov8n --data data/shapes --schedule cpu
# ```

# %%
# NBVAL_IGNORE_OUTPUT
# (a training log: its timings and losses depend on the schedule and the machine)
run_dir = root.parents[1] / "runs" / "33_yolov8n"
start = time.monotonic()
result = train(model, train_data, schedule, out_dir=run_dir, device=str(device), progress=False)
minutes = (time.monotonic() - start) / 60
print(f"{result.iterations} iterations in {minutes:.1f} min, out of time: {result.out_of_time}")
model = result.model.eval()

# %% [markdown]
# ## 4. Loss curves
#
# Left: the box (CIoU), class (BCE) and DFL terms with the gains of notebook 32 applied
# (7.5, 0.5, 1.5), and their sum; right: the learning rate.

# %%
# NBVAL_IGNORE_OUTPUT
# (the curves of this run)
train_log, _ = read_training_log(run_dir)
figure = plot_training_log(run_dir, smooth=max(1, len(train_log) // 20))
plt.show()
fifth = max(1, len(train_log) // 5)
first, last = train_log.iloc[:fifth], train_log.iloc[-fifth:]
pd.DataFrame({"first fifth": first.mean(), "last fifth": last.mean()}).loc[
    ["box", "cls", "dfl", "loss"]
]

# %% [markdown]
# The class term behaves unlike YOLOv3's (notebook 13). Its targets are not ones but
# the normalised alignment metric, which is small while the predicted boxes are poor;
# as the boxes improve, the targets grow, so the class term can stall, or even rise for
# a while, although the network is getting better. It is a loss against a moving
# target: compare the runs by AP, not by this term.
#
# ## 5. COCO mAP
#
# `evaluate` runs the model over the validation images, maps the detections back to
# each image file and scores them with pycocotools (notebook 13, section 5). The `ci`
# run evaluates 16 images only. The second row scores boxes only: every class merged
# into one, each box kept once with its best score.

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
# ## 6. The targets move with the predictions
#
# ATSS (notebook 21) and YOLOv3's anchor matching (notebook 11) give a box the same
# positives at every step: they look at geometry only. The task-aligned assigner looks
# at the predictions: a positive must have a positive alignment metric s^0.5 × u^6, and
# its class target is that metric normalised so that the box's best anchor gets the
# box's best CIoU (notebook 31). Run it on the same validation images with the network
# before and after training:

# %%
images, targets = next(iter(DataLoader(val_set, batch_size=8, collate_fn=collate)))
gt_boxes, gt_labels, gt_mask = pad_ground_truth(targets, device=device)


def task_aligned_targets(detector):
    """The assignment of the first eight validation images under ``detector``."""
    with torch.no_grad():
        outputs = detector.to(device).eval()(images.to(device))
        dist_logits, cls_logits, points, point_strides = detector.flatten(outputs)
        pred_boxes, pred_scores = detector.decode(outputs)  # (B, A, 4) px, (B, A, C)
    return assign_task_aligned(pred_scores, pred_boxes, points, gt_labels, gt_boxes, gt_mask)


def summary(assignment) -> dict[str, float]:
    positives = assignment.fg_mask  # (B, A)
    per_box = torch.zeros_like(gt_mask, dtype=torch.long)  # (B, M)
    for image in range(len(per_box)):
        indices = assignment.gt_index[image][positives[image]]
        per_box[image] += torch.bincount(indices, minlength=per_box.shape[1])
    target = assignment.scores.amax(dim=2)[positives]  # (P,) soft class targets
    return {
        "positives per box": per_box[gt_mask].float().mean().item(),
        "boxes without a positive": int((per_box[gt_mask] == 0).sum()),
        "mean class target": target.mean().item() if len(target) else 0.0,
        "largest class target": target.max().item() if len(target) else 0.0,
    }


# %%
# NBVAL_IGNORE_OUTPUT
# (depends on the trained weights of this run)
before, after = task_aligned_targets(untrained), task_aligned_targets(model)
print(f"{int(gt_mask.sum())} boxes on 8 images")
pd.DataFrame({"untrained": summary(before), "trained": summary(after)}).round(4)

# %% [markdown]
# On the `cpu` run, the number of positives hardly changes: most boxes get nine or
# ten, and the few that get fewer are small boxes with fewer than ten anchor points
# inside them (exercise 2), trained or not. What changes is the class target. The
# untrained network's boxes overlap the objects poorly, so the targets, scaled by the
# best CIoU of each box, are small on average; after training they are larger (0.41
# to 0.48 on the mean) and approach the IoU that the network reaches. A YOLOv8
# network's class score is trained to say "object of this class, *and* this well
# located", like the quality focal loss of NanoDet (notebook 22).
#
# ## 7. Detections
#
# Detections with a score of at least 0.3 on four validation images, at the network's
# input size, under the ground truth.

# %%
# NBVAL_IGNORE_OUTPUT
# (the detections of this run)
samples = [val_set[index] for index in range(4)]
batch = torch.stack([image for image, _ in samples]).to(device)
with torch.no_grad():
    detections = model.predict(model(batch), score_thr=0.3, iou_thr=0.6, max_det=100)
compare_detections(samples, detections, val_set.class_names)
plt.show()

# %% [markdown]
# ## 8. What to expect
#
# **Per step, on any CPU.** `benchmarks/sample_efficiency.py --peer` trains the
# course's YOLOv8n on its `cpu` schedule in float32 for exactly 500 steps, keeps its
# weights every 100 steps and scores them on the 500 validation images; in the same
# run it trains ultralytics' own YOLOv8n with the recipe of section 1 for the same
# steps and scores its weights (its EMA) with the same evaluator. AP50 after a number
# of steps hardly depends on the CPU (float32 sums taken in another order move it by
# a few thousandths):
#
# | AP50 after | 100 | 200 | 300 | 400 | 500 | AP @500 |
# | --- | --- | --- | --- | --- | --- | --- |
# | course YOLOv8n | 0.012 | 0.148 | 0.244 | 0.306 | 0.333 | 0.248 |
# | ultralytics YOLOv8n | 0.037 | 0.105 | 0.200 | 0.232 | 0.248 | 0.172 |
#
# ultralytics' own validator gives its last weights an AP50 of 0.266, close to the
# course's evaluator. ultralytics' training does not repeat bit for bit: an earlier run
# of the same benchmark, on one thread, ended at 0.312 (the course's YOLOv8n at
# 0.328). What the CPU changes is the time of a step: on a 2-core AMD EPYC with AVX2
# and no native bfloat16 (2 threads, float32, data loading included), 0.83 s for the
# course's YOLOv8n and 0.86 s for ultralytics', a ratio of 0.96.
#
# **In ten minutes, on one CPU.** The run whose outputs this notebook stores, the
# schedule as it is (float32, 2 torch threads, nothing else running), on a 2-core AMD
# EPYC with AVX-512, at 0.86 s a step. It reached the same metrics as the benchmark run
# on the AVX2 machine above, to the digits shown:
#
# | run | steps | minutes | AP | AP50 | AP75 | APs | APm | APl |
# | --- | --- | --- | --- | --- | --- | --- | --- | --- |
# | this notebook | 500 | 7.2 training | 0.248 | 0.333 | 0.279 | 0.105 | 0.390 | 0.279 |
#
# A slower CPU fits fewer steps before the time guard (8.75 minutes) ends the run, and
# scores lower: read the per-step table at the step count it reached. On a CPU with
# native bfloat16 kernels, `--amp` makes each step cheaper
# ([notebook 92](92_training_fast_on_a_cpu.ipynb) has the figures). With mosaic
# augmentation (`--set mosaic=1.0`; four images in one, as ultralytics trains) AP50
# fell, to 0.119 in a ten-minute run at 320 px: in a few epochs there is no
# over-fitting for it to prevent, and each mosaic is a harder image. A ten-minute
# YOLOv8n is far from trained: its loss only flattens because the learning rate runs
# out (section 4).
#
# **`gpu`** (500 epochs at 640 px): not run for this course, so no figure is promised.
# For scale, ultralytics reports 37.3 AP (COCO val2017, 640 px) for YOLOv8n trained
# with its own recipe, mosaics and linear decay included.

# %% [markdown]
# ## Recap
#
# - The `cpu` schedule is the `gpu` recipe cut to ten minutes of float32: AdamW, a
#   short warm-up, a cosine planned in iterations, channels-last weights, and a recipe
#   judged by what it learns from 500 steps, which no CPU changes.
# - The three terms of the YOLOv8 loss fall at different paces; the class term chases
#   targets that grow as the boxes improve, so compare runs by AP.
# - The task-aligned assigner is dynamic: the same image gets other positives and
#   larger class targets from a trained network than from an untrained one.
# - `evaluate(..., class_agnostic=True)` tells localisation from naming.
#
# ## Exercises
#
# The exercises need a trained network, `exercise_model`. If you ran the lesson, the
# cell below loads the network of its run. To do them without the lesson's ten-minute
# run, execute the set-up, import and data cells of section 2 (`root`, `train_set`,
# `val_set`, `schedule`), then the cell below: it trains YOLOv8n for 45 seconds the
# first time (a network that has only started to learn, so expect small numbers) and
# loads the stored network after.

# %%
# NBVAL_IGNORE_OUTPUT
lesson_run = root.parents[1] / "runs" / "33_yolov8n"  # the lesson's run, if it finished
exercise_model = exercise_network("yolov8n", root, lesson_run=lesson_run)

# %% [markdown]
# Exercises 1 and 3 start from `samples`, the first 64 validation images with their
# targets, and `detections`, what `exercise_model` finds on them with a score of at
# least 0.01 (low, for the 45-second network, whose scores stay low), at most 100 per
# image: one dict per image, `boxes` `(N, 4)`, `scores`
# `(N,)` (highest first) and `labels` `(N,)`.

# %%
samples = [val_set[index] for index in range(64)]
with torch.no_grad():
    detections = [
        found
        for first in range(0, 64, 16)
        for found in exercise_model.predict(
            exercise_model(torch.stack([image for image, _ in samples[first : first + 16]])),
            score_thr=0.01, iou_thr=0.6, max_det=100,
        )
    ]  # fmt: skip
num_boxes = sum(len(target["boxes"]) for _, target in samples)
print(f"{len(samples)} images, {num_boxes} boxes")

# %% [markdown]
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** Which classes does the network confuse? Match every ground-truth box
# to the highest-scoring detection that overlaps it at IoU ≥ 0.5, whatever its class
# (a box that no detection overlaps is left out), and count the pairs (true class,
# predicted class) in `confusion`, a `(C, C)` integer tensor: row the true class,
# column the predicted one.

# %% tags=["solution"]
# NBVAL_IGNORE_OUTPUT
# (the detections of the exercise network)
names = val_set.class_names
confusion = None  # (C, C) long: rows true class, columns predicted class
### BEGIN SOLUTION
confusion = torch.zeros(len(names), len(names), dtype=torch.long)  # (C, C)
for (_, target), found in zip(samples, detections, strict=True):
    iou = box_ops.box_iou(target["boxes"], found["boxes"])  # (M, N)
    scores = torch.where(iou >= 0.5, found["scores"], -1.0)  # (M, N)
    if scores.numel() == 0:
        continue
    best_score, best = scores.max(dim=1)  # (M,), (M,)
    hit = best_score >= 0  # (M,)
    predicted = found["labels"][best[hit]]
    confusion.index_put_((target["labels"][hit], predicted), torch.tensor(1), accumulate=True)
### END SOLUTION
if confusion is not None:
    table = pd.DataFrame(torch.as_tensor(confusion).numpy(), index=names, columns=names)
    table.index.name, table.columns.name = "true", "predicted"
    print(table)

# %% tags=["check"]
check_true(
    confusion is not None,
    "`confusion` is still None: assign a (C, C) tensor of counts to it.",
    hint="start from torch.zeros(C, C, dtype=torch.long) and add 1 at (true label, "
    "label of the matched detection) for every matched box.",
)
located = torch.zeros(len(names), dtype=torch.long)  # (C,) boxes some detection overlaps
for (_, target), found in zip(samples, detections, strict=True):
    overlapped = (box_ops.box_iou(target["boxes"], found["boxes"]) >= 0.5).any(dim=1)  # (M,)
    located += torch.bincount(target["labels"][overlapped], minlength=len(names))
check_equal(
    "confusion.sum(dim=1), the matched boxes of each true class",
    torch.as_tensor(confusion).sum(dim=1), located,
    hint="every box that some detection of any class overlaps at IoU >= 0.5 counts once, "
    "in the row of its own class; boxes no detection overlaps count nowhere.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
expected = torch.zeros(len(names), len(names), dtype=torch.long)
for (_, target), found in zip(samples, detections, strict=True):
    if len(found["boxes"]) == 0:
        continue
    order = found["scores"].argsort(descending=True, stable=True)
    overlap = box_ops.box_iou(target["boxes"], found["boxes"][order]) >= 0.5  # (M, N)
    first = overlap.int().argmax(dim=1)  # (M,) the best-scoring overlapping detection
    for true, column, hit in zip(target["labels"], first, overlap.any(dim=1), strict=True):
        if hit:
            expected[true, found["labels"][order][column]] += 1
check_equal(
    "confusion", confusion, expected,
    hint="the column is the label of the best-scoring detection at IoU >= 0.5",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** A box gets at most `topk` = 10 positives, among the anchor points
# inside it. At the `cpu` schedule's image size, how many anchor points lie inside each
# box of the first 64 validation images? `boxes` `(N, 4)` holds them, image after image;
# set `inside` `(N,)` (integers), the number of points of `anchor_points` (every level)
# that lie strictly inside each box. The cell then tabulates them by COCO size bin
# (areas in the pixels of the network input) and counts the boxes with fewer than 10,
# whose top 10 cannot all be inside.

# %% tags=["solution"]
size = schedules_for("yolov8n")["cpu"].img_size
sized = CocoDetection(*find_split(root, "val"), transforms=build_transforms(size, False))
boxes = torch.cat([sized[index][1]["boxes"] for index in range(64)])  # (N, 4) xyxy px
strides = exercise_model.config.strides
inside = None  # (N,) long
### BEGIN SOLUTION
feature_sizes = [(size // stride, size // stride) for stride in strides]
flat_points, _ = anchor_points(feature_sizes, strides)  # (A, 2) x, y px
x, y = flat_points[:, 0], flat_points[:, 1]  # (A,) each
x1, y1, x2, y2 = (boxes[:, None, k] for k in range(4))  # (N, 1) each
inside = ((x > x1) & (x < x2) & (y > y1) & (y < y2)).sum(dim=1)  # (N,)
### END SOLUTION
if inside is not None:
    frame = pd.DataFrame(
        {"area": box_ops.box_area(boxes).numpy(), "inside": torch.as_tensor(inside).numpy()}
    )
    bins = [0, 32**2, 96**2, math.inf]
    frame["size"] = pd.cut(frame["area"], bins, labels=["small", "medium", "large"])
    summary = frame.groupby("size", observed=True)["inside"].agg(
        boxes="count", median="median", fewer_than_10=lambda n: int((n < 10).sum())
    )
    print(summary)

# %% tags=["check"]
# Level by level, the points are ((i + 0.5) s, (j + 0.5) s): a box holds those columns i
# with x1 < (i + 0.5) s < x2, a count that is a difference of two floors, and as many
# rows; the points inside are columns times rows, summed over the levels.
expected = torch.zeros(len(boxes), dtype=torch.long)  # (N,)
for stride in strides:
    cells = size // stride
    first = torch.floor(boxes[:, :2] / stride - 0.5) + 1  # (N, 2) first column, row inside
    last = torch.ceil(boxes[:, 2:] / stride - 0.5) - 1  # (N, 2) last column, row inside
    count = (last.clamp(max=cells - 1) - first.clamp(min=0) + 1).clamp(min=0)  # (N, 2)
    expected += count.prod(dim=1).long()
check_equal(
    "inside", inside, expected,
    hint="anchor_points(feature_sizes, strides) gives the (A, 2) points of every level, "
    "feature sizes size // stride; compare x with the box's x1 and x2 and y with y1 and "
    "y2 (strictly), with broadcasting (N, 1) against (A,), and sum over the points.",
)  # fmt: skip
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** AP integrates over every score threshold; a deployed detector uses
# one. At the score thresholds 0.01, 0.05 and 0.1, count in the `detections` of the 64
# images: `tp`, the true positives (a detection of the right class at IoU ≥ 0.5 with a
# box of its image not yet matched; detections taken highest score first, each matched
# to the unmatched box of its class it overlaps most); `fp`, the other detections; and
# `missed`, the boxes left unmatched. Each is a list or tensor of three integers, one
# per threshold. The cell then gives precision and recall.

# %% tags=["solution"]
# NBVAL_IGNORE_OUTPUT
# (the detections of the exercise network)
thresholds = (0.01, 0.05, 0.1)
tp = fp = missed = None  # (3,) integers each, one per threshold
### BEGIN SOLUTION
tp, fp, missed = [0, 0, 0], [0, 0, 0], [0, 0, 0]
for k, threshold in enumerate(thresholds):
    for (_, target), found in zip(samples, detections, strict=True):
        scores, order = found["scores"].sort(descending=True)
        order = order[scores >= threshold]
        iou = box_ops.box_iou(found["boxes"][order], target["boxes"])  # (N, M) by score
        iou[found["labels"][order][:, None] != target["labels"][None, :]] = 0.0
        matched = torch.zeros(len(target["boxes"]), dtype=torch.bool)  # (M,)
        for row in iou:
            row = torch.where(matched, 0.0, row)
            if len(row) and row.max() >= 0.5:
                matched[row.argmax()] = True
                tp[k] += 1
            else:
                fp[k] += 1
        missed[k] += int((~matched).sum())
### END SOLUTION
if tp is not None and fp is not None and missed is not None:
    table = pd.DataFrame({"score ≥": thresholds, "TP": tp, "FP": fp, "missed": missed})
    table["precision"] = table["TP"] / (table["TP"] + table["FP"]).clip(lower=1)
    table["recall"] = table["TP"] / (table["TP"] + table["missed"]).clip(lower=1)
    print(table.round(4))

# %% tags=["check"]
check_true(
    tp is not None and fp is not None and missed is not None,
    "`tp`, `fp` and `missed` are still None: assign three counts (one per threshold) to each.",
    hint="for each threshold, keep the detections with a score at least that threshold",
)
tp, fp, missed = (torch.as_tensor(counts).long() for counts in (tp, fp, missed))
kept = torch.tensor(
    [sum(int((found["scores"] >= t).sum()) for found in detections) for t in thresholds]
)  # (3,) detections at each threshold
check_equal(
    "tp + fp, every detection kept at each threshold", tp + fp, kept,
    hint="each detection with a score at least the threshold is a TP or an FP, once",
)  # fmt: skip
check_equal(
    "tp + missed, every box", tp + missed, torch.full((3,), num_boxes),
    hint="each ground-truth box is matched (a TP) or missed, once",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_true(
    bool((tp[1:] <= tp[:-1]).all()),
    f"`tp` should not grow with the threshold, got {tp.tolist()}.",
    hint="a higher threshold keeps the first detections in score order: their matches stay",
)
expected_tp = torch.zeros(3, dtype=torch.long)
for (_, target), found in zip(samples, detections, strict=True):
    order = found["scores"].argsort(descending=True, stable=True)
    taken = torch.zeros(len(target["boxes"]), dtype=torch.bool)  # (M,)
    for index in order.tolist():
        same = target["labels"] == found["labels"][index]  # (M,)
        iou = box_ops.box_iou(found["boxes"][index : index + 1], target["boxes"])[0]  # (M,)
        iou = torch.where(same & ~taken, iou, 0.0)
        if len(iou) and iou.max() >= 0.5:
            taken[iou.argmax()] = True
            expected_tp += torch.tensor([found["scores"][index] >= t for t in thresholds])
check_equal("tp", tp, expected_tp, hint="greedy matching, highest score first")
### END HIDDEN TESTS
check_passed("Exercise 3")

# %% [markdown]
# ## Further reading
#
# - G. Jocher, A. Chaurasia, J. Qiu, *Ultralytics YOLOv8*, 2023,
#   <https://github.com/ultralytics/ultralytics>: `ultralytics/cfg/default.yaml` (the
#   training recipe), `ultralytics/engine/trainer.py` (warm-up, EMA, schedule).
# - C. Feng et al., *TOOD: Task-aligned One-stage Object Detection*, ICCV 2021,
#   <https://arxiv.org/abs/2108.07755>
# - X. Li et al., *Generalized Focal Loss*, NeurIPS 2020 (the DFL term),
#   <https://arxiv.org/abs/2006.04388>
