"""Cut a smaller COCO-format set: some classes, some images, reproducible by seed.

    python -m detutils.data.subset --src data/coco --out data/coco-animals \\
        --classes cat,dog,horse --train-images 4000 --val-images 500 --seed 0

For each split the source is found by :func:`detutils.data.coco.find_split` (COCO 2017
or shapes layout); the subset is written in the shapes layout
(``out/images/{split}/``, ``out/annotations/instances_{split}.json``), so the same
``find_split(out, split)`` reads it. Images are hard links to the source files where
the file system allows (no extra space), copies otherwise.

Which images: those with at least one non-crowd annotation of the chosen classes,
then a random sample of ``num_images`` of them (the same seed picks the same images).
Kept: those images, the annotations of the chosen classes on them (crowd ones too,
which the COCO evaluator needs), and the chosen categories with their original ids.

Reference: the COCO annotation format, https://cocodataset.org/#format-data.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
from pathlib import Path

from detutils.data.coco import find_split, load_coco_json

__all__ = ["subset_coco", "make_subset", "main"]


def subset_coco(
    dataset: dict, class_names: list[str], num_images: int | None = None, seed: int = 0
) -> dict:
    """A COCO dict restricted to ``class_names`` and at most ``num_images`` images.

    Args:
        dataset: a parsed COCO annotation file (see ``load_coco_json``).
        class_names: category names to keep, as spelt in ``categories``.
        num_images: images to keep; None keeps every image holding a chosen class.
        seed: seed of the random choice of images.

    Returns:
        a new COCO dict; images sorted by id, categories in source order.

    Raises:
        ValueError: an unknown or repeated class name, or a negative ``num_images``.
    """
    by_name = {category["name"]: category for category in dataset["categories"]}
    unknown = [name for name in class_names if name not in by_name]
    if unknown:
        raise ValueError(f"unknown class(es) {unknown}; the set has {sorted(by_name)}")
    if len(set(class_names)) != len(class_names) or not class_names:
        raise ValueError(f"class_names must be distinct and not empty, got {class_names}")
    if num_images is not None and num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    category_ids = {by_name[name]["id"] for name in class_names}
    annotations = [a for a in dataset["annotations"] if a["category_id"] in category_ids]
    candidates = sorted({a["image_id"] for a in annotations if not a.get("iscrowd", 0)})
    if num_images is not None and num_images < len(candidates):
        candidates = sorted(random.Random(seed).sample(candidates, num_images))
    chosen = set(candidates)
    return {
        "info": {
            **dataset.get("info", {}),
            "subset": {"classes": list(class_names), "num_images": num_images, "seed": seed},
        },
        "licenses": dataset.get("licenses", []),
        "images": sorted(
            (image for image in dataset["images"] if image["id"] in chosen),
            key=lambda image: image["id"],
        ),
        "annotations": [a for a in annotations if a["image_id"] in chosen],
        "categories": [c for c in dataset["categories"] if c["id"] in category_ids],
    }


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def make_subset(
    src: str | Path,
    out: str | Path,
    class_names: list[str],
    num_images: dict[str, int | None],
    seed: int = 0,
) -> Path:
    """Write a subset of each split in ``num_images`` under ``out``.

    Args:
        src: root of the source set (COCO 2017 or shapes layout).
        out: root of the subset (shapes layout); created.
        class_names: classes to keep.
        num_images: split -> number of images (None: all that hold a chosen class).
        seed: seed of the choice of images; each split draws with its own seed.

    Returns:
        ``out`` as a Path.
    """
    out = Path(out)
    if out.resolve() == Path(src).resolve():
        raise ValueError(f"the subset must go to another folder than its source {src}")
    for offset, (split, count) in enumerate(num_images.items()):
        image_dir, ann_file = find_split(src, split)
        subset = subset_coco(load_coco_json(ann_file), class_names, count, seed + offset)
        target_dir = out / "images" / split
        for image in subset["images"]:
            source = image_dir / image["file_name"]
            if not source.is_file():
                raise FileNotFoundError(f"{ann_file}: image id {image['id']}: no file {source}")
            _link_or_copy(source, target_dir / image["file_name"])
        target_ann = out / "annotations" / f"instances_{split}.json"
        target_ann.parent.mkdir(parents=True, exist_ok=True)
        target_ann.write_text(json.dumps(subset, separators=(",", ":")), encoding="utf-8")
        print(
            f"{split}: {len(subset['images'])} images, {len(subset['annotations'])} annotations "
            f"-> {target_ann}"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m detutils.data.subset",
        description="Cut a smaller COCO-format set by class names and image count.",
    )
    parser.add_argument("--src", type=Path, required=True, help="root of the source set")
    parser.add_argument("--out", type=Path, required=True, help="root of the subset")
    parser.add_argument("--classes", required=True, help="comma-separated class names")
    parser.add_argument("--splits", default="train,val", help="comma-separated splits")
    parser.add_argument("--train-images", type=int, default=None, help="default: all")
    parser.add_argument("--val-images", type=int, default=None, help="default: all")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    counts = {"train": args.train_images, "val": args.val_images}
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    class_names = [c.strip() for c in args.classes.split(",") if c.strip()]
    try:
        make_subset(args.src, args.out, class_names, {s: counts.get(s) for s in splits}, args.seed)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
