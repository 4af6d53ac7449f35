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
# # 40 · ATSS: what the network emits
#
# ATSS (Zhang et al., CVPR 2020) asked why the anchor-free FCOS beat the anchor-based
# RetinaNet. With one anchor per location and FCOS's improvements added (GroupNorm in
# the head, the GIoU loss, positives inside the box, a centerness branch, a learnable
# scale per level), RetinaNet still reached 37.0 AP on COCO where FCOS reached 37.8. The
# rest of the gap was in *which* priors are trained as positives: given the same
# positives, regressing from a box or from a point made no real difference. The paper's
# answer is Adaptive Training Sample Selection, the assigner of notebook 21, and with it
# one square anchor per location is enough: tiling nine no longer helps.
#
# The detector the paper built around it, also called ATSS, is a RetinaNet with a single
# anchor per location, FCOS's head and the new assigner. This notebook builds mmdet's
# ATSS R50-FPN (`atss_r50_fpn_1x_coco`, 32,295,322 parameters, COCO box AP 39.4 in mmdet's
# model zoo) and the course's CPU preset, follows a 320-pixel image through the preset's
# ResNet, FPN and head, and reads the three maps the head emits per level: class logits,
# box deltas against an anchor, and a centerness logit.
#
# **Learning goals**
#
# 1. Give the shape of every stage: ResNet maps C3 to C5, FPN maps P3 to P7 (sides 40,
#    20, 10, 5 and 3 at 320 px), and per level a class map `(B, K C, H, W)`, a delta map
#    `(B, K 4, H, W)` and a centerness map `(B, K, H, W)`, with K = 1.
# 2. Account for the 32,295,322 parameters of ATSS R50-FPN by part, and count the FPN's
#    and the head's by hand.
# 3. Say which parts of the backbone mmdet freezes (`frozen_stages`, `norm_eval`) and why
#    the CPU preset trains everything.
# 4. Place the 2134 anchors of a 320-px input: one square of side 8 s centred on each
#    grid point (x s, y s); find an anchor from its flat index.
# 5. Decode deltas into a box by hand, with the stds (0.1, 0.1, 0.2, 0.2), and check
#    `decode_delta_xywh` and `ATSS.decode`.
# 6. Explain why an untrained ATSS detects nothing at all.
#
# **Prerequisites**: notebook 02 (anchor boxes, the delta-xywh coder), notebook 20
# (reading a network with the tracer, counting parameters); notebook 04 trains the
# backbone the CPU preset starts from; notebook 21 (ATSS on NanoDet's grid cells).
# Notebook 41 runs ATSS on these anchors, 42 the losses, 43 the training.
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
import math

import matplotlib.pyplot as plt
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from detutils import boxes as box_ops
from detutils.checks import check_close, check_equal, check_function, check_passed
from detutils.coders import decode_delta_xywh, encode_delta_xywh
from detutils.data.shapes import CLASS_NAMES, render_sample
from detutils.models.atss import ATSSHead, build_atss_r18half_fpn64, build_atss_r50
from detutils.priors import anchor_boxes, flat_prior_index, level_offsets
from detutils.trace import trace
from detutils.viz import draw_boxes


def count_parameters(module):
    """Number of parameters of a module, its children included."""
    return sum(parameter.numel() for parameter in module.parameters())


# %% [markdown]
# ## 1. ATSS at a glance
#
# `detutils.models.atss` builds ATSS from one frozen `@dataclass`, `ATSSConfig`, whose
# defaults are mmdet's R50-FPN. Two builders use it:
#
# - `build_atss_r50(num_classes)`: mmdet's `atss_r50_fpn_1x_coco`, a ResNet-50 that
#   starts from torchvision's ImageNet weights, an FPN of 256 channels and a head of two
#   towers of four convs;
# - `build_atss_r18half_fpn64(num_classes)`: the course's CPU preset, a ResNet-18 at half
#   width (32 to 256 channels instead of 64 to 512), FPN and head at 64 channels, two
#   stacked convs per tower instead of four. It starts from the backbone the course
#   pre-trains on crops of the shapes set (notebook 04), where mmdet loads ImageNet
#   weights.
#
# mmdet's ResNet-50 at 640 px needs about 3 s per image for a forward pass on one CPU
# thread; the course only needs its shapes and its parameters, so it is built on the
# `meta` device: every tensor has a shape and a dtype but no memory and no values, and
# a forward pass costs no arithmetic. The preset is built for real, with the six classes
# of the shapes set.

# %%
with torch.device("meta"):
    r50 = build_atss_r50(num_classes=80).eval()
model = build_atss_r18half_fpn64(num_classes=len(CLASS_NAMES)).to(device).eval()
fields = [
    "name",
    "num_classes",
    "img_size",
    "depth",
    "backbone_width",
    "frozen_stages",
    "norm_eval",
    "pretrained",
    "fpn_channels",
    "head_channels",
    "stacked_convs",
    "norm_groups",
    "strides",
    "octave_base_scale",
    "ratios",
    "topk",
    "stds",
    "prior_prob",
    "nms_pre",
]
pd.DataFrame(
    {
        "ATSS R50-FPN": [str(getattr(r50.config, name)) for name in fields],
        "CPU preset": [str(getattr(model.config, name)) for name in fields],
    },
    index=fields,
)

# %% [markdown]
# The two share everything that defines ATSS (five levels of strides 8 to 128, one
# anchor of 8 strides per location, the stds of the delta coder, the prior probability
# 0.01, the assigner's `topk` of 9); they differ in the size of the network, and in
# which backbone weights train (section 4). The loss weights and the focal loss's
# `alpha` and `gamma`, also in the config, belong to notebook 42.
#
# ## 2. 32,295,322 parameters
#
# Counting the parameters of each part of both models (the meta tensors know their
# sizes):

# %%
parts = ("backbone", "neck", "head")
counts = pd.DataFrame(
    {
        "ATSS R50-FPN (C = 80)": [count_parameters(getattr(r50, part)) for part in parts],
        "CPU preset (C = 6)": [count_parameters(getattr(model, part)) for part in parts],
    },
    index=["backbone (ResNet)", "neck (FPN)", "head"],
)
counts.loc["total"] = counts.sum()
assert counts.loc["total"].tolist() == [count_parameters(r50), count_parameters(model)]
assert counts["ATSS R50-FPN (C = 80)"].tolist() == [23_508_032, 3_868_672, 4_918_618, 32_295_322]
counts.map("{:,}".format)  # thousands separated

# %% [markdown]
# The ResNet-50 holds 73 % of mmdet's model, the head 15 %, the FPN 12 %. The preset
# has a tenth of the parameters (3.2 million), most of them in its ResNet-18.
#
# The FPN and the head, by hand. The FPN has a 1 × 1 *lateral* conv (with bias) from each
# backbone map to F channels, a 3 × 3 *output* conv on each of the three levels, and two
# *extra* stride-2 3 × 3 convs for P6 and P7 (section 5). The head has two towers of
# stacked 3 × 3 convs without bias, each followed by a GroupNorm with a weight and a bias
# per channel; three 3 × 3 output convs with bias, to K C class logits, K 4 deltas and K
# centerness logits; and one learnable scalar per level (section 6).


# %%
def fpn_by_hand(in_channels, channels, num_outs=5):
    """Parameters of an FPN with 3x3 output convs and stride-2 extra convs."""
    laterals = sum(c * channels + channels for c in in_channels)  # 1x1 convs with bias
    conv3x3 = 9 * channels * channels + channels  # weight + bias
    return laterals + num_outs * conv3x3  # 3 output convs + (num_outs - 3) extra convs


def head_by_hand(num_classes, in_channels, channels, stacked_convs, num_levels=5):
    """Parameters of the ATSS head with K = 1 anchor per location."""
    tower = sum(
        9 * (in_channels if index == 0 else channels) * channels + 2 * channels  # conv + GN
        for index in range(stacked_convs)
    )
    outputs = 9 * channels * (num_classes + 4 + 1) + (num_classes + 4 + 1)  # cls, reg, ctr
    return 2 * tower + outputs + num_levels  # two towers, three output convs, scales


by_hand = {
    "R50 FPN": (fpn_by_hand([512, 1024, 2048], 256), r50.neck),
    "R50 head": (head_by_hand(80, 256, 256, 4), r50.head),
    "preset FPN": (fpn_by_hand([64, 128, 256], 64), model.neck),
    "preset head": (head_by_hand(len(CLASS_NAMES), 64, 64, 2), model.head),
}
for name, (count, module) in by_hand.items():
    assert count == count_parameters(module), name
    print(f"{name:12s} {count:>10,} by hand = count of the module")

# %% [markdown]
# In the R50 head a tower is 4 × (9 × 256² + 2 × 256) = 2,361,344 parameters: the two
# towers are 96 % of the head. The class conv is 9 × 256 × 80 + 80 = 184,400; the box
# and centerness convs add only 11,525. The shared towers do not depend on C: a head
# for 6 classes is smaller only by its class conv.
#
# ## 3. One image through the network
#
# The network takes RGB images in [0, 1], `(B, 3, H, W)` with H and W multiples of 32,
# and normalises them itself with ImageNet's mean and standard deviation. The image:
# number 1797 of the shapes set's training split (notebooks 20 to 22 use it too), with a
# large star, a cross at the bottom-right corner and a small star.

# %%
image, _, objects = render_sample(seed=0, split="train", index=1797, size=320)
gt_boxes = box_ops.xywh_to_xyxy(torch.tensor([obj["bbox"] for obj in objects], dtype=torch.float32))
gt_labels = torch.tensor([obj["label"] for obj in objects])
images = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255).to(device)  # (1, 3, H, W)
draw_boxes(image, gt_boxes, gt_labels, class_names=CLASS_NAMES, title="train image 1797")
plt.show()

# %% [markdown]
# The tracer (notebook 10) at depth 1 on the preset: the backbone returns three maps
# (C3, C4, C5), the FPN five (P3 to P7), the head three lists of five maps: class maps
# (`[0][l]`), delta maps (`[1][l]`) and centerness maps (`[2][l]`). The rows of the
# model's `(output)` repeat the head's and are left out.

# %%
table, outputs = trace(model, images, max_depth=1)
table[table["name"] != "(output)"].drop(columns=["call", "dtype"])


# %% [markdown]
# The same forward pass of mmdet's R50 at its 640 px, on the meta device, and both
# models level by level:


# %%
def level_table(table):
    """Shapes per level from a depth-1 trace of an ATSS: C3-C5, P3-P7, the head's maps."""
    shapes = table.set_index(["name", "item"])["shape"]
    rows = {}
    for level, stride in enumerate((8, 16, 32, 64, 128)):
        backbone = shapes.get(("backbone", f"[{level}]"), "")
        rows[f"P{level + 3}"] = {
            "stride": stride,
            "C (backbone)": f"C{level + 3} {backbone}" if backbone else "",
            "P (FPN)": shapes["neck", f"[{level}]"],
            "classes": shapes["head", f"[0][{level}]"],
            "deltas": shapes["head", f"[1][{level}]"],
            "centerness": shapes["head", f"[2][{level}]"],
        }
    return pd.DataFrame(rows).T


r50_table, r50_outputs = trace(r50, torch.empty(1, 3, 640, 640, device="meta"), max_depth=1)
pd.concat({"CPU preset, 320 px": level_table(table), "R50-FPN, 640 px": level_table(r50_table)})

# %%
class_maps, delta_maps, centerness_maps = outputs
sides = [40, 20, 10, 5, 3]
assert [tuple(x.shape) for x in class_maps] == [(1, 6, s, s) for s in sides]
assert [tuple(x.shape) for x in delta_maps] == [(1, 4, s, s) for s in sides]
assert [tuple(x.shape) for x in centerness_maps] == [(1, 1, s, s) for s in sides]
assert [tuple(x.shape[-2:]) for x in r50_outputs[0]] == [(s, s) for s in (80, 40, 20, 10, 5)]

# %% [markdown]
# ## 4. Backbone: ResNet
#
# A ResNet (He et al., 2016) has five stages. Stage 1, the stem, is a stride-2 7 × 7
# conv with batch norm and ReLU and a stride-2 3 × 3 max-pool: stride 4. Stages 2 to 5
# (torchvision's `layer1` to `layer4`) are stacks of residual blocks; the first block of
# stages 3, 4 and 5 halves the map. Their outputs are called C2 to C5, by their stride
# 2²..2⁵. ResNet-50 uses bottleneck blocks (1 × 1, 3 × 3, 1 × 1 convs, 3, 4, 6, 3 of
# them) whose output has 4 times the width: 256, 512, 1024, 2048 channels. ResNet-18
# uses basic blocks (two 3 × 3 convs, 2 per stage); at half width, 32, 64, 128, 256.
# ATSS reads C3, C4 and C5. The preset's backbone, traced at depth 1:

# %%
normalised = (images - model.pixel_mean) / model.pixel_std
backbone_table, features = trace(model.backbone, normalised, max_depth=1)
backbone_table.drop(columns=["call", "dtype"])

# %%
assert [tuple(x.shape) for x in features] == [(1, 64, 40, 40), (1, 128, 20, 20), (1, 256, 10, 10)]
assert model.backbone.out_channels == (64, 128, 256)
assert r50.backbone.out_channels == (512, 1024, 2048)

# %% [markdown]
# mmdet fine-tunes an ImageNet ResNet-50 and protects what it learnt there with two
# settings:
#
# - `frozen_stages=1`: the stem and stage 2 (`layer1`) get no gradient (their
#   `requires_grad` is False) and stay in eval mode. Their edge and texture filters are
#   general, and freezing them saves their backward pass;
# - `norm_eval=True`: every batch norm of the backbone keeps ImageNet's running mean and
#   variance, also in training mode. A detector trains with 2 images per GPU at 800 px
#   or more; batch statistics of so few images are noisy. The batch norms' weights and
#   biases, outside the frozen stages, still learn.
#
# The preset sets `frozen_stages=-1` and `norm_eval=False`: its backbone saw only crops
# of the shapes set (notebook 04), and its batches of 320-px images are large enough
# for batch statistics, so every weight trains. Which parameters train, per top-level
# part of the backbone:

# %%
rows = {}
for name, child in r50.backbone.named_children():
    if count_parameters(child) == 0:
        continue  # relu, maxpool
    rows[name] = {
        "R50 parameters": count_parameters(child),
        "R50 trainable": sum(p.numel() for p in child.parameters() if p.requires_grad),
        "preset parameters": count_parameters(getattr(model.backbone, name)),
        "preset trainable": sum(
            p.numel() for p in getattr(model.backbone, name).parameters() if p.requires_grad
        ),
    }
pd.DataFrame(rows).T.map("{:,}".format)

# %%
frozen = [name for name, p in r50.named_parameters() if not p.requires_grad]
frozen_count = sum(p.numel() for p in r50.parameters() if not p.requires_grad)
print(f"R50: {len(frozen)} frozen tensors, {frozen_count:,} parameters")
assert frozen_count == 225_344
print("  e.g.", frozen[:3], "...", frozen[-1])
assert all(
    name.startswith(("backbone.conv1", "backbone.bn1", "backbone.layer1.")) for name in frozen
)
assert all(p.requires_grad for p in model.parameters())


def batch_norms_in_training_mode(network):
    """How many batch norms of a network would use batch statistics, of how many."""
    norms = [m for m in network.modules() if isinstance(m, nn.BatchNorm2d)]
    return f"{sum(m.training for m in norms)} of {len(norms)}"


r50.train()  # training mode, as the trainer sets it
model.train()
print("batch norms in training mode: R50", batch_norms_in_training_mode(r50.backbone))
print("                           preset", batch_norms_in_training_mode(model.backbone))
r50.eval()
model = model.eval()

# %% [markdown]
# 225,344 of ResNet-50's 23.5 million parameters are frozen: the stem and `layer1` are
# small, because they work on few channels. `ResNetBackbone.train` puts the frozen
# stages, and with `norm_eval` every batch norm, back in eval mode each time the trainer
# calls `model.train()`.
#
# ## 5. Neck: the FPN, from C3-C5 to P3-P7
#
# The feature pyramid network (Lin et al., 2017) gives every level the same number of
# channels and lets the fine levels see what the coarse ones see:
#
# 1. *laterals*: a 1 × 1 conv per backbone map, to F channels (256; 64 in the preset);
# 2. *top-down*: from C5 down, each lateral adds its coarser neighbour, upsampled to its
#    size by nearest neighbour (each value copied into a 2 × 2 block);
# 3. a 3 × 3 conv on each sum smooths away the blocks of the upsampling: P3, P4, P5;
# 4. two *extra levels* for large objects: a stride-2 3 × 3 conv on P5's output gives P6,
#    another on P6 gives P7, with no activation between them (mmdet's
#    `add_extra_convs="on_output"`; the RetinaNet paper computes P6 from C5 instead).
#
# By hand, on the preset's three backbone maps:

# %%
neck = model.neck
laterals = [conv(x) for conv, x in zip(neck.lateral_convs, features, strict=True)]
for level in (2, 1):  # top-down: 10 -> 20 -> 40
    upsampled = F.interpolate(laterals[level], size=laterals[level - 1].shape[-2:], mode="nearest")
    laterals[level - 1] = laterals[level - 1] + upsampled
pyramid = [conv(x) for conv, x in zip(neck.fpn_convs, laterals, strict=True)]  # P3, P4, P5
pyramid.append(neck.extra_convs[0](pyramid[-1]))  # P6 from P5's output
pyramid.append(neck.extra_convs[1](pyramid[-1]))  # P7 from P6
fpn_outputs = neck(features)
for inline, reference in zip(pyramid, fpn_outputs, strict=True):
    torch.testing.assert_close(inline, reference)
print("FPN:", [tuple(x.shape) for x in fpn_outputs])

# %% [markdown]
# A stride-2 3 × 3 conv with padding 1 turns a side n into ⌊(n + 2 − 3) / 2⌋ + 1 =
# ⌈n / 2⌉: sizes round up. At 320 px, P5 has 10 cells, P6 5 and P7 3 (not 2.5); at 640 px,
# 20, 10, 5. So P7's stride is 128 only approximately at 320 px: 3 cells of 128 px cover
# 384 px, the image and 64 px beyond.

# %%
print("sides at 320 px:", [320 // 32, math.ceil(320 / 64), math.ceil(320 / 128)])
assert [x.shape[-1] for x in fpn_outputs[2:]] == [10, 5, 3]

# %% [markdown]
# ## 6. The head: three outputs per level, one set of weights
#
# The head runs on each of the five levels with the *same* weights, FCOS's design: a
# level is a scale of object, and a conv that recognises a star recognises it at any
# scale. Per level:
#
# - the *class tower*: `stacked_convs` (4; 2 in the preset) times a 3 × 3 conv without
#   bias, GroupNorm with 32 groups and ReLU, then `atss_cls`, a 3 × 3 conv to K C class
#   logits;
# - the *regression tower*, the same layers with its own weights, then two 3 × 3 convs:
#   `atss_reg` to K 4 deltas, multiplied by the level's learnable `Scale` (starting at
#   1, so that each level can adapt the range of its deltas), and `atss_centerness` to K
#   centerness logits. The centerness reads the regression tower, as in mmdet's ATSS
#   (FCOS put it on the class tower first).
#
# GroupNorm rather than batch norm: its statistics come from each image alone (32 groups
# of channels; at 64 channels, groups of 2), so the same head works with 2 images a batch
# and on maps of any size. K = 1: one anchor per location. The traced head, on the first
# and the last level (call 0 is P3, call 4 is P7: the same modules run five times):

# %%
head = model.head
head_table, _ = trace(head, fpn_outputs, max_depth=1)
head_table[head_table["call"].isin([0, 4]) & (head_table["type"] != "input")].drop(
    columns=["dtype"]
).query("name != '(output)'")

# %% [markdown]
# Level P4 by hand: the two towers, the three convs, and the scale of the level.

# %%
level = 1
cls_feat = head.cls_convs(fpn_outputs[level])  # (B, 64, 20, 20)
reg_feat = head.reg_convs(fpn_outputs[level])  # (B, 64, 20, 20)
torch.testing.assert_close(head.atss_cls(cls_feat), class_maps[level])  # (B, K C, 20, 20)
torch.testing.assert_close(head.scales[level](head.atss_reg(reg_feat)), delta_maps[level])
torch.testing.assert_close(head.atss_centerness(reg_feat), centerness_maps[level])
print("tower:", [type(layer).__name__ for layer in head.cls_convs])
print("GroupNorm:", head.cls_convs[1])
print("scales:", [round(scale.scale.item(), 4) for scale in head.scales])

# %% [markdown]
# ## 7. 2134 anchors, flattened
#
# Each location of each level holds K = 1 anchor: a square of side `octave_base_scale`
# × s = 8 s, centred **on** the grid point (x s, y s). That is mmdet's anchor generator
# with `center_offset=0`, so the first anchor of every level is centred on the image's
# top-left corner. NanoDet's grid cells (notebook 21) sit at the cell centres
# ((x + 0.5) s, (y + 0.5) s) instead; both conventions are kept, each with its
# reference. The sides run from 64 px on P3 to 1024 px on P7.

# %%
feature_sizes = [tuple(x.shape[-2:]) for x in class_maps]
anchors, num_per_level = model.anchors(feature_sizes)  # (A, 4) xyxy px, anchors per level
offsets = level_offsets(num_per_level)
pd.DataFrame(
    {
        "stride s": model.config.strides,
        "H x W": [f"{h} x {w}" for h, w in feature_sizes],
        "anchors": num_per_level,
        "offset": offsets,
        "side 8 s (px)": [8 * s for s in model.config.strides],
        "first anchor": [anchors[offset].int().tolist() for offset in offsets],
    },
    index=[f"P{level + 3}" for level in range(5)],
)

# %%
print(f"A = {len(anchors)} = {' + '.join(str(n) for n in num_per_level)}")
assert len(anchors) == 40**2 + 20**2 + 10**2 + 5**2 + 3**2 == 2134
torch.testing.assert_close(anchors, anchor_boxes(feature_sizes, model.config.strides, scales=[8.0]))

# %% [markdown]
# The flat index of an anchor is the course's (notebook 09): level offset + y W + x
# (times K plus k, with K = 1). The anchor at y = 10, x = 12 of P4 is centred on
# (12 × 16, 10 × 16) = (192, 160) with side 128:

# %%
level, y, x = 1, 10, 12
flat = offsets[level] + y * feature_sizes[level][1] + x
assert flat == flat_prior_index(level, y, x, feature_sizes) == 1812
print(f"P4, y={y}, x={x}: anchor {flat}, box {anchors[flat].tolist()}")
torch.testing.assert_close(anchors[flat], torch.tensor([192.0 - 64, 160 - 64, 192 + 64, 160 + 64]))

# %% [markdown]
# The loss and the post-processing want one row per anchor: `ATSS.flatten` turns each
# map `(B, K c, H, W)` into `(B, H W K, c)` (mmdet's permute and reshape) and
# concatenates the levels:

# %%
cls_logits, deltas, centerness = model.flatten(outputs)  # (B, A, C), (B, A, 4), (B, A)
print("flattened:", tuple(cls_logits.shape), tuple(deltas.shape), tuple(centerness.shape))
assert tuple(cls_logits.shape) == (1, 2134, 6) and tuple(deltas.shape) == (1, 2134, 4)
assert tuple(centerness.shape) == (1, 2134)
torch.testing.assert_close(cls_logits[0, flat], class_maps[level][0, :, y, x])
torch.testing.assert_close(deltas[0, flat], delta_maps[level][0, :, y, x])
torch.testing.assert_close(centerness[0, flat], centerness_maps[level][0, 0, y, x])

# %% [markdown]
# Two anchors of each level on the image: the one at the top-left grid point (0, 0),
# centred on the image's corner, and one near the image centre (blue dots: their
# centres). The white dots are the grid points of the level; the axes grow with the
# anchors, and the image stays 320 px. P6's and P7's anchors (512 and 1024 px) are
# larger than the image: they suit objects of several hundred pixels, which a 320-px
# input cannot hold; at 640 px and more they matter.

# %%
fig, axes = plt.subplots(1, 5, figsize=(17, 3.8))
for level, ax in enumerate(axes):
    stride, (height, width) = model.config.strides[level], feature_sizes[level]
    rows = [offsets[level], offsets[level] + (height // 2) * width + width // 2]
    draw_boxes(image, anchors[rows], ax=ax, linewidth=2.5)
    grid = anchors[offsets[level] : offsets[level] + num_per_level[level]]
    centres = (grid[:, :2] + grid[:, 2:]) / 2  # (H W, 2): the grid points
    size = 1 if level == 0 else 6
    ax.scatter(centres[:, 0], centres[:, 1], s=size, color="white", zorder=0.5)  # under boxes
    chosen = (anchors[rows, :2] + anchors[rows, 2:]) / 2  # (2, 2): the two anchors' centres
    ax.scatter(chosen[:, 0], chosen[:, 1], s=40, color="tab:blue", edgecolors="white")
    margin = 4 * stride + 8
    ax.set_xlim(-margin, 320 + margin)
    ax.set_ylim(320 + margin, -margin)
    ax.set_title(f"P{level + 3}: s = {stride}, side {8 * stride} px")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 8. From deltas to boxes
#
# The 4 channels of a delta map are mmdet's delta-xywh (notebook 02) against the anchor,
# normalised by the stds (0.1, 0.1, 0.2, 0.2): with the anchor's centre (a_x, a_y) and
# side a,
#
# - centre: `x = a_x + 0.1 dx a`, `y = a_y + 0.1 dy a`: dx = 1 moves the centre by a
#   tenth of the anchor;
# - size: `w = a exp(0.2 dw)`, `h = a exp(0.2 dh)`: dw = 1 makes the box 22 % wider;
# - then the box is clipped to the image (x to [0, W], y to [0, H]). Beforehand 0.2 dw
#   and 0.2 dh are clamped to ±4.135 (a side grows or shrinks at most 62.5 times), so
#   that no prediction can overflow `exp`.
#
# The stds set how far an output moves the box: an output of 1 is a small step, so the
# small outputs of an untrained head give boxes near their anchors (section 9). ATSS's
# GIoU loss compares the decoded boxes with the ground truth (mmdet's
# `reg_decoded_bbox=True`), so the deltas are never compared with target deltas. By
# hand, for the anchor of section 7 (P4, y = 10, x = 12: centre (192, 160), side 128)
# and made-up deltas:

# %%
anchor = anchors[flat]  # (4,) xyxy px
made_up = torch.tensor([0.5, -1.0, 1.0, -0.5])  # dx, dy, dw, dh
centre_x = 192 + 0.1 * made_up[0] * 128  # 192 + 6.4
centre_y = 160 + 0.1 * made_up[1] * 128  # 160 - 12.8
box_w, box_h = 128 * torch.exp(0.2 * made_up[2]), 128 * torch.exp(0.2 * made_up[3])
box_by_hand = torch.stack(
    [centre_x - box_w / 2, centre_y - box_h / 2, centre_x + box_w / 2, centre_y + box_h / 2]
)
decoded = decode_delta_xywh(anchor, made_up, stds=model.config.stds)
torch.testing.assert_close(box_by_hand, decoded)
print(f"centre ({centre_x:.4g}, {centre_y:.4g}), size {box_w:.4g} x {box_h:.4g}")
print("box:", [f"{v:.4g}" for v in decoded.tolist()])

# %% [markdown]
# What would a trained head emit for the cross at the bottom right? Encoding the cross
# against the anchor that overlaps it best gives its target deltas; put at that anchor
# into the network's own delta maps, `ATSS.decode` (which decodes all 2134 anchors,
# clipped to the image) must give the cross back:

# %%
cross = gt_boxes[1]
ious = box_ops.box_iou(anchors, cross[None])[:, 0]  # (A,)
best = int(ious.argmax())
target = encode_delta_xywh(anchors[best], cross, stds=model.config.stds)  # (4,)
best_level = max(index for index, offset in enumerate(offsets) if offset <= best)
best_y, best_x = divmod(best - offsets[best_level], feature_sizes[best_level][1])
edited = [x.clone() for x in delta_maps]
edited[best_level][0, :, best_y, best_x] = target.to(device)
decoded_boxes, class_probabilities, centerness_probabilities = model.decode(
    (class_maps, edited, centerness_maps)
)  # (B, A, 4), (B, A, C), (B, A)
torch.testing.assert_close(decoded_boxes[0, best].cpu(), cross)
print(
    f"cross {cross.int().tolist()}: best anchor {best} (P{best_level + 3}, y={best_y}, "
    f"x={best_x}) {anchors[best].int().tolist()}, IoU {ious[best]:.4f}"
)
print("target deltas:", [f"{v:.4f}" for v in target.tolist()])

# %% [markdown]
# Clipping: the first anchor of P3, (−32, −32, 32, 32), with deltas near zero decodes
# to about the anchor itself, and the clip cuts it at the image's edges:

# %%
print(
    "anchor 0:",
    anchors[0].tolist(),
    "-> decoded:",
    [f"{v:.4g}" for v in decoded_boxes[0, 0].tolist()],
)
assert (decoded_boxes >= 0).all() and (decoded_boxes <= 320).all()

# %% [markdown]
# ## 9. What an untrained ATSS predicts
#
# mmdet initialises every conv of the head normal(0, 0.01) with zero bias, except the
# class conv's bias: −log((1 − 0.01) / 0.01) = −4.595, a probability of 0.01 for every
# class at every anchor (RetinaNet's prior). Without it, the 2134 × C easy background
# outputs of an image would start at probability 0.5 and their focal loss would swamp
# the first steps. The towers end in GroupNorm and ReLU, so the output convs see
# features of unit scale; with weights of 0.01 the logits stay within about 0.7 of
# their bias: class probabilities near 0.01, centerness near sigmoid(0) = 0.5, deltas
# near 0 (boxes near their anchors).

# %%
bias = head.atss_cls.bias[0].item()
print(f"class conv bias: {bias:.4f} -> sigmoid {1 / (1 + math.exp(-bias)):.4f}")
for name, values in [
    ("class probabilities", class_probabilities),
    ("centerness", centerness_probabilities),
    ("deltas", deltas),
]:
    print(f"{name}: min {values.min().item():.3g}, max {values.max().item():.3g}")
torch.testing.assert_close(head.atss_cls.bias, torch.full((6,), -4.59512), atol=1e-5, rtol=0)
assert class_probabilities.max() < 0.05

# %% [markdown]
# mmdet's test, which `ATSS.predict` follows: on each level the 1000 best (anchor,
# class) pairs whose **class probability alone** exceeds 0.05, then their scores times
# the centerness, class-aware NMS at IoU 0.6, the 100 best per image.
# The untrained network's class probabilities are all far below 0.05: no detection at
# all, not even bad ones.

# %%
detections = model.predict(outputs)  # [{"boxes", "scores", "labels"}] per image
print({key: tuple(value.shape) for key, value in detections[0].items()})
assert all(len(value) == 0 for value in detections[0].values())

# %% [markdown]
# That is by design: the threshold of 0.05 is five times the prior, so a location is
# reported only once training has lifted its class score well above where every
# location starts, and the empty list says honestly that the network knows nothing yet.
# Note the order: the threshold reads the class probability, and the centerness only
# multiplies the pairs that passed it. Lower the threshold to 0.01 and about half the
# pairs pass; their scores, times a centerness between 0.3 and 0.6, all end up *below*
# 0.01, the threshold they passed. (The original ATSS code also thresholds the class
# probability, but multiplies by the centerness before its top 1000 and reports the
# square root of the product; untrained, it too finds nothing above 0.05.)

# %%
low = model.predict(outputs, score_thr=0.01)[0]
print(f"class probabilities above 0.01: {(class_probabilities > 0.01).float().mean().item():.0%}")
print(f"score_thr 0.01: {len(low['scores'])} detections, best {low['scores'].max().item():.2g}")
assert len(low["scores"]) == 100 and low["scores"].max() < 0.01

# %% [markdown]
# Training (notebooks 41 to 43: ATSS on the anchors, then focal, GIoU and centerness
# losses) lifts the class score of the anchors ATSS makes positive, moves their deltas
# towards their boxes, and teaches the centerness which anchors sit near a box's centre.
#
# ## Recap
#
# - ATSS is a RetinaNet with one anchor per location, FCOS's head (GroupNorm towers, a
#   centerness branch, a scale per level) and the ATSS assigner; mmdet's
#   `atss_r50_fpn_1x_coco` reaches 39.4 box AP on COCO.
# - ATSS R50-FPN: 32,295,322 parameters (ResNet-50 23,508,032, FPN 3,868,672, head
#   4,918,618); the CPU preset (ResNet-18 at half width, 64 channels, 2 stacked convs)
#   has 3.2 million.
# - ResNet: C3, C4, C5 at strides 8, 16, 32; mmdet freezes the stem and stage 2 and
#   keeps every batch norm's statistics; the preset trains everything.
# - FPN: 1 × 1 laterals, nearest top-down, 3 × 3 outputs; P6 and P7 from P5's output by
#   stride-2 convs; sizes round up (40, 20, 10, 5, 3 at 320 px).
# - Head, shared over levels: class logits `(B, K C, H, W)`, deltas `(B, K 4, H, W)`
#   times a learnable scale, centerness `(B, K, H, W)` from the regression tower; K = 1.
# - Anchors: squares of 8 s centred on (x s, y s); 2134 at 320 px; `ATSS.flatten` gives
#   `(B, A, C)`, `(B, A, 4)`, `(B, A)`; deltas decode with stds (0.1, 0.1, 0.2, 0.2).
# - Untrained: every class probability about 0.01, below the 0.05 threshold: no
#   detection at all.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** mmdet's ATSS R50 trains at 640 px here. Derive by hand the number of
# anchors of each level at 640 px, `anchors_640` (a list of five ints, P3 first), and
# their total `total_640` (an int). Remember how P6 and P7 round.

# %% tags=["solution"]
anchors_640 = None  # list of 5 ints, P3 .. P7
total_640 = None  # int
### BEGIN SOLUTION
# Sides 640 / 8 = 80, / 16 = 40, / 32 = 20; P6 = ceil(20 / 2) = 10, P7 = ceil(10 / 2) = 5.
anchors_640 = [80**2, 40**2, 20**2, 10**2, 5**2]
total_640 = sum(anchors_640)
### END SOLUTION
print(anchors_640, total_640)

# %% tags=["check"]
check_equal(
    "anchors_640", anchors_640, [6400, 1600, 400, 100, 25],
    hint="one anchor per location: (640 / s)^2 for s = 8, 16, 32, 64, 128; 640 / 128 = 5 "
    "exactly, so nothing needs rounding at 640 px.",
)  # fmt: skip
check_equal(
    "total_640", total_640, 8525,
    hint="add the five levels: 6400 + 1600 + 400 + 100 + 25.",
)  # fmt: skip
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** At 320 px, find the anchor at level P5 (stride 32), y = 3, x = 7: its
# flat index `p5_index` (an int) from the level offsets, and its box `p5_box` (4,) xyxy px,
# derived from the stride (centre on the grid point, side 8 s), not read from `anchors`.

# %% tags=["solution"]
p5_index = None  # int
p5_box = None  # (4,) xyxy px
### BEGIN SOLUTION
# Offset of P5: 40^2 + 20^2 = 2000; then y W + x = 3 * 10 + 7. Centre (7 * 32, 3 * 32) =
# (224, 96), side 8 * 32 = 256.
p5_index = 1600 + 400 + 3 * 10 + 7
p5_box = torch.tensor([224.0 - 128, 96 - 128, 224 + 128, 96 + 128])
### END SOLUTION
print(p5_index, p5_box)

# %% tags=["check"]
check_equal(
    "p5_index", p5_index, flat_prior_index(2, 3, 7, feature_sizes),
    hint="P3 and P4 come first (40 x 40 and 20 x 20 anchors), then row 3 of P5's 10 x 10 "
    "grid: offset + y * W + x.",
)  # fmt: skip
check_close(
    "p5_box", p5_box, anchor_boxes(feature_sizes, model.config.strides, scales=[8.0])[p5_index],
    hint="the anchor is centred ON the grid point (x s, y s) = (224, 96), not on the "
    "cell centre; its side is 8 s = 256 px, so it reaches 128 px either way.",
)  # fmt: skip
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** The anchor of P3 at y = 20, x = 15 receives the deltas
# `(0.3, -0.2, 0.5, 1.0)`. Decode them by hand, without `decode_delta_xywh`: assign the
# anchor's centre `anchor_centre` (2,) and side `anchor_side` (a number, px), and the box
# `box_by_hand` (4,) xyxy px (it stays inside the image; no clipping needed).

# %% tags=["solution"]
anchor_centre = None  # (2,) x, y px
anchor_side = None  # px
box_by_hand = None  # (4,) xyxy px
### BEGIN SOLUTION
# Centre (15 * 8, 20 * 8) = (120, 160), side 64.
# x = 120 + 0.1 * 0.3 * 64 = 121.92, y = 160 - 0.1 * 0.2 * 64 = 158.72,
# w = 64 exp(0.2 * 0.5) = 70.73, h = 64 exp(0.2 * 1.0) = 78.17.
anchor_centre = torch.tensor([15 * 8.0, 20 * 8.0])
anchor_side = 8 * 8.0
exercise_deltas = torch.tensor([0.3, -0.2, 0.5, 1.0])
stds = torch.tensor([0.1, 0.1, 0.2, 0.2])
new_centre = anchor_centre + stds[:2] * exercise_deltas[:2] * anchor_side
new_size = anchor_side * torch.exp(stds[2:] * exercise_deltas[2:])
box_by_hand = torch.cat([new_centre - new_size / 2, new_centre + new_size / 2])
### END SOLUTION
print(anchor_centre, anchor_side, box_by_hand)

# %% tags=["check"]
p3_anchor = anchors[flat_prior_index(0, 20, 15, feature_sizes)]
check_close(
    "anchor_centre", anchor_centre, (p3_anchor[:2] + p3_anchor[2:]) / 2,
    hint="mmdet's anchors sit on the grid point (x s, y s) with s = 8, not at (x + 0.5) s.",
)  # fmt: skip
check_close(
    "anchor_side", anchor_side, 64.0,
    hint="side = octave_base_scale x stride = 8 x 8 px.",
)  # fmt: skip
check_close(
    "box_by_hand", box_by_hand,
    decode_delta_xywh(p3_anchor, torch.tensor([0.3, -0.2, 0.5, 1.0]), stds=(0.1, 0.1, 0.2, 0.2)),
    hint="multiply the deltas by the stds first: the centre moves by 0.1 * dx * side, the "
    "width becomes side * exp(0.2 * dw); then the corners are centre -+ size / 2.",
)  # fmt: skip
check_passed("Exercise 3")

# %% [markdown]
# **Exercise 4.** RetinaNet tiles K = 9 anchors per location (3 scales × 3 aspect
# ratios), ATSS one; `ATSSHead` takes `num_anchors` as an argument. Write
# `head_parameters(num_classes, num_anchors)`, the parameters of mmdet's ATSS head (256
# input and tower channels, 4 stacked convs per tower, 5 levels) for C classes and K
# anchors per location, as arithmetic (no module, no `count_parameters`). The check
# builds `ATSSHead` for several C and K and counts.

# %% tags=["solution"]
head_parameters = None  # your function (num_classes, num_anchors) -> int
### BEGIN SOLUTION


def head_parameters(num_classes, num_anchors):
    tower = 4 * (9 * 256 * 256 + 2 * 256)  # conv without bias + GroupNorm weight and bias
    outputs = num_anchors * (num_classes + 4 + 1)  # output channels of the three convs
    return 2 * tower + 9 * 256 * outputs + outputs + 5  # two towers, convs, 5 scales


### END SOLUTION


# %% tags=["check"]
def counted_head(num_classes, num_anchors):
    with torch.device("meta"):  # shapes only: no memory, no initialisation to wait for
        return count_parameters(ATSSHead(num_classes, 256, 256, 4, 5, num_anchors))


check_function(
    "head_parameters", head_parameters, [(80, 1), (6, 1)], counted_head,
    hint="two towers of 4 x (9 * 256 * 256 + 2 * 256); three 3x3 convs from 256 channels "
    "to K C, K 4 and K outputs, each with a bias; one scale per level (5).",
)  # fmt: skip
check_function(
    "head_parameters", head_parameters, [(80, 9)], counted_head,
    hint="only the three output convs grow with K: their output channels are K C, K 4 "
    "and K; the towers and the scales do not change.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "head_parameters", head_parameters, [(20, 3), (1, 1)], counted_head,
    hint="use num_classes and num_anchors everywhere the output channels appear",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 4")

# %% [markdown]
# ## Further reading
#
# - S. Zhang et al., *Bridging the Gap Between Anchor-based and Anchor-free Detection
#   via Adaptive Training Sample Selection*, CVPR 2020, <https://arxiv.org/abs/1912.02424>;
#   code: <https://github.com/sfzhang15/ATSS>
# - T.-Y. Lin et al., *Focal Loss for Dense Object Detection*, ICCV 2017 (RetinaNet, the
#   prior probability 0.01), <https://arxiv.org/abs/1708.02002>
# - T.-Y. Lin et al., *Feature Pyramid Networks for Object Detection*, CVPR 2017,
#   <https://arxiv.org/abs/1612.03144>
# - Z. Tian et al., *FCOS: Fully Convolutional One-Stage Object Detection*, ICCV 2019
#   (GroupNorm towers, centerness, a scale per level), <https://arxiv.org/abs/1904.01355>
# - K. He et al., *Deep Residual Learning for Image Recognition*, CVPR 2016,
#   <https://arxiv.org/abs/1512.03385>
# - mmdet: `configs/atss/atss_r50_fpn_1x_coco.py`, `ATSSHead`
#   (`mmdet/models/dense_heads/atss_head.py`), `FPN` (`mmdet/models/necks/fpn.py`),
#   <https://github.com/open-mmlab/mmdetection>
