"""Time the commands that start and end at once: ``loader --version``, ``loader --help``
and ``loader validate jobs/``, each run ``--repeat`` times in turn; print the median wall
time, CPU seconds and peak RSS of each, and the range of the wall times.

    python -m bench.startup [--repeat 9]
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {"--version": ["--version"], "--help": ["--help"], "validate": ["validate", "jobs"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent
    compileall.compile_dir(root / "loader", quiet=1)  # as after a regular install
    measured: dict[str, list[tuple[float, float, float]]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeat):
        for name, command in COMMANDS.items():
            started = time.perf_counter()
            process = subprocess.Popen(
                [sys.executable, "-m", "loader", *command], cwd=root,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            _, status, usage = os.wait4(process.pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                sys.exit(f"loader {' '.join(command)} failed")
            measured[name].append((
                time.perf_counter() - started, usage.ru_utime + usage.ru_stime,
                usage.ru_maxrss / 1024,
            ))  # fmt: skip
    print(f"{'':12}{'wall s':>8}{'range':>14}{'CPU s':>8}{'peak RSS':>10}")
    for name, runs in measured.items():
        walls = [wall for wall, _, _ in runs]
        cpu = statistics.median(c for _, c, _ in runs)
        rss = statistics.median(r for _, _, r in runs)
        print(f"{name:12}{statistics.median(walls):>8.3f}{min(walls):>7.3f}-{max(walls):.3f}"
              f"{cpu:>8.3f}{rss:>8.0f}MB")  # fmt: skip


if __name__ == "__main__":
    main()
