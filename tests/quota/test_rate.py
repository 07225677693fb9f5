"""Requests per minute as one number per bucket: bursts, steady rates, honest waits, and
buckets shared by several servers through the database's arithmetic."""

from __future__ import annotations

import pytest

from proxy.quota.rate import Bucket


def admitted(bucket: Bucket, now: float, per_minute: int) -> bool:
    if bucket.wait(now, per_minute) > 0:
        return False
    bucket.take(now, per_minute)
    return True


def test_a_minutes_worth_at_once_then_one_per_interval() -> None:
    bucket = Bucket()
    now = 1_000_000.0
    assert all(admitted(bucket, now, 6) for _ in range(6))
    assert not admitted(bucket, now, 6)
    # The next one is admitted exactly when the wait said: one interval (10 s) later.
    assert bucket.wait(now, 6) == pytest.approx(10.0)
    assert not admitted(bucket, now + 9.9, 6)
    assert admitted(bucket, now + 10.0, 6)
    assert not admitted(bucket, now + 10.0, 6)
    assert bucket.used(now + 10.0, 6) == 6


def test_an_idle_bucket_fills_again_and_counts_what_it_holds() -> None:
    bucket = Bucket()
    for _ in range(3):
        bucket.take(0.0, 60)
    assert bucket.used(0.0, 60) == 3
    assert bucket.used(1.5, 60) == 2
    assert bucket.used(120.0, 60) == 0
    assert all(admitted(bucket, 120.0, 60) for _ in range(60))
    assert not admitted(bucket, 120.0, 60)


def test_what_a_server_owes_is_told_once_and_can_be_taken_back() -> None:
    bucket = Bucket()
    assert bucket.owing() is None
    bucket.take(100.0, 6)
    bucket.take(101.0, 6)
    assert bucket.owing() == (100.0, 20.0)
    assert bucket.owing() is None
    bucket.owe_again(100.0, 20.0)
    bucket.take(102.0, 6)
    assert bucket.owing() == (100.0, 30.0)


def test_two_servers_sharing_a_bucket_see_each_others_requests_once_settled() -> None:
    database = 0.0

    def tell(bucket: Bucket) -> None:
        # What the database does with what a server owes (see Store.advance_rates).
        nonlocal database
        owing = bucket.owing()
        if owing is not None:
            floor, add = owing
            database = max(database, floor) + add
        bucket.settle(database)

    one, two = Bucket(), Bucket()
    now = 5_000.0
    assert sum(admitted(one, now, 4) for _ in range(3)) == 3
    tell(one)
    # The other server has heard of the three: one more is all the minute has left.
    tell(two)
    assert admitted(two, now, 4)
    assert not admitted(two, now, 4)
    # One server's requests taken while the other's are told are not lost.
    one.take(now, 4)
    tell(two)
    tell(one)
    assert one.tat == pytest.approx(now + 5 * 15)
    tell(two)
    assert two.tat == pytest.approx(now + 5 * 15)
