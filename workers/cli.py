"""Operator commands on ``flask`` for the workers' queues: ``flask dead-letters list`` and
``flask dead-letters redrive`` (``workers/dead_letters.py``)."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from workers.broker import QUEUES
from workers.dead_letters import redrive, summarize

dead_letters_cli = AppGroup("dead-letters", help="List dead-lettered messages, move them back.")


@dead_letters_cli.command("list")
def list_dead_letters() -> None:
    """Dead letters by queue, actor and error."""
    summary = summarize(current_app.extensions["feed"].settings)
    for queue, total in summary.totals.items():
        click.echo(f"{queue}: {total} dead letters")
    for row in summary.as_rows():
        click.echo(f"  {row['queue']}  {row['actor']}  x{row['count']}  {row['error']}")


@dead_letters_cli.command("redrive")
@click.option("--limit", type=click.IntRange(min=1), help="Move at most this many in all.")
@click.option("--queue", type=click.Choice(QUEUES), help="Only this queue's.")
@click.option("--actor", help="Only this actor's (as `list` names it).")
@click.option("--dry-run", is_flag=True, help="Count what would move; move nothing.")
def redrive_dead_letters(limit: int | None, queue: str | None, actor: str | None, dry_run: bool):
    """Move dead letters back to their queues, their retries reset."""
    moved = redrive(
        current_app.extensions["feed"].settings,
        limit=limit,
        queue=queue,
        actor=actor,
        dry_run=dry_run,
    )
    verb = "would move" if dry_run else "moved"
    for name, count in moved.items():
        click.echo(f"{name}: {verb} {count}")
