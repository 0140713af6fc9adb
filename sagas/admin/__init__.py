"""The operators' web page: sagas by status and type, one saga's step timeline, Retry (with
repair) and Abort. Server-rendered; admin login by a server-side session whose id the cookie
holds (sagas/admin_sessions.py); every form carries a CSRF token (Flask-WTF) and the buttons
ask for confirmation."""

from __future__ import annotations

from functools import wraps

from flask import Blueprint, abort, flash, g, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFError, generate_csrf, validate_csrf
from sqlalchemy import text

from feed.api.limits import login_limits
from feed.api.web import services
from sagas import admin_sessions, engine, repair
from sagas.queues_api import dead_letter_summary
from sagas.schema import STATUSES

bp = Blueprint("admin_page", __name__, template_folder="templates", url_prefix="/admin")


@bp.app_context_processor
def csrf_token():
    return {"csrf_token": generate_csrf}


@bp.before_request
def check_csrf():
    if request.method == "POST":
        try:
            validate_csrf(request.form.get("csrf_token"))
        except CSRFError:
            abort(400, "The form expired or did not come from this site; reload and try again.")
        except Exception:
            abort(400, "The form expired or did not come from this site; reload and try again.")


@bp.after_request
def security_headers(response):
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; "
        "frame-ancestors 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cache-Control"] = "no-store"
    return response


def admin_required(view):
    """Only with a live session of an active admin (``g.admin_id``); else to the login page."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        session_id = session.get("admin_session")
        admin_id = None
        if isinstance(session_id, str):
            svc = services()
            with svc.engine.begin() as conn:
                admin_id = admin_sessions.touch(conn, session_id, svc.settings)
        if admin_id is None:
            session.clear()
            return redirect(url_for("admin_page.login", next=request.path))
        g.admin_id = admin_id
        return view(*args, **kwargs)

    return wrapper


def _with_login_limits(view):
    for limit in reversed(login_limits()):
        view = limit(view)
    return view


@bp.route("/login", methods=["GET", "POST"])
@_with_login_limits
def login():
    error = None
    if request.method == "POST":
        handle = request.form.get("handle", "")[:30]
        password = request.form.get("password", "")[:256]
        svc = services()
        with svc.engine.connect() as conn:
            row = conn.execute(
                text("SELECT id, password_hash, is_admin, status FROM accounts WHERE handle = :h"),
                {"h": handle},
            ).first()
        ok = svc.passwords.check(row.password_hash if row else None, password).ok
        if row and ok and row.is_admin and row.status == "active":
            with svc.engine.begin() as conn:
                if isinstance(previous := session.get("admin_session"), str):
                    admin_sessions.end(conn, previous)  # a login again ends the one before
                session_id = admin_sessions.start(conn, row.id)
            session.clear()  # nothing from before the login carries over
            session.permanent = True  # the cookie lasts as long as the session may
            session["admin_session"] = session_id
            target = request.args.get("next", "")
            return redirect(target if target.startswith("/admin/") else url_for("admin_page.sagas"))
        error = "Wrong handle or password, or not an admin."
    return render_template("admin/login.html", error=error), 401 if error else 200


@bp.post("/logout")
def logout():
    session_id = session.get("admin_session")
    if isinstance(session_id, str):
        with services().engine.begin() as conn:
            admin_sessions.end(conn, session_id)
    session.clear()
    return redirect(url_for("admin_page.login"))


@bp.get("/")
@admin_required
def sagas():
    status = request.args.get("status") or None
    type_ = request.args.get("type") or None
    if status not in (None, *STATUSES) or type_ not in (None, *engine.LATEST):
        abort(400, "Unknown status or type.")
    with services().engine.connect() as conn:
        rows = engine.list_sagas(conn, status=status, type_=type_, limit=100)
    counts = engine.counts_by_type_and_status(services().engine)
    return render_template(
        "admin/sagas.html",
        sagas=rows,
        status=status,
        type_=type_,
        statuses=STATUSES,
        types=sorted(engine.LATEST),
        counts=counts,
        definitions=engine.DEFINITIONS,
    )


@bp.get("/dead-letters")
@admin_required
def dead_letters():
    """Dead letters by queue, actor and error: what ``GET /api/v1/admin/dead-letters`` gives."""
    summary = dead_letter_summary()
    return render_template(
        "admin/dead_letters.html", totals=summary.totals, groups=summary.as_rows()
    )


@bp.get("/sagas/<saga_id>")
@admin_required
def saga(saga_id):
    with services().engine.connect() as conn:
        try:
            found = engine.history(conn, saga_id)
        except (engine.SagaNotFound, ValueError):
            abort(404)
        can_abort = engine.can_abort(conn, engine.Instance(found["saga"]))
    definition = engine.DEFINITIONS[(found["saga"]["type"], found["saga"]["version"])]
    preview = None
    if request.args.get("preview") == "repair":
        preview = repair.repair(services().store, found["saga"], dry_run=True)
    return render_template(
        "admin/saga.html", found=found, definition=definition, preview=preview, can_abort=can_abort
    )


@bp.post("/sagas/<saga_id>/retry")
@admin_required
def retry(saga_id):
    operator = f"account:{g.admin_id}"
    svc = services()
    try:
        with svc.engine.connect() as conn:
            row = engine.load(conn, saga_id).row
        if row["status"] not in ("failed", "stuck"):
            raise engine.InvalidTransition(f"a {row['status']} saga cannot be retried")
        if request.form.get("repair") == "1":
            with svc.engine.begin() as conn:
                repair.repair_and_retry(svc.store, conn, saga_id, operator)
        else:
            engine.retry(svc.engine, saga_id, operator)
        flash("Retry sent: the saga resumes from the step that failed.")
    except (engine.SagaNotFound, ValueError):
        abort(404)
    except engine.InvalidTransition as error:
        flash(f"Not retried: {error}.")
    return redirect(url_for("admin_page.saga", saga_id=saga_id))


@bp.post("/sagas/<saga_id>/abort")
@admin_required
def abort_saga(saga_id):
    try:
        engine.abort(services().engine, saga_id, f"account:{g.admin_id}")
        flash("Abort sent: what was done is being compensated.")
    except (engine.SagaNotFound, ValueError):
        abort(404)
    except engine.InvalidTransition as error:
        flash(f"Not aborted: {error}.")
    return redirect(url_for("admin_page.saga", saga_id=saga_id))
