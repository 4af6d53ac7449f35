"""Train a detector on its `cpu` schedule and measure AP50 against wall-clock minutes.

    python benchmarks/cpu_budget.py --model yolov3-tiny [--data data/shapes]
        [--out runs/<model>-budget] [--schedule cpu] [--snapshot-seconds 60]
        [--set field=value ...]

``--set`` changes fields of the schedule (``--set img_size=256 --set lr=0.001``), to
compare variants of a schedule under the same measurement.

One run of the engine's trainer, exactly as ``python -m detutils.train`` runs it (same
schedule, data, transforms and seed), timed from the start of this script to the end
of the trainer's own evaluation of the validation split: that total is the figure the
schedule's time budget is about. While it trains, a copy of the weights is kept every
``--snapshot-seconds`` (a copy in memory takes milliseconds, so the timed run is
hardly touched); once the run is over, every copy is evaluated on the validation
split, which gives the curve of AP50 against the minutes spent up to that copy.

The load average of the machine (``os.getloadavg``) is printed before and after:
other work on the same cores slows the run, and the numbers mean little without it.
Writes ``budget_curve.csv`` (minutes, iteration, AP, AP50, ...) into the run folder.
"""

import argparse
import copy
import os
import sys
import time
from pathlib import Path

START = time.monotonic()  # before the heavy imports: the budget counts them too

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from detutils.data.coco import CocoDetection, find_split  # noqa: E402
from detutils.data.mosaic import build_train_set  # noqa: E402
from detutils.data.transforms import build_transforms  # noqa: E402
from detutils.distributed import init_distributed  # noqa: E402
from detutils.engine.evaluator import evaluate  # noqa: E402
from detutils.engine.loader import build_eval_loader  # noqa: E402
from detutils.engine.presets import schedules_for  # noqa: E402
from detutils.engine.schedule import TrainSchedule  # noqa: E402
from detutils.engine.trainer import seed_everything, train  # noqa: E402
from detutils.models import build_detector  # noqa: E402

__all__ = ["SnapshotRecorder", "main", "parse_overrides"]


class SnapshotRecorder:
    """Wraps ``model.loss`` to keep a copy of the weights every ``every_seconds``.

    A copy is taken when the loss of an iteration is computed, so it holds the weights
    after the steps before it: copy ``k`` at iteration ``i`` is the model after ``i - 1``
    steps. Each is stored with the minutes since ``start`` and that step count.
    """

    def __init__(self, model: torch.nn.Module, every_seconds: float, start: float) -> None:
        self.model, self.every, self.start = model, every_seconds, start
        self.snapshots: list[tuple[float, int, dict]] = []
        self.steps, self.next_time = 0, time.monotonic() + every_seconds
        self.loss = model.loss
        model.loss = self._loss  # instance attribute: the trainer calls model.loss

    def _loss(self, outputs, targets):
        now = time.monotonic()
        if now >= self.next_time:
            state = copy.deepcopy(self.model.state_dict())
            self.snapshots.append(((now - self.start) / 60, self.steps, state))
            self.next_time = now + self.every
        self.steps += 1
        return self.loss(outputs, targets)

    def detach(self) -> None:
        """Give the model its own ``loss`` back."""
        del self.model.loss


def parse_overrides(schedule: TrainSchedule, pairs: list[str]) -> dict:
    """``["lr=0.001", "augment=false"]`` to ``{"lr": 0.001, "augment": False}``.

    A value takes the type of the field's current value in ``schedule`` (a field that
    is ``None``, such as ``max_minutes``, takes a float, or ``none``).
    """
    overrides = {}
    for pair in pairs:
        name, _, text = pair.partition("=")
        if not hasattr(schedule, name) or not text:
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE with a schedule field")
        current = getattr(schedule, name)
        if text.lower() == "none":
            overrides[name] = None
        elif isinstance(current, bool):
            overrides[name] = text.lower() in ("1", "true", "yes")
        elif isinstance(current, int):
            overrides[name] = int(text)
        elif isinstance(current, float) or current is None:
            overrides[name] = float(text)
        else:
            overrides[name] = text
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/shapes"))
    parser.add_argument("--out", type=Path, default=None, help="default runs/<model>-budget")
    parser.add_argument("--model", required=True, help="a detector name, e.g. yolov3-tiny")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--schedule", default="cpu", choices=["ci", "cpu", "gpu"])
    parser.add_argument("--snapshot-seconds", type=float, default=60.0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)

    train_set = CocoDetection(*find_split(args.data, "train"))
    val_set = CocoDetection(*find_split(args.data, "val"))
    seed_everything(0)  # as the command line does, before building the model
    model = build_detector(args.model, num_classes=train_set.num_classes)
    schedule = schedules_for(model)[args.schedule]
    schedule = schedule.replace(**parse_overrides(schedule, args.set))
    args.out = args.out or Path("runs") / f"{args.model}-budget"
    train_set = build_train_set(train_set, schedule)
    val_set.transforms = build_transforms(schedule.img_size, train=False)
    print(f"schedule {args.schedule}: {schedule}", flush=True)
    recorder = SnapshotRecorder(model, args.snapshot_seconds, START)
    context = init_distributed(args.device)
    result = train(
        model, train_set, schedule, val_set=val_set, out_dir=args.out, progress=False,
        context=context,
    )  # fmt: skip
    total_minutes = (time.monotonic() - START) / 60
    recorder.detach()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"{result.iterations} iterations, {result.epochs_done} epochs (out of time: "
        f"{result.out_of_time}); wall clock with evaluation: {total_minutes:.2f} min"
    )
    print("final:", "  ".join(f"{name} {value:.4f}" for name, value in result.metrics.items()))

    rows = []
    loader = build_eval_loader(val_set, schedule.batch_size, context, workers=0)
    evaluated = copy.deepcopy(model)
    for minutes, steps, state in recorder.snapshots:
        evaluated.load_state_dict(state)
        metrics = evaluate(evaluated, loader, context.device).metrics
        rows.append({"minutes": minutes, "iteration": steps} | metrics)
        print(f"{minutes:6.2f} min  {steps:5d} it  AP50 {metrics['AP50']:.4f}", flush=True)
    rows.append({"minutes": total_minutes, "iteration": result.iterations} | result.metrics)
    curve = pd.DataFrame(rows)
    curve.to_csv(args.out / "budget_curve.csv", index=False)
    print(curve.to_string(index=False, float_format="{:.4f}".format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
