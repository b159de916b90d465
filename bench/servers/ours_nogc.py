"""DIAGNOSTIC, not a benchmark column: ``ours`` with the cyclic GC disabled.

Used to show that ours' stalls at 5,000 receivers are full (generation 2) collections:
every parked writer holds a fresh future that survives young collections.
"""

from __future__ import annotations

import gc

from .ours import app

__all__ = ["app"]
gc.disable()
