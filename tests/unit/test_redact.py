"""Secrets are masked structurally and by value."""

from __future__ import annotations

from loader.redact import (
    Redactor,
    is_secret_name,
    mask_url,
    query_secrets,
    register_runtime_secrets,
    url_passwords,
)


def test_url_passwords_and_secret_query_values_are_masked() -> None:
    """The user info password and key/token query values become ***."""
    assert mask_url("postgresql://app:p%40ss@db:5432/app") == "postgresql://app:***@db:5432/app"
    assert mask_url("https://h/x?api_key=abc&page=2") == "https://h/x?api_key=***&page=2"
    assert url_passwords("postgres://app:p%40ss@db/app")[0] == "p@ss"
    assert url_passwords("sqlite:///file.db") == []


def test_a_raw_at_sign_in_a_password_is_masked_whole() -> None:
    """An unencoded '@' in a password does not leave its tail to look like a host."""
    url = "postgresql://u:p@ss-secret@h/db"
    assert "ss-secret" in url_passwords(url)
    assert mask_url(url) == "postgresql://u:***@h/db"
    redactor = Redactor(url_passwords(url))
    assert "ss-secret" not in redactor.text("failed to resolve host 'ss-secret@127.0.0.1'")


def test_secret_names() -> None:
    """Authorization, keys, tokens, secrets and webhooks are secret; the idempotency key
    is not."""
    secret = ("Authorization", "X-Api-Key", "api_key", "CRM_TOKEN", "Cookie", "DB_PASSWORD",
              "SLACK_WEBHOOK_URL")  # fmt: skip
    for name in secret:
        assert is_secret_name(name), name
    for name in ("Idempotency-Key", "Content-Type", "X-Tenant", "DATABASE_URL"):
        assert not is_secret_name(name), name


def test_values_are_masked_anywhere_including_url_encoded() -> None:
    """A secret is masked wherever it appears, raw or percent-encoded; short ones are not."""
    redactor = Redactor(["s3cr/t!", "ab"])

    assert redactor.text("got s3cr/t! and s3cr%2Ft%21 and ab") == "got *** and *** and ab"


def test_headers_are_masked_by_name() -> None:
    """Secret headers are masked whatever their value; configured extra names too."""
    redactor = Redactor(secret_headers=frozenset({"x-signature-v2"}))

    assert redactor.headers(
        {"Authorization": "Bearer x", "X-Signature-V2": "y", "Accept": "application/json"}
    ) == {"Authorization": "***", "X-Signature-V2": "***", "Accept": "application/json"}


def test_values_are_masked_whole_never_inside_a_word() -> None:
    """A secret standing alone is masked; the same letters inside a longer word are not."""
    redactor = Redactor(["shop", "a-b=="])

    assert redactor.text("shop /shop/ shopping eshop a-b== xa-b==") == (
        "*** /***/ shopping eshop *** x***"
    )


def test_a_secret_url_keeps_its_scheme_and_host() -> None:
    """A webhook or heartbeat URL shows as scheme://host/***, also with a suffix."""
    redactor = Redactor(["https://hooks.slack.com/services/T1/B2/xyz", "https://h:8443/ping/u"])

    assert redactor.text("POST https://hooks.slack.com/services/T1/B2/xyz answered 500") == (
        "POST https://hooks.slack.com/*** answered 500"
    )
    assert (
        redactor.text("heartbeat https://h:8443/ping/u/fail") == "heartbeat https://h:8443/***/fail"
    )


def test_registered_secrets_reach_every_redactor() -> None:
    """A secret registered at run time (an OAuth2 token) is masked by redactors made
    before and after, with no secrets of their own."""
    before = Redactor()
    register_runtime_secrets(["runtime-tok-4f1e"])

    assert before.text("Bearer runtime-tok-4f1e") == "Bearer ***"
    assert Redactor().text("/moved/runtime-tok-4f1e") == "/moved/***"


def test_secret_query_values_are_masked_in_any_text() -> None:
    """?token= and ?password= values are masked in text; other parameters stay."""
    text = "GET http://h/x?page=2&token=abc123&api_key=k9 then /y?password=p&q=1 Idempotency"

    assert Redactor().text(text) == (
        "GET http://h/x?page=2&token=***&api_key=*** then /y?password=***&q=1 Idempotency"
    )
    assert query_secrets("http://h/x?token=abc&page=2") == ["abc"]
