"""Documented constants in one place: defaults of the job file and the CLI's exit codes."""

from __future__ import annotations

from typing import Final

#: Rows per request.
BATCH_SIZE: Final = 500
#: Largest request body in bytes (1 MB).
BATCH_MAX_BYTES: Final = 1_000_000
#: Seconds before one HTTP request times out.
TARGET_TIMEOUT: Final = 30.0
#: Attempts per batch, the first included.
RETRY_ATTEMPTS: Final = 5
#: First back-off in seconds; doubles per attempt, with full jitter.
RETRY_BACKOFF: Final = 1.0
#: Longest back-off in seconds.
RETRY_MAX_BACKOFF: Final = 60.0
#: Longest wait a ``Retry-After`` header may impose, in seconds.
RETRY_MAX_RETRY_AFTER: Final = 300.0
#: Seconds one database statement (each fetch of a streaming cursor) may run; 0 disables.
STATEMENT_TIMEOUT: Final = 300.0
#: Requests in flight at once (``concurrency:``).
CONCURRENCY: Final = 4
#: Diff syncs: the most vanished keys a run deletes (a count, or a % of the keys known).
DIFF_MAX_DELETES: Final = "10%"
#: Rows fetched from the database per round trip. PostgreSQL streams them, so a smaller
#: chunk costs no round trip there; 1,000 rather than 5,000 holds 8 MB less in flight on
#: the 1M-row bench table (two chunks wait while one is batched), at the same CPU.
FETCH_SIZE: Final = 1000
#: Characters of a response body kept in errors.
BODY_EXCERPT_CHARS: Final = 500
#: Requests ``--dry-run`` prints.
DRY_RUN_REQUESTS: Final = 3

#: Where the state store lives without ``LOADER_STATE_URL`` (relative to the working dir).
STATE_PATH: Final = ".loader/state.db"
#: Environment variable naming the state store's SQLAlchemy URL.
STATE_URL_ENV: Final = "LOADER_STATE_URL"
#: Seconds a run's lock lasts without renewal; a live run renews it every third of this.
LOCK_TTL: Final = 60.0
#: Seconds a stopped run (SIGTERM, SIGINT) gets to finish its in-flight request.
GRACE_PERIOD: Final = 20.0
#: How old a missed slot may be for the clock to catch up on it after downtime (1 hour).
CATCH_UP: Final = 3600.0
#: Runs the clock executes at once.
CLOCK_MAX_PARALLEL: Final = 4
#: Seconds the clock gives running jobs to stop after SIGTERM (Heroku kills at 30).
CLOCK_GRACE: Final = 25.0
#: The Procrastinate queue of loader's runs.
QUEUE_NAME: Final = "loader"
#: Runs one ``loader worker`` executes at once.
WORKER_CONCURRENCY: Final = 2
#: Seconds without a heartbeat after which a worker's runs are put back in the queue.
WORKER_STALLED_AFTER: Final = 30.0
#: Environment variable choosing where the clock runs jobs: inline or procrastinate.
EXECUTOR_ENV: Final = "LOADER_EXECUTOR"
#: Seconds between checks of the job files for changes.
CLOCK_RELOAD_POLL: Final = 5.0
#: While a job keeps failing, how long before one reminder alert (6 hours).
ALERT_REMIND_AFTER: Final = 6 * 3600.0
#: Attempts to deliver one alert or heartbeat.
NOTIFY_ATTEMPTS: Final = 3
#: Seconds before one alert or heartbeat request times out.
NOTIFY_TIMEOUT: Final = 10.0
#: Environment variables with the default alert channels of every job.
ALERT_URL_ENV: Final = "LOADER_ALERT_URL"
ALERT_SLACK_URL_ENV: Final = "LOADER_ALERT_SLACK_URL"
ALERT_EMAIL_ENV: Final = "LOADER_ALERT_EMAIL"
#: SMTP server for email alerts: smtp://user:password@host:587 (STARTTLS) or smtps://.
SMTP_URL_ENV: Final = "LOADER_SMTP_URL"
#: Sender of email alerts.
ALERT_FROM_ENV: Final = "LOADER_ALERT_FROM"
#: Rows one run may have rejected before the circuit breaker stops it.
MAX_REJECTED: Final = 100

# Defaults of the ``loader`` command's options.
#: The job files' directory when a command is given none.
JOBS_DIR: Final = "jobs"
#: The variable that moves the jobs directory (where job names are looked up).
JOBS_DIR_ENV: Final = "LOADER_JOBS_DIR"
#: The variable read as ``--log-level`` when the option is not given.
LOG_LEVEL_ENV: Final = "LOADER_LOG_LEVEL"
#: The variable read as ``--log-format`` when the option is not given.
LOG_FORMAT_ENV: Final = "LOADER_LOG_FORMAT"
#: The file of variables commands read (``--env-file``); the environment wins.
ENV_FILE: Final = ".env"
#: Seconds ``loader worker`` gives running jobs to checkpoint and end after SIGTERM.
WORKER_GRACE: Final = 25.0
#: Longest grace the clock and workers accept: Heroku sends SIGKILL 30 s after SIGTERM.
MAX_CLOCK_GRACE: Final = 25.0
#: Seconds a command waits at exit for its alerts and heartbeats to go out.
NOTIFY_FLUSH_TIMEOUT: Final = 15.0
#: Runs ``loader history`` shows.
HISTORY_LIMIT: Final = 20
#: Dead letters ``loader deadletter list`` shows.
DEAD_LETTER_LIST_LIMIT: Final = 50
#: Where ``loader receive`` listens.
RECEIVER_HOST: Final = "127.0.0.1"
RECEIVER_PORT: Final = 8000
#: Sign-ups in ``loader demo``'s example database.
DEMO_ROWS: Final = 1000
#: The status page (the clock's ``/`` and ``loader ui``): the variable holding the password
#: it asks for (any user name), the variable and the default of the seconds between its
#: refreshes, the runs it shows per job
#: and where ``loader ui`` listens without ``--port`` or ``$PORT``.
UI_PASSWORD_ENV: Final = "LOADER_UI_PASSWORD"
UI_REFRESH_ENV: Final = "LOADER_UI_REFRESH"
UI_REFRESH: Final = 10
UI_RECENT_RUNS: Final = 5
UI_PORT: Final = 8080
#: Seconds a client of the clock's port may stay silent before it is dropped.
UI_REQUEST_TIMEOUT: Final = 10

# Exit codes of the ``loader`` command.
#: Every row was delivered (or, with ``--dry-run``, read and encoded).
EXIT_OK: Final = 0
#: An unexpected internal error; the message and a redacted traceback are printed.
EXIT_INTERNAL: Final = 1
#: Bad job file, bad environment or bad command line; nothing was sent.
EXIT_CONFIG: Final = 2
#: The database could not be reached or the query failed.
EXIT_SOURCE: Final = 3
#: Delivery failed: the endpoint rejected a request, retries ran out, or a row
#: could not be encoded into a request.
EXIT_DELIVERY: Final = 4
#: Another run of the same job holds its lock; this one did nothing.
EXIT_LOCKED: Final = 5
#: Every row was either delivered or dead-lettered, and some were dead-lettered.
EXIT_REJECTED_ROWS: Final = 6
#: The state store failed, or its checkpoint no longer fits the job.
EXIT_STATE: Final = 7
#: Stopped by SIGINT or SIGTERM; the checkpoint holds what was acknowledged.
EXIT_INTERRUPTED: Final = 130
#: The reader of the output went away (``loader ... | head``): ended quietly, as a
#: Unix tool killed by SIGPIPE (128 + 13).
EXIT_CLOSED_PIPE: Final = 141
