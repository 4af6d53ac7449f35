"""``python -m detutils.evaluate``: see ``detutils.engine.cli`` for the arguments."""

import sys

from detutils.engine.cli import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())
