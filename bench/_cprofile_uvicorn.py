"""uvicorn's command line under cProfile, for ``bench.profile --tool cprofile``.

    python bench/_cprofile_uvicorn.py OUT.prof <uvicorn arguments>

The profile is written when uvicorn returns (after SIGTERM too: uvicorn shuts down cleanly).
Run as a script, by path, so that it works under ``python -P`` as the worktree servers do.
"""

from __future__ import annotations

import cProfile
import sys

from uvicorn.main import main as uvicorn_main


def profiled() -> None:
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
