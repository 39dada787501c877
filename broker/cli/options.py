"""What every operator command shares: the ``--config`` option and its loading, the operator options, and the
services a command builds from the configuration (``broker.services``).

Light on purpose: ``broker --help`` imports this module, so the settings, the database and the services are
imported only when a command runs.
"""

from __future__ import annotations

import getpass
import json
import socket
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from broker.terminal import print_table

if TYPE_CHECKING:
    from broker.context import Context
    from broker.revocation import Actor
    from broker.services import Services
    from broker.settings import Settings

out = Console()
err = Console(stderr=True)

DEFAULT_CONFIG = Path("config/broker.yaml")
# Read when a command runs, never at start-up: a command without --config reads BROKER_CONFIG, then the default.
ConfigOption = Annotated[Path, typer.Option("--config", "-c", envvar="BROKER_CONFIG", help="YAML configuration file.")]
AsOption = Annotated[
    str | None,
    typer.Option("--as", envvar="BROKER_OPERATOR", help="Operator name for the audit trail (default: login@host)."),
]
ReasonOption = Annotated[str, typer.Option("--reason", "-r", help="Why (ticket or incident id); audited.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def load_config(path: Path) -> Settings:
    """The validated settings, or every problem with its YAML path on stderr and exit 2."""
    from broker.errors import ConfigError
    from broker.settings import load_settings

    try:
        return load_settings(path)
    except ConfigError as exc:
        err.print(f"Configuration {path} is not valid:", style="red", markup=False, highlight=False)
        # Config text is printed literally: a pattern such as '^[a-z0-9]{0,62}$' is not terminal markup.
        for where, problem in exc.problems:
            err.print(f"  {where}: {problem}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def existing_database(settings: Settings, config: Path) -> str:
    """The database URL for an operator command; exit 2 rather than create an empty database by accident."""
    from broker.settings import display_database_url
    from broker.store.db import existing_schema_problem

    problem = existing_schema_problem(settings.database_url)
    if problem is not None:
        err.print(
            f"No broker database for {config}: {problem} "
            f"(database_url: {display_database_url(settings.database_url)}).\n"
            f"Start `broker dev` first, or create the schema with `broker db upgrade -c {config}`; "
            "BROKER_DATABASE_URL overrides the file's database_url.",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2)
    return settings.database_url


def database_url_option(value: str) -> str:
    """A ``--database-url`` value: a URL, or an ``env:NAME`` / ``file:/path`` reference as in the YAML file."""
    from broker.settings import resolve_database_url

    try:
        url: str = resolve_database_url(value)
    except ValueError as exc:
        err.print(f"[red]--database-url[/red]: {exc}.", highlight=False)
        raise typer.Exit(2) from None
    return url


def operator_services(config: Path) -> Services:
    """The services of an operator command, over the existing database of ``config``.

    Each is built when the command first uses it: listing sessions opens the database and nothing else; no
    command builds an STS client.
    """
    from broker.services import build_services

    settings = load_config(config)
    existing_database(settings, config)
    if settings.dev:
        # Dev mode's IAM is the local emulator, which takes the placeholder key (broker.aws.emulator).
        from broker.aws.emulator import use_emulator_keys

        use_emulator_keys()
    return build_services(settings)


def actor(as_name: str | None) -> Actor:
    """Who an operator command acts as, in the audit trail: ``operator:<login>@<host>`` or ``--as NAME``."""
    from broker.revocation import Actor

    return Actor.operator(as_name or f"{getpass.getuser()}@{socket.gethostname()}")


def ctx() -> Context:
    from broker.context import Context

    return Context(user_agent="broker-cli", request_id=f"cli-{datetime.now().strftime('%Y%m%dT%H%M%S')}")


def run(action: Any) -> Any:
    """Run an operator action; a refusal prints its code, reason and message, and exits 1."""
    from broker.errors import BrokerError

    try:
        return action()
    except BrokerError as exc:
        # Printed literally: a message may quote config text or names with brackets.
        err.print(f"{exc.code} ({exc.reason}): {exc.message}", style="red", markup=False, highlight=False)
        raise typer.Exit(1) from None


def print_rows(rows: list[dict[str, Any]], columns: list[str], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(rows, default=str))
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*[str(row.get(c, "") if row.get(c) is not None else "") for c in columns])
    print_table(out, table)
