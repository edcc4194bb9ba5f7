"""Serving off loopback without TLS is said out loud (issue #12)."""
import os
import signal
import subprocess
import sys

import pytest

from tfx_transfer.pipeline.cli.serving import plaintext_warning

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
    # An empty base path: the server waits for a first version (ports open only
    # then, as TF Serving's), but the warning comes before any of that.
    proc = subprocess.Popen(
        [sys.executable, "-m", "tfx_transfer.pipeline.cli", "serve", "--host", "0.0.0.0", "--port", "0",
         "--model-base-path", str(tmp_path), "--model-name", "m"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for _ in range(50):  # TensorFlow's start-up lines may come first
            line = proc.stderr.readline()
            seen.append(line)
            if not line or "warning: serving plaintext" in line:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert "warning: serving plaintext gRPC on 0.0.0.0" in seen[-1], "".join(seen)
