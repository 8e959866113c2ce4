"""``python -m zcio``: the same command line as the ``zcio`` script."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
