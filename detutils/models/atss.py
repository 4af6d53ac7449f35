"""ATSS: ResNet + FPN (P3 to P7), a RetinaNet-style head with a centerness branch, one
anchor per location chosen by ATSS, focal + GIoU + centerness losses.

::

    model = build_atss_r50(num_classes=80)
    outputs = model(images)       # ([(B, K C, H, W)], [(B, K 4, H, W)], [(B, K, H, W)])
    assignment = model.assign(outputs, targets)        # ATSS on the anchors
    losses = model.loss(outputs, targets, assignment)  # {"cls", "bbox", "centerness", "loss"}
    dets = model.predict(outputs)  # [{"boxes", "scores", "labels"} per image]

Five levels, strides 8 to 128; at each location K = 1 anchor, a square of side
``octave_base_scale`` x stride (8 s: 64 px on P3, 1024 px on P7). The head runs, on
every level with shared weights, two towers of ``stacked_convs`` 3x3 convs with
GroupNorm(32) and ReLU; the class tower ends in a 3x3 conv to K C logits, the box tower
in a 3x3 conv to K 4 deltas (multiplied by a learnable scale of the level) and a 3x3
conv to K centerness logits.

The deltas are delta-xywh with stds 0.1, 0.1, 0.2, 0.2 (``detutils.coders``); the
centerness says how near the anchor's centre is to its box's centre; at test time the
class score is multiplied by it, so boxes predicted from the edge of an object rank
below those from its centre.

Input: images (B, 3, H, W) RGB in [0, 1], H and W multiples of 32 (levels P6 and P7
round up: a 320 px image has 40, 20, 10, 5 and 3 locations a side). The model
normalises with the ImageNet mean and standard deviation (mmdet's 123.675, 116.28,
103.53 / 58.395, 57.12, 57.375 on 0-255 RGB, divided by 255).

Parameters at 80 classes: ``build_atss_r50`` 32,295,322 (ResNet-50 23,508,032, FPN
3,868,672, head 4,918,618), mmdet's ``atss_r50_fpn_1x_coco``. The class conv's bias
starts at -4.595, a probability of 0.01 for every class (RetinaNet's prior); every other
head conv is normal(0, 0.01) with zero bias.

``build_atss_r18half_fpn64`` is the course's CPU preset: ResNet-18 at half width (32 to 256
channels), FPN and head at 64 channels with two stacked convs, loading the backbone the
course pre-trains on the shapes set (notebook 04) where the references load ImageNet
weights.

Reference: mmdet ``configs/atss/atss_r50_fpn_1x_coco.py``, ``ATSSHead``
(``mmdet/models/dense_heads/atss_head.py``); Zhang et al., "Bridging the Gap Between
Anchor-based and Anchor-free Detection via Adaptive Training Sample Selection", CVPR 2020.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from detutils.assigners import AssignResult, assign_atss_batched, pad_ground_truth
from detutils.coders import decode_delta_xywh
from detutils.losses.atss import atss_loss
from detutils.models.backbones import CPU_PRESET_BACKBONE, ResNetBackbone
from detutils.models.inputs import check_images
from detutils.models.necks import FPN
from detutils.postprocess import select_dense_detections
from detutils.priors import anchor_boxes

__all__ = [
    "ATSS",
    "ATSSAssignment",
    "ATSSBranch",
    "ATSSConfig",
    "ATSSHead",
    "Scale",
    "build_atss_r18half_fpn64",
    "build_atss_r50",
]

ATSSOutputs = tuple[list[Tensor], list[Tensor], list[Tensor]]  # classes, deltas, centerness


class ATSSAssignment(NamedTuple):
    """What ``ATSS.assign`` returns: the ATSS result and the boxes it indexes."""

    assignment: AssignResult  # (B, A) fields: gt_index, labels, iou
    gt_boxes: Tensor  # (B, M, 4) xyxy px, the padded ground truth


@dataclass(frozen=True)
class ATSSConfig:
    """Everything that defines an ATSS detector; the defaults are mmdet's R50-FPN."""

    name: str = "atss-r50"  # command-line name
    num_classes: int = 80  # C
    img_size: int = 640  # side of the square network input for the schedules, px
    depth: int = 50  # ResNet depth
    backbone_width: int = 64  # channels of the ResNet's first stage (64: torchvision's)
    frozen_stages: int = 1  # stem and stage 2 frozen (mmdet: 1)
    norm_eval: bool = True  # backbone batch norms keep their running statistics
    pretrained: str | None = "torchvision:ResNet50_Weights.IMAGENET1K_V1"  # see ``ATSS``
    fpn_channels: int = 256  # FPN output channels, the head's input
    head_channels: int = 256  # channels of the stacked convs (feat_channels)
    stacked_convs: int = 4  # 3x3 conv + GroupNorm + ReLU per tower
    norm_groups: int = 32  # GroupNorm groups of the towers
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)  # P3 .. P7
    octave_base_scale: float = 8.0  # anchor side in strides
    scales_per_octave: int = 1  # anchor sizes per location
    ratios: tuple[float, ...] = (1.0,)  # anchor height / width
    topk: int = 9  # ATSS candidates per level and box
    stds: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)  # delta coder
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    cls_weight: float = 1.0  # weight of the focal loss
    bbox_weight: float = 2.0  # weight of the GIoU loss
    centerness_weight: float = 1.0  # weight of the centerness BCE
    prior_prob: float = 0.01  # initial class probability of every anchor
    nms_pre: int = 1000  # best (anchor, class) pairs kept per level before NMS
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB, images in [0, 1]
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # RGB

    @property
    def num_anchors(self) -> int:
        """K: anchors per location."""
        return len(self.ratios) * self.scales_per_octave


class Scale(nn.Module):
    """A learnable scalar that multiplies its input (one per level of the box branch)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class ATSSHead(nn.Module):
    """The ATSS head over any feature pyramid: shared towers, three outputs per level.

    Args:
        num_classes: C.
        in_channels: channels of every input map.
        feat_channels: channels of the stacked convs.
        stacked_convs: 3x3 conv + GroupNorm + ReLU layers per tower (4 in ATSS; Co-DETR's
            auxiliary head uses 1).
        num_levels: maps of the pyramid (one learnable scale each).
        num_anchors: K, anchors per location.
        norm_groups: GroupNorm groups (at most ``feat_channels``).
        prior_prob: initial class probability (the class conv's bias).

    Reference: mmdet ``ATSSHead._init_layers``, ``forward_single``.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        feat_channels: int = 256,
        stacked_convs: int = 4,
        num_levels: int = 5,
        num_anchors: int = 1,
        norm_groups: int = 32,
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        if min(num_classes, in_channels, feat_channels, num_levels, num_anchors) < 1:
            raise ValueError("classes, channels, levels and anchors must all be at least 1")
        if stacked_convs < 0 or not 0 < prior_prob < 1:
            raise ValueError("stacked_convs must be >= 0 and prior_prob in (0, 1)")
        self.num_classes, self.num_anchors = num_classes, num_anchors
        groups = min(norm_groups, feat_channels)
        if feat_channels % groups:
            raise ValueError(f"feat_channels {feat_channels} must divide into {groups} groups")

        def tower() -> nn.Sequential:
            layers: list[nn.Module] = []
            for index in range(stacked_convs):
                channels = in_channels if index == 0 else feat_channels
                layers += [
                    nn.Conv2d(channels, feat_channels, 3, padding=1, bias=False),
                    nn.GroupNorm(groups, feat_channels),
                    nn.ReLU(inplace=True),
                ]
            return nn.Sequential(*layers)

        out_channels = feat_channels if stacked_convs else in_channels
        self.cls_convs, self.reg_convs = tower(), tower()
        self.atss_cls = nn.Conv2d(out_channels, num_anchors * num_classes, 3, padding=1)
        self.atss_reg = nn.Conv2d(out_channels, num_anchors * 4, 3, padding=1)
        self.atss_centerness = nn.Conv2d(out_channels, num_anchors, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        for module in self.modules():  # mmdet: Normal(std=0.01) on every Conv2d
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.constant_(self.atss_cls.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: list[Tensor]) -> ATSSOutputs:
        """L maps (B, in_channels, H_l, W_l) -> per level class logits (B, K C, H_l, W_l),
        deltas (B, K 4, H_l, W_l) and centerness logits (B, K, H_l, W_l)."""
        if len(features) != len(self.scales):
            raise ValueError(f"the head has {len(self.scales)} levels, got {len(features)} maps")
        class_maps, delta_maps, centerness_maps = [], [], []
        for x, scale in zip(features, self.scales, strict=True):
            cls_feat, reg_feat = self.cls_convs(x), self.reg_convs(x)
            class_maps.append(self.atss_cls(cls_feat))
            delta_maps.append(scale(self.atss_reg(reg_feat)).float())
            centerness_maps.append(self.atss_centerness(reg_feat))
        return class_maps, delta_maps, centerness_maps


class ATSSBranch(nn.Module):
    """The ATSS head over any feature pyramid with its anchors, assigner, loss and
    post-processing.

    :class:`ATSS` is this branch on a ResNet + FPN; Co-DETR attaches it (one stacked
    conv) to its encoder's levels as an auxiliary branch. Only the head fields of
    ``config`` are read; ``fpn_channels`` is the channels of the maps it receives.

    Args:
        config: an :class:`ATSSConfig`.
    """

    def __init__(self, config: ATSSConfig) -> None:
        super().__init__()
        self._init_branch(config)

    def _init_branch(self, config: ATSSConfig) -> None:
        if any(b != 2 * a for a, b in zip(config.strides[:-1], config.strides[1:], strict=True)):
            raise ValueError(f"strides must double from level to level, got {config.strides}")
        self.config, self.name, self.num_classes = config, config.name, config.num_classes
        self.head = ATSSHead(
            config.num_classes,
            config.fpn_channels,
            config.head_channels,
            config.stacked_convs,
            len(config.strides),
            config.num_anchors,
            config.norm_groups,
            config.prior_prob,
        )

    def forward(self, features: list[Tensor]) -> ATSSOutputs:
        """The head on a pyramid (one map per stride of ``config.strides``)."""
        return self.head(features)

    # ------------------------------------------- anchors, flattening, assignment
    def _check_outputs(self, outputs: ATSSOutputs) -> list[tuple[int, int]]:
        if len(outputs) != 3 or any(len(maps) != len(self.config.strides) for maps in outputs):
            raise ValueError(
                f"outputs must be three lists (classes, deltas, centerness) of "
                f"{len(self.config.strides)} maps"
            )
        return [tuple(class_map.shape[-2:]) for class_map in outputs[0]]

    def anchors(
        self, feature_sizes: list[tuple[int, int]], device: torch.device | str | None = None
    ) -> tuple[Tensor, list[int]]:
        """Anchors of every level -> (anchors (A, 4) xyxy px, num_per_level)."""
        config = self.config
        anchors = anchor_boxes(
            feature_sizes,
            config.strides,
            ratios=config.ratios,
            octave_base_scale=config.octave_base_scale,
            scales_per_octave=config.scales_per_octave,
            device=device,
        )
        return anchors, self.num_per_level(feature_sizes)

    def num_per_level(self, feature_sizes: list[tuple[int, int]]) -> list[int]:
        """Anchors of each level: H W K."""
        return [height * width * self.config.num_anchors for height, width in feature_sizes]

    def flatten(self, outputs: ATSSOutputs) -> tuple[Tensor, Tensor, Tensor]:
        """Per-level maps -> class logits (B, A, C), deltas (B, A, 4), centerness (B, A):
        anchors level by level, row-major, the K anchors of a location adjacent."""
        class_maps, delta_maps, centerness_maps = outputs
        batch_size, num_classes = class_maps[0].shape[0], self.num_classes

        def flat(maps: list[Tensor], channels: int) -> Tensor:
            # (B, K c, H, W) -> (B, H, W, K c) -> (B, H W K, c): mmdet's permute + reshape
            return torch.cat(
                [x.permute(0, 2, 3, 1).reshape(batch_size, -1, channels) for x in maps], dim=1
            )

        return (
            flat(class_maps, num_classes),
            flat(delta_maps, 4),
            flat(centerness_maps, 1).squeeze(-1),
        )

    @torch.no_grad()
    def assign(self, outputs: ATSSOutputs, targets: list[dict[str, Tensor]]) -> ATSSAssignment:
        """ATSS on the anchors: which anchor learns which box.

        Args:
            outputs: what :meth:`forward` returned (only the map sizes are read).
            targets: B dicts ``{"boxes": (M_i, 4) xyxy px, "labels": (M_i,)}``.

        Returns:
            ``(assignment, gt_boxes)``: the (B, A) :class:`AssignResult` and the padded
            ground truth (B, M, 4) its ``gt_index`` points into.
        """
        feature_sizes = self._check_outputs(outputs)
        batch_size, device = outputs[0][0].shape[0], outputs[0][0].device
        if len(targets) != batch_size:
            raise ValueError(f"got {len(targets)} targets for a batch of {batch_size} images")
        anchors, num_per_level = self.anchors(feature_sizes, device)
        gt_boxes, gt_labels, gt_mask = pad_ground_truth(targets, device)
        assignment = assign_atss_batched(
            anchors, num_per_level, gt_boxes, gt_labels, gt_mask, topk=self.config.topk
        )
        return ATSSAssignment(assignment, gt_boxes)

    # ------------------------------------------------------------ the three calls
    def loss(
        self,
        outputs: ATSSOutputs,
        targets: list[dict[str, Tensor]],
        assignment: ATSSAssignment | None = None,
    ) -> dict[str, Tensor]:
        """The ATSS loss of a batch: ``{"cls", "bbox", "centerness", "loss"}`` scalars,
        weights applied (see :func:`detutils.losses.atss_loss`).

        Args:
            outputs: what :meth:`forward` returned.
            targets: B dicts ``{"boxes": (M_i, 4) xyxy px, "labels": (M_i,)}``.
            assignment: what :meth:`assign` returned; ``None`` assigns here.
        """
        if assignment is None:
            assignment = self.assign(outputs, targets)
        result, gt_boxes = assignment
        anchors, _ = self.anchors(self._check_outputs(outputs), gt_boxes.device)
        cls_logits, deltas, centerness = self.flatten(outputs)
        config = self.config
        return atss_loss(
            cls_logits,
            deltas,
            centerness,
            anchors,
            result,
            gt_boxes,
            stds=config.stds,
            alpha=config.focal_alpha,
            gamma=config.focal_gamma,
            cls_weight=config.cls_weight,
            bbox_weight=config.bbox_weight,
            centerness_weight=config.centerness_weight,
        )

    @torch.no_grad()
    def decode(self, outputs: ATSSOutputs) -> tuple[Tensor, Tensor, Tensor]:
        """Outputs -> boxes (B, A, 4) xyxy px (clipped to the image), class probabilities
        (B, A, C) and centerness probabilities (B, A)."""
        feature_sizes = self._check_outputs(outputs)
        cls_logits, deltas, centerness = self.flatten(outputs)
        anchors, _ = self.anchors(feature_sizes, cls_logits.device)
        height, width = feature_sizes[0]
        image_size = (height * self.config.strides[0], width * self.config.strides[0])
        boxes = decode_delta_xywh(
            anchors.expand(deltas.shape[0], -1, -1),
            deltas.float(),
            stds=self.config.stds,
            max_shape=image_size,
        )
        return boxes, cls_logits.float().sigmoid(), centerness.float().sigmoid()

    @torch.no_grad()
    def predict(
        self,
        outputs: ATSSOutputs,
        score_thr: float = 0.05,
        iou_thr: float = 0.6,
        max_det: int = 100,
    ) -> list[dict[str, Tensor]]:
        """Detections per image, as mmdet's ``ATSSHead.predict_by_feat``.

        Per level, the ``nms_pre`` (1000) best (anchor, class) pairs whose class
        probability exceeds ``score_thr``; their scores times the anchor's centerness;
        class-aware NMS at ``iou_thr``; the ``max_det`` best. The original ATSS code
        (maskrcnn-benchmark) differs: it thresholds the class score too, but multiplies
        by the centerness before its per-level top 1000, and reports the square root of
        the product as the score (``tests/test_atss_model.py`` compares with mmdet's values).

        Returns:
            B dicts ``{"boxes": (N, 4) xyxy input px, "scores": (N,), "labels": (N,)}``.
        """
        boxes, scores, centerness = self.decode(outputs)
        num_per_level = self.num_per_level(self._check_outputs(outputs))
        return [
            select_dense_detections(
                image_boxes,
                image_scores,
                num_per_level,
                score_factors=image_centerness,
                score_thr=score_thr,
                nms_pre=self.config.nms_pre,
                iou_thr=iou_thr,
                max_det=max_det,
            )
            for image_boxes, image_scores, image_centerness in zip(
                boxes, scores, centerness, strict=True
            )
        ]


class ATSS(ATSSBranch):
    """ATSS: backbone, FPN and head, with its assigner, loss and post-processing.

    ``config.pretrained`` names the backbone weights a training run starts from, as
    mmdet's ``init_cfg=dict(type="Pretrained", ...)``: building the model loads nothing
    (the network starts from its initialisation); the trainer calls
    :meth:`load_backbone` with the file (``detutils.engine.pretrain``).

    Args:
        config: an :class:`ATSSConfig`.
    """

    def __init__(self, config: ATSSConfig) -> None:
        nn.Module.__init__(self)
        if config.img_size % 32:
            raise ValueError(f"img_size {config.img_size} must be a multiple of 32")
        if tuple(config.strides[:3]) != (8, 16, 32) or any(
            b != 2 * a for a, b in zip(config.strides[:-1], config.strides[1:], strict=True)
        ):
            raise ValueError(f"strides must be 8, 16, 32, then doubling, got {config.strides}")
        self.backbone = ResNetBackbone(
            config.depth,
            out_stages=(3, 4, 5),
            width=config.backbone_width,
            frozen_stages=config.frozen_stages,
            norm_eval=config.norm_eval,
        )
        self.neck = FPN(self.backbone.out_channels, config.fpn_channels, len(config.strides))
        self._init_branch(config)
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), False)

    def load_backbone(self, state_dict: dict, source: str = "state dict") -> None:
        """Load backbone weights (a torchvision ResNet state dict), as the trainer does
        for ``config.pretrained``."""
        self.backbone.load_weights(state_dict, source)

    def forward(self, images: Tensor) -> ATSSOutputs:
        """Raw head outputs (the same in training and eval mode).

        Args:
            images: (B, 3, H, W) RGB in [0, 1], H and W multiples of 32.

        Returns:
            (class maps, delta maps, centerness maps): per level (B, K C, H_l, W_l),
            (B, K 4, H_l, W_l) and (B, K, H_l, W_l) logits, strides 8 to 128.
        """
        check_images(images, 32)
        normalised = (images - self.pixel_mean) / self.pixel_std
        return self.head(self.neck(self.backbone(normalised)))


def build_atss_r50(num_classes: int = 80) -> ATSS:
    """mmdet's ATSS R50-FPN (``atss_r50_fpn_1x_coco``) with ``num_classes`` classes."""
    return ATSS(ATSSConfig(num_classes=num_classes))


def build_atss_r18half_fpn64(num_classes: int = 80) -> ATSS:
    """The CPU preset: ResNet-18 at half width, FPN and head of 64 channels, 2 stacked
    convs, every backbone stage trained, starting from the course's pre-trained backbone."""
    return ATSS(
        ATSSConfig(
            name="atss-r18half-fpn64",
            num_classes=num_classes,
            **CPU_PRESET_BACKBONE,
            fpn_channels=64,
            head_channels=64,
            stacked_convs=2,
        )
    )
