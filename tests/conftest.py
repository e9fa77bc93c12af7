"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.server import Endpoint


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    """A recording, scriptable HTTP server on 127.0.0.1."""
    server = Endpoint().start()
    yield server
    server.stop()
