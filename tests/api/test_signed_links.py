"""Signed links open one run's files, zip, events and page without a key, and nothing else."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import httpx

from proxy.links import LinkSigner
from proxy.store.crypto import load_or_create_key
from tests.api.conftest import ProxyFactory
from tests.support.seeded import Seeder, text

FILES = {"report.md": b"# Report\n", "data/table.csv": b"a,b\n1,2\n"}


def finished_run(seed: Seeder) -> str:
    run_id = seed.run()
    seed.finish(run_id, FILES)
    return run_id


def signed_links(proxy: str, key: str, run_id: str) -> dict[str, str]:
    record = httpx.get(
        f"{proxy}/api/v1/db/trajectory/acme/analysis/{run_id}",
        headers={"authorization": f"Bearer {key}"},
    )
    assert record.status_code == 200
    page = record.json()["page_url"]
    base = page.split("/runs/", 1)[0]
    trajectory = f"{base}/api/v1/trajectory/acme/analysis/{run_id}"
    return {
        "page": page,
        "file": f"{trajectory}/artifacts/data/table.csv",
        "zip": f"{trajectory}/download",
        "events": f"{trajectory}/events",
        "base": base,
    }


def test_a_signed_link_opens_the_runs_files_without_a_key(
    make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    seed = Seeder(tmp_path / "data")
    key = seed.key("acme")
    run_id = seed.run(events=[text("Done.")])
    seed.finish(run_id, FILES)
    with make_proxy() as proxy:
        links = signed_links(proxy, key, run_id)
        assert links["page"].startswith(f"{proxy}/s/")
        # Keys are on: the plain routes want one.
        plain = links["file"].replace(links["base"], proxy)
        assert httpx.get(plain).status_code == 401

        file = httpx.get(links["file"])
        assert file.status_code == 200
        assert file.content == b"a,b\n1,2\n"
        assert file.headers["x-content-type-options"] == "nosniff"
        assert file.headers["content-disposition"].startswith("attachment;")

        archive = zipfile.ZipFile(io.BytesIO(httpx.get(links["zip"]).content))
        assert sorted(archive.namelist()) == sorted(FILES)

        with httpx.stream("GET", links["events"]) as events:
            body = events.read().decode()
        assert '"text": "Done."' in body or '"text":"Done."' in body
        assert "event: end" in body

        page = httpx.get(links["page"], headers={"accept": "text/html"})
        assert page.status_code == 200
        assert "Done." in page.text
        # API clients keep using their key on the plain routes.
        keyed = httpx.get(plain, headers={"authorization": f"Bearer {key}"})
        assert keyed.status_code == 200


def test_wrong_other_and_expired_links_are_refused(
    make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    seed = Seeder(tmp_path / "data")
    key = seed.key("acme")
    run_id, other_id = finished_run(seed), finished_run(seed)
    with make_proxy() as proxy:
        links = signed_links(proxy, key, run_id)
        other = signed_links(proxy, key, other_id)
        token = links["base"].rsplit("/", 1)[1]
        expires, mac = token.split(".")
        tampered = links["file"].replace(token, f"{int(expires) + 1}.{mac}")
        foreign = other["file"].replace(other_id, run_id)
        for url in (tampered, foreign):
            refused = httpx.get(url)
            assert refused.status_code == 403
            assert refused.json()["error"]["code"] == "link_invalid"
            assert refused.json()["error"]["type"] == "permission_error"
        # A browser gets a page saying what is wrong.
        page = httpx.get(tampered, headers={"accept": "text/html"})
        assert page.status_code == 403
        assert "text/html" in page.headers["content-type"]
        assert "This link is not valid for this run." in page.text

        # The same key signs a link that expired an hour ago.
        secret = load_or_create_key(None, tmp_path / "data")
        past = LinkSigner(secret, lifetime_seconds=60, clock=lambda: time.time() - 3600)
        expired = past.links(proxy, "acme", "analysis", run_id).artifact("data/table.csv")
        refused = httpx.get(expired)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "link_expired"


def test_a_signature_opens_only_the_get_routes_of_its_run(
    make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    seed = Seeder(tmp_path / "data")
    key = seed.key("acme")
    run_id = finished_run(seed)
    with make_proxy() as proxy:
        base = signed_links(proxy, key, run_id)["base"]
        for method, path in [
            ("GET", f"/api/v1/db/trajectory/acme/analysis/{run_id}"),
            ("GET", "/api/v1/db/trajectories/acme/analysis"),
            ("POST", f"/api/v1/trajectory/acme/analysis/{run_id}/labels"),
            ("POST", "/api/v1/trajectory/acme/analysis/statuses"),
            ("GET", "/runs/acme/analysis"),
            ("GET", "/v1/models"),
        ]:
            response = httpx.request(method, base + path, json={"key": "k", "value": "v"})
            assert response.status_code in (404, 405), (method, path, response.status_code)


def test_links_in_records_follow_the_configured_origin(
    make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    seed = Seeder(tmp_path / "data")
    key = seed.key("acme")
    run_id = seed.run()
    headers = {
        "authorization": f"Bearer {key}",
        "x-forwarded-proto": "https",
        "x-forwarded-host": "jetty.example.com",
    }
    url = f"/api/v1/db/trajectory/acme/analysis/{run_id}"
    with make_proxy() as proxy:
        record = httpx.get(proxy + url, headers=headers).json()
        assert record["page_url"].startswith(f"{proxy}/s/")
        assert record["events_url"].startswith(proxy)
    with make_proxy(forwarded_allow_ips=["127.0.0.1"]) as proxy:
        record = httpx.get(proxy + url, headers=headers).json()
        assert record["page_url"].startswith("https://jetty.example.com/s/")
        assert record["download_url"].startswith("https://jetty.example.com/api/v1/")
    with make_proxy(public_base_url="https://public.example.org") as proxy:
        record = httpx.get(proxy + url, headers=headers).json()
        assert record["page_url"].startswith("https://public.example.org/s/")


def test_old_run_links_lead_to_the_run(make_proxy: ProxyFactory, tmp_path: Path) -> None:
    seed = Seeder(tmp_path / "data")
    run_id = seed.run()
    with make_proxy() as proxy:
        old = f"{proxy}/api/v1/trajectory/acme/analysis/{run_id}"
        browser = httpx.get(old, headers={"accept": "text/html"})
        assert browser.status_code == 307
        assert browser.headers["location"] == f"/runs/acme/analysis/{run_id}"
        api = httpx.get(old, follow_redirects=True)
        assert api.status_code == 200
        assert json.loads(api.text)["trajectory_id"] == run_id
