"""Private server instances for fault tests (see ../shared/SERVERS.md): each on a free port in a
temporary directory, so killing one never touches the machine's own servers."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Below the kernel's ephemeral range: a server killed and started again on its port must not
# find a client's outgoing connection holding it meanwhile (seen in CI as a node that exited).
PORTS = range(10000, max(_ephemeral_low(), 30000))


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(span: int = 0) -> int:
    """A free port outside the ephemeral range; with ``span``, ``port + span`` is free too (a
    Redis Cluster node's bus port)."""
    for _ in range(1000):
        port = random.randrange(PORTS.start, PORTS.stop - span)
        if _bindable(port) and (not span or _bindable(port + span)):
            return port
    raise AssertionError("no free port below the ephemeral range")


def wait_for_port(port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on port {port} after {timeout}s")


class PrivateRedis:
    """A redis-server of our own, keeping nothing on disk (a restart comes back empty), or
    with ``persistent`` every write in its append-only file (a restart comes back whole)."""

    def __init__(self, directory: Path, *, persistent: bool = False) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if persistent
            else ["--appendonly", "no"]
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *self.persistence,
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, 10)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


class PrivatePostgres:
    """A PostgreSQL server of our own, in a fresh directory on a free port (run as the
    ``postgres`` user: the server refuses root). ``crash`` is an immediate stop: no checkpoint,
    clients cut off; ``start`` brings it back through crash recovery."""

    def __init__(self) -> None:
        versions = Path("/usr/lib/postgresql")  # looked up when a test starts one
        self.bin = versions / sorted(os.listdir(versions))[-1] / "bin"
        self.directory = Path(tempfile.mkdtemp(prefix="feed-pg-"))
        shutil.chown(self.directory, "postgres")
        self.data = self.directory / "data"
        self.port = free_port()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _as_postgres(self, *args: str | Path) -> None:
        command = " ".join(shlex.quote(str(a)) for a in args)
        subprocess.run(
            ["su", "postgres", "-c", command], check=True, capture_output=True, timeout=120
        )

    def start(self) -> None:
        if not self.data.exists():
            self._as_postgres(self.bin / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres")
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        self._as_postgres(
            self.bin / "pg_ctl",
            "-D",
            self.data,
            "-o",
            options,
            "-l",
            self.directory / "log",
            "-w",
            "start",
        )

    def crash(self) -> None:
        self._as_postgres(self.bin / "pg_ctl", "-D", self.data, "-m", "immediate", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.crash()
        shutil.rmtree(self.directory, ignore_errors=True)


class PrivateRabbitMQ:
    """A RabbitMQ node with its own name, ports and directories, run as the rabbitmq user."""

    def __init__(self, config: str = "", advanced: str = "") -> None:
        """``config`` is more of ``rabbitmq.conf`` (``consumer_timeout = 5000``...),
        ``advanced`` the body of ``advanced.config``'s list (``{rabbit, [...]}``)."""
        # Its own directory under /tmp: the rabbitmq user cannot enter pytest's (mode 700) ones.
        self.directory = Path(tempfile.mkdtemp(prefix="feed-rabbitmq-"))
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"feedtest{self.port}@localhost"
        self.config, self.advanced = config, advanced
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def _env(self) -> dict[str, str]:
        base = self.directory
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(base / "feature_flags"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "plugins"),
            "RABBITMQ_PID_FILE": str(base / "pid"),
            # The machine's /etc/rabbitmq/rabbitmq.conf pins 5672: use a config of our own.
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
        }

    def start(self, timeout: float = 90) -> None:
        for sub in ("log", "mnesia"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        (self.directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\n{self.config}\n"
        )
        (self.directory / "advanced.config").write_text(f"[{self.advanced}].\n")
        shutil.chown(self.directory, "rabbitmq", "rabbitmq")
        for path in self.directory.rglob("*"):
            shutil.chown(path, "rabbitmq", "rabbitmq")
        out = (self.directory / "out.txt").open("a")
        self.process = subprocess.Popen(
            ["rabbitmq-server"],
            env=self._env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_port(self.port, timeout, self.process)
        except AssertionError as failed:
            said = (self.directory / "out.txt").read_text()[-2000:]
            raise AssertionError(f"{failed}; node {self.node} said:\n{said}") from None

    def kill(self) -> None:
        """SIGKILL the node (the Erlang VM and its start script): a crash."""
        if self.process is not None:
            # ``su`` runs the VM in a session of its own: the start script's group is not enough.
            vm = self._vm_pid()
            if vm is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(os.getpgid(vm), signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):  # the script may have exited
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
            self.process = None

    def ctl(self, *args: str, timeout: float = 60) -> str:
        return subprocess.run(
            ["rabbitmqctl", "-q", "-n", self.node, *args],
            env=self._env(),
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
        ).stdout

    def remove(self) -> None:
        """Stop the node if it runs and delete its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _vm_pid(self) -> int | None:
        """The Erlang VM's pid (from the node's pid file), if it is a live descendant of the
        start script we ran: never another process that reused the number."""
        try:
            pid = int((self.directory / "pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        ancestor = pid
        while ancestor > 1:
            try:
                stat = Path(f"/proc/{ancestor}/stat").read_text()
            except FileNotFoundError:
                return None
            if ancestor != pid and ancestor == self.process.pid:
                return pid
            ancestor = int(stat.rpartition(")")[2].split()[1])  # the parent's pid
        return None

    def log(self) -> str:
        """What the node has logged so far."""
        path = self.directory / "log" / f"{self.node}.log"
        return path.read_text() if path.exists() else ""

    def connection_ports(self) -> list[int]:
        """The server port of every AMQP connection in the cluster: which node each client is
        connected to."""
        listed = self.ctl("list_connections", "port", "--formatter", "json", timeout=30)
        return [row["port"] for row in json.loads(listed)]

    def queue_depths(self, prefix: str) -> dict[str, int]:
        """Messages in each queue whose name starts with ``prefix`` (ready and unacknowledged)."""
        listed = self.ctl("list_queues", "name", "messages", "--formatter", "json", timeout=30)
        return {
            row["name"]: row["messages"]
            for row in json.loads(listed)
            if row["name"].startswith(prefix)
        }

    def stop(self) -> None:
        """Stop the node (its queues survive on disk for the next start)."""
        subprocess.run(
            ["rabbitmqctl", "-n", self.node, "stop"],
            env=self._env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )
        if self.process is not None:
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(10)
            self.process = None
        # the Erlang port mapper may keep listening; the node's own port must be free
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.2)


class PrivateRabbitMQCluster:
    """Three (``size``) RabbitMQ nodes of our own, clustered: a quorum queue's messages are
    on every node, and a node SIGKILLed comes back into the cluster when started again."""

    def __init__(self, size: int = 3) -> None:
        self.nodes = [PrivateRabbitMQ() for _ in range(size)]

    @property
    def url(self) -> str:
        """``BROKER_URL`` for every node, comma-separated, the first node first."""
        return ",".join(node.url for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        first = self.nodes[0].node
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first)
            node.ctl("start_app")
        self.wait_until_clustered()

    def running(self) -> list[str]:
        """The names of the nodes a live node says are running."""
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                status = node.ctl("cluster_status", "--formatter", "json", timeout=30)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                continue
            return json.loads(status)["running_nodes"]
        return []

    def wait_until_clustered(self, timeout: float = 90) -> None:
        """Until every started node runs, in one cluster."""
        deadline = time.monotonic() + timeout
        want = {node.node for node in self.nodes if node.process is not None}
        while time.monotonic() < deadline:
            if set(self.running()) == want:
                return
            time.sleep(0.5)
        raise AssertionError(f"the RabbitMQ cluster is not {sorted(want)} after {timeout}s")

    def remove(self) -> None:
        for node in self.nodes:
            node.kill()
            node.remove()

    def start_dead_nodes(self) -> None:
        """Start again every node that was killed or stopped, and wait until it has rejoined."""
        for node in self.nodes:
            if node.process is None:
                node.start()
        self.wait_until_clustered()


def free_cluster_port() -> int:
    """A free port whose cluster-bus port (+10000) is free too."""
    return free_port(span=10000)


class PrivateRedisCluster:
    """A Redis Cluster of our own: ``primaries`` primaries, each with ``replicas`` replicas, on
    free ports, keeping nothing on disk. A primary killed is replaced by its replica after
    ``node_timeout_ms``."""

    def __init__(
        self, directory: Path, primaries: int = 3, node_timeout_ms: int = 1500, replicas: int = 1
    ) -> None:
        self.directory = directory
        self.count = primaries * (1 + replicas)
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.ports: list[int] = []
        self.processes: dict[int, subprocess.Popen] = {}

    @property
    def nodes(self) -> tuple[str, ...]:
        """``host:port`` of every node, as ``REDIS_CLUSTER_NODES`` takes them."""
        return tuple(f"127.0.0.1:{port}" for port in self.ports)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        while len(self.ports) < self.count:
            port = free_cluster_port()
            if port in self.ports:
                continue
            try:
                self.start_node(port)
            except AssertionError:
                # Another process (a client's outgoing connection) took the port or its bus
                # port after it was found free: take another.
                self.processes.pop(port).kill()
                continue
            self.ports.append(port)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *self.nodes]
            + ["--cluster-replicas", str(self.replicas)]
            + ["--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=60,
        )
        self.wait_until_ok()

    def start_node(self, port: int) -> None:
        """Start (or start again, empty) the node on ``port``."""
        conf = self.directory / f"nodes-{port}.conf"
        self.processes[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
            + ["--cluster-enabled", "yes", "--cluster-config-file", str(conf)]
            + ["--cluster-node-timeout", str(self.node_timeout_ms)]
            + ["--dir", str(self.directory), "--save", "", "--appendonly", "no"]
            + ["--zset-max-listpack-entries", "1024"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(port, 10, self.processes[port])

    def cli(self, port: int, *args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-p", str(port), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout

    def wait_until_ok(self, timeout: float = 60) -> None:
        """Until every running node says cluster_state:ok and sees as many primaries with
        slots as it should."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = []
            for port, process in self.processes.items():
                if process.poll() is None:
                    try:
                        states.append("cluster_state:ok" in self.cli(port, "cluster", "info"))
                    except subprocess.CalledProcessError:
                        states.append(False)
            if states and all(states):
                return
            time.sleep(0.2)
        raise AssertionError(f"the cluster is not ok after {timeout}s")

    def primaries(self) -> list[int]:
        """Ports of the nodes that are primaries now."""
        return [
            port
            for port, process in self.processes.items()
            if process.poll() is None and "role:master" in self.cli(port, "info", "replication")
        ]

    def wait_replicated(self, primary: int, timeout: float = 10) -> None:
        """Until the replica of ``primary`` has everything the primary has."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.cli(primary, "info", "replication")
            offset = int(info.split("master_repl_offset:")[1].split()[0])
            replicas = [line for line in info.splitlines() if line.startswith("slave")]
            if replicas and all(f"offset={offset}," in line for line in replicas):
                return
            time.sleep(0.1)
        raise AssertionError(f"the replica of {primary} did not catch up in {timeout}s")

    def begin_move(self, slot: int, source: int, target: int) -> None:
        """Mark ``slot`` as moving from primary ``source`` to primary ``target`` (IMPORTING,
        MIGRATING): its keys still on ``source`` answer there, the rest answer ASK."""
        self.cli(target, "cluster", "setslot", str(slot), "importing", self.node_id(source))
        self.cli(source, "cluster", "setslot", str(slot), "migrating", self.node_id(target))

    def migrate_keys(self, slot: int, source: int, target: int, count: int | None = None) -> int:
        """Move up to ``count`` (all by default) of ``slot``'s keys, one at a time, as ``redis-cli
        --cluster reshard`` does; how many moved."""
        moved = 0
        while count is None or moved < count:
            keys = self.cli(source, "cluster", "getkeysinslot", str(slot), "1").split()
            if not keys:
                break
            self.cli(source, "migrate", "127.0.0.1", str(target), "", "0", "5000", "keys", *keys)
            moved += 1
        return moved

    def end_move(self, slot: int, target: int) -> None:
        """``slot`` is ``target``'s now, on every primary (the others learn it by gossip)."""
        owner = self.node_id(target)
        for port in [target, *(p for p in self.primaries() if p != target)]:
            self.cli(port, "cluster", "setslot", str(slot), "node", owner)

    def move_slot(self, slot: int, source: int, target: int) -> int:
        """Reshard ``slot`` live from ``source`` to ``target``; how many keys moved."""
        self.begin_move(slot, source, target)
        moved = self.migrate_keys(slot, source, target)
        self.end_move(slot, target)
        return moved

    def owner(self, slot: int, asked: int | None = None) -> int:
        """The port of the primary that node ``asked`` (any primary by default) says owns
        ``slot``."""
        with redis.Redis(port=asked or self.primaries()[0], socket_timeout=10) as node:
            for start, end, primary, *_ in node.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return primary[1]
        raise AssertionError(f"no primary owns slot {slot}")

    def node_id(self, port: int) -> str:
        return self.cli(port, "cluster", "myid").strip()

    def kill(self, port: int) -> None:
        process = self.processes[port]
        process.kill()
        process.wait(10)

    def flush(self) -> None:
        for port in self.primaries():
            self.cli(port, "flushall")

    def remove(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)
