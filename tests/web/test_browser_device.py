"""The device sign-in (RFC 8628) end to end: the helper polls while a person confirms in headless Chromium.

Peers: the broker on a real socket, Chromium (which enforces the broker's CSP), the helper's HTTP client,
and the break-glass account signed in through the real login form.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from broker.client.api import Broker, Tokens
from tests.support.cli_broker import PASSWORD, CliBroker, cli_broker

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def live(make_config: Callable[..., dict[str, Any]]) -> Iterator[CliBroker]:
    with cli_broker(make_config()) as running:
        yield running


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:
    context = chromium.new_context()
    errors: list[str] = []
    page = context.new_page()
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield page
    context.close()
    assert not [e for e in errors if "Content Security Policy" in e], errors


def test_device_code_confirmed_in_the_browser(
    live: CliBroker, page: Page, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BROKER_CLIENT_HOME", str(tmp_path))
    monkeypatch.setenv("BROKER_CLIENT_KEYRING", "file")
    shown: list[str] = []
    result: dict[str, Tokens | BaseException] = {}
    ready = threading.Event()

    def say(message: str) -> None:
        shown.append(message)
        ready.set()

    def helper() -> None:
        try:
            result["tokens"] = Broker(live.url).login_device(say)
        except BaseException as exc:  # reported by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=helper, daemon=True)
    thread.start()
    assert ready.wait(30)
    match = re.search(r"enter the code:\s+([B-Z]{4}-[B-Z]{4})", shown[0])
    assert match is not None, shown
    code = match.group(1)

    # The person types the address and the code by hand, as from another machine's terminal.
    page.goto(f"{live.url}/device")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()  # not signed in yet
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Authenticator code").fill(live.totp())
    page.get_by_role("button", name="Sign in").click()

    page.wait_for_url(f"{live.url}/device")
    page.get_by_label("Code").fill(code.lower().replace("-", " "))
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_role("heading", name="Sign in the broker command line?")).to_be_visible()
    expect(page.locator("[data-user-code]")).to_have_text(code)
    expect(page.get_by_text("alice@example.com")).to_have_count(2)  # header and "Signs in as"
    page.get_by_role("button", name="Approve").click()
    expect(page.get_by_role("heading", name="Command line signed in")).to_be_visible()

    thread.join(30)
    assert "error" not in result, result.get("error")
    tokens = result["tokens"]
    assert isinstance(tokens, Tokens)
    assert (tokens.principal, tokens.mfa) == ("alice@example.com", "mfa")
    events = [(e.event, e.outcome, e.reason) for e in live.audit() if e.event in {"device_confirm", "cli_login"}]
    assert events == [("device_confirm", "ok", "approved"), ("cli_login", "ok", "device_code")]
