"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.server import Endpoint


@pytest.fixture(autouse=True)
def isolated_state(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> str:
    """Every test gets its own SQLite state store (also for the CLI it starts)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('state') / 'state.db'}"
    monkeypatch.setenv("LOADER_STATE_URL", url)
    return url


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    """A recording, scriptable HTTP server on 127.0.0.1."""
    server = Endpoint().start()
    yield server
    server.stop()
