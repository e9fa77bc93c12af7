"""Run loader and the naive baseline on the same table and endpoint, in turn, and print
rows/s, CPU seconds and peak RSS for each, with the ratio.

    python -m bench.run --rows 1000000 [--concurrency 4] [--only loader] [--cursor] [--repeat N]
    python -m bench.run --rows 1000000 --vs-reference [--repeat 5]

``--vs-reference`` pairs loader with the reference streamer instead of the baseline
(``tuned.py --encode pg --fetch stream``, found in ``--reference`` DIR, else
``$LOADER_BENCH_REFERENCE``, else ``../shared/reference`` next to the checkout): the
two run in turn, the first of each pair alternating, and the summary gives loader's
wall time, CPU seconds and peak RSS as ratios of the reference's, their medians and
ranges.

The database comes from ``--database`` or ``LOADER_BENCH_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.generate import COLUMNS, ensure_table

DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class Measure:
    name: str
    seconds: float
    cpu: float
    peak_rss_mb: float
    rows: int
    distinct: int
    requests: int
    endpoint_cpu: float
    machine_cpu: float
    first_request: float  # seconds from the start to the endpoint's first request

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(url: str, method: str = "GET") -> dict[str, Any]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request) as response:
        body = response.read()
    return json.loads(body) if body.startswith(b'{"requests') else {}


def cpu_of(pid: int) -> float:
    """CPU seconds a process used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds every process on the machine used so far (Linux /proc/stat): the
    database's share is the machine's less the loader's and the endpoint's."""
    user, nice, system, _idle, _iowait, irq, softirq = map(
        int, Path("/proc/stat").read_text().split()[1:8]
    )
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def measure(
    name: str, command: list[str], endpoint: str, env: dict[str, str], server_pid: int
) -> Measure:
    """Run ``command`` to completion; wall time, its CPU time and peak RSS (wait4)."""
    http(f"{endpoint}/reset", "POST")
    server_cpu = cpu_of(server_pid)
    busy = machine_busy()
    began = time.time()
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)  # its summary
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    busy = machine_busy() - busy
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{name} failed with exit code {os.waitstatus_to_exitcode(status)}")
    stats = http(f"{endpoint}/stats")
    return Measure(
        name, seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
        stats["rows"], stats["distinct_ids"], stats["requests"], cpu_of(server_pid) - server_cpu,
        busy, stats["first"] - began if stats["first"] else 0.0,
    )  # fmt: skip


def loader_job(db: str, table: str, target: str, args: argparse.Namespace) -> Path:
    cursor = "  cursor: {column: id}\n" if args.cursor else ""
    text = (
        f"name: bench_{table}\n"
        f"source:\n  url: {db}\n  query: SELECT {COLUMNS} FROM {table}\n{cursor}"
        f"target:\n  url: {target}\n"
        f"batch:\n  size: {args.batch}\n"
        f"concurrency: {args.concurrency}\n"
    )
    path = Path(tempfile.mkdtemp()) / "bench.yml"
    path.write_text(text)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--database", default=os.environ.get("LOADER_BENCH_DATABASE_URL", DEFAULT_DB)
    )
    parser.add_argument("--only", choices=["loader", "baseline"])
    parser.add_argument(
        "--cursor", action="store_true", help="run loader with cursor: {column: id}"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run the pair N times, each ratio in its pair"
    )
    parser.add_argument(
        "--vs-reference", action="store_true", help="pair loader with the reference streamer"
    )
    parser.add_argument("--reference", type=Path, help="the reference streamer's directory")
    args = parser.parse_args()

    # Both loaders start from compiled bytecode, as after a regular `pip install`: with
    # PYTHONDONTWRITEBYTECODE set (some images do), an editable install would otherwise
    # compile loader's own modules again at every start.
    root = Path(__file__).resolve().parent.parent
    for package in ("loader", "bench"):
        compileall.compile_dir(root / package, quiet=1)

    table = ensure_table(args.database, args.rows)
    port = free_port()
    endpoint_url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.endpoint", str(port)], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    state_dir = tempfile.mkdtemp()
    env = {**os.environ, "LOADER_STATE_URL": f"sqlite:///{state_dir}/state.db"}
    baseline = [sys.executable, "-m", "bench.baseline", args.database, table]
    job = loader_job(args.database, table, endpoint_url + "/in", args)
    loader_command = [sys.executable, "-m", "loader", "run", "--full-refresh", str(job)]
    rounds: list[list[Measure]] = []
    if args.vs_reference:
        reference = reference_command(root, args, table, endpoint_url + "/in")
        try:
            vs_reference(args, loader_command, reference, endpoint_url, env, server.pid)
        finally:
            server.terminate()
            server.wait()
        return
    try:
        for _ in range(args.repeat):
            results = []
            if args.only in (None, "baseline"):
                results.append(measure(
                    "baseline", [*baseline, endpoint_url + "/in"], endpoint_url, env, server.pid
                ))  # fmt: skip
            if args.only in (None, "loader"):
                results.append(measure("loader", loader_command, endpoint_url, env, server.pid))
            report(args, results)
            rounds.append(results)
    finally:
        server.terminate()
        server.wait()
    ratios = [pair[1].rate / pair[0].rate for pair in rounds if len(pair) == 2]
    if len(ratios) > 1:
        print(
            f"\nratios over {len(ratios)} pairs: {', '.join(f'{r:.2f}x' for r in ratios)}; "
            f"median {statistics.median(ratios):.2f}x, lowest {min(ratios):.2f}x"
        )


def reference_command(root: Path, args: argparse.Namespace, table: str, target: str) -> list[str]:
    """The reference streamer's command line: same table, endpoint and batch size."""
    where = args.reference or Path(
        os.environ.get("LOADER_BENCH_REFERENCE") or root.parent / "shared" / "reference"
    )
    script = where / "tuned.py"
    if not script.is_file():
        sys.exit(f"{script}: no reference streamer there; pass --reference DIR")
    return [
        sys.executable, str(script), "--dsn", args.database, "--url", target,
        "--table", table, "--batch", str(args.batch), "--encode", "pg", "--fetch", "stream",
        "--quiet",
    ]  # fmt: skip


def vs_reference(
    args: argparse.Namespace,
    loader_command: list[str],
    reference: list[str],
    endpoint: str,
    env: dict[str, str],
    server_pid: int,
) -> None:
    """Run loader and the reference in turn, ``--repeat`` pairs, the first of each pair
    alternating so that a slow spell of the machine lands on both; print each pair and
    loader's ratios to the reference (wall, CPU, peak RSS): median and range."""
    pairs: list[tuple[Measure, Measure]] = []
    for i in range(args.repeat):
        order = [("loader", loader_command), ("reference", reference)]
        if i % 2:
            order.reverse()
        measured = {name: measure(name, command, endpoint, env, server_pid)
                    for name, command in order}  # fmt: skip
        pairs.append((measured["loader"], measured["reference"]))
        report(args, [measured["reference"], measured["loader"]])
    print(f"\nloader / reference over {len(pairs)} pairs ({args.rows:,} rows):")
    for label, field in (("wall", "seconds"), ("CPU", "cpu"), ("peak RSS", "peak_rss_mb")):
        mine = [float(getattr(a, field)) for a, _ in pairs]
        theirs = [float(getattr(b, field)) for _, b in pairs]
        ratios = [a / b for a, b in zip(mine, theirs, strict=True)]
        print(
            f"  {label:9} median {statistics.median(ratios):.2f}x, range {min(ratios):.2f}x"
            f" to {max(ratios):.2f}x ({', '.join(f'{r:.2f}' for r in ratios)}); loader median"
            f" {statistics.median(mine):.2f}, reference {statistics.median(theirs):.2f}"
        )


def report(args: argparse.Namespace, results: list[Measure]) -> None:
    print(f"\n{args.rows:,} rows, batch {args.batch}, loader concurrency {args.concurrency}")
    print(f"{'':10}{'rows/s':>12}{'seconds':>10}{'CPU s':>8}{'CPU s/M':>9}{'peak RSS':>10}"
          f"{'requests':>10}{'distinct':>10}{'endpoint CPU s':>16}"
          f"{'machine CPU s':>15}{'1st request s':>15}")  # fmt: skip
    for m in results:
        print(
            f"{m.name:10}{m.rate:>12,.0f}{m.seconds:>10.2f}{m.cpu:>8.2f}"
            f"{m.cpu / m.rows * 1e6 if m.rows else 0:>9.2f}{m.peak_rss_mb:>8.0f}MB"
            f"{m.requests:>10,}{m.distinct:>10,}{m.endpoint_cpu:>16.2f}{m.machine_cpu:>15.2f}"
            f"{m.first_request:>15.2f}"
        )
        if m.distinct != args.rows:
            print(f"  !! {m.name}: {m.distinct:,} distinct ids received, expected {args.rows:,}")
    if len(results) == 2 and results[0].name == "baseline":
        print(f"loader / baseline: {results[1].rate / results[0].rate:.2f}x rows/s")


if __name__ == "__main__":
    main()
