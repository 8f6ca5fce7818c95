"""The decision log's schema: Alembic migrations (service/migrations/), upgraded and checked.

`upgrade_schema` (`adaudit db upgrade`; the Helm chart's pre-install and pre-upgrade Job) brings a
database to this code's revision in one transaction under a lock (PostgreSQL: an advisory lock;
SQLite: BEGIN IMMEDIATE), so two at once run one after the other. A log that `create_all` made
before migrations existed (no version table) is recognised by its tables and columns and stamped,
its rows kept. A database at a revision this code does not know (a newer release's) is refused
with `SchemaError`, nothing changed. Revisions only ever add, so a pod may serve a schema newer
than its code during a rolling upgrade.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from .tables import DecisionRow

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "adaudit_alembic_version"  # not alembic_version: another application's Alembic may share the database
TABLES = frozenset({"decisions", "feedback", "shadow_disagreements"})
UPGRADE_HINT = "run `adaudit db upgrade` (in the Helm chart: its pre-install/pre-upgrade Job)"
MIGRATION_LOCK = 7_016_417_323_106_583_401  # the PostgreSQL advisory lock key that serialises upgrades


class SchemaError(RuntimeError):
    """The schema cannot be upgraded by this code: a newer revision than it knows, or tables not its own."""


@dataclass(frozen=True)
class SchemaStatus:
    """The database's revision against this code's head, and which decision-log tables it holds."""
    revision: str | None  # stamped in VERSION_TABLE; None: no version table (empty, or made by create_all)
    head: str
    known: bool  # revision is one of this code's migrations (or None)
    tables: frozenset

    @property
    def state(self) -> str:
        """current | behind | ahead (a revision this code does not know) | empty | unversioned (tables
        without a version: created by the gateway's create_all before migrations existed)"""
        if self.revision is None:
            return "unversioned" if self.tables else "empty"
        if not self.known:
            return "ahead"
        return "current" if self.revision == self.head else "behind"

    @property
    def usable(self) -> bool:
        return self.state in ("current", "ahead")

    @property
    def missing(self) -> frozenset:
        """Decision-log tables an unversioned database lacks: it holds some, so it is not a log create_all made."""
        return TABLES - self.tables if self.state == "unversioned" else frozenset()

    def describe(self) -> str:
        if self.missing:
            return (f"the database holds the tables {', '.join(sorted(self.tables))} but not "
                    f"{', '.join(sorted(self.missing))}, and no {VERSION_TABLE} table: not a decision log "
                    f"adaudit made")
        return {
            "current": f"the decision log's schema is at this code's revision {self.head}",
            "behind": f"the decision log's schema is at revision {self.revision}, this gateway needs {self.head}: "
                      f"{UPGRADE_HINT}",
            "ahead": f"the decision log's schema is at revision {self.revision}, which this code does not know "
                     f"(its newest is {self.head}): a newer adaudit upgraded it",
            "empty": f"the decision log has no tables yet (this gateway needs schema revision {self.head}): "
                     f"{UPGRADE_HINT}",
            "unversioned": f"the decision log was created before its migrations existed (no {VERSION_TABLE} "
                           f"table), this gateway needs schema revision {self.head}: {UPGRADE_HINT} "
                           f"(it keeps every row)",
        }[self.state]


@functools.cache
def _scripts():
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS))


def head_revision() -> str:
    """This code's newest schema revision."""
    return _scripts().get_current_head()


def schema_status(connection: Connection) -> SchemaStatus:
    from alembic.runtime.migration import MigrationContext
    from alembic.util import CommandError

    revision = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()
    try:
        known = revision is None or _scripts().get_revision(revision) is not None
    except CommandError:  # alembic's ResolutionError: not one of this code's revisions
        known = False
    tables = frozenset(TABLES & set(inspect(connection).get_table_names()))
    return SchemaStatus(revision, head_revision(), known, tables)


def upgrade_schema(engine: Engine, revision: str = "head") -> tuple[SchemaStatus, str | None]:
    """Bring the schema up to `revision` (this code's head by default), in one transaction under a lock;
    returns (the status before, the revision after). A log that create_all made before migrations is
    stamped first (`adopt_unversioned`), its rows kept. Raises SchemaError, with nothing changed, where the
    database is at a revision this code does not know or holds only some of the tables."""
    from alembic import command

    return _migrate(engine, lambda config: command.upgrade(config, revision))


def downgrade_schema(engine: Engine, revision: str) -> tuple[SchemaStatus, str | None]:
    """Take the schema down to `revision` ("base": no tables), as `upgrade_schema` takes it up. A downgrade
    drops what the later revisions added, data included (0002 -> 0001: every decision's caller)."""
    from alembic import command

    return _migrate(engine, lambda config: command.downgrade(config, revision))


def _migrate(engine: Engine, run) -> tuple[SchemaStatus, str | None]:
    from alembic.config import Config

    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":  # the write lock now, for the whole migration (DDL included)
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif connection.dialect.name == "postgresql":  # released at commit or rollback
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        status = schema_status(connection)
        if status.state == "ahead" or status.missing:
            raise SchemaError(f"{status.describe()}; nothing changed")
        if status.state == "unversioned":
            adopt_unversioned(connection)
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        run(config)
        after = schema_status(connection).revision
        connection.commit()
    return status, after


def adopt_unversioned(connection: Connection) -> None:
    """Stamp a log that the gateway's create_all made before migrations existed (every table, no version
    table) with the revision its tables match: 0001 without `decisions.caller`; 0002 with it, given its index
    where the ad-hoc ALTER TABLE that added the column to older logs did not make one. Rows are not touched."""
    from alembic.runtime.migration import MigrationContext

    inspector = inspect(connection)
    if "caller" not in {column["name"] for column in inspector.get_columns("decisions")}:
        revision = "0001"
    else:
        revision = "0002"
        if "ix_decisions_caller" not in {index["name"] for index in inspector.get_indexes("decisions")}:
            # the table's own Index object (a new Index on its column would join the table's metadata)
            next(i for i in DecisionRow.__table__.indexes if i.name == "ix_decisions_caller").create(connection)
    MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).stamp(_scripts(), revision)


def first_line(error: BaseException) -> str:
    """An error's first line, without the SQL or the URL SQLAlchemy may append (no secret in a log or a probe)."""
    message = str(getattr(error, "orig", None) or error).strip().splitlines()
    return f"{type(error).__name__}: {message[0] if message else ''}".rstrip(": ")
