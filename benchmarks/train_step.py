"""Time one training step (forward + loss + backward) per detector and image size.

    python benchmarks/train_step.py [--models NAME ...] [--sizes 64 128 320] [--batch 8]
        [--repeats 7] [--threads 1] [--devices cpu cuda]

Every detector of ``detutils.models.DETECTORS`` by default (the test detector
``tests.tiny_detector:build`` while the table is empty); any ``module:factory`` works.
Inputs are random images with five random boxes each. Each timing is the median of
``--repeats`` steps after two warm-up steps, on one CPU thread by default, and on
CUDA too when a GPU is present (synchronised around each step).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.tiny_detector

from detutils.models import DETECTORS, build_detector  # noqa: E402

__all__ = ["random_targets", "time_train_step"]

FALLBACK_MODEL = "tests.tiny_detector:build"


def random_targets(batch: int, img_size: int, num_classes: int, boxes: int = 5, seed: int = 0):
    """``boxes`` random xyxy boxes (sides 4 px to half the image) and labels per image."""
    generator = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(batch):
        size = 4 + torch.rand(boxes, 2, generator=generator) * (img_size / 2 - 4)
        corner = torch.rand(boxes, 2, generator=generator) * (img_size - size)
        targets.append(
            {
                "boxes": torch.cat([corner, corner + size], dim=1),  # (boxes, 4)
                "labels": torch.randint(0, num_classes, (boxes,), generator=generator),
            }
        )
    return targets


def time_train_step(
    model: torch.nn.Module,
    img_size: int,
    batch: int,
    device: torch.device,
    repeats: int = 7,
    warmup: int = 2,
) -> float:
    """Median seconds of ``forward + loss + backward`` on random inputs."""
    model.to(device).train()
    images = torch.rand(batch, 3, img_size, img_size, device=device)
    targets = [
        {key: value.to(device) for key, value in target.items()}
        for target in random_targets(batch, img_size, model.num_classes)
    ]
    seconds = []
    for step in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        losses = model.loss(model(images), targets)
        losses["loss"].backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup:
            seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=sorted(DETECTORS) or [FALLBACK_MODEL])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128, 320])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    default_devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    parser.add_argument("--devices", nargs="+", default=default_devices)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        for device_name in args.devices:
            device = torch.device(device_name)
            for img_size in args.sizes:
                torch.manual_seed(0)
                model = build_detector(name, num_classes=args.num_classes)
                seconds = time_train_step(model, img_size, args.batch, device, args.repeats)
                rows.append(
                    {
                        "model": model.name,
                        "device": device_name,
                        "img_size": img_size,
                        "batch": args.batch,
                        "step_ms": 1000 * seconds,
                        "images_per_s": args.batch / seconds,
                    }
                )
                print(
                    f"{model.name} {device_name} {img_size} px: {1000 * seconds:.1f} ms", flush=True
                )
    print(
        f"\nmedian of {args.repeats} steps, {args.threads} CPU thread(s), torch {torch.__version__}"
    )
    print(pd.DataFrame(rows).to_string(index=False, float_format="{:.1f}".format))


if __name__ == "__main__":
    main()
