"""shmkit's SharedMemoryManager and the stdlib's, on the wire, in both
directions, with CPython 3.9-3.13 (stdlib only) on the other side."""

import json
import os
import subprocess
import textwrap
import time

import pytest

import shm_helpers as h


@pytest.fixture(params=h.SUPPORTED_PYTHONS)
def cpython(request):
    python = h.find_cpython(request.param)
    if python is None:
        pytest.skip(f"no CPython {request.param} found")
    return python


@pytest.fixture
def managers():
    if os.environ.get("SHMKIT_REQUIRED") != "1":
        pytest.importorskip("shmkit.managers")
    import shmkit.managers

    return shmkit.managers


# A stdlib client of a remote manager: it creates through the manager, then
# hands responsibility for the segments to it (its own resource tracker
# would otherwise unlink them when it exits).
STDLIB_CLIENT = textwrap.dedent(
    """
    import json, sys
    from multiprocessing import resource_tracker
    from multiprocessing.managers import SharedMemoryManager
    address, key = json.loads(sys.argv[1])
    address = address if isinstance(address, str) else tuple(address)
    smm = SharedMemoryManager(address=address, authkey=bytes.fromhex(key))
    smm.connect()
    shm = smm.SharedMemory(size=128)
    shm.buf[:5] = b"howdy"
    sl = smm.ShareableList([1, "two", 3.0, None])
    for name in (shm._name, sl.shm._name):
        resource_tracker.unregister(name, "shared_memory")
    print(json.dumps([shm.name, sl.shm.name]))
    shm.close()
    sl.shm.close()
    """
)


def test_stdlib_client_against_shmkit_server(managers, shmkit_mod, cpython):
    key = os.urandom(16)
    smm = managers.SharedMemoryManager(authkey=key)
    smm.start()
    try:
        proc = h.run_python(STDLIB_CLIENT, cpython, args=[json.dumps([smm.address, key.hex()])])
        assert proc.returncode == 0, h.describe(proc)
        names = json.loads(proc.stdout)
        assert smm.list_segments() == names
        shm = shmkit_mod.SharedMemory(name=names[0])
        assert bytes(shm.buf[:5]) == b"howdy"
        shm.close()
        sl = shmkit_mod.ShareableList(name=names[1])
        assert list(sl) == [1, "two", 3.0, None]
        sl.shm.close()
    finally:
        smm.shutdown()
    assert not any(h.segment_exists(n) for n in names)


def test_stdlib_client_with_a_wrong_key_is_refused(managers, cpython):
    with managers.SharedMemoryManager(authkey=b"right") as smm:
        proc = h.run_python(STDLIB_CLIENT, cpython, args=[json.dumps([smm.address, b"wrong".hex()])])
        assert proc.returncode != 0
        assert "AuthenticationError" in proc.stderr, h.describe(proc)
        assert smm.list_segments() == []


def test_stdlib_client_shuts_a_shmkit_server_down(managers, cpython):
    key = os.urandom(16)
    smm = managers.SharedMemoryManager(authkey=key)
    smm.start()
    shm = smm.SharedMemory(64)
    code = textwrap.dedent(
        """
        import json, sys
        from multiprocessing import connection
        from multiprocessing.managers import dispatch
        address, key = json.loads(sys.argv[1])
        with connection.Client(address, authkey=bytes.fromhex(key)) as conn:
            dispatch(conn, None, "shutdown")
        """
    )
    proc = h.run_python(code, cpython, args=[json.dumps([smm.address, key.hex()])])
    assert proc.returncode == 0, h.describe(proc)
    smm._process.join(2)
    assert smm._process.exitcode == 0
    assert not h.segment_exists(shm.name)
    shm.close()
    smm.shutdown()


STDLIB_SERVER = textwrap.dedent(
    """
    import json, sys
    from multiprocessing.managers import SharedMemoryManager
    smm = SharedMemoryManager(authkey=bytes.fromhex(sys.argv[1]))
    smm.start()
    print(json.dumps(smm.address), flush=True)
    sys.stdin.readline()
    smm.shutdown()
    print("done", flush=True)
    """
)


def test_shmkit_client_against_stdlib_server(managers, shmkit_mod, cpython):
    key = os.urandom(16)
    server = subprocess.Popen(
        [cpython, "-c", STDLIB_SERVER, key.hex()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=h.foreign_env(),
    )
    names = []
    try:
        address = json.loads(server.stdout.readline())
        smm = managers.SharedMemoryManager(address, key)
        smm.connect()
        shm = smm.SharedMemory(256)
        sl = smm.ShareableList(["a", 2])
        named = smm.SharedMemory(32, name=h.unique_name("stdlib_srv"))
        names = [shm.name, sl.shm.name, named.name]
        assert smm._client.dispatch("list_segments") == names
        with pytest.raises(Exception, match="ValueError"):
            smm._client.release_segment("psm_never_tracked")
        bad = managers.SharedMemoryManager(address, b"wrong")
        import multiprocessing

        with pytest.raises(multiprocessing.AuthenticationError):
            bad.connect()
        for obj in (shm, sl.shm, named):
            obj.close()
        out, err = server.communicate("\n", timeout=30)
        assert server.returncode == 0, err
        assert out.strip() == "done"
        assert not any(h.segment_exists(n) for n in names)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
        for n in names:
            h.remove_segment(n)


def test_stdlib_server_closes_each_connection(managers, cpython):
    """CPython's server answers one request per connection: the shmkit client
    reconnects for each call, so many calls in a row work."""
    key = os.urandom(16)
    server = subprocess.Popen(
        [cpython, "-c", STDLIB_SERVER, key.hex()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=h.foreign_env(),
    )
    try:
        address = json.loads(server.stdout.readline())
        smm = managers.SharedMemoryManager(address, key)
        smm.connect()
        made = [smm.SharedMemory(16) for _ in range(20)]
        names = [m.name for m in made]
        for m in made:
            m.close()
        assert smm._client.list_segments() == names
        server.communicate("\n", timeout=30)
        deadline = time.monotonic() + 2
        while any(h.segment_exists(n) for n in names) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not any(h.segment_exists(n) for n in names)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
