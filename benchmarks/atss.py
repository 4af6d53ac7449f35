"""Time ATSS: a loop of ``assign_atss`` over the images of a batch vs ``assign_atss_batched``.

    python benchmarks/atss.py [--priors cells|anchors] [--batch 16] [--boxes 20] [--size 320]
        [--repeats 15]

``cells``: NanoDet-m's setting, grid cells of side 5 x stride at strides 8, 16, 32 (2100
priors at 320 px). ``anchors``: the ATSS detector's, one anchor of side 8 x stride per
location at strides 8 to 128 (2134 anchors at 320 px). Top-k 9, on the CPU with one
thread. Prints the median wall-clock and CPU time of each and their ratios, after
checking that both give the same assignment.
"""

import argparse
import statistics
import time

import torch

from detutils.assigners import assign_atss, assign_atss_batched
from detutils.priors import anchor_boxes, grid_cells


def random_boxes(batch: int, boxes: int, size: int, seed: int = 0):
    """Boxes with integer corners (as annotations usually are) of 4 px up to 60 % of the image."""
    generator = torch.Generator().manual_seed(seed)
    corner = torch.randint(0, size - 4, (batch, boxes, 2), generator=generator)
    side = torch.randint(4, int(0.6 * size), (batch, boxes, 2), generator=generator)
    gt_boxes = torch.cat([corner, (corner + side).clamp(max=size)], dim=-1).float()
    gt_labels = torch.randint(0, 80, (batch, boxes), generator=generator)
    return gt_boxes, gt_labels, torch.ones(batch, boxes, dtype=torch.bool)


def median_seconds(function, repeats: int) -> tuple[float, float]:
    """Median wall-clock and median process CPU seconds of ``function()``.

    With one thread the CPU time is the work itself; the wall time also counts the
    waits for a core when other programs share the machine.
    """
    function()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--priors", choices=("cells", "anchors"), default="cells")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--boxes", type=int, default=20)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)

    if args.priors == "cells":
        sizes = [(args.size // stride, args.size // stride) for stride in (8, 16, 32)]
        cells, num_per_level = grid_cells(sizes, [8, 16, 32], cell_scale=5.0)
    else:  # ATSS's anchors: levels P3 to P7, sides rounded up
        strides = [8, 16, 32, 64, 128]
        sizes = [(-(-args.size // stride),) * 2 for stride in strides]
        cells = anchor_boxes(sizes, strides, octave_base_scale=8, scales_per_octave=1)
        num_per_level = [height * width for height, width in sizes]
    gt_boxes, gt_labels, gt_mask = random_boxes(args.batch, args.boxes, args.size)

    def loop():
        return [
            assign_atss(cells, num_per_level, gt_boxes[image], gt_labels[image])
            for image in range(args.batch)
        ]

    def batched():
        return assign_atss_batched(cells, num_per_level, gt_boxes, gt_labels, gt_mask)

    together = batched()
    for image, single in enumerate(loop()):
        for field, expected in zip(together, single, strict=True):
            assert torch.equal(field[image], expected), "batched and per-image results differ"

    loop_wall, loop_cpu = median_seconds(loop, args.repeats)
    batched_wall, batched_cpu = median_seconds(batched, args.repeats)
    print(
        f"ATSS, {args.batch} images x {args.boxes} boxes, {len(cells)} {args.priors}, CPU, "
        "1 thread, "
        f"median of {args.repeats}:"
    )
    print("                   wall ms    CPU ms")
    print(f"  per-image loop  {loop_wall * 1e3:8.2f}  {loop_cpu * 1e3:8.2f}")
    print(f"  batched         {batched_wall * 1e3:8.2f}  {batched_cpu * 1e3:8.2f}")
    print(f"  ratio           {loop_wall / batched_wall:8.2f}  {loop_cpu / batched_cpu:8.2f}")


if __name__ == "__main__":
    main()
