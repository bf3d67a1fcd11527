"""A throwaway 3-node RabbitMQ cluster on loopback, for the cluster chaos tests (docs/operations.md).

Each node has its own name (``fwcN@localhost``), AMQP and Erlang distribution ports, data and log
dirs and config file (the system ``rabbitmq.conf`` binds 5672), no plugins (faster boot); all share
one Erlang cookie in a ``HOME`` of their own and a private epmd, so the shared node on 5672 (and its
epmd and cookie) is never involved. Nodes are started through ``/usr/lib/rabbitmq/bin`` (as root,
the ``/usr/sbin`` wrapper switches to the ``rabbitmq`` user, which resets ``HOME`` and cannot write
here), joined with ``join_cluster``, and stopped by PID: a node deletes its PID file as soon as it
starts shutting down, and a SIGKILLed one leaves a stale file, so a PID is only signalled while
``/proc`` shows it is our beam (and not a zombie). Boot is CPU-bound: 15-25 s for three nodes on
two cores, so a test session starts the cluster once. ``scripts/rabbitmq-cluster.sh`` is the same
recipe for humans.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .helpers import wait_for
from .rabbitmq_node import BIN

# Ports from the range reserved for this cluster (docs/operations.md): AMQP 17200+i, Erlang
# distribution 17210+i, the private epmd 17220, the CLI's own distribution ports 17230-17239.
AMQP_BASE_PORT = 17200
DIST_BASE_PORT = 17210
EPMD_PORT = 17220
CTL_DIST_PORTS = (17230, 17239)


@dataclass(frozen=True)
class ClusterNode:
    name: str
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    @property
    def pid_file(self) -> Path:
        return self.directory / "rabbit.pid"

    def pid(self) -> int | None:
        """The PID of this node's beam while it runs, else None (a stale file or a zombie)."""
        try:
            pid = int(self.pid_file.read_text().strip())
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        mine = f"RABBITMQ_MNESIA_BASE={self.directory / 'mnesia'}".encode() in environ
        return pid if mine and _alive(pid) else None


class RabbitmqCluster:
    """Nodes of a running cluster; ``kill`` and ``start`` break and mend one of them."""

    def __init__(self, base: Path, size: int) -> None:
        self.base = base
        self.nodes = [
            ClusterNode(f"fwc{i}-{uuid.uuid4().hex[:6]}@localhost", AMQP_BASE_PORT + i, base / f"node{i}")
            for i in range(size)
        ]
        self.env = {
            **os.environ,
            "HOME": str(base / "home"),
            "ERL_EPMD_PORT": str(EPMD_PORT),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_CTL_DIST_PORT_MIN": str(CTL_DIST_PORTS[0]),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(CTL_DIST_PORTS[1]),
        }
        self.epmd: subprocess.Popen[bytes] | None = None

    @property
    def urls(self) -> str:
        """``FAIRWAY_RABBITMQ_URL`` for the whole cluster."""
        return ",".join(node.url for node in self.nodes)

    def ctl(self, node: ClusterNode, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(
            [str(BIN / "rabbitmqctl"), "-n", node.name, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
        return result.stdout

    def boot(self) -> None:
        (self.base / "home").mkdir(parents=True)
        (self.base / "rabbitmq-env.conf").write_text("")
        cookie = self.base / "home" / ".erlang.cookie"
        cookie.write_text(f"fairway-test-{uuid.uuid4().hex}")
        cookie.chmod(0o400)
        self.epmd = subprocess.Popen(
            ["epmd", "-port", str(EPMD_PORT), "-address", "127.0.0.1"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._epmd_answers, timeout=10, interval=0.05)
        for node in self.nodes:
            self.start(node, wait=False)
        for node in self.nodes:
            self._await(node)
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", self.nodes[0].name)
            self.ctl(node, "start_app")
        self.ctl(self.nodes[0], "await_online_nodes", str(len(self.nodes)), "--timeout", "60")

    def _epmd_answers(self) -> bool:
        names = subprocess.run(
            ["epmd", "-port", str(EPMD_PORT), "-names"], env=self.env, capture_output=True, check=False
        )
        return names.returncode == 0

    def start(self, node: ClusterNode, *, wait: bool = True) -> None:
        """Start ``node`` (again: a killed node rejoins the cluster with its data dir)."""
        (node.directory / "log").mkdir(parents=True, exist_ok=True)
        (node.directory / "enabled_plugins").write_text("[].\n")
        (node.directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{node.port}\nloopback_users = none\n"
        )
        # A killed node's PID file is stale: gone before the restart, so `_await` reads the new one.
        node.pid_file.unlink(missing_ok=True)
        index = self.nodes.index(node)
        env = {
            **self.env,
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(node.port),
            "RABBITMQ_DIST_PORT": str(DIST_BASE_PORT + index),
            "RABBITMQ_MNESIA_BASE": str(node.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(node.directory / "log"),
            "RABBITMQ_PID_FILE": str(node.pid_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(node.directory / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(node.directory / "rabbitmq.conf"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }
        subprocess.run([str(BIN / "rabbitmq-server"), "-detached"], env=env, check=True, timeout=60)
        if wait:
            self._await(node)

    def _await(self, node: ClusterNode) -> None:
        wait_for(lambda: node.pid_file.exists() and node.pid_file.stat().st_size, timeout=60, interval=0.1)
        self.ctl(node, "wait", str(node.pid_file), "--timeout", "120", timeout=150)

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL ``node``'s beam: no shutdown, its connections drop at once."""
        pid = node.pid()
        assert pid is not None, f"{node.name} is not running"
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: node.pid() is None, timeout=30, interval=0.05)

    def stop(self) -> None:
        # Every PID first: a node deletes its PID file as soon as it starts shutting down, so the
        # signalled PIDs are then watched in /proc, not through the file.
        pids = [pid for pid in (node.pid() for node in self.nodes) if pid is not None]
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        for pid in pids:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.epmd is not None:
            self.epmd.terminate()
            self.epmd.wait(timeout=10)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (``kill -0`` also sees a zombie that is not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@contextmanager
def rabbitmq_cluster(size: int = 3) -> Iterator[RabbitmqCluster]:
    """A running ``size``-node cluster in a short temporary dir (Erlang paths stay short); stopped by PID."""
    with tempfile.TemporaryDirectory(prefix="fw-rmqc-") as base:
        cluster = RabbitmqCluster(Path(base), size)
        try:
            cluster.boot()
            yield cluster
        finally:
            cluster.stop()
