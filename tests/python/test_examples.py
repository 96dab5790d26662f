"""examples/python runs as a user runs it (a fresh interpreter on the installed package) and verifies itself."""
import os
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "python")
SMALL = ["--requests", "12", "--num-blocks", "48", "--blocks-per-request", "20", "--layers", "4", "--block-kib", "4"]


def run_example(*args):
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, "disagg_connector.py"), *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_disagg_connector_numpy():
    # 12 requests x 20 blocks from a 48-block cache: the prefill worker must
    # wait for the decoder's notifies to free blocks, so the notify path is exercised.
    out = run_example(*SMALL, "--backend", "numpy")
    assert "disagg_connector (numpy): 12 requests" in out and "every byte verified" in out and "GB/s" in out


def test_disagg_connector_torch():
    pytest.importorskip("torch")
    out = run_example(*SMALL, "--backend", "torch")
    assert "disagg_connector (torch)" in out and "every byte verified" in out


def test_disagg_connector_rejects_bad_arguments():
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, "disagg_connector.py"), "--num-blocks", "4",
                             "--blocks-per-request", "8"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--blocks-per-request must be at most --num-blocks" in result.stderr
