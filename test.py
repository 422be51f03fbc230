"""Seed compatibility: ``python test.py [options]`` = ``msrf test [options]``
(default data: data/kdsb, default weights: the newest run in ./runs)."""

import sys

from msrfnet.cli import main

if __name__ == "__main__":
    sys.exit(main(["test", *sys.argv[1:]]))
