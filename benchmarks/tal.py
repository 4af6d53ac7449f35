"""Time and peak memory of the task-aligned assigner: dense (reference) vs chunked.

    python benchmarks/tal.py [--batch 16] [--boxes 10 100 500] [--size 640] [--repeats 3]

YOLOv8's setting: anchor points at strides 8, 16, 32 (8400 at 640 px), 80 classes,
topk 10, alpha 0.5, beta 6, on the CPU with one thread. Each (formulation, box count)
runs in a fresh Python process, so that one case's freed memory cannot hide another's.

How memory is measured: PyTorch's CPU tensors are not seen by ``tracemalloc``, so the
measure is the process's resident memory (RSS), which counts them. In the child process,
after the inputs are built, the kernel's RSS high-water mark is reset (``5`` written to
``/proc/self/clear_refs``); the peak is ``VmHWM`` after one call minus ``VmRSS`` before
it: the most memory the call held at once, inputs excluded. Large tensors are mapped
from and returned to the system directly, so the RSS follows them. Linux only; elsewhere
the peak is the growth of ``ru_maxrss``, which misses memory freed before the call.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from detutils.assigners.tal import assign_task_aligned, assign_task_aligned_dense
from detutils.priors import anchor_points

FORMULATIONS = {"dense": assign_task_aligned_dense, "chunked": assign_task_aligned}


def make_inputs(batch: int, boxes: int, size: int, classes: int, seed: int = 0):
    """Random predictions around the anchor points and random boxes, all images full."""
    generator = torch.Generator().manual_seed(seed)
    strides = (8, 16, 32)
    points, point_strides = anchor_points([(size // s, size // s) for s in strides], strides)
    num_anchors = len(points)
    pred_scores = torch.rand(batch, num_anchors, classes, generator=generator)
    distances = torch.rand(batch, num_anchors, 4, generator=generator) * 6 * point_strides[:, None]
    pred_boxes = torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)
    corner = torch.rand(batch, boxes, 2, generator=generator) * 0.9 * size
    side = 4 + torch.rand(batch, boxes, 2, generator=generator) * 0.4 * size
    gt_boxes = torch.cat([corner, (corner + side).clamp(max=size)], dim=-1)
    gt_labels = torch.randint(0, classes, (batch, boxes), generator=generator)
    gt_mask = torch.ones(batch, boxes, dtype=torch.bool)
    return pred_scores, pred_boxes, points, gt_labels, gt_boxes, gt_mask


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_bytes(function) -> tuple[int, str]:
    """Peak resident memory added by ``function()``, bytes, and the method used."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _status_kib("VmRSS")
        function()
        return (_status_kib("VmHWM") - before) * 1024, "VmHWM - VmRSS"
    except OSError:
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, else KiB
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        function()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * scale, "ru_maxrss"


def worker(args: argparse.Namespace) -> None:
    """One formulation, one box count: print peak memory and median times as JSON."""
    torch.set_num_threads(1)
    inputs = make_inputs(args.batch, args.worker_boxes, args.size, args.classes)
    assign = FORMULATIONS[args.worker]
    peak, method = peak_bytes(lambda: assign(*inputs))
    wall, cpu = [], []
    for _ in range(args.repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        assign(*inputs)
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    result = {"peak": peak, "method": method}
    result.update(wall=statistics.median(wall), cpu=statistics.median(cpu))
    print(json.dumps(result))


def run_case(args: argparse.Namespace, formulation: str, boxes: int) -> dict:
    command = [sys.executable, __file__, "--worker", formulation, "--worker-boxes", str(boxes)]
    for name in ("batch", "size", "classes", "repeats"):
        command += [f"--{name}", str(getattr(args, name))]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--boxes", type=int, nargs="+", default=[10, 100, 500])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=sorted(FORMULATIONS), help=argparse.SUPPRESS)
    parser.add_argument("--worker-boxes", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    torch.set_num_threads(1)
    small = make_inputs(2, 20, args.size, args.classes)
    for dense, chunked in zip(
        assign_task_aligned_dense(*small), assign_task_aligned(*small), strict=True
    ):
        assert torch.equal(dense, chunked), "dense and chunked results differ"

    num_anchors = sum((args.size // s) ** 2 for s in (8, 16, 32))
    print(
        f"Task-aligned assignment, {args.batch} images, {num_anchors} anchors, "
        f"{args.classes} classes, CPU, 1 thread, median of {args.repeats}:"
    )
    print("  boxes  formulation  peak MB   wall ms    CPU ms")
    rows = []
    for boxes in args.boxes:
        results = {name: run_case(args, name, boxes) for name in FORMULATIONS}
        for name, result in results.items():
            print(
                f"  {boxes:5d}  {name:11s} {result['peak'] / 1e6:8.1f}  "
                f"{result['wall'] * 1e3:8.1f}  {result['cpu'] * 1e3:8.1f}"
            )
        rows.append((boxes, results["dense"], results["chunked"]))
    print("  boxes  chunked / dense:  peak    wall     CPU")
    for boxes, dense, chunked in rows:
        print(
            f"  {boxes:5d}                  {chunked['peak'] / dense['peak']:6.3f}  "
            f"{chunked['wall'] / dense['wall']:6.3f}  {chunked['cpu'] / dense['cpu']:6.3f}"
        )
    print(f"  peak memory measured as {rows[0][1]['method']} (see the module docstring)")


if __name__ == "__main__":
    main()
