"""Serving off loopback without TLS is said out loud (issue #12)."""
import os
import signal
import subprocess
import sys

import pytest

from serving.cli import plaintext_warning

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("host,tls,warns", [
    ("127.0.0.1", False, False), ("localhost", False, False), ("::1", False, False),
    ("[::1]", False, False), ("0.0.0.0", False, True), ("::", False, True),
    ("10.1.2.3", False, True), ("model.example.com", False, True), ("0.0.0.0", True, False),
])
def test_plaintext_warning(host, tls, warns):
    warning = plaintext_warning(host, tls)
    assert bool(warning) == warns
    if warns:
        assert host in warning and "without TLS" in warning and "--tls-cert" in warning


def test_serve_on_all_interfaces_warns_at_start(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "serve", "--host", "0.0.0.0", "--port", "0",
         "--model-base-path", str(tmp_path), "--model-name", "m"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("listening on 0.0.0.0:")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert "warning: serving plaintext gRPC on 0.0.0.0" in err
