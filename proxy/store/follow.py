"""Replaying a trajectory's event log and then following it while the run goes on."""

from __future__ import annotations

from collections.abc import AsyncIterator

from proxy.store.protocol import Store
from proxy.store.records import StoredEvent

#: How often a follower looks for changes it was not told about (another process's writes).
POLL_SECONDS = 0.5
#: How often it looks while other processes' changes are heard (PostgreSQL's LISTEN): only a
#: safety net, since a listener that stops hearing wakes every follower to poll again.
HEARD_POLL_SECONDS = 5.0
BATCH = 500


async def follow_events(
    store: Store,
    trajectory_id: str,
    after_seq: int = 0,
    *,
    poll_seconds: float = POLL_SECONDS,
    batch: int = BATCH,
) -> AsyncIterator[StoredEvent]:
    """Every event with ``seq > after_seq``, in order, each exactly once, live ones included.

    Ends when the trajectory has reached a final status and every event it logged has been
    yielded (or when it disappears). Wakes at once for writes made through ``store`` in
    this process, and for those of other processes that the store hears (`Store.listen`);
    polls every ``poll_seconds`` while they are not heard.
    """
    while True:
        with store.subscribe(trajectory_id) as changed:
            # Status first, events second: whatever was logged before the run ended is
            # then counted in ``last_seq`` and fetched below.
            trajectory = await store.get_trajectory(trajectory_id)
            if trajectory is None:
                return
            events = await store.events_after(trajectory_id, after_seq, limit=batch)
            for event in events:
                yield event
                after_seq = event.seq
            if len(events) == batch:
                continue
            if trajectory.is_final and trajectory.last_seq <= after_seq:
                return
            if not events:
                await changed.wait(
                    max(poll_seconds, HEARD_POLL_SECONDS) if changed.hears_others else poll_seconds
                )
