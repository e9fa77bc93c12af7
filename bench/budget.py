"""Where a ``loader run`` spends what the reference streamer does not: the CPU seconds
and peak RSS of each group of libraries it imports (each in a fresh interpreter, on top
of the reference's own psycopg, httpx and orjson), and the CPU of the SHA-256
idempotency keys per million rows. The figures behind the budget in bench/README.md.

    python -m bench.budget [--repeat 7] [--bytes-per-row 213]

``--bytes-per-row`` is the size of one row's JSON in a body (213 on the bench table:
``SELECT avg(length(row_to_json(t)::text) + 1) FROM loader_bench_1000000 t``).
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import xxhash

REFERENCE = ["psycopg", "httpx", "orjson"]
SQLALCHEMY = ["sqlalchemy", "sqlalchemy.dialects.postgresql.psycopg", "sqlalchemy.dialects.sqlite"]
JOB_MODEL = ["loader.job", "loader.jobfile"]  # pydantic, PyYAML and loader's models
OTHERS = ["typer", "tenacity", "xxhash", "sqlparse", "dotenv"]
RUN = ["loader.cli.run", "loader.monitor", "loader.runner", "loader.jobfile", *SQLALCHEMY]

#: What each line imports, in a fresh interpreter.
SETS = {
    "the reference's (psycopg, httpx, orjson)": REFERENCE,
    "  + SQLAlchemy (its PostgreSQL and SQLite dialects)": REFERENCE + SQLALCHEMY,
    "  + pydantic, PyYAML and the job model": REFERENCE + JOB_MODEL,
    "  + typer, tenacity, xxhash, sqlparse, dotenv": REFERENCE + OTHERS,
    "  + all of the above but SQLAlchemy": REFERENCE + JOB_MODEL + OTHERS,
    "everything `loader run` imports": RUN,
}


def measure(modules: list[str]) -> tuple[float, float]:
    """CPU seconds and peak RSS (MB) of a fresh interpreter importing ``modules``."""
    code = f"import importlib\nfor m in {modules!r}: importlib.import_module(m)"
    process = subprocess.Popen([sys.executable, "-c", code])
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"importing {modules} failed")
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def per_million(digest: Callable[[bytes], object], row_bytes: int, repeat: int) -> float:
    """CPU seconds to key a million rows' bodies (1,000-row batches) with ``digest``."""
    body = os.urandom(row_bytes * 1000)
    times = []
    for _ in range(repeat):
        started = time.process_time()
        for _ in range(1000):
            digest(body)
        times.append(time.process_time() - started)
    return statistics.median(times)


def sha256_key(body: bytes) -> str:
    """As ``loader.sink.idempotency_key``: the job, the scope and the body."""
    return hashlib.sha256(b"job\0scope\0" + body).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--bytes-per-row", type=int, default=213)
    args = parser.parse_args()
    compileall.compile_dir(Path(__file__).resolve().parent.parent / "loader", quiet=1)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in SETS}
    for _ in range(args.repeat):  # in turn, so that noise spreads over every line
        for name, modules in SETS.items():
            runs[name].append(measure(modules))
    medians = {
        name: (statistics.median(c for c, _ in r), statistics.median(m for _, m in r))
        for name, r in runs.items()
    }
    base_cpu, base_rss = medians["the reference's (psycopg, httpx, orjson)"]
    print(f"{'imports (median of ' + str(args.repeat) + ')':56}{'CPU s':>8}{'RSS MB':>8}"
          f"{'vs the reference':>20}")  # fmt: skip
    for name, (cpu, rss) in medians.items():
        extra = f"+{cpu - base_cpu:.3f} s +{rss - base_rss:.1f} MB" if name[0] in " e" else ""
        print(f"{name:56}{cpu:>8.3f}{rss:>8.1f}{extra:>22}")
    sha = per_million(sha256_key, args.bytes_per_row, args.repeat)
    xxh = per_million(xxhash.xxh3_128_hexdigest, args.bytes_per_row, args.repeat)
    print(f"\nper million rows of {args.bytes_per_row} bytes, 1,000-row bodies:")
    print(f"  SHA-256 idempotency keys  {sha:.3f} CPU s")
    print(f"  XXH3-128 instead          {xxh:.3f} CPU s (not a cryptographic hash)")


if __name__ == "__main__":
    main()
