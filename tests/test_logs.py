"""``broker.logs``: with ``log_json`` every stderr line is JSON, lines of a request carry its request id, and
no secret is ever written."""

from __future__ import annotations

import json
import logging
import threading
import warnings
from pathlib import Path

import pytest

from broker import logs
from tests.support.observed_broker import log_lines, observed_broker

SECRET = "s3cr3t-client-value-never-logged"


def test_every_line_of_a_served_broker_is_json_with_request_ids(tmp_path: Path, sts_endpoint: str) -> None:
    with observed_broker(tmp_path, sts_endpoint) as broker:
        statuses = [
            broker.post(
                "/oauth2/token",
                data={"grant_type": "client_credentials", "client_id": "nobody", "client_secret": SECRET},
                headers={"X-Request-Id": f"req-observe-{n}", "X-Forwarded-For": "192.0.2.55"},
            ).status_code
            for n in range(5)
        ]
        assert broker.get("/healthz", headers={"X-Request-Id": "req-health"}).status_code == 200
        output = broker.server.stop()
    assert statuses[-1] == 429
    assert SECRET not in output
    lines = log_lines(output)  # fails on the first line that is not JSON (uvicorn's own lines included)
    assert any(line.get("logger", "").startswith("uvicorn") for line in lines), "uvicorn's lines are missing"
    # Application lines logged while handling a request carry its id, not only the access line.
    (limited, *_) = [line for line in lines if line["event"] == "rate limited"]
    assert limited["request_id"].startswith("req-observe-")
    assert limited["limit"] == "token.ip"
    # The access line names the client as resolved through the trusted proxy (loopback here).
    (health,) = [line for line in lines if line["event"] == "request" and line["request_id"] == "req-health"]
    assert health["client_ip"] == "127.0.0.1"
    forwarded = [line for line in lines if line["event"] == "request" and line["path"] == "/oauth2/token"]
    assert len(forwarded) == 5
    assert {line["client_ip"] for line in forwarded} == {"192.0.2.55"}
    assert {line["status"] for line in forwarded} == {400, 429}


def test_warnings_thread_crashes_and_library_lines_are_json(capsys: pytest.CaptureFixture[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logs.configure("INFO", json=True)  # here, not in a fixture: pytest swaps the hooks around each phase
        with logs.request_context(request_id="req-lib"):
            logging.getLogger("some.library").warning("disk %s almost full", "/var")
            warnings.warn("an old API", UserWarning, stacklevel=1)
        crash = threading.Thread(target=lambda: 1 / 0, name="doomed")
        crash.start()
        crash.join()
        logging.getLogger("botocore").error("response: SecretAccessKey=AKIDSECRETVALUE1234 ok")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    library, warned, crashed, leaked = lines
    assert (library["event"], library["request_id"], library["level"]) == (
        "disk /var almost full",
        "req-lib",
        "warning",
    )
    assert warned["logger"] == "py.warnings" and "an old API" in warned["event"]
    assert warned["request_id"] == "req-lib"
    assert crashed["event"] == "uncaught exception in thread doomed"
    assert "ZeroDivisionError" in crashed["exception"]
    assert "AKIDSECRETVALUE1234" not in leaked["event"]


def test_warnings_are_captured_again_after_something_restored_them(capsys: pytest.CaptureFixture[str]) -> None:
    """``warnings.catch_warnings`` puts the original ``showwarning`` back on exit while logging still believes it
    captures: configuring again must capture again."""
    with warnings.catch_warnings():
        logs.configure("INFO", json=True)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logs.configure("INFO", json=True)
        warnings.warn("after a restore", UserWarning, stacklevel=1)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert [line["logger"] for line in lines if "after a restore" in line["event"]] == ["py.warnings"]
