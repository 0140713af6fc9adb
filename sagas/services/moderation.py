"""Moderation: checks a post's text and media against configurable rules (a banned-word list,
media types). Its latency and failure rate are configurable, so tests and demos can make it slow
or down (MODERATION_LATENCY_MS, MODERATION_FAILURE_RATE)."""

from __future__ import annotations

import random
import re
import time
from typing import Any

from sqlalchemy import Connection

from sagas.services import StepContext, StepFailed, handles
from sagas.services.media import ALLOWED_TYPES


@handles("moderation", "check")
def check(conn: Connection, args: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    settings = ctx.services.settings
    if settings.moderation_latency_ms:
        time.sleep(settings.moderation_latency_ms / 1000)
    if settings.moderation_failure_rate and random.random() < settings.moderation_failure_rate:
        raise StepFailed("moderation is unavailable", retryable=True)
    words = set(re.findall(r"[\w']+", str(args.get("body", "")).lower()))
    banned = sorted(words & set(settings.moderation_banned_words))
    if banned:
        raise StepFailed(f"rejected: banned words ({', '.join(banned)})")
    for item in args.get("media", []):
        if item["content_type"] not in ALLOWED_TYPES:
            raise StepFailed(f"rejected: media type {item['content_type']} is not allowed")
    return {"moderated": True}
