"""`python -m bnlab ARGS` is the `bnlab` command (bnlab/cli.py); with no arguments it trains
the default configuration, as it always did."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["train"]))
