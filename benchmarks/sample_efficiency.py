"""AP50 after a fixed number of steps, for every detector, beside ultralytics' YOLOv8n.

    python benchmarks/sample_efficiency.py [--models yolov8n nanodet-m yolov3-tiny]
        [--steps 500] [--every 100] [--peer] [--data data/shapes]
        [--out runs/sample-efficiency] [--threads 2] [--set field=value ...]

What no CPU changes is how much a detector learns from a number of optimizer steps:
each detector trains on its own ``cpu`` schedule, in float32 (``amp`` off, whatever
this CPU supports), for exactly ``--steps`` steps of 16 images (no time guard), and the
weights that evaluation would use (the EMA where the schedule keeps one) are kept after
every ``--every`` steps and scored on the validation split (pycocotools' COCOeval)
once training is over. What the CPU does change is printed beside it: the mean time of
a training step (data included, the first five left out) and the wall time of the
whole run with its evaluations.

``--peer`` also trains ultralytics' own YOLOv8n on the same set, at the image size of
the course's YOLOv8n schedule, with the same batch and step count, and prints both AP50
curves and the ratio of the step times, and what ultralytics' own validator reports for
its last weights (``benchmarks/ultralytics_peer.py``; needs
``pip install -e '.[bench]'``). A benchmark run should have the machine to itself:
another job on the same cores slows whichever model runs beside it.

Writes ``sample_efficiency.csv`` (one row per detector and snapshot) into ``--out``,
and, as each detector finishes, its record ``<detector>.json`` into ``--results``
(default ``results/sample_efficiency/``, kept in the repository): the preset, its
parameters, the schedule's batch and image size, the threads, the CPU, the mean step
time, the load average before, during (at each snapshot) and after training, the
process's CPU time per second of training (about the thread count when the run had
the cores to itself), and the COCO metrics of every snapshot.
Notebook 91 reads these records to build the course's results table.
"""

import argparse
import copy
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for ultralytics_peer

from cpu_budget import parse_overrides  # noqa: E402

from detutils.data.coco import CocoDetection, find_split  # noqa: E402
from detutils.data.mosaic import build_train_set  # noqa: E402
from detutils.data.shapes import ensure_shapes  # noqa: E402
from detutils.data.transforms import build_transforms  # noqa: E402
from detutils.distributed import init_distributed  # noqa: E402
from detutils.engine.evaluator import evaluate  # noqa: E402
from detutils.engine.loader import build_eval_loader  # noqa: E402
from detutils.engine.presets import schedules_for  # noqa: E402
from detutils.engine.trainer import seed_everything, train  # noqa: E402
from detutils.models import build_detector  # noqa: E402

__all__ = ["main", "run_course_detector"]

DEFAULT_MODELS = ["yolov8n", "nanodet-m", "yolov3-tiny"]


def _load(data: Path, split: str) -> CocoDetection:
    return CocoDetection(*find_split(data, split))


def _score(snapshots: dict, val_set, img_size: int) -> dict[int, dict[str, float]]:
    """COCO metrics of every kept network, by step."""
    val_set.transforms = build_transforms(img_size, train=False)
    loader = build_eval_loader(val_set, 16, init_distributed("cpu"), workers=0)
    return {step: evaluate(network, loader, "cpu").metrics for step, network in snapshots.items()}


def run_course_detector(name: str, data: Path, steps: int, every: int, threads: int, sets):
    """Train one course detector for ``steps`` steps; metrics by step and timings."""
    start = time.monotonic()
    train_set, val_set = _load(data, "train"), _load(data, "val")
    # the schedules of the detector's name (a factory outside the package, module:factory,
    # may build a variant of a course detector under the course detector's name)
    named = build_detector(name, num_classes=train_set.num_classes).name
    schedule = schedules_for(named)["cpu"].replace(iterations=steps, amp=False, threads=threads)
    # no time guard: exactly `steps` steps (replace() leaves fields given None alone)
    schedule = dataclasses.replace(schedule, max_minutes=None, lr_by_time=False)
    schedule = schedule.replace(**parse_overrides(schedule, sets))
    seed_everything(schedule.seed)  # as the command line does, before building the model
    model = build_detector(name, num_classes=train_set.num_classes)
    snapshots, stamps, loads = {}, [], []
    cpu_start, wall_start = time.process_time(), time.monotonic()

    def keep(step: int, network: torch.nn.Module) -> None:
        stamps.append(time.monotonic())
        if step % every == 0:
            snapshots[step] = copy.deepcopy(network).to(memory_format=torch.contiguous_format)
            loads.append(os.getloadavg()[0])  # what else the machine was doing meanwhile

    print(f"{name}: {schedule}", flush=True)
    train(
        model, build_train_set(train_set, schedule), schedule, progress=False,
        context=init_distributed("cpu"), on_step=keep,
    )  # fmt: skip
    cpu_per_wall = (time.process_time() - cpu_start) / (stamps[-1] - wall_start)
    metrics = _score(snapshots, val_set, schedule.img_size)
    step_times = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    step_times = step_times[5:] or step_times  # the first steps warm the caches up
    return {
        "metrics": metrics,
        "s_per_step": statistics.mean(step_times),
        "wall_minutes": (time.monotonic() - start) / 60,
        "img_size": schedule.img_size,
        "batch_size": schedule.batch_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "load_during": loads,
        "cpu_per_wall": cpu_per_wall,
        "snapshots": snapshots,
    }


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_record(folder: Path, name: str, result: dict, threads: int, load: list[float]) -> Path:
    """One detector's record of this run, as JSON: what notebook 91 reads."""
    record = {
        "detector": name,
        "parameters": result["parameters"],
        "img_size": result["img_size"],
        "batch_size": result["batch_size"],
        "steps": max(result["metrics"]),
        "threads": threads,
        "dtype": "float32",
        "s_per_step": round(result["s_per_step"], 4),
        "wall_minutes": round(result["wall_minutes"], 2),
        "load_average": [round(x, 2) for x in load],
        "load_during_training": [round(x, 2) for x in result.get("load_during", [])],
        "cpu_per_wall": round(result.get("cpu_per_wall", float("nan")), 2),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "metrics": {str(step): {k: round(float(v), 4) for k, v in metrics.items()}
                    for step, metrics in sorted(result["metrics"].items())},
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def run_peer(data: Path, out: Path, img_size: int, steps: int, every: int, threads: int):
    from ultralytics_peer import train_ultralytics

    start = time.monotonic()
    val_set = _load(data, "val")  # the peer reads its own copy of the training set
    result = train_ultralytics(data, out / "ultralytics", img_size, steps, every, threads)
    metrics = _score(result["snapshots"], val_set, img_size)
    return {
        "metrics": metrics,
        "s_per_step": statistics.mean(result["step_times"][5:] or result["step_times"]),
        "wall_minutes": (time.monotonic() - start) / 60,
        "img_size": img_size,
        "own_ap50": result["own_ap50"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--peer", action="store_true", help="also ultralytics' YOLOv8n")
    parser.add_argument("--data", type=Path, default=Path("data/shapes"))
    parser.add_argument("--out", type=Path, default=Path("runs/sample-efficiency"))
    parser.add_argument("--results", type=Path, default=Path("results/sample_efficiency"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.every < 1 or args.steps % args.every:
        parser.error("--steps must be a positive multiple of --every")
    args.out.mkdir(parents=True, exist_ok=True)
    # a set that exists is used as it is; the default one is generated when absent
    data = args.data if (args.data / "annotations").is_dir() else ensure_shapes(args.data)
    torch.set_num_threads(args.threads)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)

    results = {}
    for name in args.models:
        load = os.getloadavg()[0]
        results[name] = run_course_detector(
            name, data, args.steps, args.every, args.threads, args.set
        )
        if not args.set:  # a record is the detector's own schedule, nothing overridden
            path = write_record(
                args.results, name, results[name], args.threads, [load, os.getloadavg()[0]]
            )
            print(f"record: {path}", flush=True)
    if args.peer:  # at the image size the course's YOLOv8n trained at in this run
        preset = schedules_for("yolov8n")["cpu"]
        size = preset.replace(**parse_overrides(preset, args.set)).img_size
        results["ultralytics yolov8n"] = run_peer(
            data, args.out, size, args.steps, args.every, args.threads
        )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    rows = [
        {"detector": name, "img_size": result["img_size"], "step": step} | metrics
        for name, result in results.items()
        for step, metrics in result["metrics"].items()
    ]
    pd.DataFrame(rows).to_csv(args.out / "sample_efficiency.csv", index=False)
    table = pd.DataFrame(
        {
            name: {f"AP50 @{step}": m["AP50"] for step, m in result["metrics"].items()}
            | {f"AP @{args.steps}": result["metrics"][args.steps]["AP"]}
            | {"s / step": result["s_per_step"], "wall min": result["wall_minutes"]}
            | {"img px": result["img_size"]}
            for name, result in results.items()
        }
    ).T
    print(table.to_string(float_format="{:.3f}".format))
    if args.peer and "yolov8n" in results:
        ours, theirs = results["yolov8n"], results["ultralytics yolov8n"]
        ratio = ours["s_per_step"] / theirs["s_per_step"]
        print(f"step time, course YOLOv8n / ultralytics YOLOv8n: {ratio:.2f}")
        gap = ours["metrics"][args.steps]["AP50"] - theirs["metrics"][args.steps]["AP50"]
        print(f"AP50 after {args.steps} steps, course minus ultralytics: {gap:+.3f}")
    if args.peer:
        print(
            f"ultralytics' own validator on its last weights: AP50 "
            f"{results['ultralytics yolov8n']['own_ap50']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
