"""The outbox relay: a background task that delivers CRM rows to erxes, in order per customer, with backoff.

It runs in ``bookingbot worker`` processes, and inside the server or ``bookingbot chat`` in embedded mode (no
worker). Each round leases due stream heads (:meth:`bot.crm.outbox.Outbox.claim`), works on their streams
concurrently and each stream strictly in order, and sleeps until the next row is due, a poll interval passes or
:meth:`OutboxRelay.wake` is called. A failed attempt is retried with exponential backoff; an hour-long erxes
outage only delays the work. A row is parked instead (``failed``, shown by ``bookingbot outbox``, queued again by
``bookingbot outbox retry``) when retrying cannot help: erxes refuses the token or a permission (configuration
an operator must fix: one error line per tenant says what), erxes rejects the request itself, or after
``max_attempts`` (about 8 hours of trying with the defaults). A parked row holds back its customer's later rows,
so nothing overtakes it and nothing is lost: once it is queued again the stream resumes in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime, timedelta

from bot import metrics
from bot.crm.outbox import Outbox, OutboxItem
from bot.crm.sync import ErxesSync, Known
from bot.exceptions import CrmAuthFailed, CrmError, CrmPermissionDenied, CrmRejected, StorageError
from bot.retry import Backoff

log = logging.getLogger(__name__)

Syncs = Callable[[], dict[str, ErxesSync]]  # tenant id -> its erxes, read each round (tenants may be added)

# Failures an operator must fix (the same for every row of the tenant): the reason /metrics counts, and the fix.
_OPERATOR_FIXES: dict[type[CrmError], tuple[str, str]] = {
    CrmAuthFailed: ("auth", "erxes refused the token: put a valid app token in crm.erxes.token"),
    CrmPermissionDenied: ("permission", "erxes denied a permission: give the app's user group that permission"),
}


class OutboxRelay:
    def __init__(
        self,
        outbox: Outbox,
        syncs: Syncs,
        *,
        poll_s: float = 2.0,
        base_delay: float = 2.0,
        max_delay: float = 300.0,
        max_attempts: int = 100,
        batch: int = 20,
    ) -> None:
        self.outbox = outbox
        self._syncs = syncs
        self.poll_s = poll_s
        self._backoff = Backoff(base=base_delay, cap=max_delay, floor=base_delay / 2)
        self.max_attempts = max_attempts
        self.batch = batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reported: set[str] = set()  # tenants whose operator problem was logged since their last delivery

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="crm-outbox-relay")

    def wake(self) -> None:
        """New rows were committed: look now rather than at the next poll."""
        self._wake.set()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def settle(self, seconds: float) -> bool:
        """Deliver until no row of a CRM tenant is pending or ``seconds`` pass (``bookingbot chat`` calls this
        before it exits). True when nothing is left pending."""
        deadline = time.monotonic() + seconds
        while self._syncs():
            await self.run_once()
            tenants = set(self._syncs())
            rows = await self.outbox.open_rows()
            pending = [row for row in rows if row.tenant in tenants and row.status == "pending"]
            if not pending or time.monotonic() >= deadline:
                return not pending
            soonest = min(row.next_at for row in pending)
            wait = (soonest - datetime.now(UTC)).total_seconds()
            await asyncio.sleep(min(max(wait, 0.05), max(deadline - time.monotonic(), 0.0), self.poll_s))
        return True  # no tenant has a CRM

    async def run_once(self) -> int:
        """One round: deliver every stream whose head is due, each until it runs dry or a row fails."""
        syncs = self._syncs()
        items = await self.outbox.claim(list(syncs), datetime.now(UTC), self.batch)
        results = await asyncio.gather(*(self._stream(syncs[item.tenant], item) for item in items))
        return sum(results)

    async def _run(self) -> None:
        while True:
            try:
                delivered = await self.run_once()
            except StorageError as exc:
                log.warning("crm outbox: %s", exc)
                delivered = 0
            except Exception:  # a bug must not stop delivery for every tenant; the row's lease lets it retry
                log.exception("crm outbox: relay round failed")
                delivered = 0
            if delivered:
                continue
            self._wake.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def _stream(self, sync: ErxesSync, item: OutboxItem | None) -> int:
        """Deliver ``item`` and then the stream's next heads while they are due; returns rows delivered."""
        delivered = 0
        while item is not None:
            if not await self._deliver(sync, item):
                return delivered
            delivered += 1
            nxt = await self.outbox.claim([item.tenant], datetime.now(UTC), 1, stream=item.stream)
            item = nxt[0] if nxt else None
        return delivered

    async def _deliver(self, sync: ErxesSync, item: OutboxItem) -> bool:
        try:
            known = Known.of(await self.outbox.known(item.tenant, item.stream))
            result = await sync.apply(item, known)
        except CrmError as exc:
            await self._failed(item, exc)
            return False
        await self.outbox.complete(item, result)
        self._reported.discard(item.tenant)
        return True

    async def _failed(self, item: OutboxItem, exc: CrmError) -> None:
        error = f"{type(exc).__name__}: {exc}"
        operator = _OPERATOR_FIXES.get(type(exc))
        if operator is not None:
            await self._park(item, error, *operator)
            return
        if isinstance(exc, CrmRejected) or item.attempts + 1 >= self.max_attempts:
            log.error("crm outbox: giving up on row %s (%s of %s): %s", item.id, item.op, item.tenant, error)
            await self.outbox.fail(item, error)
            metrics.OUTBOX_PARKED.labels("rejected" if isinstance(exc, CrmRejected) else "attempts").inc()
            return
        delay = self._backoff.delay(item.attempts)
        log.warning("crm outbox: row %s (%s) failed, retry in %.1fs: %s", item.id, item.op, delay, error)
        await self.outbox.postpone(item, error, timedelta(seconds=delay))

    async def _park(self, item: OutboxItem, error: str, reason: str, fix: str) -> None:
        """Retrying cannot help until an operator acts: fail the row now rather than hammer erxes with it."""
        await self.outbox.fail(item, f"{error} ({fix}, then `bookingbot outbox retry`)")
        metrics.OUTBOX_PARKED.labels(reason).inc()
        if item.tenant in self._reported:  # every stream of the tenant hits it: one error line is enough
            log.info("crm outbox: row %s (%s of %s) parked: %s", item.id, item.op, item.tenant, error)
            return
        self._reported.add(item.tenant)
        log.error(
            "crm outbox: tenant %s: %s (%s); its CRM rows are parked, nothing is lost: fix config.yaml, restart, "
            "then run `bookingbot outbox retry --tenant %s`", item.tenant, fix, error, item.tenant,
        )
