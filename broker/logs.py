"""Structured JSON logs that never carry a secret, whatever the log level.

Two guards on the one handler: records from libraries that log request or response bodies (botocore prints
STS responses, httpx prints request URLs) are dropped below WARNING, and every message is scrubbed of
credential-shaped values before it is written.
"""

from __future__ import annotations

import logging
import re
import sys
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
    handler = _Stderr()
    handler.addFilter(_Guard())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso"),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))
    structlog.configure(
        processors=[
            # Below the configured level an event is dropped before any other processor runs.
            structlog.stdlib.filter_by_level,
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
