"""Classifying one HTTP attempt (httpx.MockTransport: pure, no sockets)."""

from __future__ import annotations

from email.utils import formatdate

import httpx
import pytest

from loader import RejectedError, RetryableSinkError, SinkError, build_job
from loader.sink import Sink, idempotency_key, parse_retry_after

TOKEN = "tok-abc-123"


def sink_answering(response: httpx.Response | Exception, **target: object) -> Sink:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(response, Exception):
            raise response
        return response

    job = build_job(
        {
            "name": "j",
            "source": {"url": "sqlite://", "query": "SELECT 1"},
            "target": {
                "url": "https://user:pw-xyz@api.example.com/in?token=q-secret",
                "headers": {"Authorization": f"Bearer {TOKEN}"},
                **target,
            },
        },
        env={},
    )
    return Sink(
        job.target,
        job.redactor(),
        user_agent="loader/test",
        content_type="application/json",
        transport=httpx.MockTransport(handler),
        wall_clock=lambda: 1_700_000_000.0,
    )


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_an_acknowledgement(status: int) -> None:
    """Any 2xx acknowledges the body."""
    sink_answering(httpx.Response(status)).send(b"[]", "k")


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_statuses(status: int) -> None:
    """408, 429 and the transient 5xx are retryable, with their status."""
    with pytest.raises(RetryableSinkError) as caught:
        sink_answering(httpx.Response(status)).send(b"[]", "k")
    assert caught.value.status == status and caught.value.retry_after is None


def test_retry_after_seconds_and_date() -> None:
    """Retry-After as seconds or HTTP-date becomes seconds from now."""
    at = formatdate(1_700_000_000 + 42, usegmt=True)
    for header, expected in (("7", 7.0), (at, 42.0), ("soon", None)):
        with pytest.raises(RetryableSinkError) as caught:
            sink_answering(httpx.Response(429, headers={"Retry-After": header})).send(b"[]", "k")
        assert caught.value.retry_after == expected


def test_parse_retry_after_in_the_past_is_zero() -> None:
    """A date already past means retry now."""
    assert parse_retry_after(formatdate(100, usegmt=True), now=200) == 0.0
    assert parse_retry_after(None) is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422])
def test_other_4xx_are_rejections_with_a_redacted_excerpt(status: int) -> None:
    """Other 4xx are rejected; the body excerpt is kept with secrets masked."""
    body = f'{{"error": "invalid", "echo": "Bearer {TOKEN}"}}'
    with pytest.raises(RejectedError) as caught:
        sink_answering(httpx.Response(status, text=body)).send(b"[]", "k")
    error = caught.value
    assert error.status == status
    assert error.body_excerpt == '{"error": "invalid", "echo": "***"}'
    assert TOKEN not in str(error) and "pw-xyz" not in str(error)
    assert "q-secret" not in error.url


def test_long_bodies_are_cut() -> None:
    """The excerpt is short: at most 500 characters and an ellipsis."""
    with pytest.raises(RejectedError) as caught:
        sink_answering(httpx.Response(400, text="x" * 5000)).send(b"[]", "k")
    assert len(caught.value.body_excerpt) == 503


def test_redirects_and_other_statuses_are_fatal() -> None:
    """A 3xx is not followed; a 501 is not retried."""
    with pytest.raises(SinkError, match="redirecting to https://new.example.com/in"):
        sink_answering(
            httpx.Response(308, headers={"Location": "https://new.example.com/in"})
        ).send(b"[]", "k")
    with pytest.raises(SinkError) as caught:
        sink_answering(httpx.Response(501)).send(b"[]", "k")
    assert not isinstance(caught.value, RetryableSinkError | RejectedError)


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("reset"),
    ],
)
def test_transport_errors_are_retryable(error: Exception) -> None:
    """Connection failures and timeouts are retryable, with no status."""
    with pytest.raises(RetryableSinkError) as caught:
        sink_answering(error).send(b"[]", "k")
    assert caught.value.status is None


def test_prepared_request_masks_secrets() -> None:
    """What --dry-run shows has the Authorization value and URL secrets masked."""
    request = sink_answering(httpx.Response(200)).prepare(b"[]", "key-1")

    assert request.headers["Authorization"] == "***"
    assert request.headers["Idempotency-Key"] == "key-1"
    assert request.url == "https://user:***@api.example.com/in?token=***"


def test_idempotency_key_is_stable_per_job_scope_and_body() -> None:
    """Same job, scope and body: same key. Identical bodies in other scopes (another
    batch of the run, another run) get other keys, so none is taken for a duplicate."""
    assert idempotency_key("j", "s", b"[1]") == idempotency_key("j", "s", b"[1]")
    assert idempotency_key("j", "s", b"[1]") != idempotency_key("j", "s", b"[2]")
    assert idempotency_key("j", "s", b"[1]") != idempotency_key("k", "s", b"[1]")
    assert idempotency_key("j", "run:a:1", b"[1]") != idempotency_key("j", "run:a:2", b"[1]")


def test_retry_after_with_non_ascii_digits_is_ignored() -> None:
    """A Retry-After of Unicode digits is not a number of seconds (and does not crash)."""
    assert parse_retry_after("²") is None


def test_secrets_are_masked_before_the_excerpt_is_cut() -> None:
    """A token that straddles the excerpt's cut is still masked entirely."""
    body = "x" * 495 + f"Bearer {TOKEN}" + "y" * 100
    with pytest.raises(RejectedError) as caught:
        sink_answering(httpx.Response(400, text=body)).send(b"[]", "k")
    assert "tok-" not in caught.value.body_excerpt
