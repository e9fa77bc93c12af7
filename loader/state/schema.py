"""The state store's tables, their schema version, and creating them on first use.

Every table is keyed by job name (``loader_meta`` by free-form keys such as
``schema_version``, ``epoch:JOB`` and ``partitions:JOB:COUNT``). A store newer than this
loader is refused rather than written with an older layout.
"""

from __future__ import annotations

import sqlalchemy as sa

from loader.errors import StateError

SCHEMA_VERSION = 1

# Any value: every process that opens a PostgreSQL store takes the same advisory lock.
_MIGRATION_LOCK = 7349561207349561

metadata = sa.MetaData()
meta = sa.Table(
    "loader_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(200), nullable=False),
)
checkpoints = sa.Table(
    "loader_checkpoints",
    metadata,
    sa.Column("job", sa.String(200), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("position", sa.Text, nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
runs = sa.Table(
    "loader_runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("job", sa.String(200), nullable=False, index=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("rows_read", sa.BigInteger, nullable=False, default=0),
    sa.Column("rows_posted", sa.BigInteger, nullable=False, default=0),
    sa.Column("rows_rejected", sa.BigInteger, nullable=False, default=0),
    sa.Column("requests", sa.BigInteger, nullable=False, default=0),
    sa.Column("retries", sa.BigInteger, nullable=False, default=0),
    sa.Column("cursor_from", sa.Text),
    sa.Column("cursor_to", sa.Text),
    sa.Column("error", sa.Text),
    # Added after the table (see migrate): batches sent in parts after a size refusal.
    sa.Column("splits", sa.BigInteger),
)
dead_letters = sa.Table(
    "loader_dead_letters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job", sa.String(200), nullable=False, index=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("row", sa.Text, nullable=False),
    sa.Column("status", sa.Integer),
    sa.Column("excerpt", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    # Added after the table: a store made before them gains them on open (see migrate).
    sa.Column("full_row", sa.Text),
    sa.Column("url", sa.Text),
)
#: Columns added to existing tables since they were first created, by table.
_ADDED_COLUMNS = {dead_letters.name: ("full_row", "url"), runs.name: ("splits",)}
slots = sa.Table(
    "loader_slots",
    metadata,
    sa.Column("job", sa.String(200), primary_key=True),
    sa.Column("slot_at", sa.Float, primary_key=True),
    sa.Column("run_id", sa.String(255), nullable=False, unique=True),
    sa.Column("clock", sa.String(255), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("claimed_at", sa.Float, nullable=False),
    sa.Column("detail", sa.Text),
)
# Batches cut and about to be sent, not yet acknowledged (see loader.state.cuts): added
# after version 1 as a table of its own, which an older loader ignores.
cuts = sa.Table(
    "loader_cuts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job", sa.String(200), nullable=False, index=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("scope", sa.Text, nullable=False),
    sa.Column("after", sa.Text, nullable=False),
    sa.Column("last", sa.Text, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("key", sa.String(255), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
# Diff syncs (see loader.state.fingerprints): each key's fingerprint as last acknowledged
# and the generation (run) that last saw it; added after version 1 as a table of its own.
fingerprints = sa.Table(
    "loader_fingerprints",
    metadata,
    sa.Column("job", sa.String(200), primary_key=True),
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("fp", sa.LargeBinary(16), nullable=False),
    sa.Column("gen", sa.BigInteger, nullable=False),
    # A single integer key's value, for reading the fingerprints in key order.
    sa.Column("ikey", sa.BigInteger),
    sa.Index("loader_fingerprints_ikey", "job", "ikey"),
)
alert_states = sa.Table(
    "loader_alert_states",
    metadata,
    sa.Column("job", sa.String(200), primary_key=True),
    sa.Column("failing_since", sa.Float),
    sa.Column("last_alert_at", sa.Float),
    sa.Column("lagging_since", sa.Float),
    sa.Column("last_success_at", sa.Float),
)
locks = sa.Table(
    "loader_locks",
    metadata,
    sa.Column("job", sa.String(200), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started", sa.BigInteger),
    sa.Column("token", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)


def migrate(engine: sa.Engine, url: str) -> None:
    """Create the tables that are missing and record the schema version, in one
    transaction; raise :class:`StateError` if the store at ``url`` (masked, for the
    message) was written by a newer loader. SQLAlchemy errors propagate to the caller."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Several processes may open a new store at once: one creates the tables.
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        metadata.create_all(conn, checkfirst=True)
        _add_columns(conn)
        row = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).first()
        if row is None:
            conn.execute(sa.insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
        elif int(row.value) > SCHEMA_VERSION:
            raise StateError(
                f"the state store {url} has schema version {row.value}, newer than "
                f"this loader's {SCHEMA_VERSION}; upgrade loader"
            )


def _add_columns(conn: sa.Connection) -> None:
    """Add the columns of :data:`_ADDED_COLUMNS` a store made before them lacks. They
    are nullable, so a loader that predates them still reads and writes the table."""
    inspector = sa.inspect(conn)
    for table_name, names in _ADDED_COLUMNS.items():
        present = {column["name"] for column in inspector.get_columns(table_name)}
        table = metadata.tables[table_name]
        for name in names:
            if name not in present:
                kind = table.c[name].type.compile(dialect=conn.dialect)
                try:
                    conn.exec_driver_sql(f"ALTER TABLE {table_name} ADD COLUMN {name} {kind}")
                except sa.exc.OperationalError as exc:
                    # SQLite has no migration lock: another process may have added it.
                    if "duplicate column" not in str(exc).lower():
                        raise
