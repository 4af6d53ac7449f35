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
# # 43 · ATSS: training on the shapes set, from a pre-trained backbone
#
# Notebooks 40 to 42 took ATSS apart: the ResNet + FPN + head network and its anchors,
# the ATSS assigner on anchor boxes, and the focal, GIoU and centerness losses. This
# notebook trains the CPU preset `atss-r18half-fpn64` with the course's engine, starting,
# as the reference starts from ImageNet weights, from the backbone the course
# pre-trained on the shapes set (notebook 04). It measures the result with COCO mAP,
# shows what the centerness branch does to the ranking of the detections, and runs the
# same training from a random backbone to show what the pre-training is worth.
#
# **Learning goals**
#
# 1. Read ATSS's three schedules beside mmdet's 1x recipe, and say what the `cpu` one
#    changes and why it starts from a pre-trained backbone.
# 2. Train with `detutils.engine.train`; read the focal, GIoU and centerness curves.
# 3. Read the COCO mAP table, overall, by size, by class and with the classes merged.
# 4. Measure what multiplying the class score by the centerness does to AP, and how well
#    the predicted centerness follows the quality of a box.
# 5. Compare the first hundred steps from the pre-trained and from a random backbone.
#
# **Prerequisites**: notebooks 40 (outputs), 41 (ATSS on anchors), 42 (losses), 04 (the
# pre-trained backbone); notebook 13 (planning a schedule for a time budget; the same
# engine and evaluation).
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
from torch.utils.data import DataLoader

from detutils import boxes as box_ops
from detutils import current_schedule
from detutils.assigners import assign_atss
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
from detutils.engine.presets import atss_schedules
from detutils.losses.atss import centerness_targets
from detutils.models import build_detector
from detutils.postprocess import select_dense_detections
from detutils.viz import compare_detections

# %% [markdown]
# ## 1. Three schedules
#
# ATSS's schedules, by name (`DETUTILS_SCHEDULE` picks one, notebook 00); the fields
# where they differ:

# %%
schedules = atss_schedules()
table = pd.DataFrame({name: schedule.to_dict() for name, schedule in schedules.items()})
table[table.astype(str).nunique(axis=1) > 1]

# %% [markdown]
# - **`gpu`** is mmdet's 1x schedule for `atss_r50_fpn_1x_coco` on the R50 build
#   (`atss-r50`): 12 epochs of SGD at 0.01 for 16 images a step, the rate divided by
#   10 after epochs 8 and 11, a linear warm-up over 500 steps from 0.001 of the rate
#   (`warmup_iterations`: mmdet counts its warm-up in steps, not epochs), no gradient
#   clipping, and ImageNet weights for the ResNet-50 with its stem and first stage
#   frozen and its batch norms fixed (`ATSSConfig.pretrained`, `frozen_stages`,
#   `norm_eval`; notebook 40). The table below shows where it differs.
# - **`cpu`** trains the preset `atss-r18half-fpn64` (a half-width ResNet-18, FPN and
#   head of 64 channels with two stacked convs: a quarter of a second's arithmetic per
#   image where the R50 build needs seconds) for 500 steps of 16 images at 320 px in
#   float32, AdamW at 0.002 after half an epoch of warm-up, a cosine planned in
#   iterations, flips and colour jitter, images decoded into memory once, channels-last
#   weights (notebook 92); a time guard of 18 minutes ends it on a slow machine. Its
#   backbone starts from the course's pre-training (notebook 04) and trains whole:
#   nothing frozen, batch norms updated, since a batch of 16 gives them good statistics.
# - **`ci`** only checks that everything runs: three steps of four 64 px images.
#
# mmdet's recipe (`configs/atss/atss_r50_fpn_1x_coco.py` with `schedule_1x.py` and
# `coco_detection.py`), the `gpu` schedule and the `cpu` one; the two course columns
# are read from the schedules:

# %%
reference = {
    "optimizer": "SGD, momentum 0.9 (not Nesterov)",
    "learning rate": "0.01",
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
# that `config.pretrained` names are loaded by the trainer when a new run starts, as
# mmdet's runner calls `init_weights` (notebook 04).

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
model = build_detector("atss-r18half-fpn64", num_classes=train_set.num_classes)
print(
    f"schedule {schedule_name}: {schedule.iterations} iterations of {schedule.batch_size} "
    f"images at {schedule.img_size} px, {schedule.optimizer} lr {schedule.lr}"
)
print(f"{sum(p.numel() for p in model.parameters()):,} parameters")
print(f"backbone weights to load: {model.config.pretrained}")

# %% [markdown]
# ## 3. Training
#
# The same loop as every detector of the course, with ATSS's `loss` (notebook 42). It
# keeps a copy of the network after 100 steps, for section 7. The command line does
# the same:
#
# ```
# python -m detutils.train --model atss-r18half-fpn64 --data data/shapes --schedule cpu
# ```

# %%
# NBVAL_IGNORE_OUTPUT
# (a training log: its timings and losses depend on the schedule and the machine)
early_step = min(100, schedule.iterations)
kept = {}


def keep_early(step: int, network: torch.nn.Module) -> None:
    if step == early_step:
        kept["pre-trained"] = copy.deepcopy(network).to(memory_format=torch.contiguous_format)


run_dir = root.parents[1] / "runs" / "43_atss"
start = time.monotonic()
result = train(
    model, train_data, schedule, out_dir=run_dir, device=str(device), progress=False,
    on_step=keep_early,
)  # fmt: skip
minutes = (time.monotonic() - start) / 60
print(f"{result.iterations} iterations in {minutes:.1f} min, out of time: {result.out_of_time}")
model = result.model.eval()

# %% [markdown]
# ## 4. Loss curves
#
# Left: the focal (`cls`), GIoU (`bbox`) and centerness terms with ATSS's weights (1, 2,
# 1), and their sum; right: the learning rate.

# %%
# NBVAL_IGNORE_OUTPUT
# (the curves of this run)
train_log, _ = read_training_log(run_dir)
figure = plot_training_log(run_dir, smooth=max(1, len(train_log) // 20))
plt.show()
fifth = max(1, len(train_log) // 5)
first, last = train_log.iloc[:fifth], train_log.iloc[-fifth:]
pd.DataFrame({"first fifth": first.mean(), "last fifth": last.mean()}).loc[
    ["cls", "bbox", "centerness", "loss"]
]

# %% [markdown]
# The centerness term cannot reach zero: it is a binary cross-entropy against targets
# between 0 and 1, whose floor is the entropy of the targets themselves (about 0.6 per
# positive for the centerness values ATSS's positives have). What falls is the gap to
# that floor. The GIoU term is weighted by the centerness targets, so it measures the
# boxes of the anchors near the objects' centres most.
#
# ## 5. COCO mAP
#
# `evaluate` runs the model over the validation images, maps the detections back to
# each image file and scores them with pycocotools (notebook 13, section 5). The `ci`
# run evaluates 16 images only. The second row scores boxes only: every class merged
# into one.

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
# ## 6. What centerness does at test time
#
# At test time ATSS ranks a detection by its class probability times its predicted
# centerness (notebook 40): a box predicted from the edge of an object, where the
# features see only part of it, should rank below the box of an anchor at its centre,
# so that NMS keeps the better one. Does it pay? Score the same network with the
# centerness replaced by 1 (a wrapper whose centerness logits are large), and see
# how well the predicted centerness follows the IoU of a positive's predicted box.


# %%
class ClassScoreOnly(torch.nn.Module):
    """The same detector, ranking its detections by the class probability alone."""

    def __init__(self, detector: torch.nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor):
        class_maps, delta_maps, centerness_maps = self.detector(images)
        ones = [torch.full_like(x, 30.0) for x in centerness_maps]  # sigmoid(30) = 1
        return class_maps, delta_maps, ones

    def predict(self, outputs, **settings):
        return self.detector.predict(outputs, **settings)


# %%
# NBVAL_IGNORE_OUTPUT
# (the metrics of this run)
without = evaluate(ClassScoreOnly(model), val_loader, device)
columns = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
pd.DataFrame(
    [evaluation.metrics, without.metrics],
    index=["class x centerness (ATSS)", "class score only"],
)[columns]

# %%
images, targets = next(iter(DataLoader(val_set, batch_size=16, collate_fn=collate)))


def centerness_and_iou(detector) -> pd.DataFrame:
    """Per positive anchor: its predicted centerness, its target, the IoU of its box."""
    with torch.no_grad():
        outputs = detector.to(device).eval()(images.to(device))
        assignment, gt_boxes = detector.assign(outputs, targets)
        pred_boxes, _, centerness = detector.decode(outputs)  # (B, A, 4), _, (B, A)
        anchors, _ = detector.anchors([tuple(x.shape[-2:]) for x in outputs[0]], device)
    image, anchor = torch.nonzero(assignment.gt_index >= 0, as_tuple=True)  # (P,), (P,)
    gt = gt_boxes[image, assignment.gt_index[image, anchor]]  # (P, 4)
    iou = box_ops.box_iou_aligned(pred_boxes[image, anchor], gt)  # (P,)
    target = centerness_targets(anchors[anchor], gt)  # (P,)
    return pd.DataFrame(
        {
            "centerness": centerness[image, anchor].cpu().numpy(),
            "target": target.cpu().numpy(),
            "iou": iou.cpu().numpy(),
        }
    )


# %%
# NBVAL_IGNORE_OUTPUT
# (depends on the trained weights of this run)
frame = centerness_and_iou(model)
figure, axes = plt.subplots(1, 2, figsize=(8, 3.6), sharey=True)
axes[0].scatter(frame["target"], frame["centerness"], s=4, alpha=0.5)
axes[0].plot([0, 1], [0, 1], color="gray", linewidth=0.8)
axes[0].set(xlabel="centerness target", ylabel="predicted centerness")
axes[1].scatter(frame["iou"], frame["centerness"], s=4, alpha=0.5)
axes[1].set(xlabel="IoU of the predicted box")
figure.tight_layout()
plt.show()
pd.Series(
    {
        "positives": len(frame),
        "corr(predicted, target)": frame["centerness"].corr(frame["target"]),
        "corr(predicted, IoU)": frame["centerness"].corr(frame["iou"]),
        "corr(target, IoU)": frame["target"].corr(frame["iou"]),
    }
).round(4)

# %% [markdown]
# The predicted centerness learns its target closely (left: a correlation of 0.89 in
# the stored run) and says a little about the quality of the box (right: 0.41 with the
# IoU, a bit more than the target itself, 0.36): anchors near an object's centre
# predict somewhat better boxes. What multiplying it in buys is small here: in the
# stored run AP rose by 0.001 and AP75 by 0.002, while AP50 fell by 0.009 (0.671 with
# the centerness, 0.680 without). On COCO, with networks trained for hours, the FCOS
# paper measured a clear gain (its table 4); after eight minutes the class scores are
# still coarse, and a second coarse factor mostly reshuffles detections of similar
# quality. Exercise 3 computes these differences from your own run.
#
# ## 7. Pre-trained or random backbone
#
# The same network, the same data and schedule, the first 100 steps, from the
# backbone of notebook 04 and from random weights (`pretrained=False`). The run of
# section 3 kept its network at step 100; the random one trains here (the `ci` run
# compares its third step).

# %%
# NBVAL_IGNORE_OUTPUT
# (a short training run of this machine)
torch.manual_seed(0)
random_start = build_detector("atss-r18half-fpn64", num_classes=train_set.num_classes)
short = schedule.replace(iterations=early_step)
short_result = train(
    random_start, train_data, short, device=str(device), progress=False, pretrained=False
)
kept["random"] = short_result.model.eval()
early = {name: evaluate(network, val_loader, device).metrics for name, network in kept.items()}
pd.DataFrame(early).T[columns]

# %% [markdown]
# After 100 steps (1,600 images, less than a pass over the training set) the network
# that starts from the pre-trained backbone already finds the shapes; from random
# weights the same steps teach it hardly anything yet. Section 8 gives both curves over
# 500 steps. The cosine of the short run ends at its step 100, which if anything helps
# the random start (its learning rate falls earlier).
#
# ## 8. Detections
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
# ## 9. What to expect
#
# **Per step, on any CPU, beside a peer.** `benchmarks/atss_peer.py` trains the preset on
# its `cpu` schedule in float32 for exactly 500 steps, keeps its weights every 100 steps
# and scores them on the 500 validation images; then it does the same for torchvision's
# FCOS (focal loss, GIoU and a centerness branch too, but positives chosen by fixed size
# ranges per level) built from the same parts: the same half-width ResNet-18 with the
# same pre-trained weights, an FPN of 64 channels with P6 and P7, a head of two stacked
# convs, on the same schedule and evaluator. Two seeds, on a 2-core AMD EPYC with
# AVX-512 (seed 0 alone on the machine, 2 threads; seed 1 with the two running side by
# side on one thread each):
#
# | AP50 after | 100 | 200 | 300 | 400 | 500 | AP @500 | AP75 @500 | APs @500 |
# | --- | --- | --- | --- | --- | --- | --- | --- | --- |
# | ATSS (the course), seed 0 | 0.240 | 0.447 | 0.557 | 0.650 | 0.671 | 0.535 | 0.598 | 0.264 |
# | torchvision FCOS, seed 0 | 0.228 | 0.448 | 0.557 | 0.658 | 0.685 | 0.516 | 0.593 | 0.275 |
# | ATSS (the course), seed 1 | 0.223 | 0.412 | 0.561 | 0.624 | 0.650 | 0.518 | | |
# | torchvision FCOS, seed 1 | 0.206 | 0.428 | 0.569 | 0.664 | 0.690 | 0.523 | | |
#
# The two learn at the same pace, and a step costs the same (0.99 s each, seed 0, data
# loading included). FCOS ends ahead in AP50 (by 0.014 and 0.040) and on small shapes;
# ATSS ends ahead at the strict thresholds and on medium and large shapes (AP 0.535
# against 0.516 with seed 0), and each seed moves AP50 by about 0.02. Anchors of 6
# strides instead of mmdet's 8 gave ATSS 0.678 (AP 0.541) with seed 0, anchors of 4
# strides 0.650: at 320 px the shapes are small for anchors sized for 800-px COCO
# images, but the course keeps the reference's 8.
#
# **In a quarter of an hour, on one CPU.** The run stored above, the schedule as it is
# (float32, 2 torch threads), on the same CPU; its minutes and metrics are printed in
# sections 3 and 5. A slower CPU takes longer per step; the time guard (18 minutes)
# ends the run early only on a CPU more than about twice as slow.
#
# **`gpu`** (mmdet's 1x on the R50 build): not run for this course, so no figure is
# promised. For scale, mmdet's model zoo gives `atss_r50_fpn_1x_coco` 39.4 box AP on
# COCO val2017, from ImageNet weights.

# %% [markdown]
# ## Recap
#
# - The `cpu` schedule keeps ATSS's assigner and losses, shrinks the network (half-width
#   ResNet-18, 64-channel FPN and head) and replaces ImageNet by the course's own
#   pre-training, then optimises as the other detectors' `cpu` schedules do.
# - The trainer loads `config.pretrained` at the start of a run; `pretrained=False`
#   starts from random weights, and on a CPU budget that costs most of the result.
# - Centerness is a learnt quality estimate: multiplied into the class score it ranks
#   central boxes first, and AP rises.
#
# ## Exercises
#
# The exercises need a trained network, `exercise_model`. If you ran the lesson, the
# cell below loads the network of its run. To do them without the lesson's run,
# execute the set-up, import and data cells of section 2 (`root`, `train_set`,
# `val_set`, `schedule`), then the cell below: it trains ATSS for 45 seconds the first
# time (a network that has only started to learn, so expect small numbers) and loads
# the stored network after.

# %%
# NBVAL_IGNORE_OUTPUT
lesson_run = root.parents[1] / "runs" / "43_atss"  # the lesson's run, if it finished
exercise_model = exercise_network("atss-r18half-fpn64", root, lesson_run=lesson_run)
images, targets = next(iter(DataLoader(val_set, batch_size=16, collate_fn=collate)))

# %% [markdown]
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** Which levels learn the shapes? For the 16 validation images `images`
# with their `targets`, count ATSS's positive anchors on each of the five levels: set
# `per_level`, a list of five ints (P3 to P7). `exercise_model.assign(outputs, targets)`
# returns the assignment and `exercise_model.anchors(sizes)` the number of anchors per
# level, in the flat order of notebook 40.

# %% tags=["solution"]
# NBVAL_IGNORE_OUTPUT
# (depends on the weights of the exercise network)
with torch.no_grad():
    outputs = exercise_model(images)
per_level = None  # list of 5 ints
### BEGIN SOLUTION
assignment, _ = exercise_model.assign(outputs, targets)
_, counts = exercise_model.anchors([tuple(x.shape[-2:]) for x in outputs[0]])
positive = (assignment.gt_index >= 0).sum(dim=0)  # (A,) positives per anchor over images
per_level = [int(part.sum()) for part in positive.split(counts)]
### END SOLUTION
if per_level is not None:
    print(dict(zip(["P3", "P4", "P5", "P6", "P7"], per_level, strict=True)))

# %% tags=["check"]
sizes = [tuple(x.shape[-2:]) for x in outputs[0]]
anchors, counts = exercise_model.anchors(sizes)
expected = [0] * len(counts)
for target in targets:
    result = assign_atss(anchors, counts, target["boxes"], target["labels"])
    for level, part in enumerate((result.gt_index >= 0).split(counts)):
        expected[level] += int(part.sum())
check_equal(
    "per_level", per_level, expected,
    hint="(assignment.gt_index >= 0) is (B, A); sum over the images, then split the A "
    "anchors by the counts of anchors() and sum each part",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_equal(
    "the total of per_level", sum(per_level), int((assignment.gt_index >= 0).sum()),
    hint="every positive anchor lies on exactly one level",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** mmdet thresholds the class probability alone (0.05) before it
# multiplies in the centerness; the original ATSS code thresholds the class score too.
# What if the threshold applied to the product instead? For the first image of
# `images`, set `kept_class`, the number of detections `select_dense_detections` keeps
# as ATSS does (`score_factors` the centerness; threshold 0.05 on the class score) and
# `kept_product`, the number it keeps when the threshold applies to the product (hint:
# give it the product as the scores and no factors). Use `exercise_model.decode`,
# which returns boxes, class probabilities and centerness, and `max_det=1000`.

# %% tags=["solution"]
# NBVAL_IGNORE_OUTPUT
# (depends on the weights of the exercise network)
kept_class = kept_product = None  # ints
### BEGIN SOLUTION
boxes, scores, centerness = exercise_model.decode(outputs)  # (B, A, 4), (B, A, C), (B, A)
_, counts = exercise_model.anchors([tuple(x.shape[-2:]) for x in outputs[0]])
kept_class = len(
    select_dense_detections(boxes[0], scores[0], counts, score_factors=centerness[0], max_det=1000)[
        "scores"
    ]
)
kept_product = len(
    select_dense_detections(boxes[0], scores[0] * centerness[0, :, None], counts, max_det=1000)[
        "scores"
    ]
)
### END SOLUTION
print(f"class threshold: {kept_class}, product threshold: {kept_product}")

# %% tags=["check"]
check_true(
    isinstance(kept_class, int) and isinstance(kept_product, int),
    f"kept_class and kept_product should be ints, got {kept_class!r} and {kept_product!r}",
    hint="len(select_dense_detections(...)['scores'])",
)
box_all, score_all, centre_all = exercise_model.decode(outputs)
_, counts = exercise_model.anchors([tuple(x.shape[-2:]) for x in outputs[0]])
reference = select_dense_detections(
    box_all[0], score_all[0], counts, score_factors=centre_all[0], max_det=1000
)
check_equal(
    "kept_class", kept_class, len(reference["scores"]),
    hint="ATSS's way: the class probabilities as scores, the centerness as score_factors",
)  # fmt: skip
check_true(
    kept_product <= kept_class,
    f"kept_product ({kept_product}) should be at most kept_class ({kept_class}): a "
    "centerness below 1 can only push a score under the threshold",
    hint="scores[0] * centerness[0, :, None] as the scores, no score_factors",
)
### BEGIN HIDDEN TESTS
product = select_dense_detections(
    box_all[0], score_all[0] * centre_all[0, :, None], counts, max_det=1000
)
check_equal("kept_product", kept_product, len(product["scores"]), hint="see above")
### END HIDDEN TESTS
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** Write `centerness_ap_gain(metrics_with, metrics_without)`: given two
# metric dicts as `evaluate(...).metrics` returns them (keys `AP`, `AP50`, `AP75`, ...),
# return the tuple of the differences `with - without` of `AP`, `AP50` and `AP75`,
# in that order, each rounded to 3 decimals. The cell applies it to section 6's two rows if
# you ran the lesson.

# %% tags=["solution"]
# NBVAL_IGNORE_OUTPUT
# (depends on the weights of the exercise network)
centerness_ap_gain = None  # your function (dict, dict) -> (float, float, float)
### BEGIN SOLUTION


def centerness_ap_gain(metrics_with: dict, metrics_without: dict) -> tuple:
    keys = ("AP", "AP50", "AP75")
    return tuple(round(metrics_with[key] - metrics_without[key], 3) for key in keys)


### END SOLUTION
if centerness_ap_gain is not None and "without" in globals():  # section 6 was run
    print(centerness_ap_gain(evaluation.metrics, without.metrics))

# %% tags=["check"]
check_function(
    "centerness_ap_gain", centerness_ap_gain,
    [({"AP": 0.5, "AP50": 0.7, "AP75": 0.55, "APs": 0.1}, {"AP": 0.45, "AP50": 0.69,
                                                           "AP75": 0.48, "APs": 0.2})],
    lambda *_: (0.05, 0.01, 0.07),
    hint="tuple(round(with[key] - without[key], 3) for key in ('AP', 'AP50', 'AP75'))",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "centerness_ap_gain", centerness_ap_gain,
    [({"AP": 0.1, "AP50": 0.2, "AP75": 0.3}, {"AP": 0.2, "AP50": 0.2, "AP75": 0.1})],
    lambda *_: (-0.1, 0.0, 0.2), hint="negative gains stay negative",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 3")

# %% [markdown]
# ## Further reading
#
# - S. Zhang et al., *Bridging the Gap Between Anchor-based and Anchor-free Detection
#   via Adaptive Training Sample Selection*, CVPR 2020, <https://arxiv.org/abs/1912.02424>
# - Z. Tian et al., *FCOS: Fully Convolutional One-Stage Object Detection*, ICCV 2019,
#   <https://arxiv.org/abs/1904.01355> (the centerness branch, its table 4).
# - K. He, R. Girshick, P. Dollár, *Rethinking ImageNet Pre-training*, ICCV 2019,
#   <https://arxiv.org/abs/1811.08883> (from scratch needs longer schedules).
# - mmdet, `configs/atss/atss_r50_fpn_1x_coco.py` and `configs/_base_/schedules/schedule_1x.py`.
