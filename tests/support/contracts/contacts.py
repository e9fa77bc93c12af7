"""A CRM-style contact upsert (``PUT /contacts/<email>``) as a contract."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from tests.support.contracts.base import Answer, ContractServer, Request, json_answer


class ContactsApi(ContractServer):
    """A CRM-style upsert: ``PUT /contacts/<email>`` with a JSON object body.

    ``Authorization: Bearer <token>`` is required (``401`` otherwise). The email in the
    path is URL-decoded; a body whose ``email`` differs from it is a ``422``, a body
    that is not a JSON object a ``400``, a path segment without ``@`` a ``404``, any
    other method a ``405``. Success is ``200 {"email": ..., "version": n}``.

    :attr:`contacts` maps each email to the bodies received for it, in order.
    """

    PREFIX = "/contacts/"

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.contacts: dict[str, list[dict[str, Any]]] = {}

    @property
    def emails(self) -> list[str]:
        return list(self.contacts)

    def bodies(self, email: str) -> list[dict[str, Any]]:
        return list(self.contacts.get(email, []))

    def latest(self, email: str) -> dict[str, Any] | None:
        bodies = self.contacts.get(email)
        return bodies[-1] if bodies else None

    def handle(self, request: Request) -> Answer:
        if not request.path.startswith(self.PREFIX):
            return json_answer(404, {"error": "not found"})
        email = unquote(request.path[len(self.PREFIX) :])
        if "/" in email or "@" not in email:
            return json_answer(404, {"error": f"no contact resource at {request.path}"})
        if request.method != "PUT":
            return json_answer(405, {"error": "method not allowed"}, {"Allow": "PUT"})
        if request.bearer() != self.token:
            self.note(error="bad token")
            return json_answer(401, {"error": "unauthorized"})
        try:
            body = json.loads(request.body)
        except ValueError:
            return json_answer(400, {"error": "body is not valid JSON"})
        if not isinstance(body, dict):
            return json_answer(400, {"error": "body must be a JSON object"})
        self.note(items=1)
        if "email" in body and body["email"] != email:
            self.note(error="email mismatch")
            return json_answer(
                422, {"error": f"email in the body ({body['email']!r}) does not match the URL"}
            )
        self.contacts.setdefault(email, []).append(body)
        return json_answer(200, {"email": email, "version": len(self.contacts[email])})
