"""The three commands: train, evaluate and predict.

    python -m detutils.train --model NAME --data DIR [--schedule ci|cpu|gpu] [--epochs N]
        [--iterations N] [--batch N] [--img-size S] [--lr LR] [--device auto|cpu|cuda] [--amp]
        [--workers N] [--out runs/NAME] [--resume CKPT]
    python -m detutils.evaluate --model NAME --ckpt CKPT --data DIR
    python -m detutils.predict --model NAME --ckpt CKPT --image PATH --out PNG

``NAME`` is a name of ``detutils.models.DETECTORS`` or ``module:factory``. A mistake
of the user (an unknown model, a missing data folder, a checkpoint of another model)
ends with one line on stderr and exit status 2, never a traceback.
"""

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from detutils import SCHEDULES, current_schedule
from detutils.distributed import cleanup_distributed, init_distributed, resolve_device
from detutils.engine.checkpoint import CheckpointError, inference_state_dict, load_checkpoint
from detutils.engine.presets import schedules_for
from detutils.engine.schedule import TrainSchedule

__all__ = ["UsageError", "evaluate_main", "load_detector", "predict_main", "train_main"]

TRAIN_HELP = """Train a detector on a COCO-format set (its train and, if present, val split).

Options left out take the value of the schedule (ci, cpu or gpu), which the detector's
config holds; --resume continues a run with the schedule stored in its checkpoint.

examples:
  python -m detutils.train --model tests.tiny_detector:build --data data/shapes --schedule ci
  python -m detutils.train --model NAME --data DIR --schedule gpu --amp --workers 8
  torchrun --nproc_per_node=4 -m detutils.train --model NAME --data DIR --schedule gpu
"""
EVALUATE_HELP = """COCO metrics (pycocotools) of a checkpoint on a split of a COCO-format set."""
PREDICT_HELP = """Detect the objects of one image and draw them into a PNG file."""


class UsageError(Exception):
    """A mistake on the command line: reported in one line, without a traceback."""


def _run(program: str, command: Callable[[], int]) -> int:
    """Run ``command``; a UsageError becomes one line on stderr and exit status 2."""
    try:
        return command()
    except UsageError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        return 2
    finally:
        cleanup_distributed()


def _build(name: str, num_classes: int) -> nn.Module:
    from detutils.models import build_detector

    try:
        return build_detector(name, num_classes=num_classes)
    except ValueError as error:
        raise UsageError(error) from None


def _dataset(data: Path, split: str, required: bool = True):
    """The ``split`` of the COCO-format set in ``data`` (transforms set by the caller)."""
    from detutils.data.coco import CocoDetection, CocoFormatError, find_split

    if not data.is_dir():
        raise UsageError(f"data directory {data} not found")
    try:
        image_dir, ann_file = find_split(data, split)
    except FileNotFoundError as error:
        if not required:
            return None
        raise UsageError(error) from None
    try:
        return CocoDetection(image_dir, ann_file)
    except (FileNotFoundError, CocoFormatError) as error:
        raise UsageError(error) from None


def _checkpoint(path: Path) -> dict[str, Any]:
    try:
        return load_checkpoint(path)
    except (FileNotFoundError, CheckpointError) as error:
        raise UsageError(error) from None


def load_detector(name: str, checkpoint: dict[str, Any], path: Path | str = "") -> nn.Module:
    """Build detector ``name`` for the checkpoint's classes and load its weights.

    The EMA weights are used when the run kept them.

    Raises:
        UsageError: the checkpoint holds another model.
    """
    model = _build(name, checkpoint["num_classes"])
    if model.name != checkpoint["model_name"]:
        raise UsageError(
            f"checkpoint {path} holds model {checkpoint['model_name']!r}, not {model.name!r}"
        )
    model.load_state_dict(inference_state_dict(checkpoint))
    return model.eval()


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="detector name, or module:factory")
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA if present"
    )
    parser.add_argument("--img-size", type=int, help="network input side, px (schedule's)")


def train_main(argv: list[str] | None = None) -> int:
    """``python -m detutils.train``: train a detector on a COCO-format set."""
    parser = argparse.ArgumentParser(
        prog="python -m detutils.train",
        description=TRAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common_arguments(parser)
    parser.add_argument("--data", required=True, type=Path, help="COCO-format set (train, val)")
    parser.add_argument(
        "--schedule", choices=SCHEDULES, help="default: $DETUTILS_SCHEDULE, else gpu or cpu"
    )
    parser.add_argument("--epochs", type=int, help="passes over the training set")
    parser.add_argument(
        "--iterations", type=int, help="optimizer steps of the whole run (instead of epochs)"
    )
    parser.add_argument("--batch", type=int, help="images per step and per process")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, help="mixed precision")
    parser.add_argument("--workers", type=int, help="DataLoader workers")
    parser.add_argument("--seed", type=int, help="seed of weights, sampler and augmentation")
    parser.add_argument("--max-minutes", type=float, help="time budget: stop, then evaluate")
    parser.add_argument("--out", type=Path, help="run folder; default runs/<model name>")
    parser.add_argument("--resume", type=Path, help="continue from this checkpoint")
    parser.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="load the backbone weights the model's config names (default: yes)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    return _run(parser.prog, lambda: _train(args))


def _train(args: argparse.Namespace) -> int:
    from detutils.data.mosaic import build_train_set
    from detutils.data.transforms import build_transforms
    from detutils.engine.trainer import NonFiniteLossError, seed_everything, train

    try:
        schedule_name = args.schedule or current_schedule()
    except ValueError as error:
        raise UsageError(error) from None
    if not args.data.is_dir():
        raise UsageError(f"data directory {args.data} not found")
    checkpoint = _checkpoint(args.resume) if args.resume is not None else None
    # The classes come from the training annotations; the transforms are set once the
    # schedule (which the detector's config holds) gives the image size.
    train_set = _dataset(args.data, "train")
    val_set = _dataset(args.data, "val", required=False)
    try:
        context = init_distributed(args.device)
    except ValueError as error:
        raise UsageError(error) from None
    seed_everything(args.seed or 0)
    model = _build(args.model, train_set.num_classes)
    if checkpoint is not None:
        if checkpoint["model_name"] != model.name:
            raise UsageError(
                f"checkpoint {args.resume} holds model {checkpoint['model_name']!r}, "
                f"not {model.name!r}"
            )
        if checkpoint["num_classes"] != train_set.num_classes:
            raise UsageError(
                f"checkpoint {args.resume} has {checkpoint['num_classes']} classes, "
                f"{args.data} {train_set.num_classes}"
            )
        base = TrainSchedule.from_dict(checkpoint["schedule"])
    else:
        schedules = schedules_for(model)
        if schedule_name not in schedules:
            raise UsageError(f"model {model.name!r} has no {schedule_name!r} schedule")
        base = schedules[schedule_name]
    # --epochs alone replaces a schedule given in iterations; --iterations wins over both.
    iterations = 0 if args.epochs is not None and args.iterations is None else args.iterations
    overrides = {
        "epochs": args.epochs,
        "iterations": iterations,
        "batch_size": args.batch,
        "img_size": args.img_size,
        "lr": args.lr,
        "amp": args.amp,
        "workers": args.workers,
        "seed": args.seed,
        "max_minutes": args.max_minutes,
    }
    try:
        schedule = base.replace(**overrides)
    except ValueError as error:
        raise UsageError(error) from None
    train_set = build_train_set(train_set, schedule)
    if val_set is not None:
        val_set.transforms = build_transforms(schedule.img_size, train=False)
    out_dir = args.out or Path("runs") / model.name
    if context.is_main:
        processes = f" x {context.world_size} processes" if context.distributed else ""
        print(f"{model.name} on {args.data} ({len(train_set)} training images)")
        print(f"device: {context.device}{processes}")
        origin = f"from {args.resume}" if checkpoint is not None else schedule_name
        print(f"schedule ({origin}): {schedule}")
    from detutils.engine.pretrain import PretrainedWeightsError

    try:
        result = train(
            model, train_set, schedule, val_set=val_set, out_dir=out_dir, resume=args.resume,
            progress=not args.quiet, context=context, pretrained=args.pretrained,
        )  # fmt: skip
    except NonFiniteLossError as error:
        print(f"python -m detutils.train: stopped: {error}", file=sys.stderr)
        return 1
    except PretrainedWeightsError as error:
        raise UsageError(str(error)) from None
    if context.is_main:
        metrics = "  ".join(f"{name} {value:.4f}" for name, value in result.metrics.items())
        stop = " (time budget spent)" if result.out_of_time else ""
        print(f"{result.epochs_done} epochs, {result.iterations} iterations{stop}")
        print(f"checkpoint: {result.checkpoint}\n{metrics}")
    return 0


def evaluate_main(argv: list[str] | None = None) -> int:
    """``python -m detutils.evaluate``: COCO metrics of a checkpoint."""
    parser = argparse.ArgumentParser(
        prog="python -m detutils.evaluate",
        description=EVALUATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common_arguments(parser)
    parser.add_argument("--ckpt", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    parser.add_argument("--batch", type=int, default=8, help="images per batch (default: 8)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (default: 0)")
    args = parser.parse_args(argv)
    return _run(parser.prog, lambda: _evaluate(args))


def _evaluate(args: argparse.Namespace) -> int:
    from detutils.data.transforms import build_transforms
    from detutils.engine.evaluator import evaluate
    from detutils.engine.loader import build_eval_loader

    checkpoint = _checkpoint(args.ckpt)
    model = load_detector(args.model, checkpoint, args.ckpt)
    img_size = args.img_size or checkpoint["schedule"]["img_size"]
    dataset = _dataset(args.data, args.split)
    dataset.transforms = build_transforms(img_size, train=False)
    if dataset.num_classes != model.num_classes:
        raise UsageError(
            f"{args.data} has {dataset.num_classes} classes, the checkpoint {model.num_classes}"
        )
    try:
        context = init_distributed(args.device)
    except ValueError as error:
        raise UsageError(error) from None
    model.to(context.device)
    loader = build_eval_loader(dataset, args.batch, context, args.workers)
    result = evaluate(model, loader, context.device)
    if context.is_main:
        print(f"{model.name} on {args.data} {args.split} ({result.num_images} images)")
        print(result)
        print(result.per_class.to_string(float_format="{:.4f}".format))
    return 0


def predict_main(argv: list[str] | None = None) -> int:
    """``python -m detutils.predict``: draw the detections of one image."""
    parser = argparse.ArgumentParser(
        prog="python -m detutils.predict",
        description=PREDICT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common_arguments(parser)
    parser.add_argument("--ckpt", required=True, type=Path)
    parser.add_argument("--image", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="PNG file to write")
    parser.add_argument("--score-thr", type=float, default=0.25, help="(default: 0.25)")
    parser.add_argument("--iou-thr", type=float, default=0.6, help="NMS IoU (default: 0.6)")
    parser.add_argument("--max-det", type=int, default=100, help="(default: 100)")
    args = parser.parse_args(argv)
    return _run(parser.prog, lambda: _predict(args))


def _predict(args: argparse.Namespace) -> int:
    from detutils.engine.predict import draw_detections, predict_image, read_image

    checkpoint = _checkpoint(args.ckpt)
    model = load_detector(args.model, checkpoint, args.ckpt)
    try:
        image = read_image(args.image)
        device = resolve_device(args.device)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(error) from None
    img_size = args.img_size or checkpoint["schedule"]["img_size"]
    detections = predict_image(
        model.to(device), image, img_size, args.score_thr, args.iou_thr, args.max_det
    )
    names = checkpoint["class_names"] or [str(label) for label in range(model.num_classes)]
    draw_detections(image, detections, names, args.out)
    columns = (detections[key].tolist() for key in ("boxes", "scores", "labels"))
    for box, score, label in zip(*columns, strict=True):
        corners = " ".join(f"{value:.1f}" for value in box)
        print(f"{names[label]:>12s} {score:.4f}  {corners}")
    print(f"{len(detections['scores'])} detections drawn to {args.out}")
    return 0
