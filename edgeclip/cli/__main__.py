"""``python -m edgeclip.cli``: the console entry point."""
from __future__ import annotations

import sys

from . import main

sys.exit(main())
