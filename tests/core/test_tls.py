"""TLS settings reach the real Redis client: a TLS-only server is reached with our CA, refused with another."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dramatiq_fairway import setup
from dramatiq_fairway.ops.diagnostics import check
from dramatiq_fairway.settings import Settings, TlsSettings

from ..conftest import REDIS_URL
from ..support.helpers import run_jobs
from ..support.rabbitmq_node import throwaway_rabbitmq
from ..support.tls import make_certificates, tls_redis


def test_rediss_with_our_ca_runs_jobs_and_another_ca_is_refused(tmp_path: Path, queue_name: str) -> None:
    certificates = make_certificates(tmp_path / "good")
    stranger = make_certificates(tmp_path / "other", name="stranger")
    with tls_redis(certificates) as port:
        url = f"rediss://127.0.0.1:{port}/0"
        settings = Settings(broker="redis", redis_url=url, tls=TlsSettings(ca_file=certificates.ca))
        report = check(settings)
        assert report.ok, report.failure()
        assert report.broker.version

        broker = setup(settings)
        try:
            assert run_jobs(broker, queue_name, [7]) == [7]
        finally:
            broker.close()

        refused = check(Settings(broker="redis", redis_url=url, tls=TlsSettings(ca_file=stranger.ca)))
        assert not refused.ok
        assert "certificate verify failed" in (refused.broker.error or "")
        assert "\n" not in refused.failure()


@pytest.mark.parametrize("good_ca", [True, False])
def test_fairway_check_reads_tls_from_the_environment(tmp_path: Path, good_ca: bool) -> None:
    certificates = make_certificates(tmp_path / "good")
    stranger = make_certificates(tmp_path / "other", name="stranger")
    with tls_redis(certificates) as port:
        env = {
            **os.environ,
            "FAIRWAY_BROKER": "redis",
            "FAIRWAY_REDIS_URL": f"rediss://127.0.0.1:{port}/0",
            "FAIRWAY_TLS__CA_FILE": str(certificates.ca if good_ca else stranger.ca),
        }
        env.pop("FAIRWAY_STATE_URL", None)
        result = subprocess.run(
            [sys.executable, "-m", "dramatiq_fairway.cli", "check", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == (0 if good_ca else 1), result.stderr
    assert json.loads(result.stdout)["broker"]["reachable"] is good_ca
    if not good_ca:
        assert "certificate verify failed" in result.stderr


@pytest.mark.chaos  # starts a throwaway TLS RabbitMQ node (slow)
def test_amqps_with_our_ca_runs_jobs_and_another_ca_is_refused(tmp_path: Path, queue_name: str) -> None:
    certificates = make_certificates(tmp_path / "good")
    stranger = make_certificates(tmp_path / "other", name="stranger")
    with throwaway_rabbitmq(tmp_path / "node", certificates) as node:
        url = f"amqps://guest:guest@127.0.0.1:{node.port}/%2F"
        settings = Settings(
            broker="rabbitmq", rabbitmq_url=url, state_url=REDIS_URL, tls=TlsSettings(ca_file=certificates.ca)
        )
        report = check(settings)
        assert report.ok, report.failure()
        assert report.broker.version

        broker = setup(settings)
        try:
            assert run_jobs(broker, queue_name, [11]) == [11]
        finally:
            broker.close()

        refused = check(
            Settings(broker="rabbitmq", rabbitmq_url=url, state_url=REDIS_URL, tls=TlsSettings(ca_file=stranger.ca))
        )
        assert not refused.ok
        assert "CERTIFICATE_VERIFY_FAILED" in (refused.broker.error or "").upper().replace(" ", "_")
        assert "guest:guest" not in refused.failure()
