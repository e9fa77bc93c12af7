"""``loader`` under tracemalloc: every ``LOADER_TRACE_EVERY`` seconds (default 600) it
writes the allocations that grew most since the first snapshot (taken after the first
interval, once imports and caches have settled) to ``LOADER_TRACE_FILE``. Used by
``python -m bench.clock_memory --tracemalloc`` to find what accumulates in a clock.

    python -m bench.clock_trace clock DIR ...   (the arguments of ``loader``)
"""

from __future__ import annotations

import os
import sys
import threading
import time
import tracemalloc


def _snapshot() -> tracemalloc.Snapshot:
    """The traces of everything but tracemalloc's own comparisons and formatting (not
    this module's frames: the clock's main thread runs under them)."""
    ours = tracemalloc.Filter(False, tracemalloc.__file__, all_frames=True)
    return tracemalloc.take_snapshot().filter_traces([ours])


def _watch(path: str, every: float) -> None:
    time.sleep(every)
    first = _snapshot()
    while True:
        time.sleep(every)
        stats = _snapshot().compare_to(first, "traceback")
        with open(path, "a") as out:
            out.write(f"=== {time.strftime('%H:%M:%S')} traced {tracemalloc.get_traced_memory()}\n")
            for stat in stats[:12]:
                out.write(f"{stat.size_diff / 1024:+.1f} KiB {stat.count_diff:+d} blocks\n")
                out.write("".join(f"    {line}\n" for line in stat.traceback.format()[-8:]))
            out.flush()
        del stats  # not held through the next snapshot


def main() -> None:
    tracemalloc.start(25)
    path = os.environ.get("LOADER_TRACE_FILE", "clock-trace.txt")
    every = float(os.environ.get("LOADER_TRACE_EVERY", "600"))
    threading.Thread(target=_watch, args=(path, every), daemon=True).start()
    sys.argv = ["loader", *sys.argv[1:]]
    from loader.cli import main as loader_main

    loader_main()


if __name__ == "__main__":
    main()
