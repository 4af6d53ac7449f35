"""``python -m detutils.train``: see ``detutils.engine.cli`` for the arguments."""

import sys

from detutils.engine.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
