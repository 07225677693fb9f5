"""Prometheus metrics, one registry per app so tests and workers never share state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.runs.pools import PoolStats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "jetty_proxy_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "jetty_proxy_request_duration_seconds",
            "Time from request start to the end of the response body.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttfb = Histogram(
            "jetty_proxy_time_to_first_byte_seconds",
            "Time from request start to the first response body byte.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.active_streams = Gauge(
            "jetty_proxy_active_streams",
            "Streaming responses currently open.",
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "jetty_proxy_upstream_errors",
            "Upstream failures by kind (connect, timeout, status, stream).",
            ["kind"],
            registry=self.registry,
        )

        self.chat_records_dropped = Counter(
            "jetty_proxy_chat_records_dropped",
            "Records of relayed completions given up on, by reason (backlog_full, shutdown,"
            " rejected, no_writer).",
            ["reason"],
            registry=self.registry,
        )
        self.chat_records_retrying = Gauge(
            "jetty_proxy_chat_records_retrying",
            "Records of relayed completions waiting for the database to take them.",
            registry=self.registry,
        )
        self.asyncio_tasks = Gauge(
            "jetty_proxy_asyncio_tasks",
            "Tasks alive in the server's event loop (rises with open streams and runs; "
            "a count that keeps growing under steady traffic is a leak).",
            registry=self.registry,
        )
        self.asyncio_tasks.set_function(_task_count)
        # process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total, ...
        ProcessCollector(registry=self.registry)

    def watch_collections(self, counts: CollectionCounts) -> None:
        """Report ``counts`` per collection (read when ``/metrics`` is rendered)."""
        self.registry.register(_CollectionCollector(counts))

    def watch_pools(self, read: Callable[[], Sequence[PoolStats]]) -> None:
        """Report the warm pools ``read`` returns, each time /metrics is rendered."""
        self.registry.register(_PoolCollector(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CollectionCounts(Protocol):
    """What this server counts per collection (`proxy.quota.Quotas` keeps these)."""

    @property
    def requests(self) -> Mapping[str, int]: ...

    @property
    def spend(self) -> Mapping[str, float]: ...

    @property
    def live_runs(self) -> Mapping[str, int]: ...

    @property
    def refusals(self) -> Mapping[tuple[str, str], int]: ...


class _CollectionCollector:
    def __init__(self, counts: CollectionCounts) -> None:
        self._counts = counts

    def describe(self) -> list[Metric]:
        return []  # families are made at each scrape (their label sets grow)

    def collect(self) -> Iterator[Metric]:
        counts = self._counts
        yield _family(
            CounterMetricFamily,
            "jetty_proxy_collection_requests",
            "Chat completion requests (relayed and runbook) by collection.",
            counts.requests,
        )
        yield _family(
            CounterMetricFamily,
            "jetty_proxy_collection_spend_usd",
            "US dollars of priced model calls and relayed chats, by collection.",
            counts.spend,
        )
        yield _family(
            GaugeMetricFamily,
            "jetty_proxy_collection_live_runs",
            "Runs live on this server, by collection.",
            counts.live_runs,
        )
        yield _family(
            CounterMetricFamily,
            "jetty_proxy_limit_refusals",
            "Requests and runs refused by a limit, by collection and limit.",
            counts.refusals,
            ("collection", "limit"),
        )


def _family(
    kind: type[CounterMetricFamily | GaugeMetricFamily],
    name: str,
    documentation: str,
    values: Mapping[Any, float],
    labels: tuple[str, ...] = ("collection",),
) -> Metric:
    family = kind(name, documentation, labels=labels)
    for label, value in sorted(values.items()):
        family.add_metric(list(label) if isinstance(label, tuple) else [label], value)
    return family


class _PoolCollector(Collector):
    def __init__(self, read: Callable[[], Sequence[PoolStats]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        size = GaugeMetricFamily(
            "jetty_proxy_warm_pool_size", "Sandboxes a warm pool keeps ready.", labels=["pool"]
        )
        ready = GaugeMetricFamily(
            "jetty_proxy_warm_sandboxes_ready",
            "Warm sandboxes started and waiting for a run.",
            labels=["pool"],
        )
        claimed = CounterMetricFamily(
            "jetty_proxy_warm_claims", "Runs that started in a warm sandbox.", labels=["pool"]
        )
        taken_over = CounterMetricFamily(
            "jetty_proxy_warm_takeovers",
            "Runs that took over the agent their warm sandbox had started ahead of them.",
            labels=["pool"],
        )
        misses = CounterMetricFamily(
            "jetty_proxy_warm_misses",
            "Runs that found their pool empty and started cold.",
            labels=["pool"],
        )
        for pool in self._read():
            size.add_metric([pool.name], pool.size)
            ready.add_metric([pool.name], pool.ready)
            claimed.add_metric([pool.name], pool.claimed)
            taken_over.add_metric([pool.name], pool.taken_over)
            misses.add_metric([pool.name], pool.misses)
        yield from (size, ready, claimed, taken_over, misses)


def _task_count() -> float:
    """Tasks of the running event loop; 0 when read outside one (the gauge is read when
    ``/metrics`` is rendered, on the server's loop)."""
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:
        return 0.0
