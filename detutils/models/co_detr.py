"""Co-DETR: a Deformable DETR trained with one-to-many auxiliary heads on its encoder.

::

    model = build_co_deformable_detr_r50(num_classes=80)
    outputs = model(images)        # the DETR's outputs + each auxiliary head's, by branch
    assignment = model.assign(outputs, targets)
                                   # one record per branch: one_to_one, atss, rcnn (the
                                   # RPN's and the RoI head's), and the positive queries
    losses = model.loss(outputs, targets, assignment)
    dets = model.predict(outputs)  # the DETR's own prediction: top 100, no NMS

A DETR matches each box to one query (one-to-one, Hungarian), so the encoder's features
receive few positive signals: one per box. Co-DETR (Zong et al., ICCV 2023) adds, for
training only, heads that assign one-to-many, as dense detectors do:

1. **The encoder's pyramid.** The encoder's output memory is split back into its levels
   (B, D, H_l, W_l), strides 8 to 64, and one more level is made by a stride-2 3x3 conv
   with GroupNorm (stride 128): five levels.
2. **Auxiliary heads on that pyramid**, each with its own assignment and loss: Faster
   R-CNN's RPN (anchors 4 x 2^(i/3) strides, three ratios, strides 8 to 128; max IoU
   0.7 / 0.3 and 256 sampled; BCE + L1) and RoI head (RoIAlign 7x7 from strides 8 to
   64, ``finest_scale`` 112; max IoU 0.5, 512 sampled with the ground truth added; CE +
   GIoU on decoded boxes, weight 10), and the ATSS head (one stacked conv; focal,
   GIoU 2, centerness BCE). Every auxiliary loss is multiplied by ``lambda_2`` times the
   number of decoder layers (2 x 6 = 12 in the reference).
3. **Customised positive queries.** For the RoI head and the ATSS head, the positives
   (sampled RoIs, anchors) and the boxes they were assigned become one extra group of
   decoder queries each: reference boxes = the positives' boxes; position and content
   from a sine embedding of those boxes through a per-head linear layer and LayerNorm,
   plus (content) the positive's own feature through another, and (position) a learned
   per-head number. Each group is padded per image to the batch's largest count (at
   least 9, at most 300): the reference pads with the head's negatives, which learn
   "no object"; ``zero_padding`` pads with masked-out queries instead. Each group runs
   through the decoder on its own (groups never see each other nor the one-to-one
   queries) and learns the assigned targets directly, with the DETR's loss terms on
   every decoder layer (no matching: the assignment is already made).

The DETR itself is Deformable DETR with box refinement, two stages, mixed query
selection (positions from the encoder's proposals, content learned) and look forward
twice. At test time only the one-to-one decoder runs: ``model.detr`` is the inference
network, a :class:`DeformableDETR` with the base's parameter count, and its outputs are
those of ``model`` (tested).

Parameters at 80 classes (``build_co_deformable_detr_r50``): 47,594,380 for the inference
network (Deformable DETR R50 with box refinement and two stages, 41,213,836, plus the
reference's feed-forward width 2048 in the encoder and decoder, 6,303,744, and mixed
selection's 300 x 256 query content), 65,129,894 in all: the auxiliary conv 590,592, the
RPN 601,645, the RoI head 14,306,705, the ATSS head 1,376,602, the positive queries'
embedding 659,970 (tests/test_co_detr.py checks them by part).

Reference: Sense-X/Co-DETR ``projects/configs/co_deformable_detr/
co_deformable_detr_r50_1x_coco.py``, ``projects/models/co_detr.py``,
``co_deformable_detr_head.py`` (``get_aux_targets``, ``forward_aux``,
``loss_single_aux``), ``transformer.py`` (``CoDeformableDetrTransformer.forward_aux``),
``co_atss_head.py``, ``co_roi_head.py``; Zong, Song and Liu, "DETRs with Collaborative
Hybrid Assignments Training", ICCV 2023.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
from torch import Tensor, nn

from detutils.assigners.result import BACKGROUND
from detutils.boxes import xyxy_to_cxcywh_norm
from detutils.losses.detr import set_loss_on_targets
from detutils.models.atss import ATSSAssignment, ATSSBranch, ATSSConfig, ATSSOutputs
from detutils.models.deformable_detr import (
    DeformableDETR,
    DeformableDETRAssignment,
    DeformableDETRConfig,
    DeformableDETROutputs,
    cpu_preset_config,
    inverse_sigmoid,
    proposal_position_embedding,
)
from detutils.models.faster_rcnn import (
    FasterRCNNAssignment,
    FasterRCNNConfig,
    FasterRCNNOutputs,
    RPNRoIBranch,
)

__all__ = [
    "CoDETR",
    "CoDETRAssignment",
    "CoDETRConfig",
    "CoDETROutputs",
    "PositiveQueries",
    "build_co_deformable_detr_r18half_d128",
    "build_co_deformable_detr_r50",
    "padding_attention_mask",
    "positive_query_group",
]

AUX_STRIDES = (8, 16, 32, 64, 128)  # the encoder's four levels and one stride-2 conv


def _reference_detr() -> DeformableDETRConfig:
    # co_deformable_detr_r50_1x_coco: FFN 2048, no dropout, 300 queries
    return DeformableDETRConfig(
        name="co-deformable-detr-r50",
        ffn_dims=2048,
        dropout=0.0,
        with_box_refine=True,
        as_two_stage=True,
        mixed_selection=True,
        look_forward_twice=True,
    )


def _reference_rcnn() -> FasterRCNNConfig:
    # the RPN and the RoI head of the reference config (weights before the x 12)
    return FasterRCNNConfig(
        name="co-detr-rcnn",
        strides=AUX_STRIDES,
        anchor_scales=tuple(4.0 * 2.0 ** (i / 3) for i in range(3)),
        train_nms_pre=4000,
        train_proposals=1000,
        roi_strides=AUX_STRIDES[:4],
        finest_scale=112.0,
        roi_bbox_loss="giou",
        roi_reg_decoded=True,
        roi_bbox_weight=10.0,
    )


def _reference_atss() -> ATSSConfig:
    return ATSSConfig(name="co-detr-atss", stacked_convs=1, strides=AUX_STRIDES)


@dataclass(frozen=True)
class CoDETRConfig:
    """Everything that defines a Co-DETR; the defaults are ``co_deformable_detr_r50_1x``.

    ``detr`` defines the network that remains at test time; ``rcnn`` and ``atss`` the
    auxiliary heads (only their head fields are read: strides, anchors, thresholds,
    samplers, losses; ``fpn_channels`` must equal ``detr.embed_dims``); ``None`` leaves
    a head out.
    """

    name: str = "co-deformable-detr-r50"  # command-line name
    detr: DeformableDETRConfig = field(default_factory=_reference_detr)
    rcnn: FasterRCNNConfig | None = field(default_factory=_reference_rcnn)
    atss: ATSSConfig | None = field(default_factory=_reference_atss)
    lambda_1: float = 1.0  # weight of the positive queries' losses
    lambda_2: float = 2.0  # auxiliary heads: their losses x lambda_2 x decoder layers
    max_positive_queries: int = 300  # per group and image (more are drawn at random)
    min_positive_queries: int = 9  # a group has at least this many queries per image
    zero_padding: bool = False  # pad groups with masked queries (reference: negatives)

    @property
    def num_classes(self) -> int:
        return self.detr.num_classes

    @property
    def pretrained(self) -> str | None:
        """The backbone weights a training run starts from (the DETR's)."""
        return self.detr.pretrained

    @property
    def img_size(self) -> int:
        return self.detr.img_size

    @property
    def aux_weight(self) -> float:
        """The factor of every auxiliary head's loss: lambda_2 x decoder layers."""
        return self.lambda_2 * self.detr.num_decoder_layers

    @property
    def query_groups(self) -> tuple[str, ...]:
        """The auxiliary heads whose positives become queries, in the reference's order."""
        return tuple(name for name in ("roi", "atss") if getattr(self, _BRANCH[name]))


_BRANCH = {"roi": "rcnn", "atss": "atss"}


class CoDETROutputs(NamedTuple):
    """What ``CoDETR.forward`` returns, by branch (the auxiliary ones ``None`` at test
    time unless asked for)."""

    one_to_one: DeformableDETROutputs  # the DETR's: the only outputs used at test time
    pyramid: list[Tensor] | None  # the encoder's five levels (B, D, H_l, W_l), strides 8..128
    atss: ATSSOutputs | None  # ATSS head: per level classes, deltas, centerness
    rpn: FasterRCNNOutputs | None  # RPN maps and proposals (its features: the pyramid)


class PositiveQueries(NamedTuple):
    """One auxiliary head's positives, as one group of decoder queries: fields (B, n).

    Rows are per image the positives (in the head's order, at most
    ``max_positive_queries`` of them drawn at random), then the padding. ``index``
    points into the head's priors of that image: ATSS anchors (A), or the RoIs the
    RoI head sampled, in the order of ``FasterRCNNAssignment.rois`` counted per image.
    """

    index: Tensor  # (B, n) long, the prior each query comes from (padding: any)
    boxes: Tensor  # (B, n, 4) xyxy px, the prior's box: the query's reference
    labels: Tensor  # (B, n) long, the class it learns, or BACKGROUND (-1)
    targets: Tensor  # (B, n, 4) xyxy px, the box it learns (zeros unless positive)
    positive: Tensor  # (B, n) bool
    valid: Tensor  # (B, n) bool, False for masked padding (``zero_padding``)


class CoDETRAssignment(NamedTuple):
    """What ``CoDETR.assign`` returns: one record per branch."""

    one_to_one: DeformableDETRAssignment  # Hungarian, every decoder layer and the encoder
    atss: ATSSAssignment | None  # ATSS on the pyramid's anchors
    rcnn: FasterRCNNAssignment | None  # the RPN's anchors, the RoI head's sampled proposals
    queries: dict[str, PositiveQueries]  # "roi", "atss": the positive query groups

    def by_branch(self) -> dict[str, object]:
        """The records by branch name: ``"one_to_one"`` (the DETR's assignment),
        ``"atss"`` (the (B, A) ATSS result), ``"rpn"`` (the (B, A) max-IoU result and
        the (B, A) sampled flags), ``"roi"`` (the sampled RoIs (N, 5), their labels and
        target boxes), and ``"<head>_queries"`` for each positive query group."""
        records: dict[str, object] = {"one_to_one": self.one_to_one}
        if self.atss is not None:
            records["atss"] = self.atss.assignment
        if self.rcnn is not None:
            records["rpn"] = (self.rcnn.rpn, self.rcnn.rpn_sampled)
            records["roi"] = (self.rcnn.rois, self.rcnn.roi_labels, self.rcnn.roi_targets)
        records.update({f"{name}_queries": group for name, group in self.queries.items()})
        return records


def positive_query_group(
    boxes: Tensor,
    labels: Tensor,
    targets: Tensor,
    max_queries: int = 300,
    min_queries: int = 9,
    zero_padding: bool = False,
    generator: torch.Generator | None = None,
) -> PositiveQueries:
    """An auxiliary head's assignment -> one group of positive queries.

    Args:
        boxes: (B, A, 4) xyxy px, the head's priors in each image.
        labels: (B, A) long, the class each prior learns, or ``BACKGROUND`` (or
            ``IGNORE``: neither positive nor padding).
        targets: (B, A, 4) xyxy px, the box each positive learns.
        max_queries, min_queries: the group's size n is the batch's largest count of
            positives, clamped to [min_queries, max_queries]; an image with more
            positives keeps ``max_queries`` drawn at random.
        zero_padding: pad with masked queries (``valid`` False) instead of the head's
            negatives drawn at random (the reference).
        generator: random stream (default: the global one, seeded by the trainer).

    Returns:
        a :class:`PositiveQueries`. An image short of negatives is padded with masked
        queries.

    Reference: Sense-X/Co-DETR ``CoDeformDETRHead.get_aux_targets``.
    """
    if boxes.shape[:2] != labels.shape or targets.shape != boxes.shape:
        raise ValueError("boxes (B, A, 4), labels (B, A) and targets (B, A, 4) must agree")
    if min_queries < 1 or max_queries < min_queries:
        raise ValueError(f"need 1 <= min_queries <= max_queries, got {min_queries}, {max_queries}")
    batch, device = labels.shape[0], labels.device
    positive_all = labels >= 0
    largest = int(positive_all.sum(1).max()) if batch else 0
    size = max(min_queries, min(max_queries, largest))
    index = torch.zeros(batch, size, dtype=torch.long, device=device)
    valid = torch.zeros(batch, size, dtype=torch.bool, device=device)
    positive = torch.zeros(batch, size, dtype=torch.bool, device=device)
    for image in range(batch):
        chosen = positive_all[image].nonzero().squeeze(1)
        if len(chosen) > size:
            keep = torch.randperm(len(chosen), generator=generator)[:size].to(device)
            chosen = chosen[keep]
        count = len(chosen)
        index[image, :count] = chosen
        valid[image, :count] = True
        positive[image, :count] = True
        if not zero_padding and count < size:
            negatives = (labels[image] == BACKGROUND).nonzero().squeeze(1)
            draw = torch.randperm(len(negatives), generator=generator)[: size - count]
            fill = negatives[draw.to(device)]
            index[image, count : count + len(fill)] = fill
            valid[image, count : count + len(fill)] = True
    rows = torch.arange(batch, device=device)[:, None]
    query_labels = torch.where(positive, labels[rows, index], BACKGROUND)
    query_targets = torch.where(positive[..., None], targets[rows, index], 0.0)
    return PositiveQueries(index, boxes[rows, index], query_labels, query_targets, positive, valid)


class PositiveQueryEmbedding(nn.Module):
    """Per auxiliary head: boxes and features -> decoder queries (content, position).

    A sine embedding of the box (inverse-sigmoid cxcywh, as the two-stage proposals)
    through a linear layer and LayerNorm gives position and content halves; the
    positive's own feature through another linear layer and LayerNorm is added to the
    content, and a learned number per head to the position.

    The reference's per-head number is ``nn.Embedding(num_heads, 1, 1, embed_dims)``,
    whose arguments read as (embeddings, dim, padding index, max norm): one number per
    head, kept so (its comment says) to reproduce the R50 results; the course keeps it.

    Reference: Sense-X/Co-DETR ``CoDeformableDetrTransformer._init_layers`` and
    ``forward_aux``.
    """

    def __init__(self, embed_dims: int, num_heads: int) -> None:
        super().__init__()
        self.embed_dims = embed_dims
        self.pos_trans = nn.ModuleList(nn.Linear(2 * embed_dims, 2 * embed_dims)
                                       for _ in range(num_heads))  # fmt: skip
        self.pos_trans_norm = nn.ModuleList(nn.LayerNorm(2 * embed_dims) for _ in range(num_heads))
        self.feat_trans = nn.ModuleList(nn.Linear(embed_dims, embed_dims) for _ in range(num_heads))
        self.feat_trans_norm = nn.ModuleList(nn.LayerNorm(embed_dims) for _ in range(num_heads))
        self.head_pos_embed = nn.Parameter(torch.empty(num_heads, 1))
        for parameter in self.parameters():  # the transformer's Xavier-uniform on matrices
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)

    def forward(
        self, head: int, boxes_cxcywh_norm: Tensor, features: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Head index, boxes (B, n, 4) cxcywh in [0, 1], features (B, n, D) ->
        (query, query_pos), each (B, n, D)."""
        dims = self.embed_dims
        embedded = proposal_position_embedding(inverse_sigmoid(boxes_cxcywh_norm), dims // 2)
        query_pos, query = self.pos_trans_norm[head](self.pos_trans[head](embedded)).split(dims, 2)
        query = query + self.feat_trans_norm[head](self.feat_trans[head](features))
        return query, query_pos + self.head_pos_embed[head]


class CoDETR(nn.Module):
    """Co-DETR: a Deformable DETR (``self.detr``, the inference network) with auxiliary
    one-to-many heads on its encoder and positive queries (see the module docstring).

    Args:
        config: a :class:`CoDETRConfig`.
    """

    def __init__(self, config: CoDETRConfig) -> None:
        super().__init__()
        detr_config = config.detr
        if not (detr_config.with_box_refine and detr_config.as_two_stage):
            raise ValueError("Co-DETR's DETR has box refinement and two stages")
        if detr_config.num_levels != 4:
            raise ValueError(f"the encoder's pyramid needs 4 levels, got {detr_config.num_levels}")
        dims = detr_config.embed_dims
        for part in ("rcnn", "atss"):
            head = getattr(config, part)
            if head is None:
                continue
            if tuple(head.strides) != AUX_STRIDES or head.fpn_channels != dims:
                raise ValueError(
                    f"config.{part} must read strides {AUX_STRIDES} and {dims} channels "
                    f"(detr.embed_dims), got {tuple(head.strides)} and {head.fpn_channels}"
                )
            if head.num_classes != detr_config.num_classes:
                raise ValueError(f"config.{part}.num_classes differs from config.detr's")
        self.config, self.name, self.num_classes = config, config.name, detr_config.num_classes
        self.detr = DeformableDETR(detr_config)
        self.aux = nn.ModuleDict()
        self.aux["downsample"] = nn.Sequential(
            nn.Conv2d(dims, dims, 3, stride=2, padding=1),
            nn.GroupNorm(detr_config.norm_groups, dims),
        )
        if config.rcnn is not None:
            self.aux["rcnn"] = RPNRoIBranch(config.rcnn)
        if config.atss is not None:
            self.aux["atss"] = ATSSBranch(config.atss)
        if config.query_groups:
            self.aux["queries"] = PositiveQueryEmbedding(dims, len(config.query_groups))

    def load_backbone(self, state_dict: dict, source: str = "state dict") -> None:
        """Load backbone weights (a torchvision ResNet state dict) into the DETR's."""
        self.detr.load_backbone(state_dict, source)

    # ------------------------------------------------------------------ forward
    def encoder_pyramid(self, memory: Tensor, spatial_shapes: Tensor) -> list[Tensor]:
        """The encoder's memory (B, S, D) split back into its levels (B, D, H_l, W_l),
        plus a stride-2 conv + GroupNorm of the last: five maps, strides 8 to 128."""
        counts = spatial_shapes.prod(1).tolist()
        levels = [
            tokens.transpose(1, 2).reshape(memory.shape[0], memory.shape[2], height, width)
            for tokens, (height, width) in zip(
                memory.split(counts, dim=1), spatial_shapes.tolist(), strict=True
            )
        ]
        return levels + [self.aux["downsample"](levels[-1])]

    def forward(self, images: Tensor, aux: bool | None = None) -> CoDETROutputs:
        """The DETR's outputs and, in training mode (or with ``aux=True``), the encoder's
        pyramid with the ATSS head's and the RPN's outputs.

        Args:
            images: (B, 3, H, W) RGB in [0, 1], H and W multiples of 64.
            aux: run the auxiliary heads (default: ``self.training``).
        """
        one_to_one = self.detr(images)
        if not (self.training if aux is None else aux):
            return CoDETROutputs(one_to_one, None, None, None)
        pyramid = self.encoder_pyramid(one_to_one.memory, one_to_one.spatial_shapes)
        atss = self.aux["atss"](pyramid) if "atss" in self.aux else None
        rpn = self.aux["rcnn"](pyramid, tuple(images.shape[-2:])) if "rcnn" in self.aux else None
        return CoDETROutputs(one_to_one, pyramid, atss, rpn)

    # --------------------------------------------------------------- assignment
    def _check_aux(self, outputs: CoDETROutputs) -> None:
        if outputs.pyramid is None:
            raise ValueError(
                "outputs hold no auxiliary branch: call the model in training mode or with "
                "aux=True to assign or compute the loss"
            )

    @torch.no_grad()
    def assign(self, outputs: CoDETROutputs, targets: list[dict[str, Tensor]]) -> CoDETRAssignment:
        """Every branch's assignment: Hungarian for the DETR (one-to-one), ATSS for the
        ATSS head, max IoU and sampling for the RPN and the RoI head (one-to-many), and
        from the last two the positive query groups (random draws use the global
        stream, seeded by the trainer)."""
        self._check_aux(outputs)
        config = self.config
        one_to_one = self.detr.assign(outputs.one_to_one, targets)
        atss = rcnn = None
        queries: dict[str, PositiveQueries] = {}
        group = {
            "max_queries": config.max_positive_queries,
            "min_queries": config.min_positive_queries,
            "zero_padding": config.zero_padding,
        }
        if "rcnn" in self.aux:
            rcnn = self.aux["rcnn"].assign(outputs.rpn, targets)
            boxes, labels, roi_targets = _rois_per_image(rcnn, len(targets))
            queries["roi"] = positive_query_group(boxes, labels, roi_targets, **group)
        if "atss" in self.aux:
            atss = self.aux["atss"].assign(outputs.atss, targets)
            result, gt_boxes = atss
            branch = self.aux["atss"]
            sizes = branch._check_outputs(outputs.atss)
            anchors, _ = branch.anchors(sizes, gt_boxes.device)
            batch = result.labels.shape[0]
            if gt_boxes.shape[1]:
                rows = torch.arange(batch, device=gt_boxes.device)[:, None]
                anchor_targets = gt_boxes[rows, result.gt_index.clamp(min=0)]
            else:  # no box in the batch: no positive
                anchor_targets = gt_boxes.new_zeros(batch, len(anchors), 4)
            queries["atss"] = positive_query_group(
                anchors.expand(batch, -1, -1), result.labels, anchor_targets, **group
            )
        return CoDETRAssignment(one_to_one, atss, rcnn, queries)

    # --------------------------------------------------------------------- loss
    def decode_queries(
        self, outputs: CoDETROutputs, name: str, group: PositiveQueries, features: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One positive query group through the DETR's decoder and heads.

        Args:
            outputs: the forward's outputs (the memory is read).
            name: ``"roi"`` or ``"atss"``.
            group: its :class:`PositiveQueries`.
            features: (B, n, D) each query's own feature.

        Returns:
            class logits (L, B, n, C) and boxes (L, B, n, 4) cxcywh in [0, 1].
        """
        detr = outputs.one_to_one
        image_size = self.detr.image_size(detr)
        reference = xyxy_to_cxcywh_norm(group.boxes.float(), image_size)
        head = self.config.query_groups.index(name)
        query, query_pos = self.aux["queries"](head, reference, features)
        attn_mask = None
        if not bool(group.valid.all()):
            attn_mask = padding_attention_mask(group.valid, self.detr.config.num_heads)
        cls_logits, boxes, _ = self.detr.decode(
            query, query_pos, reference, detr.memory, detr.spatial_shapes, attn_mask
        )
        return cls_logits, boxes

    def loss_terms(
        self,
        outputs: CoDETROutputs,
        targets: list[dict[str, Tensor]],
        assignment: CoDETRAssignment | None = None,
    ) -> dict[str, Tensor]:
        """Every term, weights applied: the DETR's (``cls``, ``d0.cls``, ``enc.cls``, ...,
        as :meth:`DeformableDETR.loss_terms`), ``atss.cls`` / ``atss.bbox`` /
        ``atss.centerness``, ``rpn.cls`` / ``rpn.bbox``, ``roi.cls`` / ``roi.bbox``
        (x ``aux_weight``), and per query group ``roi_queries.cls``, ...,
        ``roi_queries.d0.cls`` (every decoder layer, x ``lambda_1``)."""
        self._check_aux(outputs)
        if assignment is None:
            assignment = self.assign(outputs, targets)
        config = self.config
        terms = self.detr.loss_terms(outputs.one_to_one, targets, assignment.one_to_one)
        weight = config.aux_weight
        features: dict[str, Tensor] = {}
        if "rcnn" in self.aux:
            branch: RPNRoIBranch = self.aux["rcnn"]
            rpn = branch.rpn_losses(outputs.rpn, assignment.rcnn)
            pooled = branch.roi_head.extractor(
                outputs.pyramid[: len(branch.config.roi_strides)], assignment.rcnn.rois
            )
            cls_logits, deltas = branch.roi_head.box_head(pooled)
            roi = branch.roi_losses(cls_logits, deltas, assignment.rcnn)
            terms.update({
                "rpn.cls": rpn["rpn_cls"] * weight, "rpn.bbox": rpn["rpn_bbox"] * weight,
                "roi.cls": roi["roi_cls"] * weight, "roi.bbox": roi["roi_bbox"] * weight,
            })  # fmt: skip
            group = assignment.queries["roi"]
            offsets = _image_offsets(assignment.rcnn.rois, len(targets))
            features["roi"] = pooled.mean((2, 3))[group.index + offsets[:, None]]
        if "atss" in self.aux:
            atss = self.aux["atss"].loss(outputs.atss, targets, assignment.atss)
            for name in ("cls", "bbox", "centerness"):
                terms[f"atss.{name}"] = atss[name] * weight
            group = assignment.queries["atss"]
            tokens = torch.cat([level.flatten(2) for level in outputs.pyramid], 2)  # (B, D, A/K)
            locations = group.index // self.config.atss.num_anchors
            rows = torch.arange(len(targets), device=tokens.device)[:, None]
            features["atss"] = tokens.transpose(1, 2)[rows, locations]
        image_size = self.detr.image_size(outputs.one_to_one)
        detr_config = self.detr.config
        for name in config.query_groups:
            group = assignment.queries[name]
            cls_logits, boxes = self.decode_queries(outputs, name, group, features[name])
            class_targets = torch.zeros_like(cls_logits[0], dtype=torch.float32)
            rows, cols = group.positive.nonzero(as_tuple=True)
            class_targets[rows, cols, group.labels[rows, cols]] = 1.0
            box_targets = xyxy_to_cxcywh_norm(group.targets.float(), image_size)
            last = len(cls_logits) - 1
            for layer in range(len(cls_logits)):
                layer_terms = set_loss_on_targets(
                    cls_logits[layer], boxes[layer], class_targets, box_targets, group.positive,
                    image_size, cls_weight=detr_config.cls_weight * config.lambda_1,
                    l1_weight=detr_config.l1_weight * config.lambda_1,
                    giou_weight=detr_config.giou_weight * config.lambda_1,
                    alpha=detr_config.focal_alpha, gamma=detr_config.focal_gamma,
                    query_weights=group.valid,
                )  # fmt: skip
                prefix = f"{name}_queries." + ("" if layer == last else f"d{layer}.")
                terms.update({prefix + key: value for key, value in layer_terms.items()})
        return terms

    def loss(
        self,
        outputs: CoDETROutputs,
        targets: list[dict[str, Tensor]],
        assignment: CoDETRAssignment | None = None,
    ) -> dict[str, Tensor]:
        """The loss of every branch.

        Returns:
            ``{"cls", "l1", "giou"}`` of the DETR's last decoder layer, ``"aux"`` its
            other terms (earlier layers, encoder proposals), ``"atss"``, ``"rpn"``,
            ``"roi"`` the auxiliary heads' (weighted), ``"queries"`` the positive query
            groups', and ``"loss"`` the total; :meth:`loss_terms` gives every term.
        """
        terms = self.loss_terms(outputs, targets, assignment)
        final = ("cls", "l1", "giou")
        losses = {name: terms[name] for name in final}
        parts: dict[str, list[Tensor]] = {key: [] for key in ("aux", "atss", "rpn", "roi")}
        parts["queries"] = []
        for name, value in terms.items():
            if name in final:
                continue
            branch = name.split(".")[0]
            key = "queries" if branch.endswith("_queries") else branch
            parts[key if key in parts else "aux"].append(value)
        for key, values in parts.items():
            if values:
                losses[key] = torch.stack(values).sum()
        losses["loss"] = sum(terms.values())
        return losses

    # --------------------------------------------------------------- prediction
    @torch.no_grad()
    def predict(
        self,
        outputs: CoDETROutputs,
        score_thr: float = 0.0,
        iou_thr: float | None = None,
        max_det: int = 100,
    ) -> list[dict[str, Tensor]]:
        """The DETR's prediction (:meth:`DeformableDETR.predict`): the auxiliary heads
        take no part at test time."""
        return self.detr.predict(outputs.one_to_one, score_thr, iou_thr, max_det)


def padding_attention_mask(valid: Tensor, num_heads: int) -> Tensor:
    """(B, n) bool, the real queries -> (B heads, n, n) bool self-attention mask, True
    where a query may not look: nobody looks at padding, and padding looks at no real
    query (the reference's ``use_zero_padding`` mask), but every query at itself (a row
    with no key at all would give NaN)."""
    size = valid.shape[1]
    mask = ~(valid[:, :, None] & valid[:, None, :])  # [B, n, n]: query i or key j padding
    diagonal = torch.arange(size, device=valid.device)
    mask[:, diagonal, diagonal] = False  # every query may look at itself
    return mask.repeat_interleave(num_heads, dim=0)


def _image_offsets(rois: Tensor, batch: int) -> Tensor:
    """(B,) long: the row of each image's first RoI in ``rois`` (N, 5)."""
    counts = torch.bincount(rois[:, 0].long(), minlength=batch)
    return torch.cumsum(counts, 0) - counts


def _rois_per_image(rcnn: FasterRCNNAssignment, batch: int) -> tuple[Tensor, Tensor, Tensor]:
    """The sampled RoIs as (B, R, 4) boxes, (B, R) labels and (B, R, 4) targets, R the
    smallest count over the images (the reference keeps each image's first R)."""
    image = rcnn.rois[:, 0].long()
    counts = torch.bincount(image, minlength=batch)
    size = int(counts.min()) if batch else 0
    offsets = torch.cumsum(counts, 0) - counts
    rows = offsets[:, None] + torch.arange(size, device=image.device)[None]  # [B, R]
    return rcnn.rois[rows, 1:], rcnn.roi_labels[rows], rcnn.roi_targets[rows]


def build_co_deformable_detr_r50(num_classes: int = 80) -> CoDETR:
    """The reference's Co-DETR R50 (``co_deformable_detr_r50_1x_coco``)."""
    defaults = CoDETRConfig()
    return CoDETR(
        replace(
            defaults,
            detr=replace(defaults.detr, num_classes=num_classes),
            rcnn=replace(defaults.rcnn, num_classes=num_classes),
            atss=replace(defaults.atss, num_classes=num_classes),
        )
    )


def build_co_deformable_detr_r18half_d128(num_classes: int = 80) -> CoDETR:
    """The CPU preset: the Deformable DETR CPU preset (``deformable-detr-r18half-d128``:
    half-width ResNet-18 from the course's pre-trained backbone, width 128, 3 + 3 layers,
    100 queries) with mixed query selection and look forward twice; auxiliary heads at
    128 channels: an RPN sampling 256 anchors, 1000 proposals per level before NMS and
    500 kept, a RoI head of two 256-wide layers sampling 128 RoIs, the ATSS head with
    one stacked conv; the positive query groups at most 100 per image. Auxiliary weight
    lambda_2 x 3 layers = 6."""
    detr = cpu_preset_config(
        num_classes,
        name="co-deformable-detr-r18half-d128",
        mixed_selection=True,
        look_forward_twice=True,
    )
    dims = detr.embed_dims
    rcnn = replace(
        _reference_rcnn(), num_classes=num_classes, fpn_channels=dims, rpn_channels=dims,
        fc_channels=256, train_nms_pre=1000, train_proposals=500, roi_num=128,
    )  # fmt: skip
    atss = replace(_reference_atss(), num_classes=num_classes, fpn_channels=dims,
                   head_channels=dims)  # fmt: skip
    return CoDETR(
        CoDETRConfig(
            name="co-deformable-detr-r18half-d128",
            detr=detr,
            rcnn=rcnn,
            atss=atss,
            max_positive_queries=100,
        )
    )
