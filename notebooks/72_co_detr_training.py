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
# # 72 · Co-DETR: training beside Deformable DETR, on the same budget
#
# Notebooks 70 and 71 took Co-DETR apart: auxiliary heads (ATSS, the RPN and the RoI
# head) on the encoder's pyramid assign one-to-many, and their positives come back as
# extra groups of decoder queries. All of it is for training only: at test time the
# network is a Deformable DETR. Co-DETR's claim is that this collaborative training
# makes a DETR converge faster. This notebook measures the claim on the shapes set: it
# trains the plain Deformable DETR CPU preset (notebook 63) and Co-DETR built on the
# same preset, with the same data, schedule, steps and seed, keeps a copy of each
# network every 100 steps, and sets their AP50 side by side, with the loss curves, the
# positives the encoder sees under each scheme and the cost of a step.
#
# **Learning goals**
#
# 1. Count what Co-DETR adds for training (parameters, loss terms, positives per image)
#    and what it leaves at test time (nothing: the inference network is a Deformable
#    DETR).
# 2. Train both detectors on one schedule with `detutils.engine.train` and read
#    Co-DETR's loss by branch.
# 3. Compare AP50 against training steps, and the time of a step.
# 4. Say where the gain comes from: positives for the encoder, and queries that start
#    on good boxes.
#
# **Prerequisites**: notebooks 70 (hybrid assignment) and 71 (positive queries), 63
# (Deformable DETR's training on the same data and schedule), 43 and 52 (ATSS and
# Faster R-CNN, whose heads become the auxiliary branches).
#
# **Notation**: the letters of the shapes (B, S, Q, D, M, C, P, ...), the box formats
# and the flat prior index are those of [notebook 09](09_notation.ipynb). L counts the
# decoder layers.
#
# **The stored outputs come from a run on the `cpu` schedule** (two training runs,
# about an hour on a 2-core CPU). In CI the notebook runs on the `ci` schedule (three
# iterations of four small images, seconds), so every cell whose output depends on the
# schedule is marked to be left out of the comparison; run it yourself to see your own
# numbers.

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ['png']

# %%
# NBVAL_IGNORE_OUTPUT
# (the device and versions of the machine that runs it)
from detutils.course import setup

device = setup()["device"]

# %%
import copy
import dataclasses
import time

import matplotlib.pyplot as plt
import pandas as pd
import torch
from torch.utils.data import DataLoader

from detutils import current_schedule
from detutils.checks import check_close, check_equal, check_function, check_passed, check_true
from detutils.course import significant
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
from detutils.engine.trainer import intra_op_threads, move_targets
from detutils.models import build_detector
from detutils.viz import compare_detections, plot_losses

# %% [markdown]
# ## 1. Two detectors, one inference network
#
# Both start from the same seed. Co-DETR's DETR is the Deformable DETR preset
# `deformable-detr-r18half-d128` with two changes of the reference's base
# (`co_deformable_detr_r50_1x_coco`): *mixed query selection* (the queries' positions
# come from the encoder's best proposals, as in two stages, but their content is
# learned, one vector per query) and *look forward twice* (a decoder layer's box loss
# also trains the box head of the layer before). Everything else of Co-DETR sits in
# `model.aux`: the stride-2 conv that makes the pyramid's fifth level, the RPN and RoI
# head, the ATSS head and the layers that embed the positive queries.

# %%
root = ensure_shapes()
schedule_name = current_schedule()
train_set = CocoDetection(*find_split(root, "train"))
val_set = CocoDetection(*find_split(root, "val"))
names = {"Deformable DETR": "deformable-detr-r18half-d128",
         "Co-DETR": "co-deformable-detr-r18half-d128"}  # fmt: skip
models = {}
for label, name in names.items():
    torch.manual_seed(0)
    models[label] = build_detector(name, num_classes=train_set.num_classes)
detr, co_detr = models["Deformable DETR"], models["Co-DETR"]


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


parts = {
    "Deformable DETR": count(detr),
    "Co-DETR: the DETR (model.detr)": count(co_detr.detr),
    "  of which the queries' learned content (Q x D)": co_detr.detr.query_embedding.weight.numel(),
}  # fmt: skip
for name, module in co_detr.aux.items():
    parts[f"Co-DETR: aux[{name!r}]"] = count(module)
parts["Co-DETR: all, for training"] = count(co_detr)
pd.Series(parts).to_frame("parameters")

# %% [markdown]
# The inference network, `co_detr.detr`, is a `DeformableDETR`: its outputs are those
# of the whole model in evaluation mode, where the auxiliary heads do not run, and its
# predictions are Deformable DETR's (the 100 best query-class pairs, no NMS). Every
# parameter of `model.aux` serves training only.

# %%
check_images = torch.rand(2, 3, 128, 128)
co_detr.eval()
with torch.no_grad():
    whole, alone = co_detr(check_images), co_detr.detr(check_images)
co_detr.train()
print("auxiliary outputs at test time:", whole.pyramid, whole.atss, whole.rpn)
print("same logits and boxes as model.detr alone:",
      torch.equal(whole.one_to_one.cls_logits, alone.cls_logits)
      and torch.equal(whole.one_to_one.boxes, alone.boxes))  # fmt: skip

# %% [markdown]
# ## 2. One schedule for both
#
# Co-DETR's `cpu` schedule is Deformable DETR's (notebook 63) with a longer time guard:
# AdamW at 2e-4, a tenth of it for the backbone, the sampling offsets and the reference
# points, the gradient norm clipped at 0.1, 500 steps of 8 images at 320 px. Here both
# runs take exactly the schedule's steps (no time guard), so that they compare step for
# step; the reference trains 12 epochs of COCO (its `gpu` schedule).

# %%
schedules = {label: schedules_for(name) for label, name in names.items()}
table = pd.DataFrame(
    {(label, key): s.to_dict() for label, by_name in schedules.items()
     for key, s in by_name.items()}
)  # fmt: skip
table[table.astype(str).nunique(axis=1) > 1]

# %%
# NBVAL_IGNORE_OUTPUT
# (the schedule this run uses)
# no time guard: both runs take exactly the schedule's steps, the learning rate by steps
schedule = dataclasses.replace(
    schedules["Co-DETR"][schedule_name], max_minutes=None, lr_by_time=False
)
train_data = build_train_set(train_set, schedule)
val_set.transforms = build_transforms(schedule.img_size, train=False)
steps_per_epoch = len(train_set) // schedule.batch_size
print(
    f"schedule {schedule_name}: {schedule.iterations} iterations of {schedule.batch_size} "
    f"images at {schedule.img_size} px ({schedule.iterations / steps_per_epoch:.3g} epochs), "
    f"{schedule.optimizer} lr {schedule.lr:g}, clipping {schedule.grad_clip:g}"
)
print(f"Co-DETR's auxiliary weight: lambda_2 x {co_detr.detr.config.num_decoder_layers} "
      f"decoder layers = {co_detr.config.aux_weight:g}")  # fmt: skip

# %% [markdown]
# ## 3. Positives for the encoder, before training
#
# The one-to-one matching gives each box one query per decoder layer and one of the
# encoder's proposals. Co-DETR's auxiliary heads give each box many more, and all of
# them train the encoder's features directly (the heads sit on them). The table counts,
# per image of a few training batches, the positives of every branch of the untrained
# Co-DETR (with the course's backbone loaded, as training starts): one-to-one in the
# last decoder layer and among the encoder's proposals, the ATSS head's anchors, the
# RPN's sampled anchors, the RoI head's sampled proposals, and the positive queries of
# the two groups.


# %%
def positives_per_image(network: torch.nn.Module, batches: int = 4) -> pd.DataFrame:
    """Mean per image over ``batches`` training batches: boxes and each branch's positives."""
    network = copy.deepcopy(network).to(device).train()
    images_set = CocoDetection(*find_split(root, "train"))  # without the training augmentation
    images_set.transforms = build_transforms(schedule.img_size, train=False)
    loader = DataLoader(images_set, batch_size=8, collate_fn=collate, num_workers=0,
                        sampler=list(range(8 * batches)))  # fmt: skip
    rows = []
    with torch.no_grad(), intra_op_threads(device, schedule.threads):
        for images, targets in loader:
            targets = move_targets(targets, device)
            outputs = network(images.to(device))
            assignment = network.assign(outputs, targets)
            rcnn = assignment.rcnn
            roi_images = rcnn.rois[:, 0].long()
            for image, target in enumerate(targets):
                rows.append({
                    "boxes M": len(target["boxes"]),
                    "one-to-one, last decoder layer":
                        int((assignment.one_to_one.layers.gt_index[-1, image] >= 0).sum()),
                    "one-to-one, encoder proposals":
                        int((assignment.one_to_one.encoder.gt_index[image] >= 0).sum()),
                    "ATSS anchors": int((assignment.atss.assignment.labels[image] >= 0).sum()),
                    "RPN anchors (sampled)":
                        int(((rcnn.rpn.gt_index[image] >= 0) & rcnn.rpn_sampled[image]).sum()),
                    "RoI proposals (sampled)":
                        int((rcnn.roi_labels[roi_images == image] >= 0).sum()),
                    "positive queries, RoI group":
                        int(assignment.queries["roi"].positive[image].sum()),
                    "positive queries, ATSS group":
                        int(assignment.queries["atss"].positive[image].sum()),
                })  # fmt: skip
    return pd.DataFrame(rows).mean().to_frame("per image")


# %%
# NBVAL_IGNORE_OUTPUT
# (counts at the schedule's image size)
start_network = copy.deepcopy(co_detr)
load_pretrained(start_network, verbose=False)
positives_before = positives_per_image(start_network)
significant(positives_before, 3)

# %% [markdown]
# ## 4. Training
#
# The same loop as every detector of the course; the callback keeps a copy of the
# network every 100 steps (every step on the `ci` schedule, whose runs have three); the
# copy at step 0 is the network the trainer starts from. Deformable DETR first, then
# Co-DETR, on the same data in the same order (the seed is the schedule's). The command
# line trains the same way:
#
# ```
# python -m detutils.train --model co-deformable-detr-r18half-d128 --data data/shapes --schedule cpu
# ```

# %%
every = 100 if schedule.iterations >= 100 else 1
snapshots = {label: {} for label in models}
runs, minutes, step_seconds = {}, {}, {}


def train_one(label: str) -> None:
    kept = snapshots[label]
    kept[0] = copy.deepcopy(models[label])
    load_pretrained(kept[0], verbose=False)  # what train() does first: step 0
    stamps = []

    def keep(step: int, network: torch.nn.Module) -> None:
        stamps.append(time.monotonic())
        if step % every == 0:
            kept[step] = copy.deepcopy(network).to(memory_format=torch.contiguous_format)

    run_dir = root.parents[1] / "runs" / f"72_{names[label]}"
    start = time.monotonic()
    result = train(
        models[label], train_data, schedule, out_dir=run_dir, device=str(device),
        progress=False, on_step=keep,
    )  # fmt: skip
    minutes[label] = (time.monotonic() - start) / 60
    runs[label] = run_dir
    kept[result.iterations] = result.model.eval()
    # the median step, copies of the network left out (a copy costs a step of its own)
    gaps = torch.tensor(stamps).diff()
    step_seconds[label] = float(gaps.median()) if len(gaps) else float("nan")
    print(f"{label}: {result.iterations} iterations in {minutes[label]:.1f} min, median step "
          f"{step_seconds[label]:.3g} s, data loading included")  # fmt: skip


# %%
# NBVAL_IGNORE_OUTPUT
# (a training log: its timings depend on the schedule and the machine)
train_one("Deformable DETR")

# %%
# NBVAL_IGNORE_OUTPUT
# (a training log: its timings depend on the schedule and the machine)
train_one("Co-DETR")
ratio = step_seconds["Co-DETR"] / step_seconds["Deformable DETR"]
print(f"a Co-DETR step costs {ratio:.3g} times a Deformable DETR step (medians)")

# %% [markdown]
# ## 5. The loss curves
#
# Both logs have the one-to-one terms of the last decoder layer (`cls`, `l1`, `giou`)
# and `aux`, the same terms of the earlier layers and the encoder's proposals. Co-DETR's
# adds one column per branch: `atss`, `rpn`, `roi` (each x the auxiliary weight) and
# `queries`, the positive query groups' set losses on every decoder layer. Left: the
# one-to-one terms of both runs; right: Co-DETR's branches.

# %%
# NBVAL_IGNORE_OUTPUT
# (the curves of these runs)
logs = {label: read_training_log(run)[0] for label, run in runs.items()}
smooth = max(1, len(logs["Co-DETR"]) // 20)
for log in logs.values():
    log["cls + l1 + giou"] = log["cls"] + log["l1"] + log["giou"]
figure, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for label, log in logs.items():
    smoothed = log["cls + l1 + giou"].rolling(smooth, min_periods=1).mean()
    axes[0].plot(log["iteration"], smoothed, label=label)
axes[0].set(xlabel="iteration", ylabel="loss", title="one-to-one, last decoder layer")
axes[0].legend(fontsize=8)
plot_losses(logs["Co-DETR"], x="iteration", columns=["aux", "atss", "rpn", "roi", "queries"],
            ax=axes[1], smooth=smooth, title="Co-DETR's other terms")  # fmt: skip
figure.tight_layout()
plt.show()
fifth = max(1, len(logs["Co-DETR"]) // 5)
columns = ["cls", "l1", "giou", "aux", "atss", "rpn", "roi", "queries", "loss"]
significant(
    pd.DataFrame({
        (label, part): (log.iloc[:fifth] if part == "first fifth" else log.iloc[-fifth:])
        .reindex(columns=columns).mean()
        for label, log in logs.items() for part in ("first fifth", "last fifth")
    }),
    3,
)  # fmt: skip

# %% [markdown]
# How to read them: the one-to-one terms are the same loss in both runs, divided by the
# same number of boxes, so the left panel compares them directly. Co-DETR's branches
# carry large weights (x 6 here, x 12 in the reference) and sum to more than the
# one-to-one loss; the gradient clipping at norm 0.1 then scales every step to the same
# length, so what the auxiliary terms change is the step's direction, not its size.

# %% [markdown]
# ## 6. AP50 against training steps
#
# Every kept network of both runs, scored by the same COCO evaluation on the validation
# images (all 500 on the `cpu` schedule, 16 on `ci`). At test time Co-DETR is its
# `detr`: the evaluation calls the model in evaluation mode, where the auxiliary heads
# do not run.

# %%
num_val = 16 if schedule_name == "ci" else len(val_set)
val_loader = DataLoader(
    val_set, batch_size=16, sampler=list(range(num_val)), collate_fn=collate, num_workers=0
)

# %%
# NBVAL_IGNORE_OUTPUT
# (the metrics of these runs)
start = time.monotonic()
curves = {}
with intra_op_threads(device, schedule.threads):
    for label, kept in snapshots.items():
        curves[label] = {
            step: evaluate(network.to(device).eval(), val_loader, device).metrics
            for step, network in sorted(kept.items())
        }
print(f"{sum(len(kept) for kept in snapshots.values())} networks on {num_val} images "
      f"in {time.monotonic() - start:.0f} s")  # fmt: skip
ap50 = pd.DataFrame({label: {step: m["AP50"] for step, m in curve.items()}
                     for label, curve in curves.items()}).rename_axis(index="step")  # fmt: skip
ap50["Co-DETR / Deformable DETR"] = ap50["Co-DETR"] / ap50["Deformable DETR"]
significant(ap50, 3)

# %%
# NBVAL_IGNORE_OUTPUT
# (the curves of these runs)
figure, axis = plt.subplots(figsize=(6, 3.6))
for label in models:
    axis.plot(ap50.index, ap50[label], marker="o", label=label)
axis.set(xlabel="training step", ylabel="AP50", title="AP50 on the validation images")
axis.legend(fontsize=8)
plt.show()
last = ap50.index.max()
later = ap50.loc[ap50.index > last / 4]
print(f"after {last} steps: Co-DETR AP50 {ap50.loc[last, 'Co-DETR']:.3g}, Deformable DETR "
      f"{ap50.loc[last, 'Deformable DETR']:.3g}, "
      f"ratio {ap50.loc[last, 'Co-DETR / Deformable DETR']:.3g}")  # fmt: skip
print("Co-DETR higher at every kept step after the first quarter:",
      bool((later["Co-DETR"] > later["Deformable DETR"]).all()))  # fmt: skip

# %%
# NBVAL_IGNORE_OUTPUT
# (the metrics of these runs)
pd.DataFrame({label: curve[last] for label, curve in curves.items()}).T

# %% [markdown]
# How to read them (the stored `cpu` run): Co-DETR leads early, 1.6 times Deformable
# DETR's AP50 after 100 steps and 1.3 times after 200, and falls behind from step 300,
# ending at 0.8 times after 500 steps: on this budget the claim (at least 1.3 times at
# the end) does not hold. The last row says more than AP50 alone: Co-DETR's boxes are
# better placed (AP75 0.089 against 0.073) and it finds more of the objects (AR100
# 0.44 against 0.40), at nearly the same AP. What costs it AP50 is duplicates: the
# auxiliary heads and the positive query groups teach the shared decoder and class
# heads that many queries near an object are positives, and after two epochs the
# one-to-one branch has not yet learnt to let all but one of them stand down (notebook
# 63, section 5, counts duplicates for Deformable DETR). Scored with a class-wise NMS
# at 0.6 on top, which a DETR should not need, the two final networks of this run give
# AP50 0.242 for Co-DETR against 0.233 for Deformable DETR, and AP 0.126 against 0.104
# (`benchmarks/co_detr.py` prints both ways): NMS adds 0.089 AP50 to Co-DETR and 0.041
# to Deformable DETR.
#
# ## 7. Positives for the encoder, after training
#
# The same count as in section 3, for the trained Co-DETR. The one-to-one matching
# still gives each box one query and one proposal; ATSS and the RPN assign by their
# anchors' geometry alone, so their counts do not move; the RoI head's positives
# follow the RPN's proposals, which training makes better, and the RoI group follows
# them.

# %%
# NBVAL_IGNORE_OUTPUT
# (the trained network of this run)
positives_after = positives_per_image(snapshots["Co-DETR"][max(snapshots["Co-DETR"])])
significant(pd.concat({"before training": positives_before["per image"],
                       "after training": positives_after["per image"]}, axis=1), 3)  # fmt: skip

# %% [markdown]
# ## 8. Detections
#
# Detections with a score of at least 0.3 on four validation images for the last
# network of each run, under the ground truth; no NMS for either.

# %%
# NBVAL_IGNORE_OUTPUT
# (the detections of these runs)
samples = [val_set[index] for index in range(4)]
batch = torch.stack([image for image, _ in samples]).to(device)
for label, kept in snapshots.items():
    network = kept[max(kept)].to(device).eval()
    with torch.no_grad():
        detections = network.predict(network(batch), score_thr=0.3, max_det=100)
    figure = compare_detections(samples, detections, val_set.class_names)
    figure.suptitle(label)
    plt.show()

# %% [markdown]
# ## 9. What to expect
#
# - **The gain is largest early.** Early in training the one-to-one matching changes
#   from step to step and gives the encoder one positive per box; the auxiliary heads
#   give it dozens of stable ones from the first step (section 3), which is when they
#   help most: here Co-DETR leads for the first 200 steps.
# - **One-to-many training leaves duplicates until the one-to-one branch catches up.**
#   The queries of the positive groups go through the same decoder and heads as the
#   one-to-one queries, and many of them per object learn a class; the one-to-one
#   matching then has to teach all but one query per object to stand down. In two
#   epochs that is not done: better boxes and recall, more duplicates, lower AP50 (an
#   NMS on top reverses the order). The paper trains 12 epochs of COCO.
# - **The cost is in training only.** A Co-DETR step runs the RPN, the RoI head, the
#   ATSS head and the decoder twice more (one pass per query group): 1.55 times a
#   Deformable DETR step on a quiet 2-core CPU (`benchmarks/co_detr.py`); the tested
#   inference network is unchanged.
# - **The reference's figures** come from 12 epochs of COCO with a ResNet-50 on 8 GPUs;
#   two epochs of the shapes set with a small network on a CPU test the same mechanism
#   at another scale: read the curves, not the absolute AP.

# %% [markdown]
# ## Recap
#
# - Co-DETR trains a Deformable DETR (here with mixed query selection and look forward
#   twice) together with auxiliary one-to-many heads on its encoder: ATSS, the RPN and
#   the RoI head, each loss weighted lambda_2 x decoder layers.
# - The auxiliary heads' positives also become extra query groups, decoded alone and
#   trained on their assigned targets with the DETR's set loss.
# - At test time only `model.detr` runs: the same parameters and the same cost as the
#   base.
# - On the same schedule, data and seed, the notebook's run sets Co-DETR's AP50 beside
#   Deformable DETR's at every 100 steps, and the cost of a step: ahead early, behind
#   after two epochs in AP50 for its duplicates, ahead in AP75 and recall.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** Set `inference_parameters` (an int): the parameters of the network
# Co-DETR runs at test time, counted from `co_detr.named_parameters()` by leaving out
# every parameter of `co_detr.aux`; and `training_only` (an int): those left out.

# %% tags=["solution"]
inference_parameters = None  # int
training_only = None  # int
### BEGIN SOLUTION
inference_parameters = sum(
    p.numel() for name, p in co_detr.named_parameters() if not name.startswith("aux.")
)
training_only = sum(p.numel() for name, p in co_detr.named_parameters() if name.startswith("aux."))
### END SOLUTION

# %% tags=["check"]
check_true(
    "inference_parameters is an int", isinstance(inference_parameters, int),
    hint="sum p.numel() over the parameters whose name does not start with 'aux.'",
)  # fmt: skip
check_equal("inference_parameters", inference_parameters, count(co_detr.detr),
            hint="everything outside co_detr.aux: that is co_detr.detr")  # fmt: skip
check_equal("training_only", training_only, count(co_detr) - count(co_detr.detr),
            hint="the parameters whose name starts with 'aux.'")  # fmt: skip
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** Write `aux_weight(lambda_2, num_decoder_layers)`: the factor of every
# auxiliary head's loss in Co-DETR (a float), and set `reference_weight`, its value for
# the reference (lambda_2 = 2, 6 decoder layers).

# %% tags=["solution"]
aux_weight = None  # your function (float, int) -> float
reference_weight = None  # float
### BEGIN SOLUTION


def aux_weight(lambda_2: float, num_decoder_layers: int) -> float:
    return lambda_2 * num_decoder_layers


reference_weight = aux_weight(2.0, 6)
### END SOLUTION

# %% tags=["check"]
check_function(
    "aux_weight", aux_weight, [(2.0, 3), (1.0, 6), (0.5, 4)],
    lambda lambda_2, layers: lambda_2 * layers,
    hint="the reference config multiplies each auxiliary weight by num_dec_layer * lambda_2",
)  # fmt: skip
check_close("aux_weight(2.0, 3) against the preset", aux_weight(2.0, 3),
            co_detr.config.aux_weight, hint="the CPU preset has 3 decoder layers")  # fmt: skip
check_close("reference_weight", reference_weight, 12.0, hint="2 x 6")
### BEGIN HIDDEN TESTS
check_close("aux_weight(2.0, 0)", aux_weight(2.0, 0), 0.0, hint="no decoder layer, no weight")
### END HIDDEN TESTS
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** Section 3's table gives mean positives per image. Set
# `one_to_many_per_box` (a float): the positives per box that the three auxiliary heads
# together give the encoder (ATSS anchors, sampled RPN anchors and sampled RoI
# proposals, summed), divided by the boxes per image, from `positives_before`; and
# `one_to_one_per_box`, the same for the encoder's proposals matched one-to-one.

# %% tags=["solution"]
one_to_many_per_box = None  # float
one_to_one_per_box = None  # float
### BEGIN SOLUTION
per_image = positives_before["per image"]
one_to_many_per_box = float(
    (per_image["ATSS anchors"] + per_image["RPN anchors (sampled)"]
     + per_image["RoI proposals (sampled)"]) / per_image["boxes M"]
)  # fmt: skip
one_to_one_per_box = float(per_image["one-to-one, encoder proposals"] / per_image["boxes M"])
### END SOLUTION

# %% tags=["check"]
check_true("one_to_many_per_box is a float", isinstance(one_to_many_per_box, float),
           hint="float(...) of a sum of three table entries divided by 'boxes M'")  # fmt: skip
table_values = positives_before["per image"]
check_close(
    "one_to_many_per_box", one_to_many_per_box,
    float(table_values.iloc[3:6].sum() / table_values.iloc[0]), rtol=1e-6,
    hint="ATSS + RPN + RoI positives per image, over the boxes per image",
)  # fmt: skip
check_close("one_to_one_per_box", one_to_one_per_box, 1.0, rtol=1e-6,
            hint="one-to-one: every box gets exactly one proposal")  # fmt: skip
check_passed("Exercise 3")

# %% [markdown]
# ## Further reading
#
# - Z. Zong, G. Song, Y. Liu, *DETRs with Collaborative Hybrid Assignments Training*
#   (Co-DETR), ICCV 2023, <https://arxiv.org/abs/2211.12860>; code: Sense-X/Co-DETR,
#   `projects/configs/co_deformable_detr/co_deformable_detr_r50_1x_coco.py`.
# - X. Zhu, W. Su, L. Lu, B. Li, X. Wang, J. Dai, *Deformable DETR*, ICLR 2021,
#   <https://arxiv.org/abs/2010.04159>.
# - H. Zhang, F. Li, S. Liu, L. Zhang, H. Su, J. Zhu, L. M. Ni, H.-Y. Shum, *DINO: DETR
#   with Improved DeNoising Anchor Boxes for End-to-End Object Detection*, ICLR 2023,
#   <https://arxiv.org/abs/2203.03605> (mixed query selection, look forward twice).
# - Q. Chen, X. Chen, J. Wang, S. Zhang, K. Yao, H. Feng, J. Han, E. Ding, G. Zeng,
#   J. Wang, *Group DETR: Fast DETR Training with Group-Wise One-to-Many Assignment*,
#   ICCV 2023, <https://arxiv.org/abs/2207.13085> (another way to give a DETR more
#   positives in training).
# - D. Jia, Y. Yuan, H. He, X. Wu, H. Yu, W. Lin, L. Sun, C. Zhang, H. Hu, *DETRs with
#   Hybrid Matching* (H-DETR), CVPR 2023, <https://arxiv.org/abs/2207.13080>.
