"""The ``shmkit`` command (``python -m shmkit``) against real segments and
real processes: ``ls``, ``show``, ``rm`` and ``gc`` on a ShareableList made
by the stdlib, on segments leaked by a SIGKILLed creator, on segments a live
child still uses, and on bad input.

Other test runs share this machine's /dev/shm: every ``gc`` here names the
segments it may remove.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import shm_helpers as h

pytest.importorskip("shmkit._shmkit")

NOBODY = 65534


def shmkit(*args):
    return subprocess.run(
        [sys.executable, "-m", "shmkit", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def shmkit_as_nobody(*args):
    """Runs the command in a forked child that has become ``nobody`` (this
    interpreter lives under /root, which nobody may not enter, so the child
    runs the command in-process instead of exec'ing Python again)."""
    from shmkit.__main__ import main

    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = main(list(args))
        finally:
            os._exit(code)
    os.close(out_w)
    os.close(err_w)
    err = []
    with os.fdopen(out_r, "r") as out_f, os.fdopen(err_r, "r") as err_f:
        reader = threading.Thread(target=lambda: err.append(err_f.read()))
        reader.start()
        out = out_f.read()
        reader.join()
    err = err[0]
    _, status = os.waitpid(pid, 0)
    return subprocess.CompletedProcess(args, os.waitstatus_to_exitcode(status), out, err)


def no_traceback(result):
    assert "Traceback" not in result.stderr and "panicked" not in result.stderr, result.stderr


def ls_json():
    result = shmkit("ls", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def ls_entry(name, until=None, timeout=5.0):
    """The ``ls --json`` entry of ``name``, once ``until(entry)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        entries = [s for s in ls_json()["segments"] if s["name"] == name]
        assert entries, f"{name} not listed"
        if until is None or until(entries[0]) or time.monotonic() > deadline:
            return entries[0]
        time.sleep(0.05)


def user_pids(entry):
    return sorted(u["pid"] for u in entry["users"])


class Child:
    """A Python child running ``code``; it prints ``ready`` (and maybe a
    value after it) when it holds what it should."""

    def __init__(self, code, **fmt):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code).format(**fmt)],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        assert line.startswith("ready"), f"the child failed: {line!r}"
        self.said = line.split()[1:]

    @property
    def pid(self):
        return self.proc.pid

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc.stdout.close()


HOLD_SHMKIT = """
    import time
    from shmkit.shared_memory import SharedMemory
    shm = SharedMemory({name!r}, create=True, size=4096, track=False)
    print("ready", flush=True)
    time.sleep(120)
"""

# The stdlib's resource tracker would unlink the segment when the child
# dies: the test kills the tracker first (its pid is printed).
HOLD_STDLIB = """
    import time
    from multiprocessing import resource_tracker, shared_memory
    shm = shared_memory.SharedMemory({name!r}, create=True, size=4096)
    print("ready", resource_tracker._resource_tracker._pid, flush=True)
    time.sleep(120)
"""

# Maps the segment and closes its descriptor: visible in /proc/PID/maps only
# (Python's mmap module would keep a duplicate descriptor, so libc's mmap).
MAP_ONLY = """
    import ctypes, os, time
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    fd = os.open("/dev/shm/{name}", os.O_RDONLY)
    assert libc.mmap(None, 4096, 1, 1, fd, 0) not in (None, ctypes.c_void_p(-1).value)
    os.close(fd)
    print("ready", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def children():
    made = []
    yield lambda code, **fmt: made.append(Child(code, **fmt)) or made[-1]
    for child in made:
        child.kill()


def test_a_stdlib_list_is_recognised_by_ls_and_decoded_by_show(stdlib_mod, segments):
    name = segments.name("list")
    values = ["howdy", b"HoWdY", -273.154, 100, None, True, 42, "é" * 5, "€" * 5]
    sl = stdlib_mod.ShareableList(values, name=name)
    segments.add(sl.shm)

    entry = ls_entry(name)
    assert entry["holds"] == {"kind": "shareable_list", "items": len(values)}
    assert entry["state"] == "in_use" and os.getpid() in user_pids(entry)
    assert entry["mode"] == "0600" and entry["size"] == sl.shm.size
    if type(sl.shm).__module__.startswith("multiprocessing"):  # not under shmkit.install()
        assert entry["tracked_by"] == []  # the stdlib's tracker cannot be read

    result = shmkit("show", name)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"{name}: a ShareableList of 9 items in {sl.shm.size} bytes, "
        f"format {sl.format!r}"
    )
    rows = {int(line.split()[0]): line for line in lines[2:]}
    for i in range(7):
        cells = rows[i].split(None, 4)
        assert cells[2] == sl._get_packing_format(i)
        assert cells[3] == "8"
        assert cells[4] == repr(values[i])
    # The stdlib cut 'é'*5 to four characters (gh-88336), and '€'*5 in the
    # middle of one, which only that item's line reports.
    assert rows[7].endswith(repr("é" * 4))
    assert rows[8].split()[1:4] == ["str", "8s", "8"]
    assert "<unreadable:" in rows[8] and "UTF-8" in rows[8]

    doc = json.loads(shmkit("show", "--json", name).stdout)
    assert doc["kind"] == "shareable_list" and doc["format"].startswith("8s8sdq")
    assert [i.get("repr") for i in doc["items"][:7]] == [repr(v) for v in values[:7]]
    assert doc["items"][2]["value"] == -273.154 and doc["items"][4]["value"] is None
    assert doc["items"][8]["format"] == "8s" and "UTF-8" in doc["items"][8]["error"]

    hexdump = shmkit("show", "--hex", name)
    assert hexdump.stdout.splitlines()[1].startswith("00000000: 09 00 00 00")
    data = 8 * (len(values) + 2)  # where the items start
    ranged = shmkit("show", name, "--offset", str(data), "--length", "5")
    assert ranged.stdout.splitlines()[1].startswith(f"{data:08x}: 68 6f 77 64 79")


@pytest.mark.parametrize("maker", ["shmkit", "stdlib"])
def test_a_segment_leaked_by_a_sigkilled_creator_is_found_and_collected(segments, children, maker):
    name = segments.name("leak")
    child = children(HOLD_SHMKIT if maker == "shmkit" else HOLD_STDLIB, name=name)
    assert child.pid in user_pids(ls_entry(name))
    if maker == "stdlib":
        os.kill(int(child.said[0]), signal.SIGKILL)  # its resource tracker
    child.kill()

    entry = ls_entry(name, until=lambda e: e["state"] == "leaked")
    assert entry["state"] == "leaked" and entry["users"] == [] and entry["locks"] == []

    dry = shmkit("gc", "--dry-run", name)
    assert dry.returncode == 0, dry.stderr
    assert [line.split()[:3] for line in dry.stdout.splitlines()] == [["would", "remove", name]]
    assert h.segment_exists(name)

    gc = shmkit("gc", "--prefix", name)
    assert gc.returncode == 0, gc.stderr
    assert [line.split()[:2] for line in gc.stdout.splitlines()] == [["removed", name]]
    assert not h.segment_exists(name)


@pytest.mark.parametrize("how", ["shmkit", "stdlib", "map_only"])
def test_a_segment_a_live_child_uses_is_left_alone(segments, children, how):
    name = segments.name("busy")
    if how == "map_only":
        h.remove_segment(name)
        with open(h.shm_path(name), "wb") as f:
            f.truncate(4096)
        child = children(MAP_ONLY, name=name)
    else:
        child = children(HOLD_SHMKIT if how == "shmkit" else HOLD_STDLIB, name=name)
    if how == "stdlib":
        # Else the child's resource tracker unlinks it when the child dies.
        os.kill(int(child.said[0]), signal.SIGKILL)

    entry = ls_entry(name, until=lambda e: user_pids(e) == [child.pid])
    assert entry["state"] == "in_use" and user_pids(entry) == [child.pid], entry
    (user,) = entry["users"]
    assert user["mapped"] is True and user["open"] is (how != "map_only")
    assert bool(entry["locks"]) is (how == "shmkit")  # only shmkit takes a lock

    gc = shmkit("gc", name)
    assert gc.returncode == 0 and gc.stdout == "", gc
    rm = shmkit("rm", name)
    assert rm.returncode == 3, rm
    assert rm.stderr.strip() == f"shmkit: {name}: in use by {child.pid} (python); not removed"
    assert h.segment_exists(name)

    child.kill()
    ls_entry(name, until=lambda e: e["state"] == "leaked")
    rm = shmkit("rm", name)
    assert rm.returncode == 0 and rm.stdout == f"removed {name}\n", rm
    assert not h.segment_exists(name)


IDLE_TRACKED = """
    import time
    from shmkit.shared_memory import SharedMemory
    SharedMemory({name!r}, create=True, size=4096).close()  # tracked, then unused
    print("ready", flush=True)
    time.sleep(120)
"""


def test_an_unused_segment_that_a_live_shmkit_process_tracks_is_idle(segments, children):
    name = segments.name("idle")
    child = children(IDLE_TRACKED, name=name)
    entry = ls_entry(name, until=lambda e: e["users"] == [])
    assert entry["state"] == "idle" and entry["tracked_by"] == [child.pid], entry
    gc = shmkit("gc", name)
    assert gc.returncode == 0 and gc.stdout == "", gc
    assert h.segment_exists(name)
    child.kill()  # its tracker unlinks it now
    deadline = time.monotonic() + 5
    while h.segment_exists(name) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not h.segment_exists(name)


def test_bad_names_and_missing_segments_are_one_line_errors(segments):
    missing = segments.name("missing")
    for args in (["show", "a/b"], ["rm", "a/b"], ["gc", "a/b"], ["show", missing], ["rm", missing]):
        result = shmkit(*args)
        assert result.returncode == 1, (args, result)
        no_traceback(result)
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith("shmkit: ")
        assert "does not exist" in result.stderr or "invalid shared memory name" in result.stderr
    usage = shmkit("rm")
    assert usage.returncode == 2 and "Usage" in usage.stderr
    help_text = shmkit("--help")
    assert help_text.returncode == 0 and "Exit status:" in help_text.stdout
    for command in ("ls", "show", "rm", "gc", "serve", "demo"):
        assert f"  {command} " in help_text.stdout


def test_no_permission_is_a_one_line_error(segments):
    name = segments.name("noperm")
    fd = os.open(h.shm_path(name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.ftruncate(fd, 64)
    os.close(fd)
    os.chmod(h.shm_path(name), 0)
    run = shmkit_as_nobody if os.geteuid() == 0 else shmkit
    for args in (["show", name], ["rm", name]):
        result = run(*args)
        assert result.returncode == 1, (args, result)
        no_traceback(result)
        assert result.stderr == f'shmkit: permission denied for shared memory segment "{name}"\n'
    assert h.segment_exists(name)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_without_root_an_unused_segment_is_unknown_not_leaked(segments):
    name = segments.name("unknown")
    fd = os.open(h.shm_path(name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
    os.ftruncate(fd, 64)
    os.close(fd)
    assert ls_entry(name, until=lambda e: e["state"] == "leaked")["state"] == "leaked"

    listing = shmkit_as_nobody("ls", "--json")
    assert listing.returncode == 0, listing.stderr
    doc = json.loads(listing.stdout)
    (entry,) = [s for s in doc["segments"] if s["name"] == name]
    assert entry["state"] == "unknown" and doc["unreadable_processes"]
    # The contents are still readable (mode 0644).
    assert entry["holds"] == {"kind": "data"}

    gc = shmkit_as_nobody("gc", name)
    assert gc.returncode == 0 and gc.stdout == ""
    assert "could not be inspected" in gc.stderr
    rm = shmkit_as_nobody("rm", name)
    assert rm.returncode == 3 and "cannot tell whether it is in use" in rm.stderr
    assert h.segment_exists(name)


def test_ls_table_and_json_agree(shmkit_mod, segments):
    name = segments.name("table")
    shm = segments.add(shmkit_mod.SharedMemory(name, create=True, size=3000))
    table = shmkit("ls")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NAME", "SIZE", "MODE", "OWNER", "AGE", "STATE", "USERS", "TRACKED", "HOLDS"]
    (row,) = [r.split() for r in rows if r.split()[0] == name]
    assert row[1:3] == ["2.9K", "0600"] and row[5:7] == ["in", "use"]
    assert row[7] == f"{os.getpid()}(python)" or row[7].startswith(f"{os.getpid()}(")
    # shmkit's tracker is readable: this process tracks it (track=True).
    assert row[8].startswith(f"{os.getpid()}(") and row[9] == "data"
    entry = ls_entry(name)
    assert entry["tracked_by"] == [os.getpid()]
    shm.close()


def test_demo_stays_python_and_the_rest_is_native():
    demo = shmkit("demo", "--help")
    assert demo.returncode == 0 and "--workers" in demo.stdout
    version = shmkit("--version")
    assert version.returncode == 0 and version.stdout.startswith("shmkit ")
    # The script `pip install` makes (maturin develop makes it too).
    script = os.path.join(os.path.dirname(sys.executable), "shmkit")
    if os.path.exists(script):
        listing = subprocess.run([script, "ls", "--json"], capture_output=True, text=True, timeout=60)
        assert listing.returncode == 0 and "segments" in json.loads(listing.stdout)


def _raw_controls(text):
    """Characters a terminal acts on instead of printing."""
    return [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F or c == "\u202e"]


def _git_quoted(name):
    out = '"'
    for b in name.encode():
        if b == 0x0A:
            out += "\\n"
        elif b == 0x07:
            out += "\\a"
        elif 0x20 <= b <= 0x7E:
            out += chr(b)
        else:
            out += f"\\{b:03o}"
    return out + '"'


def test_hostile_names_are_escaped_by_every_command(segments, children):
    base = segments.name("hostile")
    names = [
        segments.add_name(base + suffix)
        for suffix in ("\x1b]0;pwned\x07", "\x1b[2J", "\nforged_row  64B  0600  root", "\u202eevil")
    ]
    for name in names:
        fd = os.open(h.shm_path(name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        os.ftruncate(fd, 64)
        os.close(fd)
    busy = names[1]
    child = children(HOLD_OPEN, name=busy)
    quoted = [_git_quoted(n) for n in names]

    table = shmkit("ls")
    assert table.returncode == 0, table.stderr
    assert _raw_controls(table.stdout) == [] and _raw_controls(table.stderr) == []
    assert not any(line.startswith("forged_row") for line in table.stdout.splitlines())
    mode_at = table.stdout.splitlines()[0].index("MODE")
    for q in quoted:
        (row,) = [line for line in table.stdout.splitlines() if line.startswith(q)]
        assert row[mode_at:].startswith("0600  "), row
    assert [s["name"] for s in ls_json()["segments"] if s["name"].startswith(base)] == sorted(names)

    show = shmkit("show", names[0])
    assert show.returncode == 0 and show.stdout.startswith(f"{quoted[0]}: 64 bytes\n"), show
    missing = shmkit("show", base + "_gone\x1b[2J")
    assert missing.returncode == 1 and _raw_controls(missing.stderr) == [], missing

    rm = shmkit("rm", busy)
    assert rm.returncode == 3, rm
    assert rm.stderr == f"shmkit: {quoted[1]}: in use by {child.pid} (python); not removed\n"

    free = [n for n in names if n != busy]
    dry = shmkit("gc", "--dry-run", *free)
    assert dry.returncode == 0 and _raw_controls(dry.stdout) == [], dry
    assert sorted(line.split(" (")[0] for line in dry.stdout.splitlines()) == sorted(
        f"would remove {_git_quoted(n)}" for n in free
    )
    gc = shmkit("gc", *free)
    assert gc.returncode == 0 and _raw_controls(gc.stdout) == [], gc
    assert len(gc.stdout.splitlines()) == len(free)
    assert not any(h.segment_exists(n) for n in free)

    child.kill()
    rm = shmkit("rm", busy)
    assert rm.returncode == 0 and rm.stdout == f"removed {quoted[1]}\n", rm


HOLD_OPEN = """
    import os, time
    fd = os.open("/dev/shm/" + {name!r}, os.O_RDONLY)
    print("ready", flush=True)
    time.sleep(120)
"""


def test_rm_force_removes_a_segment_in_use_and_says_who_keeps_it(segments, children):
    name = segments.name("force")
    child = children(HOLD_SHMKIT, name=name)
    ls_entry(name, until=lambda e: user_pids(e) == [child.pid])
    rm = shmkit("rm", name)
    assert rm.returncode == 3 and h.segment_exists(name), rm

    rm = shmkit("rm", "--force", name)
    assert rm.returncode == 0 and rm.stderr == "", rm
    assert rm.stdout == (
        f"removed {name}, which was in use by {child.pid} (python): "
        "they keep its memory until they let go of it\n"
    )
    assert not h.segment_exists(name)
    with open(f"/proc/{child.pid}/maps") as f:
        assert f"/dev/shm/{name} (deleted)" in f.read()


def test_notes_about_what_could_not_be_read_need_v(segments):
    name = segments.name("quiet")
    fd = os.open(h.shm_path(name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.close(fd)
    quiet = shmkit("ls")
    assert quiet.returncode == 0 and "could not be read" not in quiet.stderr, quiet.stderr
    assert shmkit("gc", "--dry-run", name).stderr == ""
    # Where some process's mappings cannot be read (pid 1 in some
    # containers), -v says so; -v is accepted before or after the command.
    try:
        open("/proc/1/maps", "rb").read()
        maps_readable = True
    except OSError:
        maps_readable = False
    for args in (["-v", "ls"], ["ls", "--verbose"]):
        loud = shmkit(*args)
        assert loud.returncode == 0, loud
        if not maps_readable and os.access("/proc/1/fd", os.R_OK):
            assert "note: the mappings of 1 (" in loud.stderr, loud.stderr


MANAGED_THEN_CLOSED = """
    import time
    from shmkit.managers import SharedMemoryManager
    with SharedMemoryManager() as smm:
        s = smm.SharedMemory(4096)
        name = s.name
        s.close()
        # Until the manager confirms it has the name, this process's tracker
        # keeps it too; list_segments() waits for that.
        smm.list_segments()
        print("ready", name, smm._process.pid, flush=True)
        time.sleep(120)
"""


def test_gc_leaves_a_live_manager_s_segment_alone(children):
    """A manager's segment that its creator closed is unused, but the
    manager will unlink it at shutdown: idle, not leaked."""
    child = children(MANAGED_THEN_CLOSED)
    name, manager = child.said[0], int(child.said[1])
    try:
        entry = ls_entry(name, until=lambda e: e["users"] == [])
        assert entry["state"] == "idle", entry
        assert [t["pid"] for t in entry["trackers"]] == [manager], entry
        assert entry["trackers"][0]["manager"] is True, entry
        assert f"{manager}(shmkit-manager)" in shmkit("ls").stdout
        gc = shmkit("gc", "--prefix", name)
        assert gc.returncode == 0 and gc.stdout == "", gc
        gc = shmkit("gc", name)
        assert gc.returncode == 0 and gc.stdout == "", gc
        assert h.segment_exists(name)
    finally:
        child.kill()
        # The manager sees its parent die and unlinks the segment.
        deadline = time.monotonic() + 5
        while h.segment_exists(name) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert not h.segment_exists(name)
