"""``make bench``'s baseline: a constant JSON body of a chosen size, served by the same app and
server as the feed, so a feed read's cost is measured against the framework's own ceiling.

Registered only when BENCH_BASELINE is set; it is not part of the API.
"""

from __future__ import annotations

import functools

from flask import Blueprint, Response, request

from feed.api.web import ASCII_NUMBER

blp = Blueprint("baseline", __name__)
MAX_BYTES = 1 << 20


@functools.lru_cache(maxsize=16)
def constant_body(size: int) -> bytes:
    """A JSON object exactly ``size`` bytes long (at least its 10-byte frame)."""
    frame = b'{"pad":""}'
    return frame[:-2] + b"x" * max(0, size - len(frame)) + frame[-2:]


@blp.get("/bench/constant")
def constant() -> Response:
    raw = request.args.get("bytes", "2")
    fits = len(raw) <= 7 and ASCII_NUMBER.fullmatch(raw) and int(raw) <= MAX_BYTES
    size = int(raw) if fits else 2
    return Response(constant_body(size), mimetype="application/json")
