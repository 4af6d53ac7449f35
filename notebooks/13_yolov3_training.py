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
# # 13 · YOLOv3: training YOLOv3-tiny on the shapes set
#
# Notebooks 10 to 12 took YOLOv3 apart: what the network emits, which predictions each
# box is given to, and what the loss asks of every prediction. This notebook puts the
# pieces back together and trains YOLOv3-tiny from scratch on the shapes set with the
# course's engine, then measures it the way detectors are compared: COCO mAP, computed
# by pycocotools. A training run on a laptop CPU has minutes, not days, so the first
# section is about the *schedule*: how long to train, at which image size, and how to
# plan the learning rate so that it has decayed by the time the budget is spent.
#
# **Learning goals**
#
# 1. Read a training schedule (`ci`, `cpu`, `gpu`) and say what each of its numbers
#    does; plan a learning rate for a fixed time budget.
# 2. Train a detector with `detutils.engine.train` and read its loss curves.
# 3. Compute COCO AP, AP50 and AP by object size and by class with
#    `detutils.engine.evaluate`, and read the table.
# 4. Find where a young detector loses its AP: in finding the objects, or in naming
#    them.
#
# **Prerequisites**: notebooks 10 (outputs), 11 (targets) and 12 (loss); notebook 00
# (the shapes set and the schedules); notebook 03 (NMS and COCO's AP).
#
# **Notation**: the letters of the shapes (B, A, M, C, K, R, ...), the box formats and
# the flat prior index are those of [notebook 09](09_notation.ipynb).
#
# **The stored outputs come from a run on the `cpu` schedule** (ten minutes on a
# 2-core CPU). In CI the notebook runs on the `ci` schedule (three iterations at
# 64 px, seconds), so every cell whose output depends on the schedule (the training
# log, the metrics, the figures of the trained model) is marked to be left out of the
# comparison; run it yourself to see your own numbers.

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ['png']

# %%
# NBVAL_IGNORE_OUTPUT
# (versions and device differ from machine to machine)
from detutils.course import setup

device = setup()["device"]

# %%
import contextlib
import copy
import io
import math
import time

import matplotlib.pyplot as plt
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from detutils import boxes as box_ops
from detutils import current_schedule
from detutils.assigners import build_yolov3_targets, pad_ground_truth, wh_iou
from detutils.checks import check_equal, check_function, check_passed, check_true
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
from detutils.engine.schedule import lr_factor
from detutils.models import build_detector
from detutils.viz import draw_boxes

# %% [markdown]
# ## 1. Three schedules
#
# A `TrainSchedule` holds every number of a run. YOLOv3-tiny's config carries three,
# one per schedule name; `DETUTILS_SCHEDULE` picks one (notebook 00). The fields where
# they differ:

# %%
schedules = schedules_for("yolov3-tiny")
table = pd.DataFrame({name: schedule.to_dict() for name, schedule in schedules.items()})
differs = table.astype(str).nunique(axis=1) > 1
table[differs]

# %% [markdown]
# - **`gpu`** follows the recipe of the reference (ultralytics/yolov3, archive branch,
#   `train.py`) where the course's trainer can; the table below sets them side by side
#   and shows where they differ.
# - **`cpu`** must show a detector learning within ten minutes of a 2-core CPU,
#   evaluation included, and is designed for float32, the arithmetic every CPU has: 500
#   steps of sixteen images at the set's 320 px, four passes over the 2,000 training
#   images. Every choice serves learning fast: AdamW (it moves faster than SGD in the
#   first few hundred steps), a warm-up of half an epoch, random flips and colour jitter
#   on images decoded into memory once, and one evaluation, at the end. The weights are
#   laid out *channels-last* (`channels_last`), the memory layout the CPU's convolution
#   kernels read fastest. On a CPU with native bfloat16 kernels, `amp` (`--amp` on the
#   command line) runs the convolutions in bfloat16 while the weights, the loss and the
#   optimizer stay in float32; a CPU without them trains in float32 whatever `amp` says.
#   These choices (bfloat16 and native kernels, channels-last, the time-driven learning
#   rate below, images decoded once) are explained and measured in
#   [notebook 92](92_training_fast_on_a_cpu.ipynb).
# - **`ci`** only checks that everything runs: three steps of four 64 px images.
#
# The reference's recipe (archive `train.py`: its `hyp` dictionary, command-line
# defaults and training loop), the `gpu` schedule and the `cpu` one, side by side. The
# two course columns are read from the schedules and the model's config:

# %%
reference = {
    "optimizer": "SGD, Nesterov momentum 0.937 (from 0.9 in the burn-in)",
    "learning rate": "0.01 (biases' rate falls from 0.1 in the burn-in)",
    "weight decay": "0.0005 (from 0 in the burn-in)",
    "images per step": "64 (batches of 16, 4 accumulated)",
    "length": "300 epochs",
    "image size": "320 to 640 px, a new size every batch; tests at 640 px",
    "warm-up": "burn-in: max(3 epochs, 500 steps), from 0",
    "decay": "cosine to 0.05 lr",
    "EMA of the weights": "yes",
    "mixed precision": "yes (apex, when installed)",
    "augmentation": "flip, HSV, mosaic",
    "gradient clipping": "none",
    "time guard": "none",
    "class gain": "37.4 C / 80 (notebook 12)",
    "gr": "0 to 1 in the burn-in (notebook 12)",
    "initial weights": "--weights (default: a COCO-trained YOLOv3-SPP; '' for random)",
}
yolov3_config = build_detector("yolov3-tiny", num_classes=6).config
course_rows = {
    "class gain": f"{yolov3_config.cls_gain:g}",
    "gr": f"{yolov3_config.gr:g}",
    "initial weights": "random",
}
recipes = pd.DataFrame(
    {
        "reference": reference,
        "gpu": schedules["gpu"].recipe() | course_rows,
        "cpu": schedules["cpu"].recipe() | course_rows,
    }
)
recipes

# %% [markdown]
# The `cpu` run is planned in *iterations*, not epochs: the learning rate follows a
# linear warm-up, then a cosine that reaches its floor at the last planned iteration.
# Planned in epochs, a run stopped by its time budget would stop with the rate still
# high, and keep the weights of a noisy mid-training step. `max_minutes` (8.75)
# guards the budget on a slower machine, and `lr_by_time` makes the learning rate follow
# whichever clock is further along, the iterations or the minutes: a machine that keeps
# to the plan gets exactly the curve below, a slower one reaches the floor at its
# deadline with fewer steps ([notebook 92](92_training_fast_on_a_cpu.ipynb) shows why).

# %%
cpu = schedules["cpu"]
steps_per_epoch = math.ceil(2000 / cpu.batch_size)  # the shapes set: 2,000 training images
warmup = round(cpu.warmup_epochs * steps_per_epoch)
iterations = torch.arange(cpu.iterations)
rates = [cpu.lr * lr_factor(int(i), cpu.iterations, cpu, warmup) for i in iterations]
figure, ax = plt.subplots(figsize=(5, 2.8))
ax.plot(iterations, rates)
ax.set(xlabel="iteration", ylabel="learning rate", title="the cpu schedule")
plt.show()
epochs = cpu.iterations / steps_per_epoch
print(f"warm-up {warmup} iterations, {cpu.iterations} in all = {epochs:.2f} epochs")

# %% [markdown]
# ## 2. Data and model
#
# The shapes set (notebook 00), letterboxed to the schedule's image size.
# `build_train_set` applies the rest of the schedule's data settings: on the `cpu`
# schedule, random flips and colour jitter, and the 2,000 images decoded into memory
# once (a PNG decode costs more than the augmentation). The model is built for its
# six classes, with the prior-probability bias initialisation of notebook 10.

# %%
# NBVAL_IGNORE_OUTPUT
# (prints a line only on the first run, while the set is written)
root = ensure_shapes()

# %%
schedule_name = current_schedule()
schedule = schedules_for("yolov3-tiny")[schedule_name]
train_set = CocoDetection(*find_split(root, "train"))
val_set = CocoDetection(*find_split(root, "val"))
train_data = build_train_set(train_set, schedule)  # flip, colour jitter, decoded once
val_set.transforms = build_transforms(schedule.img_size, train=False)
print(f"{len(train_set)} training and {len(val_set)} validation images")
print("classes:", ", ".join(train_set.class_names))

# %%
# NBVAL_IGNORE_OUTPUT
# (the schedule of this run)
model = build_detector("yolov3-tiny", num_classes=train_set.num_classes)
print(
    f"schedule {schedule_name}: {schedule.iterations} iterations of {schedule.batch_size} "
    f"images at {schedule.img_size} px, {schedule.optimizer} lr {schedule.lr}"
)
print(f"{sum(p.numel() for p in model.parameters()):,} parameters")

# %% [markdown]
# ## 3. Training
#
# `train` runs the loop of `detutils.engine.train`: forward, `model.loss`, backward,
# gradient clipping, optimizer step, learning rate; it writes `train_log.csv` (one row
# per iteration) and `last.pt` into the run folder. The command line does the same:
#
# ```
# python -m detutils.train --model yolov3-tiny --data data/shapes --schedule cpu
# ```
#
# No validation set is passed here: the model is evaluated once, in section 5.

# %%
# NBVAL_IGNORE_OUTPUT
# (a training log: its timings and losses depend on the schedule and the machine)
run_dir = root.parents[1] / "runs" / "13_yolov3_tiny"
start = time.monotonic()
result = train(model, train_data, schedule, out_dir=run_dir, device=str(device), progress=False)
minutes = (time.monotonic() - start) / 60
print(f"{result.iterations} iterations in {minutes:.1f} min, out of time: {result.out_of_time}")
model = result.model.eval()

# %% [markdown]
# ## 4. Loss curves
#
# Left: the three terms of notebook 12 and their sum (faint: every iteration; solid: a
# running mean). Right: the learning rate the trainer used at each iteration.

# %%
# NBVAL_IGNORE_OUTPUT
# (the curves of this run)
train_log, _ = read_training_log(run_dir)
figure = plot_training_log(run_dir, smooth=max(1, len(train_log) // 20))
plt.show()
fifth = max(1, len(train_log) // 5)
first, last = train_log.iloc[:fifth], train_log.iloc[-fifth:]
pd.DataFrame({"first fifth": first.mean(), "last fifth": last.mean()}).loc[
    ["box", "obj", "cls", "loss"]
]

# %% [markdown]
# On the `cpu` run the three terms move at different paces (the table: their means over
# the first and the last fifth of the run). The box term falls first and does most of
# its fall within 300 steps: a box's place and size can be read off colours and edges.
# The objectness term, averaged over every cell and so noisy from batch to batch,
# falls once the boxes are roughly right. The class term falls steadily, and only
# flattens when the learning rate runs out: telling a hexagon from an ellipse needs
# shape features that a network trained from scratch builds slowly. Section 6 shows
# what that costs in AP.
#
# ## 5. COCO mAP
#
# `evaluate` runs the model over the validation images, maps each detection back to
# the pixels of its image file, and lets pycocotools' `COCOeval` score them. AP is the
# mean over IoU thresholds 0.50 to 0.95 and over classes; AP50 counts a detection as
# right when its IoU with a box of its class is at least 0.5; APs, APm, APl split the
# objects by area (below 32², up to 96², above). The `ci` run evaluates 16 images
# only, to stay fast.

# %%
num_val = 16 if schedule_name == "ci" else len(val_set)
val_loader = DataLoader(
    val_set, batch_size=16, sampler=list(range(num_val)), collate_fn=collate, num_workers=0
)

# %%
# NBVAL_IGNORE_OUTPUT
# (the metrics of this run)
evaluation = evaluate(model, val_loader, device)
print(f"{evaluation.num_images} images, {evaluation.num_detections} detections")
pd.DataFrame([evaluation.metrics], index=["yolov3-tiny"])

# %%
# NBVAL_IGNORE_OUTPUT
# (per-class AP of this run)
evaluation.per_class

# %% [markdown]
# ## 6. Finding objects, or naming them?
#
# A detection counts for AP only when both its box and its class are right. To see
# which of the two is missing, score the same detections with every class merged into
# one: each box keeps its best class, the label is dropped, and every ground-truth box
# belongs to one class, "object". The gap between the two AP50s is the price of the
# wrong names.
#
# The two helpers below spell the merge out. `evaluate(..., class_agnostic=True)` does
# the same in one call (notebooks 23 and 33 use it), with one difference: it keeps
# every class the model reports for a box and merges them into the best, where
# `OneClass` asks the model for its best class only, before NMS.


# %%
class OneClass(nn.Module):
    """A detector whose detections all carry label 0 (one label per box)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images):
        return self.detector(images)

    def predict(self, outputs, **kwargs):
        detections = self.detector.predict(outputs, multi_label=False, **kwargs)
        return [det | {"labels": torch.zeros_like(det["labels"])} for det in detections]


def merge_classes(dataset: CocoDetection) -> CocoDetection:
    """A shallow copy of ``dataset`` whose COCO ground truth has one category."""
    merged = copy.copy(dataset)
    merged.coco = copy.deepcopy(dataset.coco)
    first = merged.coco.dataset["categories"][0]
    merged.coco.dataset["categories"] = [first]
    for annotation in merged.coco.dataset["annotations"]:
        annotation["category_id"] = first["id"]
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints its progress
        merged.coco.createIndex()
    merged.class_names, merged.label_to_cat_id = ["object"], [first["id"]]
    return merged


# %%
# NBVAL_IGNORE_OUTPUT
# (the metrics of this run)
one_class_loader = DataLoader(
    merge_classes(val_set), batch_size=16, sampler=list(range(num_val)), collate_fn=collate
)
one_class = evaluate(OneClass(model), one_class_loader, device)
pd.DataFrame([evaluation.metrics, one_class.metrics], index=["six classes", "one class"])[
    ["AP", "AP50", "AP75", "APs", "APm", "APl"]
]

# %% [markdown]
# On the `cpu` run, merging the classes lifts AP50 from 0.44 to 0.57, and AP from 0.24
# to 0.30: many boxes are in the right place under the wrong name. Localisation and
# naming are learnt at different speeds, and in a ten-minute run the class term is the
# one still far from its floor (section 4). Longer training closes the gap; so does an
# assigner that gives each box more class targets: YOLOv3 gives a box one cell per
# matching anchor, the task-aligned assigner of YOLOv8 (notebook 31) up to ten anchor
# points.
#
# ## 7. Detections
#
# Detections with a score of at least 0.3 on four validation images, at the network's
# input size, beside the ground truth.

# %%
# NBVAL_IGNORE_OUTPUT
# (the detections of this run)
samples = [val_set[index] for index in range(4)]
images = torch.stack([image for image, _ in samples]).to(device)
with torch.no_grad():
    detections = model.predict(model(images), score_thr=0.3, iou_thr=0.6, max_det=100)
figure, axes = plt.subplots(2, 4, figsize=(12, 6.4))
for column, ((image, target), found) in enumerate(zip(samples, detections, strict=True)):
    draw_boxes(
        image,
        target["boxes"],
        target["labels"],
        class_names=val_set.class_names,
        ax=axes[0, column],
        linewidth=1.0,
        title="ground truth",
    )
    draw_boxes(
        image,
        found["boxes"].cpu(),
        found["labels"].cpu(),
        found["scores"].cpu(),
        class_names=val_set.class_names,
        ax=axes[1, column],
        linewidth=1.0,
        title=f"{len(found['boxes'])} detections",
    )
for ax in axes.flat:
    ax.axis("off")
figure.tight_layout()
plt.show()

# %% [markdown]
# ## 8. What to expect
#
# **Per step, on any CPU.** `benchmarks/sample_efficiency.py --models yolov3-tiny`
# trains YOLOv3-tiny on its `cpu` schedule in float32 for exactly 500 steps, keeps its
# weights every 100 steps and scores them on the 500 validation images. AP50 after a
# number of steps hardly depends on the CPU (float32 sums taken in another order move
# it by a few thousandths):
#
# | AP50 after | 100 | 200 | 300 | 400 | 500 | AP @500 |
# | --- | --- | --- | --- | --- | --- | --- |
# | YOLOv3-tiny | 0.008 | 0.152 | 0.287 | 0.397 | 0.441 | 0.240 |
#
# What the CPU changes is the time of a step: 1.21 s on a 2-core AMD EPYC with AVX2
# and no native bfloat16 (2 threads, float32, data loading included); the whole
# benchmark run, with its five evaluations, took 11.8 minutes.
#
# **In ten minutes, on one CPU.** The run whose outputs this notebook stores, the
# schedule as it is (float32, 2 torch threads, nothing else running), on a 2-core AMD
# EPYC with AVX-512, at 1.15 s a step:
#
# | run | steps | minutes | AP | AP50 | AP75 | APs | APm | APl |
# | --- | --- | --- | --- | --- | --- | --- | --- | --- |
# | this notebook | 460 | 8.8 training | 0.235 | 0.437 | 0.222 | 0.066 | 0.338 | 0.317 |
#
# A slower CPU fits fewer steps before the time guard (8.75 minutes) ends the run, and
# scores lower: read the per-step table at the step count it reached. With `--amp` on
# a CPU with native bfloat16 kernels a step takes about half the time of a float32 one,
# so more steps fit ([notebook 92](92_training_fast_on_a_cpu.ipynb) has the figures).
# The curve flattens at the end as the cosine comes down, but the network is far from
# trained: the run is limited by its budget.
#
# **`gpu`** (300 epochs at 416 px on one GPU, a few hours):
# not run for this course, so no figure is promised; expect the class gap of section
# 6 to close and AP50 to rise far above the `cpu` run. On COCO, Darknet's YOLOv3-tiny
# reaches an AP50 of 0.331 at 416 px (test-dev, <https://pjreddie.com/darknet/yolo/>).

# %% [markdown]
# ## Recap
#
# - A schedule is every number of a run. For a fixed time budget, plan it in
#   iterations and let the cosine end at the last one; keep a time guard.
# - On a CPU budget, steps are what count. Judge a recipe by what it learns from a
#   number of steps (AP50 after 500 steps hardly depends on the CPU) and its cost by
#   the time of a step, which does.
# - `detutils.engine.train` trains any detector of the course; `evaluate` gives COCO
#   AP (pycocotools) overall, by size and by class.
# - A young YOLOv3 finds objects before it can name them: scoring with the classes
#   merged shows how much AP the class term still owes.
#
# ## Exercises
#
# The exercises need a trained network, `exercise_model`. If you ran the lesson, the
# cell below loads the network of its run. To do them without the lesson's ten-minute
# run, execute the set-up, import and data cells of section 2 (`root`, `train_set`,
# `val_set`, `schedule`), then the cell below: it trains YOLOv3-tiny for 45 seconds the
# first time (a network that has only started to learn, so expect small numbers) and
# loads the stored network after.

# %%
# NBVAL_IGNORE_OUTPUT
lesson_run = root.parents[1] / "runs" / "13_yolov3_tiny"  # the lesson's run, if it finished
exercise_model = exercise_network("yolov3-tiny", root, lesson_run=lesson_run)

# %% [markdown]
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** Write the `cpu` schedule's learning rate by hand, as a function
# `factor_by_hand(iteration)` that returns the fraction of `cpu.lr` at that iteration:
# a linear warm-up from 1 % of `lr` at iteration 0 towards `lr` at iteration 62 (half
# an epoch of 125 steps, rounded), then a cosine
# `final + (1 - final) (1 + cos(pi t)) / 2`, with `t` going from 0 at iteration 62 to 1
# at the last iteration, 499. The check compares it with `lr_factor`, the function the
# trainer's scheduler calls.

# %% tags=["solution"]
cpu = schedules_for("yolov3-tiny")["cpu"]
warmup, total, final = 62, cpu.iterations, cpu.final_lr_fraction
factor_by_hand = None  # your function (iteration: int) -> float, a fraction of cpu.lr
### BEGIN SOLUTION


def factor_by_hand(iteration: int) -> float:
    if iteration < warmup:
        return 0.01 + 0.99 * iteration / warmup
    t = (iteration - warmup) / (total - 1 - warmup)
    return final + (1 - final) * (1 + math.cos(math.pi * t)) / 2


### END SOLUTION
if factor_by_hand is not None:
    for iteration in (0, 31, 62, 450, total - 1):
        print(f"iteration {iteration:3d}: learning rate {cpu.lr * factor_by_hand(iteration):.4g}")

# %% tags=["check"]
check_function(
    "factor_by_hand", factor_by_hand, [(0,), (31,), (62,), (450,), (total - 1,)],
    lambda iteration: lr_factor(iteration, total, cpu, warmup),
    hint="below iteration 62: 0.01 + 0.99 * iteration / 62 (0.505 at 31); from 62 on: "
    "t = (iteration - 62) / (499 - 62), then the cosine, which gives 1 at 62 and "
    "final = cpu.final_lr_fraction (0.01) at 499.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "factor_by_hand", factor_by_hand, [(iteration,) for iteration in range(0, total, 7)],
    lambda iteration: lr_factor(iteration, total, cpu, warmup),
    hint="every iteration of the run, not only the five shown",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** Notebook 11 showed that a box whose shape matches no anchor (wh-IoU
# at most `iou_t`) gets no positive at all. At the schedule's image size, which boxes of
# the first 64 validation images get none? With `build_yolov3_targets` and the anchors,
# strides and `iou_t` of `exercise_model`, set `has_positive` `(B, M)` (B = 64 images,
# M boxes per image, padded): True where box m of image b is a positive of at least
# one (layer, anchor, cell), False for the others and for the padding. The cell then
# counts the boxes with and without a positive per COCO size bin (area below 32², up to
# 96², above, in the pixels of the network input).

# %% tags=["solution"]
# NBVAL_IGNORE_OUTPUT
# (the counts depend on the schedule's image size)
targets = [val_set[index][1] for index in range(64)]
gt_boxes, gt_labels, gt_mask = pad_ground_truth(targets)  # (B, M, 4), (B, M), (B, M)
has_positive = None  # (B, M) bool
### BEGIN SOLUTION
size, strides = schedule.img_size, exercise_model.strides
layer_targets = build_yolov3_targets(
    gt_boxes,
    gt_labels,
    gt_mask,
    anchors=[head.anchors.cpu() for head in exercise_model.heads],
    strides=strides,
    feature_sizes=[(size // stride, size // stride) for stride in strides],
    iou_t=exercise_model.config.iou_t,
)
has_positive = torch.zeros_like(gt_mask)  # (B, M)
for layer in layer_targets:
    has_positive[layer.image, layer.gt_index] = True
### END SOLUTION
if has_positive is not None:
    areas = box_ops.box_area(gt_boxes)[gt_mask]  # (N,) the N real boxes
    bins = pd.cut(areas.numpy(), [0, 32**2, 96**2, math.inf], labels=["small", "medium", "large"])
    positive = torch.as_tensor(has_positive)[gt_mask].numpy()
    print(pd.crosstab(pd.Series(bins, name="size"), pd.Series(positive, name="positive")))

# %% tags=["check"]
# A box has a positive when some anchor of some layer has a wh-IoU above iou_t with it
# (notebook 11); its cell always exists, so only the shape decides.
anchor_wh = torch.cat([head.anchors.cpu() for head in exercise_model.heads])  # (L K, 2) px
box_wh = (gt_boxes[..., 2:] - gt_boxes[..., :2]).reshape(-1, 2)  # (B M, 2) px
best_iou = wh_iou(anchor_wh, box_wh).amax(dim=0).reshape(gt_mask.shape)  # (B, M)
check_equal(
    "has_positive", has_positive, (best_iou > exercise_model.config.iou_t) & gt_mask,
    hint="start from torch.zeros_like(gt_mask) and set True at [layer.image, "
    "layer.gt_index] for every layer that build_yolov3_targets returns; anchors in "
    "pixels: [head.anchors for head in exercise_model.heads], strides "
    "exercise_model.strides, feature sizes img_size // stride.",
)  # fmt: skip
without = gt_mask & ~torch.as_tensor(has_positive).bool()  # (B, M) real boxes, no positive
check_true(
    bool((box_ops.box_area(gt_boxes)[without] < 32**2).all()),
    "every box without a positive should be small (area below 32² px).",
    hint="a box too small for the smallest anchor matches none; large boxes match one",
)
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** Among the validation boxes that some detection with a score of at
# least 0.01 overlaps at IoU ≥ 0.5, how often does the best-scoring such detection
# carry the right class? (A network trained for 45 seconds is not yet sure of
# anything: its scores stay low, hence the low threshold.) The answer cell starts from
# `samples`, the first 32 validation images with their targets, and `detections`, what
# `exercise_model` finds on them (score ≥ 0.01, at most 100 per image). With
# `box_ops.box_iou`, count `located` (int), the boxes that some detection, of any
# class, overlaps at IoU ≥ 0.5, and `correct` (int), those whose best-scoring
# overlapping detection has the box's class.

# %% tags=["solution"]
# NBVAL_IGNORE_OUTPUT
# (the detections of the exercise network)
samples = [val_set[index] for index in range(32)]
with torch.no_grad():
    detections = [
        found
        for first in range(0, 32, 16)
        for found in exercise_model.predict(
            exercise_model(torch.stack([image for image, _ in samples[first : first + 16]])),
            score_thr=0.01, iou_thr=0.6, max_det=100,
        )
    ]  # fmt: skip
located = correct = None  # int each
### BEGIN SOLUTION
located = correct = 0
for (_, target), found in zip(samples, detections, strict=True):
    iou = box_ops.box_iou(target["boxes"], found["boxes"])  # (M, N)
    scores = torch.where(iou >= 0.5, found["scores"], -1.0)  # (M, N)
    if scores.numel() == 0:
        continue
    best = scores.argmax(dim=1)  # (M,)
    hit = scores.max(dim=1).values >= 0  # (M,)
    located += int(hit.sum())
    correct += int((found["labels"][best] == target["labels"])[hit].sum())
### END SOLUTION
if located is not None and correct is not None:
    accuracy = correct / located if located else math.nan
    print(f"{located} boxes located, {correct} with the right class ({accuracy:.4f})")

# %% tags=["check"]
check_true(
    located is not None and correct is not None,
    "`located` and `correct` are still None: assign the two counts (ints) to them.",
    hint="loop over zip(samples, detections); box_ops.box_iou(target['boxes'], "
    "found['boxes']) is (M, N), one row per ground-truth box.",
)
overlaps = [
    box_ops.box_iou(target["boxes"], found["boxes"]) >= 0.5  # (M, N)
    for (_, target), found in zip(samples, detections, strict=True)
]
check_equal(
    "located", int(located), sum(int(overlap.any(dim=1).sum()) for overlap in overlaps),
    hint="a box is located when at least one detection, whatever its class, has an IoU "
    "of at least 0.5 with it: count the rows of (iou >= 0.5) that hold a True.",
)  # fmt: skip
check_true(
    0 <= correct <= located,
    f"`correct` ({correct}) should lie between 0 and `located` ({located}).",
    hint="count only located boxes, and among them those whose best-scoring overlapping "
    "detection (scores masked with iou >= 0.5, then argmax) has the box's label.",
)
### BEGIN HIDDEN TESTS
expected_correct = 0
for (_, target), found in zip(samples, detections, strict=True):
    if len(found["boxes"]) == 0:
        continue
    order = found["scores"].argsort(descending=True, stable=True)  # detections by score
    overlap = box_ops.box_iou(target["boxes"], found["boxes"][order]) >= 0.5  # (M, N)
    first = overlap.int().argmax(dim=1)  # (M,) the best-scoring overlapping detection
    right = found["labels"][order][first] == target["labels"]  # (M,)
    expected_correct += int((right & overlap.any(dim=1)).sum())
check_equal(
    "correct", int(correct), expected_correct,
    hint="the best-scoring detection among those at IoU >= 0.5 decides the class",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 3")

# %% [markdown]
# ## Further reading
#
# - J. Redmon, A. Farhadi, *YOLOv3: An Incremental Improvement*, 2018,
#   <https://arxiv.org/abs/1804.02767>
# - ultralytics/yolov3, archive branch: `train.py` (the `hyp` dictionary, warm-up,
#   cosine schedule, EMA) and `test.py` (mAP):
#   <https://github.com/ultralytics/yolov3/tree/archive>
# - T.-Y. Lin et al., *Microsoft COCO: Common Objects in Context*, ECCV 2014, and the
#   COCO detection evaluation: <https://cocodataset.org/#detection-eval>
# - I. Loshchilov, F. Hutter, *Decoupled Weight Decay Regularization* (AdamW), ICLR
#   2019, <https://arxiv.org/abs/1711.05101>; *SGDR: Stochastic Gradient Descent with
#   Warm Restarts* (the cosine schedule), ICLR 2017, <https://arxiv.org/abs/1608.03983>
# - P. Goyal et al., *Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour*
#   (linear warm-up), 2017, <https://arxiv.org/abs/1706.02677>
