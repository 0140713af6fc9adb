"""Accounts, sessions and follows."""

from __future__ import annotations

from flask.views import MethodView
from flask_limiter.util import get_remote_address
from flask_smorest import Blueprint

from feed import commands
from feed.api.limits import limiter, sessions_limit
from feed.api.schemas import (
    AccountOut,
    FollowOut,
    ProblemOut,
    RegisterAccountIn,
    SessionOut,
    StartSessionIn,
)
from feed.api.web import authenticated, require_principal, run_command, services

blp = Blueprint("accounts", __name__, description="Accounts, sessions and follows")


@blp.route("/accounts")
class Accounts(MethodView):
    @blp.arguments(RegisterAccountIn)
    @blp.response(201, AccountOut)
    @blp.alt_response(409, schema=ProblemOut, description="The handle is taken")
    @blp.alt_response(422, schema=ProblemOut, description="A field is not valid")
    def post(self, data):
        """Register an account."""
        cmd = commands.RegisterAccount(**data)
        return run_command(
            201,
            lambda uow: commands.register_account(uow, cmd, services().passwords),
            AccountOut().dump,
        )


@blp.route("/sessions")
class Sessions(MethodView):
    decorators = [limiter.limit(sessions_limit, key_func=get_remote_address)]

    @blp.arguments(StartSessionIn)
    @blp.response(200, SessionOut)
    @blp.alt_response(401, schema=ProblemOut, description="Wrong handle or password")
    @blp.alt_response(429, schema=ProblemOut, description="Too many attempts")
    def post(self, data):
        """Log in: trade a handle and password for a bearer token."""
        cmd = commands.StartSession(**data)
        svc = services()
        return run_command(
            200,
            lambda uow: commands.start_session(uow, cmd, svc.passwords, svc.tokens),
            SessionOut().dump,
        )


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
        )
