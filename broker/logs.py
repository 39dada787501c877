"""Structured JSON logs that never carry a secret, whatever the log level.

Two guards on the one handler: records from libraries that log request or response bodies (botocore prints
STS responses, httpx prints request URLs) are dropped below WARNING, and every message is scrubbed of
credential-shaped values before it is written.

With ``json`` on, every line on stderr is one JSON object: the broker's own events, the standard library's
loggers (uvicorn, libraries), :mod:`warnings` (through ``logging.captureWarnings``) and uncaught exceptions
in any thread (their traceback becomes the ``exception`` field). Values bound with :func:`request_context`
(the request id) are added to every line, the standard library's included.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import structlog

_CHATTY = ("botocore", "boto3", "urllib3", "httpx", "httpcore", "s3transfer", "saml2", "authlib", "alembic")
_SECRET_KEYS = {
    "password",
    "secret",
    "token",
    "secret_access_key",
    "session_token",
    "client_secret",
    "assertion",
    "samlresponse",
    "code",
    "cookie",
    "refresh_token",
    "access_token",
    "id_token",
}
_SCRUB = [
    re.compile(
        r'("?(?:SecretAccessKey|SessionToken|sessionKey|sessionToken|secret_access_key|session_token|'
        r'password|client_secret|refresh_token|access_token|id_token|SAMLResponse|SigninToken)"?'
        r'\s*[:=]\s*)("[^"]*"|[^\s,&}]+)',
        re.IGNORECASE,
    ),
    re.compile(r"(<(?:SecretAccessKey|SessionToken)>)[^<]*(</)"),
]


def scrub(message: str) -> str:
    message = _SCRUB[0].sub(r"\1[redacted]", message)
    return _SCRUB[1].sub(r"\1[redacted]\2", message)


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: ("[redacted]" if str(k).lower() in _SECRET_KEYS else _scrub_value(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(v) for v in value]
    return value


class _Guard(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] in _CHATTY and record.levelno < logging.WARNING:
            return False
        if isinstance(record.msg, dict):  # a structlog event dict, rendered later by the formatter
            record.msg = _scrub_value(record.msg)
        else:
            record.msg = scrub(record.getMessage())
            record.args = None
        return True


def _add_pid(_logger: Any, _name: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    # Which worker process logged the line (``broker serve --workers``).
    event.setdefault("pid", os.getpid())
    return event


def _scrub_exception(_logger: Any, _name: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    # A traceback quotes the exception's message, which may quote a library's response.
    if isinstance(event.get("exception"), str):
        event["exception"] = scrub(event["exception"])
    return event


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler that writes to whatever ``sys.stderr`` is when a line is logged, not when it was configured
    (a test runner or a daemonising supervisor may replace it, and the old stream may be closed)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure(level: str = "INFO", *, json: bool = True) -> None:
    """Route stdlib and structlog output through one guarded handler on stderr."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    # A traceback is one string field of the JSON line (JSON escapes its newlines), never lines of its own.
    final: list[structlog.types.Processor] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if json:
        final += [structlog.processors.format_exc_info, _scrub_exception]
    handler = _Stderr()
    handler.addFilter(_Guard())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[*final, renderer],
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                _add_pid,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso"),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    # Python's warnings go through logging (the "py.warnings" logger), so through the one formatter.
    # Off, then on: if something restored warnings.showwarning since an earlier call (warnings.catch_warnings
    # does on exit), logging still believes it captures, and a plain captureWarnings(True) would do nothing.
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    for name in ("uvicorn", "uvicorn.error"):
        # uvicorn's loggers log through the root handler, never a console handler of their own.
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    # uvicorn's access line carries the raw query string (an OIDC callback's code and state): silenced, so
    # uvicorn writes none; the broker writes its own access line, without the query (broker.web.hardening).
    access = logging.getLogger("uvicorn.access")
    access.handlers = []
    access.propagate = False
    if json:
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_thread_uncaught
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))
    structlog.configure(
        processors=[
            # Below the configured level an event is dropped before any other processor runs.
            structlog.stdlib.filter_by_level,
            structlog.contextvars.merge_contextvars,
            _add_pid,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("broker").critical("uncaught exception", exc_info=(kind, value, tb))


def _log_thread_uncaught(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    exc_info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
    thread = args.thread.name if args.thread else "?"
    logging.getLogger("broker").critical("uncaught exception in thread %s", thread, exc_info=exc_info)


@contextlib.contextmanager
def request_context(**values: Any) -> Iterator[None]:
    """Add ``values`` (e.g. ``request_id``) to every line logged in this context (task or thread it starts)."""
    with structlog.contextvars.bound_contextvars(**values):
        yield


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
