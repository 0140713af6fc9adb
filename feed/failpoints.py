"""Failpoints: named places where a fault test can make a real process die.

``FEED_FAILPOINTS=relay.after_publish`` makes the process exit abruptly (like SIGKILL: no
cleanup, no commit) the first time it reaches that point. Unset, a failpoint costs one
dictionary lookup.
"""

from __future__ import annotations

import os

_ARMED = frozenset(filter(None, os.environ.get("FEED_FAILPOINTS", "").split(",")))


def failpoint(name: str) -> None:
    """Die here if the environment armed this failpoint."""
    if name in _ARMED:
        os._exit(137)
