"""Alembic environment of the catalogue.

`streamlearn.catalogue.session.upgrade()` runs it programmatically with an open connection in
`config.attributes["connection"]` (one transaction, under a lock). From a source checkout the
`alembic` command works too: `alembic upgrade head` at the repository root (`alembic.ini`) uses
`sqlalchemy.url` from that file or else the settings' catalogue URL (STREAMLEARN_DATABASE_URL, or
the SQLite catalogue under STREAMLEARN_HOME).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from streamlearn.catalogue.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode rebuilds the table for later migrations.
        render_as_batch=connection.dialect.name == "sqlite",
    )


def _url() -> str:
    from streamlearn.catalogue.session import resolve_url

    return resolve_url(config.get_main_option("sqlalchemy.url") or None)


def run_offline() -> None:
    """Emit the SQL of the migrations instead of running them (`alembic upgrade head --sql`)."""
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Run the migrations on the given connection, or on a fresh one to the configured URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    # The catalogue's own engine settings: SQLite's folder is created, and BEGIN IMMEDIATE holds
    # the write lock for the whole migration.
    from streamlearn.catalogue.session import make_engine, migration_transaction

    engine = make_engine(_url())
    try:
        with engine.connect() as connection, migration_transaction(connection):
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
