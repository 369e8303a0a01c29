"""``python -m shmkit demo``, small: its output where stdout is a pipe (a CI
log: plain lines, no carriage returns) and where it is a terminal (a bar
redrawn in place), and a summary that says what each figure timed."""

import os
import pty
import select
import subprocess
import sys

import pytest

import shm_helpers as h

SMALL = ["--megabytes", "16", "--workers", "2"]
SUMMARY_LABELS = [
    "sums agree: True",
    "setup, not in the rates: buffer created and filled",
    "summing rate, go to last worker exited: shared memory",
    "pickled through a Pipe",
    "its 2 segments gone from /dev/shm: True",
]


@pytest.fixture
def demo_cmd(shmkit_mod):
    pytest.importorskip("numpy")
    return [sys.executable, "-m", "shmkit", "demo", *SMALL]


def test_demo_to_a_pipe(demo_cmd):
    proc = subprocess.run(demo_cmd, capture_output=True, text=True, timeout=120, env=h.child_env())
    assert proc.returncode == 0, h.describe(proc)
    assert "\r" not in proc.stdout, proc.stdout
    for label in SUMMARY_LABELS:
        assert label in proc.stdout, (label, proc.stdout)
    # Each way's progress ends with a plain line of its own.
    assert "shared memory (by name): 100.0% summed" in proc.stdout, proc.stdout
    assert "pickled through a Pipe: 100.0% summed" in proc.stdout, proc.stdout


def test_demo_to_a_terminal(demo_cmd):
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            demo_cmd, stdout=follower, stderr=subprocess.PIPE, env=h.child_env()
        )
        os.close(follower)
        follower = None
        out = b""
        while True:
            ready, _, _ = select.select([leader], [], [], 120)
            if not ready:
                proc.kill()
                pytest.fail(f"the demo stopped writing: {out!r}")
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the demo closed its end
                break
            if not chunk:
                break
            out += chunk
        _, err = proc.communicate(timeout=60)
    finally:
        os.close(leader)
        if follower is not None:
            os.close(follower)
    text = out.decode()
    assert proc.returncode == 0, (text, err)
    assert "\r  shared memory (by name)" in text, text  # the bar, redrawn in place
    assert "GB/s summed so far" in text, text
    for label in SUMMARY_LABELS:
        assert label in text, (label, text)
