"""Is data loading the bottleneck? Loader images/s beside training-step images/s.

    python benchmarks/loader.py [--data DIR] [--img-size 320] [--batch 8]
        [--workers 0 1 2] [--batches 30] [--model NAME] [--threads 1]

The loader is the training one (``build_train_loader``: decode PNG, letterbox, flip,
colour jitter, collate) over the shapes set (``--data``, or 256 training images of
320 px generated in a temporary folder). The step is ``forward + loss + backward`` of
``--model`` (the test detector by default) at the same image size and batch; its
images/s is what the loader must at least deliver. Workers run in parallel with the
step, so the loader keeps up when its images/s with W workers exceeds the step's.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_step beside this file
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.tiny_detector

from train_step import FALLBACK_MODEL, time_train_step  # noqa: E402

from detutils.data import CocoDetection, build_transforms, find_split, generate_shapes  # noqa: E402
from detutils.distributed import DistributedContext  # noqa: E402
from detutils.engine.loader import build_train_loader, set_loader_epoch  # noqa: E402
from detutils.models import DETECTORS, build_detector  # noqa: E402


def loader_images_per_second(dataset, batch: int, workers: int, batches: int) -> float:
    """Images per second of the training loader over ``batches`` batches (after the first)."""
    loader = build_train_loader(dataset, batch, DistributedContext(), workers=workers)
    set_loader_epoch(loader, 0, seed=0)
    iterator = iter(loader)
    next(iterator)  # workers start and fill their queues
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        try:
            images += len(next(iterator)[1])
        except StopIteration:
            break
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a COCO-format set; default a generated one")
    parser.add_argument("--img-size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--model", default=(sorted(DETECTORS) or [FALLBACK_MODEL])[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the step")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        root = args.data
        if root is None:
            root = generate_shapes(Path(folder), train=256, val=0, size=320, seed=0)
        dataset = CocoDetection(
            *find_split(root, "train"), transforms=build_transforms(args.img_size, train=True)
        )
        rows = []
        for workers in args.workers:
            rate = loader_images_per_second(dataset, args.batch, workers, args.batches)
            rows.append({"what": f"loader, {workers} workers", "images_per_s": rate})
            print(f"{rows[-1]['what']}: {rate:.1f} images/s", flush=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_detector(args.model, num_classes=dataset.num_classes)
    seconds = time_train_step(model, args.img_size, args.batch, torch.device("cpu"))
    what = f"train step {model.name}, {args.threads} thread(s)"
    rows.append({"what": what, "images_per_s": args.batch / seconds})
    print(f"\n{len(dataset)} images, letterboxed to {args.img_size} px, batch {args.batch}")
    print(pd.DataFrame(rows).to_string(index=False, float_format="{:.1f}".format))


if __name__ == "__main__":
    main()
