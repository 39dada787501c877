"""The root ``broker`` command (``broker.cli.root``)."""

from __future__ import annotations

from tests.support.cli import broker


def test_help_reads_well() -> None:
    result = broker("--help")
    assert result.returncode == 0
    for command in ("serve", "dev", "config", "db", "audit", "hash-password"):
        assert command in result.stdout
