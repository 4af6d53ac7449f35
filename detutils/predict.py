"""``python -m detutils.predict``: see ``detutils.engine.cli`` for the arguments."""

import sys

from detutils.engine.cli import predict_main

if __name__ == "__main__":
    sys.exit(predict_main())
