"""Helpers for the shmkit pytest suite.

Imported by ``conftest.py`` and the test modules, and by the children that
``multiprocessing`` starts (spawn and forkserver children import the targets
below by module name, so they must live in a plain module, not in a test
file or in conftest).
"""

import errno
import functools
import glob
import importlib
import os
import re
import secrets
import shutil
import struct
import subprocess
import sys
import time

DEV_SHM = "/dev/shm"

# Names the tests choose themselves start with this, so that a leak is easy to
# attribute and to clean by hand: ls /dev/shm | grep shmkit_t
TEST_PREFIX = "shmkit_t"

GENERATED_NAME = re.compile(r"\Apsm_[0-9a-f]{8}\Z")

STDLIB_MODULE = "multiprocessing.shared_memory"
SHMKIT_MODULE = "shmkit.shared_memory"

# Every CPython whose stdlib shmkit interoperates with; the interop tests run
# a stdlib peer of each that is installed.
SUPPORTED_PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def unique_name(tag="seg"):
    """A fresh segment name of our own, e.g. ``shmkit_t1234_basics_0a1b2c3d``,
    written down as this session's (see record_created)."""
    name = f"{TEST_PREFIX}{os.getpid()}_{tag}_{secrets.token_hex(4)}"
    record_created(name)
    return name


def shm_path(name):
    return os.path.join(DEV_SHM, name.lstrip("/"))


def segment_exists(name):
    return os.path.lexists(shm_path(name))


def wait_gone(names, timeout):
    """Polls, for at most ``timeout`` seconds, until no segment of ``names``
    (a name, or several) is in /dev/shm; whether they are all gone."""
    names = [names] if isinstance(names, str) else list(names)
    deadline = time.monotonic() + timeout
    while any(segment_exists(n) for n in names):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def remove_segment(name):
    """Removes ``/dev/shm/<name>`` if it is there; True if it was."""
    try:
        os.unlink(shm_path(name))
    except FileNotFoundError:
        return False
    return True


def is_shmkit(mod):
    return mod.__name__.split(".")[0] == "shmkit"


def has_track(mod):
    """Whether ``SharedMemory`` takes ``track=`` (stdlib 3.13+, shmkit always)."""
    return is_shmkit(mod) or sys.version_info >= (3, 13)


def untrack(mod, shm):
    """Stops this process's resource tracker from unlinking ``shm`` at exit.

    Needed where a segment is attached (not created) by a stdlib that always
    tracks (3.8-3.12, gh-82300): without it, that process's tracker would
    unlink a segment that belongs to someone else when it exits.
    """
    if is_shmkit(mod):
        return
    from multiprocessing import resource_tracker

    resource_tracker.unregister(shm._name, "shared_memory")


def attach_untracked(mod, name):
    """Attaches to ``name`` without making this process responsible for it."""
    if has_track(mod):
        return mod.SharedMemory(name, track=False)
    shm = mod.SharedMemory(name)
    untrack(mod, shm)
    return shm


def kill_rounds():
    """How many rounds a test marked ``kill`` runs: $SHMKIT_KILL_ROUNDS, 10
    by default (make test), 50 under make test-slow."""
    return int(os.environ.get("SHMKIT_KILL_ROUNDS", "10"))


def open_fds():
    """The descriptors this process has open (Linux)."""
    return set(os.listdir("/proc/self/fd"))


# --------------------------------------------------------------------------
# Whose is a segment? Other people (another developer's benchmark, another
# pytest run, cargo test) may use this machine's /dev/shm while the suite
# runs, and a name alone says nothing about who made it: psm_xxxxxxxx is
# every stdlib's and shmkit's. So the suite removes, and reports as leaks,
# only the names it made itself, which it writes down as it makes them:
#   - the ``segments`` fixture's names and objects;
#   - every name ``unique_name()`` hands out, in any process that imports
#     this module (spawn and forkserver children included);
#   - every name either implementation's ``_make_filename`` generates in the
#     pytest process and its fork children (both look the function up at
#     each create; install_recorder() wraps it), so a generated name that a
#     failing call leaves behind is known too.
# The record is a per-session file, named in $SHMKIT_TEST_CREATED, that every
# process of the session appends "pid hex-of-name" lines to. A new entry that
# is not in it (made by a process outside this bookkeeping, or by one of our
# subprocesses that does not write it down) is left alone; make test's
# private /dev/shm and its shm-check-end catch those.

CREATED_LOG_ENV = "SHMKIT_TEST_CREATED"


def record_created(name):
    """Writes ``name`` down as made by this session (a no-op outside one)."""
    path = os.environ.get(CREATED_LOG_ENV)
    if not path:
        return
    # One short O_APPEND write: lines of concurrent processes never mix.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        # In hex: a name may hold a newline or any other byte.
        raw = name.lstrip("/").encode("utf-8", "surrogateescape")
        os.write(fd, f"{os.getpid()} {raw.hex()}\n".encode("ascii"))
    finally:
        os.close(fd)


_recorded = {"path": None, "offset": 0, "names": set()}


def recorded_names():
    """Every name this session has written down so far, in any process.
    Read incrementally: each call parses only what was appended since."""
    path = os.environ.get(CREATED_LOG_ENV)
    if not path:
        return set()
    if _recorded["path"] != path:  # a new session's record
        _recorded.update(path=path, offset=0, names=set())
    try:
        with open(path, "rb") as f:
            f.seek(_recorded["offset"])
            data = f.read()
    except OSError:
        return set(_recorded["names"])
    end = data.rfind(b"\n") + 1  # a line still being written waits
    _recorded["offset"] += end
    for line in data[:end].split(b"\n"):
        _, _, name = line.partition(b" ")
        if name:
            _recorded["names"].add(bytes.fromhex(name.decode("ascii")).decode("utf-8", "surrogateescape"))
    return set(_recorded["names"])


def _recording(make_filename):
    if getattr(make_filename, "_shm_helpers_records", False):
        return make_filename

    @functools.wraps(make_filename)
    def recorded():
        name = make_filename()
        if isinstance(name, str):
            record_created(name)
        return name

    recorded._shm_helpers_records = True
    return recorded


def install_recorder(path):
    """Starts this session's record at ``path`` (inherited by every child
    through the environment) and wraps both implementations'
    ``_make_filename`` in this process so that generated names are written
    down too."""
    os.environ[CREATED_LOG_ENV] = path
    for modname in (STDLIB_MODULE, SHMKIT_MODULE):
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue  # the shmkit half is skipped (or fails) elsewhere
        mod._make_filename = _recording(mod._make_filename)


def _process_parents():
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
    return parents


def _own_tree(parents):
    ours = {os.getpid()}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                grew = True
    return ours


def _held_by(pids, paths):
    """The subset of ``paths`` that any of ``pids`` has open or mapped."""
    held = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target in paths:
                    held.add(target)
            with open(f"/proc/{pid}/maps", "rb") as f:
                for line in f:
                    parts = line.split(None, 5)
                    if len(parts) == 6:
                        target = os.fsdecode(parts[5].rstrip(b"\n"))
                        if target in paths:
                            held.add(target)
        except OSError:
            continue
    return held


def holders_of(name):
    """For a failure message: each live process that has segment ``name``
    open or mapped, with its state, parent and command line."""
    path = shm_path(name)
    out = []
    for pid in _process_parents():
        if path not in _held_by([pid], {path}):
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":\t", 1) for line in f if ":\t" in line)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")[:120]
        except OSError:
            continue
        out.append(f"{pid} {status.get('State', '?').strip()} ppid {status.get('PPid', '?').strip()}: {cmd}")
    return out or ["(no live process holds it)"]


def _held_by_outsiders(names):
    """The subset of ``names`` that a live process outside this process's
    tree has open or mapped."""
    if not names:
        return set()
    parents = _process_parents()
    foreign = set(parents) - _own_tree(parents)
    paths = {shm_path(n): n for n in names}
    return {paths[p] for p in _held_by(foreign, set(paths))}


def new_segments(before):
    """The entries of /dev/shm that appeared since the listing ``before``
    and that this session wrote down as made, sorted: the ones a test may
    report as its leaks and remove. One that a process outside this
    process's tree holds is never among them, whatever the record says."""
    new = set(os.listdir(DEV_SHM)) - set(before)
    mine = new & recorded_names() if new else set()
    mine -= _held_by_outsiders(mine)
    return sorted(n for n in mine if segment_exists(n))


# --------------------------------------------------------------------------
# Other interpreters


def _version_of(python):
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
            env=foreign_env(),
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _patch_key(path, version):
    # .../versions/3.11.7/bin/python3.11 -> 7, so the newest patch wins.
    m = re.search(re.escape(version) + r"\.(\d+)", path)
    return int(m.group(1)) if m else -1


@functools.lru_cache(maxsize=None)
def find_cpython(version):
    """Path of a CPython ``version`` ("3.11", "3.13"), or None.

    Looked for in order: $SHMKIT_PY311 / $SHMKIT_PY313, pyenv's versions
    (``pyenv root``, $PYENV_ROOT, ~/.pyenv), then ``python3.X`` on PATH (a
    pyenv shim there may refuse to run another version, hence the check that
    each candidate runs and is the version asked for).
    """
    candidates = []
    env_var = "SHMKIT_PY" + version.replace(".", "")
    if os.environ.get(env_var):
        candidates.append(os.environ[env_var])
    roots = []
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            out = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=30)
            if out.returncode == 0 and out.stdout.strip():
                roots.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    if os.environ.get("PYENV_ROOT"):
        roots.append(os.environ["PYENV_ROOT"])
    roots.append(os.path.expanduser("~/.pyenv"))
    for root in dict.fromkeys(roots):
        found = glob.glob(os.path.join(root, "versions", version + ".*", "bin", "python" + version))
        found = [p for p in found if re.search(re.escape(version) + r"\.\d+/bin/", p)]
        candidates += sorted(found, key=lambda p: _patch_key(p, version), reverse=True)
    on_path = shutil.which("python" + version)
    if on_path:
        candidates.append(on_path)
    if "%d.%d" % sys.version_info[:2] == version:
        candidates.append(sys.executable)
    for python in dict.fromkeys(candidates):
        if os.access(python, os.X_OK) and _version_of(python) == version:
            return python
    return None


def foreign_env(extra=None):
    """Environment for an interpreter other than this one: without the
    PYTHONPATH/PYTHONHOME that may point at this interpreter's packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if extra:
        env.update(extra)
    return env


def child_env(extra=None):
    """Environment for a child of this very interpreter: the same packages
    (shmkit, numpy) must import there, so PYTHONPATH is kept and sys.path's
    own entries are added to it."""
    env = dict(os.environ)
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join(paths + ([old] if old else []))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if extra:
        env.update(extra)
    return env


def run_python(code, python=None, *, args=(), env=None, timeout=60, input=None):
    """Runs ``python -c code`` (default: this interpreter) and returns the
    CompletedProcess, with text stdout and stderr."""
    if python is None:
        python = sys.executable
        if env is None:
            env = child_env()
    elif env is None:
        env = foreign_env()
    return subprocess.run(
        [python, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        input=input,
    )


def describe(proc):
    """A failed child, told in full for an assertion message."""
    return (
        f"rc={proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )


# --------------------------------------------------------------------------
# Targets for multiprocessing children (fork, spawn, forkserver)


def mp_attach_by_name_and_write(modname, name, data):
    mod = importlib.import_module(modname)
    shm = mod.SharedMemory(name)
    try:
        shm.buf[: len(data)] = data
    finally:
        shm.close()


def mp_write_to_object(shm, data):
    # Under spawn and forkserver, ``shm`` arrived pickled: it attached by name.
    try:
        shm.buf[: len(data)] = data
    finally:
        shm.close()


def mp_unpickle_and_write(pickled, data):
    import pickle

    shm = pickle.loads(pickled)
    try:
        shm.buf[: len(data)] = data
    finally:
        shm.close()


def errno_name(code):
    return errno.errorcode.get(code, str(code))


# --------------------------------------------------------------------------
# ShareableList (reference §2.1, §2.2): a model of the segment's bytes,
# written from the spec, for the tests to compare either implementation with.

# The docs' example, whose bytes the reference's §2.3 shows.
SL_EXAMPLE = ["howdy", b"HoWdY", -273.154, 100, None, True, 42]

# Every type, with the edge values of each (ASCII str only, where CPython's
# character sizing and shmkit's byte sizing agree).
SL_SIX_TYPES = [
    0, 1, -1, 2**63 - 1, -(2**63),
    0.0, -0.0, 2.5, 1e308, float("inf"), float("-inf"), float("nan"),
    True, False, None,
    "", "a", "abcdefgh", "a\0b", "x" * 17,
    b"", b"\x00\x01", b"12345678", b"\xff" * 9,
]  # fmt: skip

SL_FORMATS = {int: "q", float: "d", bool: "xxxxxxx?", type(None): "xxxxxx?x"}
SL_CODES = {str: 1, bytes: 2, type(None): 3}


def sl_slot_size(value, sizing="shmkit"):
    """The slot a new list gives ``value``: 8 for the fixed-size types; for
    ``bytes`` the next multiple of 8 strictly above its length. For ``str``,
    CPython 3.9-3.13 (``sizing="chars"``) counts characters, and so cuts
    multibyte text (gh-88336); shmkit (``"shmkit"``, docs/compat.md) gives
    CPython's slot when the UTF-8 bytes fit it, else the next multiple of 8
    strictly above the byte length."""
    if isinstance(value, bytes):
        return 8 * (len(value) // 8 + 1)
    if not isinstance(value, str):
        return 8
    slot = 8 * (len(value) // 8 + 1)
    n = len(value.encode())
    if sizing == "chars" or n <= slot:
        return slot
    return 8 * (n // 8 + 1)


def sl_item(value, slot):
    """(format, back-transform code, slot bytes) of ``value`` in a slot of
    ``slot`` bytes. A fixed-size value gets a zero tail in a wider slot: what
    a new segment holds, not what a write over an older value leaves."""
    t = type(value)
    if t in (str, bytes):
        raw = value.encode() if t is str else value
        return f"{slot}s", SL_CODES[t], raw[:slot].ljust(slot, b"\0")
    fmt = SL_FORMATS[t]
    if t is bool:
        data = bytes(7) + bytes([value])
    elif t is type(None):
        data = bytes(8)
    else:
        data = struct.pack(fmt, value)
    return fmt, SL_CODES.get(t, 0), data.ljust(slot, b"\0")


def sl_layout(values, *, sizing="shmkit", slots=None):
    """The bytes of a ShareableList of ``values`` (Python 3.9+ layout): item
    count, N+1 data offsets, the slots, N 8-byte formats, N codes; native
    order, no padding. ``slots`` overrides the slot sizes (a list whose
    items changed type keeps its creation's slots)."""
    n = len(values)
    if slots is None:
        slots = [sl_slot_size(v, sizing) for v in values]
    offsets = [0]
    for s in slots:
        offsets.append(offsets[-1] + s)
    items = [sl_item(v, s) for v, s in zip(values, slots)]
    return b"".join(
        [
            struct.pack("q", n),
            struct.pack(f"{n + 1}q", *offsets),
            b"".join(data for _, _, data in items),
            b"".join(fmt.encode("ascii").ljust(8, b"\0") for fmt, _, _ in items),
            struct.pack(f"{n}b", *(code for _, code, _ in items)),
        ]
    )


def sl_format(values, *, sizing="shmkit"):
    """The ``.format`` of a new list of ``values``."""
    return "".join(sl_item(v, sl_slot_size(v, sizing))[0] for v in values)


def typed(values):
    """Values made comparable with their types: ``True`` is not ``1``, and a
    float compares by its repr (so nan equals nan, -0.0 is not 0.0)."""
    return [(type(v).__name__, repr(v) if isinstance(v, float) else v) for v in values]


def segment_bytes(name):
    """The whole segment ``name`` as bytes, read from /dev/shm: no mapping, no
    resource tracker, whatever implementation made it."""
    with open(shm_path(name), "rb") as f:
        return f.read()


def list_class(mod):
    """``mod.ShareableList``; the test is skipped if ``mod`` has none yet
    (shmkit's is being written), and fails under SHMKIT_REQUIRED=1."""
    cls = getattr(mod, "ShareableList", None)
    if cls is None:
        import pytest

        msg = f"{mod.__name__} has no ShareableList yet"
        if is_shmkit(mod) and os.environ.get("SHMKIT_REQUIRED") == "1":
            pytest.fail(f"SHMKIT_REQUIRED=1 but {msg}")
        pytest.skip(msg)
    return cls


def attach_list_untracked(mod, name):
    """``ShareableList(name=name)`` without making this process responsible
    for the segment. ShareableList has no ``track=``: a stdlib attach always
    registers (3.8-3.13, gh-82300), so it is unregistered straight away."""
    sl = list_class(mod)(name=name)
    untrack(mod, sl.shm)
    return sl


# --------------------------------------------------------------------------
# Targets for shmkit.numpy's multiprocessing children (test_numpy_arrays.py)


def np_sum(a):
    """The sum of ``a``, whatever view of it arrived."""
    return float(a.sum())


def np_sum_and_add(a, x):
    """Adds ``x`` to every element of the view that arrived; returns the
    sum it saw before, and whether the view was shared memory."""
    import shmkit.numpy as snp

    before = float(a.sum())
    a += x
    return before, snp.is_shared(a)


def np_try_write(a):
    """What writing to the view that arrived did: 'wrote', or the error."""
    import shmkit.numpy as snp

    out = [snp.is_shared(a)]
    try:
        a[...] = 7
        out.append("wrote")
    except ValueError as e:
        out.append(f"refused: {e}")
    try:
        a.flags.writeable = True
        out.append("made writable")
    except ValueError as e:
        out.append(f"refused: {e}")
    return out


def np_add_in_child(a, x):
    """Process target: adds ``x`` to the view it was given."""
    a += x


def np_queue_worker(inq, outq):
    """Receives views from ``inq`` until None; for each, doubles it and
    answers its sum and whether it was shared memory."""
    import shmkit.numpy as snp

    while True:
        a = inq.get()
        if a is None:
            return
        a *= 2
        outq.put((float(a.sum()), snp.is_shared(a)))
        del a


def np_send_fresh_and_exit(q, n):
    """Sends a fresh shared array it keeps no reference to, then exits."""
    import numpy as np

    import shmkit.numpy as snp

    q.put(snp.array(np.arange(n, dtype=np.int64)))


def np_pipe_echo(conn):
    """Over ``conn``: receives views, negates them in place, sends each back
    as it is, until None."""
    while True:
        a = conn.recv()
        if a is None:
            return
        a *= -1
        conn.send(a)


def np_hold_until(q, ack, ev):
    """Receives a view, answers its sum on ``ack``, and holds it until
    ``ev`` is set."""
    a = q.get()
    ack.put(float(a.sum()))
    ev.wait(30)
    del a


def np_hold_while_alive(q, owner):
    """Holds whatever views arrive on ``q`` while process ``owner`` lives;
    exits once it is gone (SIGKILLed). Watching the owner, not the parent:
    under forkserver the parent is the fork server, which this process
    itself keeps alive."""
    import queue

    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except OSError:
            return False

    held = []
    while alive(owner):
        try:
            held.append(q.get(timeout=0.02))
        except queue.Empty:
            pass
        except (EOFError, OSError):
            break
