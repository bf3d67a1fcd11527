"""``python -m dramatiq_fairway.cli``, the same as the ``fairway`` command."""

import sys

from . import main

sys.exit(main())
