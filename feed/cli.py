"""Operator commands on ``flask``: ``flask accounts make-admin``, ``flask idempotency purge``."""

from __future__ import annotations

import getpass
import json

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
from sagas import engine as saga_engine
from sagas import repair as saga_repair
from sagas import runtime  # noqa: F401  (registers the saga definitions and participants)
from sagas.schema import STATUSES
from sagas.services import inject_fault
from sagas.services.media import sweep_unattached

accounts_cli = AppGroup("accounts", help="Manage accounts.")
idempotency_cli = AppGroup("idempotency", help="Manage stored Idempotency-Key answers.")
feeds_cli = AppGroup("feeds", help="Manage the Redis read models.")
outbox_cli = AppGroup("outbox", help="Manage the outbox.")
media_cli = AppGroup("media", help="Manage uploads.")
sagas_cli = AppGroup("sagas", help="Inspect and repair sagas.")


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


@media_cli.command("sweep")
def sweep_media() -> None:
    """Delete uploads left unattached for MEDIA_UNATTACHED_HOURS (the relay does it hourly
    too)."""
    svc = _services()
    with svc.engine.begin() as conn:
        removed = sweep_unattached(conn, svc.settings)
    click.echo(f"deleted {removed} unattached uploads")


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


def _saga_line(saga: dict) -> str:
    return (
        f"{saga['id']}  {saga['type']:<14} {saga['status']:<12} step {saga['current_step']} "
        f"({saga['direction']})  {saga['created_at']:%Y-%m-%d %H:%M:%S}  {saga['last_error'] or ''}"
    )


@sagas_cli.command("list")
@click.option("--status", type=click.Choice(STATUSES))
@click.option("--type", "type_")
@click.option("--limit", default=50, show_default=True)
def sagas_list(status: str | None, type_: str | None, limit: int) -> None:
    """List sagas, newest first."""
    with _services().engine.connect() as conn:
        for saga in saga_engine.list_sagas(conn, status=status, type_=type_, limit=limit):
            click.echo(_saga_line(saga))


@sagas_cli.command("show")
@click.argument("saga_id")
def sagas_show(saga_id: str) -> None:
    """One saga with every step attempt and operator action."""
    with _services().engine.connect() as conn:
        try:
            found = saga_engine.history(conn, saga_id)
        except (saga_engine.SagaNotFound, ValueError):
            raise click.ClickException(f"no saga {saga_id}") from None
    click.echo(_saga_line(found["saga"]))
    click.echo(f"data: {json.dumps(found['saga']['data'], sort_keys=True)}")
    for step in found["steps"]:
        click.echo(
            f"  {step['sent_at']:%H:%M:%S.%f}  {step['name']:<18} {step['kind']:<12} "
            f"attempt {step['attempt']}  {step['status']:<10} {step['error'] or ''}"
        )
    for action in found["actions"]:
        click.echo(f"  {action['at']:%H:%M:%S}  operator {action['operator']}: {action['action']}")


def _operator(action, saga_id: str, operator: str) -> None:
    try:
        instance = action(_services().engine, saga_id, operator)
    except (saga_engine.SagaNotFound, ValueError):
        raise click.ClickException(f"no saga {saga_id}") from None
    except saga_engine.InvalidTransition as error:
        raise click.ClickException(str(error)) from None
    click.echo(_saga_line(instance.row))


@sagas_cli.command("retry")
@click.argument("saga_id")
@click.option("--operator", default=lambda: f"cli:{getpass.getuser()}", show_default="cli:$USER")
@click.option(
    "--repair",
    "repair_it",
    is_flag=True,
    help="First rebuild from PostgreSQL the Redis keys the saga touched.",
)
@click.option("--dry-run", is_flag=True, help="With --repair: show what would change, do nothing.")
def sagas_retry(saga_id: str, operator: str, repair_it: bool, dry_run: bool) -> None:
    """Resume a failed or stuck saga from the step that failed."""
    if repair_it:
        svc = _services()
        with svc.engine.connect() as conn:
            try:
                saga = saga_engine.load(conn, saga_id).row
            except (saga_engine.SagaNotFound, ValueError):
                raise click.ClickException(f"no saga {saga_id}") from None
        if saga["status"] not in ("failed", "stuck"):
            raise click.ClickException(f"a {saga['status']} saga cannot be retried")
        report = saga_repair.repair(svc.store, saga, dry_run=dry_run)
        click.echo(
            f"repair{' (dry run)' if dry_run else ''}: {report['keys_checked']} keys checked"
        )
        for key, change in sorted(report["changes"].items()):
            click.echo(f"  {key}: {json.dumps(change, sort_keys=True)}")
        if not report["changes"]:
            click.echo("  nothing to repair")
        if dry_run:
            return
        saga_engine.record_action(
            svc.engine, saga_id, operator, "repair", {"changes": report["changes"]}
        )
    _operator(saga_engine.retry, saga_id, operator)


@sagas_cli.command("abort")
@click.argument("saga_id")
@click.option("--operator", default=lambda: f"cli:{getpass.getuser()}", show_default="cli:$USER")
def sagas_abort(saga_id: str, operator: str) -> None:
    """Compensate what a saga did and end it compensated."""
    _operator(saga_engine.abort, saga_id, operator)


@sagas_cli.command("inject-fault")
@click.argument("service")
@click.argument("command")
@click.option("--mode", type=click.Choice(["transient", "permanent"]), default="transient")
@click.option("--times", default=1, show_default=True)
def sagas_inject_fault(service: str, command: str, mode: str, times: int) -> None:
    """Fault drill: make the next TIMES runs of SERVICE COMMAND fail."""
    with _services().engine.begin() as conn:
        inject_fault(conn, service, command, mode, times)
    click.echo(f"the next {times} runs of {service}.{command} fail ({mode})")


def register_cli(app: Flask) -> None:
    """Attach the command groups to ``app.cli``."""
    app.cli.add_command(accounts_cli)
    app.cli.add_command(idempotency_cli)
    app.cli.add_command(feeds_cli)
    app.cli.add_command(outbox_cli)
    app.cli.add_command(media_cli)
    app.cli.add_command(sagas_cli)
