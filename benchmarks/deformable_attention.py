"""Deformable attention against dense attention over the same tokens: time and memory.

    python benchmarks/deformable_attention.py [--sizes 256 512 800] [--threads 1]
        [--repeats 3] [--device cpu]

The encoder of Deformable DETR attends from every token of four flattened levels
(strides 8 to 64) to the same tokens. For a square image of each size, this script
times one forward and backward pass of that self-attention, width 256, 8 heads, batch
1, done two ways:

- deformable: the course's ``MultiScaleDeformableAttention`` (4 levels x 4 points per
  head), the pure-PyTorch op on ``grid_sample``;
- dense: ``torch.nn.MultiheadAttention`` over all S tokens, through PyTorch's fused
  scaled dot-product attention (which never stores the S x S weights: memory grows like
  S, time like S^2);
- stored: the same with the weights of every head returned, the S x S maps that DETR's
  encoder keeps (only up to 2 GiB of them: larger sizes are skipped).

Each measurement runs in a fresh process: after one warm-up pass, the peak resident
memory (CPU, Linux: the peak is reset through ``/proc/self/clear_refs``) or the peak
allocated memory (CUDA) above what the process held before the timed passes. The script prints
S, the attention weights per head that each way computes (S x S against S x 16), the
times, the memories, and the ratios dense / deformable.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from detutils.models.deformable_attention import MultiScaleDeformableAttention
from detutils.models.deformable_detr import encoder_reference_points

STRIDES = (8, 16, 32, 64)
DIMS, HEADS, LEVELS, POINTS = 256, 8, 4, 4


def level_shapes(size: int) -> torch.Tensor:
    """(H_l, W_l) of the four levels of a square image (each level halves, rounding up)."""
    side = size // STRIDES[0]
    shapes = []
    for _ in STRIDES:
        shapes.append((side, side))
        side = (side + 1) // 2
    return torch.tensor(shapes)


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> int:
    """Reset the process's peak resident memory (Linux) and return the current one."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    return _status_bytes("VmRSS")


def _peak_rss() -> int:
    return _status_bytes("VmHWM")


def measure(kind: str, size: int, repeats: int, device: str) -> dict[str, float]:
    """Time (s, median of ``repeats`` after one warm-up) and peak memory (MiB) of one
    forward + backward pass; meant to run alone in its process."""
    torch.manual_seed(0)
    shapes = level_shapes(size).to(device)
    num_tokens = int(shapes.prod(1).sum())
    tokens = torch.randn(1, num_tokens, DIMS, device=device, requires_grad=True)
    pos = torch.randn(1, num_tokens, DIMS, device=device)
    if kind == "deformable":
        module = MultiScaleDeformableAttention(DIMS, HEADS, LEVELS, POINTS, dropout=0.0)
        reference = encoder_reference_points(shapes, LEVELS)[None]

        def step() -> torch.Tensor:
            return module(tokens, tokens, reference, shapes, query_pos=pos)
    else:
        module = nn.MultiheadAttention(DIMS, HEADS, batch_first=True)
        stored = kind == "stored"  # the S x S weights of every head kept (DETR's way)

        def step() -> torch.Tensor:
            with_pos = tokens + pos
            attended = module(
                with_pos, with_pos, tokens, need_weights=stored, average_attn_weights=False
            )[0]
            return tokens + attended

    module.to(device)

    def synchronise() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def timed() -> float:
        synchronise()
        start = time.perf_counter()
        step().sum().backward()
        synchronise()
        return time.perf_counter() - start

    timed()  # warm-up: loads the kernels, whose code would count as memory
    tokens.grad = None
    module.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _reset_peak_rss()
    times = [timed() for _ in range(repeats)]
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _peak_rss() - base
    return {"seconds": statistics.median(times), "mib": peak / 2**20, "tokens": num_tokens}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 800])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--one", nargs=2, metavar=("KIND", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.one:  # the child process: one measurement, printed as JSON
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.repeats, args.device)))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    print(
        f"self-attention over 4 levels (strides 8-64), width {DIMS}, {HEADS} heads, batch 1, "
        f"forward + backward, {args.device}, {args.threads} thread(s)"
    )
    header = (
        f"{'px':>5} {'S':>6} {'weights/head':>13} {'deformable':>11} | "
        f"{'seconds: dense':>14} {'stored':>7} {'deformable':>10} {'ratio':>6} | "
        f"{'MiB: dense':>10} {'stored':>7} {'deformable':>10} {'ratio':>6}"
    )
    print(header)
    print("(ratio: dense / deformable; weights/head: S x S dense, S x levels x points deformable)")
    for size in args.sizes:
        tokens = int(level_shapes(size).prod(1).sum())
        results = {}
        for kind in ("dense", "stored", "deformable"):
            if kind == "stored" and HEADS * tokens**2 * 4 > 2 * 2**30:
                continue
            command = [
                sys.executable, __file__, "--one", kind, str(size), "--threads",
                str(args.threads), "--repeats", str(args.repeats), "--device", args.device,
            ]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                print(f"{size} px {kind}: failed ({done.stderr.strip().splitlines()[-1]})")
                continue
            results[kind] = json.loads(done.stdout.strip().splitlines()[-1])
        if "dense" not in results or "deformable" not in results:
            continue
        dense, deformable = results["dense"], results["deformable"]
        stored = results.get("stored")
        stored_s = f"{stored['seconds']:>7.3f}" if stored else f"{'-':>7}"
        stored_mib = f"{stored['mib']:>7.0f}" if stored else f"{'-':>7}"
        print(
            f"{size:>5} {tokens:>6} {tokens * tokens:>13,} {tokens * LEVELS * POINTS:>11,} | "
            f"{dense['seconds']:>14.3f} {stored_s} {deformable['seconds']:>10.3f} "
            f"{dense['seconds'] / deformable['seconds']:>6.2f} | "
            f"{dense['mib']:>10.0f} {stored_mib} {deformable['mib']:>10.0f} "
            f"{dense['mib'] / max(deformable['mib'], 1e-6):>6.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
