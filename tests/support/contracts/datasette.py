"""Datasette's JSON write API (insert rows), as a contract."""

from __future__ import annotations

import json
from typing import Any

from tests.support.contracts.base import Answer, ContractServer, Request, json_answer


class DatasetteInsert(ContractServer):
    """``POST /<database>/<table>/-/insert`` with ``{"rows": [...]}`` (or ``{"row":
    {...}}``) and ``Authorization: Bearer <token>``, as Datasette 1.0 documents it.

    More than ``max_rows`` rows (100, Datasette's ``max_insert_rows``) is ``400 {"ok":
    false, "errors": ["Too many rows, maximum allowed is 100"]}`` for the whole
    request; a body over ``max_body`` bytes (a proxy's limit, when given) is ``413``; a
    row that is not an object, or a body without rows, is ``400``; a wrong token is
    ``403``. With ``unique`` (a column), a row whose value of it is already stored, as
    a primary key would, refuses the whole request: ``400 {"ok": false, "errors":
    ["UNIQUE constraint failed: ..."]}``. Success is ``201 {"ok": true}``.
    :attr:`rows` holds the rows inserted.
    """

    def __init__(
        self, token: str, *, max_rows: int = 100, max_body: int | None = None,
        unique: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.token = token
        self.max_rows = max_rows
        self.max_body = max_body
        self.unique = unique
        self.rows: list[dict[str, Any]] = []

    def handle(self, request: Request) -> Answer:
        parts = request.path.strip("/").split("/")
        if len(parts) != 4 or parts[2:] != ["-", "insert"] or request.method != "POST":
            return json_answer(404, {"ok": False, "error": "Not found", "status": 404})
        if request.bearer() != self.token:
            return json_answer(403, {"ok": False, "errors": ["Permission denied"]})
        if self.max_body is not None and len(request.body) > self.max_body:
            self.note(error="body too large")
            return Answer(413, b"<html><h1>413 Request Entity Too Large</h1></html>",
                          {"Content-Type": "text/html"})  # fmt: skip
        try:
            body = json.loads(request.body)
        except ValueError:
            return json_answer(400, {"ok": False, "errors": ["Invalid JSON"]})
        rows = body.get("rows", [body["row"]] if "row" in body else None) if isinstance(
            body, dict) else None  # fmt: skip
        if not isinstance(rows, list):
            return json_answer(400, {"ok": False, "errors": ['JSON must have "row" or "rows"']})
        if len(rows) > self.max_rows:
            self.note(items=len(rows), error="too many rows")
            message = f"Too many rows, maximum allowed is {self.max_rows}"
            return json_answer(400, {"ok": False, "errors": [message]})
        if not all(isinstance(row, dict) for row in rows):
            return json_answer(400, {"ok": False, "errors": ["Rows must be dictionaries"]})
        if self.unique is not None:
            stored = {row.get(self.unique) for row in self.rows}
            values = [row.get(self.unique) for row in rows]
            if stored.intersection(values) or len(set(values)) < len(values):
                self.note(items=len(rows), error="unique")
                message = f"UNIQUE constraint failed: {parts[1]}.{self.unique}"
                return json_answer(400, {"ok": False, "errors": [message]})
        self.note(items=len(rows))
        self.rows.extend(rows)
        return json_answer(201, {"ok": True})
