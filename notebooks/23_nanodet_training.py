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
# # 23 · NanoDet: training NanoDet-m on the shapes set
#
# Notebooks 20 to 22 took NanoDet apart: the ShuffleNetV2 + PAN + GFL head network, the
# ATSS assigner on its grid cells, and the quality focal, distribution focal and GIoU
# losses. This notebook trains NanoDet-m from scratch on the shapes set with the
# course's engine, on a schedule sized for ten minutes of a laptop CPU, and measures it
# with COCO mAP. It then checks the promise of the quality focal loss: a trained
# NanoDet's class score should rise with the IoU of its box.
#
# **Learning goals**
#
# 1. Read NanoDet-m's three schedules and say why the `cpu` one differs from the
#    reference's recipe.
# 2. Train with `detutils.engine.train`; read the QFL, GIoU and DFL curves.
# 3. Read the COCO mAP table, overall, by size, by class and with the classes merged.
# 4. Measure how well the class score of each positive predicts the IoU of its box,
#    before and after training.
#
# **Prerequisites**: notebooks 20 (outputs), 21 (ATSS), 22 (GFL losses); notebook 13
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
import copy
import math
import time

import matplotlib.pyplot as plt
import pandas as pd
import torch
from torch.utils.data import DataLoader

from detutils import boxes as box_ops
from detutils import current_schedule
from detutils.assigners import assign_atss, assign_atss_batched, pad_ground_truth
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
from detutils.engine import evaluate, plot_training_log, read_training_log, train
from detutils.engine.presets import nanodet_schedules
from detutils.models import build_detector
from detutils.viz import compare_detections

# %% [markdown]
# ## 1. Three schedules
#
# NanoDet-m's config carries a `TrainSchedule` per schedule name; `DETUTILS_SCHEDULE`
# picks one (notebook 00). The fields where they differ:

# %%
schedules = nanodet_schedules()
table = pd.DataFrame({name: schedule.to_dict() for name, schedule in schedules.items()})
table[table.astype(str).nunique(axis=1) > 1]

# %% [markdown]
# - **`gpu`** follows the recipe of NanoDet's `config/nanodet-m.yml` where the course's
#   trainer can; the table below sets them side by side and shows where they differ.
# - **`cpu`** has ten minutes of a 2-core CPU, evaluation included, and is designed for
#   float32, the arithmetic every CPU has: 500 steps of 16 images at 384 px (four
#   passes over the 2,000 training images), AdamW at 0.008 after half an epoch of
#   warm-up, a cosine planned in iterations (notebook 13, section 1). NanoDet-m's steps
#   are cheap, so it can afford images larger than the set's 320 px: enlarged, the
#   smallest shapes cover more cells of the stride-8 level. What each choice buys was
#   measured in steps, not minutes, with `benchmarks/sample_efficiency.py` (AP50 after
#   500 steps, which hardly depends on the CPU): at 320 px the same 500 steps scored 0.39; at
#   320 px with lr 0.004, 0.37; at 320 px with an exponential moving average of the
#   weights, 0.38. Section 8 has the curve of the recipe as it is.
#   As for YOLOv3-tiny, the weights are laid out channels-last (`channels_last`), the
#   training images are decoded into memory once, and `max_minutes` with `lr_by_time`
#   ends the cosine at the deadline on a slower machine. Unlike YOLOv3-tiny and YOLOv8n,
#   NanoDet-m gains nothing from bfloat16 (`amp`): its depthwise convolutions wait on
#   memory, not on arithmetic. These choices (bfloat16 and native kernels,
#   channels-last, the time-driven learning rate, images decoded once) are explained and
#   measured in [notebook 92](92_training_fast_on_a_cpu.ipynb).
# - **`ci`** only checks that everything runs: three steps of four 64 px images.

#
# NanoDet's recipe (`config/legacy_v0.x_configs/nanodet-m.yml`, the config of the
# NanoDet-m of its README), the `gpu` schedule and the `cpu` one, side by side; the two
# course columns are read from the schedules:

# %%
reference = {
    "optimizer": "SGD, momentum 0.9 (not Nesterov)",
    "learning rate": "0.14",
    "weight decay": "0.0001",
    "images per step": "192",
    "length": "280 epochs",
    "image size": "320 px",
    "warm-up": "300 steps from 0.1 lr",
    "decay": "x 0.1 at epochs 240, 260, 275",
    "EMA of the weights": "no",
    "mixed precision": "no (float32)",
    "augmentation": "flip, scale 0.6 to 1.4, translate 0.2, brightness, contrast, saturation",
    "gradient clipping": "norm 35",
    "time guard": "none",
    "initial weights": "ShuffleNetV2 1.0x trained on ImageNet",
}
recipes = pd.DataFrame(
    {
        "reference": reference,
        "gpu": nanodet_schedules()["gpu"].recipe() | {"initial weights": "random"},
        "cpu": nanodet_schedules()["cpu"].recipe() | {"initial weights": "random"},
    }
)
recipes

# %% [markdown]
# ## 2. Data and model

# %%
# NBVAL_IGNORE_OUTPUT
# (prints a line only on the first run, while the set is written)
root = ensure_shapes()

# %%
schedule_name = current_schedule()
schedule = nanodet_schedules()[schedule_name]
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
model = build_detector("nanodet-m", num_classes=train_set.num_classes)
untrained = build_detector("nanodet-m", num_classes=train_set.num_classes)
untrained.load_state_dict(model.state_dict())  # kept for section 6
print(
    f"schedule {schedule_name}: {schedule.iterations} iterations of {schedule.batch_size} "
    f"images at {schedule.img_size} px, {schedule.optimizer} lr {schedule.lr}"
)
print(f"{sum(p.numel() for p in model.parameters()):,} parameters")

# %% [markdown]
# ## 3. Training
#
# The same loop as every detector of the course (`detutils.engine.train`), with
# NanoDet's `loss` (notebook 22). The command line does the same:
#
# ```
# python -m detutils.train --model nanodet-m --data data/shapes --schedule cpu
# ```

# %%
# NBVAL_IGNORE_OUTPUT
# (a training log: its timings and losses depend on the schedule and the machine)
run_dir = root.parents[1] / "runs" / "23_nanodet_m"
start = time.monotonic()
result = train(model, train_data, schedule, out_dir=run_dir, device=str(device), progress=False)
minutes = (time.monotonic() - start) / 60
print(f"{result.iterations} iterations in {minutes:.1f} min, out of time: {result.out_of_time}")
model = result.model.eval()

# %% [markdown]
# ## 4. Loss curves
#
# Left: QFL, GIoU (`bbox`) and DFL with NanoDet-m's weights (1, 2, 0.25), and their
# sum; right: the learning rate.

# %%
# NBVAL_IGNORE_OUTPUT
# (the curves of this run)
train_log, _ = read_training_log(run_dir)
figure = plot_training_log(run_dir, smooth=max(1, len(train_log) // 20))
plt.show()
fifth = max(1, len(train_log) // 5)
first, last = train_log.iloc[:fifth], train_log.iloc[-fifth:]
pd.DataFrame({"first fifth": first.mean(), "last fifth": last.mean()}).loc[
    ["qfl", "bbox", "dfl", "loss"]
]

# %% [markdown]
# The GIoU and DFL terms are weighted by the positives' best class score and normalised
# by the sum of those weights (notebook 22): they measure the boxes of the priors the
# network already believes in. The QFL term is normalised by the number of positives
# and its targets are the IoUs of the predicted boxes, so, as with YOLOv8's class term,
# it chases a target that grows while the boxes improve.
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
# ## 6. Does the score know the IoU?
#
# The quality focal loss trains the class score of a positive towards the IoU of its
# predicted box, not towards 1 (notebook 22). If it worked, a detection's score is
# also an estimate of how well it is located, and NMS, which keeps the highest score,
# keeps the best box. Take the positives that ATSS gives the first 16 validation
# images, and compare each one's score for its box's class with the IoU of its
# predicted box, before and after training.

# %%
images, targets = next(iter(DataLoader(val_set, batch_size=16, collate_fn=collate)))


def score_and_iou(detector) -> pd.DataFrame:
    """Per positive prior: its class score and the IoU of its predicted box."""
    with torch.no_grad():
        outputs = detector.to(device).eval()(images.to(device))
        assignment, gt_boxes = detector.assign(outputs, targets)
        pred_boxes, scores = detector.decode(outputs)  # (B, A, 4) px, (B, A, C)
    image, prior = torch.nonzero(assignment.gt_index >= 0, as_tuple=True)  # (P,), (P,)
    gt = gt_boxes[image, assignment.gt_index[image, prior]]  # (P, 4)
    iou = box_ops.box_iou_aligned(pred_boxes[image, prior], gt)  # (P,)
    score = scores[image, prior, assignment.labels[image, prior]]  # (P,)
    return pd.DataFrame({"score": score.cpu().numpy(), "iou": iou.cpu().numpy()})


# %%
# NBVAL_IGNORE_OUTPUT
# (depends on the trained weights of this run)
pairs = {"untrained": score_and_iou(untrained), "trained": score_and_iou(model)}
figure, axes = plt.subplots(1, 2, figsize=(8, 3.6), sharex=True, sharey=True)
for ax, (name, frame) in zip(axes, pairs.items(), strict=True):
    ax.scatter(frame["iou"], frame["score"], s=4, alpha=0.5)
    ax.plot([0, 1], [0, 1], color="gray", linewidth=0.8)
    ax.set(xlabel="IoU of the predicted box", ylabel="class score", title=name)
figure.tight_layout()
plt.show()
pd.DataFrame(
    {
        name: {
            "positives": len(frame),
            "mean IoU": frame["iou"].mean(),
            "mean score": frame["score"].mean(),
            "correlation": frame["score"].corr(frame["iou"]),
        }
        for name, frame in pairs.items()
    }
).round(4)

# %% [markdown]
# Untrained, every score sits at 0.01 (the prior-probability bias of notebook 20)
# whatever the box: the scores of the positives are equal to float32 precision, so
# their correlation with the IoU is undefined, which pandas prints as NaN. After the
# `cpu` run the scores spread out and follow the IoU: the correlation is clearly
# positive, and the scores lie below the diagonal, since a ten-minute network is not
# yet sure of its classes. With a plain one-hot target
# (focal loss, as in ATSS or RetinaNet) nothing would tie the two; GFL's paper
# measures this correlation on COCO to make the same point.
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
# **Per step, on any CPU.** `benchmarks/sample_efficiency.py --models nanodet-m` trains
# NanoDet-m on its `cpu` schedule in float32 for exactly 500 steps, keeps its weights
# every 100 steps and scores them on the 500 validation images. AP50 after a number of
# steps hardly depends on the CPU (float32 sums taken in another order move it by a
# few thousandths):
#
# | AP50 after | 100 | 200 | 300 | 400 | 500 | AP @500 |
# | --- | --- | --- | --- | --- | --- | --- |
# | NanoDet-m | 0.093 | 0.205 | 0.290 | 0.383 | 0.417 | 0.323 |
#
# What the CPU changes is the time of a step: 0.97 s on a 2-core AMD EPYC with AVX2
# and no native bfloat16 (2 threads, float32, data loading included); the whole
# benchmark run, with its five evaluations, took 10.8 minutes.
#
# **In ten minutes, on one CPU.** The run whose outputs this notebook stores, the
# schedule as it is (float32, 2 torch threads, nothing else running), on a 2-core AMD
# EPYC with AVX-512, at 1.1 s a step (the time guard ended it after 479 steps):
#
# | run | steps | minutes | AP | AP50 | AP75 | APs | APm | APl |
# | --- | --- | --- | --- | --- | --- | --- | --- | --- |
# | this notebook | 479 | 8.8 training | 0.312 | 0.403 | 0.348 | 0.153 | 0.425 | 0.414 |
#
# A slower CPU fits fewer steps before the time guard (8.75 minutes) ends the run, and
# scores lower: read the per-step table at the step count it reached. A ten-minute
# NanoDet-m is far from trained: the loss is still falling when the budget ends
# (section 4).
#
# **`gpu`** (280 epochs): not run for this course, so no figure is promised. For scale,
# NanoDet's README gives NanoDet-m 20.6 AP on COCO val2017 at 320 px, trained from an
# ImageNet-pretrained backbone, which this schedule does not have.

# %% [markdown]
# ## Recap
#
# - The `cpu` schedule keeps NanoDet's network, assigner and losses and changes only
#   how it is optimised: AdamW, a short warm-up, a cosine planned in iterations, and
#   384 px images, which NanoDet-m's cheap steps can afford.
# - The quality focal loss makes the class score an estimate of the box's IoU; the
#   correlation is measurable after minutes of training.
# - `evaluate(..., class_agnostic=True)` tells localisation from naming.
#
# ## Exercises
#
# The exercises need a trained network, `exercise_model`. If you ran the lesson, the
# cell below loads the network of its run. To do them without the lesson's ten-minute
# run, execute the set-up, import and data cells of section 2 (`root`, `train_set`,
# `val_set`, `schedule`), then the cell below: it trains NanoDet-m for 45 seconds the
# first time (a network that has only started to learn, so expect small numbers) and
# loads the stored network after.

# %%
# NBVAL_IGNORE_OUTPUT
lesson_run = root.parents[1] / "runs" / "23_nanodet_m"  # the lesson's run, if it finished
exercise_model = exercise_network("nanodet-m", root, lesson_run=lesson_run)

# %% [markdown]
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** ATSS looks at geometry only, so a box's positives do not change as
# the network trains (unlike YOLOv8's, notebook 33). At the `cpu` schedule's image
# size, count the positives of every box of the first 64 validation images with
# `assign_atss_batched` on NanoDet's grid cells (`cells`, `num_per_level`, given):
# set `positives` `(B, M)` (B = 64 images, M boxes per image, padded), the number of
# grid cells that learn box m of image b, 0 for the padding. The cell then tabulates
# them by COCO size bin (areas in pixels of the network input) and counts the boxes
# with none.

# %% tags=["solution"]
size = nanodet_schedules()["cpu"].img_size
sized = CocoDetection(*find_split(root, "val"), transforms=build_transforms(size, False))
gt_boxes, gt_labels, gt_mask = pad_ground_truth([sized[index][1] for index in range(64)])
feature_sizes = [(size // stride, size // stride) for stride in exercise_model.config.strides]
cells, num_per_level, _ = exercise_model.priors(feature_sizes, torch.device("cpu"))  # (A, 4)
positives = None  # (B, M) long
### BEGIN SOLUTION
assignment = assign_atss_batched(cells, num_per_level, gt_boxes, gt_labels, gt_mask)
positives = torch.zeros_like(gt_mask, dtype=torch.long)  # (B, M)
for image in range(len(positives)):
    indices = assignment.gt_index[image][assignment.gt_index[image] >= 0]
    positives[image] += torch.bincount(indices, minlength=positives.shape[1])
### END SOLUTION
print(f"{len(cells)} grid cells at {size} px")
if positives is not None:
    frame = pd.DataFrame(
        {
            "area": box_ops.box_area(gt_boxes)[gt_mask].numpy(),
            "positives": torch.as_tensor(positives)[gt_mask].numpy(),
        }
    )
    bins = [0, 32**2, 96**2, math.inf]
    frame["size"] = pd.cut(frame["area"], bins, labels=["small", "medium", "large"])
    summary = frame.groupby("size", observed=True)["positives"].agg(
        boxes="count", mean="mean", none=lambda n: int((n == 0).sum())
    )
    print(summary.round(4))

# %% tags=["check"]
# assign_atss, image by image, gives the same assignment as the batched function.
expected = torch.zeros_like(gt_mask, dtype=torch.long)  # (B, M)
for image in range(len(gt_mask)):
    real = gt_mask[image]  # (M,)
    result = assign_atss(cells, num_per_level, gt_boxes[image][real], gt_labels[image][real])
    claimed = result.gt_index[result.gt_index >= 0]  # (P,) the box of each positive
    expected[image, real] = torch.bincount(claimed, minlength=int(real.sum()))
check_equal(
    "positives", positives, expected,
    hint="assignment.gt_index is (B, A): the box each cell learns, -1 for the "
    "background; per image, torch.bincount of its entries >= 0 with minlength M.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
batched = assign_atss_batched(cells, num_per_level, gt_boxes, gt_labels, gt_mask)
check_equal(
    "the sum of positives", int(torch.as_tensor(positives).sum()),
    int((batched.gt_index >= 0).sum()),
    hint="each positive cell learns one box: the counts add up to the positive cells",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 1")

# %% [markdown]
# Exercises 2 and 3 look at the positives of the first 16 validation images, at the
# schedule's image size (`images`, `targets`), under `exercise_model` and under the same
# network untrained (`untrained`). `positives_of(detector)` gives, for each of the P
# positives, its class score for its box's class, the IoU of its predicted box with its
# box, and an id of its box, unique over the 16 images.


# %%
images, targets = next(iter(DataLoader(val_set, batch_size=16, collate_fn=collate)))
torch.manual_seed(0)
untrained = build_detector("nanodet-m", num_classes=train_set.num_classes).eval()


def positives_of(detector) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per positive prior of ``images``: score (P,), IoU (P,) and box id (P,)."""
    with torch.no_grad():
        outputs = detector.eval()(images)
        assignment, gt_boxes = detector.assign(outputs, targets)
        pred_boxes, scores = detector.decode(outputs)  # (B, A, 4) px, (B, A, C)
    image, prior = torch.nonzero(assignment.gt_index >= 0, as_tuple=True)  # (P,), (P,)
    box = assignment.gt_index[image, prior]  # (P,)
    iou = box_ops.box_iou_aligned(pred_boxes[image, prior], gt_boxes[image, box])  # (P,)
    score = scores[image, prior, assignment.labels[image, prior]]  # (P,)
    return score, iou, image * gt_boxes.shape[1] + box


# %% [markdown]
# **Exercise 2.** The distribution focal loss makes each side's distance a
# distribution over R + 1 = 8 bins (notebook 22). How sharp are the trained
# distributions? Write `sharpness(detector)`: for the positives of `images` (ATSS,
# `detector.assign`), the largest bin probability of each side's distribution (a
# softmax over the 8 bins of that side; `detector.flatten` gives the distribution
# logits `(B, A, 4 (R + 1))`), averaged over the positives and their four sides. The
# cell compares it before and after training with a uniform distribution (1/8).


# %% tags=["solution"]
# NBVAL_IGNORE_OUTPUT
# (depends on the weights of the exercise network)
sharpness = None  # your function (detector) -> float
### BEGIN SOLUTION


def sharpness(detector) -> float:
    with torch.no_grad():
        outputs = detector.eval()(images)
        assignment, _ = detector.assign(outputs, targets)
        _, dist_logits = detector.flatten(outputs)  # (B, A, 4 (R + 1))
    positive = assignment.gt_index >= 0  # (B, A)
    bins = detector.config.reg_max + 1
    probabilities = dist_logits[positive].reshape(-1, 4, bins).softmax(dim=-1)  # (P, 4, R + 1)
    return probabilities.amax(dim=-1).mean().item()


### END SOLUTION
if sharpness is not None:
    table = {"uniform": 1 / 8, "untrained": sharpness(untrained)}
    print(pd.Series(table | {"trained": sharpness(exercise_model)}).round(4))


# %% tags=["check"]
def with_distributions(detector, bias: float):
    """A copy of ``detector`` whose every distribution logit is 0, but ``bias`` on bin 0."""
    copied = copy.deepcopy(detector)
    num_classes, bins = copied.config.num_classes, copied.config.reg_max + 1
    with torch.no_grad():
        for conv in copied.head.gfl_cls:  # NanoDet-m: classes, then 4 (R + 1) channels
            conv.weight[num_classes:] = 0.0
            conv.bias[num_classes:] = 0.0
            conv.bias[num_classes::bins] = bias  # bin 0 of each side
    return copied


check_true(
    callable(sharpness),
    "`sharpness` is still None (or not a function): define sharpness(detector).",
    hint="positives: assignment.gt_index >= 0 with assignment, _ = detector.assign(...)",
)
check_close(
    "sharpness of a network whose distributions are all uniform",
    sharpness(with_distributions(exercise_model, 0.0)), 1 / 8,
    hint="a softmax over the R + 1 = 8 bins of one side: reshape the positives' logits "
    "to (P, 4, 8) and take softmax(dim=-1), then the largest probability (amax(dim=-1)) "
    "and its mean; a softmax over all 32 logits would give 1/32.",
)  # fmt: skip
value = sharpness(exercise_model)
check_true(
    isinstance(value, float | int | torch.Tensor) and 1 / 8 <= float(value) <= 1,
    f"sharpness(exercise_model) should be a number between 1/8 and 1, got {value!r}.",
    hint="the largest of 8 probabilities that sum to 1 lies between 1/8 and 1",
)
### BEGIN HIDDEN TESTS
check_close(
    "sharpness of a network whose distributions all peak on one bin",
    sharpness(with_distributions(exercise_model, 30.0)), 1.0,
    hint="one logit 30 above the others: its probability is 1 to float32 precision",
)  # fmt: skip
with torch.no_grad():
    outputs = exercise_model(images)
    assignment, _ = exercise_model.assign(outputs, targets)
    _, dist_logits = exercise_model.flatten(outputs)  # (B, A, 4 (R + 1))
side_logits = dist_logits[assignment.gt_index >= 0].unflatten(-1, (4, -1))  # (P, 4, R + 1)
check_close(
    "sharpness(exercise_model)", value, side_logits.softmax(dim=-1).amax(dim=-1).mean(),
    hint="the mean, over the positives and their 4 sides, of the largest bin probability",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** NMS keeps the highest-scoring box of a cluster. For each box of the 16
# images, take all positives that predict it, and check how often the positive with the
# highest score is also the one with the highest IoU. Write
# `best_score_is_best_box(score, iou, box)`, three `(P,)` tensors as `positives_of`
# returns them, that gives a pair of numbers `(agree, chance)`, over the boxes with at
# least two positives: `agree`, the fraction of those boxes whose best-scoring positive
# is also their best box (highest IoU); `chance`, the mean of 1 / (the box's number of
# positives), how often a positive picked at random would be the best one. The cell
# applies it before and after training.


# %% tags=["solution"]
# NBVAL_IGNORE_OUTPUT
# (depends on the weights of the exercise network)
best_score_is_best_box = None  # your function (score, iou, box), (P,) each -> (agree, chance)
### BEGIN SOLUTION


def best_score_is_best_box(score, iou, box) -> tuple[float, float]:
    agree = total = 0
    chance = 0.0
    for one_box in box.unique():
        mine = box == one_box  # (P,)
        if mine.sum() < 2:
            continue
        agree += int(score[mine].argmax() == iou[mine].argmax())
        chance += 1 / int(mine.sum())
        total += 1
    if total == 0:  # no box with two positives
        return math.nan, math.nan
    return agree / total, chance / total


### END SOLUTION
if best_score_is_best_box is not None:
    before, chance = best_score_is_best_box(*positives_of(untrained))
    after, _ = best_score_is_best_box(*positives_of(exercise_model))
    print(pd.Series({"untrained": before, "trained": after, "chance": chance}).round(4))

# %% tags=["check"]
# Box 0: positives 0 and 1, the first has the best score and the best IoU. Box 1:
# positives 2, 3, 4, best score at 3, best IoU at 4. Box 2 has one positive: left out.
# agree = 1 / 2; chance = (1 / 2 + 1 / 3) / 2 = 5 / 12.
case = (
    torch.tensor([0.9, 0.1, 0.2, 0.5, 0.3, 0.7]),  # score
    torch.tensor([0.8, 0.6, 0.3, 0.4, 0.9, 0.5]),  # iou
    torch.tensor([0, 0, 1, 1, 1, 2]),  # box
)
check_function(
    "best_score_is_best_box", best_score_is_best_box, [case], lambda *_: (1 / 2, 5 / 12),
    hint="group the positives by box (box.unique(), then box == b); skip a box with one "
    "positive; compare score[mine].argmax() with iou[mine].argmax(); chance adds 1 / n.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
# Box ids in any order, not from 0; a score equal to the IoU always picks the best box,
# a score of minus the IoU never does.
iou = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
box = torch.tensor([5, 2, 5, 2, 2, 9])
check_function(
    "best_score_is_best_box", best_score_is_best_box, [(iou, iou, box)],
    lambda *_: (1.0, 5 / 12), hint="score = IoU: the best score is the best box",
)  # fmt: skip
check_function(
    "best_score_is_best_box", best_score_is_best_box, [(-iou, iou, box)],
    lambda *_: (0.0, 5 / 12), hint="score = -IoU: the best score is the worst box",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 3")

# %% [markdown]
# Untrained, the positives' scores are equal to float32 precision (the prior of 0.01:
# section 6), so `argmax` in effect returns a box's first positive, the one of lowest
# index, on the finest level it has positives on. The untrained figure measures that
# tie-break, not the score: an untrained network predicts about the same box size on
# every point of a level, and the finest level's boxes happen to fit these shapes best
# more often than chance would. After training the ties are gone, but the highest
# score picks the best box hardly more often than a random positive would: 0.26 against
# a chance of 0.20 for the lesson's ten-minute network stored here, 0.15 for one
# 45-second network of the `cpu` schedule (a hundred-odd boxes make a noisy sample).
# Across boxes the score follows the IoU (section 6); among the handful of positives of
# one box, whose predicted boxes are all good and close in IoU, the scores of a network
# trained for minutes do not yet rank them.

# %% [markdown]
# ## Further reading
#
# - RangiLyu, *NanoDet*, 2020, <https://github.com/RangiLyu/nanodet>:
#   `config/nanodet-m.yml` (the training recipe).
# - X. Li et al., *Generalized Focal Loss: Learning Qualified and Distributed Bounding
#   Boxes for Dense Object Detection*, NeurIPS 2020, <https://arxiv.org/abs/2006.04388>
#   (the score-IoU correlation, its figure 2 and section 4).
# - S. Zhang et al., *Bridging the Gap Between Anchor-based and Anchor-free Detection
#   via Adaptive Training Sample Selection*, CVPR 2020, <https://arxiv.org/abs/1912.02424>
# - N. Ma et al., *ShuffleNet V2*, ECCV 2018, <https://arxiv.org/abs/1807.11164>
