"""The interop invariant: a stdlib process and this process share one segment,
in either role.

The stdlib side is ``stdlib_peer.py`` run by a separate CPython of each
supported version, 3.9 to 3.13 (the stdlib only, whatever this interpreter
is); this side is the module
under test (``impl``): with shmkit that is the cross-implementation check,
with the stdlib it checks the peer protocol and cross-version sharing.
"""

import json
import os
import secrets
import selectors
import subprocess
import sys
import time

import pytest

import shm_helpers as h

PEER = os.path.join(h.HERE, "stdlib_peer.py")
TIMEOUT = 30


@pytest.fixture(params=h.SUPPORTED_PYTHONS)
def peer_python(request):
    python = h.find_cpython(request.param)
    if python is None:
        pytest.skip(
            f"no CPython {request.param} found "
            f"(set SHMKIT_PY{request.param.replace('.', '')} or install it with pyenv)"
        )
    return python


class Peer:
    """A running stdlib_peer.py that answers JSON lines."""

    def __init__(self, python, *args):
        self.proc = subprocess.Popen(
            [python, PEER, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=h.foreign_env(),
        )
        self._buf = b""

    def answer(self):
        deadline = time.monotonic() + TIMEOUT
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self.kill()
                    pytest.fail(f"the stdlib peer gave no answer in {TIMEOUT} s{self._stderr()}")
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    self.proc.wait(TIMEOUT)
                    pytest.fail(
                        f"the stdlib peer exited (rc={self.proc.returncode}) "
                        f"without answering{self._stderr()}"
                    )
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def ask(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.proc.stdin.flush()
        return self.answer()

    def finish(self):
        """Closes its input, waits for it, and returns (rc, stderr)."""
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        rest = self.proc.stdout.read()
        stderr = self.proc.stderr.read().decode(errors="replace")
        rc = self.proc.wait(TIMEOUT)
        self._buf += rest
        return rc, stderr

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _stderr(self):
        self.kill()
        err = self.proc.stderr.read().decode(errors="replace")
        return f"; its stderr:\n{err}" if err else ""


@pytest.fixture
def peers():
    started = []

    def start(python, *args):
        peer = Peer(python, *args)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        if peer.proc.poll() is None:
            try:
                peer.finish()  # a create-peer unlinks at end of input
            except Exception:
                peer.kill()
        for stream in (peer.proc.stdin, peer.proc.stdout, peer.proc.stderr):
            try:
                stream.close()
            except Exception:
                pass


@pytest.mark.parametrize("named", [False, True], ids=["generated", "named"])
def test_stdlib_creates_we_attach(impl, segments, peers, peer_python, named):
    pattern = secrets.token_bytes(32)
    name = segments.name("peer_creates") if named else "-"
    peer = peers(peer_python, "create", name, 4097, pattern.hex())
    info = peer.answer()
    name = segments.add_name(info["name"])
    assert info["size"] == 4097
    if not named:
        assert h.GENERATED_NAME.match(name), name

    ours = h.attach_untracked(impl, name)
    segments.add(ours)
    assert ours.size == 4097
    assert bytes(ours.buf[:32]) == pattern
    reply = secrets.token_bytes(16)
    ours.buf[4097 - 16 :] = reply
    assert peer.ask(read=[4097 - 16, 16]) == {"hex": reply.hex()}

    # The peer writes again; we see it live through our mapping.
    assert peer.ask(write=[100, "cafe"]) == {"ok": True}
    assert bytes(ours.buf[100:102]) == b"\xca\xfe"
    ours.close()

    assert peer.ask(unlink=True) == {"ok": True}
    rc, stderr = peer.finish()
    assert rc == 0, stderr
    assert "resource_tracker" not in stderr, stderr
    assert not h.segment_exists(name)


@pytest.mark.parametrize("named", [False, True], ids=["generated", "named"])
def test_we_create_stdlib_attaches(impl, segments, peers, peer_python, named):
    if named:
        shm = impl.SharedMemory(segments.name("we_create"), create=True, size=4097)
    else:
        shm = impl.SharedMemory(create=True, size=4097)
    segments.add(shm)
    pattern = secrets.token_bytes(64)
    shm.buf[:64] = pattern
    reply = secrets.token_bytes(16)
    peer = peers(peer_python, "attach", shm.name, 4000, reply.hex())
    assert peer.answer() == {"size": 4097, "head": pattern.hex()}
    rc, stderr = peer.finish()
    assert rc == 0, stderr
    assert "resource_tracker" not in stderr, stderr
    assert bytes(shm.buf[4000:4016]) == reply
    assert h.segment_exists(shm.name), "an untracked stdlib attach must leave the segment alone"
    shm.close()
    shm.unlink()
    assert not h.segment_exists(shm.name)


def test_tracked_311_attach_unlinks_at_exit(impl, segments, peers, python311):
    """Why the peers untrack: a 3.8-3.12 process that merely attaches
    registers the segment, and its resource tracker unlinks it when that
    process exits (gh-82300), with a leak warning."""
    shm = segments.add(impl.SharedMemory(segments.name("gh82300"), create=True, size=64))
    peer = peers(python311, "attach", shm.name, 0, "01", "tracked")
    assert peer.answer()["size"] == 64
    rc, stderr = peer.finish()
    assert rc == 0, stderr
    assert "leaked shared_memory objects" in stderr
    assert not h.segment_exists(shm.name)
    h.untrack(impl, shm)  # gone already: our own tracker must not try again
    assert shm.buf[0] == 1  # our mapping outlives the name
