"""Operator commands on ``flask``: ``flask accounts make-admin``, ``flask idempotency purge``."""

from __future__ import annotations

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from sqlalchemy import update

from feed.bootstrap import Services
from feed.idempotency import purge_expired
from feed.outbox import purge_published
from feed.readmodel import configure_compact_encoding
from feed.rebuild import rebuild_account, rebuild_all
from feed.schema import accounts

accounts_cli = AppGroup("accounts", help="Manage accounts.")
idempotency_cli = AppGroup("idempotency", help="Manage stored Idempotency-Key answers.")
feeds_cli = AppGroup("feeds", help="Manage the Redis read models.")
outbox_cli = AppGroup("outbox", help="Manage the outbox.")


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


@outbox_cli.command("purge")
def purge_outbox() -> None:
    """Delete outbox events published more than OUTBOX_RETENTION_DAYS ago (the relay does it
    hourly too)."""
    svc = _services()
    with svc.engine.begin() as conn:
        removed = purge_published(conn, svc.settings.outbox_retention_days * 86400)
    click.echo(f"purged {removed} published outbox events")


@feeds_cli.command("rebuild")
@click.option("--account", "account_id", type=int, help="Rebuild only this account's keys.")
def rebuild(account_id: int | None) -> None:
    """Rebuild every read model (or one account's) from PostgreSQL."""
    store = _services().store
    configure_compact_encoding(store.redis)
    store.functions.load()
    if account_id is not None:
        rebuild_account(store, account_id)
        click.echo(f"rebuilt the read models of account {account_id}")
        return
    counts = rebuild_all(store)
    click.echo(
        f"rebuilt {counts['accounts']} accounts, {counts['posts']} posts, "
        f"{counts['feeds']} home feeds (inactive accounts are rebuilt when they read)"
    )


def register_cli(app: Flask) -> None:
    """Attach the command groups to ``app.cli``."""
    app.cli.add_command(accounts_cli)
    app.cli.add_command(idempotency_cli)
    app.cli.add_command(feeds_cli)
    app.cli.add_command(outbox_cli)
