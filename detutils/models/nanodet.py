"""NanoDet-m: ShuffleNetV2 backbone, PAN neck, a light GFL head; ATSS targets, GFL losses.

::

    model = build_nanodet_m(num_classes=80)
    outputs = model(images)                # ([(B, C, H/s, W/s)], [(B, 4 (R + 1), H/s, W/s)])
    assignment = model.assign(outputs, targets)        # ATSS: (B, A) result, gt boxes
    losses = model.loss(outputs, targets, assignment)  # {"qfl", "bbox", "dfl", "loss"}
    dets = model.predict(outputs)          # [{"boxes", "scores", "labels"} per image]

At 320 x 320 the three levels (strides 8, 16, 32) have 40 x 40, 20 x 20 and 10 x 10
cells: 2100 priors. Per level the head runs its own two depthwise-separable convs
(3x3 depthwise, 1x1 pointwise, each with batch norm and LeakyReLU) and one 1x1 conv
whose ``C + 4 (R + 1)`` channels are split into C class logits and four distributions
of R + 1 = 8 bins (sides left, top, right, bottom). A side's distance is the expected
bin of its distribution, in strides.

Targets: ATSS (topk 9) on grid cells, squares of side 5 x stride centred on the cells
(:func:`detutils.assigners.assign_atss_batched`); losses: quality focal, GIoU and
distribution focal (:func:`detutils.losses.gfl_loss`).

Input: images (B, 3, H, W) RGB in [0, 1] (the course's data pipeline), H and W
multiples of 32. The model normalises them with the ImageNet mean and standard
deviation, which are NanoDet's ``normalize`` values divided by 255 (NanoDet reads BGR
images with OpenCV; its pretrained weights would need the channels swapped).

Parameters at 80 classes: 950,036 (backbone 776,420, neck 78,240, head 95,376),
NanoDet-m's published 0.95 M. The head's class bias starts at -4.595, a probability of
0.01 for every class (the focal-loss prior of RetinaNet); it is also the bias of the
distribution channels, which share the conv (a constant added to every bin changes no
softmax).

Reference: NanoDet ``config/nanodet-m.yml``, ``nanodet/model/head/nanodet_head.py``,
``gfl_head.py`` (``get_bboxes``: score threshold 0.05, NMS IoU 0.6, 100 detections).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from detutils.assigners import AssignResult, assign_atss_batched, pad_ground_truth
from detutils.coders import decode_distance, dfl_distances
from detutils.losses.gfl import gfl_loss
from detutils.models.backbones import SHUFFLENETV2_CHANNELS, ShuffleNetV2Backbone
from detutils.models.inputs import check_images
from detutils.models.necks import PAN
from detutils.postprocess import postprocess_detections
from detutils.priors import anchor_points, grid_cells

__all__ = ["NanoDet", "NanoDetAssignment", "NanoDetConfig", "NanoDetHead", "build_nanodet_m"]

NanoDetOutputs = tuple[list[Tensor], list[Tensor]]  # (class maps, distribution maps)


class NanoDetAssignment(NamedTuple):
    """What ``NanoDet.assign`` returns: the ATSS result and the boxes it indexes."""

    assignment: AssignResult  # (B, A) fields: gt_index, labels, iou
    gt_boxes: Tensor  # (B, M, 4) xyxy px, the padded ground truth


@dataclass(frozen=True)
class NanoDetConfig:
    """Everything that defines a NanoDet detector; the defaults are NanoDet-m."""

    name: str = "nanodet-m"  # command-line name
    num_classes: int = 80  # C
    img_size: int = 320  # side of the square network input, px, a multiple of 32
    backbone_channels: tuple[int, ...] = SHUFFLENETV2_CHANNELS["1.0x"]  # stem, stages 2-4
    neck_channels: int = 96  # PAN output channels, the head's input
    head_channels: int = 96  # channels of the head's stacked convs (feat_channels)
    stacked_convs: int = 2  # depthwise-separable convs per level before the output conv
    kernel_size: int = 3  # of the depthwise convs
    share_cls_reg: bool = True  # one tower and one output conv for classes and boxes
    negative_slope: float = 0.1  # LeakyReLU slope, backbone and head (0: ReLU)
    reg_max: int = 7  # R: distances are distributions over the bins 0 .. R (strides)
    strides: tuple[int, ...] = (8, 16, 32)  # pixels per cell of each level
    cell_scale: float = 5.0  # side of an ATSS grid cell, in strides (octave_base_scale)
    topk: int = 9  # ATSS candidates per level and box
    qfl_beta: float = 2.0  # quality focal exponent
    qfl_weight: float = 1.0  # weight of the quality focal loss
    bbox_weight: float = 2.0  # weight of the GIoU loss
    dfl_weight: float = 0.25  # weight of the distribution focal loss
    prior_bias: float = -4.595  # initial bias of the output conv: sigmoid = 0.01
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB, images in [0, 1]
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # RGB


def _depthwise_separable(
    in_channels: int, out_channels: int, kernel_size: int, negative_slope: float
) -> nn.Sequential:
    """kxk depthwise conv, BN, LeakyReLU, 1x1 pointwise conv, BN, LeakyReLU (no conv bias)."""
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            in_channels,
            kernel_size,
            padding=kernel_size // 2,
            groups=in_channels,
            bias=False,
        ),
        nn.BatchNorm2d(in_channels),
        nn.LeakyReLU(negative_slope, inplace=True),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(negative_slope, inplace=True),
    )


class NanoDetHead(nn.Module):
    """Per level: stacked depthwise-separable convs, then 1x1 convs to classes and bins.

    Nothing is shared between levels. With ``share_cls_reg`` (NanoDet-m) one tower and
    one output conv of ``C + 4 (R + 1)`` channels serve both tasks; without it a second
    tower and a second output conv produce the ``4 (R + 1)`` distribution channels.
    """

    def __init__(self, config: NanoDetConfig) -> None:
        super().__init__()
        self.num_classes, self.reg_max = config.num_classes, config.reg_max
        self.share_cls_reg = config.share_cls_reg
        num_bins = 4 * (config.reg_max + 1)

        def tower() -> nn.Sequential:
            return nn.Sequential(
                *[
                    _depthwise_separable(
                        config.neck_channels if index == 0 else config.head_channels,
                        config.head_channels,
                        config.kernel_size,
                        config.negative_slope,
                    )
                    for index in range(config.stacked_convs)
                ]
            )

        num_levels = len(config.strides)
        self.cls_convs = nn.ModuleList(tower() for _ in range(num_levels))
        cls_out = config.num_classes + (num_bins if config.share_cls_reg else 0)
        self.gfl_cls = nn.ModuleList(
            nn.Conv2d(config.head_channels, cls_out, 1) for _ in range(num_levels)
        )
        if not config.share_cls_reg:
            self.reg_convs = nn.ModuleList(tower() for _ in range(num_levels))
            self.gfl_reg = nn.ModuleList(
                nn.Conv2d(config.head_channels, num_bins, 1) for _ in range(num_levels)
            )
        self._init_weights(config.prior_bias)

    def _init_weights(self, prior_bias: float) -> None:
        """NanoDet: conv weights normal(0, 0.01); every bias of ``gfl_cls`` -4.595 (the
        shared conv's bin channels too, where it changes no softmax), of ``gfl_reg`` 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for conv in self.gfl_cls:
            nn.init.constant_(conv.bias, prior_bias)

    def forward(self, features: list[Tensor]) -> NanoDetOutputs:
        """L maps (B, neck_channels, H_l, W_l) -> class maps (B, C, H_l, W_l) and
        distribution maps (B, 4 (R + 1), H_l, W_l), one of each per level."""
        class_maps, dist_maps = [], []
        for level, x in enumerate(features):
            out = self.gfl_cls[level](self.cls_convs[level](x))
            if self.share_cls_reg:
                class_map, dist_map = out.split(
                    [self.num_classes, out.shape[1] - self.num_classes], 1
                )
            else:
                class_map = out
                dist_map = self.gfl_reg[level](self.reg_convs[level](x))
            class_maps.append(class_map)
            dist_maps.append(dist_map)
        return class_maps, dist_maps


class NanoDet(nn.Module):
    """NanoDet: backbone, neck and head, with its assigner, loss and post-processing.

    Args:
        config: a :class:`NanoDetConfig`.
    """

    def __init__(self, config: NanoDetConfig) -> None:
        super().__init__()
        if config.img_size % max(config.strides):
            raise ValueError(
                f"img_size {config.img_size} must be a multiple of the largest stride "
                f"{max(config.strides)}"
            )
        if tuple(config.strides) != ShuffleNetV2Backbone.strides:
            raise ValueError(
                f"the ShuffleNetV2 backbone gives strides 8, 16, 32, not {config.strides}"
            )
        self.config, self.name, self.num_classes = config, config.name, config.num_classes
        self.backbone = ShuffleNetV2Backbone(
            config.backbone_channels, (4, 8, 4), config.negative_slope
        )
        self.neck = PAN(self.backbone.out_channels, config.neck_channels)
        self.head = NanoDetHead(config)
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), False)

    def forward(self, images: Tensor) -> NanoDetOutputs:
        """Raw head outputs (the same in training and eval mode).

        Args:
            images: (B, 3, H, W) RGB in [0, 1], H and W multiples of 32.

        Returns:
            (class maps, distribution maps): per level (B, C, H / s, W / s) logits and
            (B, 4 (R + 1), H / s, W / s) logits, strides 8, 16, 32.
        """
        check_images(images, max(self.config.strides))
        normalised = (images - self.pixel_mean) / self.pixel_std
        return self.head(self.neck(self.backbone(normalised)))

    # ------------------------------------------- priors, flattening, assignment
    def _check_outputs(self, outputs: NanoDetOutputs) -> list[tuple[int, int]]:
        class_maps, dist_maps = outputs
        if len(class_maps) != len(self.config.strides) or len(dist_maps) != len(class_maps):
            raise ValueError(
                f"outputs must hold {len(self.config.strides)} class and distribution maps"
            )
        return [tuple(class_map.shape[-2:]) for class_map in class_maps]

    def priors(
        self, feature_sizes: list[tuple[int, int]], device: torch.device | str | None = None
    ) -> tuple[Tensor, list[int], Tensor]:
        """Grid cells of every level -> (cells (A, 4) px, num_per_level, prior_strides (A,))."""
        cells, num_per_level = grid_cells(
            feature_sizes, self.config.strides, self.config.cell_scale, device=device
        )
        prior_strides = torch.repeat_interleave(
            torch.tensor(self.config.strides, dtype=cells.dtype, device=cells.device),
            torch.tensor(num_per_level, device=cells.device),
        )  # (A,)
        return cells, num_per_level, prior_strides

    @staticmethod
    def flatten(outputs: NanoDetOutputs) -> tuple[Tensor, Tensor]:
        """Per-level maps -> class logits (B, A, C) and distribution logits (B, A, 4 (R + 1)),
        priors level by level, row-major."""
        class_maps, dist_maps = outputs
        cls_logits = torch.cat([x.flatten(2) for x in class_maps], dim=2).transpose(1, 2)
        dist_logits = torch.cat([x.flatten(2) for x in dist_maps], dim=2).transpose(1, 2)
        return cls_logits, dist_logits  # (B, A, C), (B, A, 4 (R + 1))

    @torch.no_grad()
    def assign(
        self, outputs: NanoDetOutputs, targets: list[dict[str, Tensor]]
    ) -> NanoDetAssignment:
        """ATSS on the grid cells: which cell learns which box.

        Args:
            outputs: what :meth:`forward` returned (only the map sizes are read: ATSS
                does not look at the predictions).
            targets: B dicts ``{"boxes": (M_i, 4) xyxy px, "labels": (M_i,)}``.

        Returns:
            ``(assignment, gt_boxes)``: the (B, A) :class:`AssignResult` and the padded
            ground truth (B, M, 4) xyxy px its ``gt_index`` points into.
        """
        feature_sizes = self._check_outputs(outputs)
        batch_size, device = outputs[0][0].shape[0], outputs[0][0].device
        if len(targets) != batch_size:
            raise ValueError(f"got {len(targets)} targets for a batch of {batch_size} images")
        cells, num_per_level, _ = self.priors(feature_sizes, device)
        gt_boxes, gt_labels, gt_mask = pad_ground_truth(targets, device)
        assignment = assign_atss_batched(
            cells, num_per_level, gt_boxes, gt_labels, gt_mask, topk=self.config.topk
        )
        return NanoDetAssignment(assignment, gt_boxes)

    # ------------------------------------------------------------ the three calls
    def loss(
        self,
        outputs: NanoDetOutputs,
        targets: list[dict[str, Tensor]],
        assignment: NanoDetAssignment | None = None,
    ) -> dict[str, Tensor]:
        """The GFL loss of a batch.

        Args:
            outputs: what :meth:`forward` returned.
            targets: B dicts ``{"boxes": (M_i, 4) xyxy px, "labels": (M_i,)}``.
            assignment: what :meth:`assign` returned for these outputs and targets;
                ``None`` assigns here.

        Returns:
            ``{"qfl", "bbox", "dfl", "loss"}`` scalars, weights applied (see
            :func:`detutils.losses.gfl_loss`).
        """
        if assignment is None:
            assignment = self.assign(outputs, targets)
        assignment, gt_boxes = assignment
        cells, _, prior_strides = self.priors(self._check_outputs(outputs), gt_boxes.device)
        cls_logits, dist_logits = self.flatten(outputs)
        config = self.config
        return gfl_loss(
            cls_logits,
            dist_logits,
            cells,
            prior_strides,
            assignment,
            gt_boxes,
            beta=config.qfl_beta,
            qfl_weight=config.qfl_weight,
            bbox_weight=config.bbox_weight,
            dfl_weight=config.dfl_weight,
        )

    @torch.no_grad()
    def decode(self, outputs: NanoDetOutputs) -> tuple[Tensor, Tensor]:
        """Outputs -> boxes (B, A, 4) xyxy in input pixels (clipped to the image) and class
        probabilities (B, A, C)."""
        feature_sizes = self._check_outputs(outputs)
        cls_logits, dist_logits = self.flatten(outputs)
        points, point_strides = anchor_points(
            feature_sizes, self.config.strides, device=cls_logits.device
        )  # (A, 2), (A,)
        distances = dfl_distances(dist_logits.float()) * point_strides[:, None]  # (B, A, 4) px
        height, width = feature_sizes[0]
        image_size = (height * self.config.strides[0], width * self.config.strides[0])
        boxes = decode_distance(points, distances, max_shape=image_size)
        return boxes, cls_logits.float().sigmoid()

    @torch.no_grad()
    def predict(
        self,
        outputs: NanoDetOutputs,
        score_thr: float = 0.05,
        iou_thr: float = 0.6,
        max_det: int = 100,
    ) -> list[dict[str, Tensor]]:
        """Detections per image: every (prior, class) above ``score_thr``, class-aware NMS.

        Args:
            outputs: what :meth:`forward` returned.
            score_thr: keep (prior, class) pairs whose probability exceeds this.
            iou_thr: NMS IoU threshold.
            max_det: detections kept per image.

        Returns:
            B dicts ``{"boxes": (N, 4) xyxy input px, "scores": (N,), "labels": (N,)}``.

        Reference: NanoDet ``GFLHead.get_bboxes`` (``multiclass_nms``).
        """
        boxes, scores = self.decode(outputs)
        return postprocess_detections(
            boxes, scores, score_thr=score_thr, iou_thr=iou_thr, max_det=max_det
        )


def build_nanodet_m(num_classes: int = 80) -> NanoDet:
    """NanoDet-m (ShuffleNetV2 1.0x, PAN 96, GFL head, 320 px) with ``num_classes`` classes."""
    return NanoDet(NanoDetConfig(num_classes=num_classes))
