"""The per-row recipes in jobs/ (a REST upsert, a Slack webhook), run as shipped against
local stand-ins that enforce each API's contract (see tests.support.contracts)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loader import RejectedError, load_job, run_job
from tests.integration.conftest import Schema
from tests.support.contracts import ContactsApi, SlackWebhook

JOBS = Path(__file__).resolve().parents[2] / "jobs"


@pytest.fixture
def crm() -> Iterator[ContactsApi]:
    with ContactsApi(token="crm-secret") as server:
        yield server


@pytest.fixture
def slack() -> Iterator[SlackWebhook]:
    with SlackWebhook(rate_per_second=1) as server:
        yield server


def test_contacts_upsert_recipe(schema: Schema, crm: ContactsApi) -> None:
    """Each changed user is one PUT to its own URL, with the bearer token and a body of
    the contact's fields; a contact updated twice arrives twice, in order; the next run
    sends only what changed since."""
    schema.execute(
        "CREATE TABLE users (id bigserial PRIMARY KEY, email text, first_name text, "
        "last_name text, plan text, updated_at timestamptz)"
    )
    schema.execute(
        "INSERT INTO users (email, first_name, last_name, plan, updated_at) "
        "SELECT 'user' || g || '+tag@example.com', 'F' || g, 'L' || g, 'free', "
        "now() - interval '1 hour' + g * interval '1 second' FROM generate_series(1, 40) g"
    )
    schema.execute(  # a second version of user 7, and a user without an email
        "INSERT INTO users (email, first_name, last_name, plan, updated_at) VALUES "
        "('user7+tag@example.com', 'F7', 'L7', 'pro', now() - interval '10 minutes'), "
        "(NULL, 'No', 'Email', 'free', now() - interval '10 minutes')"
    )
    env = {"DATABASE_URL": schema.scoped_url, "CRM_URL": crm.url, "CRM_TOKEN": "crm-secret"}
    job = load_job(JOBS / "contacts_upsert.yml", env=env)

    result = run_job(job)

    assert result.status == "succeeded", result
    assert crm.rejected == 0 and crm.requests == 41
    assert len(crm.emails) == 40
    assert crm.bodies("user7+tag@example.com") == [
        {"email": "user7+tag@example.com", "first_name": "F7", "last_name": "L7", "plan": "free"},
        {"email": "user7+tag@example.com", "first_name": "F7", "last_name": "L7", "plan": "pro"},
    ]

    schema.execute(
        "UPDATE users SET plan = 'team', updated_at = now() - interval '5 minutes' WHERE id = 3"
    )
    assert run_job(job).rows_posted == 1
    assert crm.latest("user3+tag@example.com") == {
        "email": "user3+tag@example.com", "first_name": "F3", "last_name": "L3", "plan": "team",
    }  # fmt: skip

    wrong = load_job(JOBS / "contacts_upsert.yml", env={**env, "CRM_TOKEN": "stale"})
    schema.execute("UPDATE users SET updated_at = now() - interval '1 minute' WHERE id = 4")
    with pytest.raises(RejectedError, match="401"):
        run_job(wrong)  # a bad token fails the run: it is not one row's fault


def test_slack_webhook_recipe(schema: Schema, slack: SlackWebhook) -> None:
    """One message per sign-up, in order, each body exactly {"text": ...} as Slack
    requires, paced to the webhook's one message per second."""
    schema.execute(
        "CREATE TABLE signups (id bigserial PRIMARY KEY, email text, plan text, seats int, "
        "created_at timestamptz)"
    )
    schema.execute(
        "INSERT INTO signups (email, plan, seats, created_at) "
        "SELECT 'a' || g || '@x.io', 'pro', g, now() - interval '1 minute' + g * interval '1 s' "
        "FROM generate_series(1, 4) g"
    )
    env = {"DATABASE_URL": schema.scoped_url, "SLACK_WEBHOOK_URL": slack.webhook_url}
    job = load_job(JOBS / "slack_signups.yml", env=env)

    result = run_job(job)

    assert result.status == "succeeded", result
    assert slack.messages == [
        {"text": f"New sign-up: a{g}@x.io on *pro* ({g} seats)"} for g in range(1, 5)
    ]
    accepted = [e.at for e in slack.exchanges if e.ok]
    assert all(
        later - earlier >= 0.9 for earlier, later in zip(accepted, accepted[1:], strict=False)
    )
    assert run_job(job).requests == 0
