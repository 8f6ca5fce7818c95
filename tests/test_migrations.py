"""The decision log's schema: Alembic migrations (service/migrations/), `adaudit db upgrade`, and the gateway's
schema check at start, on SQLite and on a throwaway PostgreSQL cluster (tests/test_reliability.py's; under CI it
must start, a skip fails).

- upgrade from empty, downgrade and upgrade again; the migrated schema equals the tables' definition;
- a log that create_all made before migrations (with or without `decisions.caller`, the ALTER TABLE variant
  without its index) is recognised, stamped and upgraded, every row kept;
- a schema newer than this code, or tables that are not a whole decision log: refused, nothing changed, one
  error line from the CLI;
- two upgrades at once run one after the other;
- a gateway on a server database runs no DDL and stays unready (503 naming `adaudit db upgrade`) until the
  schema is upgraded; on SQLite it upgrades the file itself; two gateways share one PostgreSQL log.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from contextlib import contextmanager

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import Column, MetaData, Table, create_engine, inspect, text
from conftest import wait_for
from test_service import audit_json, model_dir, settings  # noqa: F401

from adaudit.service.app import create_app
from benchmarks.postgres import PostgresCluster, PostgresUnavailable
from adaudit.service.decision_log import DecisionLog, now
from adaudit.service.schema import (MIGRATION_LOCK, MIGRATIONS, VERSION_TABLE, SchemaError, downgrade_schema,
                                    head_revision, schema_status, upgrade_schema)
from adaudit.service.tables import Base

ROW = {"created_at": now(), "ad_id": "ad-1", "model": "student", "version": "1", "arm": "primary",
       "verdict": "approve", "violation": "none", "violation_score": 0.9, "latency_ms": 3.5, "shadowed": False,
       "outputs": {"labels": {"verdict": "approve", "violation": "none"},
                   "scores": {"verdict": 0.9, "violation": 0.9}}}


@pytest.fixture(scope="module")
def cluster():
    """One throwaway PostgreSQL cluster for the module; each test gets its own database in it."""
    try:
        server = PostgresCluster.started()
    except PostgresUnavailable as error:
        pytest.skip(str(error))
    yield server
    server.remove()


DATABASES = iter(range(1, 1000))


@pytest.fixture
def postgresql(cluster) -> str:
    """The URL of a new, empty database in the module's cluster."""
    name = f"log{next(DATABASES)}"
    admin = create_engine(cluster.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return cluster.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'decisions.db'}"
    return request.getfixturevalue("postgresql")


@contextmanager
def engine_of(url: str):
    engine = create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def revision_of(url: str) -> str | None:
    with engine_of(url) as engine, engine.connect() as connection:
        return schema_status(connection).revision


def request_ids(url: str) -> dict[str, str | None]:
    with engine_of(url) as engine, engine.connect() as connection:
        return dict(connection.execute(text("SELECT request_id, caller FROM decisions")).all())


def schema_differences(url: str) -> list:
    """What Alembic's autogenerate finds between the database and the tables of decision_log.py (types too)."""
    with engine_of(url) as engine, engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE, "compare_type": True})
        return compare_metadata(context, Base.metadata)


DECISION_COLUMNS_OF_0003 = ("suggestion", "policy_name", "policy_version", "reasons")  # never made by create_all
DECISION_COLUMNS_LATER = DECISION_COLUMNS_OF_0003 + ("review_sample",)  # 0003 and 0005: after create_all's time


def made_by_create_all(url: str, caller: str) -> None:
    """A log as the gateway made it before migrations existed: create_all, no version table, and rows.
    caller: "column" (today's create_all: the column and its index), "altered" (an older log the ad-hoc
    ALTER TABLE gave the column, no index) or "none" (before callers were recorded)."""
    added_later = set(DECISION_COLUMNS_LATER) | ({"caller"} if caller != "column" else set())
    with engine_of(url) as engine:  # decisions as create_all made it then, then the other two tables
        old = Table("decisions", MetaData(), *(Column(c.name, c.type, primary_key=c.primary_key,
                                                      nullable=c.nullable, index=c.index)
                                               for c in Base.metadata.tables["decisions"].columns
                                               if c.name not in added_later))
        old.create(engine)
        Base.metadata.create_all(engine, tables=[Base.metadata.tables["feedback"],
                                                 Base.metadata.tables["shadow_disagreements"]])
        with engine.begin() as connection:
            if caller == "altered":
                connection.execute(text("ALTER TABLE decisions ADD COLUMN caller VARCHAR(64)"))
            decisions = Table("decisions", MetaData(), autoload_with=connection)  # with the altered column
            for number in range(3):
                row = {**ROW, "request_id": f"old-{number}"} | ({"caller": "partner"} if caller != "none" else {})
                connection.execute(decisions.insert(), row)
            connection.execute(Base.metadata.tables["feedback"].insert(), {
                "request_id": "old-0", "task": "verdict", "label": "approve", "predicted": "approve", "correct": True,
                "reviewer": "ops", "created_at": now()})


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adaudit.cli", *args], capture_output=True, text=True, timeout=120)


# --- the migrations ---------------------------------------------------------------------------------
def test_upgrade_from_empty_gives_the_tables_definition_and_downgrades_back(url):
    with engine_of(url) as engine:
        before, after = upgrade_schema(engine)
        assert (before.state, after) == ("empty", head_revision()) and head_revision() == "0005"
        assert schema_differences(url) == []  # the migrations make exactly the tables decision_log.py declares
        assert upgrade_schema(engine)[0].state == "current"  # again: nothing to do
        log = DecisionLog(url, migrate=False)
        log.add_decisions([{**ROW, "request_id": "r-1", "caller": "partner", "suggestion": "review",
                            "policy_name": "strict", "policy_version": "2", "reasons": [{"rule": "terms.review: 最"}]}])
        assert (log.decision("r-1")["suggestion"], log.decision("r-1")["policy"]) == \
            ("review", {"name": "strict", "version": "2"})
        log.close()

        assert downgrade_schema(engine, "0004")[1] == "0004"  # the audit sample's column dropped, the row kept
        assert "review_sample" not in {c["name"] for c in inspect(engine).get_columns("decisions")}
        assert downgrade_schema(engine, "0003")[1] == "0003"  # the review items' table dropped
        assert "review_items" not in inspect(engine).get_table_names()
        assert downgrade_schema(engine, "0002")[1] == "0002"  # the decision's columns dropped, the row kept
        assert not set(DECISION_COLUMNS_OF_0003) & {c["name"] for c in inspect(engine).get_columns("decisions")}
        assert downgrade_schema(engine, "0001")[1] == "0001"  # caller dropped, the row kept
        columns = {c["name"] for c in inspect(engine).get_columns("decisions")}
        assert "caller" not in columns and "ad_id" in columns
        with engine.connect() as connection:
            assert connection.execute(text("SELECT request_id FROM decisions")).scalars().all() == ["r-1"]
        assert downgrade_schema(engine, "base")[1] is None
        assert set(inspect(engine).get_table_names()) <= {VERSION_TABLE}
        upgrade_schema(engine)
    assert revision_of(url) == "0005" and schema_differences(url) == []


@pytest.mark.parametrize("caller", ["column", "altered", "none"])
def test_a_log_made_by_create_all_is_stamped_and_upgraded_keeping_its_rows(url, caller):
    made_by_create_all(url, caller)
    with engine_of(url) as engine:
        before, after = upgrade_schema(engine)
    assert (before.state, before.revision, after) == ("unversioned", None, "0005")
    assert schema_differences(url) == []  # the ALTER TABLE variant got its index
    expected = "partner" if caller != "none" else None
    assert request_ids(url) == {f"old-{n}": expected for n in range(3)}
    log = DecisionLog(url, migrate=False)
    assert log.decision("old-0")["feedback"] == {"verdict": "approve"}
    assert log.accuracy()[0]["reviewed"] == 1
    log.close()


def test_a_newer_schema_is_refused_and_left_as_it_is(url):
    with engine_of(url) as engine:
        upgrade_schema(engine)
        with engine.begin() as connection:
            connection.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0099'"))
        with pytest.raises(SchemaError, match="revision 0099, which this code does not know.*nothing changed"):
            upgrade_schema(engine)
        with pytest.raises(SchemaError, match="0099"):
            downgrade_schema(engine, "base")
    assert revision_of(url) == "0099" and set(request_ids(url)) == set()
    result = cli("db", "upgrade", "--database-url", url)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "0099" in lines[0] and "nothing changed" in lines[0]
    assert revision_of(url) == "0099"


def test_tables_that_are_not_a_whole_decision_log_are_refused(url):
    with engine_of(url) as engine:
        Base.metadata.tables["decisions"].create(engine)
        with pytest.raises(SchemaError, match="not feedback, shadow_disagreements.*not a decision log"):
            upgrade_schema(engine)
        assert set(inspect(engine).get_table_names()) == {"decisions"}


def test_two_upgrades_at_once_run_one_after_the_other(url):
    """The lock (PostgreSQL's advisory lock, SQLite's BEGIN IMMEDIATE) around the whole upgrade: one
    creates the tables, the other then finds them current (without it both would run the migrations)."""
    results, errors = [], []

    def upgrade():
        try:
            with engine_of(url) as engine:
                results.append(upgrade_schema(engine)[0].state)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=upgrade) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and sorted(results) == ["current", "empty"], (results, errors)


def test_an_upgrade_waits_for_one_in_progress_in_another_process(postgresql):
    """`adaudit db upgrade` started while another upgrade holds the lock (the chart's Job and an operator at
    once) waits for it, then finds the schema current and changes nothing."""
    with engine_of(postgresql) as engine, engine.connect() as holder:
        holder.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = holder
        command.upgrade(config, "head")  # in progress, not committed
        second = subprocess.Popen([sys.executable, "-m", "adaudit.cli", "db", "upgrade", "--database-url", postgresql],
                                  stderr=subprocess.PIPE, text=True)
        try:
            with engine.connect() as observer:
                waiting = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                wait_for(lambda: observer.execute(waiting).scalar() or None, 60, "the second upgrade to wait")
            assert second.poll() is None
            holder.commit()
            _, errors = second.communicate(timeout=60)
        finally:
            second.kill()
    assert second.returncode == 0 and "schema at revision 0005 (unchanged)" in errors, errors


# --- the command line ---------------------------------------------------------------------------------
def test_db_upgrade_command_and_its_default_url(tmp_path):
    database = tmp_path / "from-settings.db"
    env = {"ADAUDIT_DATABASE_URL": f"sqlite:///{database}", "PATH": "/usr/bin:/bin"}
    first = subprocess.run([sys.executable, "-m", "adaudit.cli", "db", "upgrade"], capture_output=True, text=True,
                           timeout=120, env=env)
    assert first.returncode == 0 and "schema at revision 0005 (was empty)" in first.stderr, first.stderr
    again = cli("db", "upgrade", "--database-url", f"sqlite:///{database}")
    assert again.returncode == 0 and "(unchanged)" in again.stderr, again.stderr
    current = cli("db", "current", "--database-url", f"sqlite:///{database}")
    assert current.returncode == 0 and '"state": "current"' in current.stdout, current.stderr


@pytest.mark.parametrize("url, fragment", [
    ("postgresql+psycopg://adaudit:s3cret@127.0.0.1:1/log", "postgresql+psycopg://adaudit:***@127.0.0.1:1/log"),
    ("not a url", "cannot use the database URL"),
])
def test_db_upgrade_on_a_database_it_cannot_use_is_one_error_line(url, fragment):
    result = cli("db", "upgrade", "--database-url", url)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0] and "s3cret" not in result.stderr


# --- the gateway --------------------------------------------------------------------------------------
def test_on_sqlite_the_gateway_upgrades_its_own_file_keeping_the_rows(model_dir, tmp_path):  # noqa: F811
    values = settings(model_dir, tmp_path)  # sqlite:///.../log.db, database_migrate_on_start unset: True
    made_by_create_all(values.database_url, "altered")
    with TestClient(create_app(values)) as client:
        assert client.get("/readyz").status_code == 200
        assert client.get("/v1/audits/old-1").json()["caller"] == "partner"
        assert audit_json(client).status_code == 200
    assert revision_of(values.database_url) == "0005" and len(request_ids(values.database_url)) == 4


def test_a_gateway_on_a_shared_database_runs_no_ddl_and_is_unready_until_upgraded(model_dir, tmp_path,  # noqa: F811
                                                                                  postgresql):
    values = settings(model_dir, tmp_path, database_url=postgresql, request_timeout_s=2)
    assert not values.migrates_on_start()
    with TestClient(create_app(values)) as client:
        assert set(inspect(client.app.state.gateway.log.engine).get_table_names()) == set()  # no DDL at start
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "`adaudit db upgrade`" in ready.json()["message"], ready.text
        assert ready.json()["models"] == {"student": True}  # the backend is fine; the schema is not
        assert audit_json(client).status_code == 503  # no table: decision_log_unavailable, nothing answered
        result = cli("db", "upgrade", "--database-url", postgresql)
        assert result.returncode == 0, result.stderr
        assert client.get("/readyz").status_code == 200  # the next probe finds the schema current
        assert audit_json(client).status_code == 200


def test_two_gateways_share_one_postgresql_log(model_dir, tmp_path, postgresql):  # noqa: F811
    """The issue's goal: audits through one gateway, feedback and GET /v1/audits/{id} through the other,
    reviewed accuracy counting both, with each pod's pool sized by the settings."""
    assert cli("db", "upgrade", "--database-url", postgresql).returncode == 0
    values = settings(model_dir, tmp_path, database_url=postgresql, database_pool_size=2, database_max_overflow=1)
    with TestClient(create_app(values)) as first, TestClient(create_app(values)) as second:
        assert first.get("/readyz").status_code == 200 and second.get("/readyz").status_code == 200
        pool = first.app.state.gateway.log.engine.pool
        assert (pool.size(), pool._max_overflow) == (2, 1)
        through_first = [audit_json(first, ad_id=f"first-{n}").json()["request_id"] for n in range(3)]
        through_second = [audit_json(second, ad_id=f"second-{n}").json()["request_id"] for n in range(2)]
        for request_id in through_first:
            answer = second.get(f"/v1/audits/{request_id}")
            assert answer.status_code == 200 and answer.json()["request_id"] == request_id
        labels = ["approve", "reject", "approve", "approve", "reject"]  # the student approves every ad
        for request_id, label, client in zip(through_first + through_second, labels,
                                             [second, second, second, first, first]):
            feedback = client.post(f"/v1/audits/{request_id}/feedback", json={"labels": {"verdict": label}})
            assert feedback.status_code == 200, feedback.text
        assert first.post(f"/v1/audits/{through_first[0]}/feedback",
                          json={"labels": {"verdict": "approve"}}).status_code == 409  # given through the other
        expected = [{"model": "student", "version": "1", "task": "verdict", "reviewed": 5, "correct": 3,
                     "accuracy": 0.6}]
        assert first.get("/v1/reviews/accuracy").json() == expected == second.get("/v1/reviews/accuracy").json()
    assert set(request_ids(postgresql)) == set(through_first + through_second)
