"""The message log: every inbound and outbound message, written to SQL in batches off the hot path.

``add()`` only appends to memory; a background task writes a batch once ``batch_size`` rows are waiting or
``interval`` seconds after the first one, whichever comes first. Each batch is one transaction that also keeps
``customers`` and ``conversations`` up to date. ``flush()`` writes everything queued (and raises
:class:`StorageError` if the database cannot be reached), ``aclose()`` flushes before returning.

The writer never dies and never writes a row twice:
- any failure (SQLAlchemy's, asyncpg's, the network's) keeps the batch queued and is retried with backoff;
- every row has a natural key (conversation, event id, direction, ``seq``), unique in the table; a batch is
  written by COPY, and once it has failed, retried as INSERT ... ON CONFLICT DO NOTHING, so a batch whose
  commit was never acknowledged is written again without doubles;
- text is cleaned of what PostgreSQL refuses (NUL, unpaired surrogates) as it is written;
- a row the database itself refuses (a data or constraint error, found by writing the failed batch row by row)
  is dropped, and so is a row added while ``max_backlog`` rows wait: each with a log line and
  ``bookingbot_message_log_dropped_total``. ``bookingbot_message_log_backlog`` shows the rows waiting.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import case, func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot import metrics
from bot.db import dialect_insert
from bot.exceptions import StorageError
from bot.retry import Backoff
from bot.tables import CONVERSATIONS, CUSTOMERS, MESSAGES

log = logging.getLogger(__name__)


def storable(value: str) -> str:
    """``value`` without what PostgreSQL's text type refuses: NUL characters and unpaired surrogates."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    if value.isascii():
        return value
    try:
        value.encode()
    except UnicodeEncodeError:
        return value.encode(errors="replace").decode()
    return value


class LoggedMessage(BaseModel):
    """One logged message. ``state`` is the dialog state after the turn the message belongs to."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    conversation: str  # "channel:user"
    channel: str
    direction: Literal["in", "out"]
    at: datetime  # aware
    text: str | None = None
    button: str | None = None  # data of the pressed button
    voice: str | None = None  # media reference of a voice note
    phone: str | None = None  # a shared contact's phone number
    state: str | None = None
    event_id: str | None = None
    seq: int = 0  # place in its turn: 0 the inbound message, n the n-th reply (with event_id: the row's key)


_COLUMNS = tuple(LoggedMessage.model_fields)
_KEY = ("tenant", "conversation", "event_id", "direction", "seq")
_TYPES = {"at": "timestamptz[]", "seq": "integer[]"}
# A retried batch: one statement, the rows as one array per column (a single round trip, a cached prepared
# statement); rows already written by an unacknowledged earlier attempt are skipped.
_PG_INSERT = text(
    f"INSERT INTO {MESSAGES.name} ({', '.join(_COLUMNS)}) "
    f"SELECT {', '.join(_COLUMNS)} FROM unnest("
    + ", ".join(f"CAST(:{c} AS {_TYPES.get(c, 'text[]')})" for c in _COLUMNS)
    + f") WITH ORDINALITY AS r({', '.join(_COLUMNS)}, ord) ORDER BY ord "
    f"ON CONFLICT ({', '.join(_KEY)}) DO NOTHING"
)


def _values(row: LoggedMessage) -> dict[str, Any]:
    """A row's column values, its text made storable (rows are often made by ``model_copy``, which validates
    nothing, so this is the one place every row passes)."""
    return {c: storable(v) if isinstance(v := getattr(row, c), str) else v for c in _COLUMNS}


async def _insert_messages(conn: AsyncConnection, batch: list[LoggedMessage], *, retry: bool) -> None:
    """Append a batch to ``messages``.

    On PostgreSQL a first attempt is a binary COPY: the cheapest way in (about 2/3 of the cost of the
    INSERT below), and it cannot write a row twice either: a row already there fails it on the unique key. A
    retry (the batch failed once, so its commit may have landed unacknowledged) is an INSERT that skips the
    rows already there; SQLite always takes that INSERT (cheap there)."""
    rows = [_values(row) for row in batch]
    if conn.dialect.name != "postgresql":
        stmt = dialect_insert(conn, MESSAGES).on_conflict_do_nothing(index_elements=list(_KEY))
        await conn.execute(stmt, rows)
    elif retry:
        await conn.execute(_PG_INSERT, {c: [row[c] for row in rows] for c in _COLUMNS})
    else:
        driver = (await conn.get_raw_connection()).driver_connection
        if driver is None:
            raise StorageError("message log: the database connection is closed")
        records = [tuple(row[c] for c in _COLUMNS) for row in rows]
        await driver.copy_records_to_table(MESSAGES.name, records=records, columns=_COLUMNS)


def _refused_row(exc: BaseException) -> bool:
    """Whether ``exc`` says the rows themselves are unacceptable (so retrying them can never succeed), rather
    than the database being unreachable, busy or not migrated yet (which retrying outlives)."""
    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        if isinstance(state, str) and state[:2] in ("22", "23"):  # data exception, integrity violation
            return True
        if isinstance(error, ValueError | TypeError | OverflowError | sqlite3.DataError | sqlite3.IntegrityError):
            return True  # a value the driver cannot encode or the database rejects
        pending += [error.__cause__, error.__context__, getattr(error, "orig", None)]
    return False


_TOUCH_EVERY = timedelta(minutes=1)
_TOUCHED_MAX = 100_000  # conversations remembered; past that, forget them all (a few extra upserts, no harm)


def _user_id(conversation: str, channel: str) -> str:
    """The channel's user id inside a conversation id (``channels.base.InboundMessage.conversation``)."""
    return conversation.removeprefix(f"{channel}:")


class MessageLog:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        batch_size: int = 100,
        interval: float = 0.05,
        max_backlog: int = 100_000,
        retry_base: float = 0.25,
        retry_cap: float = 5.0,
        write_timeout: float = 30.0,
        close_timeout: float = 10.0,
    ) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self.interval = interval
        self.max_backlog = max_backlog
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.write_timeout = write_timeout  # a write stuck on a dead connection is abandoned and retried
        self.close_timeout = close_timeout  # how long aclose() keeps retrying before it gives rows up
        self._pending: list[LoggedMessage] = []
        self._has_rows = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = asyncio.Event()
        self._lock = asyncio.Lock()  # one writer at a time keeps rows in the order they were added
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._retrying = False  # the head of the queue failed a write: some of it may be written already
        self._added = 0  # rows ever queued ...
        self._finished = 0  # ... and of those, rows written or dropped
        self._progress = asyncio.Event()  # set (and replaced) whenever rows are finished
        self._touched: dict[tuple[str, str], datetime] = {}  # conversation -> last_at this process wrote

    @property
    def backlog(self) -> int:
        """Rows waiting to be written."""
        return len(self._pending)

    @property
    def writing(self) -> bool:
        """Whether the background writer is running."""
        return self._task is not None and not self._task.done()

    def add(self, row: LoggedMessage) -> None:
        """Queue a row (never blocks). Raises StorageError after :meth:`aclose`, rather than dropping it."""
        if self._closed:
            raise StorageError("the message log is closed")
        if len(self._pending) >= self.max_backlog:
            self._drop([row], "backlog_full", f"{self.max_backlog} rows are already waiting")
            return
        self._pending.append(row)
        self._added += 1
        metrics.LOG_BACKLOG.inc()
        self._has_rows.set()
        if len(self._pending) >= self.batch_size:
            self._full.set()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="messagelog-writer")

    async def aclose(self) -> None:
        """Stop the writer after its current batch (never mid-write) and write whatever is still queued,
        retrying for up to ``close_timeout`` seconds; rows still unwritten then are dropped (and logged)."""
        self._closed = True
        self._closing.set()
        self._has_rows.set()
        self._full.set()
        if self._task is not None:
            await self._task
            self._task = None
        deadline = asyncio.get_running_loop().time() + self.close_timeout
        for attempt in itertools.count():
            try:
                await self.flush()
                return
            except StorageError as exc:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    async with self._lock:
                        self._drop(self._pending, "shutdown", f"still failing at shutdown: {exc}")
                        self._done(len(self._pending))
                    return
                await asyncio.sleep(min(left, self._retry_delay(attempt)))

    async def flush(self) -> None:
        """Write every queued row now; raises StorageError (keeping the rows) if the database fails."""
        async with self._lock:
            while self._pending:
                batch = self._pending[: self.batch_size]
                retry = self._retrying
                try:
                    await self._write(batch, retry=retry)
                except Exception as exc:
                    metrics.LOG_WRITE_ERRORS.inc()
                    self._retrying = True
                    if not _refused_row(exc):
                        raise StorageError(f"message log: cannot write {len(batch)} rows: {exc!r}") from exc
                    if retry:  # refused even with the rows already there skipped: find the rows at fault
                        await self._write_one_by_one(batch)
                    continue  # (a first refusal may be a row already there: retried at once, skipping those)
                self._retrying = False
                self._done(len(batch))  # only once written: a failed batch is retried, not lost
            self._has_rows.clear()
            self._full.clear()

    async def _write_one_by_one(self, batch: list[LoggedMessage]) -> None:
        """Find the rows the database refuses in a failed batch: each is dropped, the others written."""
        for row in batch:
            try:
                await self._write([row], retry=True)
            except Exception as exc:
                metrics.LOG_WRITE_ERRORS.inc()
                if not _refused_row(exc):
                    raise StorageError(f"message log: cannot write a row: {exc!r}") from exc
                self._drop([row], "refused", repr(exc))
            self._done(1)

    def _done(self, count: int) -> None:
        """Forget the first ``count`` queued rows (written or dropped)."""
        del self._pending[:count]
        metrics.LOG_BACKLOG.dec(count)
        self._finished += count
        self._progress.set()
        self._progress = asyncio.Event()

    async def settled(self) -> None:
        """Wait until every row queued so far is written (or dropped). While the database is down that is
        not before it is back: callers bound the wait (the rows stay queued and are retried either way)."""
        target = self._added
        while self._finished < target:
            await self._progress.wait()

    @staticmethod
    def _drop(rows: list[LoggedMessage], reason: str, why: str) -> None:
        for row in rows:
            log.error(
                "message log: dropped the %s row %s/%s event %s seq %d (%s)",
                row.direction, row.tenant, row.conversation, row.event_id, row.seq, why,
            )  # fmt: skip
        metrics.LOG_DROPPED.labels(reason).inc(len(rows))

    def _retry_delay(self, failures: int) -> float:
        """Full jitter above a floor: never a burst of instant retries against a database that is down."""
        return Backoff(base=self.retry_base, cap=self.retry_cap, floor=self.retry_base).delay(failures)

    async def conversation(self, tenant: str, conversation_id: str) -> list[LoggedMessage]:
        """A conversation's logged messages, oldest first (written ones only: :meth:`flush` first if needed)."""
        columns = [MESSAGES.c[name] for name in LoggedMessage.model_fields]
        query = (
            select(*columns)
            .where(MESSAGES.c.tenant == tenant, MESSAGES.c.conversation == conversation_id)
            .order_by(MESSAGES.c.id)
        )
        async with self.engine.connect() as conn:
            rows = await conn.execute(query)
            return [LoggedMessage.model_validate(row._mapping) for row in rows]

    async def record_customer(
        self,
        tenant: str,
        conversation: str,
        channel: str,
        *,
        name: str | None = None,
        phone: str | None = None,
        email: str | None = None,
        also: Callable[[AsyncConnection], Awaitable[None]] | None = None,
    ) -> None:
        """Create or update the customer behind a conversation; ``None`` keeps what is stored.

        ``also`` runs inside the same transaction (the CRM outbox row that carries the customer to the CRM)."""
        known = {"name": name, "phone": phone, "email": email}
        try:
            async with self.engine.begin() as conn:
                stmt = dialect_insert(conn, CUSTOMERS).values(
                    tenant=tenant,
                    id=conversation,
                    channel=channel,
                    user_id=_user_id(conversation, channel),
                    created_at=datetime.now(UTC),
                    **known,
                )
                keep = {k: func.coalesce(stmt.excluded[k], CUSTOMERS.c[k]) for k in known}
                await conn.execute(stmt.on_conflict_do_update(index_elements=["tenant", "id"], set_=keep))
                if also is not None:
                    await also(conn)
        except (SQLAlchemyError, OSError) as exc:
            raise StorageError(f"cannot record customer {tenant}/{conversation}: {exc}") from exc

    async def _run(self) -> None:
        failures = 0
        while not self._closed:
            await self._has_rows.wait()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self.interval)
            try:
                await self.flush()
                failures = 0
            except Exception:  # whatever happens, the writer carries on: the rows stay queued
                delay = self._retry_delay(failures)
                failures += 1
                log.warning(
                    "message log: write failed (%d in a row), %d rows kept, retry in %.1f s",
                    failures, len(self._pending), delay, exc_info=failures == 1,
                )  # fmt: skip
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)

    async def _write(self, batch: list[LoggedMessage], *, retry: bool) -> None:
        spans = self._spans_to_touch(batch)
        async with asyncio.timeout(self.write_timeout), self.engine.begin() as conn:
            await _insert_messages(conn, batch, retry=retry)
            if spans:
                await self._touch_conversations(conn, spans)
        if len(self._touched) > _TOUCHED_MAX:
            self._touched.clear()
        self._touched.update({key: last for key, (_channel, _first, last) in spans.items()})

    def _spans_to_touch(self, batch: list[LoggedMessage]) -> dict[tuple[str, str], tuple[str, datetime, datetime]]:
        """The batch's conversations whose rows need a write: new to this process, or ``last_at`` older than
        :data:`_TOUCH_EVERY` (so a busy conversation costs one upsert a minute, not one per batch)."""
        spans: dict[tuple[str, str], tuple[str, datetime, datetime]] = {}
        for row in batch:
            key = (row.tenant, row.conversation)
            channel, first, last = spans.get(key, (row.channel, row.at, row.at))
            spans[key] = (channel, min(first, row.at), max(last, row.at))
        return {
            key: span
            for key, span in spans.items()
            if (written := self._touched.get(key)) is None or span[2] - written >= _TOUCH_EVERY
        }

    async def _touch_conversations(
        self, conn: AsyncConnection, spans: dict[tuple[str, str], tuple[str, datetime, datetime]]
    ) -> None:
        """Create the conversations' customers and rows, and move each conversation's ``last_at`` forward."""
        # Sorted: every process takes the row locks in the same order, so concurrent writers cannot deadlock.
        ordered = sorted(spans.items())
        customers = [
            {"tenant": t, "id": c, "channel": ch, "user_id": _user_id(c, ch), "created_at": first}
            for (t, c), (ch, first, _last) in ordered
        ]
        # executemany form (rows as parameters, not .values(rows)): compiled once and cached, whatever the batch size
        await conn.execute(dialect_insert(conn, CUSTOMERS).on_conflict_do_nothing(), customers)
        conversations = [
            {"tenant": t, "id": c, "customer": c, "channel": ch, "started_at": first, "last_at": last}
            for (t, c), (ch, first, last) in ordered
        ]
        stmt = dialect_insert(conn, CONVERSATIONS)
        later = case(
            (stmt.excluded.last_at > CONVERSATIONS.c.last_at, stmt.excluded.last_at), else_=CONVERSATIONS.c.last_at
        )
        await conn.execute(
            stmt.on_conflict_do_update(index_elements=["tenant", "id"], set_={"last_at": later}), conversations
        )
