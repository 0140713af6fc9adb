"""Operator commands for sagas and uploads on ``flask``: ``flask sagas list|show|retry|abort``,
``flask media sweep``."""

from __future__ import annotations

import getpass
import json

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from feed.bootstrap import Services
from sagas import engine as saga_engine
from sagas import repair as saga_repair
from sagas import runtime  # noqa: F401  (registers the saga definitions and participants)
from sagas.schema import STATUSES
from sagas.services import inject_fault
from sagas.services.media import sweep_unattached

media_cli = AppGroup("media", help="Manage uploads.")
sagas_cli = AppGroup("sagas", help="Inspect and repair sagas.")


def _services() -> Services:
    return current_app.extensions["feed"]


@media_cli.command("sweep")
def sweep_media() -> None:
    """Delete uploads left unattached for MEDIA_UNATTACHED_HOURS (the saga sweeper does it hourly
    too)."""
    svc = _services()
    with svc.engine.begin() as conn:
        removed = sweep_unattached(conn, svc.settings)
    click.echo(f"deleted {removed} unattached uploads")


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


def register_saga_cli(app: Flask) -> None:
    """Attach the saga and media command groups to ``app.cli``."""
    app.cli.add_command(media_cli)
    app.cli.add_command(sagas_cli)
