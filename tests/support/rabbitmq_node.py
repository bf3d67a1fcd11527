"""A throwaway RabbitMQ node beside the shared one, for TLS and chaos tests (loopback only).

Started as root through ``/usr/lib/rabbitmq/bin`` (the ``/usr/sbin`` wrapper switches to the
``rabbitmq`` user, which cannot write a test's temp dir), with its own node name, ports, data and
logs. The shared node on 5672 is never touched.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .helpers import free_port
from .tls import Certificates

BIN = Path("/usr/lib/rabbitmq/bin")


@dataclass(frozen=True)
class RabbitmqNode:
    name: str
    port: int
    env: dict[str, str]

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "rabbitmqctl"), "-n", self.name, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )


@contextmanager
def throwaway_rabbitmq(
    directory: Path,
    certificates: Certificates | None = None,
    *,
    advanced_config: str = "[].",
    ports: tuple[int, int] | None = None,
) -> Iterator[RabbitmqNode]:
    """Start a node listening on a free loopback port (TLS only when ``certificates`` are given).

    ``advanced_config``: Erlang terms for settings ``rabbitmq.conf`` cannot express; ``ports``:
    (AMQP, distribution) when a test has a range of its own, else free ones."""
    directory.mkdir(parents=True, exist_ok=True)
    port, dist_port = ports or (free_port(), free_port())
    name = f"fwtest{uuid.uuid4().hex[:8]}@localhost"
    lines = ["loopback_users = none", f"listeners.tcp.default = 127.0.0.1:{port}"]
    if certificates:
        lines = [
            "loopback_users = none",
            "listeners.tcp = none",
            f"listeners.ssl.default = {port}",
            f"ssl_options.cacertfile = {certificates.ca}",
            f"ssl_options.certfile = {certificates.cert}",
            f"ssl_options.keyfile = {certificates.key}",
            "ssl_options.verify = verify_none",
            "ssl_options.fail_if_no_peer_cert = false",
        ]
    (directory / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
    (directory / "enabled_plugins").write_text("[].\n")
    (directory / "advanced.config").write_text(advanced_config + "\n")
    (directory / "env.conf").write_text("")
    env = {
        **os.environ,
        "RABBITMQ_NODENAME": name,
        "RABBITMQ_CONF_ENV_FILE": str(directory / "env.conf"),
        "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"),
        "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
        "RABBITMQ_LOG_BASE": str(directory / "log"),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(directory / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
        "RABBITMQ_PID_FILE": str(directory / "rabbit.pid"),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
    }
    subprocess.run([str(BIN / "rabbitmq-server"), "-detached"], env=env, check=True, timeout=60)
    node = RabbitmqNode(name=name, port=port, env=env)
    try:
        _await_startup(node)
        yield node
    finally:
        subprocess.run(
            [str(BIN / "rabbitmqctl"), "-n", name, "stop"], env=env, capture_output=True, timeout=60, check=False
        )


def _await_startup(node: RabbitmqNode, timeout: float = 90.0) -> None:
    # rabbitmqctl fails at once until the node has registered with epmd, then waits for the boot.
    deadline = time.monotonic() + timeout
    while True:
        try:
            node.ctl("await_startup", "--timeout", str(int(timeout)))
            return
        except subprocess.CalledProcessError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
