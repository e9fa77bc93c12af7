"""Masking secrets in everything loader prints, logs or raises.

One place decides what is secret, one :meth:`Redactor.text` masks it at every exit:

* structurally, whatever the values: the password of any ``scheme://user:password@``
  URL, and the value of every secret-named query parameter (``?token=``, ``?api_key=``);
* by value: the secrets a job holds (:mod:`loader.jobsecrets`), and those that only
  exist at run time (OAuth2 tokens), registered with :func:`register_runtime_secrets`
  and masked by every redactor from then on, wherever they appear (an echoed header, a
  redirect's ``Location``, a reason phrase, a traceback). Log lines get a last pass
  with the secrets of every job loaded (:func:`register_secrets`).

A value that reads like a word is masked only where it stands alone: a secret ``shop``
leaves ``shopping`` alone. A secret that is a URL with a path (a webhook, a heartbeat
URL) keeps its scheme and host: ``https://hooks.slack.com/***``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

MASK = "***"
_SECRET_NAME = re.compile(
    r"auth|token|secret|passw|pwd|key|cookie|credential|signature|session|webhook",
    re.IGNORECASE,
)
_NOT_SECRET = frozenset({"idempotency-key"})
# Greedy up to the last "@" before the path, so a raw "@" in a password is covered.
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):([^/\s]*)@")
# A query parameter in a URL written out in text: its name and its value.
_QUERY_PARAM = re.compile(r"([?&])([^=&#\s\"'<>]+)=([^&#\s\"'<>]*)")
# Values shorter than this are masked structurally only; masking every "ab" in a text
# would garble it without protecting anything.
_MIN_VALUE_LENGTH = 3
_WORD = "A-Za-z0-9"
# Letters-only values shorter than this may be ordinary words: masked only standing alone.
_WORD_LIKE_BELOW = 16


def is_secret_name(name: str) -> bool:
    """True for header, field or variable names that hold secrets (``Authorization``,
    ``X-Api-Key``, ``api_key``, ``CRM_TOKEN``, ``SLACK_WEBHOOK_URL``...)."""
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


def query_secrets(url: str) -> list[str]:
    """The values of ``url``'s secret-named query parameters (``?token=...``), decoded."""
    try:
        query = urlsplit(url).query
    except ValueError:
        return []
    return [value for name, value in parse_qsl(query) if is_secret_name(name) and value]


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


def mask_path(url: str) -> str:
    """A credential URL (a webhook, a heartbeat) as its scheme and host: ``https://h/***``."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return MASK
    if not parts.scheme or not parts.hostname:
        return MASK
    return f"{parts.scheme}://{parts.hostname}{port}/{MASK}"


def _replacements(secrets: Iterable[str]) -> dict[str, str]:
    """Each form a secret may take in text (raw, percent-encoded), with what replaces it."""
    found: dict[str, str] = {}
    for secret in secrets:
        if len(secret) < _MIN_VALUE_LENGTH:
            continue
        shown = mask_path(secret) if _has_path(secret) else MASK
        for form in (quote(secret, safe=""), quote(secret), secret):
            found[form] = shown if form == secret else MASK
        if shown != MASK:
            # A credential URL's path is the credential: masked also where the URL is
            # shown without its query (secret query values masked first) or alone.
            base, path = _base_and_path(secret)
            found.setdefault(base, shown)
            if len(path.strip("/")) >= _MIN_VALUE_LENGTH:
                found.setdefault(path, f"/{MASK}")
    return found


def _base_and_path(url: str) -> tuple[str, str]:
    """``url`` without its query and fragment, and its path alone."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="", fragment="")), parts.path


def _has_path(value: str) -> bool:
    """True for a URL with a path beyond ``/``: where a webhook keeps its token."""
    try:
        return "://" in value and urlsplit(value).path.strip("/") != ""
    except ValueError:
        return False


def _pattern(values: Iterable[str]) -> re.Pattern[str] | None:
    """One pattern for ``values``, longest first (a secret that contains another is
    masked whole). A value that reads like a word (letters only, shorter than
    :data:`_WORD_LIKE_BELOW`) is matched only where it stands alone: ``shop`` is masked,
    ``shopping`` is not. Any other value (tokens, base64, passwords with digits or
    symbols) is masked wherever it appears, even glued to other text (``%20``, ``\\n``)."""
    alternatives = []
    for value in sorted(values, key=len, reverse=True):
        escaped = re.escape(value)
        if value.isalpha() and len(value) < _WORD_LIKE_BELOW:
            escaped = f"(?<![{_WORD}]){escaped}(?![{_WORD}])"
        alternatives.append(escaped)
    return re.compile("|".join(alternatives)) if alternatives else None


def _mask_query(match: re.Match[str]) -> str:
    lead, name, value = match.groups()
    return f"{lead}{name}={MASK}" if value and is_secret_name(unquote(name)) else match.group(0)


class _Values:
    """A set of secret values and the one pattern that finds them in text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.replacements = _replacements(secrets)
        self.pattern = _pattern(self.replacements)

    def mask(self, text: str) -> str:
        if self.pattern is None:
            return text
        replacements = self.replacements
        return self.pattern.sub(lambda m: replacements.get(m.group(0), MASK), text)


class Redactor:
    """Masks secrets in text, URLs and headers: ``secrets`` (a job's), every runtime
    secret, URL passwords and secret query values."""

    def __init__(
        self, secrets: Iterable[str] = (), *, secret_headers: frozenset[str] = frozenset()
    ) -> None:
        self._values = _Values(secrets)
        self._secret_headers = secret_headers

    def text(self, text: str) -> str:
        """``text`` with every secret value, URL password and secret query value masked."""
        text = _RUNTIME.mask(self._values.mask(text))
        text = _QUERY_PARAM.sub(_mask_query, text)
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


class _Registry:
    """A growing set of secrets, shared by threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._values = _Values()

    def add(self, values: Iterable[str]) -> None:
        with self._lock:
            new = {value for value in values if len(value) >= _MIN_VALUE_LENGTH}
            if not new <= self._secrets:
                self._secrets |= new
                self._values = _Values(self._secrets)

    def mask(self, text: str) -> str:
        return self._values.mask(text)  # one read of the attribute: no lock needed


# Secrets that exist only at run time (fetched tokens): every redactor masks them.
_RUNTIME = _Registry()
# Secrets of every job loaded in this process: the last pass over every log line.
_LOADED = _Registry()


def register_runtime_secrets(values: Iterable[str]) -> None:
    """Make ``values``, secrets that exist only at run time (an OAuth2 access token),
    secret for every :class:`Redactor` from now on, and so for every error, log line,
    state store column and alert, whichever redactor masks it."""
    _RUNTIME.add(values)
    _LOADED.add(values)


def register_secrets(values: Iterable[str]) -> None:
    """Remember secrets of loaded jobs, so that :func:`mask_registered` (the log
    formatter's last pass) masks them whatever line they end up in."""
    _LOADED.add(values)


def mask_registered(text: str) -> str:
    """``text`` with every registered secret, URL password and secret query value masked."""
    return _LOADED.mask(Redactor().text(text))
