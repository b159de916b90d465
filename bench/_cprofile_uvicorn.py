"""uvicorn's command line under cProfile, for ``bench.profile --tool cprofile``.

    python bench/_cprofile_uvicorn.py OUT.prof <uvicorn arguments>

The profile is written when uvicorn returns. uvicorn shuts down cleanly on SIGTERM and then
raises the signal again for the handler it found installed: this script installs one that
exits through ``SystemExit``, so the profile is written on SIGTERM too. Run by path under
``python -P``: without ``-P`` the script's directory (``bench/``, which has a ``profile.py``)
would shadow the standard library's ``profile`` module that cProfile imports.
"""

from __future__ import annotations

import cProfile
import signal
import sys
from types import FrameType

from uvicorn.main import main as uvicorn_main


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def profiled() -> None:
    signal.signal(signal.SIGTERM, _exit)
    out = sys.argv[1]
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        uvicorn_main.main(sys.argv[2:], standalone_mode=False)
    finally:
        profiler.disable()
        profiler.dump_stats(out)


if __name__ == "__main__":
    profiled()
