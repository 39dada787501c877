"""The helper's typer commands, registered onto the `broker` command by ``broker.cli``."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import webbrowser
from dataclasses import asdict
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from broker.client import cache, store
from broker.client.api import Broker, HelperError, not_signed_in
from broker.terminal import print_table

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)
UrlOption = Annotated[str | None, typer.Option("--url", envvar="BROKER_URL", help="The broker's URL.")]
RoleOption = Annotated[str, typer.Option("--role", "-r", help="Role name, as shown by `broker status`.")]
DurationOption = Annotated[int | None, typer.Option("--duration", "-d", help="Seconds (capped by the role).")]


def _url(url: str | None) -> str:
    if url:
        return url.rstrip("/")
    profile = store.load_profile()
    if profile is None:
        err.print("[red]No broker URL.[/red] Run `broker login --url https://broker.example.com` first.")
        raise typer.Exit(2)
    return profile.url


def _fail(exc: HelperError) -> typer.Exit:
    err.print(f"[red]broker:[/red] {exc.message}", markup=True)
    return typer.Exit(1)


def _can_open_browser() -> bool:
    if sys.platform == "darwin" or os.name == "nt":
        return True
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        webbrowser.get()
    except webbrowser.Error:
        return False
    return True


def login(
    url: UrlOption = None,
    device: Annotated[
        bool,
        typer.Option(
            "--device", help="Use a code shown here instead of a browser on this machine (SSH sessions, containers)."
        ),
    ] = False,
    email: Annotated[
        str | None,
        typer.Option(
            "--email",
            envvar="BROKER_EMAIL",
            help="Your work e-mail address: the broker sends you straight to your company's sign-in for it.",
        ),
    ] = None,
) -> None:
    """Sign in to the broker; the refresh token goes to the OS keyring (or a 0600 file)."""
    target = _url(url)
    if email is not None and ("@" not in email or not email.isprintable() or len(email) > 254):
        err.print(f"[red]broker:[/red] --email {email!r} is not an e-mail address such as name@example.com")
        raise typer.Exit(2)
    broker = Broker(target)
    try:
        if device or not _can_open_browser():
            tokens = broker.login_device(err.print, login_hint=email)
        else:
            tokens = broker.login_loopback(webbrowser.open, err.print, login_hint=email)
        _, aws = broker.roles_and_aws(tokens.access_token)
    except HelperError as exc:
        raise _fail(exc) from None
    finally:
        broker.close()
    store.set_refresh_token(target, tokens.refresh_token)
    store.save_profile(
        store.Profile(
            url=target,
            principal=tokens.principal,
            mfa=tokens.mfa,
            session_expires_at=tokens.session_expires_at,
            aws_region=str(aws.get("region") or ""),
            aws_endpoint_url=str(aws.get("endpoint_url") or ""),
        )
    )
    cache.clear()
    err.print(
        f"[green]Signed in[/green] to {target} as [bold]{tokens.principal}[/bold] "
        f"({tokens.mfa} sign-in) until {tokens.session_expires_at}. Token kept in {store.where()}."
    )


def logout(url: UrlOption = None) -> None:
    """Revoke the broker session, forget the refresh token and delete cached credentials."""
    target = _url(url)
    refresh = store.get_refresh_token(target)
    if refresh:
        broker = Broker(target)
        try:
            broker.revoke(refresh)
        except HelperError:
            err.print("[yellow]Could not reach the broker to revoke the session; forgetting it locally.[/yellow]")
        finally:
            broker.close()
    store.delete_refresh_token(target)
    removed = cache.clear()
    err.print(f"Signed out of {target}; removed {removed} cached credential set(s).")


def status(
    url: UrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Who is signed in, until when, and which roles can be used."""
    target = _url(url)
    profile = store.load_profile()
    if not store.get_refresh_token(target):
        raise _fail(not_signed_in(target))
    broker = Broker(target)
    try:
        roles = broker.roles(broker.access_token())
    except HelperError as exc:
        raise _fail(exc) from None
    finally:
        broker.close()
    if as_json:
        who = asdict(profile) if profile and profile.url == target else {"url": target}
        sys.stdout.write(json.dumps({**who, "roles": roles}, indent=2) + "\n")
        return
    if profile and profile.url == target:
        out.print(
            f"Signed in to {target} as [bold]{profile.principal}[/bold] ({profile.mfa}) until "
            f"{profile.session_expires_at}"
        )
    table = Table("role", "account", "max duration", "usable", title="Roles you may use")
    for role in roles:
        table.add_row(
            role["name"],
            role["account"],
            f"{role['max_duration_seconds'] // 60} min",
            "yes" if role["usable"] else f"no: {role.get('missing') or ''}",
        )
    print_table(out, table)


def credential_process(role: RoleOption, duration: DurationOption = None, url: UrlOption = None) -> None:
    """Print credentials in the AWS `credential_process` format (used from ~/.aws/config)."""
    from broker.client.process import main

    args = ["--role", role] + (["--duration", str(duration)] if duration else []) + (["--url", url] if url else [])
    raise typer.Exit(main(args))


def configure_aws(
    url: UrlOption = None,
    prefix: Annotated[str, typer.Option(help="Prefix for profile names.")] = "",
    region: Annotated[
        str | None, typer.Option(help="Region written to each profile [default: the broker's aws.region].")
    ] = None,
) -> None:
    """Write one AWS CLI profile per role you may use, leaving your other profiles untouched.

    Each profile gets the broker's region; a dev-mode broker also names its AWS emulator (`endpoint_url`).
    """
    from broker.client.aws_config import config_path, write_profiles

    target = _url(url)
    broker = Broker(target)
    try:
        roles, aws = broker.roles_and_aws(broker.access_token())
    except HelperError as exc:
        raise _fail(exc) from None
    finally:
        broker.close()
    # This Python runs the helper's own file directly, isolated and without `site` (broker.client.process):
    # the quickest start for a command the AWS CLI runs on every call.
    from broker.client import process

    program = f"{shlex.quote(sys.executable)} -I -S {shlex.quote(os.path.abspath(process.__file__))}"
    profiles = {}
    for role in roles:
        values = {"credential_process": f"{program} --role {shlex.quote(role['name'])} --url {shlex.quote(target)}"}
        if region or aws.get("region"):
            values["region"] = str(region or aws["region"])
        if aws.get("endpoint_url"):
            values["endpoint_url"] = str(aws["endpoint_url"])
        profiles[f"{prefix}{role['name']}"] = values
    added, updated = write_profiles(profiles)
    err.print(f"Wrote {len(profiles)} profile(s) to {config_path()} (added {len(added)}, updated {len(updated)}).")
    if aws.get("endpoint_url"):
        err.print(f"The profiles send every AWS call to the broker's AWS emulator at {aws['endpoint_url']}.")
    for name in profiles:
        err.print(f"  aws sts get-caller-identity --profile {name}")


def console(
    role: RoleOption,
    duration: DurationOption = None,
    url: UrlOption = None,
    open_browser: Annotated[bool, typer.Option("--open", help="Open it in the browser.")] = False,
) -> None:
    """Print (or open) an AWS console sign-in URL for a role."""
    target = _url(url)
    broker = Broker(target)
    try:
        link = broker.console_url(broker.access_token(), role, duration)
    except HelperError as exc:
        raise _fail(exc) from None
    finally:
        broker.close()
    if open_browser and webbrowser.open(link):
        err.print("Opened the AWS console in your browser.")
    else:
        out.print(link, soft_wrap=True)


def exec_command(
    role: RoleOption,
    command: Annotated[list[str], typer.Argument(help="Command to run, after --.")],
    duration: DurationOption = None,
    url: UrlOption = None,
) -> None:
    """Run a command with the role's credentials in its environment."""
    from broker.client.process import fetch

    target = _url(url)
    try:
        creds = json.loads(fetch(target, role, duration))
    except HelperError as exc:
        raise _fail(exc) from None
    env = dict(os.environ)
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        env.pop(name, None)
    env.update(
        AWS_ACCESS_KEY_ID=creds["AccessKeyId"],
        AWS_SECRET_ACCESS_KEY=creds["SecretAccessKey"],
        AWS_SESSION_TOKEN=creds["SessionToken"],
        AWS_CREDENTIAL_EXPIRATION=creds["Expiration"],
        BROKER_ROLE=role,
    )
    profile = store.load_profile()
    if profile is not None and profile.url == target:
        # The broker's region (AWS CLI v1 and older SDKs read AWS_DEFAULT_REGION) and, for a dev-mode broker,
        # its AWS emulator; the user's own settings win.
        if profile.aws_region:
            env.setdefault("AWS_REGION", profile.aws_region)
            env.setdefault("AWS_DEFAULT_REGION", profile.aws_region)
        if profile.aws_endpoint_url:
            env.setdefault("AWS_ENDPOINT_URL", profile.aws_endpoint_url)
    try:
        os.execvpe(command[0], command, env)  # noqa: S606 (the user's own command, by design)
    except FileNotFoundError:
        err.print(f"[red]broker:[/red] command not found: {command[0]}")
        raise typer.Exit(127) from None


device_app = typer.Typer(
    help="Devices with a certificate: AWS credentials from the device's certificate and key.", no_args_is_help=True
)


@device_app.command("credential-process")
def device_credential_process(
    cert: Annotated[str, typer.Option("--cert", help="The device certificate (PEM).")],
    key: Annotated[str, typer.Option("--key", help="Its private key (PEM, unencrypted, mode 0600).")],
    role: RoleOption,
    chain: Annotated[str | None, typer.Option("--chain", help="Intermediate CA certificates (PEM).")] = None,
    url: UrlOption = None,
    duration: DurationOption = None,
    mtls: Annotated[
        bool, typer.Option("--mtls", help="Present the certificate over mutual TLS instead of a signed assertion.")
    ] = False,
    ca_bundle: Annotated[
        str | None, typer.Option("--ca-bundle", help="CA certificates to trust for the broker's HTTPS.")
    ] = None,
) -> None:
    """Print credential_process JSON for the AWS CLI (`credential_process = broker device credential-process ...`)."""
    from broker.client.device import main

    argv = ["--cert", cert, "--key", key, "--role", role]
    for name, value in (("--chain", chain), ("--url", url), ("--ca-bundle", ca_bundle)):
        if value:
            argv += [name, value]
    if duration:
        argv += ["--duration", str(duration)]
    if mtls:
        argv.append("--mtls")
    raise typer.Exit(main(argv))


def credentials_endpoint(
    role: Annotated[list[str], typer.Option("--role", "-r", help="Role to serve (repeatable; the first is exported).")],
    command: Annotated[list[str] | None, typer.Argument(help="Command to run with the endpoint, after --.")] = None,
    duration: DurationOption = None,
    url: UrlOption = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 [default: any free port].")] = 0,
) -> None:
    """Serve credentials to AWS SDKs on 127.0.0.1 (container credentials provider); no process per call.

    With a command: run it with AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN set,
    and stop when it ends. Without: print those two variables (for `eval`) and serve until Ctrl+C.
    """
    import signal
    import subprocess
    import threading

    from broker.client.endpoint import CredentialsEndpoint

    target = _url(url)
    if not store.get_refresh_token(target):
        raise _fail(not_signed_in(target))
    with CredentialsEndpoint(target, role, duration=duration, port=port) as endpoint:
        env = endpoint.environment(role[0])
        if command:
            child_env = {k: v for k, v in os.environ.items() if k not in {"AWS_PROFILE", "AWS_DEFAULT_PROFILE"}}
            child_env.update(env, BROKER_ROLE=role[0])
            profile = store.load_profile()
            if profile is not None and profile.url == target and profile.aws_endpoint_url:
                child_env.setdefault("AWS_ENDPOINT_URL", profile.aws_endpoint_url)
            if profile is not None and profile.url == target and profile.aws_region:
                child_env.setdefault("AWS_REGION", profile.aws_region)
                child_env.setdefault("AWS_DEFAULT_REGION", profile.aws_region)
            try:
                code = subprocess.call(command, env=child_env)  # the user's own command, by design
            except FileNotFoundError:
                err.print(f"[red]broker:[/red] command not found: {command[0]}")
                raise typer.Exit(127) from None
            raise typer.Exit(code)
        for name, value in env.items():
            sys.stdout.write(f"export {name}={shlex.quote(value)}\n")
        sys.stdout.flush()
        err.print(f"Serving {', '.join(role)} on 127.0.0.1:{endpoint.port}; Ctrl+C stops.")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


def register(app: typer.Typer) -> None:
    panel = "Credential helper (your machine)"
    app.add_typer(device_app, name="device", rich_help_panel=panel)
    app.command("login", rich_help_panel=panel)(login)
    app.command("logout", rich_help_panel=panel)(logout)
    app.command("status", rich_help_panel=panel)(status)
    app.command("credential-process", rich_help_panel=panel)(credential_process)
    app.command("configure-aws", rich_help_panel=panel)(configure_aws)
    app.command("console", rich_help_panel=panel)(console)
    app.command("exec", rich_help_panel=panel, context_settings={"allow_interspersed_args": False})(exec_command)
    app.command("credentials-endpoint", rich_help_panel=panel, context_settings={"allow_interspersed_args": False})(
        credentials_endpoint
    )
