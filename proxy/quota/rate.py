"""Requests per minute as a token bucket of one number (GCRA), shared through the database.

A bucket is its *theoretical arrival time* (``tat``, seconds since the epoch): where the
requests admitted so far would have brought it had they come evenly, one per ``60 / rpm``
seconds. A request is admitted when, counting it, that time is at most a minute ahead of now:
a client may send a whole minute's worth at once, and then one each ``60 / rpm`` seconds. When
it is refused, the time until it would be admitted is exact, which makes ``Retry-After``
honest. Pure: the caller gives the time and keeps the bucket.

Several servers share one bucket per scope through the database: each admits against its
own copy, remembers what it added since it last said so (``owed``), and `settle` takes the
database's time back (which counts every server's requests) plus what was added meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass

WINDOW_SECONDS = 60.0


@dataclass(slots=True)
class Bucket:
    """One scope's bucket, as this server knows it."""

    tat: float = 0.0
    # Seconds added since the database was last told, and when the first of them came.
    owed: float = 0.0
    owed_since: float = 0.0

    def wait(self, now: float, per_minute: int) -> float:
        """Seconds until one more request would be admitted; 0 or less: now."""
        return max(self.tat, now) + WINDOW_SECONDS / per_minute - WINDOW_SECONDS - now

    def take(self, now: float, per_minute: int) -> None:
        """Count one admitted request (after `wait` said yes)."""
        interval = WINDOW_SECONDS / per_minute
        if not self.owed:
            self.owed_since = now
        self.tat = max(self.tat, now) + interval
        self.owed += interval

    def used(self, now: float, per_minute: int) -> int:
        """About how many requests of the last minute the bucket holds."""
        interval = WINDOW_SECONDS / per_minute
        return min(per_minute, max(0, round((self.tat - now) / interval + 0.4999)))

    def owing(self) -> tuple[float, float] | None:
        """What to tell the database (when the first request came, seconds added), and forget
        it; None when nothing was added."""
        if not self.owed:
            return None
        owed = (self.owed_since, self.owed)
        self.owed, self.owed_since = 0.0, 0.0
        return owed

    def owe_again(self, since: float, seconds: float) -> None:
        """Take back what `owing` gave, when the database could not be told."""
        self.owed_since = min(self.owed_since, since) if self.owed else since
        self.owed += seconds

    def settle(self, database_tat: float) -> None:
        """Take the database's time (every server's requests), moved on by what this server
        added since it last told the database, as the database will move it."""
        if self.owed:
            self.tat = max(database_tat, self.owed_since) + self.owed
        else:
            self.tat = database_tat
