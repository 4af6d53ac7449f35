"""Co-DETR beside the plain Deformable DETR on the same budget: AP50 against steps, step time.

    python benchmarks/co_detr.py [--steps 500] [--every 100] [--data data/shapes]
        [--out runs/co-detr] [--threads 2] [--set FIELD=VALUE ...]

Both detectors are the course's CPU presets, ``deformable-detr-r18half-d128`` and
``co-deformable-detr-r18half-d128`` (the same network with mixed query selection, look
forward twice and the auxiliary heads), trained on the same ``cpu`` schedule (Deformable
DETR's: AdamW 2e-4, a tenth for the backbone, offsets and reference points, clipping at
0.1, 8 images of 320 px a step), from the course's pre-trained backbone and the same
seed, in float32, for exactly ``--steps`` steps (no time guard), through
``benchmarks/sample_efficiency.py``'s runner: the networks kept every ``--every`` steps are
scored on the validation split by the same COCO evaluation (at test time Co-DETR runs
its DETR alone).

Prints both AP50 curves, their ratio at every kept step, the mean step time of each
(data loading included, the first five steps left out) and their ratio, and whether
Co-DETR's claim holds here: AP50 at the end at least 1.3 times Deformable DETR's, and
higher at every kept step after the first quarter. Then both final networks once more
with a class-wise NMS at 0.6 on top of their predictions (which a DETR should not need):
how much of each one's AP50 its duplicates cost. Writes ``co_detr.csv`` into ``--out``.
A benchmark run should have the machine to itself.
"""

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch
from torchvision.ops import batched_nms

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sample_efficiency import _load, _score, run_course_detector  # noqa: E402

from detutils.data.shapes import ensure_shapes  # noqa: E402

MODELS = {
    "Deformable DETR": "deformable-detr-r18half-d128",
    "Co-DETR": "co-deformable-detr-r18half-d128",
}
CLAIM_RATIO = 1.3  # the AP50 ratio at the end that the course sets out to check


class WithNMS(torch.nn.Module):
    """A detector whose predictions pass a class-wise NMS at ``iou_thr`` afterwards."""

    def __init__(self, detector: torch.nn.Module, iou_thr: float = 0.6) -> None:
        super().__init__()
        self.detector, self.iou_thr = detector, iou_thr

    def forward(self, images: torch.Tensor):
        return self.detector(images)

    def predict(self, outputs, **settings):
        kept = []
        for dets in self.detector.predict(outputs, **settings):
            keep = batched_nms(dets["boxes"], dets["scores"], dets["labels"], self.iou_thr)
            kept.append({key: value[keep] for key, value in dets.items()})
        return kept


def compare(results: dict[str, dict], steps: int) -> pd.DataFrame:
    """Per kept step: both AP50s and their ratio."""
    table = pd.DataFrame(
        {label: {step: m["AP50"] for step, m in result["metrics"].items()}
         for label, result in results.items()}
    ).rename_axis(index="step")  # fmt: skip
    table["ratio"] = table["Co-DETR"] / table["Deformable DETR"]
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--data", type=Path, default=Path("data/shapes"))
    parser.add_argument("--out", type=Path, default=Path("runs/co-detr"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.every < 1 or args.steps % args.every:
        parser.error("--steps must be a positive multiple of --every")
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data if (args.data / "annotations").is_dir() else ensure_shapes(args.data)
    torch.set_num_threads(args.threads)
    results = {
        label: run_course_detector(name, data, args.steps, args.every, args.threads, args.set)
        for label, name in MODELS.items()
    }
    table = compare(results, args.steps)
    table.to_csv(args.out / "co_detr.csv")
    print(table.to_string(float_format="{:.3f}".format))
    for label, result in results.items():
        final = result["metrics"][args.steps]
        print(f"{label}: AP50 {final['AP50']:.3f}, AP {final['AP']:.3f} after {args.steps} "
              f"steps; {result['s_per_step']:.2f} s a step, {result['wall_minutes']:.1f} min "
              f"in all")  # fmt: skip
    ratio = results["Co-DETR"]["s_per_step"] / results["Deformable DETR"]["s_per_step"]
    print(f"step time, Co-DETR / Deformable DETR: {ratio:.2f}")
    val_set = _load(data, "val")
    for label, result in results.items():
        final = result["snapshots"][args.steps]
        with_nms = _score({args.steps: WithNMS(final)}, val_set, result["img_size"])
        metrics = with_nms[args.steps]
        print(f"{label} with NMS 0.6 on top: AP50 {metrics['AP50']:.3f}, AP "
              f"{metrics['AP']:.3f}, AP75 {metrics['AP75']:.3f}")  # fmt: skip
    later = table[table.index > args.steps / 4]
    print(f"AP50 ratio after {args.steps} steps: {table.loc[args.steps, 'ratio']:.2f} "
          f"(claim: at least {CLAIM_RATIO}); higher at every kept step after the first "
          f"quarter: {bool((later['ratio'] > 1).all())}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
