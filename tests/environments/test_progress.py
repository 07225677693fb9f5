"""Pull and build progress summarised from the engine's own messages (recorded shapes)."""

from __future__ import annotations

from proxy.environments.progress import BuildLog, PullProgress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


REF = "127.0.0.1:5000/acme/env:v1"


def test_pull_lines_count_layers_bytes_and_percent() -> None:
    clock = Clock()
    pull = PullProgress(REF, interval=0.5, clock=clock)
    assert pull.feed({"status": "Pulling from acme/env", "id": "v1"}) == f"Pulling {REF} ..."
    assert pull.feed({"status": "Already exists", "progressDetail": {}, "id": "aaa"}) is None
    assert pull.feed({"status": "Pulling fs layer", "progressDetail": {}, "id": "bbb"}) is None
    clock.now += 1
    line = pull.feed(
        {
            "status": "Downloading",
            "progressDetail": {"current": 25_000_000, "total": 100_000_000},
            "progress": "[=====>      ]",
            "id": "bbb",
        }
    )
    assert line == f"Pulling {REF}: 1/2 layers done (1 already present), 25.0 MB of 100.0 MB (25%)"
    clock.now += 0.1
    # Within the interval: nothing new to say.
    assert (
        pull.feed({"status": "Downloading", "progressDetail": {"current": 50_000_000}, "id": "bbb"})
        is None
    )
    assert pull.feed({"status": "Download complete", "progressDetail": {}, "id": "bbb"}) is None
    clock.now += 0.2
    assert pull.feed({"status": "Pull complete", "progressDetail": {}, "id": "bbb"}) == (
        f"Pulling {REF}: 2/2 layers done (1 already present), 100.0 MB of 100.0 MB (100%)"
    )
    assert pull.feed({"status": "Digest: sha256:" + "a" * 64}) is None
    assert pull.feed({"status": f"Status: Downloaded newer image for {REF}"}) is None
    assert pull.digest == "sha256:" + "a" * 64
    clock.now += 2
    assert pull.summary() == (
        f"Pulled {REF} (2 layers, 100.0 MB downloaded in 3.3 s, sha256:{'a' * 64})"
    )
    assert pull.error is None


def test_pull_errors_in_the_stream_are_kept() -> None:
    pull = PullProgress(REF)
    message = {"errorDetail": {"message": "unauthorized: authentication required"}, "error": "x"}
    assert pull.feed(message) is None
    assert pull.error == "unauthorized: authentication required"


def test_build_log_batches_lines_flushes_on_steps_and_keeps_a_tail() -> None:
    clock = Clock()
    log = BuildLog(interval=0.5, tail_lines=3, clock=clock)
    assert log.feed({"stream": "Step 1/3 : FROM base\n"}) == "Step 1/3 : FROM base"
    assert log.feed({"stream": " ---> 0123456789ab\n"}) is None
    assert log.feed({"stream": "Step 2/3 : RUN x\n"}) == "Step 2/3 : RUN x"
    assert log.feed({"stream": "Get:1 http://deb.debian.org bookworm\n"}) is None
    assert log.feed({"stream": "partial line "}) is None
    clock.now += 1
    assert log.feed({"stream": "continued\n\u001b[91mcolour\u001b[0m\n"}) == (
        "Get:1 http://deb.debian.org bookworm\npartial line continued\ncolour"
    )
    assert log.feed({"stream": "Removing intermediate container 42f0\n"}) is None
    log.feed({"aux": {"ID": "sha256:" + "b" * 64}})
    log.feed({"errorDetail": {"code": 100, "message": "returned a non-zero code: 100"}})
    assert log.flush() is None
    assert log.image_id == "sha256:" + "b" * 64
    assert log.error == "returned a non-zero code: 100"
    assert log.tail() == "Get:1 http://deb.debian.org bookworm\npartial line continued\ncolour"


def test_build_log_flush_returns_a_trailing_partial_line() -> None:
    log = BuildLog()
    log.feed({"stream": "no newline at the end"})
    assert log.flush() == "no newline at the end"
    assert log.flush() is None


def test_build_log_lists_the_intermediate_images_it_made_but_not_cached_ones() -> None:
    log = BuildLog()
    for text in (
        "Step 1/4 : FROM base\n ---> 245aeefc7b12\n",
        "Step 2/4 : COPY a /a\n ---> Using cache\n ---> 17ef97e74a00\n",
        "Step 3/4 : ARG X=1\n ---> Running in 0123abcd4567\n",
        "Removing intermediate container 0123abcd4567\n ---> 00444e461317\n",
        "Step 4/4 : RUN false\n ---> Running in 89ab89ab89ab\n",
    ):
        log.feed({"stream": text})
    assert log.created == ["00444e461317"]
