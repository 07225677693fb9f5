"""Settings precedence: flags > JETTY_PROXY_* environment > TOML file > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from proxy.settings import Settings, is_loopback_host, load_settings


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text(
        'port = 9001\nhost = "127.0.0.2"\nupstream_url = "http://file.example/v1/"\n'
        '[[upstreams]]\npattern = "claude-*"\nbase_url = "http://claude.example/v1"\n'
        'api_key = "sk-claude"\n'
    )
    monkeypatch.setenv("JETTY_PROXY_PORT", "9002")
    monkeypatch.setenv("JETTY_PROXY_UPSTREAM_API_KEY", "sk-env")
    settings = load_settings(config, port=None, host="127.0.0.3")
    assert settings.host == "127.0.0.3"  # flag beats file
    assert settings.port == 9002  # env beats file
    assert settings.upstream_url == "http://file.example/v1"  # file beats default
    assert settings.route_for("claude-3")[0] == "http://claude.example/v1"
    default_url, default_key = settings.route_for("gpt-4o")
    assert default_url == "http://file.example/v1"
    assert default_key is not None and default_key.get_secret_value() == "sk-env"
    assert "sk-env" not in repr(settings)


def test_data_dir_from_the_fixed_env_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JETTY_PROXY_DATA_DIR", str(tmp_path))
    settings = Settings()
    assert settings.data_dir == tmp_path
    assert settings.database == f"sqlite:///{tmp_path / 'jetty-proxy.db'}"


def test_unknown_file_keys_are_rejected(tmp_path: Path) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text("prot = 1\n")
    with pytest.raises(ValidationError, match="prot"):
        load_settings(config)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("example.com", False),
    ],
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_allowed_origins_and_hosts_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JETTY_PROXY_ALLOWED_ORIGINS", "http://localhost:3000, HTTPS://ui.example/")
    monkeypatch.setenv("JETTY_PROXY_ALLOWED_HOSTS", "proxy.internal")
    settings = Settings()
    assert settings.allowed_origins == ["http://localhost:3000", "https://ui.example"]
    assert settings.allowed_hosts == ["proxy.internal"]
    monkeypatch.setenv("JETTY_PROXY_ALLOWED_ORIGINS", "*")
    with pytest.raises(ValidationError, match="not an origin"):
        Settings()


def test_link_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JETTY_PROXY_FORWARDED_ALLOW_IPS", "10.0.0.1, 192.168.0.0/16,::1")
    monkeypatch.setenv("JETTY_PROXY_PUBLIC_BASE_URL", "https://jetty.example.com/")
    settings = load_settings()
    assert settings.forwarded_allow_ips == ["10.0.0.1", "192.168.0.0/16", "::1"]
    assert settings.public_base_url == "https://jetty.example.com"
    assert settings.link_lifetime_seconds == 7 * 86400
    for field, value in [
        ("forwarded_allow_ips", "example.com"),
        ("public_base_url", "jetty.example.com"),
        ("link_lifetime_seconds", "5"),
    ]:
        monkeypatch.setenv(f"JETTY_PROXY_{field.upper()}", value)
        with pytest.raises(ValidationError):
            load_settings()
        monkeypatch.delenv(f"JETTY_PROXY_{field.upper()}")


def test_blob_url_names_a_directory_or_a_bucket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = Settings(data_dir=tmp_path)
    assert default.blob_store_url == (tmp_path / "blobs").as_uri()
    assert Settings(blob_dir=tmp_path / "b").blob_store_url == (tmp_path / "b").as_uri()
    monkeypatch.setenv("JETTY_PROXY_BLOB_URL", "s3://bucket/some/prefix")
    assert Settings(blob_dir=tmp_path / "b").blob_store_url == "s3://bucket/some/prefix"
    for bad in ("file://relative/dir", "file:relative", "s3://", "gs://bucket", "/srv/blobs"):
        with pytest.raises(ValidationError, match="blob URL must be"):
            Settings(blob_url=bad)


def test_kubernetes_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    settings = Settings()
    assert settings.kube_namespace == "jetty-sandboxes"
    assert settings.kubeconfig_file is None  # in-cluster
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    assert Settings().kubeconfig_file == tmp_path / "a"
    monkeypatch.setenv("JETTY_PROXY_KUBECONFIG", str(tmp_path / "mine"))
    monkeypatch.setenv("JETTY_PROXY_KUBE_RUNTIME_CLASS", "gvisor")
    monkeypatch.setenv("JETTY_PROXY_RELAY_URL", "http://jetty-proxy-relay.jetty-proxy:8081/")
    monkeypatch.setenv("JETTY_PROXY_AGENTS_IMAGE", "127.0.0.1:5000/jetty-proxy-agents:v1")
    settings = Settings()
    assert settings.kubeconfig_file == tmp_path / "mine"
    assert settings.kube_runtime_class == "gvisor"
    assert settings.relay_url == "http://jetty-proxy-relay.jetty-proxy:8081"
    assert settings.agents_image == "127.0.0.1:5000/jetty-proxy-agents:v1"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kube_namespace", "Sandboxes"),
        ("kube_namespace", "a" * 64),
        ("kube_runtime_class", "g_visor"),
        ("relay_url", "jetty-proxy-relay:8081"),
        ("agents_image", "Not An Image"),
    ],
)
def test_kubernetes_settings_are_checked(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings.model_validate({field: value})


def test_server_heartbeat_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    assert (defaults.heartbeat_seconds, defaults.server_stale_seconds, defaults.sweep_seconds) == (
        10.0,
        120.0,
        60.0,
    )
    monkeypatch.setenv("JETTY_PROXY_HEARTBEAT_SECONDS", "0.5")
    monkeypatch.setenv("JETTY_PROXY_SERVER_STALE_SECONDS", "3")
    monkeypatch.setenv("JETTY_PROXY_SWEEP_SECONDS", "1")
    quick = Settings()
    assert (quick.heartbeat_seconds, quick.server_stale_seconds, quick.sweep_seconds) == (
        0.5,
        3.0,
        1.0,
    )
    # A live server whose beat is a little late must not look gone.
    with pytest.raises(ValidationError, match="at least twice heartbeat_seconds"):
        Settings(heartbeat_seconds=10, server_stale_seconds=15)
