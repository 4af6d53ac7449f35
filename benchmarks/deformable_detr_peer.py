"""The course's Deformable DETR beside Hugging Face's: AP50 after a number of steps, step time.

    python benchmarks/deformable_detr_peer.py [--steps 600] [--every 100] [--data data/shapes]
        [--out runs/deformable-detr-peer] [--threads 2] [--seed 0] [--peer-only | --course-only]
        [--set FIELD=VALUE ...]

The peer is ``transformers``' ``DeformableDetrForObjectDetection`` (v5; ``pip install
transformers``, never needed by ``make run`` or ``make test``) at the size of the
course's CPU preset ``deformable-detr-r18half-d128``: width 128, 3 encoder and 3 decoder
layers, feed-forward 512, 8 heads, 4 levels, 4 points, 100 queries, box refinement and
two stages, no dropout, the auxiliary loss on every decoder layer, Hungarian costs 2 / 5
/ 2 (focal, L1, GIoU) and focal alpha 0.25, gamma 2. Both train in the course's engine on
the course's ``cpu`` schedule of Deformable DETR (the same data, 320 px images, flips and
colour jitter, batch, AdamW, learning rate, a tenth of it for the backbone and the
sampling offsets, warm-up and cosine, gradient clipping at 0.1), in float32, for exactly
``--steps`` steps, and both are scored by the same COCO evaluation after every
``--every`` steps; the peer's own post-processing (``post_process_object_detection``:
the 100 best query-class pairs by sigmoid score, no NMS) makes its boxes.

The backbone. ``transformers`` builds its conv encoder from a backbone config; here a
``ResNetConfig`` of basic blocks whose last three stages have the channels of the course's
C3 to C5 (64, 128, 256), so that the input projections are made for them (a 1x1 conv
and GroupNorm(32) per map, and a stride-2 3x3 conv and GroupNorm of the last map for the
fourth level). That ResNet (whose batch norms ``transformers`` freezes, with its stem
and first stage) is then replaced by the course's ``ResNetBackbone`` (half-width
ResNet-18, C3 to C5 at strides 8, 16, 32) with the weights the course pre-trained on the
shapes set (notebook 04), every stage and batch norm trained, as in the course preset:
the conv encoder calls ``self.model(pixel_values)`` and takes the list of maps it gets,
so the swap is one attribute, ``model.backbone.model``. Both models start from the same
backbone weights; the peer's parameter names keep ``backbone``, ``sampling_offsets``
(and, without two stages, ``reference_points``), so the schedule's learning-rate factors
find them (the groups are printed).

Restored from the reference (fundamentalvision/Deformable-DETR), which v5 leaves out:
every class head's bias at a prior probability of 0.01 and the last layer of every box
MLP at zero (v5 leaves them at zero bias and a normal init: the first class loss is then
about 25 where it is about 1); the class term weighted 2 (v5 fixes its weight at 1;
its L1 and GIoU weights are the config's, 5 and 2), and the loss of the two-stage
encoder's proposals (v5 computes them but no loss on them): v5's own matcher and
criterion on the proposals with every label set to 0, with the same weights.

What stays ``transformers``' own: the normal(0, 0.02) initialisation of the linear
layers outside deformable attention and of the input projections (the reference and the
course: Xavier), biases on the input projections, the matcher's focal cost (alpha and
gamma fixed at 0.25 and 2) and SciPy's assignment. The wrapper normalises the images with
the ImageNet mean and standard deviation, passes a pixel mask of ones (the course's
batches are letterboxed to one size) and the targets as ``class_labels`` and normalised
cx, cy, w, h boxes. ``--set FIELD=VALUE`` changes the schedule of both runs (the peer
takes its image size from the batches). A benchmark run should have the machine to
itself.
"""

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor, nn
from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig
from transformers.loss.loss_deformable_detr import (
    DeformableDetrHungarianMatcher,
    DeformableDetrImageLoss,
)
from transformers.models.deformable_detr import DeformableDetrImageProcessor

sys.path.insert(0, str(Path(__file__).resolve().parent))

from atss_peer import compare  # noqa: E402

from detutils.boxes import xyxy_to_cxcywh_norm  # noqa: E402
from detutils.engine.presets import schedules_for  # noqa: E402
from detutils.engine.pretrain import load_pretrained  # noqa: E402
from detutils.engine.schedule import apply_lr_multipliers, parameter_groups  # noqa: E402
from detutils.models import build_detector  # noqa: E402

COURSE = "deformable-detr-r18half-d128"
# v5's loss_dict names -> the course's terms (the last decoder layer's; ``_0``, ``_1``
# ... are the earlier layers')
TERMS = {"loss_ce": "cls", "loss_bbox": "l1", "loss_giou": "giou"}


class HFDeformableDetrPeer(nn.Module):
    """``DeformableDetrForObjectDetection`` behind the course's four calls, so the same
    engine trains and evaluates it: ``forward`` hands the images on, ``loss`` runs the
    training forward with the targets, ``predict`` the inference forward and
    ``post_process_object_detection``.

    ``loss`` returns the course's names: ``cls``, ``l1``, ``giou`` of the last decoder
    layer, ``aux`` every other term (earlier layers, the encoder's proposals), each
    weighted, and ``loss`` their sum."""

    def __init__(
        self,
        detector: DeformableDetrForObjectDetection,
        name: str,
        weights: dict[str, float],
        pixel_mean: tuple[float, float, float],
        pixel_std: tuple[float, float, float],
    ) -> None:
        super().__init__()
        config = detector.config
        self.detector, self.name, self.num_classes = detector, name, config.num_labels
        self.config = SimpleNamespace(pretrained=None)  # loaded by hand below
        self.weights = dict(weights)  # {"cls", "l1", "giou"}
        matcher = DeformableDetrHungarianMatcher(
            class_cost=config.class_cost, bbox_cost=config.bbox_cost, giou_cost=config.giou_cost
        )
        # v5's criterion, for the two-stage encoder's proposals
        self.encoder_criterion = DeformableDetrImageLoss(
            matcher, config.num_labels, config.focal_alpha, ["labels", "boxes"]
        )
        self.processor = DeformableDetrImageProcessor()
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), False)

    def forward(self, images: Tensor) -> Tensor:
        return images

    def _inputs(self, images: Tensor) -> dict[str, Tensor]:
        batch, _, height, width = images.shape
        mask = torch.ones(batch, height, width, dtype=torch.long, device=images.device)
        return {"pixel_values": (images - self.pixel_mean) / self.pixel_std, "pixel_mask": mask}

    def loss(self, outputs: Tensor, targets, assignment=None) -> dict[str, Tensor]:
        image_size = tuple(outputs.shape[-2:])
        labels = [
            {
                "class_labels": t["labels"].long(),
                "boxes": xyxy_to_cxcywh_norm(t["boxes"].float(), image_size),
            }
            for t in targets
        ]
        result = self.detector(**self._inputs(outputs), labels=labels)
        terms = {}
        for key, value in result.loss_dict.items():  # unweighted, every decoder layer
            base = next((part for part in TERMS if key == part or key.startswith(part + "_")), None)
            if base is not None:
                layer = key[len(base) + 1 :]
                terms[TERMS[base] + (f".d{layer}" if layer else "")] = value
        if result.enc_outputs_class is not None:  # two stages: the proposals, class-agnostic
            proposals = {
                "logits": result.enc_outputs_class,
                "pred_boxes": result.enc_outputs_coord_logits.sigmoid(),
            }
            agnostic = [{**t, "class_labels": torch.zeros_like(t["class_labels"])} for t in labels]
            for key, value in self.encoder_criterion(proposals, agnostic).items():
                terms[TERMS[key] + ".enc"] = value
        weighted = {name: self.weights[name.split(".")[0]] * value for name, value in terms.items()}
        losses = {name: weighted[name] for name in ("cls", "l1", "giou")}
        losses["aux"] = sum(value for name, value in weighted.items() if "." in name)
        losses["loss"] = sum(weighted.values())
        return losses

    @torch.no_grad()
    def predict(self, outputs: Tensor, score_thr=0.0, iou_thr=None, max_det=100):
        """The ``max_det`` best (query, class) pairs by sigmoid score, no NMS; boxes xyxy
        input px, clipped; pairs at or below ``score_thr`` dropped (as the course's)."""
        batch, _, height, width = outputs.shape
        result = self.detector(**self._inputs(outputs))
        detections = self.processor.post_process_object_detection(
            result, threshold=score_thr, target_sizes=[(height, width)] * batch, top_k=max_det
        )
        for detection in detections:
            boxes = detection["boxes"]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        return detections


def print_lr_groups(model: nn.Module, schedule) -> None:
    """The optimizer groups the schedule makes of ``model``, with the name parts that
    its learning-rate factors matched."""
    groups = parameter_groups(model, schedule.weight_decay)
    groups = apply_lr_multipliers(groups, model, schedule.lr_multipliers, schedule.lr)
    print(f"{model.name}: optimizer groups")
    for group in groups:
        count = sum(parameter.numel() for parameter in group["params"])
        print(
            f"  {group['name']:<16} lr {group['lr']:.1e}  decay {group['weight_decay']:g}  "
            f"{len(group['params'])} tensors, {count:,} weights"
        )
    names = [name for name, _ in model.named_parameters()]
    for part, factor in schedule.lr_multipliers:
        matched = [name for name in names if part in name]
        example = f", e.g. {matched[0]}" if matched else ""
        print(f"  x{factor:g} {part}: {len(matched)} tensors{example}")


def build_hf_peer(num_classes: int) -> HFDeformableDetrPeer:
    """``transformers``' Deformable DETR at the course preset's size, on its backbone."""
    with torch.random.fork_rng(devices=[]):  # the peer's initialisation draws from the seed
        course = build_detector(COURSE, num_classes=num_classes)
    load_pretrained(course)  # the same weights the course's run starts from
    c = course.config
    if (c.focal_alpha, c.focal_gamma) != (0.25, 2.0):
        raise ValueError("transformers' matcher fixes focal alpha 0.25 and gamma 2")
    if any(weight != int(weight) for weight in (c.cls_weight, c.l1_weight, c.giou_weight)):
        raise ValueError("transformers' config takes whole-number costs and loss weights")
    width = c.backbone_width
    backbone = ResNetConfig(
        embedding_size=width, hidden_sizes=[width, 2 * width, 4 * width, 8 * width],
        depths=[2, 2, 2, 2], layer_type="basic", out_features=["stage2", "stage3", "stage4"],
    )  # fmt: skip
    config = DeformableDetrConfig(
        backbone_config=backbone, num_labels=num_classes, d_model=c.embed_dims,
        encoder_layers=c.num_encoder_layers, decoder_layers=c.num_decoder_layers,
        encoder_ffn_dim=c.ffn_dims, decoder_ffn_dim=c.ffn_dims,
        encoder_attention_heads=c.num_heads, decoder_attention_heads=c.num_heads,
        num_feature_levels=c.num_levels, encoder_n_points=c.num_points,
        decoder_n_points=c.num_points, num_queries=c.num_queries,
        two_stage_num_proposals=c.num_queries, with_box_refine=c.with_box_refine,
        two_stage=c.as_two_stage, dropout=c.dropout, attention_dropout=c.dropout,
        activation_dropout=c.dropout, auxiliary_loss=True, class_cost=int(c.cls_weight),
        bbox_cost=int(c.l1_weight), giou_cost=int(c.giou_weight), focal_alpha=c.focal_alpha,
        bbox_loss_coefficient=int(c.l1_weight), giou_loss_coefficient=int(c.giou_weight),
    )  # fmt: skip
    detector = DeformableDetrForObjectDetection(config)
    encoder = detector.model.backbone
    if list(encoder.intermediate_channel_sizes) != list(course.backbone.out_channels):
        raise ValueError("the input projections do not fit the course backbone's channels")
    encoder.model = course.backbone  # returns [C3, C4, C5]; every stage and BN trained
    bias = -math.log((1 - c.prior_prob) / c.prior_prob)
    decoder = detector.model.decoder  # holds the same heads (tied) with two stages, refinement
    with torch.no_grad():
        for head in (*detector.class_embed, *(decoder.class_embed or ())):
            head.bias.fill_(bias)
        for head in (*detector.bbox_embed, *(decoder.bbox_embed or ())):
            head.layers[-1].weight.zero_()
            head.layers[-1].bias.zero_()
    weights = {"cls": c.cls_weight, "l1": c.l1_weight, "giou": c.giou_weight}
    peer = HFDeformableDetrPeer(
        detector, "hf-deformable-detr", weights, c.pixel_mean, c.pixel_std
    )  # the ImageNet mean and standard deviation, as the course's
    print_lr_groups(peer, schedules_for(COURSE)["cpu"])
    return peer


def main(argv: list[str] | None = None) -> int:
    return compare(
        argv, COURSE, build_hf_peer, __doc__.split("\n")[0], "runs/deformable-detr-peer",
        steps=600, overrides=True,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
