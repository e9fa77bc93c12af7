"""``loader check``: can this job reach its database and its endpoint? Nothing is sent."""

from __future__ import annotations

from dataclasses import dataclass

from loader.errors import LoaderError
from loader.job import Job
from loader.probes import describe_query
from loader.sink import probe
from loader.state import open_state


@dataclass(frozen=True)
class Check:
    """One check: what was tried, whether it worked, and what was seen."""

    name: str
    ok: bool
    detail: str


def check_job(job: Job) -> list[Check]:
    """Connect to the database (the query runs with ``LIMIT 0``, read-only), open a
    connection to the endpoint (TCP, and TLS for https) and open the state store.
    Sends no row and makes no HTTP request."""
    redactor = job.redactor()
    checks = []
    try:
        columns = describe_query(job.source, redactor)
        checks.append(Check("source", True, f"the query returns {', '.join(columns)}"))
    except LoaderError as exc:
        checks.append(Check("source", False, redactor.text(str(exc))))
    try:
        checks.append(Check("target", True, probe(job.target)))
    except LoaderError as exc:
        checks.append(Check("target", False, redactor.text(str(exc))))
    try:
        store = open_state()
        checkpoint = store.checkpoint(job.name)
        store.close()
        where = "no checkpoint yet" if checkpoint is None else "a checkpoint is saved"
        checks.append(Check("state", True, f"{store.url}: {where}"))
    except LoaderError as exc:
        checks.append(Check("state", False, redactor.text(str(exc))))
    return checks
