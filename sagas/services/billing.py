"""Billing: a wallet per account kept as a double-entry ledger. A balance never goes negative
(a CHECK constraint backs the code). Every movement is a ledger entry against a counter account:
credits come from ``admin``, debits go to ``promotions``, refunds come back from it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from feed.errors import InvalidInput
from sagas.schema import ledger_entries, wallets
from sagas.services import StepContext, StepFailed, handles


def credit(conn: Connection, account_id: int, amount: int, *, by: int) -> dict[str, Any]:
    """Add credits to a wallet (a grant by admin ``by``, recorded with the entry and its
    time); opens the wallet if needed."""
    conn.execute(pg_insert(wallets).values(account_id=account_id).on_conflict_do_nothing())
    status = conn.execute(
        select(wallets.c.status).where(wallets.c.account_id == account_id).with_for_update()
    ).scalar_one()
    if status != "open":
        raise InvalidInput(
            "The wallet is closed.", errors={"account_id": ["The wallet is closed."]}
        )
    _record(conn, account_id, "credit", amount, saga_id=None, counter=f"admin:{by}")
    return wallet(conn, account_id)


def wallet(conn: Connection, account_id: int, *, entries: int = 50) -> dict[str, Any]:
    """Balance and the newest ledger entries."""
    balance = (
        conn.execute(
            select(wallets.c.balance).where(wallets.c.account_id == account_id)
        ).scalar_one_or_none()
        or 0
    )
    rows = (
        conn.execute(
            select(ledger_entries)
            .where(ledger_entries.c.account_id == account_id)
            .order_by(ledger_entries.c.id.desc())
            .limit(entries)
        )
        .mappings()
        .all()
    )
    return {"balance": balance, "entries": [dict(r) for r in rows]}


@handles("billing", "debit")
def debit(conn: Connection, args: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    account_id, amount = int(args["account_id"]), int(args["credits"])
    balance = conn.execute(
        select(wallets.c.balance, wallets.c.status)
        .where(wallets.c.account_id == account_id)
        .with_for_update()
    ).first()
    if balance is None or balance.status != "open" or balance.balance < amount:
        have = balance.balance if balance else 0
        raise StepFailed(f"insufficient credits: {have} available, {amount} needed")
    _record(conn, account_id, "debit", amount, saga_id=ctx.saga_id, counter="promotions")
    return {"debited": amount}


@handles("billing", "refund")
def refund(conn: Connection, args: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Give back what this saga debited and has not refunded yet (nothing, if nothing)."""
    account_id = int(args["account_id"])
    totals = dict(
        conn.execute(
            select(ledger_entries.c.kind, func.sum(ledger_entries.c.amount))
            .where(ledger_entries.c.saga_id == ctx.saga_id)
            .group_by(ledger_entries.c.kind)
        ).all()
    )
    owed = int(totals.get("debit", 0)) - int(totals.get("refund", 0))
    if owed > 0:
        _record(conn, account_id, "refund", owed, saga_id=ctx.saga_id, counter="promotions")
    return {"refunded": owed}


def _record(
    conn: Connection, account_id: int, kind: str, amount: int, *, saga_id: Any, counter: str
) -> None:
    """Move ``amount`` in or out of a wallet and write the ledger entry that says so."""
    delta = -amount if kind == "debit" else amount
    conn.execute(
        update(wallets)
        .where(wallets.c.account_id == account_id)
        .values(balance=wallets.c.balance + delta)
    )
    conn.execute(
        insert(ledger_entries).values(
            account_id=account_id,
            kind=kind,
            amount=amount,
            saga_id=saga_id,
            counter_account=counter,
        )
    )


@handles("billing", "close_wallet")
def close_wallet(conn: Connection, args: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Close the wallet: no more debits or credits. Its ledger stays, as ledgers do."""
    conn.execute(
        update(wallets)
        .where(wallets.c.account_id == int(args["account_id"]))
        .values(status="closed")
    )
    return {}
