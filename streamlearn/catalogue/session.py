"""Engines and sessions of the catalogue, and the schema upgrade that runs when it is opened.

SQLite (the embedded default) is shared by a worker and the CLI, so every connection runs in WAL
mode with a 30 s busy timeout, and every write transaction starts with `BEGIN IMMEDIATE`: a
deferred transaction that reads and then writes can fail at once with "database is locked" when
another writer got in between, whereas an immediate one waits for the lock. PostgreSQL is reached
through psycopg 3. The schema comes from the Alembic migrations, never from `create_all`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, exc, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from streamlearn.errors import CatalogueUnusable, StreamlearnError, TransientError
from streamlearn.settings import get_settings, mask_url

HEAD_REVISION = "0006_catalogue_summary"
"""The newest migration; a test checks it against the migration scripts."""

def migrations_dir() -> Path:
    """The Alembic environment (`env.py`, `versions/`) of this copy of streamlearn, found from this file's location.

    A wheel install carries it inside the package (`streamlearn/migrations`, mapped there from the
    top-level `migrations/` at build time); a source checkout, an editable install or a
    PYTHONPATH pointing at a checkout has it at the repository root, beside `alembic.ini`. The
    import system is not asked, so an editable install of another checkout cannot substitute its own.
    """
    package = Path(__file__).resolve().parent.parent
    for folder in (package / "migrations", package.parent / "migrations"):
        if (folder / "env.py").is_file() and (folder.parent == package or (package.parent / "alembic.ini").is_file()):
            return folder
    raise StreamlearnError(f"no Alembic migrations beside {package} (neither {package / 'migrations'} nor "
                           f"{package.parent / 'migrations'}); reinstall streamlearn")


SQLITE_BUSY_TIMEOUT_MS = 30_000
_READONLY = "streamlearn_readonly"
# Any stable 64-bit number: serialises concurrent `upgrade()` calls on one PostgreSQL database.
_PG_UPGRADE_LOCK = 7_310_426_881

_engines: dict[str, Engine] = {}
_checked: set[str] = set()
_identity: dict[str, tuple[int, int] | None] = {}
"""SQLite URL -> (device, inode) of the file its engine opened: a replaced file is noticed."""
_lock = threading.RLock()

log = logging.getLogger(__name__)


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser()


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _follow_replaced_file(url: str) -> None:
    """Drop the cached engine of a SQLite catalogue whose file was removed or replaced since it was opened.

    An open SQLite connection keeps reading the file it opened, even after that file is deleted
    and a new one is created at the same path; a long-lived worker would then never see jobs
    recorded in the new file. One `stat` per session compares the path's (device, inode) with
    the opened file's.
    """
    path = _sqlite_file(url)
    if path is None:
        return
    with _lock:
        if url not in _identity:
            return
        now = _file_identity(path)
        if now == _identity[url]:
            return
        log.warning("catalogue %s was replaced or removed since it was opened; reconnecting", path)
        engine = _engines.pop(url, None)
        if engine is not None:
            engine.dispose()
        _checked.discard(url)
        del _identity[url]


def resolve_url(url: str | None = None) -> str:
    """The catalogue URL to use: `url`, else the settings' (`sqlite:///$STREAMLEARN_HOME/catalogue.db`).

    `postgresql://` and `postgres://` are mapped to the psycopg 3 driver, the one installed.
    """
    url = url or get_settings().database_url
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _sqlite_events(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin (see `_on_begin`).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READONLY) else "BEGIN IMMEDIATE")


@contextmanager
def migration_transaction(conn: Connection) -> Iterator[None]:
    """One transaction for a migration; on SQLite, with foreign-key actions off until its end.

    SQLite cannot alter a constraint, so a migration rebuilds the table (Alembic batch mode): it
    creates a copy and DROPs the original. With foreign keys on, that DROP is an implicit DELETE
    whose ON DELETE CASCADE removes every row that references the table (a rebuild of `jobs` would
    delete every artifact, metric and trial). The pragma is a no-op inside a transaction, so it is
    set before BEGIN, and `PRAGMA foreign_key_check` must find nothing before the commit.

    Raises:
        StreamlearnError: the migrated catalogue has rows whose parent is missing (rolled back).
    """
    sqlite = conn.dialect.name == "sqlite"
    if sqlite:
        conn.connection.dbapi_connection.execute("PRAGMA foreign_keys = OFF")
    try:
        with conn.begin():
            yield
            if sqlite:
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                if broken:
                    raise StreamlearnError(f"the catalogue migration left {len(broken)} rows without their parent "
                                           f"(first: table {broken[0][0]}, row {broken[0][1]}); nothing was changed")
    finally:
        if sqlite:
            conn.connection.dbapi_connection.execute("PRAGMA foreign_keys = ON")


def make_engine(url: str) -> Engine:
    """A new, uncached engine with the catalogue's connection settings; it does not upgrade the schema.

    For the Alembic environment and tools; everything else uses `get_engine`.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _sqlite_events(engine)
        return engine
    # pre_ping: a worker outlives PostgreSQL restarts; a dead pooled connection is replaced, not used.
    return create_engine(url, pool_pre_ping=True)


def _raw_engine(url: str) -> Engine:
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
        return engine


def current_revision(url: str | None = None) -> str | None:
    """The catalogue's Alembic revision, or None for an empty database."""
    url = resolve_url(url)
    with _unavailable_as_transient(url), _raw_engine(url).connect() as conn:
        conn = conn.execution_options(**{_READONLY: True})
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(url: str | None = None) -> str:
    """Run the Alembic migrations up to head, in one transaction; safe to call concurrently.

    Args:
        url: Catalogue URL; defaults to the settings'.

    Returns:
        The revision the catalogue is at afterwards.
    """
    from alembic import command
    from alembic.config import Config

    url = resolve_url(url)
    engine = _raw_engine(url)
    with _unavailable_as_transient(url), engine.connect() as conn, migration_transaction(conn):
        # SQLite: BEGIN IMMEDIATE already holds the write lock. PostgreSQL: take an advisory lock so
        # two processes opening a fresh database do not both create the tables.
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_UPGRADE_LOCK})
        config = Config()
        config.set_main_option("script_location", str(migrations_dir()))
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    with _lock:
        _checked.add(url)
    return current_revision(url) or ""


def get_engine(url: str | None = None) -> Engine:
    """The process's engine for `url` (cached), with the schema upgraded on first use.

    The first call per URL and process reads the Alembic revision (one cheap query) and runs the
    migrations only when the database is empty or older than this code.

    Raises:
        StreamlearnError: the database was made by a newer streamlearn.
        TransientError: the database did not answer.
    """
    url = resolve_url(url)
    _follow_replaced_file(url)
    engine = _raw_engine(url)
    if url in _checked:
        return engine
    revision = current_revision(url)
    if revision != HEAD_REVISION:
        if revision is not None and not any((migrations_dir() / "versions").glob(f"{revision}*.py")):
            raise StreamlearnError(
                f"catalogue {mask_url(url)} is at schema {revision}, newer than this streamlearn ({HEAD_REVISION})"
            )
        upgrade(url)
    with _lock:
        _checked.add(url)
        if (path := _sqlite_file(url)) is not None:
            _identity[url] = _file_identity(path)
    return engine


@contextmanager
def session_scope(url: str | None = None, *, readonly: bool = False) -> Iterator[Session]:
    """A session in one transaction: committed on exit, rolled back on an exception.

    Args:
        url: Catalogue URL; defaults to the settings'.
        readonly: Start a plain (deferred) transaction on SQLite, so a reader never waits for the
            write lock. Use it for queries only.

    Raises:
        TransientError: the database did not answer or stayed locked; the caller may retry.
    """
    url = resolve_url(url)
    engine = get_engine(url)
    bind = engine.execution_options(**{_READONLY: True}) if readonly else engine
    session = Session(bind=bind, expire_on_commit=False)
    try:
        with _unavailable_as_transient(url):
            yield session
            session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def _unavailable_as_transient(url: str) -> Iterator[None]:
    # An unreachable or locked database is temporary: the worker retries, the CLI prints one line.
    try:
        yield
    except exc.OperationalError as error:
        lines = str(error.orig or error).strip().splitlines()
        detail = mask_url(lines[0]) if lines else type(error).__name__
        if _corrupt(detail):
            raise CatalogueUnusable(f"catalogue {mask_url(url)} is unusable: {detail} (see `streamlearn db check`)") from error
        raise TransientError(f"catalogue {mask_url(url)} unavailable: {detail}") from error
    except exc.DatabaseError as error:
        # Exactly DatabaseError (not a constraint's IntegrityError): the file is not a database, or its
        # pages are damaged. Retrying cannot help.
        if type(error) is not exc.DatabaseError:
            raise
        lines = str(error.orig or error).strip().splitlines()
        detail = mask_url(lines[0]) if lines else type(error).__name__
        raise CatalogueUnusable(f"catalogue {mask_url(url)} is unusable: {detail} (see `streamlearn db check`)") from error


def _corrupt(detail: str) -> bool:
    # SQLite reports damage through OperationalError for some pages ("malformed"); a lock is not damage.
    return any(word in detail for word in ("malformed", "not a database", "file is encrypted"))


def reset_engines(close: bool = True) -> None:
    """Forget every cached engine.

    Args:
        close: Close the pooled connections. Pass False in a child right after `fork`: the parent
            still owns those sockets, and closing them from the child would break the parent's.
    """
    with _lock:
        for engine in _engines.values():
            engine.dispose(close=close)
        _engines.clear()
        _checked.clear()
        _identity.clear()
