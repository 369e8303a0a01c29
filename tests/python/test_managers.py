"""shmkit.managers.SharedMemoryManager: CPython's behaviour, and where it
does better (no leak when its parent dies, SIGTERM unlinks, shutdown goes
on past missing segments). Interop with the stdlib is in
test_managers_interop.py."""

import multiprocessing
import multiprocessing.managers
import multiprocessing.util
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import shm_helpers as h


@pytest.fixture
def managers():
    if os.environ.get("SHMKIT_REQUIRED") != "1":
        pytest.importorskip("shmkit.managers")
    import shmkit.managers

    return shmkit.managers


def test_exported(managers):
    import shmkit

    assert shmkit.SharedMemoryManager is managers.SharedMemoryManager


def test_use_before_start_is_cpythons_value_error(managers):
    smm = managers.SharedMemoryManager()
    with pytest.raises(ValueError, match="address type of None unrecognized"):
        smm.SharedMemory(9)
    with pytest.raises(ValueError, match="address type of None unrecognized"):
        smm.ShareableList([1])


def test_authkey_must_be_bytes(managers):
    with pytest.raises(TypeError):
        managers.SharedMemoryManager(authkey="secret")
    with pytest.raises(TypeError):
        managers.SharedMemoryManager(authkey=5)


def test_default_authkey_and_address(managers):
    smm = managers.SharedMemoryManager()
    assert bytes(smm._authkey) == bytes(multiprocessing.current_process().authkey)
    smm.start()
    try:
        address = smm.address
        assert isinstance(address, str)
        assert os.path.basename(address).startswith("listener-")
        assert os.path.basename(os.path.dirname(address)).startswith("pymp-")
        assert os.stat(address).st_mode & 0o777 == 0o600
        assert os.stat(os.path.dirname(address)).st_mode & 0o777 == 0o700
        # This process's private directory, made once, as CPython's default
        # address uses: it outlives the manager.
        assert os.path.dirname(address) == multiprocessing.util.get_temp_dir()
    finally:
        smm.shutdown()
    assert not os.path.exists(address)
    assert os.path.isdir(os.path.dirname(address))


def test_segments_are_unlinked_at_shutdown(managers, shmkit_mod, segments):
    smm = managers.SharedMemoryManager()
    smm.start()
    shm = smm.SharedMemory(4096)
    sl = smm.ShareableList(["howdy", 1, 2.5, None])
    named = smm.SharedMemory(64, name=segments.name("managed"))
    named_sl = smm.ShareableList([1, 2], name=segments.name("managed_sl"))
    assert isinstance(shm, shmkit_mod.SharedMemory) and shm.size >= 4096
    assert isinstance(sl, shmkit_mod.ShareableList) and list(sl) == ["howdy", 1, 2.5, None]
    names = [shm.name, sl.shm.name, named.name, named_sl.shm.name]
    assert smm.list_segments() == names
    other = shmkit_mod.SharedMemory(name=shm.name)
    other.buf[0] = 7
    assert shm.buf[0] == 7
    other.close()
    smm.shutdown()
    assert not any(h.segment_exists(n) for n in names)
    with pytest.raises(FileNotFoundError):
        shmkit_mod.SharedMemory(name=shm.name)
    for obj in (shm, sl.shm, named, named_sl.shm):
        obj.close()
    # A second shutdown is a no-op, as in CPython.
    smm.shutdown()
    # After shutdown the socket is gone: CPython's FileNotFoundError.
    with pytest.raises(FileNotFoundError):
        smm.SharedMemory(8)


def test_start_spawns_the_native_manager_program(managers):
    # `make develop` puts it beside the package; without it start() forks.
    program = managers._manager_program()
    if program is None:
        if os.environ.get("SHMKIT_REQUIRED") == "1":
            pytest.fail("python/shmkit/_bin/shmkit-manager is missing: run `make develop`")
        pytest.skip("no native manager program (run `make develop`)")
    with managers.SharedMemoryManager() as smm:
        exe = os.readlink(f"/proc/{smm._process.pid}/exe")
        assert os.path.basename(exe) == "shmkit-manager"
        assert smm.SharedMemory(16).size == 16


def test_a_forked_manager_works_without_the_program(managers, shmkit_mod, monkeypatch):
    monkeypatch.setenv("SHMKIT_MANAGER_PROGRAM", "")
    smm = managers.SharedMemoryManager()
    smm.start()
    try:
        assert os.readlink(f"/proc/{smm._process.pid}/exe") == os.path.realpath(sys.executable)
        shm = smm.SharedMemory(64)
        sl = smm.ShareableList([1, "two"])
        names = [shm.name, sl.shm.name]
        assert smm.list_segments() == names
    finally:
        smm.shutdown()
    assert smm._process.exitcode == 0
    assert not any(h.segment_exists(n) for n in names)
    shm.close()
    sl.shm.close()


def test_context_manager(managers, shmkit_mod):
    with managers.SharedMemoryManager() as smm:
        sl = smm.ShareableList("howdy")
        shm = smm.SharedMemory(size=128)
        names = [sl.shm.name, shm.name]
    assert not any(h.segment_exists(n) for n in names)
    with pytest.raises(FileNotFoundError):
        shmkit_mod.ShareableList(name=names[0])
    sl.shm.close()
    shm.close()
    with pytest.raises(multiprocessing.ProcessError):
        smm.start()


def test_start_twice_is_an_error(managers):
    with managers.SharedMemoryManager() as smm:
        with pytest.raises(multiprocessing.ProcessError, match="Already started"):
            smm.start()


def test_named_segment_that_exists_is_refused(managers, segments):
    name = segments.name("taken")
    with managers.SharedMemoryManager() as smm:
        smm.SharedMemory(16, name=name).close()
        with pytest.raises(FileExistsError):
            smm.SharedMemory(16, name=name)
        assert smm.list_segments() == [name]


def test_shutdown_continues_past_missing_segments(managers, shmkit_mod):
    smm = managers.SharedMemoryManager()
    smm.start()
    first = smm.SharedMemory(16)
    second = smm.SharedMemory(16)
    first.unlink()  # CPython's shutdown would stop here and leak `second`
    smm.shutdown()
    assert not h.segment_exists(second.name)
    first.close()
    second.close()


def test_connect_only_manager(managers):
    with managers.SharedMemoryManager(authkey=b"k") as smm:
        client = managers.SharedMemoryManager(smm.address, b"k")
        client.connect()
        shm = client.SharedMemory(32)
        assert smm.list_segments() == [shm.name]
        with pytest.raises(AttributeError):
            client.shutdown()
        with pytest.raises(AttributeError):
            with client:
                pass
        shm.close()
    assert not h.segment_exists(shm.name)


def test_wrong_authkey(managers):
    with managers.SharedMemoryManager(authkey=b"right") as smm:
        client = managers.SharedMemoryManager(smm.address, b"wrong")
        with pytest.raises(multiprocessing.AuthenticationError):
            client.connect()
        with pytest.raises(multiprocessing.AuthenticationError):
            client.SharedMemory(16)
        assert smm.list_segments() == []


def test_remote_errors(managers):
    with managers.SharedMemoryManager() as smm:
        with pytest.raises(multiprocessing.managers.RemoteError, match="ValueError"):
            smm._client.release_segment("psm_not_tracked")
        with pytest.raises(multiprocessing.managers.RemoteError, match="KeyError"):
            smm._client.dispatch("create", (None, "Foo"))
        assert smm._client.dispatch("dummy") is None


def test_failed_tracking_unlinks_the_new_segment(managers, shmkit_mod):
    smm = managers.SharedMemoryManager()
    smm.start()
    proc = smm._process
    client = smm._client
    smm.shutdown()
    # A manager pointed at a dead server: the segment must not outlive the
    # failed call.
    smm2 = managers.SharedMemoryManager(smm.address)
    before = set(os.listdir(h.DEV_SHM))
    with pytest.raises(OSError):
        smm2.SharedMemory(16)
    assert set(os.listdir(h.DEV_SHM)) - before == set()
    assert proc.exitcode == 0
    del client


def test_tcp_address(managers):
    with managers.SharedMemoryManager(("127.0.0.1", 0)) as smm:
        host, port = smm.address
        assert host == "127.0.0.1" and port > 0
        shm = smm.SharedMemory(8)
        shm.close()
    assert not h.segment_exists(shm.name)


def test_sigint_to_the_server_is_ignored(managers):
    # This process is signalled too, so it needs Python's SIGINT handler,
    # which a run started as a background job does not have (SIGINT is
    # inherited ignored); the server must ignore SIGINT either way.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _sigint_to_the_server_is_ignored(managers)
    finally:
        signal.signal(signal.SIGINT, previous)


def _sigint_to_the_server_is_ignored(managers):
    with managers.SharedMemoryManager() as smm:
        first = smm.ShareableList(range(10))
        os.kill(smm._process.pid, signal.SIGINT)
        time.sleep(0.1)
        assert smm._process.is_alive()
        second = smm.ShareableList(range(10))
        assert smm.list_segments() == [first.shm.name, second.shm.name]
        # The parent's own SIGINT handling is untouched.
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        first.shm.close()
        second.shm.close()


def test_sigterm_to_the_server_unlinks(managers):
    smm = managers.SharedMemoryManager()
    smm.start()
    shm = smm.SharedMemory(16)
    smm._process.terminate()
    smm._process.join(2)
    assert smm._process.exitcode is not None
    assert not h.segment_exists(shm.name)
    shm.close()
    smm.shutdown()  # the process is gone: nothing to do, no error


def _start_child(code):
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=h.child_env(),
    )


def test_attaching_a_managed_segment_leaves_no_leak_report():
    """CPython's manager shares its parent's resource tracker, so what its
    shutdown unlinks is forgotten there too; shmkit's shutdown makes this
    process's tracker forget the segments made through it, so tracked
    handles attached to them are not reported as leaked at exit (CPython's
    reuses_resource_tracker and SharedMemoryManager_basics tests)."""
    child = _start_child(
        """
        from shmkit.managers import SharedMemoryManager
        from shmkit.shared_memory import SharedMemory, ShareableList
        with SharedMemoryManager() as smm:
            shm = smm.SharedMemory(64)
            sl = smm.ShareableList([1, 2])
            again = SharedMemory(shm.name)          # tracked attach
            sl_again = ShareableList(name=sl.shm.name)
            print(shm.name, sl.shm.name, flush=True)
        """
    )
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    names = out.split()
    assert len(names) == 2 and not any(h.segment_exists(n) for n in names)
    assert "resource_tracker" not in err, err


def test_parent_sigkill_unlinks_everything_within_2s(managers):
    child = _start_child(
        """
        import sys, time
        from shmkit.managers import SharedMemoryManager
        smm = SharedMemoryManager()
        smm.start()
        names = [smm.SharedMemory(4096).name, smm.ShareableList([1, 'x']).shm.name]
        print(smm._process.pid, smm.address, *names, flush=True)
        time.sleep(60)
        """
    )
    try:
        pid, address, *names = child.stdout.readline().split()
        assert len(names) == 2 and all(h.segment_exists(n) for n in names)
        child.kill()
        child.wait()
        assert h.wait_gone(names, 2.0), names
        deadline = time.monotonic() + 2
        while os.path.exists(address) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not os.path.exists(address)
    finally:
        child.kill()
        child.communicate()


def test_unshut_manager_is_shut_down_at_exit(managers):
    proc = h.run_python(
        textwrap.dedent(
            """
            from shmkit.managers import SharedMemoryManager
            smm = SharedMemoryManager()
            smm.start()
            print(smm.SharedMemory(64).name, smm._process.pid, flush=True)
            """
        )
    )
    assert proc.returncode == 0, h.describe(proc)
    name, pid = proc.stdout.split()
    assert not h.segment_exists(name)
    assert proc.stderr == ""


def test_initializer_runs_in_the_manager_process(managers, tmp_path):
    marker = tmp_path / "pid"
    with managers.SharedMemoryManager() as smm:
        pass
    smm = managers.SharedMemoryManager()
    smm.start(_write_pid, (str(marker),))
    try:
        assert int(marker.read_text()) == smm._process.pid
    finally:
        smm.shutdown()
    with pytest.raises(TypeError):
        managers.SharedMemoryManager().start(initializer=5)


def _write_pid(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))


def test_a_burst_is_tracked_in_order_and_all_unlinked(managers):
    smm = managers.SharedMemoryManager()
    smm.start()
    made = [smm.SharedMemory(16) for _ in range(300)]
    names = [m.name for m in made]
    for m in made:
        m.close()
    assert smm.list_segments() == names
    more = [smm.SharedMemory(16) for _ in range(300)]
    for m in more:
        m.close()
    smm.shutdown()  # without waiting for the tracking to catch up
    assert not any(h.segment_exists(n) for n in names + [m.name for m in more])


def test_segments_made_while_the_server_stops_are_unlinked(managers):
    smm = managers.SharedMemoryManager()
    smm.start()
    smm.SharedMemory(16).close()
    # Someone else (a stdlib client, say) shuts the server down, while this
    # process goes on making segments: none may survive.
    smm._client.shutdown()
    made = []
    for _ in range(200):
        try:
            shm = smm.SharedMemory(16)
        except OSError:
            continue
        made.append(shm.name)
        shm.close()
    smm._process.join(5)
    assert smm._process.exitcode == 0
    assert not [n for n in made if h.segment_exists(n)]
    smm.shutdown()


def test_parent_sigkill_right_after_a_burst_leaks_nothing(managers, tmp_path):
    """Names still waiting in the tracking channel when the parent dies are
    unlinked by the manager process too."""
    out = tmp_path / "names"
    code = textwrap.dedent(
        f"""
        import os, signal
        from shmkit.managers import SharedMemoryManager
        smm = SharedMemoryManager()
        smm.start()
        names = []
        for _ in range(300):
            shm = smm.SharedMemory(64)
            names.append(shm.name)
        with open({str(out)!r}, "w") as f:
            f.write(" ".join(names))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = h.run_python(code)
    assert proc.returncode == -signal.SIGKILL, h.describe(proc)
    names = out.read_text().split()
    assert len(names) == 300
    assert h.wait_gone(names, 2.0), [n for n in names if h.segment_exists(n)][:5]


def test_names_with_a_newline_are_tracked_exactly(managers, segments):
    # The tracking channel is line-based: such a name goes the slow way.
    odd = segments.name("nl") + "\n" + "x"
    plain = segments.name("bang") + "!"
    with managers.SharedMemoryManager() as smm:
        a = smm.SharedMemory(16, name=odd)
        b = smm.SharedMemory(16, name=plain)
        assert sorted(smm.list_segments()) == sorted([odd, plain])
        a.close()
        b.close()
    assert not h.segment_exists(odd) and not h.segment_exists(plain)


def test_import_shmkit_does_not_import_the_manager():
    proc = h.run_python(
        "import sys, shmkit; assert 'shmkit.managers' not in sys.modules; "
        "assert shmkit.SharedMemoryManager is sys.modules['shmkit.managers'].SharedMemoryManager"
    )
    assert proc.returncode == 0, h.describe(proc)


def _ls_entry(name):
    """``shmkit ls --json``'s entry for ``name``, or None."""
    out = subprocess.run(
        [sys.executable, "-m", "shmkit", "ls", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=h.child_env(),
    )
    assert out.returncode == 0, out.stderr
    import json

    listing = json.loads(out.stdout)
    entries = listing["segments"] if isinstance(listing, dict) else listing
    return next((e for e in entries if e["name"] == name), None)


@pytest.mark.parametrize("program", [None, ""], ids=["native", "forked"])
def test_a_managers_segments_are_tracked_by_the_manager(managers, program):
    """A segment whose creator closed it belongs to the live manager: ``ls``
    shows the manager process's pid tracking it, not a leak; shutdown
    unlinks it and no leak is reported."""
    env = h.child_env()
    if program is not None:
        env["SHMKIT_MANAGER_PROGRAM"] = program
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import sys
                from shmkit.managers import SharedMemoryManager
                smm = SharedMemoryManager()
                smm.start()
                shm = smm.SharedMemory(4096)
                shm.close()
                smm.list_segments()   # waits until the manager tracks it
                print(smm._process.pid, shm.name, flush=True)
                sys.stdin.readline()
                smm.shutdown()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        pid, name = child.stdout.readline().split()
        entry = _ls_entry(name)
        assert entry is not None and entry["tracked_by"] == [int(pid)], entry
        assert entry["state"] != "leaked", entry
        child.stdin.write("\n")
        child.stdin.flush()
        _, err = child.communicate(timeout=30)
        assert child.returncode == 0, err
        assert not h.segment_exists(name)
        assert "leaked" not in err, err
    finally:
        child.kill()
        child.communicate()


def test_parent_sigkill_spares_a_segment_a_live_process_maps(managers):
    """The manager's parent dies while another process maps one of its
    segments: that one survives (with its data), and the unused one is
    unlinked at once. The user here is a shmkit process; whether the
    manager's own leak tracker later spares a stdlib user too is the
    tracker's rule, tested with the tracker."""
    child = _start_child(
        """
        import subprocess, sys, time
        from shmkit.managers import SharedMemoryManager
        smm = SharedMemoryManager()
        smm.start()
        used, unused = smm.SharedMemory(4096), smm.SharedMemory(4096)
        user = subprocess.Popen(
            [sys.executable, "-c",
             "import sys, time\\n"
             "from shmkit.shared_memory import SharedMemory\\n"
             "s = SharedMemory(sys.argv[1])\\n"
             "s.buf[:2] = b'ok'\\n"
             "print('mapped', flush=True)\\n"
             "time.sleep(60)\\n",
             used.name],
            stdout=subprocess.PIPE, text=True)
        assert user.stdout.readline() == "mapped\\n"
        smm.list_segments()
        print(user.pid, used.name, unused.name, flush=True)
        time.sleep(60)
        """
    )
    user = used = None
    try:
        user, used, unused = child.stdout.readline().split()
        child.kill()
        child.wait()
        assert h.wait_gone([unused], 2.0), unused
        time.sleep(0.3)
        assert h.segment_exists(used), "a segment a live process maps was unlinked"
        assert h.segment_bytes(used)[:2] == b"ok"
        # Its user's death leaves it to the user's own tracker: gone too.
        os.kill(int(user), signal.SIGKILL)
        user = None
        assert h.wait_gone([used], 2.0), used
    finally:
        child.kill()
        child.communicate()
        if user is not None:
            os.kill(int(user), signal.SIGKILL)
        if used is not None:
            h.remove_segment(used)


def test_a_forked_manager_sharing_our_tracker_keeps_its_registrations(managers):
    """A manager forked after this process started tracking shares its
    tracker table: the names it takes over stay registered there (the
    parent's confirmation must not forget them), until shutdown."""
    code = textwrap.dedent(
        """
        import json, subprocess, sys
        from shmkit.managers import SharedMemoryManager
        from shmkit.shared_memory import SharedMemory
        mine = SharedMemory(create=True, size=64)   # starts our tracker
        smm = SharedMemoryManager()
        smm.start(initializer=int)                    # forks
        names = [smm.SharedMemory(64).name for _ in range(300)]
        smm.list_segments()
        out = subprocess.run([sys.executable, "-m", "shmkit", "ls", "--json"],
                             capture_output=True, text=True, check=True)
        listing = json.loads(out.stdout)
        entries = listing["segments"] if isinstance(listing, dict) else listing
        tracked = {e["name"] for e in entries if e["tracked_by"]}
        print(sum(n in tracked for n in names))
        smm.shutdown()
        mine.close()
        mine.unlink()
        """
    )
    r = h.run_python(code)
    assert r.returncode == 0, h.describe(r)
    assert r.stdout.split() == ["300"], h.describe(r)
    assert "leaked" not in r.stderr, r.stderr
