"""Diff syncs against full runs of the same job, on the same table and endpoint.

    python -m bench.diff --rows 1000000 [--repeat 3] [--state sqlite|postgres|postgres-apart]
                         [--deletes] [--text-key]

Copies the benchmark table (``bench.generate``) into ``loader_bench_diff_<N>``, primes
the diff job's fingerprints with one run, then runs pairs: the job without diff
(``--full-refresh``, every row sent) and the same job with ``source.diff`` on the
unchanged table (nothing sent), alternating which goes first, so noise shows in both
directions. Then it updates 1% of the rows and checks that the next diff run sends
exactly those. Prints wall time, CPU seconds and peak RSS of each run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from bench.generate import COLUMNS, ensure_table
from bench.run import DEFAULT_DB, Measure, free_port, measure


def copy_table(url: str, rows: int) -> str:
    """A copy of the benchmark table of ``rows`` rows that this benchmark may change."""
    source = ensure_table(url, rows)
    name = f"loader_bench_diff_{rows}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")
        conn.execute(f"CREATE TABLE {name} AS SELECT * FROM {source}")
        conn.execute(f"ALTER TABLE {name} ADD PRIMARY KEY (id)")
        conn.execute(f"VACUUM ANALYZE {name}")
    return name


def job_file(db: str, table: str, target: str, args: argparse.Namespace, diff: bool) -> Path:
    key = "tkey" if args.text_key else "id"
    deletes = f", deletes: {{url: '{target}/{{{key}}}'}}" if args.deletes else ""
    spec = f"  diff: {{key: {key}{deletes}}}\n" if diff else ""
    columns = f"{COLUMNS}, 'user-' || id AS tkey" if args.text_key else COLUMNS
    text = (
        f"name: bench_{'diff' if diff else 'full'}_{table}\n"
        f"source:\n  url: {db}\n  query: SELECT {columns} FROM {table}\n{spec}"
        f"target:\n  url: {target}\n"
        f"batch:\n  size: {args.batch}\n"
        f"concurrency: {args.concurrency}\n"
    )
    path = Path(tempfile.mkdtemp()) / "bench.yml"
    path.write_text(text)
    return path


def state_env(args: argparse.Namespace) -> dict[str, str]:
    """The state store: a fresh SQLite file, or a fresh schema of the PostgreSQL: in the
    source's database (``postgres``: the database compares), or in a database of its
    own on the same server (``postgres-apart``: the source cannot see it, loader
    compares)."""
    if args.state == "sqlite":
        return {**os.environ, "LOADER_STATE_URL": f"sqlite:///{tempfile.mkdtemp()}/state.db"}
    schema = f"bench_state_{os.getpid()}"
    database = args.database
    if args.state == "postgres-apart":
        with psycopg.connect(args.database, autocommit=True) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'loader_bench_state'")
            if found.fetchone() is None:
                conn.execute("CREATE DATABASE loader_bench_state")
        parts = urlsplit(args.database)
        database = urlunsplit(parts._replace(path="/loader_bench_state"))
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in database else "?"
    url = f"{database}{separator}options=-csearch_path%3D{schema}"
    return {**os.environ, "LOADER_STATE_URL": url}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--state", choices=["sqlite", "postgres", "postgres-apart"], default="sqlite"
    )
    parser.add_argument(
        "--database", default=os.environ.get("LOADER_BENCH_DATABASE_URL", DEFAULT_DB)
    )
    parser.add_argument("--only-diff", action="store_true", help="prime and one unchanged run")
    parser.add_argument(
        "--deletes", action="store_true", help="the diff job sends deletes (none are due)"
    )
    parser.add_argument(
        "--text-key", action="store_true", help="key on a text column ('user-' || id)"
    )
    args = parser.parse_args()

    table = copy_table(args.database, args.rows)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.endpoint", str(port)], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    env = state_env(args)
    full = [sys.executable, "-m", "loader", "run", "--full-refresh",
            str(job_file(args.database, table, url + "/in", args, diff=False))]  # fmt: skip
    diff = [sys.executable, "-m", "loader", "run",
            str(job_file(args.database, table, url + "/in", args, diff=True))]  # fmt: skip
    try:
        show(args, [measure("diff first", diff, url, env, server.pid)])
        if args.only_diff:
            show(args, [measure("diff same", diff, url, env, server.pid)])
            return
        ratios = []
        for round_ in range(args.repeat):
            pair = [("full", full), ("diff same", diff)]
            if round_ % 2:
                pair.reverse()
            results = {name: measure(name, cmd, url, env, server.pid) for name, cmd in pair}
            show(args, list(results.values()))
            ratios.append(results["diff same"].seconds / results["full"].seconds)
        print(f"\ndiff / full wall time over {len(ratios)} pairs: "
              f"{', '.join(f'{r:.2f}' for r in ratios)}; median "
              f"{statistics.median(ratios):.2f}, best {min(ratios):.2f}, "
              f"worst {max(ratios):.2f}")  # fmt: skip
        with psycopg.connect(args.database, autocommit=True) as conn:
            changed = conn.execute(f"UPDATE {table} SET n = n + 1 WHERE id % 100 = 0").rowcount
        result = measure("diff 1%", diff, url, env, server.pid)
        show(args, [result])
        verdict = "exactly those" if result.distinct == result.rows == changed else "NOT those"
        print(f"1% updated: {changed:,} rows changed, {result.rows:,} sent ({verdict})")
    finally:
        server.terminate()
        server.wait()


def show(args: argparse.Namespace, results: list[Measure]) -> None:
    print(f"\n{args.rows:,} rows, state {args.state}, deletes {args.deletes}, batch {args.batch}, "
          f"concurrency {args.concurrency}")  # fmt: skip
    print(f"{'':12}{'seconds':>10}{'CPU s':>8}{'peak RSS':>10}{'rows sent':>12}{'requests':>10}")
    for m in results:
        print(f"{m.name:12}{m.seconds:>10.2f}{m.cpu:>8.2f}{m.peak_rss_mb:>8.0f}MB"
              f"{m.rows:>12,}{m.requests:>10,}")  # fmt: skip


if __name__ == "__main__":
    main()
