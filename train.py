"""Seed compatibility: ``python train.py [options]`` = ``msrf train [options]``
(default data: data/kdsb)."""

import sys

from msrfnet.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
