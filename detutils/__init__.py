"""detutils: the helper package of the course on how object detectors are trained.

Every piece that the notebooks teach lives here, tested on its own and against the
public reference implementations it follows.

Dimension letters, used in every docstring and shape comment (``# (B, A, C)``):

    B  images in a batch
    A  priors (anchor boxes, grid cells or anchor points) over all levels
    M  ground-truth boxes of an image (padded to the largest M in a batch)
    C  classes
    Q  queries (DETR-style detectors)
    R  DFL bins minus one (``reg_max``): a distribution has R + 1 bins
    L  feature levels
    H, W  height and width of a feature map

Boxes are float tensors ``(..., 4)`` in ``xyxy`` format, absolute pixels of the
network input, unless the name says otherwise (``boxes_cxcywh_norm``). Class ids
run ``0 .. C-1``. Priors of all levels are concatenated level by level, each level
row-major (y, then x): flat index = level offset + y * W + x.
"""

import os

__version__ = "0.1.0"

SCHEDULES = ("ci", "cpu", "gpu")


def current_schedule() -> str:
    """The training schedule of this run: ``ci``, ``cpu`` or ``gpu``.

    Read from the environment variable ``DETUTILS_SCHEDULE``; when it is unset the
    default is ``gpu`` where CUDA is available, else ``cpu``.

    Raises:
        ValueError: the variable holds something other than the three names.
    """
    value = os.environ.get("DETUTILS_SCHEDULE", "").strip().lower()
    if not value:
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    if value not in SCHEDULES:
        raise ValueError(
            f"DETUTILS_SCHEDULE={value!r} is not a schedule; use one of {', '.join(SCHEDULES)}"
        )
    return value


__all__ = ["SCHEDULES", "current_schedule", "__version__"]
