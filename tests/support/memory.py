"""Peak memory of a `loader run` in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

_SCRIPT = textwrap.dedent(
    """\
    import resource, sys
    from loader.cli import main
    sys.argv = ["loader", "run", sys.argv[1]]
    try:
        main()
    finally:
        print("maxrss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
    """
)


def peak_rss_kib(job: Path, cwd: Path, env: dict[str, str] | None = None) -> int:
    """Run ``loader run job`` to success in a subprocess; its peak RSS in KiB."""
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(job)], cwd=cwd, env={**os.environ, **(env or {})},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return int(done.stderr.split("maxrss")[1].split()[0])
