"""A log stream whose reader went away drops lines quietly."""

from __future__ import annotations

import logging
import os

import pytest

from loader.logs import configure_logging


def test_a_log_line_to_a_closed_pipe_is_dropped_without_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``loader clock | head``: once head exits, a log line is not a "Logging error"."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "w") as stream:
        configure_logging(logging.INFO, stream, "text")
        try:
            logging.getLogger("loader.test").info("a line nobody reads")
        finally:
            logging.basicConfig(handlers=[logging.NullHandler()], force=True)
        with pytest.raises(BrokenPipeError):
            stream.close()
    assert "Logging error" not in capsys.readouterr().err
