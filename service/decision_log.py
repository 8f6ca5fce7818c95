"""The decision log (SQLAlchemy): every decision, reviewer feedback, and shadow disagreements.

    decisions(request_id PK, created_at, ad_id, model, version, arm, verdict, violation,
              violation_score, outputs JSON {labels, scores, term_hits}, latency_ms, shadowed,
              caller: the API key's name, or "anonymous" when no keys are configured,
              suggestion (pass / review / block), policy_name, policy_version, reasons JSON:
              the audit decision, NULL on rows logged before revision 0003)
    feedback(id PK, request_id FK -> decisions, task, label, predicted, correct, reviewer, created_at)
              one row per reviewed task, unique (request_id, task)
    shadow_disagreements(id PK, request_id, created_at, primary_model, primary_version,
              shadow_model, shadow_version, primary_outputs JSON, shadow_outputs JSON)
    review_items(request_id PK FK -> decisions, created_at, picture bytes, media_type, copy)
              revision 0004: the ad itself, kept only for ads in the review queue (a reviewer must see it)

The review queue is the decisions answered `review`, and the automatic passes and blocks drawn for audit
(`review_sample`, revision 0005: a share `review_sample_rate` of them, `drawn_for_review`), that have no
feedback yet, oldest first (`review_queue`, paged by the last request_id seen); feedback closes an item.
A decision row whose dict carries `REVIEW_ITEM` (the gateway adds it to queued ads while
`review_store_ads` is on) has that item written right after it, before the answer goes out
(`write_decisions`); `prune_review_items` deletes old ones (`adaudit db prune-review-items`).

`DecisionLog` is what every database does the same: the schema at start (below), a logged
decision, the reviewer's feedback, per-model reviewed accuracy (a join of feedback with decisions,
grouped by model, version and task) and the shadow disagreements. Every query is built by
SQLAlchemy with bound parameters; no SQL text is ever made from request data.

The schema is Alembic's (service/migrations/, run by schema.py; the tables in tables.py). At start a
gateway either upgrades the schema itself (`migrate`: the default on SQLite, where it is the only
writer) or only checks its revision (a server database shared by several pods: no pod runs DDL); a
schema behind this code keeps the gateway out of readiness (`schema_problem`, 503 from /readyz
naming `adaudit db upgrade`) until it is upgraded.

How the gateway's decision rows reach the database is one interface, `DecisionWriter` (the
engine with this database's options, `add_decisions`, the gateway's `write`, `stop`, `close`),
with one strategy per database, picked from the URL in one place (`decision_writer`):

- `PostgresDecisionWriter`, production (`postgresql+psycopg://...`, install the driver; several
  replicas share one log): a connection pool that pings a connection before use (a restarted
  server's dead connections are replaced, not failed on), the connect and checkout timeouts
  below, and every write from a worker thread, so a slow or vanished server never blocks the
  event loop. Any other server database SQLAlchemy reaches takes the same path.
- `SqliteDecisionWriter`, the default file (one replica) and in-memory logs (tests): WAL journal,
  synchronous=NORMAL (a commit appends to the WAL, no fsync), and the one fast path that only
  SQLite has: a lone audit's row written on the event loop, when the write lock is free that
  instant, with the WAL checkpoints that path then needs (see the class).

Waiting is bounded by `lock_timeout_s` (the gateway's request timeout): SQLite's busy timeout,
PostgreSQL's connect timeout and the pool's checkout timeout. A database that is down or locked
past it raises `SQLAlchemyError`, which the gateway answers with a 503 (see gateway.py).

The methods of `DecisionLog` are synchronous; the gateway calls them with `asyncio.to_thread`,
and writes its decisions through `write_decisions`, which the writer strategy carries out.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from datetime import datetime, timezone

from sqlalchemy import Integer, and_, cast, create_engine, delete, event, exists, func, insert, or_, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from .schema import SchemaError, first_line, schema_status, upgrade_schema
from .tables import DecisionRow, DisagreementRow, FeedbackRow, ReviewItemRow

log = logging.getLogger("adaudit.service")
CHECKPOINT_EVERY = 200  # rows written in place (SqliteDecisionWriter) between two WAL checkpoints
IN_MEMORY = ("sqlite://", "sqlite:///:memory:")


REVIEW_ITEM = "review_item"  # the key of a decision row's review item (picture, media_type, copy), if any
# outputs[ROLES]: which tasks of the row's labels and scores are its verdict and violation (the model's taxonomy,
# models/labels.py); a row logged before taxonomies has none and means today's task names
ROLES = "roles"
DEFAULT_ROLES = {"verdict": "verdict", "violation": "violation"}


def roles(taxonomy) -> dict[str, str]:
    """outputs[ROLES] for a decision answered under `taxonomy`."""
    return {"verdict": taxonomy.verdict_task, "violation": taxonomy.reason_task}
PICTURE_TYPES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"),
                 (b"BM", "image/bmp"))  # WEBP: RIFF....WEBP (picture_media_type)


class UnknownRequest(LookupError):
    pass


class UnknownCursor(LookupError):
    pass


def picture_media_type(picture: bytes) -> str:
    """The media type of an ad's picture from its first bytes (intake.py admits only these formats): the
    picture route answers with it, so a browser shows the bytes as the image they are."""
    if picture[:4] == b"RIFF" and picture[8:12] == b"WEBP":
        return "image/webp"
    return next((media for magic, media in PICTURE_TYPES if picture.startswith(magic)), "application/octet-stream")


def drawn_for_review(request_id: str, rate: float) -> bool:
    """Whether an automatic pass or block goes to the review queue as an audit sample. Drawn from the request
    id's hash, not a random generator: every gateway replica draws the same share with no shared state, and a
    row's membership can be recomputed from the log."""
    if rate <= 0:
        return False
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < rate * 2**64


def review_item(picture: bytes, copy: str) -> dict:
    """A decision row's REVIEW_ITEM: the ad as the reviewer will see it."""
    return {"picture": picture, "media_type": picture_media_type(picture), "copy": copy}


class FeedbackExists(ValueError):
    pass


def now() -> datetime:
    return datetime.now(timezone.utc)


def utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)  # SQLite drops the zone


# --- writing decisions: one interface, a strategy per database ------------------------------
class DecisionWriter:
    """How the gateway's decision rows reach the database, and the engine every query runs on.

        engine                    the SQLAlchemy engine, made with `engine_options` (per database)
        add_decisions(rows)       commit the rows now, waiting as long as the database needs (blocking)
        async write(rows, alone)  the gateway's write: back once the rows are committed; `alone`: no
                                  other audit is in flight (a strategy may then take a shorter path)
        async stop()              background work finished, then `close` (the gateway's shutdown)
        close()                   every connection released

    The shared part is the plain path, right for every database: `write` commits from a worker
    thread, so a database that waits never blocks the event loop."""

    def __init__(self, url: str, lock_timeout_s: float, pool_size: int = 5, max_overflow: int = 10):
        self.url = url
        self.pool_size, self.max_overflow = pool_size, max_overflow  # a server database's pool (engine_options)
        self.engine = create_engine(url, **self.engine_options(url, lock_timeout_s))

    def engine_options(self, url: str, lock_timeout_s: float) -> dict:
        raise NotImplementedError

    def add_decisions(self, rows: list[dict]) -> None:
        # one Core INSERT with bound parameters (the ORM's unit of work costs more than the write here);
        # a lone row as one execute, not an executemany (less of SQLAlchemy's time)
        with self.engine.begin() as connection:
            connection.execute(insert(DecisionRow), rows[0] if len(rows) == 1 else rows)

    async def write(self, rows: list[dict], alone: bool) -> None:
        await asyncio.to_thread(self.add_decisions, rows)

    async def stop(self) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        self.engine.dispose()


class PostgresDecisionWriter(DecisionWriter):
    """PostgreSQL, production: a pool of `pool_size` connections kept open plus up to `max_overflow` more
    under load (the gateway's settings database_pool_size, database_max_overflow: every pod holds up to their
    sum, which the server's max_connections must cover for all pods), connections pinged before use (those
    a restarted server dropped are replaced), checkout within `lock_timeout_s`, the driver's connect
    timeout, and every write from a worker thread (the shared path). Another server database takes the
    same path, without the connect timeout (a psycopg argument)."""

    def engine_options(self, url: str, lock_timeout_s: float) -> dict:
        options = {"pool_pre_ping": True, "pool_timeout": lock_timeout_s, "pool_size": self.pool_size,
                   "max_overflow": self.max_overflow}
        if url.startswith("postgresql"):
            options["connect_args"] = {"connect_timeout": max(1, math.ceil(lock_timeout_s))}
        return options


class SqliteDecisionWriter(DecisionWriter):
    """A SQLite file (WAL, synchronous=NORMAL, foreign keys on every connection), or one in-memory database
    shared by every thread. Everything here exists for SQLite alone; no other database runs it.

    The in-place write (`add_decisions_now`): a lone audit's row is committed on the event loop through a
    DBAPI connection kept open for it, if the write lock is free that instant (busy timeout 0 on that
    connection); when it is not, nothing is written and the row takes the worker-thread path, which waits
    for the lock. Why: at batch 1 the thread hop (a worker woken, then the loop woken) costs more than a
    SQLite commit, and running SQLAlchemy's INSERT, compiled once, on the DBAPI connection skips
    SQLAlchemy's per-execution work (the figures: benchmarks/results/serving-history.md). A server
    database cannot promise a write without waiting, so it never takes this path.

    The WAL checkpoints: that connection never checkpoints the WAL itself (a checkpoint copies pages and
    syncs, which the event loop must not wait for); every `CHECKPOINT_EVERY` rows written in place, a
    PASSIVE checkpoint runs in a worker thread. An in-memory log writes nothing in place (its one
    connection serves every thread)."""

    def __init__(self, url: str, lock_timeout_s: float):
        super().__init__(url, lock_timeout_s)
        event.listen(self.engine, "connect", _sqlite_pragmas)
        self.writes_in_place = url not in IN_MEMORY
        self._in_place = None  # the DBAPI connection add_decisions_now keeps open
        self._insert = None  # add_decisions_now's statement, compiled once
        self._since_checkpoint = 0
        self._checkpoint: asyncio.Task | None = None  # the WAL checkpoint, while one runs

    def engine_options(self, url: str, lock_timeout_s: float) -> dict:
        options = {"connect_args": {"check_same_thread": False, "timeout": lock_timeout_s}}
        if url in IN_MEMORY:  # one in-memory database shared by every thread
            options["poolclass"] = StaticPool
        return options

    async def write(self, rows: list[dict], alone: bool) -> None:
        if alone and self.add_decisions_now(rows):
            if self.checkpoint_due() and (self._checkpoint is None or self._checkpoint.done()):
                self._checkpoint = asyncio.create_task(self._run_checkpoint())
            return
        await super().write(rows, alone)

    async def stop(self) -> None:
        if self._checkpoint is not None:
            await self._checkpoint
        await super().stop()

    def close(self) -> None:
        self._drop_in_place()
        super().close()

    def add_decisions_now(self, rows: list[dict]) -> bool:
        """`add_decisions` without waiting for anything: True once the rows are committed; False, with
        nothing written, where the log is in memory, the write lock is held right now, or a row does not
        name every column (or any other error: `add_decisions` then raises it, or waits for the lock, or
        fills the defaults)."""
        if not self.writes_in_place:
            return False
        try:
            if self._in_place is None:
                self._in_place = self._open_in_place()
            statement, conversions = self._decision_insert()
            cursor = self._in_place.cursor()
            cursor.executemany(statement, [tuple(row[name] if convert is None else convert(row[name])
                                                 for name, convert in conversions) for row in rows])
            cursor.close()
            self._in_place.commit()
        except Exception:  # noqa: BLE001 - locked right now, most likely; anything else add_decisions raises again
            try:
                self._in_place.rollback()
            except Exception:  # noqa: BLE001 - a connection that cannot roll back is not kept
                self._drop_in_place()
            return False
        self._since_checkpoint += len(rows)
        return True

    def _open_in_place(self):
        connection = self.engine.raw_connection()  # a DBAPI connection, the pragmas applied ...
        connection.detach()  # ... never handed back to the pool with the two below: closed at the end
        cursor = connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 0")  # this connection never waits
        cursor.execute("PRAGMA wal_autocheckpoint = 0")  # checkpoint() does it
        cursor.close()
        connection.commit()
        return connection

    def _decision_insert(self) -> tuple[str, list]:
        """The INSERT of a decision row naming every column, compiled by SQLAlchemy once, with the type
        conversions (DateTime, JSON, Boolean) of this database's dialect, in the statement's parameter
        order: add_decisions_now runs it on the DBAPI connection, so the stored values are the ones
        `add_decisions` stores."""
        if self._insert is None:
            dialect, columns = self.engine.dialect, DecisionRow.__table__.columns
            compiled = insert(DecisionRow).compile(dialect=dialect, column_keys=[c.key for c in columns])
            self._insert = (str(compiled), [(name, columns[name].type.dialect_impl(dialect).bind_processor(dialect))
                                            for name in compiled.positiontup])
        return self._insert

    def checkpoint_due(self) -> bool:
        """True once every CHECKPOINT_EVERY rows add_decisions_now writes: time to run `checkpoint`."""
        if self._since_checkpoint < CHECKPOINT_EVERY:
            return False
        self._since_checkpoint = 0
        return True

    def checkpoint(self) -> None:
        """Copy the WAL's pages into the database file (PASSIVE: writers carry on meanwhile)."""
        with self.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    async def _run_checkpoint(self) -> None:
        try:
            await asyncio.to_thread(self.checkpoint)
        except Exception as error:  # noqa: BLE001 - the next one tries again; SQLite checkpoints at close anyway
            log.warning("decision log checkpoint failed: %s", type(error).__name__)

    def _drop_in_place(self) -> None:
        connection, self._in_place = self._in_place, None
        if connection is not None:
            try:
                connection.close()  # detached from the pool: closed, and what a failed write left open rolled back
            except Exception:  # noqa: BLE001 - already broken; nothing more to release
                pass


def decision_writer(url: str, lock_timeout_s: float, pool_size: int = 5, max_overflow: int = 10) -> DecisionWriter:
    """The writer strategy for a database URL: the one place the URL picks it (the pool sizes are a server
    database's)."""
    if url.startswith("sqlite"):
        return SqliteDecisionWriter(url, lock_timeout_s)
    return PostgresDecisionWriter(url, lock_timeout_s, pool_size, max_overflow)


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


# --- the log ----------------------------------------------------------------------------------
class DecisionLog:
    """The log on one database: what every database does the same, and `writer`, the strategy its URL picks.

    `migrate`: whether `prepare_schema` (at the gateway's start) upgrades the schema itself (the only writer:
    a SQLite file, tests, scripts) or only checks it (a database several gateways share)."""

    def __init__(self, url: str, lock_timeout_s: float = 10.0, pool_size: int = 5, max_overflow: int = 10,
                 migrate: bool = True):
        self.writer = decision_writer(url, lock_timeout_s, pool_size, max_overflow)
        self.engine = self.writer.engine
        self.migrate = migrate
        self.schema_problem: str | None = "the decision log's schema has not been checked yet"

    def prepare_schema(self) -> None:
        """At start: with `migrate`, bring the schema to this code's revision (`upgrade_schema`); then check it
        (`check_schema`). Never raises: what stops the log from being used is kept in `schema_problem` (the
        gateway's readiness) and logged."""
        if self.migrate:
            try:
                before, after = upgrade_schema(self.engine)
                if before.revision != after:
                    log.info("decision log schema upgraded from %s to %s", before.revision or before.state, after)
            except SchemaError:
                pass  # a newer schema (served) or tables not adaudit's: check_schema says which
            except SQLAlchemyError as error:
                log.error("decision log: the schema upgrade failed: %s", first_line(error))
        self.check_schema()
        if self.schema_problem is not None:
            log.error("decision log: %s", self.schema_problem)


    def check_schema(self) -> str | None:
        """Why the gateway cannot use the log's schema, or None; kept in `schema_problem`. Once None it stays
        None without asking the database again (readiness calls this only while there is a problem)."""
        try:
            with self.engine.connect() as connection:
                status = schema_status(connection)
        except SQLAlchemyError as error:
            self.schema_problem = f"the decision log cannot be reached to check its schema: {first_line(error)}"
            return self.schema_problem
        if status.state == "ahead":
            log.warning("decision log: %s; serving (revisions are additive)", status.describe())
        self.schema_problem = None if status.usable else status.describe()
        return self.schema_problem

    async def write_decisions(self, rows: list[dict], alone: bool = False) -> None:
        """The gateway's write of its decisions (the writer strategy's `write`), then the review items some
        of them carry (a second commit, from a worker thread: the items reference their decisions, and
        pictures are too large for the in-place path). Both are done before the gateway answers."""
        items = [{"request_id": row["request_id"], "created_at": row["created_at"], **row.pop(REVIEW_ITEM)}
                 for row in rows if REVIEW_ITEM in row]
        await self.writer.write(rows, alone)
        if items:
            await asyncio.to_thread(self.add_review_items, items)

    def add_review_items(self, items: list[dict]) -> None:
        with self.engine.begin() as connection:
            connection.execute(insert(ReviewItemRow), items)

    def add_decisions(self, rows: list[dict]) -> None:
        """Commit `rows` now, waiting as long as the database needs (scripts, benchmarks, tests)."""
        self.writer.add_decisions(rows)

    async def stop(self) -> None:
        await self.writer.stop()

    def close(self) -> None:
        self.writer.close()

    def decision(self, request_id: str) -> dict | None:
        with Session(self.engine) as session:
            row = session.get(DecisionRow, request_id)
            if row is None:
                return None
            feedback = session.scalars(select(FeedbackRow).where(FeedbackRow.request_id == request_id)).all()
            labels, scores = row.outputs["labels"], row.outputs["scores"]
            headline = row.outputs.get(ROLES, DEFAULT_ROLES)
            return {"request_id": row.request_id, "ad_id": row.ad_id, "created_at": utc(row.created_at),
                    "model": row.model, "version": row.version, "arm": row.arm, "shadowed": row.shadowed,
                    "verdict": row.verdict, "verdict_score": scores[headline["verdict"]], "violation": row.violation,
                    "violation_score": row.violation_score, "scores": scores, "latency_ms": row.latency_ms,
                    "attributes": {t: l for t, l in labels.items() if t not in headline.values()},
                    "caller": row.caller, "feedback": {f.task: f.label for f in feedback} or None,
                    **_decision_of(row)}

    def add_feedback(self, request_id: str, labels: dict[str, str], reviewer: str | None) -> tuple[dict, dict]:
        """Store the reviewer's labels; returns (the decision, {task: correct})."""
        try:
            with Session(self.engine) as session, session.begin():
                row = session.get(DecisionRow, request_id)
                if row is None:
                    raise UnknownRequest(request_id)
                if session.scalar(select(func.count()).where(FeedbackRow.request_id == request_id)):
                    raise FeedbackExists(request_id)
                predicted = row.outputs["labels"]
                correct = {task: predicted.get(task) == label for task, label in labels.items()}
                moment = now()
                session.add_all(FeedbackRow(request_id=request_id, task=task, label=label,
                                            predicted=predicted.get(task, ""), correct=correct[task],
                                            reviewer=reviewer, created_at=moment) for task, label in labels.items())
                decision = _columns(row)
        except IntegrityError:  # two reviewers at once: the unique constraint decided
            raise FeedbackExists(request_id) from None
        return decision, correct

    def accuracy(self) -> list[dict]:
        correct = func.sum(cast(FeedbackRow.correct, Integer))
        query = (select(DecisionRow.model, DecisionRow.version, FeedbackRow.task, func.count(), correct)
                 .join(DecisionRow, DecisionRow.request_id == FeedbackRow.request_id)
                 .group_by(DecisionRow.model, DecisionRow.version, FeedbackRow.task)
                 .order_by(DecisionRow.model, DecisionRow.version, FeedbackRow.task))
        with Session(self.engine) as session:
            return [{"model": m, "version": v, "task": t, "reviewed": n, "correct": int(c or 0),
                     "accuracy": round((c or 0) / n, 6)} for m, v, t, n, c in session.execute(query)]

    def review_queue(self, limit: int, after: str | None = None) -> tuple[list[dict], str | None]:
        """Up to `limit` open review items (suggestion `review`, or an automatic decision drawn for audit; no
        feedback), oldest first, after the item
        `after` (a request_id a previous page ended with), and the cursor of the next page (None: the last).
        Ordered by (created_at, request_id), so a page boundary between equal times loses nothing, and an
        item closed meanwhile still marks its place."""
        open_review = and_(or_(DecisionRow.suggestion == "review", DecisionRow.review_sample.is_(True)),
                           ~exists().where(FeedbackRow.request_id == DecisionRow.request_id))
        query = (select(DecisionRow, ReviewItemRow.copy, ReviewItemRow.media_type)
                 .outerjoin(ReviewItemRow, ReviewItemRow.request_id == DecisionRow.request_id)
                 .where(open_review).order_by(DecisionRow.created_at, DecisionRow.request_id).limit(limit + 1))
        with Session(self.engine) as session:
            if after is not None:
                mark = session.get(DecisionRow, after)
                if mark is None:
                    raise UnknownCursor(after)
                query = query.where(or_(DecisionRow.created_at > mark.created_at,
                                        and_(DecisionRow.created_at == mark.created_at,
                                             DecisionRow.request_id > mark.request_id)))
            found = session.execute(query).all()
            items = [_queue_item(row, copy, media_type) for row, copy, media_type in found[:limit]]
        return items, (items[-1]["request_id"] if len(found) > limit else None)

    def review_picture(self, request_id: str) -> tuple[bytes, str] | None:
        """The stored picture of a review item and its media type, or None (no item, or not kept)."""
        with Session(self.engine) as session:
            found = session.execute(select(ReviewItemRow.picture, ReviewItemRow.media_type)
                                    .where(ReviewItemRow.request_id == request_id)).first()
        return None if found is None else (found[0], found[1])

    def add_disagreements(self, rows: list[dict]) -> None:
        """One shadow call's disagreements, in one transaction (one Core INSERT, as add_decisions)."""
        moment = now()
        with self.engine.begin() as connection:
            connection.execute(insert(DisagreementRow), [{"created_at": moment, **row} for row in rows])

    def disagreements(self, limit: int) -> list[dict]:
        query = select(DisagreementRow).order_by(DisagreementRow.id.desc()).limit(limit)
        with Session(self.engine) as session:
            return [{"request_id": r.request_id, "created_at": utc(r.created_at), "primary_model": r.primary_model,
                     "primary_version": r.primary_version, "shadow_model": r.shadow_model,
                     "shadow_version": r.shadow_version, "primary": r.primary_outputs, "shadow": r.shadow_outputs}
                    for r in session.scalars(query)]


def prune_review_items(engine, before: datetime, open_items: bool = False) -> int:
    """Delete the pictures and copy kept for review (review_items) of ads logged before `before`: those a
    reviewer has closed, and the open ones too with `open_items`. The decisions and feedback stay; the ad's
    content is the only part that grows with traffic and is no longer needed once reviewed. Returns the rows
    deleted. (`adaudit db prune-review-items`, the Helm chart's CronJob.)"""
    old = ReviewItemRow.created_at < before
    if not open_items:
        old = and_(old, exists().where(FeedbackRow.request_id == ReviewItemRow.request_id))
    with engine.begin() as connection:
        return connection.execute(delete(ReviewItemRow).where(old)).rowcount


def _decision_of(row: DecisionRow) -> dict:
    """The audit decision of a logged row (empty fields for a row logged before decisions existed)."""
    policy = {"name": row.policy_name, "version": row.policy_version} if row.policy_name else None
    return {"suggestion": row.suggestion, "reasons": row.reasons or [], "policy": policy,
            "term_hits": row.outputs.get("term_hits", [])}


def _queue_item(row: DecisionRow, copy: str | None, media_type: str | None) -> dict:
    """An open review item as the queue lists it: the decision, the model's scores, what fired, the copy and
    where its picture is (None where the ad was not kept)."""
    return {"request_id": row.request_id, "created_at": utc(row.created_at), "ad_id": row.ad_id,
            "model": row.model, "version": row.version, "arm": row.arm, "verdict": row.verdict,
            "violation": row.violation, "scores": row.outputs["scores"], "copy": copy,
            "picture_url": f"/v1/reviews/{row.request_id}/picture" if media_type else None,
            "evidence": row.outputs.get("evidence"), "queued": "review" if row.suggestion == "review" else "sample",
            **_decision_of(row)}


def _columns(row: DecisionRow) -> dict:
    return {column.name: getattr(row, column.name) for column in DecisionRow.__table__.columns}
