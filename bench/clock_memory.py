"""Run a clock with three small jobs for a while and sample its RSS: does it level off?

    python -m bench.clock_memory [--minutes 60] [--every 30] [--job-every 10s] [--state URL]

Three jobs read a 1,000-row table (one without a cursor, so every run sends the whole
table; two with a cursor, so later runs send nothing new) and post to the light loopback
endpoint of ``bench.endpoint``, each on an ``every`` schedule. The clock runs as
``loader clock DIR --port P`` (with its /metrics) in a subprocess; its RSS (VmRSS from
/proc) is printed every ``--every`` seconds, then the growth per minute over each
quarter of the run: a clock that levels off shows the later quarters near zero.
``--tracemalloc`` runs the clock through ``bench.clock_trace``, which writes the
allocations that grew most to ``trace.txt`` next to the clock's log every ten minutes
(tracemalloc's own bookkeeping inflates RSS, so the RSS figures of such a run are not
comparable).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.generate import COLUMNS, ensure_table
from bench.run import DEFAULT_DB, free_port

JOBS = {
    "clock_full": "",
    "clock_by_id": "  cursor: {column: id}\n",
    "clock_by_time": "  cursor: {column: created_at, key: id}\n",
}


def write_jobs(directory: Path, db: str, table: str, target: str, every: str) -> None:
    for name, cursor in JOBS.items():
        (directory / f"{name}.yml").write_text(
            f"name: {name}\n"
            f"source:\n  url: {db}\n  query: SELECT {COLUMNS} FROM {table}\n{cursor}"
            f"target:\n  url: {target}\n"
            f"batch:\n  size: 100\n"
            f'schedule: "every {every}"\n'
        )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def slopes(samples: list[tuple[float, int]]) -> list[float]:
    """KiB per minute over each quarter of the samples (least squares)."""
    quarter = max(2, len(samples) // 4)
    result = []
    for start in range(0, len(samples) - 1, quarter):
        part = samples[start : start + quarter + 1]
        if len(part) < 2:
            break
        mean_t = sum(t for t, _ in part) / len(part)
        mean_r = sum(r for _, r in part) / len(part)
        num = sum((t - mean_t) * (r - mean_r) for t, r in part)
        den = sum((t - mean_t) ** 2 for t, _ in part) or 1.0
        result.append(num / den * 60)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--every", type=float, default=30, help="seconds between samples")
    parser.add_argument("--job-every", default="10s", help="each job's schedule interval")
    parser.add_argument(
        "--database", default=os.environ.get("LOADER_BENCH_DATABASE_URL", DEFAULT_DB)
    )
    parser.add_argument("--state", help="state store URL (default: SQLite in a temp dir)")
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="run the clock under tracemalloc and print its top growth at the end",
    )
    args = parser.parse_args()

    table = ensure_table(args.database, 1000)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.endpoint", str(port)], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    work = Path(tempfile.mkdtemp())
    write_jobs(work, args.database, table, f"http://127.0.0.1:{port}/in", args.job_every)
    state = args.state or f"sqlite:///{work}/state.db"
    env = {**os.environ, "LOADER_STATE_URL": state}
    command = [sys.executable, "-m", "loader", "clock", str(work), "--port", str(free_port())]
    if args.tracemalloc:
        command[2] = "bench.clock_trace"
        env["LOADER_TRACE_FILE"] = str(work / "trace.txt")
    log = open(work / "clock.log", "w")  # noqa: SIM115 - closed at the end
    clock = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    # Stopped early (SIGTERM), still stop the clock and the endpoint, in `finally` below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))
    samples: list[tuple[float, int]] = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(args.every)
            if clock.poll() is not None:
                sys.exit(f"the clock exited with {clock.returncode}; see {work / 'clock.log'}")
            elapsed = time.monotonic() - started
            samples.append((elapsed, rss_kib(clock.pid)))
            print(f"{elapsed / 60:7.1f} min  {samples[-1][1] / 1024:7.1f} MiB", flush=True)
    finally:
        clock.terminate()
        clock.wait()
        server.terminate()
        server.wait()
        log.close()
    peak = max(r for _, r in samples)
    print(f"\nfirst {samples[0][1] / 1024:.1f} MiB, last {samples[-1][1] / 1024:.1f} MiB, "
          f"peak {peak / 1024:.1f} MiB over {len(samples)} samples")  # fmt: skip
    print("growth per quarter, KiB/min: " + ", ".join(f"{s:.0f}" for s in slopes(samples)))
    print(f"clock log: {work / 'clock.log'}")


if __name__ == "__main__":
    main()
