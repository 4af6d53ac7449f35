"""The course's ATSS beside torchvision's FCOS: AP50 after a number of steps, step time.

    python benchmarks/atss_peer.py [--steps 500] [--every 100] [--data data/shapes]
        [--out runs/atss-peer] [--threads 2] [--seed 0] [--peer-only | --course-only]

The peer is the closest detector torchvision ships: FCOS (one location per prior, focal
loss, GIoU, a centerness branch; Tian et al., 2019), built from the same parts as the
course's CPU preset ``atss-r18half-fpn64``: the same half-width ResNet-18 with the same
weights the course pre-trained on the shapes set (notebook 04), an FPN of 64 channels
over C3 to C5 with P6 and P7 from P5's output (torchvision's ``LastLevelP6P7``), a head
of 2 stacked convs. Both train in the course's engine on the course's ``cpu`` schedule
of ATSS (the same data, 320 px images, flips and colour jitter, batch, AdamW, learning
rate, warm-up and cosine, gradient clipping), in float32, for exactly ``--steps`` steps,
and both are scored by the same COCO evaluation after every ``--every`` steps; the
peer's own post-processing (torchvision's ``postprocess_detections``) makes its boxes.
Prints both AP50 curves, the ratio of the step times and the AP50 gap.

Set up fairly (see the README): the backbone's batch norms are trainable in both
(torchvision's ``resnet_fpn_backbone`` would freeze them), and torchvision's resize is
the identity here (``min_size = max_size = 320``, the letterboxed images' size). A
benchmark run should have the machine to itself.
"""

import argparse
import copy
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_budget import parse_overrides  # noqa: E402
from sample_efficiency import _load, _score  # noqa: E402

from detutils.data.mosaic import build_train_set  # noqa: E402
from detutils.data.shapes import ensure_shapes  # noqa: E402
from detutils.distributed import init_distributed  # noqa: E402
from detutils.engine.presets import schedules_for  # noqa: E402
from detutils.engine.pretrain import load_pretrained  # noqa: E402
from detutils.engine.trainer import seed_everything, train  # noqa: E402
from detutils.models import build_detector  # noqa: E402

COURSE = "atss-r18half-fpn64"


class TorchvisionPeer(nn.Module):
    """A torchvision detector behind the course's four calls, so the same engine trains
    and evaluates it: ``forward`` hands the images on, ``loss`` runs torchvision's
    training forward (which returns its losses), ``predict`` its inference forward."""

    def __init__(self, detector: nn.Module, name: str, num_classes: int) -> None:
        super().__init__()
        self.detector, self.name, self.num_classes = detector, name, num_classes
        self.config = SimpleNamespace(pretrained=None)  # loaded by hand below

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def loss(self, outputs, targets, assignment=None) -> dict[str, torch.Tensor]:
        plain = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        losses = self.detector(list(outputs), plain)
        return {**losses, "loss": sum(losses.values())}

    @torch.no_grad()
    def predict(self, outputs, score_thr=0.05, iou_thr=0.6, max_det=100):
        self.detector.score_thresh, self.detector.nms_thresh = score_thr, iou_thr
        self.detector.detections_per_img = max_det
        return self.detector(list(outputs))


def peer_backbone(num_classes: int) -> tuple[nn.Module, BackboneWithFPN]:
    """The course preset (its pre-trained weights loaded) and torchvision's backbone with
    FPN made of the preset's ResNet: C3 to C5, P6 and P7 from P5's output."""
    course = build_detector(COURSE, num_classes=num_classes)
    load_pretrained(course)  # the same weights the course's run starts from
    body = course.backbone  # conv1, bn1, relu, maxpool, layer1..4: what the getter walks
    body.out_stages = (5,)  # unused by the getter; it reads the children in order
    channels = course.config.fpn_channels
    backbone = BackboneWithFPN(
        body,
        return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
        in_channels_list=list(course.backbone.out_channels),
        out_channels=channels,
        extra_blocks=LastLevelP6P7(channels, channels),  # P6 from P5's output, as the FPN
    )
    return course, backbone


def build_fcos_peer(num_classes: int) -> TorchvisionPeer:
    """torchvision FCOS on the course preset's backbone (with its pre-trained weights)."""
    course, backbone = peer_backbone(num_classes)
    channels = course.config.fpn_channels
    size = schedules_for(COURSE)["cpu"].img_size
    detector = FCOS(
        backbone, num_classes, min_size=size, max_size=size,
        image_mean=list(course.config.pixel_mean), image_std=list(course.config.pixel_std),
        head=FCOSHead(channels, 1, num_classes, num_convs=course.config.stacked_convs),
        score_thresh=0.05, nms_thresh=0.6, detections_per_img=100, topk_candidates=1000,
    )  # fmt: skip
    return TorchvisionPeer(detector, "torchvision-fcos", num_classes)


def run(model: nn.Module, schedule, data: Path, every: int, pretrained: bool) -> dict:
    """Train ``model`` on ``schedule``; metrics after every ``every`` steps, timings."""
    start = time.monotonic()
    train_set, val_set = _load(data, "train"), _load(data, "val")
    snapshots, stamps = {}, []

    def keep(step: int, network: nn.Module) -> None:
        stamps.append(time.monotonic())
        if step % every == 0:
            snapshots[step] = copy.deepcopy(network).to(memory_format=torch.contiguous_format)

    print(f"{model.name}: {schedule}", flush=True)
    train(
        model, build_train_set(train_set, schedule), schedule, progress=False,
        context=init_distributed("cpu"), on_step=keep, pretrained=pretrained,
    )  # fmt: skip
    metrics = _score(snapshots, val_set, schedule.img_size)
    step_times = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    step_times = step_times[5:] or step_times  # the first steps warm the caches up
    return {
        "metrics": metrics,
        "s_per_step": statistics.mean(step_times),
        "wall_minutes": (time.monotonic() - start) / 60,
    }


def compare(
    argv: list[str] | None,
    course: str,
    build_peer: Callable[[int], nn.Module],
    description: str,
    out: str,
    steps: int = 500,
    overrides: bool = False,
) -> int:
    """The command line of a side-by-side benchmark: the course's ``course`` preset and
    the peer that ``build_peer(num_classes)`` makes, on the course's ``cpu`` schedule.

    ``steps`` is the default of ``--steps``. With ``overrides``, ``--set FIELD=VALUE``
    changes the schedule of both runs (only for a peer that takes its image size from
    the batches, not from the preset)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--data", type=Path, default=Path("data/shapes"))
    parser.add_argument("--out", type=Path, default=Path(out))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="of weights, sampler, augmentation")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--peer-only", action="store_true")
    which.add_argument("--course-only", action="store_true")
    if overrides:
        parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.every < 1 or args.steps % args.every:
        parser.error("--steps must be a positive multiple of --every")
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data if (args.data / "annotations").is_dir() else ensure_shapes(args.data)
    torch.set_num_threads(args.threads)
    num_classes = _load(data, "val").num_classes
    schedule = schedules_for(course)["cpu"].replace(iterations=args.steps, threads=args.threads)
    schedule = dataclasses.replace(
        schedule, max_minutes=None, lr_by_time=False, amp=False, seed=args.seed
    )
    schedule = schedule.replace(**parse_overrides(schedule, getattr(args, "set", [])))

    results = {}
    if not args.peer_only:
        seed_everything(schedule.seed)
        results[course] = run(
            build_detector(course, num_classes=num_classes), schedule, data, args.every, True
        )
    peer_name = None
    if not args.course_only:
        seed_everything(schedule.seed)
        peer = build_peer(num_classes)
        peer_name = peer.name
        results[peer_name] = run(peer, schedule, data, args.every, False)

    rows = [
        {"detector": name, "step": step} | metrics
        for name, result in results.items()
        for step, metrics in result["metrics"].items()
    ]
    pd.DataFrame(rows).to_csv(args.out / f"{Path(out).name.replace('-', '_')}.csv", index=False)
    table = pd.DataFrame(
        {
            name: {f"AP50 @{step}": m["AP50"] for step, m in result["metrics"].items()}
            | {f"AP @{args.steps}": result["metrics"][args.steps]["AP"]}
            | {"s / step": result["s_per_step"], "wall min": result["wall_minutes"]}
            for name, result in results.items()
        }
    ).T
    print(table.to_string(float_format="{:.3f}".format))
    if len(results) == 2:
        ours, theirs = results[course], results[peer_name]
        print(f"step time, {course} / {peer_name}: "
              f"{ours['s_per_step'] / theirs['s_per_step']:.2f}")  # fmt: skip
        gap = ours["metrics"][args.steps]["AP50"] - theirs["metrics"][args.steps]["AP50"]
        print(f"AP50 after {args.steps} steps, course minus {peer_name}: {gap:+.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return compare(argv, COURSE, build_fcos_peer, __doc__.split("\n")[0], "runs/atss-peer")


if __name__ == "__main__":
    sys.exit(main())
