"""Accounts, sessions and follows."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from feed import commands
from feed.api.limits import login_limits, signups
from feed.api.schemas import (
    AccountOut,
    FollowOut,
    ProblemOut,
    RegisterAccountIn,
    SessionOut,
    StartSessionIn,
)
from feed.api.web import StoredForm, authenticated, require_principal, run_command, services
from feed.errors import Unauthenticated

blp = Blueprint("accounts", __name__, description="Accounts, sessions and follows")
# Schemas are built once: building one per request copies every field.
ACCOUNT_OUT = AccountOut()
SESSION_OUT = SessionOut()


@blp.route("/accounts")
class Accounts(MethodView):
    decorators = [signups]

    @blp.arguments(RegisterAccountIn())
    @blp.response(201, AccountOut)
    @blp.alt_response(409, schema=ProblemOut, description="The handle is taken")
    @blp.alt_response(422, schema=ProblemOut, description="A field is not valid")
    def post(self, data):
        """Register an account."""
        # Hash before the transaction opens: Argon2 is slow on purpose, a connection is not.
        cmd = commands.RegisterAccount(
            handle=data["handle"],
            password_hash=services().passwords.hash(data["password"]),
            display_name=data.get("display_name"),
        )
        return run_command(201, lambda uow: commands.register_account(uow, cmd), ACCOUNT_OUT.dump)


@blp.route("/sessions")
class Sessions(MethodView):
    decorators = login_limits()

    @blp.arguments(StartSessionIn())
    @blp.response(200, SessionOut)
    @blp.alt_response(401, schema=ProblemOut, description="Wrong handle or password")
    @blp.alt_response(429, schema=ProblemOut, description="Too many attempts")
    def post(self, data):
        """Log in: trade a handle and password for a bearer token."""
        cmd = commands.StartSession(**data)
        svc = services()
        # A replayed login answers the same token, re-signed: the token itself is not stored.
        token_free = StoredForm(
            keep=lambda body: {**body, "token": svc.tokens.replayable(body["token"])},
            restore=lambda kept: {**kept, "token": svc.tokens.reissue(kept["token"])},
            check_replay=lambda kept, conn: active_account_only(conn, kept["token"]),
        )

        def start(uow):
            session = commands.start_session(uow, cmd, svc.passwords, svc.tokens)
            svc.active_accounts.remember(session.account["id"])  # it was active just now
            return session

        return run_command(200, start, SESSION_OUT.dump, stored_form=token_free)


def active_account_only(conn, replayable: dict) -> None:
    """A login is replayed only for an active account: not a disabled or erased one."""
    if not commands.may_replay_session(conn, int(replayable["sub"])):
        raise Unauthenticated("The handle or password is wrong.")


@blp.route("/accounts/<id:account_id>/follow")
class Follow(MethodView):
    @authenticated
    @blp.response(200, FollowOut)
    @blp.alt_response(404, schema=ProblemOut, description="No such account")
    @blp.alt_response(422, schema=ProblemOut, description="Following yourself")
    def post(self, account_id):
        """Follow an account (following it again changes nothing)."""
        principal = require_principal()
        cmd = commands.FollowAccount(follower=principal, followee_id=account_id)
        return run_command(
            200,
            lambda uow: commands.follow_account(uow, cmd),
            lambda following: {"following": following},
            principal=principal,
            single_statement=True,
        )

    @authenticated
    @blp.response(200, FollowOut)
    @blp.alt_response(404, schema=ProblemOut, description="No such account")
    def delete(self, account_id):
        """Stop following an account."""
        principal = require_principal()
        cmd = commands.UnfollowAccount(follower=principal, followee_id=account_id)
        return run_command(
            200,
            lambda uow: commands.unfollow_account(uow, cmd),
            lambda following: {"following": following},
            principal=principal,
            single_statement=True,
        )
