"""Operator commands on ``flask``: ``flask accounts make-admin``, ``flask idempotency purge``."""

from __future__ import annotations

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from sqlalchemy import update

from feed.bootstrap import Services
from feed.idempotency import purge_expired
from feed.schema import accounts

accounts_cli = AppGroup("accounts", help="Manage accounts.")
idempotency_cli = AppGroup("idempotency", help="Manage stored Idempotency-Key answers.")


def _services() -> Services:
    return current_app.extensions["feed"]


@accounts_cli.command("make-admin")
@click.argument("handle")
@click.option("--revoke", is_flag=True, help="Take the admin role away instead.")
def make_admin(handle: str, revoke: bool) -> None:
    """Give HANDLE the admin role (it applies to tokens issued from now on)."""
    with _services().engine.begin() as conn:
        changed = conn.execute(
            update(accounts).where(accounts.c.handle == handle).values(is_admin=not revoke)
        ).rowcount
    if not changed:
        raise click.ClickException(f"no account with handle {handle!r}")
    click.echo(f"{handle} is {'no longer ' if revoke else ''}an admin")


@idempotency_cli.command("purge")
def purge() -> None:
    """Delete stored answers older than the Idempotency-Key TTL (24 hours by default)."""
    svc = _services()
    with svc.engine.begin() as conn:
        removed = purge_expired(conn, svc.settings.idempotency_ttl_seconds)
    click.echo(f"purged {removed} expired idempotency records")


def register_cli(app: Flask) -> None:
    """Attach the command groups to ``app.cli``."""
    app.cli.add_command(accounts_cli)
    app.cli.add_command(idempotency_cli)
