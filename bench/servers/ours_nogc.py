"""DIAGNOSTIC, not a benchmark column: ``ours`` with the cyclic GC disabled.

Run it only by name (``--servers ours,ours-nogc``) to see how much of a fan-out figure
goes to cyclic garbage collection: if ``ours-nogc`` is not faster than ``ours``, the GC
is not where the time goes.
"""

from __future__ import annotations

import gc

from .ours import app

__all__ = ["app"]
gc.disable()
