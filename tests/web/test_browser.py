"""The pages in a real browser (headless Chromium): live events, previews, downloads, and
nothing from a run able to run script. Keys are on throughout: the browser never sends one,
it opens signed links (or signs in through the login form)."""

from __future__ import annotations

import base64
import json
import re
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Route, expect

from tests.support.browser import WatchedPage
from tests.support.seeded import Seeder, progress, text, thinking, tool_call, tool_result
from tests.web.conftest import ProxyFactory

pytestmark = pytest.mark.browser

# A 2x2 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANHQEDasKb"
    "6QAAAABJRU5ErkJggg=="
)
XSS = '<script>window.__pwned="script"</script><img src=x onerror="window.__pwned=\'img\'">'


def signed_page(proxy: str, key: str, run_id: str) -> str:
    record = httpx.get(
        f"{proxy}/api/v1/db/trajectory/acme/analysis/{run_id}",
        headers={"authorization": f"Bearer {key}"},
    )
    url: str = record.json()["page_url"]
    return url


def test_a_live_run_page_shows_events_then_results(
    make_proxy: ProxyFactory, seeder: Seeder, watched: WatchedPage, tmp_path: Path
) -> None:
    key = seeder.key("acme")
    run_id = seeder.run(events=[progress("starting sandbox"), text("Working on it")])
    page = watched.page
    with make_proxy() as proxy:
        page.goto(signed_page(proxy, key, run_id))
        expect(page.locator("#status")).to_have_text("running")
        expect(page.locator("#answer")).to_have_text("Working on it")

        # Events written while the page is open arrive through its event stream.
        seeder.events(
            run_id,
            thinking("Reading sales.csv"),
            tool_call("t1", "python plot.py"),
            tool_result("t1", "saved chart.png"),
            text(" and done."),
        )
        expect(page.locator("#activity .thinking pre")).to_have_text("Reading sales.csv")
        expect(page.locator("#activity .tool .tool-output")).to_have_text("saved chart.png")
        expect(page.locator("#activity .tool .tool-state")).to_have_text("done")
        expect(page.locator("#answer")).to_have_text("Working on it and done.")

        # The run ends: the page turns into the finished run, with its result files.
        seeder.finish(
            run_id,
            {
                "sales.csv": b"region,total\nNorth,10\nSouth,7\n",
                "summary.md": b"## Summary\n\nNorth *leads*.",
                "chart.png": PNG,
            },
        )
        expect(page.locator("#status")).to_have_text("completed")

        def open_preview(name: str) -> None:
            preview = page.locator("li.artifact", has_text=name).locator("details.preview")
            if preview.get_attribute("open") is None:
                preview.locator("summary").click()

        open_preview("sales.csv")
        expect(page.locator("table.csv th").first).to_have_text("region")
        expect(page.locator("table.csv td").nth(1)).to_have_text("10")
        open_preview("summary.md")
        expect(page.locator(".markdown h2", has_text="Summary")).to_be_visible()
        open_preview("chart.png")
        image = page.locator("img.preview-image")
        expect(image).to_be_visible()
        assert page.evaluate("() => document.querySelector('img.preview-image').naturalWidth") == 2

        # The zip and a single result file download: no key, just the signed links.
        with page.expect_download() as zipped:
            page.click("#results-zip")
        archive = zipfile.ZipFile(zipped.value.path())
        assert sorted(archive.namelist()) == ["chart.png", "sales.csv", "summary.md"]
        with page.expect_download() as single:
            page.locator("a.artifact-link", has_text="sales.csv").click()
        assert Path(single.value.path()).read_bytes() == b"region,total\nNorth,10\nSouth,7\n"
    assert watched.problems == []


def test_the_event_stream_resumes_after_a_dropped_connection(
    make_proxy: ProxyFactory, seeder: Seeder, watched: WatchedPage
) -> None:
    key = seeder.key("acme")
    run_id = seeder.run(events=[text("one")])
    page = watched.page
    connections: list[str] = []

    def drop_first_connection(route: Route) -> None:
        connections.append(route.request.url)
        if len(connections) == 1:
            # The first connection delivers event 2, then breaks (as a proxy's idle
            # timeout would), telling the browser to come back soon.
            event = {
                "seq": 2,
                "type": "text_delta",
                "data": text(" two"),
                "created": datetime.now(UTC).isoformat(),
            }
            body = f"retry: 50\nid: 2\ndata: {json.dumps(event)}\n\n"
            route.fulfill(status=200, headers={"content-type": "text/event-stream"}, body=body)
            return
        route.continue_()

    with make_proxy() as proxy:
        page.route(re.compile(r"/events\?"), drop_first_connection)
        # The page is rendered with event 1; its stream starts after it.
        page.goto(signed_page(proxy, key, run_id))
        seeder.events(run_id, text(" two"))
        expect(page.locator("#answer")).to_have_text("one two")
        seeder.events(run_id, text(" three"))
        # The browser reconnected to the same URL (?after=1), and the server still resumed
        # after event 2: only the Last-Event-ID the browser sent says so. Event 2 would
        # otherwise arrive twice.
        expect(page.locator("#answer")).to_have_text("one two three")
        assert len(connections) >= 2
        assert all(url.endswith("/events?after=1") for url in connections)
    assert watched.problems == []


def test_nothing_a_run_writes_can_run_script(
    make_proxy: ProxyFactory, seeder: Seeder, watched: WatchedPage
) -> None:
    key = seeder.key("acme")
    run_id = seeder.run(events=[text("Start. ")])
    page = watched.page
    with make_proxy() as proxy:
        page.goto(signed_page(proxy, key, run_id))
        # While live: hostile text arrives through the event stream.
        seeder.events(
            run_id,
            thinking(XSS),
            tool_call("<script>x</script>", XSS),
            tool_result("<script>x</script>", XSS),
            progress(XSS),
            text(XSS + "\n\n[click](javascript:window.__pwned='link')\n\n<iframe src=/></iframe>"),
        )
        expect(page.locator("#answer")).to_contain_text("<iframe src=/></iframe>")
        expect(page.locator(".tool-output")).to_have_text(XSS)
        probe = watched.probe_for_script()
        assert probe["pwned"] is None
        assert probe["scripts"] == ["/static/run.js"]
        assert probe["handlers"] == []
        assert probe["active"] == 0

        # Finished: the answer as Markdown, result files with hostile names and contents.
        seeder.finish(
            run_id,
            {
                f"{XSS}.txt": XSS.encode(),
                "report.html": XSS.encode(),
                "logo.svg": b'<svg xmlns="http://www.w3.org/2000/svg" onload="window.__pwned=1"/>',
                "notes.md": (XSS + "\n\n![x](javascript:window.__pwned=2)").encode(),
                'quote".csv': f'a,b\n"{XSS}",2\n'.encode(),
            },
        )
        expect(page.locator("#status")).to_have_text("completed")
        for summary in page.locator("details summary").all():
            summary.click()
        expect(page.locator("a.artifact-link", has_text=".txt")).to_have_text(f"{XSS}.txt")
        probe = watched.probe_for_script()
        assert probe == {
            "pwned": None,
            "scripts": ["/static/run.js"],
            "handlers": [],
            "active": 0,
            "javascriptLinks": 0,
        }
        assert page.locator("img").count() == 0  # no image from the run is ever loaded
    assert watched.problems == []


def test_every_page_is_clean(
    make_proxy: ProxyFactory, seeder: Seeder, watched: WatchedPage
) -> None:
    key = seeder.key("acme")
    run_id = seeder.run(status="completed", events=[text("# Done\n\n| a |\n|---|\n| 1 |")])
    page = watched.page
    with make_proxy() as proxy:
        # A key holder signs in through the form, then browses the list and opens a run.
        page.goto(f"{proxy}/runs/acme")
        expect(page).to_have_url(re.compile(r"/login\?next="))
        page.fill("#key", key)
        page.click("button[type=submit]")
        expect(page).to_have_url(f"{proxy}/runs/acme")
        expect(page.locator("#runs tbody tr")).to_have_count(1)
        page.select_option("#status", "completed")
        page.click("form.filter button")
        expect(page.locator("#runs tbody tr")).to_have_count(1)
        page.locator("#runs a", has_text=run_id).click()
        expect(page.locator("#answer h1")).to_have_text("Done")
        # A signed-in viewer of a finished run is not offered to cancel it.
        expect(page.locator("#cancel")).to_have_count(0)

        page.goto(f"{proxy}/login")
        expect(page.locator("#signed-in a")).to_have_text("acme")
        page.goto(f"{proxy}/runs/acme")
        page.click("form.logout button")
        expect(page).to_have_url(f"{proxy}/login")
        expect(page.locator("#signed-in")).to_have_count(0)
        # A wrong link gets a page that says so.
        response = page.goto(signed_page(proxy, key, run_id).replace("/s/1", "/s/2"))
        assert response is not None and response.status == 403
        expect(page.locator("#error-message")).to_contain_text("not valid")
    # The 403 of the wrong link is the only complaint the browser logged.
    assert [p for p in watched.problems if "403" not in p] == []


def test_cancel_from_a_live_runs_page(
    make_proxy: ProxyFactory, seeder: Seeder, watched: WatchedPage
) -> None:
    key = seeder.key("acme")
    run_id = seeder.run(status="running", events=[text("Working")])
    page = watched.page
    with make_proxy() as proxy:
        page.goto(f"{proxy}/login?next=/runs/acme/analysis/{run_id}")
        page.fill("#key", key)
        page.click("button[type=submit]")
        expect(page.locator("#status")).to_have_text("running")
        page.click("#cancel")
        # The run is over: its stream ends, and the page reloads as the cancelled run.
        expect(page.locator("#status")).to_have_text("cancelled")
        expect(page.locator("#cancel")).to_have_count(0)
    assert watched.problems == []
