"""`broker credential-process`: the AWS CLI and SDKs run this for every call (``credential_process`` in
~/.aws/config), so the cache-hit path imports only the standard library and the cache cipher.

``broker configure-aws`` writes the fastest launch: this file run directly by the virtualenv's Python with
``-I -S`` (isolated, no ``site``), which skips the ``site`` module's ``.pth`` processing on every AWS CLI
call; :func:`_paths` then puts back only the two folders the cache-hit needs (this package's and the
virtualenv's ``site-packages``), falling back to the full ``site`` setup if that is not enough.

Stdout carries exactly the credential_process JSON (Version 1). On failure: exit 1, one line on stderr, and
nothing on stdout, so the SDK never reads partial credentials. No secret is ever written to stderr.
"""

from __future__ import annotations

import os
import sys

USAGE = "usage: broker credential-process --role ROLE [--duration SECONDS] [--url BROKER_URL]"
_FIELDS = ("Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration")


def _parse(argv: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    items = iter(argv)
    for item in items:
        name, _, value = item.partition("=")
        if name not in {"--role", "--duration", "--url"}:
            raise ValueError(f"unknown option {item!r}")
        options[name[2:]] = value or next(items, "")
    if not options.get("role"):
        raise ValueError("--role is required")
    return options


def _url(options: dict[str, str]) -> str:
    url = options.get("url") or os.environ.get("BROKER_URL")
    if not url:
        from broker.client.store import load_profile

        profile = load_profile()
        url = profile.url if profile else ""
    if not url:
        raise ValueError("no broker URL: run `broker login --url URL` first, or pass --url")
    return url.rstrip("/")


def fetch(url: str, role: str, duration: int | None) -> bytes:
    """Cache hit (no parsing at all), or one refresh-token rotation and one credentials call (then cached)."""
    from broker.client import cache

    cached = cache.read(url, role, duration)
    if cached is not None:
        return cached
    from datetime import datetime

    from broker.client.api import Broker, HelperError
    from broker.client.store import refresh_lock

    with refresh_lock(url):
        # Another helper process may have refreshed while this one waited for the lock.
        cached = cache.read(url, role, duration)
        if cached is not None:
            return cached
        broker = Broker(url)
        try:
            answer = broker.credentials(broker.access_token(), role, duration)
        finally:
            broker.close()
    if any(field not in answer for field in _FIELDS):
        raise HelperError("the broker's answer lacked credential fields")
    import json

    body = json.dumps({field: answer[field] for field in _FIELDS}).encode()
    expires = datetime.fromisoformat(str(answer["Expiration"]).replace("Z", "+00:00")).timestamp()
    cache.write(url, role, duration, body, expires)
    return body


def _paths() -> None:
    """Make ``broker`` and ``cryptography`` importable when started with ``python -I -S .../process.py``."""
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    venv = os.path.dirname(os.path.dirname(sys.executable))
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    candidates = [package_root, os.path.join(venv, "lib", version, "site-packages")]
    for path in candidates:
        if os.path.isdir(path) and path not in sys.path:
            sys.path.append(path)
    # importlib.util would cost more than it saves; a folder check is enough to know the layout is the usual one.
    if not any(os.path.isdir(os.path.join(path, "cryptography")) for path in sys.path):
        import site  # another layout (system Python, --user): the full site setup

        site.main()


def main(argv: list[str]) -> int:
    try:
        options = _parse(argv)
        duration = int(options["duration"]) if options.get("duration") else None
        creds = fetch(_url(options), options["role"], duration)
    except ValueError as exc:
        sys.stderr.write(f"broker: {exc}\n{USAGE}\n")
        return 2
    except Exception as exc:
        message = getattr(exc, "message", None) or type(exc).__name__
        sys.stderr.write(f"broker: {message}\n")
        return 1
    sys.stdout.buffer.write(creds + b"\n")
    return 0


if __name__ == "__main__":  # `python -I -S .../broker/client/process.py --role ...` (see the module docstring)
    if sys.flags.no_site:
        _paths()
    sys.exit(main(sys.argv[1:]))
