"""``python -m arbstr.mock_upstream``: the same as ``arbstr mock-upstream``."""

import sys

from .cli import run

sys.exit(run())
