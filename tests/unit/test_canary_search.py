"""The canary suite's search finds a canary however it is encoded, and nothing else."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import pytest

from tests.support.canaries import BASIC_USER, CANARIES, leaks

BEARER = CANARIES["bearer token"]
BASIC = CANARIES["basic auth password"]


@pytest.mark.parametrize(
    ("text", "form"),
    [
        (f"error: Bearer {BEARER} refused", "plain"),
        (f"Location: /moved/{quote(BEARER, safe='')}", "url-encoded"),
        (base64.b64encode(f"x{BEARER}yz".encode()).decode(), "base64"),
        (base64.b64encode(f"xx{BEARER}".encode()).decode(), "base64"),
        (base64.b64encode(f"{{'t': '{BEARER}'}}".encode()).decode(), "base64"),
    ],
)
def test_a_canary_is_found_in_every_encoding(text: str, form: str) -> None:
    """Plain, URL-encoded and base64 at any alignment inside a longer text."""
    (leak,) = leaks(json.dumps({"out": text}), "somewhere")
    assert leak.canary == "bearer token" and leak.form.startswith(form)
    assert leak.where == "somewhere" and leak.excerpt


def test_the_basic_auth_header_is_found_as_sent() -> None:
    """``Authorization: Basic base64(user:password)`` is reported as that pair."""
    header = base64.b64encode(f"{BASIC_USER}:{BASIC}".encode()).decode()
    (leak,) = leaks(f"echo: Authorization: Basic {header}", "stderr")
    assert leak.canary == "basic auth password" and leak.form == "base64 of user:password"
    assert header in leak.excerpt and "stderr" in str(leak)


def test_masked_text_and_the_username_are_clean() -> None:
    """Masked values, the basic-auth username and near misses are no leak."""
    text = f"Authorization: *** user {BASIC_USER} url http://h/x?api_key=*** cnry-bearer/4b9"
    assert leaks(text, "stdout") == []
