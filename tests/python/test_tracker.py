"""shmkit's leak tracker (crates/shmkit/src/tracker): segments are unlinked
when every process that created or attached them with ``track=True`` has
gone, however it went, and never while one still has them open (gh-82300).

Children are separate interpreters (``python -c``) or multiprocessing
children, so that the tracker of this pytest process is not involved.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

import shm_helpers as h

WARNING = "resource_tracker: There appear to be 1 leaked shared_memory objects to clean up at shutdown"

HOLD = """if 1:
    import sys
    from shmkit.shared_memory import SharedMemory, ShareableList
    mode, name = sys.argv[1], sys.argv[2]
    if mode == "create":
        obj = SharedMemory(name, create=True, size=4096)
    elif mode == "create-untracked":
        obj = SharedMemory(name, create=True, size=4096, track=False)
    elif mode == "attach":
        obj = SharedMemory(name)
    elif mode == "list":
        obj = ShareableList([1, "two", 3.0], name=name)
    elif mode == "list-untracked":
        obj = ShareableList([1, "two", 3.0], name=name, track=False)
    elif mode == "create-unlink":
        obj = SharedMemory(name, create=True, size=4096)
    print("ready", flush=True)
    sys.stdin.readline()
    if mode == "create-unlink":
        obj.close()
        obj.unlink()
        try:
            obj.unlink()
        except FileNotFoundError:
            print("second unlink: FileNotFoundError", flush=True)
"""


def start(mode, name):
    p = subprocess.Popen(
        [sys.executable, "-c", HOLD, mode, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=h.child_env(),
    )
    assert p.stdout.readline().strip() == "ready", p.stderr.read()
    return p


def finish(p, kill=False):
    """Ends ``p`` (SIGKILL or a normal exit); returns (stdout, stderr). The
    stderr pipe closes only once the child's watcher has exited too."""
    if kill:
        p.kill()
        out, err = p.communicate(timeout=30)
    else:
        out, err = p.communicate("go\n", timeout=30)
    return out, err


@pytest.fixture
def tracked_name(segments):
    return segments.name("trk")


def test_sigkilled_creator_is_unlinked_within_2s_with_cpythons_warning(tracked_name):
    p = start("create", tracked_name)
    p.kill()
    killed = time.monotonic()
    p.wait()
    assert h.wait_gone(tracked_name, 2.0)
    assert time.monotonic() - killed < 2.0
    _, err = p.communicate(timeout=30)
    assert WARNING in err


@pytest.mark.parametrize("how", ["exit", "exception"])
def test_creator_exiting_without_unlink_is_cleaned_up(tracked_name, how):
    code = (
        "import sys\nfrom shmkit.shared_memory import SharedMemory\n"
        "s = SharedMemory(sys.argv[1], create=True, size=64)\n"
        + ("raise RuntimeError('boom')\n" if how == "exception" else "")
    )
    r = h.run_python(code, args=(tracked_name,))
    assert (r.returncode != 0) == (how == "exception"), h.describe(r)
    assert h.wait_gone(tracked_name, 2.0)
    assert WARNING in r.stderr


def test_segment_survives_its_killed_creator_while_a_reader_lives(tracked_name):
    creator = start("create", tracked_name)
    reader = start("attach", tracked_name)
    _, err = finish(creator, kill=True)
    assert h.segment_exists(tracked_name), "unlinked under a live reader (gh-82300)"
    assert "still open in another process" in err
    _, err = finish(reader, kill=True)
    assert h.wait_gone(tracked_name, 2.0)
    assert WARNING in err


@pytest.mark.parametrize("mode", ["create-untracked", "list-untracked"])
def test_untracked_segments_are_never_unlinked_and_never_warned_about(mode, tracked_name):
    p = start(mode, tracked_name)
    _, err = finish(p, kill=True)
    time.sleep(0.3)
    assert h.segment_exists(tracked_name)
    assert "resource_tracker" not in err


def test_shareable_lists_are_tracked_like_segments(tracked_name):
    p = start("list", tracked_name)
    _, err = finish(p, kill=True)
    assert h.wait_gone(tracked_name, 2.0)
    assert WARNING in err


def test_a_name_unlinked_by_another_process_is_counted_as_cpython_counts(tracked_name):
    """CPython's tracker counts every name registered and not unregistered,
    and prints the FileNotFoundError of each one someone else removed;
    TestResourceTracker.test_resource_tracker checks both."""
    p = start("create", tracked_name)
    assert h.remove_segment(tracked_name)
    _, err = finish(p, kill=True)
    assert WARNING in err
    assert (
        f"resource_tracker: '/{tracked_name}': [Errno 2] No such file or directory: "
        f"'/{tracked_name}'"
    ) in err


def test_attaching_the_moment_the_creator_is_reaped_finds_it_gone(tracked_name):
    """CPython's test_shared_memory_cleaned_after_process_termination: the
    attach waits for the child's watcher, which marked the segment as the
    child began to exit, and finds it unlinked."""
    from shmkit.shared_memory import SharedMemory

    for _ in range(5):
        p = start("create", tracked_name)
        p.terminate()
        p.wait()
        try:
            kept = SharedMemory(tracked_name)
        except FileNotFoundError:
            kept = None
        _, err = finish(p)
        if kept is not None:
            kept.close()
            kept.unlink()
        assert kept is None, "attached a segment whose only user was dead"
        assert WARNING in err


def test_unlink_unregisters_and_a_second_unlink_is_quiet(tracked_name):
    p = start("create-unlink", tracked_name)
    out, err = finish(p)
    assert "second unlink: FileNotFoundError" in out
    assert not h.segment_exists(tracked_name)
    assert "resource_tracker" not in err, err


@pytest.mark.parametrize("mod", ["stdlib", "shmkit"])
def test_gh82300_an_attacher_exiting_leaves_the_segment_alone(mod, segments):
    """CPython's resource tracker unlinks a segment when an unrelated process
    that merely attached exits (gh-82300); shmkit's does not."""
    modname = h.STDLIB_MODULE if mod == "stdlib" else h.SHMKIT_MODULE
    impl = __import__(modname, fromlist=["SharedMemory"])
    shm = impl.SharedMemory(create=True, size=64)
    segments.add(shm)
    code = (
        f"import sys\nfrom {modname} import SharedMemory\n"
        "s = SharedMemory(sys.argv[1])\ns.close()\n"
    )
    r = h.run_python(code, args=(shm.name,))
    assert r.returncode == 0, h.describe(r)
    if mod == "stdlib":
        # The bug, as the stdlib has it (3.11; 3.13 too with its default
        # track=True): the attacher's tracker destroyed the segment.
        assert not h.segment_exists(shm.name)
        assert WARNING in r.stderr
        h.untrack(impl, shm)
    else:
        assert h.segment_exists(shm.name)
        # CPython's count of what the attacher left registered, then why it
        # was not unlinked (CPython 3.13's test_shared_memory_tracking needs
        # the first line).
        assert WARNING in r.stderr
        assert "still open in another process" in r.stderr


MP_DRIVER = """if 1:
    import multiprocessing as mp, sys, time
    from shmkit.shared_memory import SharedMemory

    def creator(name, q):
        s = SharedMemory(name, create=True, size=4096)
        q.put(mp.current_process().pid)
        time.sleep(600)

    def reader(name, q):
        s = SharedMemory(name)
        q.put(mp.current_process().pid)
        time.sleep(600)

    if __name__ == "__main__":
        ctx = mp.get_context(sys.argv[1])
        name = sys.argv[2]
        q = ctx.Queue()
        c = ctx.Process(target=creator, args=(name, q)); c.start()
        cpid = q.get(timeout=20)
        r = ctx.Process(target=reader, args=(name, q)); r.start()
        rpid = q.get(timeout=20)
        print(cpid, rpid, flush=True)
        sys.stdin.readline()
"""


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_children(method, tracked_name, tmp_path):
    # A file, not -c: spawn and forkserver children import __main__.
    driver = tmp_path / "driver.py"
    driver.write_text(MP_DRIVER)
    p = subprocess.Popen(
        [sys.executable, str(driver), method, tracked_name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=h.child_env(),
    )
    try:
        line = p.stdout.readline()
        assert line.strip(), p.stderr.read()
        cpid, rpid = map(int, line.split())
        os.kill(cpid, signal.SIGKILL)
        time.sleep(0.5)
        assert h.segment_exists(tracked_name), "unlinked under a live reader"
        os.kill(rpid, signal.SIGKILL)
        assert h.wait_gone(tracked_name, 2.0)
    finally:
        p.kill()
        _, err = p.communicate(timeout=30)
    assert WARNING in err


def test_threads_create_and_unlink_concurrently_without_noise():
    code = """if 1:
        import threading
        from shmkit.shared_memory import SharedMemory
        def work():
            for _ in range(200):
                s = SharedMemory(create=True, size=64)
                s.close()
                s.unlink()
        ts = [threading.Thread(target=work) for _ in range(4)]
        [t.start() for t in ts]
        [t.join() for t in ts]
    """
    r = h.run_python(code)
    assert r.returncode == 0, h.describe(r)
    assert "resource_tracker" not in r.stderr
