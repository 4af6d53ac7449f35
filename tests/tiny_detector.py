"""A deliberately small detector that exercises the trainer and the evaluator.

It follows the detector protocol of ``detutils.models`` and nothing more:

    backbone  three 3x3 convs of stride 2 (GroupNorm, ReLU): one level, stride 8
    head      a 1x1 conv giving, per cell, 4 box distances then C class logits
    targets   the cell holding a box's centre learns that box (the smaller box wins
              a shared cell), every other cell learns background
    loss      sigmoid BCE over all cells, summed and divided by the image's positives
              (at least 1), plus GIoU loss over the positives; both averaged per image

Every term is a per-image mean, so a loss over B images equals the mean of the losses
of its images: DDP's gradient average over ranks then equals a single process's
gradient on the union of their batches, and the distributed test can compare the two.
GroupNorm (not BatchNorm) keeps the forward pass free of batch statistics for the
same reason.

Build it from the command line with ``--model tests.tiny_detector:build``.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detutils.boxes import box_iou_aligned
from detutils.engine.schedule import TrainSchedule
from detutils.postprocess import postprocess_detections

__all__ = ["TinyDetector", "TinyDetectorConfig", "build"]


def _tiny_schedules() -> dict[str, TrainSchedule]:
    return {
        "ci": TrainSchedule(
            epochs=2, batch_size=4, img_size=64, lr=0.01, warmup_epochs=0.5, threads=1, workers=0
        ),
        "cpu": TrainSchedule(epochs=20, batch_size=16, img_size=128, max_minutes=5.0),
        "gpu": TrainSchedule(epochs=50, batch_size=64, img_size=320, amp=True, ema=True, workers=4),
    }


@dataclass
class TinyDetectorConfig:
    num_classes: int = 6  # classes of the head
    width: int = 16  # channels of the first conv; the last has twice as many
    stride: int = 8  # pixels per output cell (three stride-2 convs)
    prior_probability: float = 0.01  # initial class probability (focal-loss bias init)
    schedules: dict[str, TrainSchedule] = field(default_factory=_tiny_schedules)


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
        nn.GroupNorm(4, out_channels),
        nn.ReLU(inplace=True),
    )


class TinyDetector(nn.Module):
    """One level, one box per cell, sigmoid classes: the smallest thing that detects."""

    def __init__(self, config: TinyDetectorConfig) -> None:
        super().__init__()
        self.config, self.num_classes, self.name = config, config.num_classes, "tiny"
        width = config.width
        self.backbone = nn.Sequential(
            _conv_block(3, width), _conv_block(width, width), _conv_block(width, 2 * width)
        )
        self.head = nn.Conv2d(2 * width, 4 + config.num_classes, 1)
        prior = config.prior_probability
        nn.init.constant_(self.head.bias[4:], -torch.log(torch.tensor((1 - prior) / prior)).item())

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) in [0, 1] -> raw outputs (B, 4 + C, H / 8, W / 8)."""
        return self.head(self.backbone(images - 0.5))

    def _points(self, outputs: Tensor) -> Tensor:
        height, width = outputs.shape[-2:]
        stride = self.config.stride
        ys, xs = torch.meshgrid(
            torch.arange(height, device=outputs.device),
            torch.arange(width, device=outputs.device),
            indexing="ij",
        )
        return (torch.stack([xs, ys], dim=-1).reshape(-1, 2).float() + 0.5) * stride  # (A, 2)

    def _decode(self, outputs: Tensor) -> tuple[Tensor, Tensor]:
        """-> boxes (B, A, 4) xyxy px and class logits (B, A, C)."""
        flat = outputs.flatten(2).transpose(1, 2).float()  # (B, A, 4 + C)
        points = self._points(outputs)  # (A, 2)
        distances = F.softplus(flat[..., :4]) * self.config.stride  # (B, A, 4) l, t, r, b
        boxes = torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)
        return boxes, flat[..., 4:]

    def loss(self, outputs: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        boxes, logits = self._decode(outputs)  # (B, A, 4), (B, A, C)
        height, width = outputs.shape[-2:]
        stride = self.config.stride
        class_losses, box_losses = [], []
        for image_boxes, image_logits, target in zip(boxes, logits, targets, strict=True):
            gt_boxes, gt_labels = target["boxes"].float(), target["labels"]
            class_target = torch.zeros_like(image_logits)  # (A, C)
            centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # (M, 2)
            column = (centres[:, 0] / stride).long().clamp(0, width - 1)
            row = (centres[:, 1] / stride).long().clamp(0, height - 1)
            cell = row * width + column  # (M,)
            # larger boxes first, so a smaller box sharing a cell overwrites them
            areas = (gt_boxes[:, 2:] - gt_boxes[:, :2]).prod(dim=1)
            order = areas.argsort(descending=True)
            owner = torch.full((height * width,), -1, dtype=torch.long, device=outputs.device)
            for index in order.tolist():  # a loop: duplicate indices in one put are unordered
                owner[cell[index]] = index
            positive = torch.nonzero(owner >= 0, as_tuple=True)[0]  # (P,)
            matched = owner[positive]  # (P,)
            class_target[positive, gt_labels[matched]] = 1.0
            bce = F.binary_cross_entropy_with_logits(image_logits, class_target, reduction="sum")
            class_losses.append(bce / max(1, positive.numel()))
            if positive.numel():
                giou = box_iou_aligned(image_boxes[positive], gt_boxes[matched], kind="giou")
                box_losses.append((1.0 - giou).mean())
            else:
                box_losses.append(image_boxes.sum() * 0.0)  # keeps the graph whole
        loss_cls = torch.stack(class_losses).mean()
        loss_box = torch.stack(box_losses).mean()
        return {"loss": loss_cls + loss_box, "loss_cls": loss_cls, "loss_box": loss_box}

    @torch.no_grad()
    def predict(
        self, outputs: Tensor, score_thr: float = 0.05, iou_thr: float = 0.6, max_det: int = 100
    ) -> list[dict[str, Tensor]]:
        boxes, logits = self._decode(outputs)
        return postprocess_detections(
            boxes, logits.sigmoid(), score_thr=score_thr, iou_thr=iou_thr, max_det=max_det
        )


def build(num_classes: int = 6) -> TinyDetector:
    """The factory that ``--model tests.tiny_detector:build`` calls."""
    return TinyDetector(TinyDetectorConfig(num_classes=num_classes))
