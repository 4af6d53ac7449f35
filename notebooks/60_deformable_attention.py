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
# # 60 · Deformable DETR: multi-scale deformable attention
#
# DETR (Carion et al., ECCV 2020) detects with a transformer: an encoder lets every
# location of a feature map attend to every other, a decoder lets a small set of
# queries read the result, and the Hungarian matching (notebook 61) pairs each query
# with at most one box, so no NMS is needed. It works, but its attention is *dense*:
# with S locations each of them weighs all S, S² weights per head and layer. DETR could
# afford that only on one coarse map, stride 32, which made it weak on small objects,
# and it needed 500 epochs on COCO to reach 42.0 AP.
#
# Deformable DETR (Zhu et al., ICLR 2021) keeps the set prediction and replaces the
# attention. Each query has a *reference point*; each of its heads predicts, from the
# query alone, a few *sampling offsets* around that point on every level of a
# four-level pyramid, reads the map there by bilinear interpolation, and sums the
# samples with weights it also predicts. Four points per head and level, whatever the
# image size: S × 16 weights per head instead of S². The idea comes from deformable
# convolution (Dai et al., 2017), whose kernels sample at learned offsets too. mmdet
# 3.3's `deformable-detr_r50_16xb2-50e_coco` reaches 44.3 box AP in 50 epochs.
#
# This notebook takes the attention module apart on the course's code,
# `detutils.models.deformable_attention` and `detutils.models.deformable_detr`: why the
# dense version is costly, how the pyramid becomes one sequence of tokens, the parts of
# the module and its initialisation, the bilinear sampling by hand, a measurement against
# dense attention, and where the encoder and the decoder use it. Notebook 61 follows the
# Hungarian matching, notebook 62 the set loss, notebook 63 the training.
#
# **Learning goals**
#
# 1. Count the weights of dense attention over a flattened pyramid (S tokens, S² per
#    head) against deformable attention's S × L × P, at 320 and 800 px.
# 2. Flatten a four-level pyramid (strides 8 to 64) into S tokens, level after level,
#    each row-major; find a token from its level start index and (x, y); read
#    `spatial_shapes`.
# 3. Name the parts of `MultiScaleDeformableAttention` (value projection, sampling
#    offsets and attention weights from the query, output projection) and the shapes
#    that flow through it: value (B, S, heads, D / heads), locations
#    (B, Q, heads, L, P, 2), weights (B, Q, heads, L, P) with a softmax over L × P.
# 4. Draw the initial offsets (head h points in direction 2πh / heads, point p at
#    distance p + 1) and turn an offset into a location for a point reference (level
#    pixels) and for a box reference (eighths of the box).
# 5. Compute one bilinear sample by hand at (x W − 0.5, y H − 0.5), zeros outside, and
#    match `multi_scale_deformable_attention` and a slow loop.
# 6. Measure time and memory against `torch.nn.MultiheadAttention` as the image grows,
#    and say what a fused dense attention changes.
# 7. Say where the model uses deformable attention: encoder self-attention around each
#    token's own centre, decoder cross-attention around each query's reference point or
#    box.
#
# **Prerequisites**: notebook 40 (ResNet, the meta device); notebook 51 (bilinear
# interpolation in RoIAlign) helps; a first idea of attention (queries, keys, values, a
# softmax over the keys).
#
# **Notation**: the letters of the shapes (B, S, Q, D, L, P, H, W, ...), the box formats
# and the flat index are those of [notebook 09](09_notation.ipynb). Here L counts the
# feature levels (l = 0 to 3), P the sampling points per head and level; "heads" is the
# number of attention heads, D / heads the width of one head.

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ['png']

# %%
# NBVAL_IGNORE_OUTPUT
# (versions and device differ from machine to machine)
from detutils.course import setup

schedule = setup()["schedule"]

# %%
import dataclasses
import math
import time

import matplotlib.pyplot as plt
import pandas as pd
import torch
from matplotlib.patches import Rectangle
from torch import nn

from detutils.checks import check_close, check_function, check_passed
from detutils.course import significant
from detutils.data.shapes import CLASS_NAMES, render_sample
from detutils.models.deformable_attention import (
    MultiScaleDeformableAttention,
    multi_scale_deformable_attention,
)
from detutils.models.deformable_detr import (
    DeformableDETR,
    build_deformable_detr_r18half_d128,
    build_deformable_detr_r50,
    encoder_reference_points,
)

STRIDES = (8, 16, 32, 64)  # the four levels: C3, C4, C5 and a stride-2 conv of C5
LEVEL_COLOURS = ["tab:red", "tab:orange", "tab:green", "tab:blue"]


def level_sizes(height, width, strides=STRIDES):
    """(H_l, W_l) of each level for an input of height x width px: ceil(H / s), ceil(W / s)."""
    return [(math.ceil(height / s), math.ceil(width / s)) for s in strides]


# %% [markdown]
# ## 1. Why dense attention over all levels is costly
#
# In dense attention each of the S tokens is a query, and each query computes a softmax
# over all S tokens as keys: an S × S matrix of weights per head, in every encoder layer,
# for every image. Deformable DETR's encoder works on four levels, strides 8, 16, 32 and
# 64, so S is the sum of H_l W_l over the levels, with H_l = ⌈H / s⌉ (the ResNet's
# stride-2 convs round up). Deformable attention computes L × P = 4 × 4 = 16 weights per
# query and head, whatever S is.

# %%
rows = []
for height, width in [(320, 320), (640, 640), (800, 800), (800, 1333)]:
    sizes = level_sizes(height, width)
    tokens_per_level = [h * w for h, w in sizes]
    num_tokens = sum(tokens_per_level)  # S
    dense, deformable = num_tokens**2, num_tokens * 4 * 4  # weights per head
    rows.append(
        {
            "input H x W": f"{height} x {width}",
            "levels H_l x W_l": " ".join(f"{h}x{w}" for h, w in sizes),
            "S": num_tokens,
            "dense S² / head": dense,
            "deformable S L P / head": deformable,
            "ratio S / (L P)": num_tokens / 16,
            "dense, 8 heads, float32 GiB": dense * 8 * 4 / 2**30,
        }
    )
cost = pd.DataFrame(rows).set_index("input H x W")
significant(cost, 4)

# %% [markdown]
# At 320 px (the course's CPU preset) the four levels hold 1600 + 400 + 100 + 25 =
# 2125 tokens: 4.5 million weights per head, 138 MiB of float32 for eight heads, per
# encoder layer and image. At 800 × 1333, the largest input of mmdet's COCO pipeline
# (short side 800, long side at most 1333), S = 22,223: almost half a billion weights
# per head, 14.7 GiB for the eight heads of one layer of one image, before the backward
# pass keeps any of it. Dense weights grow with the fourth
# power of the image side, deformable ones with its square; their ratio is S / 16.
#
# DETR kept dense attention by using only C5: at 800 × 1333 that map is 25 × 42 = 1050
# tokens, 1.1 million weights per head. The stride-8 level alone holds 16 times as many
# tokens, about 250 times as many weights. The sizes above are those the R50 model's own
# layers give; the meta device runs them without computing anything (notebook 40):

# %%
with torch.device("meta"):  # shapes only: no memory, no arithmetic
    r50 = build_deformable_detr_r50(num_classes=80)
    meta_maps = r50.neck(r50.backbone(torch.zeros(1, 3, 800, 1333)))
print("R50 levels at 800 x 1333:", [tuple(x.shape[1:]) for x in meta_maps])
assert [tuple(x.shape[-2:]) for x in meta_maps] == level_sizes(800, 1333)

# %% [markdown]
# The same counts as the image grows, for a square input of side n (both axes
# logarithmic): dense weights rise with slope 4, deformable ones with slope 2.

# %%
sides = [64 * k for k in range(1, 21)]  # 64 .. 1280 px
num_tokens = [sum(h * w for h, w in level_sizes(n, n)) for n in sides]
fig, ax = plt.subplots(figsize=(7, 4.5))
ax.loglog(sides, [s**2 for s in num_tokens], "o-", label="dense: S² per head")
ax.loglog(sides, [16 * s for s in num_tokens], "s-", label="deformable: S L P per head")
ax.loglog(sides, [(math.ceil(n / 32)) ** 4 for n in sides], "^--", label="dense on C5 only (DETR)")
ax.set_xlabel("image side n (px)")
ax.set_ylabel("attention weights per head and layer")
ax.set_title("weights of one self-attention layer, one image")
ax.legend()
ax.grid(True, which="both", alpha=0.3)
plt.show()

# %% [markdown]
# ## 2. Flattening a four-level pyramid
#
# The encoder reads one sequence of tokens, so the pyramid is flattened: each level's
# (B, D, H_l, W_l) map becomes H_l W_l tokens, row by row, and the levels follow one
# another, finest first. A token is found by its flat index
#
# $$\text{index} = \text{start}_l + y\,W_l + x,$$
#
# where start_l, the *level start index* (mmcv's `level_start_index`), is the number of
# tokens of the levels before l. The sizes travel with the tokens as `spatial_shapes`,
# an (L, 2) tensor of (H_l, W_l): the attention needs them to find each level again.
#
# The course's CPU preset, `build_deformable_detr_r18half_d128`: a half-width ResNet-18
# gives C3 to C5, the channel mapper brings each to D = 128 channels (1 × 1 conv and
# GroupNorm) and adds a fourth level, a stride-2 3 × 3 conv of C5. The model is freshly
# built (seeded), for the six classes of the shapes set; nothing in this notebook needs
# trained weights. One validation image at 320 px:

# %%
image, _, objects = render_sample(seed=0, split="val", index=0, size=320)  # (320, 320, 3)
images = torch.from_numpy(image).permute(2, 0, 1).float().div(255)[None]  # (B, 3, H, W)
torch.manual_seed(0)
model = build_deformable_detr_r18half_d128(num_classes=len(CLASS_NAMES)).eval()
with torch.no_grad():
    features = model.neck(model.backbone((images - model.pixel_mean) / model.pixel_std))
    tokens, positions, spatial_shapes = model.flatten_levels(features)  # (B, S, D) x2, (L, 2)
sizes = spatial_shapes.prod(1)  # (L,) H_l W_l
level_start = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])  # (L,)
pd.DataFrame(
    {
        "stride s": STRIDES,
        "map (B, D, H_l, W_l)": [str(tuple(x.shape)) for x in features],
        "spatial_shapes (H_l, W_l)": [tuple(hw) for hw in spatial_shapes.tolist()],
        "tokens H_l W_l": sizes.tolist(),
        "level start index": level_start.tolist(),
    },
    index=pd.Index([f"level {level}" for level in range(4)], name="level l"),
)

# %%
print("tokens", tuple(tokens.shape), " positions", tuple(positions.shape))
print("spatial_shapes", spatial_shapes.tolist(), spatial_shapes.dtype)
num_keys = tokens.shape[1]  # S
assert num_keys == 2125 and spatial_shapes.tolist() == [list(hw) for hw in level_sizes(320, 320)]
for level, (height, width) in enumerate(spatial_shapes.tolist()):
    for y, x in [(0, 0), (height - 1, width - 1), (height // 2, width // 3)]:
        index = int(level_start[level]) + y * width + x
        assert torch.equal(tokens[0, index], features[level][0, :, y, x])
print("token start_l + y W_l + x = map l at (y, x), on every level")

# %% [markdown]
# Nothing in a token says where it came from: the flattening forgets the (x, y) of each
# token and its level. `positions` puts both back, as in DETR: a sine embedding of the
# token's (x, y) within its level (64 frequencies for y, 64 for x at D = 128) plus a
# learned embedding of the level, one D-vector per level. The encoder adds it to the
# tokens where they act as queries. The image and its four levels (the mean over the
# channels of each untrained map, only to show the grids):

# %%
fig, axes = plt.subplots(1, 5, figsize=(17, 3.6))
axes[0].imshow(image)
axes[0].set_title("input 320 x 320")
for level, ax in enumerate(axes[1:]):
    ax.imshow(features[level][0].mean(0), cmap="gray")
    height, width = spatial_shapes[level].tolist()
    start = int(level_start[level])
    ax.set_title(f"level {level}: {height} x {width}, tokens {start}..{start + height * width - 1}",
                 fontsize=9)  # fmt: skip
for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
plt.show()

# %% [markdown]
# ## 3. The parts of the module
#
# For a query q with reference point p̂_q (x, y in [0, 1] of the image), head m, level
# l and point k, multi-scale deformable attention computes
#
# $$\text{out}_q = W_o \Big[\ \sum_{l=1}^{L} \sum_{k=1}^{P} A_{mlqk}\;
# V_m x^l\big(\hat p_q + \Delta p_{mlqk}\big)\Big]_{m = 1..\text{heads}}$$
#
# - the **value projection** V (a D × D linear layer, split into heads of D / heads)
#   is applied to every token once; x^l(·) reads level l of the projected values at a
#   point, by bilinear interpolation;
# - the **sampling offsets** Δp_mlqk: a linear layer of the query, D → heads · L · P · 2;
# - the **attention weights** A_mlqk: a linear layer of the query, D → heads · L · P,
#   then a softmax over the L · P samples of each head (not over the keys);
# - the **output projection** W_o (D × D) mixes the heads, and the module adds the
#   residual: `forward` returns `query + dropout(output_proj(...))`.
#
# No key is compared with the query: where to look and how much each sample counts
# both come from the query alone. That is what keeps the cost at S · L · P per head.
# The preset's first encoder layer holds such a module, with D = 128, 8 heads, L = 4
# levels, P = 4 points:

# %%
attention = model.encoder[0].self_attn
heads, levels, points = attention.num_heads, attention.num_levels, attention.num_points
head_dims = attention.embed_dims // heads  # D / heads
parts = {
    "value_proj": (attention.value_proj, "D"),
    "sampling_offsets": (attention.sampling_offsets, "heads L P 2"),
    "attention_weights": (attention.attention_weights, "heads L P"),
    "output_proj": (attention.output_proj, "D"),
}
pd.DataFrame(
    {
        "linear layer": [
            f"{layer.in_features} -> {layer.out_features}" for layer, _ in parts.values()
        ],
        "out features": [what for _, what in parts.values()],
        "parameters": [sum(p.numel() for p in layer.parameters()) for layer, _ in parts.values()],
    },
    index=list(parts),
)

# %% [markdown]
# In the encoder the tokens are both the queries (with their position embedding added)
# and the values (without it). Step by step on the real tokens, as the module does it
# (`sampling` gives the locations and weights, `multi_scale_deformable_attention` samples):

# %%
batch = tokens.shape[0]  # B
reference = encoder_reference_points(spatial_shapes, levels)[None]  # (B, S, L, 2)
with torch.no_grad():
    query = tokens + positions  # (B, S, D): the queries carry their position
    value = attention.value_proj(tokens).view(batch, num_keys, heads, head_dims)
    offsets = attention.sampling_offsets(query).view(batch, num_keys, heads, levels, points, 2)
    logits = attention.attention_weights(query).view(batch, num_keys, heads, levels * points)
    weights = logits.softmax(-1).view(batch, num_keys, heads, levels, points)
    locations, module_weights = attention.sampling(query, reference, spatial_shapes)
    sampled = multi_scale_deformable_attention(value, spatial_shapes, locations, weights)
    output = attention(tokens, tokens, reference, spatial_shapes, query_pos=positions)
steps = {
    "query = tokens + positions": query,
    "value (B, S, heads, D / heads)": value,
    "reference points (B, Q, L, 2)": reference,
    "offsets (B, Q, heads, L, P, 2)": offsets,
    "weights (B, Q, heads, L, P)": weights,
    "locations (B, Q, heads, L, P, 2)": locations,
    "sampled (B, Q, heads D / heads)": sampled,
    "forward: output (B, Q, D)": output,
}
pd.DataFrame({"shape": [str(tuple(v.shape)) for v in steps.values()]}, index=list(steps))

# %% [markdown]
# Here Q = S = 2125: every token is a query. The locations are the reference plus the
# offsets divided by the level's size, (W_l, H_l): with a point reference an offset is
# counted in *pixels of its level*, so the same offset of 1 reaches 8 image pixels on
# level 0 and 64 on level 3. The weights sum to one over the L × P = 16 samples of each
# head:

# %%
normaliser = spatial_shapes.flip(-1).float()  # (L, 2): (W_l, H_l)
by_hand = reference[:, :, None, :, None, :] + offsets / normaliser[:, None, :]
assert torch.allclose(locations, by_hand) and torch.allclose(module_weights, weights)
with torch.no_grad():
    by_parts = tokens + attention.output_proj(sampled)  # dropout is off in eval mode
assert torch.allclose(output, by_parts, atol=1e-5)
print("sum of the weights of one head over L x P:", f"{weights.sum((-2, -1)).mean():.4f}")
print("initial weights:", sorted({f"{w:.4f}" for w in weights.flatten().tolist()}), "= 1 / 16")

# %% [markdown]
# ### 3.1 The initialisation: a star per head
#
# Freshly built, the module's offset layer has zero weights, so every query gets the
# same offsets, its bias; the attention weights are zero too, so every sample counts
# 1 / 16. The bias (mmcv's initialisation, the reference's) points head h in the
# direction 2πh / heads, scaled so that the larger of |cos| and |sin| is 1, and puts
# point p at p + 1 times that: head 0 looks right at 1, 2, 3 and 4 pixels of its level,
# head 1 diagonally down-right (y grows downwards), head 2 down, and so on round the
# compass, the same on every level.

# %%
initial = attention.sampling_offsets.bias.detach().view(heads, levels, points, 2)  # (dx, dy)
assert torch.equal(offsets[0, 0], initial) and torch.equal(offsets[0, 1234], initial)
assert torch.equal(initial[:, 0], initial[:, 3])  # the same on every level
shown = initial[:, 0].round(decimals=4) + 0.0  # (heads, P, 2); + 0.0 turns -0 into 0
pd.DataFrame(
    {f"point {p}": [f"({x:+g}, {y:+g})" for x, y in shown[:, p].tolist()] for p in range(points)},
    index=pd.Index([f"head {h}: {360 * h // heads}°" for h in range(heads)], name="(dx, dy)"),
)

# %% [markdown]
# Left: the star in pixels of any level, around the reference (the centre of a
# pixel). Right: the 128 sampling locations of one token, the centre pixel (20, 20) of
# level 0, drawn in image pixels: the same star is 8 times larger on level 0 than in
# level pixels, and 64 times larger on level 3, where most of it leaves the image
# (a sample outside reads zeros).

# %%
token = int(level_start[0]) + 20 * 40 + 20  # level 0, (x, y) = (20, 20)
star = locations[0, token] * torch.tensor([320.0, 320.0])  # (heads, L, P, 2) image px
head_colours = plt.cm.tab10(range(heads))
fig, axes = plt.subplots(1, 2, figsize=(13, 6))
ax = axes[0]
for h in range(heads):
    xs, ys = initial[h, 0, :, 0], initial[h, 0, :, 1]
    ax.plot(xs, ys, "o-", color=head_colours[h], label=f"head {h}")
    for p in range(points):
        ax.annotate(str(p), (xs[p], ys[p]), textcoords="offset points", xytext=(4, 4), fontsize=7)
ax.plot(0, 0, "k*", markersize=14)
ax.set_xticks(range(-4, 5))
ax.set_yticks(range(-4, 5))
ax.set_xlim(-4.8, 4.8)
ax.set_ylim(4.8, -4.8)  # y grows downwards, as in the image
ax.set_aspect("equal")
ax.grid(True, alpha=0.4)
ax.set_title("initial offsets in level pixels (labels: point p)")
ax.legend(fontsize=8, loc="lower left")
ax = axes[1]
ax.imshow(image, extent=(0, 320, 320, 0))
for level in range(levels):
    label = f"level {level} (stride {STRIDES[level]})"
    xy = star[:, level].flatten(0, 1)  # (heads P, 2)
    ax.scatter(xy[:, 0], xy[:, 1], s=14, color=LEVEL_COLOURS[level], label=label)
ax.plot(*(reference[0, token, 0] * 320).tolist(), "w*", markersize=14)
ax.set_xlim(-120, 440)
ax.set_ylim(440, -120)
ax.add_patch(Rectangle((0, 0), 320, 320, fill=False, edgecolor="black"))
ax.set_title("one token's 128 locations at initialisation, image px")
ax.legend(fontsize=8, loc="lower left")
plt.show()

# %% [markdown]
# ### 3.2 Point references and box references
#
# The reference can also be a box (cx, cy, w, h), as in the decoder with two stages or
# box refinement (section 6). Then an offset is measured in the box, not in level
# pixels:
#
# $$\text{location} = (c_x, c_y) + \frac{\Delta p}{P} \cdot \frac{(w, h)}{2},$$
#
# so with P = 4 an offset of 1 is an eighth of the box. The initial star then spans
# the box: the last point of the heads at 0°, 90°, 180° and 270° lands on the middle of
# a side, that of the diagonal heads on a corner, and the star is the same on every
# level (in the figure the four levels' stars coincide, the last drawn hides the
# others). The samples scale with the object, where a point reference's star has a fixed
# size in level pixels.

# %%
box = torch.tensor([0.55, 0.4, 0.3, 0.2])  # cx, cy, w, h in [0, 1]
point_ref = box[:2].view(1, 1, 1, 2).expand(1, 1, levels, 2)  # (B, Q, L, 2)
box_ref = box.view(1, 1, 1, 4).expand(1, 1, levels, 4)  # (B, Q, L, 4)
with torch.no_grad():
    zero_query = torch.zeros(1, 1, attention.embed_dims)  # at init the query does not matter
    point_locations, _ = attention.sampling(zero_query, point_ref, spatial_shapes)
    box_locations, _ = attention.sampling(zero_query, box_ref, spatial_shapes)
corner = box[:2] + box[2:] / 2  # (x2, y2): the bottom-right corner
assert torch.allclose(box_locations[0, 0, 1, 2, 3], corner)  # head 1 (45°), point 3
assert torch.allclose(box_locations[0, 0, :, 0], box_locations[0, 0, :, 3])
fig, axes = plt.subplots(1, 2, figsize=(12, 6))
for ax, where, title in zip(axes, (point_locations, box_locations),
                            ("point reference: level pixels", "box reference: eighths of the box"),
                            strict=True):  # fmt: skip
    ax.imshow(image, extent=(0, 320, 320, 0))
    x1, y1 = ((box[:2] - box[2:] / 2) * 320).tolist()
    ax.add_patch(Rectangle((x1, y1), *(box[2:] * 320).tolist(), fill=False, edgecolor="white",
                           linewidth=2))  # fmt: skip
    for level in range(levels):
        xy = where[0, 0, :, level] * 320  # (heads, P, 2) image px
        ax.scatter(xy[..., 0].flatten(), xy[..., 1].flatten(), s=16, color=LEVEL_COLOURS[level],
                   label=f"level {level}", alpha=0.8)  # fmt: skip
    ax.set_xlim(-120, 440)
    ax.set_ylim(440, -120)
    ax.add_patch(Rectangle((0, 0), 320, 320, fill=False, edgecolor="black"))
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower left")
plt.show()

# %% [markdown]
# ## 4. The sampling by hand
#
# `multi_scale_deformable_attention` reads each level with `torch.nn.functional.
# grid_sample` (bilinear, zeros outside, `align_corners=False`), as mmcv's pure-PyTorch
# `multi_scale_deformable_attn_pytorch` does and its CUDA kernel computes. A location
# (x, y) in [0, 1] of level l is the point
#
# $$p_x = x\,W_l - 0.5,\qquad p_y = y\,H_l - 0.5$$
#
# in the level's pixel indices, so pixel (i, j) has its centre at ((j + 0.5) / W_l,
# (i + 0.5) / H_l), the points the encoder uses as references. With x₀ = ⌊p_x⌋,
# y₀ = ⌊p_y⌋, l_x = p_x − x₀, l_y = p_y − y₀, the sample mixes the four pixels around
# the point with weights (1 − l_x)(1 − l_y), l_x (1 − l_y), (1 − l_x) l_y and l_x l_y;
# a neighbour outside the map counts as zero. The same rule as RoIAlign's (notebook 51)
# apart from the border: here there is no clamping.
#
# At initialisation every offset is a whole number of level pixels and every encoder
# reference a pixel centre, so every sample falls exactly on a pixel. To see a real
# interpolation, a second module of the same sizes gets small random weights for its
# offsets and attention weights, as after some training: each query now has its own.


# %%
def bilinear(value_map, x, y):
    """Sample a (D, H, W) map at (x, y) in [0, 1] as grid_sample does (bilinear, zeros
    outside, align_corners=False) -> (D,)."""
    _, height, width = value_map.shape
    px, py = x * width - 0.5, y * height - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    lx, ly = px - x0, py - y0
    sample = value_map.new_zeros(value_map.shape[0])
    for yy, xx, weight in [(y0, x0, (1 - lx) * (1 - ly)), (y0, x0 + 1, lx * (1 - ly)),
                           (y0 + 1, x0, (1 - lx) * ly), (y0 + 1, x0 + 1, lx * ly)]:  # fmt: skip
        if 0 <= yy < height and 0 <= xx < width:
            sample += weight * value_map[:, yy, xx]
    return sample


torch.manual_seed(1)
trained_like = MultiScaleDeformableAttention(128, heads, levels, points, dropout=0.0).eval()
nn.init.normal_(trained_like.sampling_offsets.weight, std=0.02)
nn.init.normal_(trained_like.attention_weights.weight, std=0.02)
with torch.no_grad():
    value = trained_like.value_proj(tokens).view(batch, num_keys, heads, head_dims)
    locations, weights = trained_like.sampling(tokens + positions, reference, spatial_shapes)
q, h, level, p = 850, 3, 1, 2  # one query (level 0), head, level, point
x, y = locations[0, q, h, level, p].tolist()
height, width = spatial_shapes[level].tolist()
px, py = x * width - 0.5, y * height - 0.5
print(f"query {q}, head {h}, level {level} ({height} x {width}), point {p}")
print(f"location (x, y) = ({x:.4f}, {y:.4f}) -> (p_x, p_y) = ({px:.4f}, {py:.4f})")

# %% [markdown]
# The four neighbours, their flat indices in the sequence of tokens
# (start_l + y W_l + x) and their weights:

# %%
x0, y0 = math.floor(px), math.floor(py)
lx, ly = px - x0, py - y0
start = int(level_start[level])
neighbours = pd.DataFrame(
    {
        "pixel (y, x)": [(y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)],
        "flat index": [
            start + yy * width + xx
            for yy, xx in [(y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)]
        ],  # fmt: skip
        "weight": [(1 - lx) * (1 - ly), lx * (1 - ly), (1 - lx) * ly, lx * ly],
    }
)
head_values = value[0, :, h]  # (S, D / heads): head h's values of every token
neighbours["value[0:3]"] = [tuple(round(v, 3) for v in head_values[i, :3].tolist())
                            for i in neighbours["flat index"]]  # fmt: skip
by_hand_sample = sum(
    w * head_values[i] for w, i in zip(neighbours["weight"], neighbours["flat index"], strict=True)
)
significant(neighbours, 4)

# %% [markdown]
# The same sample from the course's op: attention weights that put 1 on this (level,
# point) of head h and 0 elsewhere, so that head h's output *is* the sample, and from
# `bilinear` on level l's map of head h:

# %%
one_hot = torch.zeros(1, 1, heads, levels, points)
one_hot[0, 0, h, level, p] = 1.0
with torch.no_grad():
    op = multi_scale_deformable_attention(value, spatial_shapes, locations[:, q : q + 1], one_hot)
op_sample = op[0, 0, h * head_dims : (h + 1) * head_dims]  # (D / heads,) head h's slice
level_map = head_values[start : start + height * width].T.reshape(head_dims, height, width)
function_sample = bilinear(level_map, x, y)
print("by hand  ", [f"{v:.4f}" for v in by_hand_sample[:4].tolist()], "...")
print("op       ", [f"{v:.4f}" for v in op_sample[:4].tolist()], "...")
print("bilinear ", [f"{v:.4f}" for v in function_sample[:4].tolist()], "...")
print("all close:", torch.allclose(by_hand_sample, op_sample, atol=1e-6)
      and torch.allclose(function_sample, op_sample, atol=1e-6))  # fmt: skip

# %% [markdown]
# ### 4.1 The op equals a slow loop
#
# The whole op is then a loop: for each image, query, head, level and point, one
# bilinear sample of D / heads values, times its weight, summed per head; the heads'
# outputs side by side. First on a small random case with two levels of 3 × 4 and
# 2 × 2, and locations that reach outside [0, 1] (they read zeros, or partly zeros):


# %%
def deformable_attention_loop(value, spatial_shapes, locations, weights):
    """multi_scale_deformable_attention as five nested loops -> (B, Q, heads D / heads)."""
    batch, _, heads, head_dims = value.shape
    _, queries, _, levels, points, _ = locations.shape
    sizes = spatial_shapes.prod(1).tolist()
    out = torch.zeros(batch, queries, heads, head_dims)
    for b in range(batch):
        for level, values_of_level in enumerate(value[b].split(sizes)):  # (H W, heads, D / h)
            height, width = spatial_shapes[level].tolist()
            for head in range(heads):
                level_map = values_of_level[:, head].T.reshape(head_dims, height, width)
                for query in range(queries):
                    for point in range(points):
                        x, y = locations[b, query, head, level, point].tolist()
                        weight = weights[b, query, head, level, point]
                        out[b, query, head] += weight * bilinear(level_map, x, y)
    return out.flatten(2)


generator = torch.Generator().manual_seed(0)
small_shapes = torch.tensor([[3, 4], [2, 2]])  # (L, 2)
small_value = torch.randn(2, 16, 2, 4, generator=generator)  # (B, S, heads, D / heads)
small_locations = torch.rand(2, 5, 2, 2, 3, 2, generator=generator) * 1.4 - 0.2  # -0.2 .. 1.2
small_weights = torch.rand(2, 5, 2, 2, 3, generator=generator)  # any weights
fast = multi_scale_deformable_attention(small_value, small_shapes, small_locations, small_weights)
slow = deformable_attention_loop(small_value, small_shapes, small_locations, small_weights)
outside = ((small_locations < 0) | (small_locations > 1)).any(-1).float().mean()
print(f"output {tuple(fast.shape)}; locations outside [0, 1]: {outside:.0%}")
print("op = loop within 1e-5:", torch.allclose(fast, slow, atol=1e-5))

# %% [markdown]
# And on the real tokens for a few queries, all 8 heads × 16 samples each:

# %%
chosen = [0, 850, 1700, 2050, 2124]  # queries of levels 0, 0, 1, 2, 3
with torch.no_grad():
    fast = multi_scale_deformable_attention(value, spatial_shapes, locations[:, chosen],
                                            weights[:, chosen])  # fmt: skip
slow = deformable_attention_loop(value, spatial_shapes, locations[:, chosen], weights[:, chosen])
print(f"output {tuple(fast.shape)}; op = loop within 1e-5:", torch.allclose(fast, slow, atol=1e-5))

# %% [markdown]
# ## 5. Time and memory against dense attention
#
# Section 1 counted weights. Here both kinds of self-attention run, forward and
# backward, over the same flattened tokens of the four levels (B = 1, D = 128, 8 heads,
# random tokens): `MultiScaleDeformableAttention` with the encoder's references, and
# `torch.nn.MultiheadAttention` in two ways:
#
# - **dense, weights kept** (`need_weights=True`): the textbook computation, a softmax
#   over an S × S matrix per head, which the backward pass needs and so keeps; the
#   situation Deformable DETR was designed against (2020);
# - **dense, fused** (`need_weights=False`, as the decoder's self-attention calls it):
#   PyTorch's `scaled_dot_product_attention`, which on this CPU picks a fused kernel in
#   the manner of FlashAttention (Dao et al., 2022): it walks the keys in blocks, never
#   stores the S × S matrix, and recomputes it in the backward pass.
#
# Memory is measured without any clock: the bytes of every tensor autograd keeps for
# the backward pass, found with `torch.autograd.graph.saved_tensors_hooks` (each
# storage counted once). That is the memory a training step holds per layer between
# its forward and its backward pass, and it depends only on the code path, not on the
# machine.


# %%
def saved_for_backward(forward):
    """Run forward() -> (output, bytes of the tensors autograd keeps for the backward pass)."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = forward()
    return output, sum(storages.values())


def attention_runs(side, dims=128, num_heads=8):
    """The three self-attentions over the tokens of a side x side input -> {name: forward}."""
    shapes = torch.tensor(level_sizes(side, side))  # (L, 2)
    inputs = torch.randn(1, int(shapes.prod(1).sum()), dims, requires_grad=True)  # (B, S, D)
    references = encoder_reference_points(shapes, 4)[None]  # (B, S, L, 2)
    deformable = MultiScaleDeformableAttention(dims, num_heads, 4, 4, dropout=0.0)
    dense = nn.MultiheadAttention(dims, num_heads, batch_first=True)
    return inputs, {
        "deformable": lambda: deformable(inputs, inputs, references, shapes),
        "dense, weights kept": lambda: dense(inputs, inputs, inputs, need_weights=True)[0],
        "dense, fused": lambda: dense(inputs, inputs, inputs, need_weights=False)[0],
    }


torch.manual_seed(0)
memory_rows, runs = [], {}
for side in (128, 256, 320):
    inputs, forwards = attention_runs(side)
    runs[side] = forwards
    row = {"side px": side, "S": inputs.shape[1]}
    for name, forward in forwards.items():
        output, saved = saved_for_backward(forward)
        output.sum().backward()  # also a warm-up for the timing below
        row[f"{name} MiB"] = saved / 2**20
    memory_rows.append(row)
memory = pd.DataFrame(memory_rows).set_index("side px")
memory["dense S² heads float32 MiB"] = memory["S"] ** 2 * 8 * 4 / 2**20
significant(memory, 3)

# %% [markdown]
# The dense attention with kept weights holds the S × S × heads matrix (the last
# column) plus a few MiB of projections: 144 MiB at 320 px, 138 of them the matrix,
# growing with S². The deformable module holds memory linear in S, 23 MiB at 320 px:
# chiefly, per level, the P samples of D / heads values of every head and query that
# enter the weighted sum, S · L · P · D floats in all (16.6 MiB here). The two cross where
# S · heads ≈ L · P · D, at S ≈ 256 tokens, an input of about 110 px; at 128 px
# (S = 340) they are still close.
#
# The fused dense attention holds the least of all, linear in S: it keeps only the
# projected queries, keys and values, the output and one log-sum-exp per query and head.
# Since FlashAttention the memory argument against dense attention is gone; the
# arithmetic remains, S² · D multiply-adds per layer, recomputed in the backward pass.
# The clock (forward and backward, the best of a few runs; one under the `ci` schedule):

# %%
# NBVAL_IGNORE_OUTPUT
# (times differ from machine to machine, and from run to run)
repeats = 1 if schedule == "ci" else 3
time_rows = []
for side, forwards in runs.items():
    row = {"side px": side, "S": int(memory.loc[side, "S"])}
    for name, forward in forwards.items():
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            forward().sum().backward()
            best = min(best, time.perf_counter() - start)
        row[f"{name} ms"] = 1000 * best
    time_rows.append(row)
significant(pd.DataFrame(time_rows).set_index("side px"), 3)

# %% [markdown]
# On one CPU thread, at 128 px (S = 340), every version takes a few tens of
# milliseconds and the dense ones are the faster: a 340 × 340 matrix product is
# nothing, while `grid_sample` reads scattered memory and its backward pass adds into
# the values at scattered places. By 320 px the dense attention that keeps its weights
# is several times slower than the other two, mostly in writing and reading its 138 MiB
# matrix, and the fused one is about as fast as the deformable module. Beyond, the
# quadratic term takes over: at 512 px (S = 5440) the fused dense attention took about
# three times as long as the deformable module when this notebook was written (1.1 s
# against 0.38 s). At 320 px a handful of small maps is cheap either way; Deformable
# DETR's gains are at the sizes of section 1, and in the stride-8 level that dense
# attention could not afford at all.
#
# ## 6. Where the encoder and the decoder use it
#
# **Encoder: self-attention.** Every token is a query (Q = S) and the tokens are the
# values. A token's reference point is its own centre, ((x + 0.5) / W_l,
# (y + 0.5) / H_l) in [0, 1], given to all four levels (`encoder_reference_points`,
# (S, L, 2)): a token of level 2 samples around the same place of the image on level 0,
# where 16 pixels cover its one. So each encoder layer mixes the levels as an FPN does,
# at 128 learned places per token.

# %%
encoder_refs = encoder_reference_points(spatial_shapes, levels)  # (S, L, 2)
token = int(level_start[2]) + 7 * 10 + 3  # level 2 (10 x 10), (x, y) = (3, 7)
ref_x, ref_y = encoder_refs[token, 0].tolist()
print(f"token {token}: level 2, (x, y) = (3, 7), reference ({ref_x:.3f}, {ref_y:.3f})"
      f" = ((3 + 0.5) / 10, (7 + 0.5) / 10), on all {levels} levels")  # fmt: skip
rows = {}
for level, (height, width) in enumerate(spatial_shapes.tolist()):
    rows[f"level {level} ({height} x {width})"] = {
        "(p_x, p_y) = (x W - 0.5, y H - 0.5)": (
            round(ref_x * width - 0.5, 3),
            round(ref_y * height - 0.5, 3),
        ),
        "image px (x 320)": (round(ref_x * 320, 2), round(ref_y * 320, 2)),
    }
assert torch.equal(encoder_refs[token, 0], encoder_refs[token, 3])
pd.DataFrame(rows).T

# %% [markdown]
# On level 2 the reference is the pixel's centre, (3, 7) exactly; on level 0 it is
# (13.5, 29.5), the corner where four pixels meet; on level 3, between pixels of a
# 5 × 5 map. The same point of the image, 112 px right and 240 px down, on every level.
#
# **Decoder: cross-attention.** The decoder's Q queries (300 in mmdet's model, 100 in
# the preset) first attend to each other with ordinary dense self-attention (Q² = 10⁴
# weights per head in the preset: cheap), then read the encoder's memory (the values, S tokens) with
# deformable attention around their *reference*:
#
# - without two stages (mmdet's `deformable-detr_r50_16xb2-50e_coco`), each query has a
#   learned position embedding, and a linear layer and a sigmoid turn it into a
#   reference *point* (B, Q, 2); the offsets are in level pixels;
# - with two stages (the preset), the encoder's best proposals give each query a
#   reference *box* (B, Q, 4) and the offsets are in eighths of the box (section 3.2);
#   with box refinement each layer's predicted boxes are the next layer's references.
#
# Both on the image, with the preset and the same preset without two stages or
# refinement (`dataclasses.replace` of its config; each freshly built):

# %%
with torch.no_grad():
    outputs = model(images)
    one_stage_config = dataclasses.replace(model.config, as_two_stage=False,
                                           with_box_refine=False)  # fmt: skip
    torch.manual_seed(0)
    one_stage = DeformableDETR(one_stage_config).eval()
    one_stage_outputs = one_stage(images)
pd.DataFrame(
    {
        "preset (two stages, refinement)": [str(tuple(r.shape)) for r in outputs.references],
        "one stage, no refinement": [str(tuple(r.shape)) for r in one_stage_outputs.references],
    },
    index=pd.Index([f"decoder layer {i}" for i in range(len(outputs.references))],
                   name="references (B, Q, 2 or 4)"),
)  # fmt: skip

# %% [markdown]
# Freshly built, each decoder's cross-attention offsets are still their bias, the same
# for every query; so below, the star of each reference is exactly where the first
# decoder layer samples (level 0 drawn, the others are the same for boxes). Left: ten
# of the preset's reference boxes, the encoder's best proposals (untrained: boxes of
# side 0.05 × 2^l of the image, l the level, at the tokens the untrained encoder
# happened to score highest). Right: ten of the one-stage model's reference points.

# %%
cross = model.decoder[0].cross_attn
with torch.no_grad():
    box_refs = outputs.references[0][:, :10]  # (B, 10, 4)
    box_samples, _ = cross.sampling(torch.zeros(1, 10, 128), box_refs[:, :, None].expand(
        -1, -1, levels, -1), spatial_shapes)  # fmt: skip
    point_refs = one_stage_outputs.references[0][:, :10]  # (B, 10, 2)
    point_samples, _ = one_stage.decoder[0].cross_attn.sampling(
        torch.zeros(1, 10, 128), point_refs[:, :, None].expand(-1, -1, levels, -1), spatial_shapes
    )
fig, axes = plt.subplots(1, 2, figsize=(12, 6))
for ax, refs, samples, title in [
    (axes[0], box_refs, box_samples, "preset: reference boxes (two stages)"),
    (axes[1], point_refs, point_samples, "one stage: reference points"),
]:
    ax.imshow(image, extent=(0, 320, 320, 0))
    for i in range(10):
        if refs.shape[-1] == 4:
            cx, cy, w, h = (refs[0, i] * 320).tolist()
            ax.add_patch(Rectangle((cx - w / 2, cy - h / 2), w, h, fill=False,
                                   edgecolor="white"))  # fmt: skip
        xy = samples[0, i, :, 0] * 320  # (heads, P, 2) level 0, image px
        ax.scatter(xy[..., 0].flatten(), xy[..., 1].flatten(), s=6, color=LEVEL_COLOURS[0])
        ax.plot(*(refs[0, i, :2] * 320).tolist(), "w*", markersize=9)
    ax.set_xlim(0, 320)
    ax.set_ylim(320, 0)
    ax.set_title(title)
plt.show()

# %% [markdown]
# The weights each kind of attention computes per head in one layer of the preset at
# 320 px and of mmdet's R50 model at 800 × 1333 (Q = 100 and 300 queries):

# %%
rows = {}
for name, (height, width), num_queries in [("preset, 320 x 320", (320, 320), 100),
                                           ("R50, 800 x 1333", (800, 1333), 300)]:  # fmt: skip
    num_tokens = sum(h * w for h, w in level_sizes(height, width))
    rows[name] = {
        "encoder self (deformable) S L P": num_tokens * 16,
        "... if dense S²": num_tokens**2,
        "decoder self (dense) Q²": num_queries**2,
        "decoder cross (deformable) Q L P": num_queries * 16,
        "... if dense Q S": num_queries * num_tokens,
    }
pd.DataFrame(rows).map("{:,}".format)

# %% [markdown]
# The encoder is where deformable attention matters: its dense version would be by
# far the largest of these numbers. In the decoder the dense cross-attention of
# DETR would have been affordable (Q S, 6.7 million weights per head at 800 × 1333);
# deformable attention is used there for another reason, the one Zhu et al. give for
# the faster training: each query starts out reading a few places around its reference
# instead of spreading an almost uniform weight over the whole image, and learns to
# move them.
#
# ## Recap
#
# - Dense attention over a flattened pyramid computes S² weights per head and layer:
#   4.5 million at 320 px (S = 2125), 494 million at 800 × 1333 (S = 22,223). DETR could
#   only afford C5. Deformable attention computes S · L · P = 16 S.
# - Flattening: level after level, each row-major; token = start_l + y W_l + x;
#   `spatial_shapes` (L, 2) = (H_l, W_l) and the level start indices find the levels
#   again; the sine and level embeddings say where each token came from.
# - The module: value projection (values split into heads, (B, S, heads, D / heads)),
#   offsets (B, Q, heads, L, P, 2) and weights (softmax over L × P) from the query
#   alone, bilinear samples summed per head, output projection, residual.
# - Offsets: level pixels around a point reference (offset / (W_l, H_l)), eighths of a
#   box reference (offset / P × wh / 2). At initialisation head h points in direction
#   2πh / heads (larger coordinate 1), point p at p + 1, every weight 1 / (L P).
# - Sampling: (x W − 0.5, y H − 0.5), four neighbours, bilinear weights, zeros
#   outside; `multi_scale_deformable_attention` equals a loop of such samples.
# - Measured at 320 px: the dense attention that keeps its weights holds 144 MiB for
#   backward and grows with S²; the deformable module about 23 MiB, linear in S; a
#   fused dense attention holds less still but its arithmetic grows with S².
# - The encoder samples around each token's own centre on every level; the decoder
#   around each query's reference point or box.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** The initial offsets. Write `initial_offset(head, point, num_heads)`
# returning the pair `(dx, dy)` (floats, in level pixels) of point `point` of head
# `head` in a freshly built `MultiScaleDeformableAttention` with `num_heads` heads,
# from the rule of section 3.1 (do not read the module's bias).

# %% tags=["solution"]
initial_offset = None  # your function (head, point, num_heads) -> (dx, dy)
### BEGIN SOLUTION


def initial_offset(head, point, num_heads):
    theta = 2 * math.pi * head / num_heads
    dx, dy = math.cos(theta), math.sin(theta)
    scale = max(abs(dx), abs(dy))
    return (point + 1) * dx / scale, (point + 1) * dy / scale


print([round(v, 4) for v in initial_offset(1, 3, 8)])  # head 1 (45°), point 3: (4, 4)
### END SOLUTION


# %% tags=["check"]
def bias_of_module(head, point, num_heads):
    """The offset (dx, dy) of (head, point) in a fresh module's bias (level 0)."""
    module = MultiScaleDeformableAttention(8 * num_heads, num_heads, 1, 4)
    return module.sampling_offsets.bias.detach().view(num_heads, 1, 4, 2)[head, 0, point]


check_function(
    "initial_offset", initial_offset,
    [(0, 0, 8), (1, 3, 8), (2, 1, 8), (5, 2, 8)],
    bias_of_module, atol=1e-5,
    hint="direction (cos, sin) of 2 pi head / num_heads, divided by max(|cos|, |sin|), "
    "times point + 1.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "initial_offset", initial_offset,
    [(1, 0, 6), (4, 3, 6), (3, 2, 4), (7, 1, 12), (11, 3, 12)],
    bias_of_module, atol=1e-5,
    hint="other numbers of heads: the angle step is 2 pi / num_heads",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** From an offset to a location. Write `point_location(reference, offset,
# height, width)`: the sampling location (x, y) in [0, 1] for a point reference
# `reference = (x, y)` and an offset `(dx, dy)` in pixels of a level of `height` ×
# `width`; and `box_location(reference, offset, num_points)` for a box reference
# `(cx, cy, w, h)` and `num_points` points per head and level. Both return a pair of
# floats.

# %% tags=["solution"]
point_location = None  # your function (reference, offset, height, width) -> (x, y)
box_location = None  # your function (reference, offset, num_points) -> (x, y)
### BEGIN SOLUTION


def point_location(reference, offset, height, width):
    return reference[0] + offset[0] / width, reference[1] + offset[1] / height


def box_location(reference, offset, num_points):
    cx, cy, w, h = reference
    return cx + offset[0] / num_points * w / 2, cy + offset[1] / num_points * h / 2


### END SOLUTION


# %% tags=["check"]
def module_location(reference, offset, *sizes):
    """The location MultiScaleDeformableAttention.sampling gives for one offset (its bias)."""
    num_points = sizes[0] if len(reference) == 4 else 1
    module = MultiScaleDeformableAttention(8, 1, 1, num_points)
    with torch.no_grad():
        module.sampling_offsets.bias.zero_()
        module.sampling_offsets.bias[:2] = torch.tensor(offset)
    shape = torch.tensor([sizes if len(reference) == 2 else (10, 10)])  # (L, 2) = (H, W)
    ref = torch.tensor(reference, dtype=torch.float32).view(1, 1, 1, -1)  # (B, Q, L, 2 or 4)
    locations, _ = module.sampling(torch.zeros(1, 1, 8), ref, shape)
    return locations[0, 0, 0, 0, 0]


check_function(
    "point_location", point_location,
    [((0.5, 0.5), (2.0, -1.0), 20, 20), ((0.3, 0.6), (1.5, 0.25), 10, 25)],
    module_location,
    hint="an offset in level pixels: x + dx / W_l, y + dy / H_l (mind the order: height, "
    "width).",
)  # fmt: skip
check_function(
    "box_location", box_location,
    [((0.5, 0.5, 0.2, 0.4), (4.0, 0.0), 4), ((0.3, 0.6, 0.1, 0.3), (-1.0, 2.5), 4)],
    module_location,
    hint="an offset in the box: cx + dx / P * w / 2, cy + dy / P * h / 2.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "point_location", point_location,
    [((0.0, 1.0), (-3.0, 7.5), 5, 8), ((0.9, 0.1), (0.0, 0.0), 13, 21)],
    module_location,
    hint="other levels and offsets outside the map",
)  # fmt: skip
check_function(
    "box_location", box_location,
    [((0.7, 0.2, 0.5, 0.05), (-2.0, 3.0), 2), ((0.5, 0.5, 1.0, 1.0), (8.0, -8.0), 8)],
    module_location,
    hint="other numbers of points",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** Bilinear weights. Write `bilinear_weights(x, y, height, width)`
# returning an (H, W) tensor: the weight each pixel of a level of `height` × `width`
# gets in the sample at location (x, y) in [0, 1], as `grid_sample` computes it
# (bilinear, `align_corners=False`, zeros outside): at most four non-zero entries, which
# sum to less than 1 when some neighbours fall outside the map. Do not call
# `grid_sample`, the op, or this notebook's `bilinear`.

# %% tags=["solution"]
bilinear_weights = None  # your function (x, y, height, width) -> (H, W) tensor
### BEGIN SOLUTION


def bilinear_weights(x, y, height, width):
    px, py = x * width - 0.5, y * height - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    lx, ly = px - x0, py - y0
    grid = torch.zeros(height, width)
    for yy, xx, weight in [(y0, x0, (1 - lx) * (1 - ly)), (y0, x0 + 1, lx * (1 - ly)),
                           (y0 + 1, x0, (1 - lx) * ly), (y0 + 1, x0 + 1, lx * ly)]:  # fmt: skip
        if 0 <= yy < height and 0 <= xx < width:
            grid[yy, xx] = weight
    return grid


### END SOLUTION


# %% tags=["check"]
def weights_from_op(x, y, height, width):
    """Each pixel's weight: the op run on a map whose channel i is 1 at pixel i only."""
    identity = torch.eye(height * width).view(1, height * width, 1, height * width)
    location = torch.tensor([x, y]).view(1, 1, 1, 1, 1, 2)  # (B, Q, heads, L, P, 2)
    shape = torch.tensor([[height, width]])
    sampled = multi_scale_deformable_attention(identity, shape, location, torch.ones(1, 1, 1, 1, 1))
    return sampled.view(height, width)


check_function(
    "bilinear_weights", bilinear_weights,
    [(0.4, 0.55, 4, 5), (0.5, 0.5, 4, 4), (0.33, 0.71, 6, 3)],
    weights_from_op,
    hint="p_x = x W - 0.5, p_y = y H - 0.5; x0 = floor(p_x); the four pixels (y0, x0), "
    "(y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1) get (1 - lx)(1 - ly), lx (1 - ly), "
    "(1 - lx) ly, lx ly.",
)  # fmt: skip
check_function(
    "bilinear_weights", bilinear_weights,
    [(0.05, 0.9, 4, 5), (-0.1, 0.5, 4, 4)],
    weights_from_op,
    hint="near the border some neighbours have index -1 or W (or H): they are not in the "
    "map and get no weight (zeros padding), the others keep theirs.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "bilinear_weights", bilinear_weights,
    [(1.0, 1.0, 3, 3), (0.999, 0.001, 5, 2), (1.3, 0.5, 4, 4), (0.125, 0.375, 4, 8)],
    weights_from_op,
    hint="corners, far outside, and a location exactly on a pixel centre",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 3")

# %% [markdown]
# **Exercise 4.** Counting. Write `attention_counts(height, width)` returning the pair
# `(dense, deformable)` of ints: the attention weights *per head* of one encoder
# self-attention layer of the R50 model (four levels of strides 8 to 64, four points)
# for one `height` × `width` input, dense over all flattened levels and deformable.
# Then set `ratio_800x1333` to dense / deformable at 800 × 1333 (a float).

# %% tags=["solution"]
attention_counts = None  # your function (height, width) -> (dense, deformable) ints
ratio_800x1333 = None  # a float
### BEGIN SOLUTION


def attention_counts(height, width):
    num_tokens = sum(math.ceil(height / s) * math.ceil(width / s) for s in (8, 16, 32, 64))
    return num_tokens**2, num_tokens * 4 * 4


dense_800, deformable_800 = attention_counts(800, 1333)
ratio_800x1333 = dense_800 / deformable_800
### END SOLUTION


# %% tags=["check"]
def counts_from_r50(height, width):
    """S from the R50 model's own maps (meta device), then S^2 and S L P."""
    with torch.device("meta"):
        maps = r50.neck(r50.backbone(torch.zeros(1, 3, height, width)))
    num_tokens = sum(x.shape[-2] * x.shape[-1] for x in maps)
    return torch.tensor([num_tokens**2, num_tokens * r50.config.num_levels * r50.config.num_points])


check_function(
    "attention_counts", attention_counts, [(320, 320), (640, 448)], counts_from_r50,
    hint="S = sum over strides 8, 16, 32, 64 of ceil(H / s) ceil(W / s); dense S^2, "
    "deformable S L P with L = P = 4.",
)  # fmt: skip
check_close(
    "ratio_800x1333", ratio_800x1333, 22223 / 16,
    hint="the ratio is S / (L P); S = 16700 + 4200 + 1050 + 273 at 800 x 1333.",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "attention_counts", attention_counts, [(800, 1333), (100, 70), (1024, 1024)],
    counts_from_r50,
    hint="sizes that are not multiples of 64: round up, ceil(H / s)",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 4")

# %% [markdown]
# ## Further reading
#
# - X. Zhu, W. Su, L. Lu, B. Li, X. Wang, J. Dai, *Deformable DETR: Deformable
#   Transformers for End-to-End Object Detection*, ICLR 2021 (section 4.1, eq. 2 and 3:
#   (multi-scale) deformable attention; appendix A.2 and A.3: the reference points of
#   the encoder and decoder, the complexity), <https://arxiv.org/abs/2010.04159>
# - J. Dai, H. Qi, Y. Xiong, Y. Li, G. Zhang, H. Hu, Y. Wei, *Deformable Convolutional
#   Networks*, ICCV 2017 (learned offsets and bilinear sampling inside a convolution),
#   <https://arxiv.org/abs/1703.06211>
# - N. Carion, F. Massa, G. Synnaeve, N. Usunier, A. Kirillov, S. Zagoruyko, *End-to-End
#   Object Detection with Transformers* (DETR), ECCV 2020,
#   <https://arxiv.org/abs/2005.12872>
# - T. Dao, D. Y. Fu, S. Ermon, A. Rudra, C. Ré, *FlashAttention: Fast and
#   Memory-Efficient Exact Attention with IO-Awareness*, NeurIPS 2022 (dense attention
#   without storing the S × S matrix), <https://arxiv.org/abs/2205.14135>
# - mmcv's pure-PyTorch `multi_scale_deformable_attn_pytorch` and its
#   `MultiScaleDeformableAttention` module (`mmcv/ops/multi_scale_deform_attn.py`), the
#   reference the course's op is compared with; mmdet 3.3's
#   `DeformableDetrTransformerEncoder` and `DeformableDetrTransformerDecoder`.
