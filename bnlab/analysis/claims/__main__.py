"""`python -m bnlab.analysis.claims`: the same as `bnlab claims`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
