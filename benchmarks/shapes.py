"""Time the shapes generator: the default training split (2,000 images of 320 px).

    python benchmarks/shapes.py [--workers N] [--images N]

Prints seconds and images per second; the set is written to a temporary folder
and removed afterwards.
"""

import argparse
import os
import tempfile
import time

from detutils.data.shapes import generate_shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=320)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        generate_shapes(folder, train=args.images, val=0, size=args.size, workers=args.workers)
        seconds = time.perf_counter() - start
    print(
        f"{args.images} images of {args.size} px with {args.workers} workers: "
        f"{seconds:.1f} s ({args.images / seconds:.1f} images/s)"
    )


if __name__ == "__main__":
    main()
