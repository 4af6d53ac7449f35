"""What an assigner returns: for every prior, the box it learns (or none) and that box's class.

Reference: mmdet ``AssignResult`` (``gt_inds``, ``labels``, ``max_overlaps``), without its
1-based gt indices: here ``gt_index`` counts from 0 and marks the background with
``BACKGROUND = -1`` and ignored priors with ``IGNORE = -2``.
"""

from typing import NamedTuple

from torch import Tensor

__all__ = ["BACKGROUND", "IGNORE", "AssignResult"]

BACKGROUND = -1  # the prior learns "no object" (gt index and label)
IGNORE = -2  # the prior takes part in no loss (gt index and label)


class AssignResult(NamedTuple):
    """The assignment of one image, fields (A,); or of a batch, fields (B, A).

    Element ``a`` (or ``b, a``) describes prior ``a``:

    gt_index: long, the ground-truth box the prior learns, 0 .. M-1; ``BACKGROUND`` (-1)
        when it learns "no object"; ``IGNORE`` (-2) when it takes part in no loss.
    labels: long, the class of that box, 0 .. C-1; ``BACKGROUND`` / ``IGNORE`` as above.
    iou: float, the IoU between the prior and that box; 0 for background and ignored
        priors (mmdet stores -1e8 there for ATSS, and every prior's best IoU for MaxIoU).
    """

    gt_index: Tensor
    labels: Tensor
    iou: Tensor

    @property
    def positive(self) -> Tensor:
        """bool mask of the priors that learn a box: ``gt_index >= 0``."""
        return self.gt_index >= 0

    @property
    def num_positive(self) -> int:
        """How many priors learn a box (over the whole batch for a batched result)."""
        return int(self.positive.sum())
