"""A throwaway Redis master, its replicas and three Sentinels on loopback, for failover tests.

Ports come from ``SENTINEL_PORTS`` (one block of 10 per group: master, replicas, then sentinels),
every process is started here and stopped by its PID at the end. Sentinel is tuned to fail over
fast (``down-after-milliseconds`` 1000): a SIGKILLed master is replaced in about 2.5 s. Given
certificates, every server (sentinels too) speaks TLS only, replication included.
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
from .tls import SYSTEM_REDIS, Certificates

SERVICE = "fairway-test"
# This file's port range (other sessions use other ranges); a group takes 10 ports.
SENTINEL_PORTS = range(17600, 17700)
DOWN_AFTER_MS = 1000


class SentinelGroup:
    """A master, ``replicas`` replicas of it and three sentinels watching it as ``SERVICE``."""

    def __init__(self, directory: Path, replicas: int = 2, certificates: Certificates | None = None) -> None:
        self.directory = directory
        self.certificates = certificates
        base = _free_block()
        self.redis_ports = [base + n for n in range(1 + replicas)]
        self.sentinel_ports = [base + 5 + n for n in range(3)]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        scheme = "rediss+sentinel" if self.certificates else "redis+sentinel"
        return f"{scheme}://" + ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports) + f"/{SERVICE}/0"

    def start(self) -> None:
        master, *replicas = self.redis_ports
        self._start_redis(master)
        for port in replicas:
            self._start_redis(port, "--replicaof", "127.0.0.1", str(master))
        for port in self.sentinel_ports:
            self._start_sentinel(port, master)
        wait_for(lambda: self._replicas_online(master) == len(replicas), timeout=30)
        for port in self.sentinel_ports:
            wait_for(lambda port=port: self._sentinel_ready(port, len(replicas)), timeout=40, interval=0.1)

    def master_port(self) -> int:
        """The master's port as the first sentinel reports it now."""
        client = self._client(self.sentinel_ports[0])
        try:
            _host, port = client.sentinel_get_master_addr_by_name(SERVICE)
        finally:
            client.close()
        return int(port)

    def kill_master(self) -> int:
        """SIGKILL the current master; return its port."""
        port = self.master_port()
        process = self.processes[port]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        return port

    def wait_for_new_master(self, old_port: int, timeout: float = 30) -> int:
        """The port of the master every sentinel names once it is no longer ``old_port``."""

        def promoted() -> int | None:
            reported = {self._reported_master(port) for port in self.sentinel_ports}
            agreed = reported.pop() if len(reported) == 1 else None
            return agreed if agreed != old_port else None

        return int(wait_for(promoted, timeout=timeout, interval=0.1))

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
        for process in self.processes.values():
            process.wait(timeout=30)

    def _start_redis(self, port: int, *extra: str) -> None:
        directory = self.directory / str(port)
        directory.mkdir(parents=True, exist_ok=True)
        listen = [arg for name, value in self._listen(port) for arg in (f"--{name}", value)]
        command = [
            SYSTEM_REDIS,
            *listen,
            *("--bind", "127.0.0.1", "--dir", str(directory)),
            *("--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"),
            *extra,
        ]
        self._spawn(port, command, directory / "redis.log")
        client = self._client(port)
        try:
            wait_for(lambda: _answers(client), timeout=30)
        finally:
            client.close()

    def _start_sentinel(self, port: int, master: int) -> None:
        directory = self.directory / f"s{port}"
        directory.mkdir(parents=True, exist_ok=True)
        # Sentinel rewrites its config file (known replicas, peers, epochs): always a fresh one.
        config = directory / "sentinel.conf"
        listen = "".join(f"{name} {value}\n" for name, value in self._listen(port))
        config.write_text(
            f"{listen}bind 127.0.0.1\nprotected-mode no\ndir {directory}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} 5000\n"
            f"sentinel parallel-syncs {SERVICE} 2\n"
        )
        self._spawn(port, [SYSTEM_REDIS, str(config), "--sentinel"], directory / "sentinel.log")

    def _listen(self, port: int) -> list[tuple[str, str]]:
        """The options that make a server listen on ``port``: plain, or TLS only (replication too)."""
        if self.certificates is None:
            return [("port", str(port))]
        return [
            ("port", "0"),
            ("tls-port", str(port)),
            ("tls-cert-file", str(self.certificates.cert)),
            ("tls-key-file", str(self.certificates.key)),
            ("tls-ca-cert-file", str(self.certificates.ca)),
            ("tls-auth-clients", "no"),
            ("tls-replication", "yes"),
        ]

    def _client(self, port: int) -> redis.Redis:
        tls: dict[str, Any] = {}
        if self.certificates is not None:
            tls = {"ssl": True, "ssl_ca_certs": str(self.certificates.ca)}
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, **tls)

    def _spawn(self, port: int, command: list[str], log_path: Path) -> None:
        with open(log_path, "ab") as log:
            self.processes[port] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def _replicas_online(self, master: int) -> int:
        client = self._client(master)
        try:
            info = client.info("replication")
        finally:
            client.close()
        return sum(1 for key, value in info.items() if key.startswith("slave") and value["state"] == "online")

    def _sentinel_ready(self, port: int, replicas: int) -> bool:
        """This sentinel knows every replica and both other sentinels (no failover before that)."""
        client = self._client(port)
        try:
            state = client.sentinel_master(SERVICE)
        except redis.RedisError:
            return False
        finally:
            client.close()
        return int(state["num-slaves"]) == replicas and int(state["num-other-sentinels"]) == 2

    def _reported_master(self, port: int) -> int | None:
        client = self._client(port)
        try:
            _host, master = client.sentinel_get_master_addr_by_name(SERVICE)
        except (redis.RedisError, TypeError):
            return None
        finally:
            client.close()
        return int(master)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.ResponseError):
        return False


def _free_block() -> int:
    """The first block of 10 ports of ``SENTINEL_PORTS`` where nothing listens."""
    return free_port_block(SENTINEL_PORTS, range(10))


@contextmanager
def sentinel_group(
    directory: Path, replicas: int = 2, certificates: Certificates | None = None
) -> Iterator[SentinelGroup]:
    """A started :class:`SentinelGroup`, every process of it killed at the end."""
    group = SentinelGroup(directory, replicas, certificates)
    try:
        group.start()
        yield group
    finally:
        group.stop()
