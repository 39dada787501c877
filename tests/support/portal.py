"""Helpers to drive the broker's portal over HTTP the way a browser does (forms, cookies, CSRF)."""

from __future__ import annotations

import html
import re

import httpx

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_TEXTAREA = re.compile(r"<textarea[^>]*>(.*?)</textarea>", re.S)


def csrf_from(page: str) -> str:
    match = _CSRF.search(page)
    if match is None:
        raise AssertionError("no CSRF field on the page")
    return match.group(1)


def login_local(
    client: httpx.Client, *, store: str, username: str, password: str, code: str, next_path: str = "/"
) -> httpx.Response:
    page = client.get("/login", params={"next": next_path}, headers={"Accept": "text/html"})
    return client.post(
        f"/login/local/{store}",
        data={
            "username": username,
            "password": password,
            "totp": code,
            "csrf": csrf_from(page.text),
            "next": next_path,
        },
        headers={"Accept": "text/html"},
    )


def env_credentials(page: str) -> dict[str, str]:
    """Parse the `export NAME=value` lines the credentials page shows."""
    match = _TEXTAREA.search(page)
    if match is None:
        raise AssertionError("no credentials on the page")
    pairs = {}
    for line in html.unescape(match.group(1)).splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        pairs[name] = value
    return pairs
