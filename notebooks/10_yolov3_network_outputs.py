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
# # 10 · YOLOv3: from a cfg file to network outputs
#
# YOLOv3 (Redmon and Farhadi, 2018) was not published as Python code but as a
# Darknet *cfg* file: a plain list of layers, one `[section]` each. Every PyTorch port,
# ultralytics' included, reads that file and builds the network from it. This notebook
# does the same, step by step: it reads a cfg, follows channels and strides through
# the five layer types YOLOv3 is made of, works out which intermediate outputs must be
# kept for later, traces the shapes of the full network at 416 pixels, and finally
# turns the raw numbers of a detection layer into boxes and scores.
#
# **Learning goals**
#
# 1. Read a Darknet cfg: blocks, options, layer numbers, and relative references.
# 2. Follow channels and stride through `[convolutional]`, `[shortcut]`, `[route]`,
#    `[upsample]` and `[yolo]` from the cfg alone.
# 3. Tell which layer outputs a forward pass must keep for later, and for how long.
# 4. Give the shape of every head output at 416 px, and the parameter counts of
#    YOLOv3 (61,949,149) and YOLOv3-tiny (8,852,366).
# 5. Decode a raw output (t_x, t_y, t_w, t_h, objectness, classes) into pixel boxes
#    and probabilities.
#
# **Prerequisites**: notebook 02 (priors, the YOLO coder); convolutions, batch norm and
# residual connections in PyTorch.
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
import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import display

from detutils.checks import check_close, check_equal, check_passed, check_true
from detutils.coders import decode_yolo
from detutils.data.shapes import render_sample
from detutils.models.darknet import Darknet, parse_darknet_cfg, read_darknet_cfg
from detutils.models.yolov3 import CFG_DIR, build_yolov3, build_yolov3_tiny
from detutils.trace import trace
from detutils.viz import draw_boxes


def count_parameters(module):
    """Number of parameters of a module, its children included."""
    return sum(parameter.numel() for parameter in module.parameters())


# %% [markdown]
# ## 1. A cfg file in miniature
#
# A cfg starts with a `[net]` block (the input: channels, width, height); every later
# block is one layer, numbered from 0 in file order. Options are `key=value` lines;
# `#` starts a comment. Below is a toy network wired like YOLOv3, at a fraction of
# its depth: a stem, a residual block, two detection heads, and the path that brings
# the coarse features back up to the finer head.

# %%
TOY_CFG = """
[net]
channels=3
width=64
height=64

# layer 0: stem
[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

# layer 1: down to stride 2
[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

# layers 2-4: a residual block (1x1 conv to half the channels, 3x3 back, add)
[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[shortcut]
from=-3
activation=linear

# layer 5: down to stride 4
[convolutional]
batch_normalize=1
filters=32
size=3
stride=2
pad=1
activation=leaky

# layers 6-7: head at stride 4: 3 anchors x (5 + 2 classes) = 21 raw channels
[convolutional]
filters=21
size=1
stride=1
pad=1
activation=linear

[yolo]
mask=3,4,5
anchors=4,6, 8,8, 10,14, 16,12, 20,24, 32,28
classes=2

# layer 8: back to layer 5; layer 9: up to stride 2
[route]
layers=-3

[upsample]
stride=2

# layer 10: concatenate with the residual block's output (layer 4)
[route]
layers=-1, 4

# layers 11-12: head at stride 2
[convolutional]
filters=21
size=1
stride=1
pad=1
activation=linear

[yolo]
mask=0,1,2
anchors=4,6, 8,8, 10,14, 16,12, 20,24, 32,28
classes=2
"""
toy_blocks = parse_darknet_cfg(TOY_CFG, source="toy.cfg")
blocks_table = pd.DataFrame(
    {
        "layer": ["net"] + list(range(len(toy_blocks) - 1)),
        "kind": [block.kind for block in toy_blocks],
        "cfg line": [block.line for block in toy_blocks],
        "options": [
            ", ".join(f"{key}={value}" for key, value in block.options.items())
            for block in toy_blocks
        ],
    }
).set_index("layer")
with pd.option_context("display.max_colwidth", None):
    display(blocks_table)

# %% [markdown]
# Two kinds of numbers refer to other layers. `[shortcut] from=-3` and
# `[route] layers=-3` count back from the layer itself: layer 4 adds layer 4 − 3 = 1,
# layer 8 forwards layer 8 − 3 = 5. Positive numbers are layer numbers:
# `layers=-1, 4` at layer 10 concatenates layer 9 and layer 4. A mistake in the
# file is reported with its line:

# %%
try:
    parse_darknet_cfg("[net]\nchannels=3\n[convolutional]\nfilters 16\n", source="broken.cfg")
except ValueError as error:
    print(error)

# %% [markdown]
# ## 2. Channels and strides, from the cfg alone
#
# The builder needs the number of input channels of every convolution before any
# tensor flows, so it walks the blocks once and tracks the running output:
#
# | layer | output channels | output stride |
# | --- | --- | --- |
# | `[convolutional]` | `filters` | input stride × `stride` |
# | `[shortcut] from=k` | unchanged (it adds two maps of the same shape) | unchanged |
# | `[route] layers=...` | sum of the sources' channels (concatenation) | the sources' stride |
# | `[upsample] stride=2` | unchanged | input stride / 2 |
# | `[yolo]` | passes its input on unchanged | unchanged |
#
# The walk, written out:


# %%
def walk_cfg(blocks):
    """Output channels and stride of every layer of a cfg (the five YOLOv3 layer types)."""
    channels, strides = [], []
    running_channels, running_stride = int(blocks[0].options.get("channels", 3)), 1
    for index, block in enumerate(blocks[1:]):
        if block.kind == "convolutional":
            running_channels = int(block.options["filters"])
            running_stride *= int(block.options.get("stride", 1))
        elif block.kind == "upsample":
            running_stride //= int(block.options["stride"])
        elif block.kind == "route":
            sources = [index + ref if ref < 0 else ref for ref in block.get_ints("layers")]
            running_channels = sum(channels[source] for source in sources)
            running_stride = strides[sources[0]]
        # [shortcut] and [yolo] leave both unchanged
        channels.append(running_channels)
        strides.append(running_stride)
    return channels, strides


# %% [markdown]
# `detutils.models.darknet.Darknet` does this walk while it builds the modules, and
# stores what it found for each layer in `specs` (a `LayerSpec`: kind, the layers it
# reads, channels, stride, cfg line):

# %%
toy = Darknet(toy_blocks)
toy_channels, toy_strides = walk_cfg(toy_blocks)
assert toy_channels == [spec.channels for spec in toy.specs]
assert toy_strides == [spec.stride for spec in toy.specs]
pd.DataFrame(
    {
        "kind": [spec.kind for spec in toy.specs],
        "reads": [", ".join(map(str, spec.sources)) for spec in toy.specs],
        "channels": toy_channels,
        "stride": toy_strides,
        "module": [type(layer).__name__ for layer in toy.layers],
    }
).rename_axis("layer")

# %% [markdown]
# Routes and shortcuts own no parameters (an `Identity` placeholder keeps the layer
# numbers aligned); the forward pass does the concatenation and the addition itself.
# A 64-pixel image through the toy, traced with `detutils.trace`: one row per module
# call (the routes and shortcuts have no row), then the two head outputs
# `(B, 3, H, W, 5 + C)`.

# %%
toy_table, toy_outputs = trace(toy, torch.zeros(1, 3, 64, 64), max_depth=2)
toy_table

# %%
assert [tuple(output.shape) for output in toy_outputs] == [(1, 3, 16, 16, 7), (1, 3, 32, 32, 7)]
print("head strides:", [head.stride for head in toy.heads])

# %% [markdown]
# ## 3. The real YOLOv3
#
# The course ships YOLOv3's cfg (`detutils/models/cfg/yolov3.cfg`, comments added).
# `build_yolov3` reads it and builds the network for any number of classes; at 80
# (COCO) it has exactly the parameters of the released network. The walk above gives
# the same channels and strides as the builder on the full file.

# %%
yolov3_blocks = read_darknet_cfg(CFG_DIR / "yolov3.cfg")
model = build_yolov3(num_classes=80).to(device).eval()
network = model.network
channels, strides = walk_cfg(yolov3_blocks)
assert channels == [spec.channels for spec in network.specs]
assert strides == [spec.stride for spec in network.specs]
kinds = pd.Series([spec.kind for spec in network.specs]).value_counts()
print(
    f"{len(network.specs)} layers:", ", ".join(f"{count} {kind}" for kind, count in kinds.items())
)

# %%
backbone = sum(count_parameters(network.layers[index]) for index in range(75))
heads = count_parameters(network) - backbone
print(f"YOLOv3: {count_parameters(model):,} parameters")
print(f"  Darknet-53 backbone (layers 0-74): {backbone:,}")
print(f"  three heads and upsampling paths (layers 75-106): {heads:,}")
assert count_parameters(model) == 61_949_149

# %% [markdown]
# Darknet-53 is a stem and five stages; each stage halves the map with a stride-2
# 3 × 3 conv and stacks 1, 2, 8, 8 and 4 residual blocks: 1 + 5 + 2 × 23 = 52 convs
# and 23 shortcuts (the 53rd layer of the name is the classifier YOLOv3 drops). Then
# come the heads, coarse to fine:
#
# | layers | what | output |
# | --- | --- | --- |
# | 75-81 | five convs, a 3 × 3 conv, the head conv with 3 (5 + 80) = 255 filters | stride 32 |
# | 82 | `[yolo]` head 1 | 13 × 13 cells at 416 px |
# | 83-86 | route back to layer 79, 1 × 1 conv, upsample, route with layer 61 | stride 16 |
# | 87-94 | the same head pattern, `[yolo]` head 2 | 26 × 26 |
# | 95-98 | route back to layer 91, 1 × 1 conv, upsample, route with layer 36 | stride 8 |
# | 99-106 | the same head pattern, `[yolo]` head 3 | 52 × 52 |

# %%
head_rows = [
    {
        "layer": index,
        "stride": spec.stride,
        "anchors (px)": ", ".join(
            f"{w:.0f}x{h:.0f}" for w, h in network.layers[index].anchors.tolist()
        ),
        "head conv channels": network.specs[index - 1].channels,
    }
    for index, spec in enumerate(network.specs)
    if spec.kind == "yolo"
]
pd.DataFrame(head_rows)

# %%
assert network.head_indices == [82, 94, 106]
assert [row["head conv channels"] for row in head_rows] == [3 * (5 + 80)] * 3

# %% [markdown]
# ## 4. Which outputs must be kept for later
#
# A plain chain of layers only ever reads the previous output, so a forward pass can
# forget each output as soon as the next layer has run. A shortcut or a route also
# reads older outputs: those must be kept until their reader has run. Which ones, and
# until when, follows from the cfg alone: for every layer that reads layer `j`
# (other than the layer right before it, which is the running `x` anyway), keep `j`
# until its last reader.


# %%
def last_readers(specs):
    """Layer j -> the last layer that reads it, for outputs read out of sequence."""
    last_reader = {}
    for index, spec in enumerate(specs):
        for source in spec.sources:
            if source != index - 1:
                last_reader[source] = index
    return last_reader


toy_last = last_readers(toy.specs)
print("toy: keep", sorted(toy_last), "- release", toy_last)
assert set(toy_last) == toy.keep
assert toy.release_after == {reader: (source,) for source, reader in toy_last.items()}

# %% [markdown]
# `Darknet.keep` holds the layers to keep and `Darknet.release_after` maps a layer to
# the kept outputs it reads for the last time; `forward` keeps exactly those and lets
# each one go after its last reader. For YOLOv3, every route and shortcut with what it
# reads:

# %%
yolov3_last = last_readers(network.specs)
assert set(yolov3_last) == network.keep
rows = []
for index, spec in enumerate(network.specs):
    if spec.kind not in ("route", "shortcut"):
        continue
    option = "from" if spec.kind == "shortcut" else "layers"
    rows.append(
        {
            "layer": index,
            "kind": spec.kind,
            "cfg": f"{option}={yolov3_blocks[index + 1].options[option]}",
            "reads": ", ".join(map(str, spec.sources)),
            "kept outputs read": ", ".join(str(s) for s in spec.sources if s != index - 1),
            "released after it": ", ".join(map(str, network.release_after.get(index, ()))),
        }
    )
sources_table = pd.DataFrame(rows)
sources_table

# %%
shortcuts = [index for index, spec in enumerate(network.specs) if spec.kind == "shortcut"]
assert len(network.keep) == 27 and len(shortcuts) == 23
# Every shortcut at layer i adds layer i - 3, kept until i itself.
assert all(yolov3_last[i - 3] == i for i in shortcuts)
route_sources = sorted(network.keep - {i - 3 for i in shortcuts})
assert route_sources == [36, 61, 79, 91]
print(f"kept: {len(network.keep)} of {len(network.specs)} outputs;", "for routes:", route_sources)

# %% [markdown]
# How much memory that saves, for one 416-pixel image in float32: after each layer,
# the kept outputs still held. The reference (ultralytics' `Darknet.forward_once`)
# stores every output that a route or shortcut reads in a list (its `routs`) and holds
# it until the pass ends; releasing each one after its last reader holds far less at
# any time. (Autograd
# keeps its own references while training; the saving is for inference.)


# %%
def output_megabytes(spec, image_size=416):
    return spec.channels * (image_size // spec.stride) ** 2 * 4 / 2**20


# The reference's list: every source of a route, and the older source of a shortcut.
reference_kept = {
    source
    for index, spec in enumerate(network.specs)
    for source in spec.sources
    if spec.kind == "route" or source != index - 1
}
held_now, held_reference, alive = [], [], set()
for index in range(len(network.specs)):
    if index in network.keep:
        alive.add(index)
    held_now.append(sum(output_megabytes(network.specs[j]) for j in alive))
    held_reference.append(
        sum(output_megabytes(network.specs[j]) for j in reference_kept if j <= index)
    )
    alive -= set(network.release_after.get(index, ()))
fig, ax = plt.subplots(figsize=(7, 3))
ax.step(range(len(held_now)), held_reference, where="post", label="kept until the end")
ax.step(range(len(held_now)), held_now, where="post", label="released after the last reader")
ax.set_xlabel("layer")
ax.set_ylabel("kept outputs (MB)")
ax.set_title("outputs kept for routes and shortcuts, one 416 px image")
ax.legend(fontsize=8)
plt.show()

# %%
print(f"released early: peak {max(held_now):.4f} MB; kept to the end: {held_reference[-1]:.4f} MB")
print(f"the reference also keeps layers {sorted(reference_kept - network.keep)} (routes' -1)")
assert max(held_now) < held_reference[-1] / 5

# %% [markdown]
# ## 5. Output shapes at 416 pixels
#
# One image of the course's shapes set, drawn at 416 × 416, through the full network,
# traced. In eval mode `YOLOv3.forward` returns the decoded predictions and the raw
# head outputs (section 6); in training mode only the raw list. The table has one row
# per module call: here the layers around the first head.

# %%
image, _, _ = render_sample(seed=0, split="val", index=0, size=416)
images = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255).to(device)  # (1, 3, H, W)
table, (decoded, raw_outputs) = trace(model, images, max_depth=3)
table[table["name"].isin([f"network.layers.{i}" for i in range(75, 87)])]

# %%
table[table["name"].isin(["network", "(output)"])]

# %% [markdown]
# Each head output is `(B, K, H, W, 5 + C)`: for each of the K = 3 anchors of the head
# and each of the H × W cells, 85 numbers. The head conv emits them as
# `(B, 3 · 85, H, W)`; the `[yolo]` layer only reshapes, so that the last dimension
# holds one prediction. At 416 px the grids are 416 / 32 = 13, 416 / 16 = 26 and
# 416 / 8 = 52 cells a side.

# %%
shapes = [tuple(raw.shape) for raw in raw_outputs]
assert shapes == [(1, 3, 13, 13, 85), (1, 3, 26, 26, 85), (1, 3, 52, 52, 85)]
num_predictions = sum(3 * height * width for _, _, height, width, _ in shapes)
assert tuple(decoded.shape) == (1, num_predictions, 85) and num_predictions == 10647
print(f"{num_predictions} predictions per image = 3 x (13^2 + 26^2 + 52^2)")

# %% [markdown]
# YOLOv3-tiny, built from its own cfg the same way: seven 3 × 3 convs with max
# pooling instead of Darknet-53, two heads at strides 32 and 16.

# %%
tiny = build_yolov3_tiny(num_classes=80).to(device).eval()
tiny_decoded, tiny_raw = tiny(images)
print(f"YOLOv3-tiny: {count_parameters(tiny):,} parameters, {len(tiny.network.specs)} layers")
print("outputs:", [tuple(raw.shape) for raw in tiny_raw], tuple(tiny_decoded.shape))
assert count_parameters(tiny) == 8_852_366
assert [tuple(raw.shape) for raw in tiny_raw] == [(1, 3, 13, 13, 85), (1, 3, 26, 26, 85)]

# %% [markdown]
# ## 6. From raw outputs to boxes
#
# The 85 numbers of one prediction, for anchor `k` of cell `(y, x)` of a head with
# stride `s`:
#
# | channels | name | decoded |
# | --- | --- | --- |
# | 0, 1 | t_x, t_y | centre `(sigmoid(t_xy) + (x, y)) · s`: the sigmoid keeps it inside the cell |
# | 2, 3 | t_w, t_h | size `exp(t_wh) · anchor_k`: a scale of the anchor, always positive |
# | 4 | objectness logit | `sigmoid`: is there an object centred in this cell, for this anchor |
# | 5 ... 84 | class logits | `sigmoid` each: independent class probabilities, not a softmax |
#
# Written out for the stride-32 head:

# %%
head = model.heads[0]
raw = raw_outputs[0]  # (B, K, H, W, 5 + C)
_, num_anchors, height, width, _ = raw.shape
grid_y, grid_x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
grid_xy = torch.stack([grid_x, grid_y], dim=-1).to(raw)  # (H, W, 2): column x, row y
anchor_wh = head.anchors.view(1, num_anchors, 1, 1, 2)  # (1, K, 1, 1, 2) px
centre = (raw[..., :2].sigmoid() + grid_xy) * head.stride  # (B, K, H, W, 2) px
size = raw[..., 2:4].exp() * anchor_wh  # (B, K, H, W, 2) px
boxes = torch.cat([centre - size / 2, centre + size / 2], dim=-1)  # (B, K, H, W, 4) xyxy
inline = torch.cat([boxes, raw[..., 4:].sigmoid()], dim=-1).flatten(1, 3)  # (B, K H W, 85)
torch.testing.assert_close(inline, head.decode(raw))
torch.testing.assert_close(inline, decoded[:, : num_anchors * height * width])
print("inline decoding == YOLOLayer.decode == the first", num_anchors * height * width, "rows")

# %% [markdown]
# The box part is `detutils.coders.decode_yolo` (notebook 02); `YOLOLayer.decode`
# adds the sigmoids and flattens anchor by anchor, each anchor row-major, so row
# `k · H · W + y · W + x` of the decoded tensor is anchor `k` of cell `(y, x)`:

# %%
k, y, x = 2, 6, 9
row = k * height * width + y * width + x
single = decode_yolo(raw[0, k, y, x], torch.tensor([x, y]).to(raw), head.anchors[k], head.stride)
torch.testing.assert_close(decoded[0, row, :4], single)
print(f"anchor {k}, cell (y={y}, x={x}) -> row {row}")

# %% [markdown]
# What does an untrained network predict? Its weights are random, but two things are
# fixed by construction. Zero box outputs decode to the anchor itself, centred in its
# cell; here the nine anchors of the three heads at the cell that holds the image
# centre:

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
zero_boxes = []
for ax, head_layer in zip(axes, model.heads, strict=True):
    stride = head_layer.stride
    cell = torch.full((2,), 208.0 // stride)  # cell (x, y) that holds pixel (208, 208)
    anchors_at_cell = decode_yolo(torch.zeros(3, 4), cell, head_layer.anchors.cpu(), stride)
    zero_boxes.append(anchors_at_cell)  # (3, 4) xyxy px
    draw_boxes((416, 416), anchors_at_cell, ax=ax, linewidth=1.5)
    corner = (cell * stride).tolist()
    ax.add_patch(plt.Rectangle(corner, stride, stride, color="0.6", label=f"cell {stride} px"))
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(f"stride {stride}: t = 0 gives the 3 anchors")
plt.show()

# %%
for head_layer, anchors_at_cell in zip(model.heads, zero_boxes, strict=True):
    sizes = anchors_at_cell[:, 2:] - anchors_at_cell[:, :2]
    centres = (anchors_at_cell[:, :2] + anchors_at_cell[:, 2:]) / 2
    torch.testing.assert_close(sizes, head_layer.anchors.cpu())
    print(f"stride {head_layer.stride}: centre {centres[0].tolist()}, sizes {sizes.tolist()}")

# %% [markdown]
# And the objectness: `detutils.models.yolov3.init_head_biases` shifts the head
# conv's objectness bias to `log(8 / (640 / s)²)`, the share of cells that hold an
# object if an image has about 8 (RetinaNet's prior-probability initialisation). This
# per-stride prior is YOLOv5's (`_initialize_biases` in its `models/yolo.py`); the
# archive branch of ultralytics/yolov3, which the rest of this lesson follows, adds a
# flat −4.5 at every stride instead, a prior of 0.011 (log p = −3.9, −5.3 and −6.7
# here at strides 32, 16 and 8). At initialisation, in eval mode, the signal through 75
# random layers has faded, the box outputs are close to 0 and the objectness of every
# cell is close to that prior:

# %%
rows = []
for head_layer, raw in zip(model.heads, raw_outputs, strict=True):
    prior = 8 / (640 / head_layer.stride) ** 2
    objectness = raw[..., 4].sigmoid()
    rows.append(
        {
            "stride": head_layer.stride,
            "prior": prior,
            "mean objectness": objectness.mean().item(),
            "mean / prior": objectness.mean().item() / prior,
            "max |t_xywh|": raw[..., :4].abs().max().item(),
        }
    )
    assert abs(objectness.mean().item() / prior - 1) < 0.1
    assert raw[..., :4].abs().max().item() < 0.2
pd.DataFrame(rows)

# %% [markdown]
# ## Recap
#
# - A Darknet cfg lists layers as `[section]` blocks; negative references count back
#   from the layer, positive ones are layer numbers.
# - Channels and stride follow from the cfg alone: convs set the channels and multiply
#   the stride, routes concatenate (channels add up), shortcuts add, upsampling halves
#   the stride, `[yolo]` layers pass their input on.
# - Only outputs read out of sequence are kept: 27 of YOLOv3's 107, each until its last
#   reader (`Darknet.keep`, `Darknet.release_after`).
# - At 416 px YOLOv3 emits `(B, 3, 13, 13, 85)`, `(B, 3, 26, 26, 85)` and
#   `(B, 3, 52, 52, 85)`: 10,647 predictions of 4 box numbers, an objectness and 80
#   class logits. 61,949,149 parameters (YOLOv3-tiny: 8,852,366, two heads).
# - Decoding: centre `(sigmoid(t_xy) + cell) · stride`, size `exp(t_wh) · anchor`,
#   sigmoids on objectness and classes. From here on it is `YOLOLayer.decode`.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** Count by hand the parameters of layer 81, the head conv of the
# stride-32 head (1 × 1, 1024 input channels, 255 filters, with bias, no batch norm),
# and of one residual block of the last stage, layers 63-64 (a 1 × 1 conv 1024 → 512
# and a 3 × 3 conv 512 → 1024, each without bias but with batch norm, whose weight
# and bias count as parameters). Assign the two integers to `head_conv_params` and
# `block_params`, written as arithmetic on the sizes above, not read off the modules.

# %% tags=["solution"]
head_conv_params = block_params = None  # int each
### BEGIN SOLUTION
head_conv_params = 1024 * 255 + 255  # weights + biases
block_params = (1024 * 512 + 2 * 512) + (3 * 3 * 512 * 1024 + 2 * 1024)  # conv + BN, twice
### END SOLUTION
print(f"head conv: {head_conv_params}; residual block: {block_params}")

# %% tags=["check"]
check_true(
    head_conv_params is not None and block_params is not None,
    "`head_conv_params` or `block_params` is still None: assign your two counts (int).",
    hint="a conv has k * k * in * out weights; a bias adds one number per filter, a batch "
    "norm two (its weight and bias).",
)  # fmt: skip
check_equal(
    "head_conv_params", head_conv_params, count_parameters(network.layers[81]),
    hint="a 1 x 1 conv with bias: in_channels * filters weights, plus one bias per filter.",
)  # fmt: skip
check_equal(
    "block_params", block_params,
    count_parameters(network.layers[63]) + count_parameters(network.layers[64]),
    hint="each conv: k * k * in * out weights (no bias), and its batch norm a weight and a "
    "bias per output channel (2 * out); the running mean and variance are buffers.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
for first in (66, 69, 72):  # the other residual blocks of the stage are the same
    check_equal(
        f"block_params (layers {first}-{first + 1})", block_params,
        count_parameters(network.layers[first]) + count_parameters(network.layers[first + 1]),
        hint="every residual block of the last stage has the same two convs",
    )  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** Without computing anything: build YOLOv3 on the `meta` device (shapes
# only, no memory, no arithmetic) and find the head output shapes for a 608 × 608
# input. Assign `meta_shapes`, the list of the three output shapes as tuples (coarse
# to fine), and `num_predictions_608`, the number of predictions per image; derive
# that number by hand first.

# %% tags=["solution"]
meta_shapes = None  # list of three tuples (B, K, H, W, 5 + C)
num_predictions_608 = None  # int
### BEGIN SOLUTION
# 608 / 32 = 19, 608 / 16 = 38, 608 / 8 = 76: 3 x (19^2 + 38^2 + 76^2) = 22,743 predictions.
with torch.device("meta"):
    meta_model = build_yolov3(num_classes=80)
    meta_raw = meta_model.network(torch.empty(1, 3, 608, 608))
meta_shapes = [tuple(raw.shape) for raw in meta_raw]
num_predictions_608 = sum(shape[1] * shape[2] * shape[3] for shape in meta_shapes)
### END SOLUTION
print(meta_shapes, num_predictions_608)

# %% tags=["check"]
check_true(meta_shapes is not None, "`meta_shapes` is still None: assign a list of 3 shapes.",
           hint="with torch.device('meta'): build the model, call model.network on "
           "torch.empty(1, 3, 608, 608), and take tuple(raw.shape) of each output.")  # fmt: skip
check_equal(
    "meta_shapes", [tuple(shape) for shape in meta_shapes],
    [(1, 3, 19, 19, 85), (1, 3, 38, 38, 85), (1, 3, 76, 76, 85)],
    hint="one (B, K, H, W, 5 + C) per head, strides 32, 16, 8: H = W = 608 / stride; "
    "K = 3 anchors, 5 + 80 numbers each.",
)  # fmt: skip
check_true(
    num_predictions_608 is not None, "`num_predictions_608` is still None: assign an int.",
    hint="count K x H x W predictions for each of the three heads.",
)  # fmt: skip
check_equal(
    "num_predictions_608", num_predictions_608, 3 * (19**2 + 38**2 + 76**2),
    hint="K x H x W predictions per head, summed over the three heads.",
)  # fmt: skip
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** YOLOv3-tiny's cfg also has routes (and max pooling, which changes the
# stride like a stride-2 conv, except the size-2 stride-1 pool that keeps it). Which
# of its outputs must be kept, and until when? Apply `last_readers` to its specs
# (`tiny.network.specs`) and assign the result to `tiny_last`, a dict
# `{kept layer: its last reader}`.

# %% tags=["solution"]
tiny_last = None  # dict {kept layer: last layer that reads it}
### BEGIN SOLUTION
tiny_last = last_readers(tiny.network.specs)
### END SOLUTION
routes = {
    index: spec.sources for index, spec in enumerate(tiny.network.specs) if spec.kind == "route"
}
print("routes:", routes, "- kept:", tiny_last)

# %% tags=["check"]
# Darknet.release_after maps a reader to the kept outputs it reads last; inverted:
release_after = tiny.network.release_after
expected_last = {source: reader for reader, sources in release_after.items() for source in sources}
check_true(isinstance(tiny_last, dict), "`tiny_last` should be a dict {kept layer: reader}.",
           hint="last_readers(tiny.network.specs) returns that dict.")  # fmt: skip
check_equal(
    "tiny_last", tiny_last, expected_last,
    hint="tiny has two routes; the output each reads out of sequence (not the layer just "
    "before it) is kept until that route: layer 13 until 17, layer 8 until 20.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_equal("kept layers", set(tiny_last), set(tiny.network.keep), hint="Darknet.keep")
### END HIDDEN TESTS
check_passed("Exercise 3")

# %% [markdown]
# **Exercise 4.** Decode by hand the raw prediction `t = (0, 1, ln 2, 0)` of anchor 1
# (62 × 45 px) at cell `(y = 3, x = 5)` of the stride-16 head: centre and size in
# pixels, then the xyxy box. Assign the box to `by_hand`, a tensor of shape `(4,)`,
# written with the formulas of section 6 (only the sigmoid of 1 needs a computer); the
# check compares it with `decode_yolo`.

# %% tags=["solution"]
by_hand = None  # (4,) xyxy px
### BEGIN SOLUTION
# centre x = (sigmoid(0) + 5) * 16 = 88; centre y = (sigmoid(1) + 3) * 16
# width = exp(ln 2) * 62 = 124; height = exp(0) * 45 = 45
sigmoid_one = 1 / (1 + torch.exp(torch.tensor(-1.0)))
centre_x, centre_y = 88.0, (sigmoid_one.item() + 3) * 16
by_hand = torch.tensor([centre_x - 62, centre_y - 22.5, centre_x + 62, centre_y + 22.5])
### END SOLUTION
if by_hand is not None:
    print("xyxy:", [f"{value:.4g}" for value in torch.as_tensor(by_hand).tolist()])

# %% tags=["check"]
t = torch.tensor([0.0, 1.0, torch.log(torch.tensor(2.0)).item(), 0.0])
decoded_box = decode_yolo(t, torch.tensor([5.0, 3.0]), torch.tensor([62.0, 45.0]), 16)
check_close(
    "by_hand", by_hand, decoded_box,
    hint="centre = (sigmoid(t_xy) + (x, y)) * 16 = (88, (sigmoid(1) + 3) * 16); size = "
    "exp(t_wh) * (62, 45) = (124, 45); xyxy = centre -/+ size / 2.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
by_hand_tensor = torch.as_tensor(by_hand, dtype=torch.float32)
check_close("width and height of by_hand", by_hand_tensor[2:] - by_hand_tensor[:2],
            [124.0, 45.0], hint="exp(ln 2) * 62 = 124, exp(0) * 45 = 45")  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 4")

# %% [markdown]
# ## Further reading
#
# - J. Redmon and A. Farhadi, *YOLOv3: An Incremental Improvement*, 2018,
#   <https://arxiv.org/abs/1804.02767>
# - ultralytics/yolov3, archive branch (the Darknet-cfg PyTorch port this course
#   follows): `models.py` (`create_modules`, `YOLOLayer`, `Darknet.forward_once`) and
#   `utils/parse_config.py`, <https://github.com/ultralytics/yolov3/tree/archive>
# - Darknet's cfg files and parser: `cfg/yolov3.cfg`, `src/parser.c`,
#   <https://github.com/pjreddie/darknet>
# - T.-Y. Lin et al., *Focal Loss for Dense Object Detection*, ICCV 2017, section 3.3
#   (the prior-probability bias initialisation), <https://arxiv.org/abs/1708.02002>
# - H. Rezatofighi et al., *Generalized Intersection over Union*, CVPR 2019 (the box
#   loss of notebook 12), <https://arxiv.org/abs/1902.09630>
