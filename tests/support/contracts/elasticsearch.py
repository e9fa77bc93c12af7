"""Elasticsearch's (and OpenSearch's) ``_bulk`` API, as a contract."""

from __future__ import annotations

import json
from typing import Any

from tests.support.contracts.base import Answer, ContractServer, Request, json_answer

_ACTIONS = ("index", "create", "update", "delete")


def _error(status: int, kind: str, reason: str) -> Answer:
    return json_answer(status, {"error": {"type": kind, "reason": reason}, "status": status})


class ElasticsearchBulk(ContractServer):
    """``POST /_bulk`` (or ``/<index>/_bulk``) as Elasticsearch documents it.

    The body is NDJSON with ``Content-Type: application/x-ndjson`` (else ``406``) and
    must end with a newline (else ``400 illegal_argument_exception``, "The bulk request
    must be terminated by a newline [\\n]"); lines come in pairs, an action
    (``{"index"|"create": {"_index", "_id"}}``) then the document (``delete`` has no
    document); a malformed action line is a ``400`` for the whole request. With
    ``api_key``, ``Authorization: ApiKey <api_key>`` is required (else ``401``).

    The answer is ``200 {"took", "errors", "items"}`` with one item per action, in order,
    each ``{action: {"_index", "_id", "status", ...}}``: ``201 created`` or ``200
    updated``; ``400 mapper_parsing_exception`` for a document that is not an object or
    whose ``numeric`` field is not a number; ``409 version_conflict_engine_exception``
    for ``create`` of an existing id; ``429 es_rejected_execution_exception`` the first
    time an id in ``busy_once`` is written (the write queue was full). :attr:`indices`
    holds the documents stored, by index and id; :attr:`items` counts item results by
    status.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        numeric: tuple[str, ...] = ("price",),
        busy_once: set[str] | None = None,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.numeric = numeric
        self.busy_once = set(busy_once or ())
        self.indices: dict[str, dict[str, Any]] = {}
        self.items: dict[int, int] = {}

    def handle(self, request: Request) -> Answer:
        parts = request.path.strip("/").split("/")
        if parts[-1] != "_bulk" or len(parts) > 2 or request.method not in ("POST", "PUT"):
            return _error(404, "resource_not_found_exception", f"no handler for {request.path}")
        if self.api_key is not None and request.headers.get("authorization") != (
            f"ApiKey {self.api_key}"
        ):
            return _error(401, "security_exception", "missing authentication credentials")
        if request.content_type() != "application/x-ndjson":
            kind = request.content_type()
            return _error(406, "media_type_header_exception",
                          f"Content-Type header [{kind}] is not supported")  # fmt: skip
        if not request.body.endswith(b"\n"):
            return _error(400, "illegal_argument_exception",
                          "The bulk request must be terminated by a newline [\\n]")  # fmt: skip
        try:
            pairs = self._pairs(request.body, parts[0] if len(parts) == 2 else None)
        except ValueError as exc:
            self.note(error=str(exc))
            return _error(400, "illegal_argument_exception", str(exc))
        items = [self._write(action, index, doc_id, doc) for action, index, doc_id, doc in pairs]
        self.note(items=len(items))
        errors = any(item[next(iter(item))]["status"] >= 300 for item in items)
        return json_answer(200, {"took": 1, "errors": errors, "items": items})

    def _pairs(self, body: bytes, default_index: str | None) -> list[tuple[str, str, str, Any]]:
        lines = body.decode().split("\n")[:-1]
        pairs, at = [], 0
        while at < len(lines):
            try:
                action_line = json.loads(lines[at])
            except ValueError:
                raise ValueError(f"Malformed action/metadata line [{at + 1}]") from None
            if not isinstance(action_line, dict) or len(action_line) != 1:
                raise ValueError(f"Malformed action/metadata line [{at + 1}], expected a "
                                 "single key")  # fmt: skip
            action, meta = next(iter(action_line.items()))
            if action not in _ACTIONS or not isinstance(meta, dict):
                raise ValueError(f"Malformed action/metadata line [{at + 1}]: {action}")
            index = meta.get("_index", default_index)
            if not isinstance(index, str):
                raise ValueError(f"Validation Failed: 1: index is missing (line {at + 1})")
            doc: Any = None
            if action != "delete":
                if at + 1 >= len(lines):
                    raise ValueError(f"The bulk request's action on line {at + 1} has no "
                                     "document")  # fmt: skip
                try:
                    doc = json.loads(lines[at + 1])
                except ValueError:
                    doc = ValueError(lines[at + 1][:80])
                at += 1
            pairs.append((action, index, str(meta.get("_id", f"auto-{len(pairs)}")), doc))
            at += 1
        return pairs

    def _write(self, action: str, index: str, doc_id: str, doc: Any) -> dict[str, Any]:
        stored = self.indices.setdefault(index, {})
        head = {"_index": index, "_id": doc_id}
        if doc_id in self.busy_once:
            self.busy_once.discard(doc_id)
            return self._item(action, head, 429, error=("es_rejected_execution_exception",
                              "rejected execution of coordinating operation"))  # fmt: skip
        if action == "delete":
            found = stored.pop(doc_id, None) is not None
            return self._item(action, head, 200 if found else 404,
                              result="deleted" if found else "not_found")  # fmt: skip
        bad = self._mapping_problem(doc)
        if bad is not None:
            return self._item(action, head, 400, error=("mapper_parsing_exception", bad))
        if action == "create" and doc_id in stored:
            conflict = f"[{doc_id}]: version conflict, document already exists"
            return self._item(action, head, 409,
                              error=("version_conflict_engine_exception", conflict))  # fmt: skip
        existed = doc_id in stored
        stored[doc_id] = doc
        return self._item(action, head, 200 if existed else 201,
                          result="updated" if existed else "created")  # fmt: skip

    def _mapping_problem(self, doc: Any) -> str | None:
        if not isinstance(doc, dict):
            return "failed to parse: the document is not a JSON object"
        for name in self.numeric:
            value = doc.get(name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if value is not None and not number:
                return f"failed to parse field [{name}] of type [long] in document"
        return None

    def _item(
        self, action: str, head: dict[str, Any], status: int, *,
        result: str | None = None, error: tuple[str, str] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        self.items[status] = self.items.get(status, 0) + 1
        item = {**head, "status": status}
        if result is not None:
            item.update(result=result, _version=1)
        if error is not None:
            item["error"] = {"type": error[0], "reason": error[1]}
        return {action: item}
