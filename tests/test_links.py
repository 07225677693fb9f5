"""Signed run links: what they open, and what they refuse."""

from __future__ import annotations

import pytest

from proxy.links import LinkRejected, LinkSigner

NOW = 1_800_000_000.0
DAY = 86400


def signer(keys: str = "first-key", *, at: float = NOW) -> LinkSigner:
    return LinkSigner(keys, lifetime_seconds=7 * DAY, clock=lambda: at)


def token_of(url: str) -> str:
    return url.split("/s/", 1)[1].split("/", 1)[0]


def test_links_of_a_run_share_one_signed_base() -> None:
    links = signer().links("https://jp.example/", "acme", "an alysis", "a1b2c3d4")
    assert links.base.startswith("https://jp.example/s/")
    assert links.expires == NOW + 7 * DAY
    assert links.page() == f"{links.base}/runs/acme/an%20alysis/a1b2c3d4"
    assert links.artifact("out/chart #1.png") == (
        f"{links.base}/api/v1/trajectory/acme/an%20alysis/a1b2c3d4/artifacts/out/chart%20%231.png"
    )
    assert links.results_zip().endswith("/a1b2c3d4/download")
    assert links.events().endswith("/a1b2c3d4/events")


def test_a_valid_link_opens_its_run() -> None:
    token = token_of(signer().links("", "acme", "analysis", "a1b2c3d4").base)
    checked = signer(at=NOW + 7 * DAY - 1).check(token, "acme", "analysis", "a1b2c3d4")
    assert checked.base == f"/s/{token}"
    assert checked.page() == f"/s/{token}/runs/acme/analysis/a1b2c3d4"


@pytest.mark.parametrize(
    ("collection", "task", "run_id"),
    [
        ("acme", "analysis", "ffffffff"),
        ("globex", "analysis", "a1b2c3d4"),
        ("acme", "x", "a1b2c3d4"),
    ],
)
def test_another_runs_link_is_refused(collection: str, task: str, run_id: str) -> None:
    token = token_of(signer().links("", "acme", "analysis", "a1b2c3d4").base)
    with pytest.raises(LinkRejected) as refused:
        signer().check(token, collection, task, run_id)
    assert (refused.value.status_code, refused.value.code) == (403, "link_invalid")


def test_tampered_links_are_refused() -> None:
    token = token_of(signer().links("", "acme", "analysis", "a1b2c3d4").base)
    expires, mac = token.split(".")
    later = f"{int(expires) + DAY}.{mac}"
    flipped = f"{expires}.{'A' if mac[0] != 'A' else 'B'}{mac[1:]}"
    for bad in [later, flipped, expires, f"{expires}.", "x.y", f"{expires}.{mac}é", "9" * 90]:
        with pytest.raises(LinkRejected) as refused:
            signer().check(bad, "acme", "analysis", "a1b2c3d4")
        assert refused.value.code == "link_invalid"
    # Signed with another server's key.
    other = token_of(signer("other-key").links("", "acme", "analysis", "a1b2c3d4").base)
    with pytest.raises(LinkRejected):
        signer().check(other, "acme", "analysis", "a1b2c3d4")


def test_an_expired_link_says_so() -> None:
    token = token_of(signer().links("", "acme", "analysis", "a1b2c3d4").base)
    with pytest.raises(LinkRejected) as refused:
        signer(at=NOW + 7 * DAY + 1).check(token, "acme", "analysis", "a1b2c3d4")
    assert refused.value.code == "link_expired"
    assert "expired" in refused.value.message


def test_keys_rotate_without_breaking_links() -> None:
    token = token_of(signer("old-key").links("", "acme", "analysis", "a1b2c3d4").base)
    rotated = signer("new-key, old-key")
    rotated.check(token, "acme", "analysis", "a1b2c3d4")
    fresh = token_of(rotated.links("", "acme", "analysis", "a1b2c3d4").base)
    signer("new-key").check(fresh, "acme", "analysis", "a1b2c3d4")
    with pytest.raises(LinkRejected):
        signer("old-key").check(fresh, "acme", "analysis", "a1b2c3d4")


def test_an_empty_key_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="secret_key"):
        LinkSigner(" , ", lifetime_seconds=60)
