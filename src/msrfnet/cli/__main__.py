"""``python -m msrfnet.cli``: the ``msrf`` command."""

import sys

from msrfnet.cli import main

sys.exit(main())
