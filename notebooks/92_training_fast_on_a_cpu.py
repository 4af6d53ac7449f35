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
# # 92 · Appendix: what makes the `cpu` schedules fast
#
# The `cpu` schedule of each training notebook (13, 23, 33) has ten minutes of a 2-core
# CPU to show a detector learning: 500 steps of 16 images, evaluation included. Every
# second a step saves is a step more before the time guard. This appendix takes apart
# what the schedule does for speed, and measures each piece on the machine that runs
# it: the number format (float32, and bfloat16 where the CPU has it), the memory layout
# of weights and images (channels-last), images decoded once instead of every epoch, a
# learning rate that keeps to the clock when the machine is slower than planned, and
# the number of torch threads.
#
# **Learning goals**
#
# 1. Say what bfloat16 is, why it needs no loss scaling, and when `amp` uses it on a
#    CPU (and when it falls back to float32).
# 2. Read a tensor's strides, tell the channels-last layout from the usual one, and
#    measure what it saves in a training step.
# 3. Weigh decoding a PNG against reading a decoded image from memory, and size the
#    cache that holds a data set.
# 4. Plan a learning rate in iterations for a time budget, and follow what
#    `lr_by_time` does on a machine slower than planned.
# 5. Choose torch's thread count for a training run and for tests.
#
# **Prerequisites**: notebook 13 (the schedules and the `cpu` run); notebook 33 for
# YOLOv8n, the network timed here.
#
# **Notation**: the letters of the shapes (B, A, M, C, K, R, ...), the box formats and
# the flat prior index are those of [notebook 09](09_notation.ipynb).
#
# **The timing cells measure at the real size** (YOLOv8n, 16 images of 320 px, a few
# steps each) on every run, on whatever CPU runs them, so their outputs differ from run
# to run and are left out of the comparison of the stored outputs
# (`# NBVAL_IGNORE_OUTPUT`). The stored ones come from the machine that ran the
# notebook last; run it to see your own.

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
import time
import warnings
from pathlib import Path
from unittest import mock

import matplotlib.pyplot as plt
import pandas as pd
import torch
from torch import nn

from detutils.checks import check_close, check_function, check_passed, check_true
from detutils.course import significant
from detutils.data import CocoDetection, build_transforms, collate, ensure_shapes, find_split
from detutils.engine.presets import schedules_for
from detutils.engine.schedule import build_lr_scheduler, lr_factor
from detutils.engine.trainer import autocast_dtype, cpu_has_bfloat16, to_float32
from detutils.models import build_detector

setup_threads = torch.get_num_threads()  # the set-up's thread count, restored after timings

# %% [markdown]
# ## 1. The plan is float32; bfloat16 is a bonus
#
# Every `cpu` schedule is made by `cpu_budget_schedule` (`detutils.engine.presets`).
# The fields that serve speed:

# %%
cpu = schedules_for("yolov8n")["cpu"]
speed_fields = [
    "iterations", "batch_size", "img_size", "amp", "channels_last", "cache_images",
    "threads", "workers", "max_minutes", "lr_by_time",
]  # fmt: skip
print(", ".join(f"{name}={getattr(cpu, name)}" for name in speed_fields))

# %% [markdown]
# `amp` is off: the schedule is planned for float32, the arithmetic every CPU runs at
# full speed, so that the figures of the README hold on any laptop. Mixed precision is
# the bonus `--amp` adds where the CPU can use it.
#
# **bfloat16** ("brain float", from Google Brain) is a 16-bit float made by keeping the
# first 16 of float32's 32 bits: the sign, the same 8-bit exponent, and 7 of the 23
# mantissa bits. float16, the other 16-bit float, splits its bits the other way: a
# 5-bit exponent and a 10-bit mantissa. `torch.finfo` tells what each gives:

# %%
rows = []
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    info = torch.finfo(dtype)
    mantissa = round(-math.log2(info.eps))  # eps = 2 ** -mantissa bits
    rows.append(
        {
            "dtype": str(dtype).removeprefix("torch."),
            "bits": info.bits,
            "exponent bits": info.bits - 1 - mantissa,
            "mantissa bits": mantissa,
            "eps": f"{info.eps:.4g}",
            "smallest normal": f"{info.tiny:.4g}",
            "largest": f"{info.max:.4g}",
        }
    )
pd.DataFrame(rows)

# %% [markdown]
# bfloat16 has float32's range (up to 3.4e38, down to 1.2e-38) and less than three
# decimal digits of precision (eps 2⁻⁷ = 0.0078); float16 has more precision but a range
# of only 6.1e-5 to 65504. Below, the bits of 1/3 in each format (sign, exponent,
# mantissa): bfloat16 is the first half of float32, rounded at its last bit.


# %%
def bits(value: float, dtype: torch.dtype) -> str:
    """Sign, exponent and mantissa bits of ``value`` stored as ``dtype``."""
    int_type, exponent = {
        torch.float32: (torch.int32, 8),
        torch.bfloat16: (torch.int16, 8),
        torch.float16: (torch.int16, 5),
    }[dtype]
    width = torch.finfo(dtype).bits
    raw = torch.tensor(value).to(dtype).view(int_type).item() & (2**width - 1)
    text = format(raw, f"0{width}b")
    return f"{text[0]} {text[1 : 1 + exponent]} {text[1 + exponent :]}"


for dtype in (torch.float32, torch.bfloat16, torch.float16):
    stored = torch.tensor(1 / 3).to(dtype).item()
    print(f"{str(dtype).removeprefix('torch.'):9s} {bits(1 / 3, dtype):36s} = {stored:.4g}")

# %% [markdown]
# What the two 16-bit formats do to a few numbers a training step meets: a weight
# (1/3), an integer, a large activation (70,000) and a small gradient (1e-8):


# %%
def shown(value: float) -> str:
    """Whole numbers in full, others with 4 significant digits."""
    return f"{value:,.0f}" if math.isfinite(value) and value == int(value) else f"{value:.4g}"


values = torch.tensor([1 / 3, 257.0, 70000.0, 1e-8])
pd.DataFrame(
    {
        "float32": values.tolist(),
        "bfloat16": values.to(torch.bfloat16).float().tolist(),
        "float16": values.to(torch.float16).float().tolist(),
    }
).map(shown)

# %% [markdown]
# float16 overflows at 70,000 and flushes 1e-8 to zero: a mixed-precision run in
# float16 must multiply the loss by a large factor before the backward pass, so that
# small gradients stay representable, and divide it out before the optimizer step
# (the `GradScaler` of CUDA's `amp`, which also skips steps whose gradients overflowed).
# bfloat16 keeps float32's range, so it needs **no loss scaling**; it pays in precision
# instead (257 becomes 256), which is why only the heavy operations run in it.
#
# Under `torch.autocast("cpu", dtype=torch.bfloat16)` the convolutions and matrix
# products compute in bfloat16 from bfloat16 copies of their inputs and weights; the
# weights themselves, their gradients and the optimizer stay float32. The trainer casts
# the network's outputs back to float32 (`to_float32`) before the loss:

# %%
torch.manual_seed(0)
conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
x = torch.rand(2, 3, 8, 8)  # (B, 3, H, W)
with torch.autocast("cpu", dtype=torch.bfloat16):
    y = conv(x)
loss = to_float32(y).square().mean()
loss.backward()
print(f"weight {conv.weight.dtype}, output {y.dtype}, loss {loss.dtype}")
print(f"weight gradient {conv.weight.grad.dtype}")

# %% [markdown]
# That runs on any CPU. It is fast only where the CPU computes in bfloat16 natively:
# the AVX512-BF16 instructions (AMD Zen 4 and later, Intel Cooper Lake and Sapphire
# Rapids) or Intel's AMX tiles. Elsewhere oneDNN, the library behind PyTorch's CPU
# convolutions, emulates bfloat16 with float32 arithmetic and conversions, slower than
# float32 alone. So `detutils` asks oneDNN, not the CPU's flags (an environment
# variable such as `ONEDNN_MAX_CPU_ISA` can keep oneDNN below what the CPU has):
# `detutils.engine.trainer.cpu_has_bfloat16()` returns
# `torch.ops.mkldnn._is_mkldnn_bf16_supported()`, and `autocast_dtype(amp, device)`
# gives the trainer its autocast dtype: float16 on CUDA, bfloat16 on a CPU with native
# kernels, None (float32) otherwise. This machine:

# %%
# NBVAL_IGNORE_OUTPUT
# (what this CPU has)
flags = set()
if Path("/proc/cpuinfo").is_file():  # Linux
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
print("CPU flags:", ", ".join(f"{f} {f in flags}" for f in ("avx2", "avx512_bf16", "amx_bf16")))
print(f"ATen kernels: {torch.backends.cpu.get_cpu_capability()}")
print(f"cpu_has_bfloat16(): {cpu_has_bfloat16()}")
print(f"autocast_dtype(amp=True, cpu): {autocast_dtype(True, torch.device('cpu'))}")

# %% [markdown]
# On a CPU without native kernels, `amp` falls back to float32 and says so; here
# `cpu_has_bfloat16` is replaced by one that answers False, to show what such a CPU
# sees:

# %%
with (
    mock.patch("detutils.engine.trainer.cpu_has_bfloat16", return_value=False),
    warnings.catch_warnings(record=True) as caught,
):
    warnings.simplefilter("always")
    fallback = autocast_dtype(True, torch.device("cpu"))
print(f"autocast dtype: {fallback}")
print(f"warning: {caught[0].message}")

# %% [markdown]
# ## 2. Channels-last weights and images
#
# A tensor `(B, ch, H, W)` (ch channels; PyTorch and oneDNN call this layout NCHW)
# is stored as one row of numbers; its *strides* say how many places to move in that
# row for one step along each dimension. In the usual, contiguous layout the last
# dimension is the densest: a row of pixels of one channel, then the next row, then
# the next channel. In the *channels-last* layout (NHWC) the channels of one pixel sit
# side by side. The shape, and every value at an index, stay the same:

# %%
x = torch.arange(12).reshape(1, 3, 2, 2)  # (B, ch, H, W): 3 channels of 2 x 2 pixels
x_last = x.contiguous(memory_format=torch.channels_last)
for name, tensor in [("contiguous", x), ("channels_last", x_last)]:
    in_memory = torch.as_strided(tensor, (tensor.numel(),), (1,))  # the row as stored
    print(f"{name:13s} shape {tuple(tensor.shape)} stride {tensor.stride()}")
    print(f"{'':13s} memory {in_memory.tolist()}")
print("same values at every index:", torch.equal(x, x_last))

# %% [markdown]
# A convolution sums, for each output pixel, over the input channels of a few
# neighbouring pixels. With the channels of a pixel side by side the CPU reads them
# in a few vector loads; oneDNN's convolutions work in a channels-innermost layout, so
# tensors in the usual layout are reordered to it and back around the convolutions,
# every step. Channels-last weights and images remove those copies, and the layout
# carries through: a convolution of a channels-last input gives a channels-last
# output, and so does what follows it.

# %%
torch.manual_seed(0)
block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU())
block.to(memory_format=torch.channels_last)
out = block(torch.rand(2, 3, 16, 16).contiguous(memory_format=torch.channels_last))
print(f"weight stride {block[0].weight.stride()}, output stride {out.stride()}")
print("output channels-last:", out.is_contiguous(memory_format=torch.channels_last))

# %% [markdown]
# The trainer does this with `schedule.channels_last`: `model.to(memory_format=
# torch.channels_last)` before the optimizer and the EMA see the weights, and
# `images.contiguous(memory_format=torch.channels_last)` for every batch; it hands the
# model back in the usual layout.
#
# **Measured here.** One training step of YOLOv8n (forward, loss, backward; the AdamW
# step adds little) on 16 images of the shapes set at 320 px, as in the `cpu` schedule:
# two steps to warm up (the first steps in a new layout prepare oneDNN's kernels and
# reorder the weights), then the median of three. Two torch threads, as the schedule
# trains: a training step is large work that two cores share well (section 5); the
# thread count goes back to the set-up's afterwards. bfloat16 (autocast, channels-last)
# is timed only where the CPU has native kernels.

# %%
# NBVAL_IGNORE_OUTPUT
# (prints a line only on the first run, while the set is written)
root = ensure_shapes()

# %%
train_set = CocoDetection(*find_split(root, "train"))
train_set.transforms = build_transforms(320, train=False)  # letterbox only
images, targets = collate([train_set[i] for i in range(16)])  # (16, 3, 320, 320)
torch.manual_seed(0)
model = build_detector("yolov8n", num_classes=train_set.num_classes).train()
print(f"{len(train_set)} training images; a batch {tuple(images.shape)}")
print(f"{model.name}: {sum(p.numel() for p in model.parameters()):,} parameters")


# %%
def step_seconds(model, images, targets, autocast_to=None, warmup=2, steps=3):
    """Median seconds of a forward, loss and backward pass, after ``warmup`` untimed ones.

    ``autocast_to``: None for float32, or the dtype of ``torch.autocast`` on the CPU.
    """
    seconds = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=autocast_to, enabled=autocast_to is not None):
            outputs = model(images)
        losses = model.loss(to_float32(outputs), targets)
        losses["loss"].backward()
        if step >= warmup:
            seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}

# %%
# NBVAL_IGNORE_OUTPUT
# (timings: they depend on the machine and on what else runs on it)
runs = [("float32", "contiguous"), ("float32", "channels_last")]
if cpu_has_bfloat16():
    runs.append(("bfloat16", "channels_last"))
print(f"native bfloat16 kernels: {cpu_has_bfloat16()}; timing {len(runs)} variants")
timings = []
torch.set_num_threads(2)
try:
    for dtype_name, layout in runs:
        model.to(memory_format=LAYOUTS[layout])
        batch = images.contiguous(memory_format=LAYOUTS[layout])
        autocast_to = torch.bfloat16 if dtype_name == "bfloat16" else None
        seconds = step_seconds(model, batch, targets, autocast_to)
        timings.append({"dtype": dtype_name, "layout": layout, "s / step": seconds})
finally:
    torch.set_num_threads(setup_threads)
    model.to(memory_format=torch.contiguous_format)
step_table = pd.DataFrame(timings)
step_table["images / s"] = 16 / step_table["s / step"]
step_table["vs contiguous"] = step_table["s / step"] / step_table["s / step"].iloc[0]
print(significant(step_table, digits=3).to_string(index=False))
figure, ax = plt.subplots(figsize=(5, 2.4))
labels = [f"{row['dtype']}\n{row['layout']}" for row in timings]
ax.barh(labels, step_table["s / step"])
ax.invert_yaxis()
ax.set(xlabel="seconds per step (16 images, 320 px, 2 threads)", title="YOLOv8n training step")
plt.show()

# %% [markdown]
# On the 2-core AMD EPYC (AVX2, no native bfloat16) of the README's measurements, with
# nothing else running, a float32 step (with the AdamW update) took 0.82 s in the usual
# layout and 0.65 s channels-last. On a 2-core CPU with AVX-512 and native bfloat16,
# at 256 px, bfloat16 autocast with channels-last weights took YOLOv8n's step from
# 0.86 s to 0.53 s, and YOLOv3-tiny's from 1.11 s to 0.53 s. NanoDet-m gains nothing
# from bfloat16: its depthwise convolutions do little arithmetic per number they read,
# so they wait on memory, not on the multipliers. Timings on a machine that runs other
# work at the same time can be several times slower and out of order: compare figures
# from one quiet run.
#
# ## 3. Images decoded once (`cache_images`)
#
# The shapes set stores PNG files. Decoding one (reading the file, inflating its
# compressed bytes, undoing PNG's filters) is a large part of what loading a training
# image costs; the augmentation (letterbox, flip, colour jitter) and the target are the
# rest. The `cpu` schedule reads each of the 2,000 training images four times (500
# steps of 16 images), so it decodes them all once, before training, into `uint8`
# tensors of 3 bytes a pixel (`CocoDetection.cache_images`, called by
# `build_train_set`); the worker process forked by the DataLoader shares those pixels
# instead of decoding again.
#
# Measured on the first 32 training images: one copy of the data set decodes on every
# read, the other is cached first (the time of `cache_images` is the time of decoding).

# %%
# NBVAL_IGNORE_OUTPUT
# (timings)
num_images = 32
augment = build_transforms(320, train=True)  # letterbox, flip, colour jitter
decoding = CocoDetection(*find_split(root, "train"), transforms=augment)  # decodes every read
cached = CocoDetection(*find_split(root, "train"), transforms=augment)  # cached below
for dataset in (decoding, cached):
    dataset.image_ids = dataset.image_ids[:num_images]  # the first 32 images only

torch.manual_seed(0)
start = time.perf_counter()
for index in range(num_images):
    decoding[index]
read_and_augment = (time.perf_counter() - start) / num_images
start = time.perf_counter()
held = cached.cache_images()  # decodes the 32 files into memory
decode = (time.perf_counter() - start) / num_images
torch.manual_seed(0)
start = time.perf_counter()
for index in range(num_images):
    cached[index]
augment_only = (time.perf_counter() - start) / num_images
print(f"decode a PNG:                     {1000 * decode:.3g} ms")
print(f"read a cached image and augment:  {1000 * augment_only:.3g} ms")
print(f"decode and augment (no cache):    {1000 * read_and_augment:.3g} ms")

# %% [markdown]
# What the cache holds is counted, not timed:

# %%
side = train_set.coco.imgs[train_set.image_ids[0]]["width"]
print(f"{num_images} images of {side} x {side} px: {held:,} bytes ({held / 1e6:.3g} MB)")

# %% [markdown]
# One DataLoader worker prepares the next batch while the main process trains on this
# one, so loading costs nothing as long as 16 images are ready within a step. What a
# batch costs each way, beside the float32 channels-last step of section 2, and what
# the cache saves over a `cpu` run (8,000 reads, 2,000 of them decodes once cached):

# %%
# NBVAL_IGNORE_OUTPUT
# (timings)
step = timings[1]["s / step"]  # float32, channels-last, 2 threads
reads = cpu.iterations * cpu.batch_size
print(f"a batch of 16: {16 * read_and_augment:.3g} s without the cache, ", end="")
print(f"{16 * augment_only:.3g} s with it; the step: {step:.3g} s")
saved = (reads - len(train_set)) * decode
print(f"decodes saved in a cpu run: {reads - len(train_set):,}, {saved:.3g} s of the worker")

# %% [markdown]
# The worker has one core of two, and the step wants both: every millisecond the worker
# spends decoding is taken from the step's second thread. The cache takes 3 bytes a
# pixel, 0.6 GB for the shapes set: fine for a small set, not for COCO's 118,000
# images, which is why `cache_images` is a schedule field and not a default.
#
# ## 4. A learning rate that keeps to the clock (`lr_by_time`)
#
# The `cpu` run is planned in *iterations*: a linear warm-up over half an epoch, then a
# cosine that reaches its floor (1 % of the rate) at the 500th step. Planned in
# epochs, a run cut short by its time budget would stop with the rate still high, and
# keep the weights of a noisy mid-training step. A time guard, `max_minutes` (8.75),
# stops a machine slower than planned; alone, it would stop such a run half way down
# its cosine. With `lr_by_time`, `build_lr_scheduler` makes the schedule stand at the
# later of two positions: the iterations done, and the fraction of the time budget
# spent times the planned iterations. A run that keeps to its plan follows the
# iterations exactly; a slower one is pulled along by the clock and reaches the floor
# at its deadline, with fewer steps.
#
# No training is needed to see it: `simulate_lr` runs the trainer's loop with a clock
# that advances a fixed number of seconds a step, and the library's scheduler.

# %%
steps_per_epoch = math.ceil(2000 / cpu.batch_size)  # the shapes set: 2,000 training images
warmup = round(cpu.warmup_epochs * steps_per_epoch)
budget = 60 * cpu.max_minutes  # seconds
planned_pace = budget / cpu.iterations  # seconds a step at which 500 steps fill the budget


def simulate_lr(seconds_per_step: float, lr_by_time: bool = True) -> list[float]:
    """The learning rate of every step of a ``cpu`` run whose steps take this long.

    The trainer's order: at each step the clock is read (the fraction of the budget
    spent), the step uses the current rate, the scheduler moves on; the step during
    which the deadline passes is the last.
    """
    schedule = cpu.replace(lr_by_time=lr_by_time)
    parameter = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([parameter], lr=schedule.lr)
    spent = [0.0]  # fraction of the budget spent, as the trainer keeps it
    scheduler = build_lr_scheduler(optimizer, schedule, steps_per_epoch, lambda: spent[0])
    rates = []
    for iteration in range(schedule.iterations):
        now = iteration * seconds_per_step  # seconds since the first step
        spent[0] = now / budget
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradient: changes nothing
        scheduler.step()
        if now > budget:
            break
    return rates


paces = {
    "keeps to the plan": (planned_pace, True),
    "1.5 times slower, lr_by_time": (1.5 * planned_pace, True),
    "1.5 times slower, time guard only": (1.5 * planned_pace, False),
}
curves = {name: simulate_lr(pace, by_time) for name, (pace, by_time) in paces.items()}
figure, axes = plt.subplots(1, 2, figsize=(9, 3))
for (name, rates), style in zip(curves.items(), ["-", "-", "--"], strict=True):
    pace = paces[name][0]
    axes[0].plot(range(len(rates)), rates, style, label=name)
    axes[1].plot([i * pace / 60 for i in range(len(rates))], rates, style, label=name)
axes[0].set(xlabel="step", ylabel="learning rate", title="by step")
axes[1].axvline(cpu.max_minutes, color="grey", linewidth=0.8)
axes[1].set(xlabel="minutes of training", title="by the clock (grey: the time guard)")
axes[0].legend(fontsize=7)
plt.show()
for name, rates in curves.items():
    last = rates[-1] / cpu.lr
    print(f"{name:34s} {len(rates)} steps, last rate {last:.3g} of lr")

# %% [markdown]
# The run that keeps to its plan takes its 500 steps and ends at 1 % of the rate. The
# run 1.5 times slower is stopped by the time guard after about 335 steps: with
# `lr_by_time` its warm-up and cosine run 1.5 times faster by step and end at the
# floor; with the time guard alone it stops with the rate at a third of its peak. By
# the clock (right), the slow run with `lr_by_time` draws the planned curve, only with
# fewer steps under it. A machine faster than planned (the README's CPU took 0.8 s a
# step, not 1.05 s) follows the iterations, since they are ahead of the clock, and
# ends before the guard.
#
# ## 5. One thread or two
#
# torch splits the work of an operation (a convolution, a large sum) over its intra-op
# threads. A training step at 320 px is large work, and two threads on two cores
# nearly halve it; a small operation gains little, since handing work to a second
# thread and waiting for it has a cost of its own. Both measured: the step of
# section 2 (float32, channels-last) and the step of the `ci` schedule (4 images of
# 64 px), on 1 and 2 threads.

# %%
# NBVAL_IGNORE_OUTPUT
# (timings)
small_set = CocoDetection(*find_split(root, "train"), transforms=build_transforms(64, train=False))
small_images, small_targets = collate([small_set[i] for i in range(4)])  # (4, 3, 64, 64)
cases = {
    "16 images, 320 px": (images, targets, 1, 3),
    "4 images, 64 px (ci)": (small_images, small_targets, 2, 5),
}
rows = []
model.to(memory_format=torch.channels_last)
try:
    for name, (batch, batch_targets, warm, steps) in cases.items():
        batch = batch.contiguous(memory_format=torch.channels_last)
        row = {"step": name}
        for threads, column in [(1, "1 thread, s"), (2, "2 threads, s")]:
            torch.set_num_threads(threads)
            row[column] = step_seconds(model, batch, batch_targets, warmup=warm, steps=steps)
        rows.append(row)
finally:
    torch.set_num_threads(setup_threads)
    model.to(memory_format=torch.contiguous_format)
thread_table = pd.DataFrame(rows)
thread_table["speed-up"] = thread_table["1 thread, s"] / thread_table["2 threads, s"]
print(significant(thread_table, digits=3).to_string(index=False))

# %% [markdown]
# Training uses two threads (`threads=2` in the `cpu` schedule; the trainer restores
# the count when it returns). The tests, `make refresh` and this notebook's set-up use
# one (`DETUTILS_NUM_THREADS`, default 1), for three reasons:
#
# - **The same numbers every run.** Float32 addition is not associative: a sum split
#   over two threads adds in another order than on one, and other last bits come out.
#   The stored outputs are compared with each new run, so they must come from one
#   fixed order. Below, a sum of four million numbers and the weight gradient of a
#   convolution, each computed twice on 1 thread and twice on 2: each thread count
#   repeats itself, but the two may differ in the last bits.
# - **Small work.** The lesson cells and the `ci` steps work on small tensors, where a
#   second thread saves little or nothing (the table above).
# - **Shared cores.** A test machine often runs other jobs. Two threads on two busy
#   cores wait for each other at every operation, and a step can then take several
#   times as long as on one thread.

# %%
# NBVAL_IGNORE_OUTPUT
# (the last bits depend on the CPU's kernels)
torch.manual_seed(0)
numbers = torch.randn(4_000_000)
conv = nn.Conv2d(16, 32, 3)
feature_map = torch.randn(8, 16, 64, 64)  # (B, ch, H, W)


def weight_gradient_sum():
    conv.zero_grad()
    conv(feature_map).square().mean().backward()
    return conv.weight.grad.sum()


for name, compute in [
    ("sum of 4M numbers", numbers.sum),
    ("conv weight gradient", weight_gradient_sum),
]:
    results = {1: [], 2: []}  # threads -> two results
    for threads in (1, 1, 2, 2):
        torch.set_num_threads(threads)
        results[threads].append(compute().item())
    torch.set_num_threads(setup_threads)
    repeats = all(first == second for first, second in results.values())
    same = results[1][0] == results[2][0]
    print(f"{name}: 1 thread {results[1][0]!r}, 2 threads {results[2][0]!r}")
    print(f"    each thread count repeats itself: {repeats}; 1 and 2 threads agree: {same}")

# %% [markdown]
# ## Recap
#
# - The `cpu` schedules are planned in float32, which every CPU runs fast. bfloat16 has
#   float32's 8-bit exponent and a 7-bit mantissa: float32's range, so no loss scaling,
#   and two to three decimal digits. `amp` on a CPU autocasts convolutions and matrix
#   products to it where oneDNN has native kernels (AVX512-BF16 or AMX;
#   `cpu_has_bfloat16`), and falls back to float32 with a warning elsewhere.
# - Channels-last (NHWC) stores the channels of a pixel side by side (stride 1 along
#   the channels); the shape and the values stay. Weights and images in it spare
#   oneDNN's convolutions a reorder on every step.
# - Decoding a PNG is a large part of loading a training image; `cache_images`
#   decodes the set once (3 bytes a pixel) and the DataLoader's worker shares it, so
#   the worker takes less of the cores the step needs.
# - The learning rate is planned in iterations; `max_minutes` stops a slow machine, and
#   `lr_by_time` lets the schedule follow whichever clock is further along, so the
#   cosine still ends at its floor.
# - Two threads for a training step, one for tests: small work gains nothing from a
#   second thread, and one thread keeps float32 results bit-identical run to run.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** By hand, from bfloat16's 7 mantissa bits: what does 257.0 become in
# bfloat16 (`bf16_of_257`, a number), and how far apart are two neighbouring bfloat16
# numbers between 512 and 1024 (`spacing_near_1000`, a number)?

# %% tags=["solution"]
bf16_of_257 = spacing_near_1000 = None  # two numbers
### BEGIN SOLUTION
# 8 significant bits (the leading 1 and 7 stored): between 2**8 = 256 and 512 the
# spacing is 2**(8 - 7) = 2, so 257 lies half way between 256 and 258; ties go to the
# even mantissa, 256. Between 2**9 and 2**10 the spacing is 2**(9 - 7) = 4.
bf16_of_257 = 256.0
spacing_near_1000 = 4.0
### END SOLUTION
print(f"257 -> {bf16_of_257}; spacing near 1000: {spacing_near_1000}")

# %% tags=["check"]
check_close(
    "bf16_of_257", bf16_of_257, torch.tensor(257.0).to(torch.bfloat16).item(),
    hint="between 256 and 512 bfloat16 has 2**7 = 128 steps of 2; a tie goes to the "
    "even mantissa",
)  # fmt: skip
check_close(
    "spacing_near_1000", spacing_near_1000, 2.0 ** (9 - 7),
    hint="numbers in [2**e, 2**(e + 1)) are 2**(e - 7) apart; 1000 lies in [2**9, 2**10).",
)  # fmt: skip
### BEGIN HIDDEN TESTS
above = torch.tensor(1000.0 + spacing_near_1000).to(torch.bfloat16).item()
check_close("1000 + spacing in bfloat16", above, 1000.0 + spacing_near_1000,
            hint="1000 plus one spacing is itself a bfloat16 number")  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** Write `channels_last_strides(shape)`: for a shape `(B, ch, H, W)`,
# the strides (a tuple of 4 ints) of a tensor of that shape in the channels-last
# layout, from the shape alone (no tensor). The check compares it with PyTorch's.

# %% tags=["solution"]
channels_last_strides = None  # your function (B, ch, H, W) -> (4 ints)
### BEGIN SOLUTION


def channels_last_strides(shape):
    _, channels, height, width = shape
    # memory order B, H, W, ch: ch is the densest, then W, then H, then B
    return (height * width * channels, 1, width * channels, channels)


### END SOLUTION


# %% tags=["check"]
def torch_strides(shape):
    return torch.empty(shape, memory_format=torch.channels_last).stride()


check_function(
    "channels_last_strides", channels_last_strides, [((2, 3, 4, 5),)], torch_strides,
    hint="channels-last stores B, H, W, ch from outer to inner: ch moves by 1, a step "
    "along W skips the ch channels of a pixel, a step along H a whole row of W pixels.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "channels_last_strides", channels_last_strides,
    [((16, 64, 40, 40),), ((1, 3, 320, 320),), ((4, 256, 10, 20),)], torch_strides,
    hint="the same formula for any shape: (H * W * ch, 1, W * ch, ch)",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** A CPU twice as slow as planned takes 2.1 s a step (`2 * planned_pace`).
# Find, with `simulate_lr` or by hand: the number of steps it takes before the time
# guard stops it (`slow_steps`, an int), and the learning rate of its last step as a
# fraction of `cpu.lr`, with the time guard alone (`last_factor_guard_only`) and with
# `lr_by_time` (`last_factor_by_time`).

# %% tags=["solution"]
slow_steps = last_factor_guard_only = last_factor_by_time = None  # an int, two numbers
### BEGIN SOLUTION
guard_only = simulate_lr(2 * planned_pace, lr_by_time=False)
by_time = simulate_lr(2 * planned_pace, lr_by_time=True)
slow_steps = len(guard_only)
last_factor_guard_only = guard_only[-1] / cpu.lr
last_factor_by_time = by_time[-1] / cpu.lr
### END SOLUTION
print(f"{slow_steps} steps before the time guard")

# %% tags=["check"]
check_true(
    slow_steps is not None and 249 <= slow_steps <= 253,
    f"`slow_steps` is {slow_steps}; expected about 250.",
    hint="the budget is 60 * 8.75 = 525 s; at 2.1 s a step about 525 / 2.1 = 250 fit "
    "(the guard lets the step during which the deadline passes finish).",
)  # fmt: skip
check_close(
    "last_factor_guard_only", last_factor_guard_only, lr_factor(250, cpu.iterations, cpu, warmup),
    rtol=0.03,
    hint="without lr_by_time the rate follows the iterations: lr_factor(step, 500, cpu, "
    "warmup) at the last step, about half way down the cosine.",
)  # fmt: skip
check_close(
    "last_factor_by_time", last_factor_by_time, cpu.final_lr_fraction, atol=0.002,
    hint="with lr_by_time the clock pulls the schedule to its end at the deadline: "
    "the cosine's floor, final_lr_fraction.",
)  # fmt: skip
check_passed("Exercise 3")

# %% [markdown]
# **Exercise 4.** The cache of section 3 holds 3 bytes a pixel. How many bytes does it
# hold for the 2,000 training images of the shapes set (`cache_bytes`, an int), and how
# many PNG decodes does it save over a `cpu` run of 500 steps of 16 images
# (`decodes_saved`, an int)?

# %% tags=["solution"]
cache_bytes = decodes_saved = None  # two ints
### BEGIN SOLUTION
cache_bytes = 2000 * 320 * 320 * 3  # every image is 320 x 320 px
decodes_saved = 500 * 16 - 2000  # every read decodes without the cache; once each with it
### END SOLUTION
print(f"{cache_bytes} bytes, {decodes_saved} decodes saved")

# %% tags=["check"]
pixels = sum(image["height"] * image["width"] for image in train_set.coco.imgs.values())
check_close(
    "cache_bytes", cache_bytes, 3 * pixels, rtol=0,
    hint="images x height x width x 3 channels, one byte each (uint8).",
)  # fmt: skip
check_close(
    "decodes_saved", decodes_saved, cpu.iterations * cpu.batch_size - len(train_set), rtol=0,
    hint="500 steps x 16 images are read; with the cache only the first read of each of "
    "the 2,000 images decodes.",
)  # fmt: skip
check_passed("Exercise 4")

# %% [markdown]
# ## Further reading
#
# - D. Kalamkar et al., *A Study of BFLOAT16 for Deep Learning Training*, 2019,
#   <https://arxiv.org/abs/1905.12322>
# - P. Micikevicius et al., *Mixed Precision Training*, ICLR 2018 (float16 and loss
#   scaling), <https://arxiv.org/abs/1710.03740>
# - PyTorch, *Automatic Mixed Precision package* (the CPU ops that autocast to
#   bfloat16): <https://docs.pytorch.org/docs/stable/amp.html>
# - PyTorch tutorial, *Channels Last Memory Format in PyTorch*:
#   <https://docs.pytorch.org/tutorials/intermediate/memory_format_tutorial.html>
# - oneDNN, *Understanding Memory Formats* (plain and blocked layouts, and why
#   convolutions reorder):
#   <https://oneapi-src.github.io/oneDNN/v3.0/dev_guide_understanding_memory_formats.html>
# - PyTorch, *CPU threading and TorchScript inference* (intra-op and inter-op threads):
#   <https://docs.pytorch.org/docs/stable/notes/cpu_threading_torchscript_inference.html>
# - I. Loshchilov and F. Hutter, *SGDR: Stochastic Gradient Descent with Warm
#   Restarts*, ICLR 2017 (the cosine schedule), <https://arxiv.org/abs/1608.03983>
# - ultralytics' `time` training argument (a budget in hours that overrides `epochs`),
#   the same idea in another trainer: <https://docs.ultralytics.com/modes/train/>
