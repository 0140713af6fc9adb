"""Failpoints: named places where a fault test can make a real process die.

``FEED_FAILPOINTS=relay.after_publish`` makes the process exit abruptly (like SIGKILL: no
cleanup, no commit, no ack) the first time it reaches that point; ``name@3`` the third time.
Unset, a failpoint costs one dictionary lookup.
"""

from __future__ import annotations

import os
import threading


def _parse(spec: str) -> dict[str, int]:
    armed = {}
    for item in filter(None, spec.split(",")):
        name, _, nth = item.partition("@")
        armed[name] = int(nth or 1)
    return armed


_ARMED = _parse(os.environ.get("FEED_FAILPOINTS", ""))
_hits: dict[str, int] = {}
_lock = threading.Lock()


def failpoint(name: str) -> None:
    """Die here if the environment armed this failpoint (at this hit)."""
    if name not in _ARMED:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        if _hits[name] == _ARMED[name]:
            os._exit(137)
