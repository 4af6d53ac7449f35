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
# # 62 · Deformable DETR: the set loss
#
# A dense detector decides before the loss which of its thousands of priors learn each
# box (ATSS, notebook 41). DETR (Carion et al., 2020) turns that around: its decoder
# emits a small *set* of Q predictions, the Hungarian matching pairs each ground-truth
# box with exactly one of them, and only then does the loss look at the predictions.
# The matched queries learn their box and its class; every other query learns "no
# object". Because no two queries ever learn the same box, a trained DETR needs no NMS.
#
# Deformable DETR (Zhu et al., 2021) keeps that *set loss* and adds two things this
# notebook follows with real numbers from the course's `detutils.models.deformable_detr`:
# the loss is applied after **every** decoder layer, each layer matched on its own (the
# auxiliary losses), and, with two stages, once more on the **encoder's proposals**, the
# boxes that every token of the encoder's memory proposes at its own place, from which
# the best become the decoder's starting boxes.
#
# **Learning goals**
#
# 1. Turn a matching into targets: one-hot class targets (B, Q, C) that are all zero for
#    the unmatched queries, box targets (B, Q, 4) in normalised cxcywh, and a positive
#    mask (B, Q).
# 2. Compute the three terms of one decoder layer by hand: the sigmoid focal loss over
#    every (query, class) pair, L1 on normalised cxcywh and 1 − GIoU in pixels on the
#    matched queries, weights 2, 5 and 2, all divided by the matched queries of the
#    batch (averaged over processes); match `set_loss`.
# 3. List the 3 (L + 1) terms of `model.loss_terms` (every decoder layer, the encoder)
#    and see how `model.loss` sums them into `cls`, `l1`, `giou`, `aux` and `loss`.
# 4. Follow the two-stage proposals: one box per encoder token, at its place, of side
#    0.05 × 2^level; the 100 best by the encoder's class head become the decoder's
#    reference boxes; their loss matches them class-agnostically.
# 5. Say what each term pushes, from the gradients of each term with respect to one
#    matched query's box and logits.
#
# **Prerequisites**: notebook 01 (GIoU), notebook 42 (the sigmoid focal loss, the class
# prior −4.595, the normaliser under DDP);
# [notebook 61](61_queries_and_hungarian_matching.ipynb) (queries and references, the
# outputs of every decoder layer, the Hungarian matching and its costs); notebook 60
# (deformable attention, the encoder's tokens) helps but is not needed. Notebook 63
# trains the detector with this loss.
#
# **Notation**: the letters of the shapes (B, Q, S, D, M, C, P, ...), the box formats and
# the flat prior index are those of [notebook 09](09_notation.ipynb). Here L counts the
# decoder layers (the first axis of the model's outputs), as in `DeformableDETROutputs`;
# the four feature levels are numbered l = 0 to 3. N is the divisor of the loss.

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
import torch.nn.functional as F

from detutils.assigners import AssignResult
from detutils.assigners.hungarian import assign_hungarian
from detutils.boxes import cxcywh_norm_to_xyxy, xyxy_to_cxcywh_norm
from detutils.checks import check_close, check_equal, check_function, check_passed
from detutils.course import significant
from detutils.data import CocoDetection, build_transforms, collate, ensure_shapes, find_split
from detutils.data.shapes import CLASS_NAMES
from detutils.losses import sigmoid_focal_loss
from detutils.losses.detr import set_loss, set_targets
from detutils.models.deformable_detr import build_deformable_detr_r18half_d128
from detutils.trace import record, trace_calls


def shapes(recording):
    """The recorded intermediates: name, item, shape, dtype."""
    return recording.table()[["name", "item", "shape", "dtype"]]


# %% [markdown]
# ## 0. A batch and an untrained model
#
# Two validation images of the shapes set at 320 px, and the course's CPU preset
# `deformable-detr-r18half-d128` for the six classes: a half-width ResNet-18, width
# D = 128, 3 encoder and 3 decoder layers, Q = 100 queries, box refinement and two
# stages. It is freshly built (seeded random weights, initialised as mmdet does; no
# backbone weights loaded), so its numbers are those of a first training step.

# %%
root = ensure_shapes("data/shapes")
val_set = CocoDetection(*find_split(root, "val"), transforms=build_transforms(320, train=False))
images, batch_targets = collate([val_set[0], val_set[1]])  # (B, 3, 320, 320), B dicts
targets = [
    {"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in batch_targets
]
images = images.to(device)
torch.manual_seed(0)
model = build_deformable_detr_r18half_d128(num_classes=len(CLASS_NAMES)).to(device).train()
outputs = model(images)
image_size = model.image_size(outputs)  # (H, W) px
num_classes = model.num_classes  # C
print("boxes per image M:", [len(t["boxes"]) for t in targets], " image size:", image_size)
pd.DataFrame(
    [
        (field, tuple(value.shape) if torch.is_tensor(value) else f"{len(value)} x (B, Q, 4)")
        for field, value in outputs._asdict().items()
    ],
    columns=["output", "shape"],
)

# %% [markdown]
# The outputs of every decoder layer are stacked: class logits (L, B, Q, C) =
# (3, 2, 100, 6) and boxes (L, B, Q, 4), cxcywh divided by the image size. With two
# stages the encoder adds its own logits and boxes, one per token: (B, S, C) and
# (B, S, 4), S = 40² + 20² + 10² + 5² = 2125 tokens of the four levels.
#
# `model.assign` matches every decoder layer's predictions with the boxes, each layer
# on its own, and the encoder's proposals once more (notebook 61). Its result holds the
# (L, B, Q) fields of the layers and the (B, S) fields of the encoder:

# %%
assignment = model.assign(outputs, targets)
with trace_calls() as step_0:
    record("assignment.layers", assignment.layers)
    record("assignment.encoder", assignment.encoder)
shapes(step_0)

# %% [markdown]
# ## 1. From a matching to targets
#
# Take the last decoder layer. Its `gt_index` (B, Q) says, for each query, which box of
# its image it learns, or −1 (`BACKGROUND`): the query learns "no object". With M ≤ Q
# every box has exactly one query, so min(Q, M) = M queries per image are matched. The
# matched queries of image 0:

# %%
last = AssignResult(*(field[-1] for field in assignment.layers))  # fields (B, Q)
matched_queries = (last.gt_index[0] >= 0).nonzero().squeeze(1)  # (M,) query indices
matched_boxes = last.gt_index[0, matched_queries]  # (M,) indices into image 0's boxes
gt_xyxy = targets[0]["boxes"][matched_boxes]  # (M, 4) xyxy px
gt_norm = xyxy_to_cxcywh_norm(gt_xyxy, image_size)  # (M, 4) cxcywh / image size
pd.DataFrame(
    {
        "query": matched_queries.tolist(),
        "box (gt_index)": matched_boxes.tolist(),
        "class": [CLASS_NAMES[label] for label in targets[0]["labels"][matched_boxes].tolist()],
        "box xyxy px": [tuple(round(v) for v in box) for box in gt_xyxy.tolist()],
        "target cxcywh / size": [tuple(round(v, 4) for v in box) for box in gt_norm.tolist()],
    }
)

# %% [markdown]
# `set_targets` spreads this over the whole batch: a one-hot row of the box's class for
# each matched query and a row of zeros for every other one (there is no background
# class: "no object" is "no class at all"), the box in cxcywh divided by the image size
# (zeros where unmatched: they are never read), and the positive mask.

# %%
with trace_calls() as step_1:
    class_targets, box_targets, positive = record(
        "set_targets", set_targets(last, targets, num_classes, image_size)
    )
shapes(step_1)

# %% [markdown]
# `set_targets[0]` are the class targets (B, Q, C) = (2, 100, 6), `[1]` the box targets
# (B, Q, 4), `[2]` the positive mask (B, Q). Each matched query has exactly one 1 in its
# row, every unmatched row is zero, and the box targets of image 0 are the table's:

# %%
print("ones per query:", sorted(set(class_targets.sum(-1).flatten().tolist())))
print("matched queries per image:", positive.sum(1).tolist(), "= boxes per image")
assert torch.equal(class_targets.sum(-1), positive.float())
assert torch.equal(class_targets[~positive], torch.zeros(int((~positive).sum()), num_classes))
assert torch.equal(box_targets[0, matched_queries], gt_norm)
labels_back = class_targets[0, matched_queries].argmax(-1)  # (M,)
assert torch.equal(labels_back, targets[0]["labels"][matched_boxes])

# %% [markdown]
# Compared with ATSS (notebooks 41 and 42), a box has one positive instead of about
# nine, no prior is `IGNORE`d and there is no centerness target: each box has one
# query, each query at most one box, and 200 − 12 = 188 queries of the batch learn
# all-zero rows.
#
# ## 2. The three terms of one decoder layer
#
# For one layer, with N the number of matched queries of the batch, $x_{qc}$ the logits,
# $t_{qc}$ the one-hot targets, $\hat b_q$ a matched query's box and $b_q$ its target
# (mmdet's `DETRHead.loss_by_feat_single`, the course's `set_loss`):
#
# $$
# \mathcal{L} = \underbrace{\frac{2}{N} \sum_{q, c} \mathrm{FL}(x_{qc}, t_{qc})}_{\texttt{cls}}
# + \underbrace{\frac{5}{N} \sum_{q\ \text{matched}} \big\lVert \hat b_q - b_q
#   \big\rVert_1}_{\texttt{l1}}
# + \underbrace{\frac{2}{N} \sum_{q\ \text{matched}} \big(1 - \mathrm{GIoU}(\hat b_q,
#   b_q)\big)}_{\texttt{giou}}.
# $$
#
# FL is the sigmoid focal loss of notebook 42 (α = 0.25, γ = 2), summed over all
# B × Q × C (query, class) pairs, matched or not. The L1 distance is taken on cxcywh
# divided by the image size (a coordinate off by a tenth of the image costs 0.1 before
# the weight); the GIoU on the same boxes in pixels, xyxy. By hand, with plain torch
# only:

# %%
logits_last = outputs.cls_logits[-1]  # (B, Q, C)
boxes_last = outputs.boxes[-1]  # (B, Q, 4) cxcywh in [0, 1]
height, width = image_size
with trace_calls() as step_2:
    num_matched = positive.sum().float().clamp(min=1)  # N (one process)
    # class: sigmoid focal loss of every (query, class) pair
    prob = logits_last.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits_last, class_targets, reduction="none")
    p_t = torch.where(class_targets == 1, prob, 1 - prob)
    alpha_t = torch.where(class_targets == 1, 0.25, 0.75)
    focal_pairs = record("focal_pairs", alpha_t * (1 - p_t) ** 2 * bce)  # (B, Q, C)
    cls_by_hand = 2.0 * focal_pairs.sum() / num_matched
    # L1 on the matched queries, normalised cxcywh
    pred = record("pred", boxes_last[positive])  # (P, 4)
    goal = record("goal", box_targets[positive])  # (P, 4)
    l1_by_hand = 5.0 * (pred - goal).abs().sum() / num_matched
    # 1 - GIoU on the matched queries, in pixels
    scale = torch.tensor([width, height, width, height], dtype=pred.dtype)
    pred_px, goal_px = pred * scale, goal * scale  # (P, 4) cxcywh px
    pred_lt, pred_rb = pred_px[:, :2] - pred_px[:, 2:] / 2, pred_px[:, :2] + pred_px[:, 2:] / 2
    goal_lt, goal_rb = goal_px[:, :2] - goal_px[:, 2:] / 2, goal_px[:, :2] + goal_px[:, 2:] / 2
    record("pred_xyxy", torch.cat([pred_lt, pred_rb], 1))  # (P, 4) px
    record("goal_xyxy", torch.cat([goal_lt, goal_rb], 1))  # (P, 4) px
    inter_wh = (torch.minimum(pred_rb, goal_rb) - torch.maximum(pred_lt, goal_lt)).clamp(min=0)
    inter = inter_wh.prod(1)  # (P,)
    union = pred_px[:, 2:].prod(1) + goal_px[:, 2:].prod(1) - inter
    hull = (torch.maximum(pred_rb, goal_rb) - torch.minimum(pred_lt, goal_lt)).prod(1)
    giou = record("giou", inter / union - (hull - union) / hull)  # (P,)
    giou_by_hand = 2.0 * (1 - giou).sum() / num_matched
    library = record("set_loss", set_loss(logits_last, boxes_last, last, targets, image_size))
by_hand = {"cls": cls_by_hand, "l1": l1_by_hand, "giou": giou_by_hand}
for name in by_hand:
    torch.testing.assert_close(by_hand[name], library[name])
print(f"N = {num_matched.item():.0f} matched queries")
significant(
    pd.DataFrame(
        {
            "by hand": [value.item() for value in by_hand.values()],
            "set_loss": [library[name].item() for name in by_hand],
        },
        index=list(by_hand),
    )
)

# %% [markdown]
# Every intermediate and its shape: the focal loss runs over all (B, Q, C) pairs, the
# two box terms over the P = N matched queries only.

# %%
shapes(step_2)

# %% [markdown]
# How much of the class term do the 188 unmatched queries make? The class bias starts
# every pair at p = 0.01 (−log 99 = −4.595, notebook 42), so a negative pair costs almost
# nothing and the term is the matched queries' own:

# %%
unmatched_share = focal_pairs[~positive].sum() / focal_pairs.sum()
print(f"class bias {model.cls_branches[len(model.decoder) - 1].bias[0].item():.4g}; "
      f"share of the unmatched queries in the cls term: {unmatched_share.item():.3g}")  # fmt: skip

# %% [markdown]
# ### The divisor: the matched queries
#
# All three sums are divided by the same N, the matched queries of the batch:
# Σᵢ min(Q, Mᵢ), the number of boxes whenever no image has more boxes than queries
# (here 7 + 5 = 12). So each term is a loss *per object*: it does not grow with Q (300
# queries or 100), with C, or with how crowded the batch is. A mean over all the
# (query, class) pairs of the batch would instead divide the same sum by B × Q × C =
# 1200 here, and by 48,000 for two COCO images with 300 queries and 80 classes.
#
# Two details differ from ATSS's normaliser (notebook 42). An image without a box adds
# 0, not 1 (its queries still learn "no object" through the class term), and only the
# total is clamped to at least 1, so a batch without any box divides by 1:

# %%
no_box = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
empty = AssignResult(*(torch.full((2, 100), -1), torch.full((2, 100), -1), torch.zeros(2, 100)))
empty_terms = set_loss(logits_last, boxes_last, empty, no_box, image_size)
print({name: f"{value.item():.4g}" for name, value in empty_terms.items()})

# %% [markdown]
# The class term is the 1200 negative pairs alone, divided by 1 instead of 12 (their
# logits are spread around the prior by the class head's random weights, which is why
# it is not 1200 × 2 × 0.75 × 0.01² × 0.01 ≈ 0.002); the box terms are 0.
# When an image has more boxes than queries (M > Q, never in this set, sometimes in a
# crowded COCO image with Q = 100), only Q boxes get a query and N counts Q for that
# image. Three queries and five boxes:

# %%
crowd_boxes = torch.tensor([[10.0, 10, 50, 50], [60, 10, 100, 50], [110, 10, 150, 50],
                            [10, 60, 50, 100], [60, 60, 100, 100]])  # (M, 4) = (5, 4)  # fmt: skip
crowd = assign_hungarian(
    torch.zeros(3, 2), crowd_boxes[:3] + 2.0, crowd_boxes, torch.zeros(5, dtype=torch.long),
    (160, 160),
)  # fmt: skip
print("gt_index of the 3 queries:", crowd.gt_index.tolist(),
      "-> matched:", int((crowd.gt_index >= 0).sum()), "of 5 boxes")  # fmt: skip

# %% [markdown]
# The two boxes left without a query are not learnt in this step at all. Under
# distributed data parallel training each process counts its own N, and the processes
# average it (`all_reduce_mean`, mmdet's `reduce_mean` with `sync_cls_avg_factor=True`)
# before dividing. With N = 7 and N = 13 on two processes both divide by 10; since DDP
# averages the gradients too, the step is (g₁ / 10 + g₂ / 10) / 2 = (g₁ + g₂) / 20, the
# step of one batch of both processes' images divided by its 20 boxes.
#
# ## 3. One loss per decoder layer, and one for the encoder
#
# Every decoder layer has its own class and box heads (box refinement), and each
# layer's predictions get the set loss of section 2, each matched on its own: a layer
# is judged by its own best matching, not by the last layer's. DETR calls them the
# *auxiliary decoding losses*; they give every layer a direct signal, so each one
# already predicts a full set. `model.loss_terms` returns every term under mmdet's
# names: `d0.` and `d1.` for the first two layers, no prefix for the last, `enc.` for
# the encoder's proposals (section 4).

# %%
terms = model.loss_terms(outputs, targets, assignment)
print(len(terms), "terms:", list(terms))
rows = {"d0 (layer 0)": "d0.", "d1 (layer 1)": "d1.", "last (layer 2)": "", "enc": "enc."}
term_table = significant(
    pd.DataFrame(
        {
            part: {name: terms[prefix + name].item() for name in ("cls", "l1", "giou")}
            for part, prefix in rows.items()
        }
    ).T
)
term_table

# %% [markdown]
# With L = 3 decoder layers and two stages that makes 3 (L + 1) = 12 terms; mmdet's R50
# refine-two-stage model, L = 6, has 21. The last layer's row is section 2's. At
# initialisation the last layer of every box head is zero, so each layer's boxes are
# its references, and with box refinement every layer starts from the previous layer's
# boxes: all three layers predict the same boxes. Their class logits differ (each layer
# has its own class head and its own queries), and so may their matchings: layers 0 and
# 2 chose the same queries, so their box terms are equal, while layer 1 gave boxes 4 and
# 6 of image 0 to other queries, hence its slightly different `l1` and `giou`. Which
# query learns each box of image 0, per layer:

# %%
per_layer = {}
for layer in range(len(outputs.cls_logits)):
    gt_index = assignment.layers.gt_index[layer, 0]  # (Q,)
    queries = (gt_index >= 0).nonzero().squeeze(1)
    boxes_matched = gt_index[queries].tolist()
    per_layer[f"layer {layer}"] = dict(zip(boxes_matched, queries.tolist(), strict=True))
torch.testing.assert_close(outputs.boxes[0], outputs.boxes[-1])
pd.DataFrame(per_layer).sort_index().rename_axis("box")

# %% [markdown]
# `model.loss` keeps the last layer's three terms apart, sums the nine others into
# `aux`, and all twelve into `loss`, the number that is back-propagated (and that a
# training log shows beside its parts):

# %%
losses = model.loss(outputs, targets, assignment)
aux_sum = sum(value for name, value in terms.items() if name not in ("cls", "l1", "giou"))
torch.testing.assert_close(losses["aux"], aux_sum)
torch.testing.assert_close(losses["loss"], sum(terms.values()))
print({name: f"{value.item():.4g}" for name, value in losses.items()})

# %% [markdown]
# ## 4. Two stages: proposals from the encoder
#
# Without two stages the decoder starts from Q learned reference points. With two
# stages (Deformable DETR, section 4.2 and appendix A.4), the encoder's memory proposes
# the starting boxes itself:
#
# 1. `encoder_proposals`: every token of level l proposes a square box at its own
#    place, of side 0.05 × 2^l of the image (16, 32, 64 and 128 px at 320 px); a box
#    with a coordinate outside (0.01, 0.99) is invalid, its token's memory is zeroed and
#    its box set to `inf` in inverse-sigmoid space (every coordinate 1 after the
#    sigmoid: a box no object matches well).
#    The memory then goes through a linear layer and LayerNorm.
# 2. An extra class head and box head (the (L + 1)-th) score every proposal (B, S, C)
#    and refine it: box = sigmoid(box head + inverse sigmoid of the proposal).
# 3. The Q = 100 best proposals by the logit of class 0 become the decoder's reference
#    boxes (B, Q, 4), detached, and their sine embedding gives the queries.

# %%
output_memory, proposals = model.encoder_proposals(outputs.memory, outputs.spatial_shapes)
proposal_boxes = proposals.sigmoid()  # (B, S, 4) cxcywh in [0, 1]
level_sizes = outputs.spatial_shapes.prod(1)  # (4,) H_l W_l
level_of_token = torch.repeat_interleave(torch.arange(4), level_sizes)  # (S,)
print("output memory", tuple(output_memory.shape), " proposals", tuple(proposals.shape))
pd.DataFrame(
    {
        "H_l x W_l": [f"{h} x {w}" for h, w in outputs.spatial_shapes.tolist()],
        "tokens": level_sizes.tolist(),
        "side (fraction)": [0.05 * 2**level for level in range(4)],
        "side (px)": [round(0.05 * 2**level * width) for level in range(4)],
        "invalid": [int(proposals[0, level_of_token == level].isinf().any(-1).sum())
                    for level in range(4)],
    },
    index=pd.Index(range(4), name="level"),
)  # fmt: skip

# %% [markdown]
# At 320 px no proposal is invalid: the first centre of the 40-wide level 0 sits at
# 0.5 / 40 = 0.0125 of the image, inside (0.01, 0.99). At 640 px the finest level is
# 80 wide, its outer ring of centres (0.5 / 80 = 0.006) falls outside, and 316 of its
# 6400 proposals are invalid (mmdet also marks every token in the padding of a smaller
# image; the course letterboxes every image to the same size and has none):

# %%
shapes_640 = torch.tensor([[80, 80], [40, 40], [20, 20], [10, 10]])
memory_640 = torch.zeros(1, int(shapes_640.prod(1).sum()), model.config.embed_dims)  # (1, S, D)
proposals_640 = model.encoder_proposals(memory_640, shapes_640)[1]  # (1, S, 4)
invalid_640 = proposals_640[0].isinf().any(-1)  # (S,)
print("invalid proposals at 640 px per level:",
      [int(part.sum()) for part in invalid_640.split(shapes_640.prod(1).tolist())])  # fmt: skip

# %% [markdown]
# Level 2 (10 × 10 tokens, stride 32) over image 0: a 64 px box centred on each token
# (blue dots). Boxes 32 px apart with a side of 64 px overlap their neighbours by half;
# every other box of row 4 is drawn in red, and the box of token (0, 0) in orange: it
# reaches 16 px beyond the image, which is allowed (only its cxcywh must lie in
# (0.01, 0.99)).

# %%
level = 2
start = int(level_sizes[:level].sum())
level_boxes = cxcywh_norm_to_xyxy(proposal_boxes[0, start : start + level_sizes[level]],
                                  image_size)  # (H_l W_l, 4) xyxy px  # fmt: skip
fig, ax = plt.subplots(figsize=(4.5, 4.5))
ax.imshow(images[0].permute(1, 2, 0).cpu(), alpha=0.6)
for index, box in enumerate(level_boxes.tolist()):
    row, column = divmod(index, int(outputs.spatial_shapes[level, 1]))
    color, line = ("0.3", 0.4)
    if row == 4 and column % 2 == 0:
        color, line = ("tab:red", 1.5)
    elif index == 0:
        color, line = ("tab:orange", 1.5)
    ax.add_patch(plt.Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False,
                               edgecolor=color, linewidth=line))  # fmt: skip
centres = (level_boxes[:, :2] + level_boxes[:, 2:]) / 2
ax.scatter(centres[:, 0], centres[:, 1], s=4, color="tab:blue")
ax.set_xlim(-40, 360)
ax.set_ylim(360, -40)
ax.set_title(f"level {level}: {len(level_boxes)} proposals of side 0.05 x 2^{level}", fontsize=9)
plt.show()

# %% [markdown]
# The encoder's class head scores all S = 2125 proposals; the 100 best by class 0 are
# the first decoder layer's references, the same boxes as `outputs.references[0]`:

# %%
with trace_calls() as step_4:
    enc_logits = record("enc_cls_logits", outputs.enc_cls_logits)  # (B, S, C)
    enc_boxes = record("enc_boxes", outputs.enc_boxes)  # (B, S, 4)
    top = record("top", enc_logits[..., 0].topk(model.config.num_queries, dim=1)[1])  # (B, Q)
    chosen = record("chosen", enc_boxes.gather(1, top[..., None].expand(-1, -1, 4)))
    record("references[0]", outputs.references[0])  # (B, Q, 4)
torch.testing.assert_close(chosen, outputs.references[0])
print("the 100 references of image 0 per level:",
      torch.bincount(level_of_token[top[0]], minlength=4).tolist())  # fmt: skip
shapes(step_4)

# %% [markdown]
# The untrained class head picks its 100 by chance, mostly among the 1600 tokens of
# level 0 (the small boxes); training teaches it to pick the tokens on objects. The
# references are detached: the decoder's losses do not move the proposals, which learn
# from their own `enc.` terms only.
#
# **Their loss.** `model.assign` matched the proposals against the same boxes with every
# label set to 0, and their set loss uses class-agnostic targets: column 0 of the class
# targets means "an object here", whatever its class. So the encoder's class head is
# an objectness score on class 0, the score the top-100 selection reads; its other
# C − 1 columns only ever learn 0. Every one of the S = 2125 proposals takes part in
# the class term, M per image learn a box.

# %%
enc_assignment = assignment.encoder  # fields (B, S)
enc_matched = enc_assignment.gt_index >= 0  # (B, S)
print("matched proposals per image:", enc_matched.sum(1).tolist(),
      " their labels:", sorted(set(enc_assignment.labels[enc_matched].tolist())))  # fmt: skip
enc_class_targets, enc_box_targets, enc_positive = set_targets(
    enc_assignment, targets, num_classes, image_size, class_agnostic=True
)  # (B, S, C), (B, S, 4), (B, S)
print("class targets", tuple(enc_class_targets.shape),
      "ones per class column:", enc_class_targets.sum((0, 1)).tolist())  # fmt: skip
enc_terms = set_loss(enc_logits, enc_boxes, enc_assignment, targets, image_size,
                     class_agnostic=True)  # fmt: skip
for name, value in enc_terms.items():
    torch.testing.assert_close(value, terms[f"enc.{name}"])

# %% [markdown]
# ## 5. The weights (2, 5, 2) and what each term pushes
#
# The weights are those of mmdet's Deformable DETR config (`loss_cls` 2.0, `loss_bbox`
# 5.0, `loss_iou` 2.0), and the matching's costs use the same three (notebook 61), so the
# query the matching picks is the one the loss finds cheapest. DETR had 5 and 2 for the
# boxes and a softmax cross-entropy of weight 1; Deformable DETR replaced it by the focal
# loss at 2. What does each term ask of a matched query? The gradient of each term of
# the last layer with respect to the boxes and the logits, for the query that learns
# box 0 of image 0:

# %%
leaf_logits = logits_last.detach().requires_grad_(True)  # (B, Q, C)
leaf_boxes = boxes_last.detach().requires_grad_(True)  # (B, Q, 4)
leaf_terms = set_loss(leaf_logits, leaf_boxes, last, targets, image_size)
grads = {
    name: torch.autograd.grad(value, (leaf_logits, leaf_boxes), retain_graph=True,
                              materialize_grads=True)
    for name, value in leaf_terms.items()
}  # fmt: skip
query = int((last.gt_index[0] == 0).nonzero())  # the query matched to box 0 of image 0
rows = {"prediction": leaf_boxes[0, query], "target": box_targets[0, query]}
rows.update({f"d {name} / d box": grads[name][1][0, query] for name in grads})
print(f"query {query}, box 0 of image 0 ({CLASS_NAMES[int(targets[0]['labels'][0])]})")
significant(
    pd.DataFrame({name: row.tolist() for name, row in rows.items()},
                 index=["cx", "cy", "w", "h"]).T, 3
)  # fmt: skip

# %% [markdown]
# The query starts from the central proposal of level 3 (a square of 0.4 of the image
# at the centre); its target, a large star, is wider, taller and lower. Gradient
# descent moves each coordinate against its gradient:
#
# - **cls** does not touch the box at all: the matching that decided which query
#   learns which box runs without gradient, so the class term only reaches the logits.
# - **l1** pushes every coordinate towards its target by the same step, whatever the
#   distance: the sign of the error times 5 / N = 5 / 12 = 0.417 per unit of image. It is
#   blind to the box's size: a 10 px error costs a 16 px box as much as a 200 px one.
# - **giou** pushes the coordinates together, by amounts that depend on how the boxes
#   overlap. Here it asks for no sideways move at all (d/dcx = 0): along x the
#   prediction lies inside the target, so moving it changes neither the intersection
#   nor the enclosing box; it widens the box instead. Along y the prediction sticks out
#   above the target, so GIoU moves it down (cy) rather than making it taller (h).
#   Since GIoU does not change when both boxes are scaled alike, it weighs a small
#   box's errors relative to its size; where the boxes do not overlap, the
#   enclosing-box part still pulls them together (notebook 01).

# %%
l1_step = grads["l1"][1][0, query]
expected = 5.0 / num_matched * torch.sign(leaf_boxes[0, query] - box_targets[0, query])
torch.testing.assert_close(l1_step, expected)
assert torch.equal(grads["cls"][1], torch.zeros_like(leaf_boxes))
assert torch.equal(grads["l1"][0], torch.zeros_like(leaf_logits))

# %% [markdown]
# The class term on the logits: the matched query's row (its true class, and the five
# others), and the row of one unmatched query.

# %%
unmatched = int((last.gt_index[0] < 0).nonzero()[0])
significant(
    pd.DataFrame(
        {
            f"query {query} (matched)": grads["cls"][0][0, query].tolist(),
            f"query {unmatched} (unmatched)": grads["cls"][0][0, unmatched].tolist(),
        },
        index=pd.Index(CLASS_NAMES, name="d cls / d logit"),
    ),
    3,
)

# %% [markdown]
# The true class of the matched query (star) gets a negative gradient: descent raises
# its logit. Every other pair, the matched query's other classes and all of the
# unmatched query's, gets a positive one, hundreds to millions of times smaller: near
# p = 0.01 a negative pair is already right and the focal factor p² turns it down. The
# box terms' gradients do not reach the logits. The weights set the balance between
# these pushes: 5 on an L1 in fractions of the image against 2 on a GIoU whose values
# lie in [0, 2]; the focal term at 2 brings the class term to the same order as the box
# terms (section 3's table: every term between 1 and 2.6 at the start).
#
# ## Recap
#
# - `set_targets` turns a matching into one-hot class targets (B, Q, C), all zero for
#   the unmatched queries ("no object" is no class), box targets (B, Q, 4) in cxcywh
#   divided by the image size, and the positive mask (B, Q).
# - One layer's set loss: 2 × sigmoid focal loss over all B × Q × C pairs, 5 × L1 on the
#   matched queries' normalised cxcywh, 2 × (1 − GIoU) of the matched boxes in pixels;
#   each divided by N = Σᵢ min(Q, Mᵢ), the boxes of the batch when M ≤ Q, averaged over
#   processes and at least 1. `set_loss` equals the by-hand sums.
# - The class bias −4.595 leaves the unmatched queries a small share of the class term;
#   an image without a box adds 0 to N.
# - `model.loss_terms`: the three terms of every decoder layer (`d0.`, `d1.`, no prefix
#   for the last) and of the encoder's proposals (`enc.`), each matched on its own:
#   3 (L + 1) = 12 for the CPU preset, 21 for the R50 refine-two-stage model.
#   `model.loss` returns `cls`, `l1`, `giou` (last layer), `aux` (the rest) and `loss`.
# - Two stages: each encoder token proposes a box of side 0.05 × 2^l at its place
#   (`inf` when invalid); the encoder's heads score and refine them; the 100 best by
#   class 0 become the decoder's detached reference boxes. Their loss matches them with
#   every label 0: class 0 is objectness.
# - The class term reaches only the logits, L1 moves each coordinate by a constant step
#   5 / N, GIoU moves the box as a whole, relative to its size.
#
# ## Exercises
#
# Each exercise is followed by a check cell: run it after your answer. It says what it
# expected and gives a hint when the answer is not right yet.
#
# **Exercise 1.** Write `query_focal(logits, label)`: the focal loss (α = 0.25, γ = 2) of
# one query, summed over its C classes, as a 0-d tensor: `logits` a (C,) tensor, `label`
# the class of its matched box, or −1 for an unmatched query (its target is all zero).
# Use plain torch, not `sigmoid_focal_loss`. Then assign `focal_matched`, the loss of the
# logits below when the query is matched to a star (class 3), and `focal_unmatched`,
# when it is not matched.

# %%
query_logits = torch.tensor([-4.0, -1.0, -3.0, 0.5, -4.6, -2.0])  # (C,)

# %% tags=["solution"]
query_focal = None  # function ((C,) tensor, int) -> 0-d tensor
focal_matched = focal_unmatched = None  # 0-d tensors (or numbers)
### BEGIN SOLUTION


def query_focal(logits, label):
    """Sum over the classes of -alpha_t (1 - p_t)^2 log p_t against a one-hot target."""
    target = torch.zeros_like(logits)
    if label >= 0:
        target[label] = 1.0
    prob = logits.sigmoid()
    p_t = torch.where(target == 1, prob, 1 - prob)
    alpha_t = torch.where(target == 1, 0.25, 0.75)
    return (-alpha_t * (1 - p_t) ** 2 * torch.log(p_t)).sum()


focal_matched = query_focal(query_logits, 3)
focal_unmatched = query_focal(query_logits, -1)
print(f"matched: {focal_matched.item():.4f}, unmatched: {focal_unmatched.item():.4f}")
### END SOLUTION


# %% tags=["check"]
def library_query_focal(logits, label):
    """The query's focal loss from detutils, for comparison."""
    target = torch.zeros_like(logits)
    if label >= 0:
        target[label] = 1.0
    return sigmoid_focal_loss(logits, target, 0.25, 2.0, reduction="sum")


check_close(
    "focal_matched", focal_matched, library_query_focal(query_logits, 3),
    hint="target: a 1 at class 3, 0 elsewhere; per class p = sigmoid(x), p_t = p where the "
    "target is 1 and 1 - p elsewhere, alpha_t = 0.25 or 0.75; sum -alpha_t (1 - p_t)^2 log p_t.",
)  # fmt: skip
check_close(
    "focal_unmatched", focal_unmatched, library_query_focal(query_logits, -1),
    hint="an unmatched query's target is all zero: every class is a negative pair "
    "(p_t = 1 - p, alpha_t = 0.75).",
)  # fmt: skip
check_function(
    "query_focal", query_focal, [(query_logits, 0), (query_logits, 5), (-query_logits, -1)],
    library_query_focal,
    hint="the label picks which class has target 1; -1 means none",
)  # fmt: skip
### BEGIN HIDDEN TESTS
generator = torch.Generator().manual_seed(62)
random_logits = torch.randn(80, generator=generator) * 3
check_function(
    "query_focal", query_focal, [(random_logits, 17), (random_logits, -1), (random_logits, 79)],
    library_query_focal,
    hint="the function must work for any number of classes",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 1")

# %% [markdown]
# **Exercise 2.** Write `l1_term(pred_boxes, gt_boxes, image_size, num_matched)`: the
# `l1` term of the set loss, weight 5 included, for P matched queries: `pred_boxes` (P, 4)
# their predictions in cxcywh divided by the image size, `gt_boxes` (P, 4) their boxes in
# xyxy pixels, `image_size` (H, W), `num_matched` the divisor N. Then assign `l1_two`,
# the term for the two matched queries below in a 320 × 320 image, with N = 2.

# %%
two_pred = torch.tensor([[0.30, 0.40, 0.20, 0.25], [0.70, 0.60, 0.10, 0.30]])  # (2, 4)
two_gt = torch.tensor([[40.0, 90.0, 110.0, 170.0], [200.0, 150.0, 240.0, 250.0]])  # (2, 4)

# %% tags=["solution"]
l1_term = None  # function ((P, 4), (P, 4), (H, W), number) -> 0-d tensor
l1_two = None  # 0-d tensor (or number)
### BEGIN SOLUTION


def l1_term(pred_boxes, gt_boxes, image_size, num_matched):
    """5 x sum |pred - target| / N, the target in cxcywh divided by the image size."""
    height, width = image_size
    centre = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    size = gt_boxes[:, 2:] - gt_boxes[:, :2]
    target = torch.cat([centre, size], 1) / torch.tensor([width, height, width, height])
    return 5.0 * (pred_boxes - target).abs().sum() / num_matched


l1_two = l1_term(two_pred, two_gt, (320, 320), 2)
print(f"l1 term: {l1_two.item():.4f}")
### END SOLUTION


# %% tags=["check"]
def library_l1(pred_boxes, gt_boxes, image_size, num_matched):
    """The l1 term from detutils' box conversion, for comparison."""
    target = xyxy_to_cxcywh_norm(gt_boxes, image_size)
    return 5.0 * F.l1_loss(pred_boxes, target, reduction="sum") / num_matched


check_close(
    "l1_two", l1_two, library_l1(two_pred, two_gt, (320, 320), 2),
    hint="turn each gt box into (cx, cy, w, h) / (W, H, W, H), e.g. (40, 90, 110, 170) -> "
    "(75, 130, 70, 80) / 320; sum the absolute differences of all 8 numbers, times 5, / 2.",
)  # fmt: skip
check_function(
    "l1_term", l1_term,
    [(two_pred, two_gt, (320, 320), 2), (two_pred[:1], two_gt[:1], (320, 320), 1)],
    library_l1,
    hint="5 * sum(|pred - target|) / num_matched",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "l1_term", l1_term, [(two_pred, two_gt, (320, 640), 2), (two_pred, two_gt, (480, 240), 7)],
    library_l1,
    hint="image_size is (H, W): divide x and w by W, y and h by H",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 2")

# %% [markdown]
# **Exercise 3.** Write `num_loss_terms(num_decoder_layers, two_stage)`: how many terms
# `loss_terms` returns for a Deformable DETR with that many decoder layers, with or
# without two stages. Then assign `r50_terms`, the number for mmdet's
# `deformable-detr-refine-twostage_r50` (6 decoder layers, two stages), and `aux_terms`,
# the number of terms that `model.loss` sums into `aux` for the CPU preset of this
# notebook.

# %% tags=["solution"]
num_loss_terms = None  # function (int, bool) -> int
r50_terms = aux_terms = None  # integers
### BEGIN SOLUTION


def num_loss_terms(num_decoder_layers, two_stage):
    """Three terms (cls, l1, giou) per decoder layer, three more for the proposals."""
    return 3 * (num_decoder_layers + int(two_stage))


r50_terms = num_loss_terms(6, True)
aux_terms = num_loss_terms(3, True) - 3  # every term but the last layer's three
print(f"R50 refine two-stage: {r50_terms} terms; the CPU preset's aux sums {aux_terms}")
### END SOLUTION

# %% tags=["check"]
check_function(
    "num_loss_terms", num_loss_terms, [(3, True), (6, True), (6, False)],
    lambda layers, two_stage: 3 * layers + (3 if two_stage else 0),
    hint="cls, l1 and giou for each decoder layer, and once more (enc.) with two stages: "
    "3 (L + 1) or 3 L",
)  # fmt: skip
check_equal(
    "r50_terms", r50_terms, 21,
    hint="six decoder layers and the encoder's proposals: 3 x (6 + 1)",
)  # fmt: skip
check_equal(
    "aux_terms", aux_terms, len(terms) - 3,
    hint="aux is everything loss_terms returns except cls, l1 and giou of the last layer",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "num_loss_terms", num_loss_terms, [(1, False), (1, True), (12, True), (0, True)],
    lambda layers, two_stage: 3 * layers + (3 if two_stage else 0),
    hint="the count is linear in the number of decoder layers",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 3")

# %% [markdown]
# **Exercise 4.** Write `set_divisor(boxes_per_image, num_queries)`: the divisor N of the
# set loss on one process, from the list of the number of boxes of each image of the
# batch and the number of queries. Use it on a batch of three images with 3, 0 and 7
# boxes and Q = 100 (`divisor_batch`). Then, under DDP, one process has N = 12 and
# another N = 4: assign `ddp_set_divisor`, what each of them divides by.

# %% tags=["solution"]
set_divisor = None  # function (list of ints, int) -> number
divisor_batch = ddp_set_divisor = None  # numbers
### BEGIN SOLUTION


def set_divisor(boxes_per_image, num_queries):
    """The matched queries of the batch, min(Q, M) per image, at least 1 in all."""
    return float(max(sum(min(num_queries, count) for count in boxes_per_image), 1))


divisor_batch = set_divisor([3, 0, 7], 100)
ddp_set_divisor = (12 + 4) / 2  # the processes average their N
print(f"N = {divisor_batch:.0f}; under DDP both processes divide by {ddp_set_divisor:.0f}")
### END SOLUTION


# %% tags=["check"]
def reference_divisor(boxes_per_image, num_queries):
    """Count the matched queries with assign_hungarian on dummy predictions."""
    count = 0
    for boxes in boxes_per_image:
        corners = torch.arange(boxes, dtype=torch.float32)[:, None] * 2 + torch.tensor(
            [0.0, 0.0, 1.0, 1.0]
        )  # (M, 4) distinct xyxy boxes
        query_boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(num_queries, 4)  # (Q, 4)
        matched = assign_hungarian(
            torch.zeros(num_queries, 1), query_boxes, corners,
            torch.zeros(boxes, dtype=torch.long), (64, 64),
        )  # fmt: skip
        count += int((matched.gt_index >= 0).sum())
    return max(count, 1)


check_close(
    "divisor_batch", divisor_batch, reference_divisor([3, 0, 7], 100),
    hint="each box has its own query (M <= Q): 3 + 0 + 7; an empty image adds 0, not 1",
)  # fmt: skip
check_function(
    "set_divisor", set_divisor, [([3, 0, 7], 100), ([0, 0], 100), ([5, 2], 3)],
    reference_divisor,
    hint="min(Q, M) per image (an image with more boxes than queries matches Q of them), "
    "summed, then at least 1 for the whole batch",
)  # fmt: skip
check_close(
    "ddp_set_divisor", ddp_set_divisor, 8,
    hint="all_reduce_mean averages the processes' N: (12 + 4) / 2",
)  # fmt: skip
### BEGIN HIDDEN TESTS
check_function(
    "set_divisor", set_divisor, [([0], 8), ([12, 9, 1, 0], 8), ([30, 1], 8)],
    reference_divisor,
    hint="use the num_queries argument: min(num_queries, count) for each image",
)  # fmt: skip
### END HIDDEN TESTS
check_passed("Exercise 4")

# %% [markdown]
# ## Further reading
#
# - N. Carion, F. Massa, G. Synnaeve, N. Usunier, A. Kirillov, S. Zagoruyko, *End-to-End
#   Object Detection with Transformers* (DETR), ECCV 2020,
#   <https://arxiv.org/abs/2005.12872> (section 3.1: the set prediction loss, eq. 1 and
#   2, normalised by the number of objects; section 3.2: auxiliary decoding losses)
# - X. Zhu, W. Su, L. Lu, B. Li, X. Wang, J. Dai, *Deformable DETR: Deformable
#   Transformers for End-to-End Object Detection*, ICLR 2021,
#   <https://arxiv.org/abs/2010.04159> (section 4.2 and appendix A.4: box refinement and
#   two stages; section 5: focal loss of weight 2)
# - T.-Y. Lin, P. Goyal, R. Girshick, K. He, P. Dollár, *Focal Loss for Dense Object
#   Detection*, ICCV 2017, <https://arxiv.org/abs/1708.02002>
# - H. Rezatofighi et al., *Generalized Intersection over Union: A Metric and A Loss
#   for Bounding Box Regression*, CVPR 2019, <https://arxiv.org/abs/1902.09630>
# - mmdet `DETRHead.loss_by_feat_single` and `_get_targets_single`
#   (`mmdet/models/dense_heads/detr_head.py`), `DeformableDETRHead.loss_by_feat`
#   (`deformable_detr_head.py`), `DeformableDETR.gen_encoder_output_proposals`
#   (`mmdet/models/detectors/deformable_detr.py`), config
#   `configs/deformable_detr/deformable-detr_r50_16xb2-50e_coco.py`,
#   <https://github.com/open-mmlab/mmdetection>; the authors' code,
#   <https://github.com/fundamentalvision/Deformable-DETR>
