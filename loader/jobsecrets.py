"""The secrets a job holds, gathered for masking: passwords in its URLs, secret headers,
credentials, tokens in alert and heartbeat URLs, secret envelope fields, and the values
interpolated from secret-named environment variables.

Below the job model: :meth:`Job.secrets() <loader.job.Job.secrets>` and
:meth:`Job.redactor() <loader.job.Job.redactor>` delegate here, so the model keeps one
way in for every caller while the gathering lives apart from its validation.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

from loader.redact import Redactor, is_secret_name, query_secrets, url_passwords

if TYPE_CHECKING:
    from loader.job import Job


def job_secrets(job: Job) -> frozenset[str]:
    """Every non-empty secret value written in ``job``'s fields. The values interpolated
    from the environment are the job's own to add: :meth:`Job.secrets()
    <loader.job.Job.secrets>` returns both."""
    found: set[str] = set()
    target = job.target
    for url in (job.source.url, target.url, target.proxy or ""):
        found.update(url_passwords(url), query_secrets(url))
    secret_headers = {name.lower() for name in target.secret_headers}
    for name, value in target.headers.items():
        if name.lower() in secret_headers or is_secret_name(name):
            found.add(value)
            _scheme, _, credential = value.partition(" ")
            if credential:
                found.add(credential)
    oauth2 = target.auth.oauth2
    if oauth2 is not None:
        found.add(oauth2.client_secret)
    basic = target.auth.basic
    if basic is not None:
        # The header as sent, and its base64 alone (an endpoint may echo either). The
        # username is no secret, unless it is the credential itself (a write key sent
        # with an empty password).
        encoded = base64.b64encode(f"{basic.username}:{basic.password}".encode()).decode()
        found.update({f"Basic {encoded}", encoded, basic.password or basic.username})
    # Alert and heartbeat URLs carry their tokens in the path.
    found.update(url for url in (job.alerts.webhook, job.alerts.slack, job.heartbeat) if url)
    if target.envelope:
        for name, value in target.envelope.fields.items():
            if is_secret_name(name) and isinstance(value, str):
                found.add(value)
    return frozenset(value for value in found if value)


def job_redactor(job: Job) -> Redactor:
    """A :class:`~loader.redact.Redactor` that masks every secret of ``job``
    (:meth:`Job.secrets() <loader.job.Job.secrets>`) and its secret headers."""
    secret_headers = frozenset(name.lower() for name in job.target.secret_headers)
    return Redactor(job.secrets(), secret_headers=secret_headers)
