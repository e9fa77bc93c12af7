"""A Slack incoming webhook, optionally rate limited, as a contract."""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Any

from tests.support.contracts.base import Answer, ContractServer, Request, text_answer


class SlackWebhook(ContractServer):
    """A Slack incoming webhook, ``POST /services/T000/B000/XXXX`` (``path``).

    The body must be a JSON object: malformed JSON, or a ``text`` that is not a string,
    is ``400 invalid_payload``; a missing or empty ``text`` is ``400 no_text`` (Slack's
    own code for it). Another path is ``404 no_service``. Success is ``200 ok`` (plain
    text, as Slack answers). With ``rate_per_second``, requests beyond that many in any
    one-second window are answered ``429`` with ``Retry-After: 1`` (counted in
    :attr:`throttled`). :attr:`messages` holds the accepted bodies.
    """

    PATH = "/services/T000/B000/XXXX"

    def __init__(self, *, path: str = PATH, rate_per_second: int | None = None) -> None:
        super().__init__()
        self.path = path
        self.rate_per_second = rate_per_second
        self.messages: list[dict[str, Any]] = []
        self.throttled = 0
        self._recent: deque[float] = deque()

    @property
    def webhook_url(self) -> str:
        return self.url + self.path

    @property
    def texts(self) -> list[str]:
        return [message["text"] for message in self.messages]

    def handle(self, request: Request) -> Answer:
        if request.path != self.path:
            return text_answer(404, "no_service")
        if request.method != "POST":
            return text_answer(405, "invalid_method")
        if self.rate_per_second is not None:
            now = time.monotonic()
            while self._recent and now - self._recent[0] >= 1.0:
                self._recent.popleft()
            if len(self._recent) >= self.rate_per_second:
                self.throttled += 1
                self.note(error="rate limited")
                return text_answer(429, "rate_limited", {"Retry-After": "1"})
            self._recent.append(now)
        try:
            body = json.loads(request.body)
        except ValueError:
            return text_answer(400, "invalid_payload")
        if not isinstance(body, dict) or not isinstance(body.get("text", ""), str):
            return text_answer(400, "invalid_payload")
        if not body.get("text"):
            return text_answer(400, "no_text")
        self.note(items=1)
        self.messages.append(body)
        return text_answer(200, "ok")
