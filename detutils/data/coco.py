"""Detection data in COCO format: a checked loader, a ``Dataset`` and a batch collate.

Any COCO-format set works: the shapes set of :mod:`detutils.data.shapes`, COCO 2017,
or a subset cut by :mod:`detutils.data.subset`. The annotation file is read and
checked here, so a malformed file fails at once with an error naming the file and
the entry (never deep inside a training loop), then indexed by pycocotools, whose
``COCO`` object the evaluator shares.

Category ids (any integers, COCO's run 1..90 with gaps) map to contiguous labels
``0 .. C-1`` in increasing id order; ``label_to_cat_id`` maps back for evaluation.
Crowd annotations (``iscrowd=1``) stay in the index, where COCOeval uses them as
ignore regions, but never become training targets.

Reference: torchvision's detection reference ``references/detection/coco_utils.py``
(``ConvertCocoPolysToMask``: xywh -> xyxy, clip to the image, drop empty boxes and
crowd boxes) and the COCO format, https://cocodataset.org/#format-data.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torchvision import tv_tensors

__all__ = [
    "CocoFormatError",
    "find_split",
    "load_coco_json",
    "check_image_files",
    "CocoDetection",
    "collate",
]


class CocoFormatError(ValueError):
    """An annotation file, or an image it lists, does not follow the COCO format."""


def find_split(root: str | Path, split: str) -> tuple[Path, Path]:
    """The image folder and annotation file of a split, in either known layout.

    Layouts tried, in order:
        shapes / subset: ``root/images/{split}/``, ``root/annotations/instances_{split}.json``
        COCO 2017: ``root/{split}2017/``, ``root/annotations/instances_{split}2017.json``

    Args:
        root: folder of the data set.
        split: ``"train"``, ``"val"`` or any split name the layout uses.

    Returns:
        (image_dir, ann_file).

    Raises:
        FileNotFoundError: neither layout is complete; the message lists what is missing.
    """
    root = Path(root)
    layouts = [
        (root / "images" / split, root / "annotations" / f"instances_{split}.json"),
        (root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json"),
    ]
    missing = []
    for image_dir, ann_file in layouts:
        if image_dir.is_dir() and ann_file.is_file():
            return image_dir, ann_file
        lacking = [
            str(p)
            for p, ok in ((image_dir, image_dir.is_dir()), (ann_file, ann_file.is_file()))
            if not ok
        ]
        missing.append(" and ".join(lacking))
    raise FileNotFoundError(
        f"no {split!r} split under {root}: missing {missing[0]} (shapes layout), "
        f"or {missing[1]} (COCO 2017 layout)"
    )


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_list(dataset: dict, key: str, ann_file: Path) -> list:
    entries = dataset.get(key)
    if not isinstance(entries, list):
        raise CocoFormatError(f"{ann_file}: no {key!r} list at the top level")
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise CocoFormatError(f"{ann_file}: {key}[{position}] is not an object")
    return entries


def load_coco_json(ann_file: str | Path) -> dict:
    """Read a COCO annotation file and check every entry a detector relies on.

    Missing ``iscrowd`` is taken as 0 and missing ``area`` as the box area, as the
    COCO evaluator needs both.

    Args:
        ann_file: path of the JSON file.

    Returns:
        the parsed file (a dict with ``images``, ``annotations``, ``categories``).

    Raises:
        FileNotFoundError: no such file.
        CocoFormatError: the file is not JSON, or an entry is malformed: an image
            without id, file name or size, a duplicate id, an annotation whose
            ``image_id`` or ``category_id`` is unknown, or whose ``bbox`` is not
            four finite numbers with non-negative width and height.
    """
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise FileNotFoundError(f"annotation file {ann_file} does not exist")
    try:
        dataset = json.loads(ann_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CocoFormatError(
            f"{ann_file}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"
        ) from None
    except UnicodeDecodeError as error:
        raise CocoFormatError(f"{ann_file}: not UTF-8 text ({error.reason})") from None
    if not isinstance(dataset, dict):
        raise CocoFormatError(f"{ann_file}: the top level is not an object")

    image_ids = set()
    for position, image in enumerate(_check_list(dataset, "images", ann_file)):
        where = f"{ann_file}: images[{position}] (id {image.get('id')!r})"
        if not isinstance(image.get("id"), int):
            raise CocoFormatError(f"{where}: 'id' must be an integer")
        if not isinstance(image.get("file_name"), str) or not image["file_name"]:
            raise CocoFormatError(f"{where}: 'file_name' must be a non-empty string")
        for key in ("width", "height"):
            if not isinstance(image.get(key), int) or image[key] <= 0:
                raise CocoFormatError(f"{where}: {key!r} must be a positive integer")
        if image["id"] in image_ids:
            raise CocoFormatError(f"{where}: duplicate image id")
        image_ids.add(image["id"])

    category_ids = set()
    for position, category in enumerate(_check_list(dataset, "categories", ann_file)):
        where = f"{ann_file}: categories[{position}] (id {category.get('id')!r})"
        if not isinstance(category.get("id"), int) or not isinstance(category.get("name"), str):
            raise CocoFormatError(f"{where}: needs an integer 'id' and a string 'name'")
        if category["id"] in category_ids:
            raise CocoFormatError(f"{where}: duplicate category id")
        category_ids.add(category["id"])

    annotation_ids = set()
    for position, ann in enumerate(_check_list(dataset, "annotations", ann_file)):
        where = f"{ann_file}: annotations[{position}] (id {ann.get('id')!r})"
        if not isinstance(ann.get("id"), int) or ann["id"] in annotation_ids:
            raise CocoFormatError(f"{where}: 'id' must be a unique integer")
        annotation_ids.add(ann["id"])
        if ann.get("image_id") not in image_ids:
            raise CocoFormatError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        if ann.get("category_id") not in category_ids:
            raise CocoFormatError(
                f"{where}: category_id {ann.get('category_id')!r} is not in 'categories'"
            )
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(map(_is_number, bbox)):
            raise CocoFormatError(f"{where}: 'bbox' must be four finite numbers, got {bbox!r}")
        if bbox[2] < 0 or bbox[3] < 0:
            raise CocoFormatError(f"{where}: 'bbox' {bbox} has a negative width or height")
        if ann.setdefault("iscrowd", 0) not in (0, 1):
            raise CocoFormatError(f"{where}: 'iscrowd' must be 0 or 1, got {ann['iscrowd']!r}")
        ann.setdefault("area", bbox[2] * bbox[3])
    return dataset


def check_image_files(dataset: dict, image_dir: str | Path, ann_file: str | Path = "") -> None:
    """Raise FileNotFoundError naming the images of ``dataset`` missing from ``image_dir``."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder {image_dir} does not exist")
    present = set(os.listdir(image_dir))  # one listing, fast even for COCO train
    missing = [
        image
        for image in dataset["images"]
        if image["file_name"] not in present and not (image_dir / image["file_name"]).is_file()
    ]
    if missing:
        shown = ", ".join(f"id {m['id']} {m['file_name']!r}" for m in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(
            f"{ann_file}: {len(missing)} of {len(dataset['images'])} images are missing "
            f"from {image_dir}: {shown}{more}"
        )


class CocoDetection(torch.utils.data.Dataset):
    """A COCO-format detection set: image tensor and target dict per image.

    Every image listed in the file is an item, those without annotations too
    (their targets are empty, boxes of shape (0, 4)).

    Args:
        image_dir: folder of the image files.
        ann_file: COCO annotation file.
        transforms: optional callable ``(image, target) -> (image, target)``, such as
            :func:`detutils.data.transforms.build_transforms`; it receives a
            ``tv_tensors.Image`` and the target with ``tv_tensors.BoundingBoxes``.
        check_files: check at construction that every listed image file exists.

    Item ``i`` is ``(image, target)``:
        image: (3, H, W) float32 in [0, 1] (the file's size without transforms).
        target: ``boxes`` (M, 4) float32 xyxy pixels of the returned image,
            ``labels`` (M,) int64 in 0..C-1, ``image_id`` int, ``orig_size`` (2,) int64
            (height, width) of the file, ``scale`` float and ``pad`` (2,) float32
            (left, top): a box maps back to the file's pixels as
            ``(box - [left, top, left, top]) / scale``.

    Attributes:
        coco: the pycocotools ``COCO`` index of the annotation file.
        class_names: category names, by label.
        label_to_cat_id: category id of each label.
        cat_id_to_label: label of each category id.
        num_classes: C.
        image_ids: image id of each item, ascending.

    Reference: ``torchvision.datasets.CocoDetection`` wrapped by
    ``torchvision.datasets.wrap_dataset_for_transforms_v2`` (the same boxes; labels
    here are contiguous, and crowd and empty boxes are left out of the targets).
    """

    def __init__(
        self,
        image_dir: str | Path,
        ann_file: str | Path,
        transforms: Callable | None = None,
        check_files: bool = True,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        dataset = load_coco_json(self.ann_file)
        if check_files:
            check_image_files(dataset, self.image_dir, self.ann_file)
        self.coco = COCO()
        self.coco.dataset = dataset
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()
        self.label_to_cat_id = sorted(self.coco.cats)
        self.cat_id_to_label = {cat_id: label for label, cat_id in enumerate(self.label_to_cat_id)}
        self.class_names = [self.coco.cats[cat_id]["name"] for cat_id in self.label_to_cat_id]
        self.num_classes = len(self.label_to_cat_id)
        self.image_ids = sorted(self.coco.imgs)
        self.transforms = transforms
        self._cache: dict[int, torch.Tensor] = {}  # image id -> (3, H, W) uint8

    def cache_images(self) -> int:
        """Decode every image once and keep it in memory (uint8, 3 bytes a pixel).

        Later reads skip the file. Call it before the DataLoader starts its worker
        processes: forked workers share the decoded pixels instead of each decoding
        the files again every epoch (the shapes set: about 0.6 GB, seconds to fill).

        Returns:
            the bytes held.
        """
        for image_id in self.image_ids:
            if image_id not in self._cache:
                self._cache[image_id] = self._decode(image_id)
        return sum(image.numel() for image in self._cache.values())

    def __len__(self) -> int:
        return len(self.image_ids)

    def load_image(self, image_id: int) -> torch.Tensor:
        """The image file of ``image_id`` as (3, H, W) float32 in [0, 1]."""
        cached = self._cache.get(image_id)
        image = cached if cached is not None else self._decode(image_id)
        return image.float() / 255.0

    def _decode(self, image_id: int) -> torch.Tensor:
        """The image file of ``image_id`` as (3, H, W) uint8, its size checked."""
        entry = self.coco.imgs[image_id]
        path = self.image_dir / entry["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"{self.ann_file}: image id {image_id}: no file {path}")
        try:
            with Image.open(path) as file:
                pixels = np.asarray(file.convert("RGB"))  # (H, W, 3) uint8
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise CocoFormatError(
                f"{path} (image id {image_id} of {self.ann_file}) cannot be decoded: {error}"
            ) from None
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1)  # (3, H, W)
        if tuple(image.shape[1:]) != (entry["height"], entry["width"]):
            raise CocoFormatError(
                f"{path} is {image.shape[2]}x{image.shape[1]} px but image id {image_id} of "
                f"{self.ann_file} says {entry['width']}x{entry['height']}"
            )
        return image

    def load_target(self, image_id: int) -> dict:
        """Target of ``image_id`` at the file's size: crowd and empty boxes left out."""
        entry = self.coco.imgs[image_id]
        height, width = entry["height"], entry["width"]
        anns = [a for a in self.coco.imgToAnns[image_id] if not a["iscrowd"]]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy, (M, 4)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        labels = torch.tensor([self.cat_id_to_label[a["category_id"]] for a in anns])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return {
            "boxes": tv_tensors.BoundingBoxes(
                boxes[keep], format="XYXY", canvas_size=(height, width)
            ),
            "labels": labels.to(torch.int64).reshape(-1)[keep],
            "image_id": image_id,
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
            "scale": 1.0,
            "pad": torch.zeros(2, dtype=torch.float32),
        }

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image_id = self.image_ids[index]
        image = tv_tensors.Image(self.load_image(image_id))
        target = self.load_target(image_id)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor).to(torch.float32)
        return image.as_subclass(torch.Tensor), target

    def __repr__(self) -> str:
        return (
            f"CocoDetection({len(self)} images, {self.num_classes} classes, "
            f"image_dir={str(self.image_dir)!r}, ann_file={str(self.ann_file)!r})"
        )


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """Stack a list of ``(image, target)`` items into a batch.

    Args:
        batch: items of one size, (3, S, S) each (letterboxed by the transforms).

    Returns:
        images (B, 3, S, S) float32 and the list of B target dicts.

    Raises:
        ValueError: an empty batch or images of different sizes.
    """
    if not batch:
        raise ValueError("collate got an empty batch")
    images, targets = zip(*batch, strict=True)
    shapes = sorted({tuple(image.shape) for image in images})
    if len(shapes) > 1:
        raise ValueError(
            f"collate needs images of one size, got {shapes}; letterbox them to a square "
            "with build_transforms(img_size, ...)"
        )
    return torch.stack(images), list(targets)  # (B, 3, S, S)
