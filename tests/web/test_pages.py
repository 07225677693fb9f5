"""The run page, run lists, login and cancel over HTTP (the browser tests drive the same pages)."""

from __future__ import annotations

import re

import httpx

from tests.support.seeded import Seeder, progress, text, thinking, tool_call, tool_result
from tests.web.conftest import ProxyFactory

HTML = {"accept": "text/html"}
ANSWER = "# Sales\n\nNorth leads. <script>alert(1)</script> [bad](javascript:alert(2))"


def page_url(proxy: str, key: str, run_id: str, task: str = "analysis") -> str:
    record = httpx.get(
        f"{proxy}/api/v1/db/trajectory/acme/{task}/{run_id}",
        headers={"authorization": f"Bearer {key}"},
    )
    url: str = record.json()["page_url"]
    return url


def test_a_finished_runs_page(make_proxy: ProxyFactory, seeder: Seeder) -> None:
    key = seeder.key("acme")
    run_id = seeder.run(
        events=[
            progress("starting sandbox"),
            thinking("Reading the data."),
            tool_call("t1", "python plot.py"),
            tool_result("t1", "<img src=x onerror=alert(3)>"),
            text(ANSWER),
        ],
        session={"conversation": "0badc0de", "turn": 2, "continues": "0badc0de"},
    )
    seeder.finish(
        run_id,
        {
            "table.csv": b"region,total\nNorth,10\n",
            "notes.md": b"## Notes\n\n*fine*",
            "page.html": b"<script>alert(4)</script>",
        },
    )
    with make_proxy() as proxy:
        page = httpx.get(page_url(proxy, key, run_id), headers=HTML)
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    for directive in ("script-src 'self'", "object-src 'none'", "base-uri 'none'"):
        assert directive in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    body = page.text
    assert "<h1>Sales</h1>" in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert 'href="javascript' not in body
    assert "&lt;img src=x onerror=alert(3)&gt;" in body
    # The only script is the page's own, from this server.
    assert re.findall(r"<script[^>]*>", body) == ['<script src="/static/run.js" defer>']
    # Previews: CSV as a table, Markdown rendered, HTML as escaped source.
    assert "<th>region</th>" in body and "<td>North</td>" in body
    assert "<h2>Notes</h2>" in body
    assert "&lt;script&gt;alert(4)&lt;/script&gt;" in body
    assert 'id="results-zip"' in body
    assert "turn 2, continues run <code>0badc0de</code>" in body
    # Viewed through a signed link: no cancel, and every link the page holds is signed.
    assert 'id="cancel"' not in body
    for href in re.findall(r'href="(/[^"]*)"', body):
        assert href.startswith(("/s/", "/static/", "/runs/acme/analysis")), href


def test_a_live_runs_page_follows_its_events(make_proxy: ProxyFactory, seeder: Seeder) -> None:
    run_id = seeder.run(
        events=[progress("starting sandbox"), text("Working")],
        session={"conversation": "self", "turn": 1},
    )
    with make_proxy() as proxy:
        # No keys: authentication is off, the local user may look and cancel.
        page = httpx.get(f"{proxy}/runs/acme/analysis/{run_id}", headers=HTML)
    assert page.status_code == 200
    assert 'data-live="true"' in page.text
    assert 'data-after="2"' in page.text
    events = re.search(r'data-events="([^"]+)"', page.text)
    assert events is not None and events.group(1).startswith("/s/")
    assert 'id="cancel"' in page.text
    assert "<dd>turn 1</dd>" in page.text


def test_login_lists_and_logout(make_proxy: ProxyFactory, seeder: Seeder) -> None:
    key = seeder.key("acme")
    seeder.key("globex")
    first = seeder.run(task="analysis", status="completed")
    seeder.run(task="other", status="failed")
    with make_proxy() as proxy, httpx.Client(base_url=proxy, headers=HTML) as browser:
        anonymous = browser.get("/runs/acme")
        assert anonymous.status_code == 303
        assert anonymous.headers["location"] == "/login?next=%2Fruns%2Facme"
        assert browser.get("/login").status_code == 200

        wrong = browser.post("/login", data={"key": "jp-wrong", "next": "/runs/acme"})
        assert wrong.status_code == 401
        assert 'id="login-error"' in wrong.text
        crossed = browser.post(
            "/login",
            data={"key": key, "next": "/runs/acme"},
            headers={"sec-fetch-site": "cross-site"},
        )
        assert crossed.status_code == 403

        signed_in = browser.post("/login", data={"key": key, "next": "//evil.example/x"})
        assert signed_in.status_code == 303
        assert signed_in.headers["location"] == "/login"  # never off this server
        cookie = signed_in.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        # Signed in, the login page offers the key's collections.
        assert 'href="/runs/acme"' in browser.get("/login").text

        listing = browser.get("/runs/acme")
        assert listing.status_code == 200
        assert listing.text.count("<tr>") == 3  # header and two runs
        only_completed = browser.get("/runs/acme", params={"status": "completed"})
        assert only_completed.text.count("<tr>") == 2
        assert first in only_completed.text
        assert browser.get("/runs/acme/analysis").text.count("<tr>") == 2
        assert browser.get("/runs/globex").status_code == 404
        assert browser.get(f"/runs/acme/analysis/{first}").status_code == 200

        out = browser.post("/logout")
        assert out.status_code == 303
        assert browser.get("/runs/acme").status_code == 303


def test_cancel_from_the_page_needs_a_key_and_the_page(
    make_proxy: ProxyFactory, seeder: Seeder
) -> None:
    key = seeder.key("acme")
    run_id = seeder.run(status="running")
    cancel = f"/runs/acme/analysis/{run_id}/cancel"
    page_header = {"x-requested-with": "jetty-run-page"}
    with make_proxy() as proxy, httpx.Client(base_url=proxy) as client:
        signed = httpx.get(page_url(proxy, key, run_id), headers=HTML)
        assert 'id="cancel"' not in signed.text
        assert client.post(cancel, headers=page_header).status_code == 401
        client.post("/login", data={"key": key, "next": "/runs/acme"})
        assert client.post(cancel).status_code == 403  # not from the page's script
        foreign = client.post(cancel, headers={**page_header, "origin": "https://evil.example"})
        assert foreign.status_code == 403
        done = client.post(cancel, headers=page_header)
        assert done.status_code == 200
        assert done.json() == {"trajectory_id": run_id, "status": "cancelled"}
        again = client.post(cancel, headers=page_header)
        assert again.status_code == 200


def test_missing_runs_and_static_files(make_proxy: ProxyFactory, seeder: Seeder) -> None:
    seeder.run()
    with make_proxy() as proxy:
        missing = httpx.get(f"{proxy}/runs/acme/analysis/00000000", headers=HTML)
        assert missing.status_code == 404
        assert "Not found" in missing.text
        assert httpx.get(f"{proxy}/runs/acme/analysis/00000000").json()["error"]["code"] == (
            "not_found"
        )
        script = httpx.get(f"{proxy}/static/run.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert script.headers["x-content-type-options"] == "nosniff"
        assert httpx.get(f"{proxy}/static/../app.py").status_code == 404
