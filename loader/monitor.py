"""Telling a job's owner: heartbeats and alerts.

Alerts follow the job's state, not each run: one alert when a job starts failing, one
reminder if it is still failing after ``alerts.remind_after``, one notice when it
recovers. A run that dead-letters rows, and a job whose cursor falls behind
``alerts.max_lag``, alert too (the latter once, until it catches up). Channels: a
generic JSON webhook, a Slack incoming webhook, email over SMTP.

Heartbeats follow the healthchecks.io convention: ``URL/start`` when a run starts, ``URL``
when it succeeds, ``URL/fail`` when it fails, so an outside dead man's switch notices a
clock that stopped.

Deliveries happen on a background thread, each tried a few times and logged on failure:
they never fail or delay a run. :func:`flush` waits for them (the CLI does before exit).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from loader import defaults
from loader.errors import LoaderError, TooManyRejectionsError
from loader.job import Job
from loader.logs import event
from loader.redact import mask_path, register_secrets
from loader.result import RunResult, Status
from loader.sink import notify
from loader.state import AlertState, StateStore

log = logging.getLogger("loader.alerts")


@dataclass(frozen=True)
class Alert:
    """One alert: ``event`` is failing, still_failing, recovered, rejected_rows, lagging or
    caught_up."""

    event: str
    job: str
    run_id: str
    status: str
    error: str | None
    rows_posted: int
    rows_rejected: int
    last_success: str | None
    failing_since: str | None
    cursor_lag_seconds: float | None
    at: str

    def summary(self) -> str:
        """One line for Slack, email subjects and logs."""
        lag = f"{self.cursor_lag_seconds:.0f}s" if self.cursor_lag_seconds is not None else "?"
        what = {
            "failing": "is failing",
            "still_failing": f"is still failing (since {self.failing_since})",
            "recovered": "recovered",
            "rejected_rows": f"dead-lettered {self.rows_rejected} rejected row(s)",
            "lagging": f"is falling behind: its cursor is {lag} old",
            "caught_up": "caught up",
            "circuit_breaker": "stopped: too many rejected rows (circuit breaker)",
        }[self.event]
        detail = f": {self.error}" if self.error and self.event != "recovered" else ""
        return f"loader job {self.job} {what} (run {self.run_id}){detail}"


# Deliveries


class _Notifier:
    """A background thread that delivers queued notifications, retrying each a few
    times with a short back-off; failures are logged, never raised."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[str, Callable[[], None]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, what: str, deliver: Callable[[], None]) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._work, name="loader-notify", daemon=True
                )
                self._thread.start()
        self._queue.put((what, deliver))

    def _work(self) -> None:
        while True:
            what, deliver = self._queue.get()
            for attempt in range(1, defaults.NOTIFY_ATTEMPTS + 1):
                try:
                    deliver()
                    break
                except Exception as exc:  # any failure: log it, never lose the queue
                    if attempt == defaults.NOTIFY_ATTEMPTS:
                        event(log, "notify.failed", logging.ERROR, what=what, attempts=attempt,
                              error=f"{type(exc).__name__}: {exc}")  # fmt: skip
                    else:
                        time.sleep(attempt)
            self._queue.task_done()

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True


_NOTIFIER = _Notifier()


def flush(timeout: float = 15.0) -> bool:
    """Wait until queued alerts and heartbeats are delivered (or given up)."""
    return _NOTIFIER.flush(timeout)


def send_email(smtp_url: str, sender: str, to: tuple[str, ...], subject: str, body: str) -> None:
    """Mail through ``smtp_url``: ``smtp://user:password@host:port`` (STARTTLS when the
    server offers it) or ``smtps://`` (TLS from the start)."""
    import smtplib  # on first use: runs that send no mail skip its import
    from email.message import EmailMessage

    parts = urlsplit(smtp_url)
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, ", ".join(to), subject
    message.set_content(body)
    factory = smtplib.SMTP_SSL if parts.scheme == "smtps" else smtplib.SMTP
    with factory(
        parts.hostname or "localhost", parts.port or 0, timeout=defaults.NOTIFY_TIMEOUT
    ) as smtp:
        if parts.scheme == "smtp":
            smtp.ehlo()
            if smtp.has_extn("starttls"):
                smtp.starttls()
        if parts.username:
            smtp.login(unquote(parts.username), unquote(parts.password or ""))
        smtp.send_message(message)


# Decisions


def cursor_lag(position: tuple[Any, ...] | None, now: float) -> float | None:
    """Seconds between ``now`` and the checkpoint's cursor value, for time cursors.
    A timestamp without time zone is taken as UTC."""
    value = position[0] if position else None
    if isinstance(value, datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=UTC)
        return max(0.0, now - stamp.timestamp())
    if isinstance(value, date):
        return max(0.0, now - datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp())
    return None


class Monitor:
    """Heartbeats and alerts for one job's runs. ``env`` supplies the default channels
    (``LOADER_ALERT_URL``...); ``now`` is the wall clock."""

    def __init__(
        self,
        job: Job,
        store: StateStore,
        *,
        env: Mapping[str, str] | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.job = job
        self.store = store
        self.env = os.environ if env is None else env
        self.now = now
        # Alert and heartbeat URLs carry tokens in their paths: mask them in every log.
        urls = [self.env.get(defaults.ALERT_URL_ENV), self.env.get(defaults.ALERT_SLACK_URL_ENV),
                self.env.get(defaults.SMTP_URL_ENV), job.heartbeat,
                job.heartbeat.rstrip("/") if job.heartbeat else None]  # fmt: skip
        register_secrets(url for url in urls if url)

    def started(self) -> None:
        """A run of the job started."""
        try:
            self._heartbeat("/start")
        except Exception:
            event(log, "heartbeat.failed", logging.ERROR, exc_info=True, job=self.job.name)

    def finished(self, result: RunResult, error: LoaderError | None = None) -> None:
        """A run ended with ``result`` (a RunResult), failed with ``error`` if given.
        Never raises: telling the owner must not break the run."""
        try:
            self._finished(result, error)
        except Exception:
            event(log, "alert.failed", logging.ERROR, exc_info=True, job=self.job.name)

    def _finished(self, result: RunResult, error: LoaderError | None) -> None:
        if error is None and result.status == Status.INTERRUPTED:
            return  # stopped by a signal: neither a failure nor a success
        failed = error is not None or result.status == Status.FAILED
        self._heartbeat("/fail" if failed else "")
        try:
            state = self.store.alert_state(self.job.name)
            alerts, state = self._decide(state, result, error)
            self.store.save_alert_state(state)
        except LoaderError as exc:
            event(log, "alert.state_failed", logging.ERROR, job=self.job.name, error=exc)
            return
        for alert in alerts:
            self._send(alert)

    def _decide(
        self, state: AlertState, result: RunResult, error: LoaderError | None
    ) -> tuple[list[Alert], AlertState]:
        now = self.now()
        failed = error is not None or result.status == Status.FAILED
        lag = cursor_lag(result.checkpoint, now)
        events: list[str] = []
        if failed:
            if state.failing_since is None:
                events.append("failing")
                state = replace(state, failing_since=now, last_alert_at=now)
            elif isinstance(error, TooManyRejectionsError):
                events.append("circuit_breaker")
            elif now - (state.last_alert_at or now) >= self.job.alerts.remind_after:
                events.append("still_failing")
                state = replace(state, last_alert_at=now)
        else:
            if state.failing_since is not None:
                events.append("recovered")
            if result.status in (Status.SUCCEEDED, Status.PARTIAL):
                state = replace(state, failing_since=None, last_success_at=now)
            if result.rows_rejected:
                events.append("rejected_rows")
        max_lag = self.job.alerts.max_lag
        if max_lag is not None and lag is not None:
            if lag > max_lag and state.lagging_since is None:
                events.append("lagging")
                state = replace(state, lagging_since=now)
            elif lag <= max_lag and state.lagging_since is not None:
                events.append("caught_up")
                state = replace(state, lagging_since=None)
        message = self.job.redactor().text(str(error)) if error is not None else result.error
        if isinstance(error, TooManyRejectionsError):
            message = f"circuit breaker tripped: {message}"
        alerts = [
            Alert(
                event=event,
                job=self.job.name,
                run_id=result.run_id,
                status=result.status,
                error=message,
                rows_posted=result.rows_posted,
                rows_rejected=result.rows_rejected,
                last_success=_iso(state.last_success_at),
                failing_since=_iso(state.failing_since),
                cursor_lag_seconds=lag,
                at=_iso(now) or "",
            )  # fmt: skip
            for event in events
        ]
        return alerts, state

    def _send(self, alert: Alert) -> None:
        channels = self.job.alerts
        webhook = channels.webhook or self.env.get(defaults.ALERT_URL_ENV)
        slack = channels.slack or self.env.get(defaults.ALERT_SLACK_URL_ENV)
        email = channels.email or tuple(
            a.strip() for a in self.env.get(defaults.ALERT_EMAIL_ENV, "").split(",") if a.strip()
        )
        if not (webhook or slack or email):
            self._logged(alert, "alert.not_sent", reason="no alert channel configured")
        if webhook:
            payload = alert.__dict__
            self._logged(alert, "alert.sent", channel="webhook", to=mask_path(webhook))
            _NOTIFIER.submit(f"alert to {mask_path(webhook)}", lambda: notify(webhook, payload))
        if slack:
            self._logged(alert, "alert.sent", channel="slack", to=mask_path(slack))
            text = alert.summary()
            slack_body = {"text": text, "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            ]}  # fmt: skip
            _NOTIFIER.submit("Slack alert", lambda: notify(slack, slack_body))
        if email:
            smtp_url = self.env.get(defaults.SMTP_URL_ENV)
            if not smtp_url:
                reason = f"email needs {defaults.SMTP_URL_ENV} (smtp://user:password@host:port)"
                self._logged(alert, "alert.not_sent", logging.ERROR, channel="email",
                             reason=reason)  # fmt: skip
                return
            self._logged(alert, "alert.sent", channel="email", to=", ".join(email))
            sender = self.env.get(defaults.ALERT_FROM_ENV, "loader@localhost")
            body = "\n".join(f"{k}: {v}" for k, v in alert.__dict__.items())
            _NOTIFIER.submit(
                f"email alert to {', '.join(email)}",
                lambda: send_email(smtp_url, sender, email, f"[loader] {alert.summary()}", body),
            )

    def _logged(self, alert: Alert, name: str, level: int = logging.WARNING, **fields: Any) -> None:
        """Log ``alert`` as the event ``name``: where it went, or why it did not."""
        event(log, name, level, job=alert.job, run_id=alert.run_id, alert=alert.event,
              status=alert.status, error=alert.error, summary=alert.summary(),
              **fields)  # fmt: skip

    def _heartbeat(self, suffix: str) -> None:
        url = self.job.heartbeat
        if url:
            target = url.rstrip("/") + suffix
            _NOTIFIER.submit(f"heartbeat {mask_path(target)}", lambda: notify(target))


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
