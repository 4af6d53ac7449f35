"""Data for the course: the synthetic shapes set, COCO-format loading and transforms.

    ensure_shapes()            the default shapes set, generated on first use
    find_split(root, split)    image folder and annotation file of a split
    CocoDetection(...)         a Dataset over any COCO-format set
    build_transforms(...)      letterbox, flip and colour jitter on transforms.v2
    Mosaic(...), build_train_set(...)   four images in one; the training set of a schedule
    collate(batch)             stack a batch for a DataLoader
    ObjectCrops(dataset)       every box cut out: a classification set (backbone pre-training)

The names are imported on first use, so ``python -m detutils.data.shapes`` (and the
other command-line tools here) start without loading the modules they do not need.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for readers and editors; at run time __getattr__ imports on demand
    from detutils.data.coco import CocoDetection, CocoFormatError, collate, find_split
    from detutils.data.crops import ObjectCrops
    from detutils.data.mosaic import Mosaic, build_train_set
    from detutils.data.shapes import CLASS_NAMES, ensure_shapes, generate_shapes
    from detutils.data.transforms import build_transforms, undo_letterbox

_SOURCES = {
    "CLASS_NAMES": "shapes",
    "ensure_shapes": "shapes",
    "generate_shapes": "shapes",
    "CocoDetection": "coco",
    "CocoFormatError": "coco",
    "collate": "coco",
    "find_split": "coco",
    "build_transforms": "transforms",
    "Mosaic": "mosaic",
    "build_train_set": "mosaic",
    "undo_letterbox": "transforms",
    "ObjectCrops": "crops",
}

__all__ = [
    "CLASS_NAMES",
    "CocoDetection",
    "CocoFormatError",
    "Mosaic",
    "ObjectCrops",
    "build_train_set",
    "build_transforms",
    "collate",
    "ensure_shapes",
    "find_split",
    "generate_shapes",
    "undo_letterbox",
]


def __getattr__(name: str):
    if name not in _SOURCES:
        raise AttributeError(f"module 'detutils.data' has no attribute {name!r}")
    module = importlib.import_module(f"detutils.data.{_SOURCES[name]}")
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
