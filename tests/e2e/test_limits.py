"""Limits on real runs: real Claude Code in real containers, held live by the scripted
Anthropic server (its calls after the first wait for a gate), behind one proxy or two proxy
processes sharing one PostgreSQL.

A run over a concurrency cap gets a 429 with Retry-After and no container; a request rate
cap refuses a relayed chat before the upstream sees it; a budget smaller than one run's cost
refuses the next run; an admin's PATCH holds at once; two servers share one count.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from proxy.runs.runtime import sandbox_owner
from proxy.sandbox.base import LABEL_OWNER
from proxy.settings import Settings
from tests.e2e.conftest import (
    PROVIDER_KEY,
    TEST_IMAGE,
    ProxyFactory,
    managed_containers,
    trajectory,
)
from tests.support.live import serve, serve_process
from tests.support.scripted_anthropic import ScriptedAnthropic
from tests.support.scripted_openai import ScriptedUpstream
from tests.support.seeded import Seeder
from tests.support.stores import TEST_SECRET_KEY, fresh_database

pytestmark = [pytest.mark.docker, pytest.mark.agents]

JETTY = {"runbook": True, "collection": "acme", "task": "limits", "agent": "claude-code"}
MESSAGES: Any = [
    {"role": "system", "content": "# Runbook\n\nWrite hello.txt into /app/results."},
    {"role": "user", "content": "Execute the runbook."},
]


def client(proxy: str, key: str = "local") -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy + "/v1", api_key=key, max_retries=0, timeout=180)


class Going:
    """A run started through the proxy and read to its end in a thread."""

    def __init__(self, proxy: str, key: str = "local") -> None:
        stream = client(proxy, key).chat.completions.create(
            model="claude-sonnet-4-6",
            stream=True,
            messages=MESSAGES,
            extra_body={"jetty": {**JETTY, "timeout_sec": 300}},
        )
        self.chunks: list[ChatCompletionChunk] = [next(iter(stream))]
        self.run_id: str = (self.chunks[0].model_extra or {})["jetty"]["trajectory_id"]
        self._reader = threading.Thread(target=lambda: self.chunks.extend(stream), daemon=True)
        self._reader.start()

    def running(self, proxy: str) -> None:
        """Return once the run's sandbox is up and its agent started."""
        deadline = time.monotonic() + 120
        while trajectory(proxy, "acme", "limits", self.run_id)["status"] != "running":
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.1)

    def end(self) -> dict[str, Any]:
        """The run's closing ``jetty`` object, once its stream ended."""
        self._reader.join(timeout=240)
        assert not self._reader.is_alive()
        final: dict[str, Any] = (self.chunks[-1].model_extra or {})["jetty"]
        return final


def refused_run(proxy: str, key: str = "local") -> httpx.Response:
    return httpx.post(
        f"{proxy}/v1/chat/completions",
        json={"model": "claude-sonnet-4-6", "messages": MESSAGES, "jetty": JETTY},
        headers={"authorization": f"Bearer {key}"},
        timeout=60,
    )


def containers_of(docker_host: str, owner: str) -> list[str]:
    return [
        c["Id"]
        for c in managed_containers(docker_host)
        if (c.get("Labels") or {}).get(LABEL_OWNER) == owner
    ]


@contextmanager
def gated(anthropic: tuple[ScriptedAnthropic, str]) -> Iterator[threading.Event]:
    """Runs stay live (after their agent's first model call) until the block ends."""
    gate = threading.Event()
    anthropic[0].gate = gate
    try:
        yield gate
    finally:
        gate.set()


def test_a_third_run_over_a_cap_of_two_is_refused_without_a_container(
    make_proxy: ProxyFactory,
    anthropic: tuple[ScriptedAnthropic, str],
    docker_host: str,
    tmp_path: Path,
) -> None:
    owner = sandbox_owner(Settings(data_dir=tmp_path / "data"))
    with (
        make_proxy(collections={"acme": {"max_concurrent_runs": 2}}) as proxy,
        gated(anthropic) as gate,
    ):
        first, second = Going(proxy), Going(proxy)
        first.running(proxy)
        second.running(proxy)
        response = refused_run(proxy)
        assert response.status_code == 429, response.text
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(response.headers["retry-after"]) >= 1
        # The two runs have their containers; the refused one has none, and no trajectory.
        assert len(containers_of(docker_host, owner)) == 2
        runs = httpx.get(f"{proxy}/api/v1/db/trajectories/acme/limits").json()
        assert {item["trajectory_id"] for item in runs["trajectories"]} == {
            first.run_id,
            second.run_id,
        }
        limits = httpx.get(f"{proxy}/api/v1/collections/acme/limits").json()
        assert limits["max_concurrent_runs"] == {"limit": 2, "used": 2, "source": "config"}
        gate.set()
        assert first.end()["status"] == "completed"
        third = Going(proxy)
        assert third.end()["status"] == "completed"
        assert second.end()["status"] == "completed"


def test_a_request_rate_counts_runs_and_refuses_a_chat_before_the_upstream(
    make_proxy: ProxyFactory,
) -> None:
    upstream = ScriptedUpstream()
    with (
        serve(upstream.app()) as upstream_url,
        make_proxy(
            upstream_url=upstream_url + "/v1",
            collections={"acme": {"requests_per_minute": 2}},
        ) as proxy,
    ):
        assert Going(proxy).end()["status"] == "completed"
        answer = client(proxy).chat.completions.create(
            model="echo", messages=MESSAGES[1:], extra_body={"jetty": {"collection": "acme"}}
        )
        assert answer.choices[0].message.content
        with pytest.raises(openai.RateLimitError) as refused:
            client(proxy).chat.completions.create(
                model="echo", messages=MESSAGES[1:], extra_body={"jetty": {"collection": "acme"}}
            )
        assert 0 < int(refused.value.response.headers["retry-after"]) <= 30
        assert len(upstream.seen) == 1


def test_a_budget_smaller_than_one_run_refuses_the_next(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str]
) -> None:
    # The scripted calls report 23 prompt and 13 output tokens: ~$0.04 each at these prices.
    prices = {"claude-*": {"input_usd_per_mtok": 1000, "output_usd_per_mtok": 1000}}
    with make_proxy(prices=prices, collections={"acme": {"budget_usd": 0.01}}) as proxy:
        run = Going(proxy)
        final = run.end()
        assert final["status"] == "completed"
        record = trajectory(proxy, "acme", "limits", run.run_id)
        calls = anthropic[0].calls
        assert record["cost_usd"] == pytest.approx(calls * 36 * 1000 / 1e6)
        assert final["cost_usd"] == pytest.approx(record["cost_usd"])
        assert record["cost_usd"] > 0.01
        response = refused_run(proxy)
        assert response.status_code == 429, response.text
        assert response.json()["error"]["code"] == "insufficient_quota"
        assert response.headers["x-should-retry"] == "false"
        assert anthropic[0].calls == calls


def test_an_admins_patch_holds_at_once_and_a_keys_is_refused(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str], tmp_path: Path
) -> None:
    seeder = Seeder(tmp_path / "data")
    admin, member = seeder.key(admin=True), seeder.key("acme")
    limits_url = "/api/v1/collections/acme/limits"
    with make_proxy(auth_cache_seconds=0.0) as proxy, gated(anthropic) as gate:
        patch = httpx.patch(
            proxy + limits_url,
            json={"max_concurrent_runs": 1},
            headers={"authorization": f"Bearer {admin}"},
        )
        assert patch.status_code == 200, patch.text
        going = Going(proxy, member)
        assert refused_run(proxy, member).status_code == 429
        denied = httpx.patch(
            proxy + limits_url,
            json={"max_concurrent_runs": 5},
            headers={"authorization": f"Bearer {member}"},
        )
        assert denied.status_code == 403
        assert refused_run(proxy, member).status_code == 429
        lifted = httpx.patch(
            proxy + limits_url,
            json={"max_concurrent_runs": 2},
            headers={"authorization": f"Bearer {admin}"},
        )
        assert lifted.json()["max_concurrent_runs"]["used"] == 1
        second = Going(proxy, member)
        gate.set()
        assert going.end()["status"] == "completed"
        assert second.end()["status"] == "completed"


def test_two_servers_on_one_postgresql_share_one_concurrency_count(
    anthropic: tuple[ScriptedAnthropic, str],
    docker_host: str,
    agent_cache: Path,
    tmp_path: Path,
    no_leftover_containers: set[str],
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[collections.acme]\nmax_concurrent_runs = 1\n")
    with fresh_database("postgres", tmp_path) as database_url:
        env = {
            "JETTY_PROXY_DATABASE_URL": database_url,
            "JETTY_PROXY_SECRET_KEY": TEST_SECRET_KEY,
            "JETTY_PROXY_UPSTREAM_URL": "http://127.0.0.1:9/v1",
            "JETTY_PROXY_BACKEND": "docker",
            "JETTY_PROXY_DOCKER_HOST": docker_host,
            "JETTY_PROXY_AGENT_CACHE_DIR": str(agent_cache),
            "JETTY_PROXY_DEFAULT_IMAGE": TEST_IMAGE,
            "JETTY_PROXY_ANTHROPIC_BASE_URL": anthropic[1],
            "JETTY_PROXY_ANTHROPIC_API_KEY": PROVIDER_KEY,
        }
        no_leftover_containers.add(sandbox_owner(Settings(database_url=database_url)))
        args = ["--config", str(config)]
        with (
            serve_process(args, {**env, "JETTY_PROXY_DATA_DIR": str(tmp_path / "a")}) as one,
            serve_process(args, {**env, "JETTY_PROXY_DATA_DIR": str(tmp_path / "b")}) as two,
            gated(anthropic) as gate,
        ):
            going = Going(one.url)
            response = refused_run(two.url)
            assert response.status_code == 429, response.text
            assert "1 runs going" in response.json()["error"]["message"]
            gate.set()
            assert going.end()["status"] == "completed"
            assert Going(two.url).end()["status"] == "completed"
