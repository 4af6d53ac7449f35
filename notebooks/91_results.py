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
# # 91 · The course's results, side by side
#
# Every detector of the course trains on the same data (the shapes set, 2000 training
# images), from the same kind of start (the course's pre-trained backbone where the
# reference starts from an ImageNet one), for the same number of optimizer steps, and
# is scored by the same evaluator on the same 500 validation images. This notebook
# reads what those runs wrote and sets them side by side: size, cost of a step, AP50
# and AP after 500 steps, and AP50 against steps.
#
# Nothing here is typed by hand. The figures come from the records
# `benchmarks/sample_efficiency.py` writes, one JSON file per detector in
# `results/sample_efficiency/`:
#
# ```
# python benchmarks/sample_efficiency.py --models yolov8n nanodet-m yolov3-tiny \
#     atss-r18half-fpn64 faster-rcnn-r18half-fpn64 deformable-detr-r18half-d128 \
#     co-deformable-detr-r18half-d128
# ```
#
# trains each on its own `cpu` schedule for exactly 500 steps (float32, no time guard),
# keeps the network every 100 steps, scores each with COCOeval, and records the mean
# step time and the machine. Run it on your machine, re-run this notebook, and the
# tables and the plot are yours.
#
# **Learning goals**
#
# 1. Read the course's detectors by size, cost and accuracy after a fixed number of
#    steps, and say why steps, not minutes, make the comparison fair across machines.
# 2. Compare the learning curves of one-stage, two-stage and set-prediction detectors.
# 3. Set the course's small `cpu` runs beside the references' published COCO figures
#    for the `gpu` schedules, and say what each column measures.

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ['png']

# %%
# NBVAL_IGNORE_OUTPUT
# (versions and device differ from machine to machine)
from detutils.course import setup

device = setup()["device"]

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from detutils.checks import check_close, check_equal, check_passed, check_true
from detutils.course import significant

RECORDS = Path("..") / "results" / "sample_efficiency"
DETECTORS = {  # preset -> the name the course's notebooks use, in course order
    "yolov3-tiny": "YOLOv3-tiny",
    "nanodet-m": "NanoDet-m",
    "yolov8n": "YOLOv8n",
    "atss-r18half-fpn64": "ATSS",
    "faster-rcnn-r18half-fpn64": "Faster R-CNN",
    "deformable-detr-r18half-d128": "Deformable DETR",
    "co-deformable-detr-r18half-d128": "Co-DETR",
}
records = {}
for preset in DETECTORS:
    path = RECORDS / f"{preset}.json"
    if path.is_file():
        records[preset] = json.loads(path.read_text())
missing = [preset for preset in DETECTORS if preset not in records]
print(f"{len(records)} records in results/sample_efficiency/")
print("not measured yet:", ", ".join(missing) or "none")

# %% [markdown]
# ## 1. One table
#
# Per detector: its `cpu` preset, parameters (at the shapes set's six classes), the
# schedule's image size and images per step, the mean time of a training step
# (data loading included, float32, on the CPU named below) and that time per image of
# the batch, and the COCO metrics of the network after the last step.


# %%
COLUMNS = ["detector", "preset", "parameters", "img px", "images / step", "steps",
           "s / step", "ms / image", "AP50", "AP", "AP75", "APs", "APl"]  # fmt: skip


def results_table(records):
    rows = []
    for preset, record in records.items():
        last = record["metrics"][str(record["steps"])]
        rows.append({
            "detector": DETECTORS[preset], "preset": preset,
            "parameters": record["parameters"], "img px": record["img_size"],
            "images / step": record["batch_size"], "steps": record["steps"],
            "s / step": record["s_per_step"],
            "ms / image": 1000 * record["s_per_step"] / record["batch_size"],
            "AP50": last["AP50"], "AP": last["AP"],
            "AP75": last["AP75"], "APs": last["APs"], "APl": last["APl"],
        })  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS).set_index("detector")


table = results_table(records)
significant(table, 3)

# %% [markdown]
# Where and how the runs were measured. A step's time depends on the CPU, on the
# threads and on what else the machine was doing; AP after a number of steps does not,
# up to the last bits of float32. A run that had the cores to itself shows a load while
# training near its thread count; a higher load means other work shared the cores and
# the step time is longer than the machine's own. CPU seconds per second of training
# near the thread count say both threads were busy; lower, that other work took turns
# with the run, or that parts of its step ran on one thread (the load tells which).
#
# The records stored with the course were made one detector after another on one
# 2-core machine with nothing else running. Five of them had been run once before on
# the same machine while other jobs shared its cores: their steps then took 1.7 to 6.4
# times as long, and every AP figure came out the same to the last digit. Steps, not
# minutes, decide what a network learns.

# %%
machines = pd.DataFrame({
    DETECTORS[preset]: {
        "cpu": record["cpu"], "kernels": record.get("cpu_capability", "?"),
        "threads": record["threads"], "torch": record["torch"],
        "load before / after": " / ".join(f"{x:.1f}" for x in record["load_average"]),
        "load, most while training": max(record.get("load_during_training") or [float("nan")]),
        "CPU s per s": record.get("cpu_per_wall", float("nan")),
        "run, min": round(record["wall_minutes"], 1), "date": record["date"],
    }
    for preset, record in records.items()
}).T  # fmt: skip
machines

# %% [markdown]
# ## 2. AP50 against steps
#
# The networks kept every 100 steps, each scored on the validation images. The left
# plot counts optimizer steps; the right one counts images seen, because the DETRs'
# `cpu` schedules take 8 images a step where the others take 16.

# %%
fig, (by_step, by_image) = plt.subplots(1, 2, figsize=(11, 4))
for preset, record in records.items():
    steps = sorted(int(step) for step in record["metrics"])
    ap50 = [record["metrics"][str(step)]["AP50"] for step in steps]
    by_step.plot(steps, ap50, "o-", label=DETECTORS[preset])
    by_image.plot([step * record["batch_size"] for step in steps], ap50, "o-",
                  label=DETECTORS[preset])  # fmt: skip
by_step.set_xlabel("optimizer steps")
by_image.set_xlabel("training images seen")
for ax in (by_step, by_image):
    ax.set_ylabel("AP50, 500 validation images")
    ax.grid(alpha=0.3)
if records:
    by_step.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
curves = pd.DataFrame({
    DETECTORS[preset]: {int(step): m["AP50"] for step, m in record["metrics"].items()}
    for preset, record in records.items()
}).T.sort_index(axis=1)  # fmt: skip
curves.columns = [f"AP50 @{step}" for step in curves.columns]
significant(curves, 3)

# %% [markdown]
# How to read it:
#
# - **Steps, not minutes.** A step's time changes from one CPU to the next, and with
#   what else runs; how much a network learns from 500 steps of the same images does
#   not. So the course compares AP after a fixed number of steps, and the cost of a
#   step beside it.
# - **The dense one-stage detectors with a pre-trained backbone** (ATSS) and the
#   two-stage Faster R-CNN learn fastest per step on these shapes: a good backbone and
#   many positives per box (notebook 90) give every step a strong signal.
# - **The DETRs** learn slowest: one positive query per box and a set loss that first
#   has to sort out which query takes which box (notebooks 61 and 62). In the stored
#   records, after 4000 images (500 steps of 8) they stand below where ATSS and Faster
#   R-CNN stood after 1600 (100 steps of 16). Co-DETR's auxiliary heads hand the encoder
#   many more positives (notebook 70); on a budget this short it ends a little below
#   Deformable DETR in AP50 and above it in AP, for the reasons notebook 72 measures
#   (better placed boxes, more duplicates).
# - **YOLOv3-tiny, NanoDet-m and YOLOv8n** start from random weights, as their
#   references do: they begin slowly and then climb.
# - **Cost.** `ms / image` sets the step times of the two batch sizes side by side:
#   in the stored records the dense detectors spend 40 to 62 ms per image, Faster R-CNN
#   about 100 ms, Deformable DETR 230 ms (three encoder and three decoder layers, the
#   encoder over all 2125 positions of four levels at 320 px) and Co-DETR 390 ms (its
#   auxiliary heads and query groups on top).
#
# ## 3. The references' published figures
#
# What the same detectors reach on COCO with their references' full recipes, the
# course's `gpu` schedules with the course's full-size presets (COCO box AP, IoU 0.5 to
# 0.95, on val2017; YOLOv3's paper reports test-dev). These come from the cited papers
# and model zoos; the course cannot rerun them on a CPU, and they are not comparable
# with the shapes-set figures above (another data set, 80 classes, full-size networks,
# tens of epochs).

# %%
published = pd.DataFrame(
    [
        ("YOLOv3", "yolov3", "Darknet-53, 416 px (AP50 55.3)", 31.0,
         "Redmon and Farhadi 2018, YOLOv3: An Incremental Improvement, table 3 (test-dev)"),
        ("NanoDet-m", "nanodet-m", "ShuffleNetV2 1.0x, 320 px", 20.6,
         "RangiLyu/nanodet README, model zoo"),
        ("YOLOv8n", "yolov8n", "640 px", 37.3, "ultralytics docs, YOLOv8 detection models"),
        ("ATSS", "atss-r50", "R-50-FPN, 1x", 39.4, "mmdetection configs/atss README"),
        ("Faster R-CNN", "faster-rcnn-r50", "R-50-FPN, 1x", 37.4,
         "mmdetection configs/faster_rcnn README"),
        ("Deformable DETR", "deformable-detr-r50", "R-50, 50 epochs", 44.5,
         "mmdetection configs/deformable_detr README"),
        ("Deformable DETR, refine + two stages", "deformable-detr-r50-refine-two-stage",
         "R-50, 50 epochs", 46.8, "mmdetection configs/deformable_detr README"),
        ("Co-Deformable-DETR", "co-deformable-detr-r50", "R-50, 12 epochs, 300 queries", 49.5,
         "Sense-X/Co-DETR README, Co-Deformable-DETR"),
    ],
    columns=["detector", "course preset", "setting", "COCO AP", "source"],
).set_index("detector")  # fmt: skip
published

# %% [markdown]
# ## Summary
#
# - One protocol for every detector: the same data, the same evaluator, exactly 500
#   optimizer steps of each one's `cpu` schedule, and the records that produced every
#   number on this page.
# - Compare accuracy at a fixed number of steps, and cost as the time of a step on one
#   machine; a record says which machine.
# - The published COCO figures say where each design ends up with its full recipe; the
#   course's runs show how it starts.
#
# ## Exercises
#
# **Exercise 1.** Accuracy per minute. For each detector in `table`, compute the AP50
# reached per minute of training on the recorded machine: AP50 after the last step
# divided by (steps × seconds per step / 60). Set `per_minute`, a pandas Series
# indexed like `table`.

# %% tags=["solution"]
per_minute = None  # pandas Series, index: detector
### BEGIN SOLUTION
per_minute = table["AP50"] / (table["steps"] * table["s / step"] / 60)
print(per_minute.round(4).to_dict())
### END SOLUTION

# %% tags=["check"]
check_true(
    isinstance(per_minute, pd.Series) and list(per_minute.index) == list(table.index),
    "`per_minute` should be a pandas Series indexed by the detectors of `table`.",
    hint="table['AP50'] / (table['steps'] * table['s / step'] / 60)",
)
for name, record in zip(table.index, records.values(), strict=True):
    minutes = record["steps"] * record["s_per_step"] / 60
    expected = record["metrics"][str(record["steps"])]["AP50"] / minutes
    check_close(f"per_minute[{name!r}]", float(per_minute[name]), expected, rtol=1e-6,
                hint="minutes of training = steps x seconds per step / 60.")  # fmt: skip
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** Images, not steps. Which detector has the highest AP50 after 3200
# training images (200 steps of 16, or 400 steps of 8)? Set `best_at_3200` to its name
# as in `curves.index`, using the records (`records[preset]["metrics"]`, keyed by
# step as text, and `records[preset]["batch_size"]`).

# %% tags=["solution"]
best_at_3200 = None  # str
### BEGIN SOLUTION
at_3200 = {}
for preset, record in records.items():
    step = 3200 // record["batch_size"]
    if str(step) in record["metrics"]:
        at_3200[DETECTORS[preset]] = record["metrics"][str(step)]["AP50"]
best_at_3200 = max(at_3200, key=at_3200.get) if at_3200 else None
print(best_at_3200, at_3200)
### END SOLUTION

# %% tags=["check"]
seen = {
    DETECTORS[preset]: record["metrics"][str(3200 // record["batch_size"])]["AP50"]
    for preset, record in records.items()
    if str(3200 // record["batch_size"]) in record["metrics"]
}
if seen:
    check_equal(
        "best_at_3200", best_at_3200, max(seen, key=seen.get),
        hint="the step to read is 3200 // batch_size: 200 for most, 400 for the DETRs.",
    )  # fmt: skip
else:
    check_true(best_at_3200 is None, "no record has a snapshot at 3200 images: expected None.")
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** Who learns most late? For each detector with a record, take the AP50
# gained between its first snapshot and its last (`records[preset]["metrics"]`, keyed by
# step as text). Set `most_late` to the name (as in `curves.index`) of the detector with
# the largest gain, and `gain` to that gain (a float); `None` for both without records.

# %% tags=["solution"]
most_late = None  # str
gain = None  # float
### BEGIN SOLUTION
gains = {}
for preset, record in records.items():
    steps = sorted(int(step) for step in record["metrics"])
    first, last = record["metrics"][str(steps[0])], record["metrics"][str(steps[-1])]
    gains[DETECTORS[preset]] = last["AP50"] - first["AP50"]
if gains:
    most_late = max(gains, key=gains.get)
    gain = gains[most_late]
print(most_late, None if gain is None else round(gain, 4))
### END SOLUTION

# %% tags=["check"]
expected = {
    name: row.iloc[-1] - row.iloc[0] for name, row in curves.iterrows()
}  # AP50 columns in step order
if expected:
    check_equal(
        "most_late", most_late, max(expected, key=expected.get),
        hint="sort the steps as numbers, not as text: '100' < '1000' < '200'.",
    )  # fmt: skip
    check_close("gain", gain, max(expected.values()), atol=1e-9)
else:
    check_true(most_late is None and gain is None, "no records: expected None for both.")
check_passed("Exercise 3")
