"""``broker signing-keys list|rotate``: the broker's own token-signing keys (``broker.oauth.tokens``).

Thin wiring. ``rotate`` audits as the operator (``operator:<login>@<host>`` or ``--as``, store ``cli``) in the
same transaction as the rotation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from broker.terminal import print_table

if TYPE_CHECKING:
    from broker.oauth.tokens import TokenService
    from broker.settings import Settings

out = Console()
err = Console(stderr=True)
DEFAULT_CONFIG = Path("config/broker.yaml")
ConfigOption = Annotated[Path, typer.Option("--config", "-c", envvar="BROKER_CONFIG", help="YAML configuration file.")]
signing_keys_app = typer.Typer(
    help="The broker's token-signing keys, published at /jwks.json: list them, rotate now.", no_args_is_help=True
)


def register(app: typer.Typer, panel: str) -> None:
    app.add_typer(signing_keys_app, name="signing-keys", rich_help_panel=panel)


def _service(config: Path) -> tuple[Settings, TokenService]:
    from broker.cli import _existing_database, _load
    from broker.keys import Keys
    from broker.oauth.tokens import TokenService
    from broker.store.db import Database

    settings = _load(config)
    database = Database(_existing_database(settings, config))
    return settings, TokenService(settings, db=database, keys=Keys(settings.secret_key))


def _when(value: object) -> str:
    return "" if value is None else str(value).replace("+00:00", "Z")


@signing_keys_app.command("list")
def signing_keys_list(
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the stored keys, newest first: current (signs), retired (still in /jwks.json until publish-until)."""
    _, tokens = _service(config)
    rows = [
        {
            "kid": k.kid,
            "alg": k.alg,
            "state": k.state,
            "created": _when(k.created_at),
            "publish_until": _when(k.publish_until),
        }
        for k in tokens.key_states()
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("kid", "alg", "state", "created", "publish-until")
    for row in rows:
        table.add_row(row["kid"], row["alg"], row["state"], row["created"], row["publish_until"] or "-")
    print_table(out, table)


@signing_keys_app.command("rotate")
def signing_keys_rotate(
    config: ConfigOption = DEFAULT_CONFIG,
    revoke: Annotated[
        bool,
        typer.Option(
            "--revoke",
            help="The old key is compromised: remove it from /jwks.json and refuse its tokens now, instead of "
            "keeping it published until they expire.",
        ),
    ] = False,
    as_name: Annotated[
        str | None,
        typer.Option("--as", envvar="BROKER_OPERATOR", help="Operator name for the audit trail (default: login@host)."),
    ] = None,
) -> None:
    """Make a new signing key active now (after a suspected compromise); audited.

    The old key stops signing at once and stays in /jwks.json until every token it signed has expired; with
    --revoke it leaves /jwks.json at once and the broker refuses its tokens at once. Running broker processes
    sign with the new key within oauth.tokens.key_cache_seconds.
    """
    from broker.admin_cli import _actor, _ctx
    from broker.audit import AuditTrail
    from broker.errors import BrokerError
    from broker.keys import Keys

    settings, tokens = _service(config)
    try:
        done = tokens.rotate_now(
            revoke=revoke, audit=AuditTrail(Keys(settings.secret_key)), actor=_actor(as_name).name, ctx=_ctx()
        )
    except BrokerError as exc:
        err.print(f"{exc.code} ({exc.reason}): {exc.message}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    out.print(f"New signing key {done.new_kid} is active now.", markup=False, highlight=False)
    if done.old_kid is None:
        pass
    elif done.revoked:
        out.print(
            f"Old key {done.old_kid} revoked: removed from /jwks.json and its tokens refused from now on.",
            markup=False,
            highlight=False,
        )
    else:
        out.print(
            f"Old key {done.old_kid} no longer signs; it stays in /jwks.json until "
            f"{_when(done.old_published_until)} (its last token's expiry), then is deleted.",
            markup=False,
            highlight=False,
        )
    out.print(
        f"Running broker processes switch within oauth.tokens.key_cache_seconds "
        f"({settings.oauth.tokens.key_cache_seconds} s).",
        markup=False,
        highlight=False,
    )
