"""Durations and sizes with units."""

from __future__ import annotations

from datetime import datetime

import pytest

from loader.units import format_duration, format_size, parse_duration, parse_size, when


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("30s", 30), ("1.5s", 1.5), ("5m", 300), ("2h", 7200), ("1d", 86400)],
)
def test_durations(text: str, seconds: float) -> None:
    """Durations parse to seconds and print back the same way."""
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("900B", 900),
        ("500KB", 500_000),
        ("1MB", 1_000_000),
        ("1MiB", 1_048_576),
        ("2GB", 2 * 10**9),
    ],
)
def test_sizes(text: str, size: int) -> None:
    """Sizes parse to bytes (KB = 1000, KiB = 1024) and print back the same way."""
    assert parse_size(text) == size
    assert parse_size(format_size(size)) == size


@pytest.mark.parametrize("text", ["30", "30 sec", "", "ms", "-1s"])
def test_durations_need_a_known_unit(text: str) -> None:
    """A bare number or an unknown unit is refused with the accepted forms."""
    with pytest.raises(ValueError, match=r"expected a duration with a unit \(ms, s, m, h, d\)"):
        parse_duration(text)


def test_sizes_need_a_known_unit() -> None:
    """A bare number or an unknown unit is refused with the accepted forms."""
    with pytest.raises(ValueError, match="expected a size with a unit"):
        parse_size("10 megs")


def test_when_renders_an_instant_in_local_time_or_utc() -> None:
    """Local time carries its offset; UTC ends in Z; both to the second."""
    assert when(0.0, utc=True) == "1970-01-01T00:00:00Z"
    assert when(1.9, utc=True) == "1970-01-01T00:00:01Z"
    assert datetime.fromisoformat(when(86400.0)).timestamp() == 86400.0
