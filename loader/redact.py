"""Masking secrets in everything loader prints, logs or raises.

Two layers: structural masking (the password of any ``scheme://user:password@`` URL,
values of secret-looking headers and query parameters) and masking by value (every secret
a job holds, wherever it appears, e.g. echoed back in a response body or a traceback).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

MASK = "***"
_SECRET_NAME = re.compile(
    r"auth|token|secret|passw|pwd|key|cookie|credential|signature|session", re.IGNORECASE
)
_NOT_SECRET = frozenset({"idempotency-key"})
# Greedy up to the last "@" before the path, so a raw "@" in a password is covered.
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):([^/\s]*)@")
# Values shorter than this are masked structurally only; masking every "ab" in a text
# would garble it without protecting anything.
_MIN_VALUE_LENGTH = 3


def is_secret_name(name: str) -> bool:
    """True for header, field or variable names that hold secrets (``Authorization``,
    ``X-Api-Key``, ``api_key``, ``CRM_TOKEN``...)."""
    return name.lower() not in _NOT_SECRET and bool(_SECRET_NAME.search(name))


def url_passwords(url: str) -> list[str]:
    """The password in ``url``'s user info, percent-decoded, and, when it holds a raw
    ``@``, each piece of it (a parser may split it there and show a piece as the host)."""
    match = _URL_PASSWORD.search(url)
    if not match or not match.group(2):
        return []
    password = match.group(2)
    pieces = password.split("@")
    return [unquote(password), password, *pieces]


def mask_url(url: str) -> str:
    """``url`` with the password and secret-looking query values replaced by ``***``."""
    url = _URL_PASSWORD.sub(rf"\1:{MASK}@", url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.query:
        return url
    query = [
        (name, MASK if is_secret_name(name) else value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*")))


class Redactor:
    """Masks a fixed set of secret values in text, URLs and headers."""

    def __init__(
        self, secrets: Iterable[str] = (), *, secret_headers: frozenset[str] = frozenset()
    ) -> None:
        values: set[str] = set()
        for secret in secrets:
            if len(secret) >= _MIN_VALUE_LENGTH:
                values.update({secret, quote(secret, safe=""), quote(secret)})
        # Longest first, so a secret that contains another is masked whole.
        self._values = sorted(values, key=len, reverse=True)
        self._secret_headers = secret_headers

    def text(self, text: str) -> str:
        """``text`` with every secret value and every URL password masked."""
        for value in self._values:
            text = text.replace(value, MASK)
        return _URL_PASSWORD.sub(rf"\1:{MASK}@", text)

    def url(self, url: str) -> str:
        """``url`` safe to print."""
        return self.text(mask_url(url))

    def headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """A copy of ``headers`` with secret values masked."""
        return {
            name: MASK
            if is_secret_name(name) or name.lower() in self._secret_headers
            else self.text(value)
            for name, value in headers.items()
        }


_REGISTERED: set[str] = set()
_REGISTERED_LOCK = threading.Lock()


def register_secrets(values: Iterable[str]) -> None:
    """Remember secrets of loaded jobs, so that :func:`mask_registered` (the log
    formatter's last pass) masks them whatever line they end up in."""
    with _REGISTERED_LOCK:
        _REGISTERED.update(value for value in values if len(value) >= _MIN_VALUE_LENGTH)


def mask_registered(text: str) -> str:
    """``text`` with every registered secret and every URL password masked."""
    with _REGISTERED_LOCK:
        secrets = list(_REGISTERED)
    return Redactor(secrets).text(text)
