"""The jetty-proxy command: keys management and serve, as a user runs them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from proxy.cli import main
from tests.support.live import serve_process


def test_keys_create_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    assert main(["keys", "create", "--collection", "acme", "--collection", "beta", *data]) == 0
    out = capsys.readouterr()
    secret = out.out.strip()
    assert secret.startswith("jp-") and len(secret) > 40
    assert "not shown again" in out.err

    assert main(["keys", "list", *data]) == 0
    listing = capsys.readouterr().out
    assert "acme,beta" in listing and "active" in listing
    assert secret not in listing and secret[:12] not in listing
    key_id = listing.splitlines()[1].split()[0]

    assert main(["keys", "revoke", key_id, *data]) == 0
    capsys.readouterr()
    assert main(["keys", "list", *data]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["keys", "revoke", key_id, *data]) == 1
    # The secret is never stored, only its hash.
    assert secret.encode() not in (tmp_path / "jetty-proxy.db").read_bytes()


def test_keys_create_needs_a_scope(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--data-dir", str(tmp_path)]) == 2
    assert "--collection" in capsys.readouterr().err
    assert main(["keys", "create", "--admin", "--data-dir", str(tmp_path)]) == 0


def test_keys_create_with_limits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    limits = ["--rpm", "30", "--max-concurrent-runs", "2", "--budget-usd", "12.5"]
    assert main(["keys", "create", "--collection", "acme", *limits, *data]) == 0
    created = capsys.readouterr().err
    assert "limited to max_concurrent_runs=2,requests_per_minute=30,budget_usd=12.5" in created
    assert main(["keys", "list", *data]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[-1] == "LIMITS"
    assert listing[1].endswith("max_concurrent_runs=2,requests_per_minute=30,budget_usd=12.5")
    more = ["--runs-per-hour", "10", "--budget-usd", "1", "--budget-period", "day"]
    assert main(["keys", "create", "--admin", *more, *data]) == 0
    assert "runs_per_hour=10,budget_usd=1.0,budget_period=day" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags", [["--rpm", "0"], ["--budget-usd", "-2"], ["--max-concurrent-runs", "0"]]
)
def test_keys_create_refuses_a_bad_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    assert main(["keys", "create", "--admin", *flags, "--data-dir", str(tmp_path)]) == 2
    assert "jetty-proxy: --" in capsys.readouterr().err


def test_serve_refuses_an_open_bind_without_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "refusing" in err and "keys create" in err and "--insecure-no-auth" in err


def test_bad_configuration_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('upstream_url = "ftp://nope"\n')
    assert main(["serve", "--config", str(config), "--data-dir", str(tmp_path)]) == 2
    assert "upstream_url" in capsys.readouterr().err
    assert main(["serve", "--config", str(tmp_path / "missing.toml")]) == 2


def test_python_dash_m_serve_runs_the_server(tmp_path: Path) -> None:
    with serve_process(env={"JETTY_PROXY_DATA_DIR": str(tmp_path / "data")}) as served:
        response = httpx.get(served.url + "/readyz")
        assert response.json()["status"] == "ok"
        assert (tmp_path / "data" / "jetty-proxy.db").exists()
    assert served.url.removeprefix("http://") in served.err and "auth is off" in served.err


def test_serve_on_a_taken_port_fails_with_a_reason(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "JETTY_PROXY_DATA_DIR": str(tmp_path / "data")}
        result = subprocess.run(
            [sys.executable, "-m", "proxy", "serve", "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 3
    assert "address already in use" in result.stderr
