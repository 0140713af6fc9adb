"""Accounts, sessions and follows."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from feed import commands, sessions
from feed.api.limits import login_limits, password_attempts, signups
from feed.api.schemas import (
    AccountOut,
    ChangePasswordIn,
    FollowOut,
    ProblemOut,
    RefreshSessionIn,
    RegisterAccountIn,
    SessionOut,
    StartSessionIn,
)
from feed.api.web import StoredForm, authenticated, require_principal, run_command, services
from feed.errors import Unauthenticated
from feed.sessions import StartSession

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
    @blp.alt_response(503, schema=ProblemOut, description="Busy hashing passwords; retry")
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
    @blp.alt_response(503, schema=ProblemOut, description="Busy hashing passwords; retry")
    def post(self, data):
        """Log in: trade a handle and password for an access token and a refresh token."""
        svc = services()
        # The hash runs before the transaction opens: a pooled connection never waits on it.
        account, rehashed = sessions.check_login(svc.engine, svc.passwords, StartSession(**data))

        def start(uow):
            started = sessions.start_session(uow, account, rehashed, svc.tokens, svc.refresh_tokens)
            svc.active_accounts.remember(account.id)  # it was active just now
            return started

        return run_command(200, start, SESSION_OUT.dump, stored_form=secrets_free(svc))


@blp.route("/sessions/refresh")
class RefreshSession(MethodView):
    @blp.arguments(RefreshSessionIn())
    @blp.response(200, SessionOut)
    @blp.alt_response(401, schema=ProblemOut, description="Spent, ended or unknown token")
    def post(self, data):
        """Trade a refresh token for a new pair; the one sent is spent. A spent token sent
        again after 30 seconds ends the whole login."""
        svc = services()
        return run_command(
            200,
            lambda uow: sessions.refresh_session(
                uow, data["refresh_token"], svc.tokens, svc.refresh_tokens
            ),
            SESSION_OUT.dump,
            stored_form=secrets_free(svc),
        )


@blp.route("/sessions/current")
class CurrentSession(MethodView):
    @authenticated
    @blp.response(204)
    def delete(self):
        """Log out: this login's access and refresh tokens stop working."""
        principal = require_principal()
        svc = services()
        response = run_command(
            204,
            lambda uow: sessions.end_session(uow, principal),
            lambda _: None,
            principal=principal,
        )
        svc.active_accounts.forget(principal.account_id)
        return response


@blp.route("/accounts/me/password")
class Password(MethodView):
    decorators = [password_attempts]

    @authenticated
    @blp.arguments(ChangePasswordIn())
    @blp.response(204)
    @blp.alt_response(401, schema=ProblemOut, description="The current password is wrong")
    @blp.alt_response(503, schema=ProblemOut, description="Busy hashing passwords; retry")
    def put(self, data):
        """Change the password: every login of the account ends, this one included."""
        principal = require_principal()
        svc = services()
        current = sessions.current_password_hash(svc.engine, principal.account_id)
        if not svc.passwords.check(current, data["current_password"]).ok or current is None:
            raise Unauthenticated("The current password is wrong.")
        new_hash = svc.passwords.hash(data["new_password"])
        response = run_command(
            204,
            lambda uow: sessions.change_password(uow, principal.account_id, current, new_hash),
            lambda _: None,
            principal=principal,
        )
        svc.active_accounts.forget(principal.account_id)
        return response


def secrets_free(svc) -> StoredForm:
    """A login's answer kept for Idempotency-Key replays without its secrets: the tokens are
    made again from what they name (the same strings, the same keys)."""

    def keep(body):
        session_id, generation = svc.refresh_tokens.read(body["refresh_token"])
        return {
            **body,
            "token": svc.tokens.replayable(body["token"]),
            "refresh_token": [session_id, generation],
        }

    def restore(kept):
        return {
            **kept,
            "token": svc.tokens.reissue(kept["token"]),
            "refresh_token": svc.refresh_tokens.make(*kept["refresh_token"]),
        }

    return StoredForm(
        keep=keep,
        restore=restore,
        check_replay=lambda kept, conn: active_account_only(conn, kept["token"]),
    )


def active_account_only(conn, replayable: dict) -> None:
    """A login is replayed only for an active account: not a disabled or erased one."""
    if not sessions.may_replay_session(conn, int(replayable["sub"])):
        raise Unauthenticated(sessions.WRONG_PAIR)


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
