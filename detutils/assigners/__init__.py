"""Label assigners: which prior learns which ground-truth box.

Every assigner marks a prior with ``BACKGROUND`` (it learns "no object") or
``IGNORE`` (it takes part in no loss), for the gt index and for the label alike.
"""

BACKGROUND = -1
IGNORE = -2

__all__ = ["BACKGROUND", "IGNORE"]
