"""What a server learns through the database about the runs it holds.

Servers sharing a database never call each other: what one of them decides about a run that
another holds is written to the run's record, and the holder reads it there.

* A live run whose status has become ``cancelled`` (a ``statuses`` cancel on any server) is
  stopped here, as a cancel on this server stops it: the agent is killed, its results so far
  kept, its sandbox removed.
* A kept sandbox (`~proxy.runs.followup.KeptSandboxes`) whose run has been continued by a
  turn on another server (its session names it ``continued_by``) is released: that turn was
  restored there from the saved session, and nobody will take this sandbox any more.

The record is the truth. The store wakes the watch when the record of one of these runs
changes (on PostgreSQL also for other processes' changes, see `Store.subscribe_records`), and
the watch reads them all every ``watch_seconds`` anyway, for a change it was not told of.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from proxy.runs.followup import KeptSandboxes, continued
from proxy.runs.live import LiveRun
from proxy.store import Store, StoreError

logger = logging.getLogger("proxy.runs")


class RunWatch:
    """Watches the records of this server's ``live`` runs and ``kept`` sandboxes."""

    def __init__(
        self, store: Store, live: Mapping[str, LiveRun], kept: KeptSandboxes, seconds: float
    ) -> None:
        self._store = store
        self._live = live
        self._kept = kept
        self._seconds = seconds

    async def run(self) -> None:
        """Until cancelled: `check` whenever a watched record changes, or after ``seconds``."""
        failing = False
        while True:
            # Subscribed before reading: a change made meanwhile ends the wait at once.
            with self._store.subscribe_records(self._watched) as changed:
                try:
                    await self.check()
                except Exception as exc:  # the watch outlives a failed look, whatever failed
                    # Said once per outage, not every `seconds`.
                    logger.log(
                        logging.DEBUG if failing else logging.WARNING,
                        "could not read the records of this server's runs: %s",
                        exc,
                        exc_info=not isinstance(exc, StoreError),
                    )
                    failing = True
                else:
                    failing = False
                await changed.wait(self._seconds)

    async def check(self) -> None:
        """Stop the live runs cancelled elsewhere; release the kept sandboxes continued
        elsewhere."""
        live = dict(self._live)
        kept = self._kept.run_ids()
        if not live and not kept:
            return
        for record in await self._store.get_trajectories(live.keys() | kept):
            run = live.get(record.id)
            if run is not None and record.status == "cancelled" and not run.done:
                logger.info("run %s was cancelled through another server: stopping it", run.run_id)
                run.cancel()
            if record.id in kept and continued(record) and await self._kept.release(record.id):
                logger.info(
                    "run %s was continued on another server: its kept sandbox is released",
                    record.id,
                )

    def _watched(self, run_id: str) -> bool:
        return run_id in self._live or run_id in self._kept
