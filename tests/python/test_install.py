"""``shmkit.install()`` and ``shmkit.uninstall()`` (python/shmkit/_install.py).

Each test runs a scenario in a fresh interpreter (install() changes process
state: modules, the import system, the environment), as a script file, so
that spawn and forkserver children can re-import it as ``__mp_main__``. A
scenario prints one JSON object; the test checks it.
"""

import json
import os
import subprocess
import sys
import sysconfig
import textwrap

import pytest

import shm_helpers as h

SCENARIOS = textwrap.dedent(
    r'''
    import json
    import os
    import subprocess
    import sys
    import warnings

    STDLIB = "multiprocessing.shared_memory"
    SHMKIT = "shmkit.shared_memory"


    def report_child(conn):
        """In a child: what the stdlib's names resolve to, and the module of
        a segment made through them."""
        from multiprocessing import shared_memory
        import multiprocessing.managers

        shm = shared_memory.SharedMemory(create=True, size=64)
        try:
            conn.send(
                {
                    "segment": type(shm).__module__,
                    "manager": multiprocessing.managers.SharedMemoryManager.__module__,
                    "env": os.environ.get("SHMKIT_INSTALL"),
                }
            )
        finally:
            shm.close()
            shm.unlink()
        conn.close()


    def child(method):
        import multiprocessing

        ctx = multiprocessing.get_context(method)
        r, w = ctx.Pipe(duplex=False)
        p = ctx.Process(target=report_child, args=(w,))
        p.start()
        w.close()
        got = r.recv()
        p.join()
        assert p.exitcode == 0, p.exitcode
        return got


    def fresh_interpreter(*flags):
        """`python [flags] -c ...`, as CPython's tests start interpreters."""
        code = (
            "import json, multiprocessing.shared_memory as m, multiprocessing.managers as g; "
            "print(json.dumps([m.__name__, g.SharedMemoryManager.__module__]))"
        )
        out = subprocess.run(
            [sys.executable, *flags, "-c", code], capture_output=True, text=True, check=True
        )
        return json.loads(out.stdout)


    def snapshot():
        """What install() may touch, by identity."""
        import multiprocessing
        import multiprocessing.managers as managers

        return {
            "sys.modules": id(sys.modules.get(STDLIB)),
            "multiprocessing.shared_memory": id(getattr(multiprocessing, "shared_memory", None)),
            "managers.shared_memory": id(managers.shared_memory),
            "managers.SharedMemoryManager": id(managers.SharedMemoryManager),
            "meta_path": [id(f) for f in sys.meta_path],
            "env": os.environ.get("SHMKIT_INSTALL"),
        }


    def names():
        import multiprocessing
        import multiprocessing.managers

        return [
            sys.modules[STDLIB].__name__,
            multiprocessing.shared_memory.__name__,
            multiprocessing.managers.shared_memory.__name__,
            multiprocessing.managers.SharedMemoryManager.__module__,
        ]


    def round_trip():
        import multiprocessing.managers  # noqa: F401
        import multiprocessing.shared_memory  # noqa: F401
        import shmkit

        before = snapshot()
        shmkit.install()
        during = names()
        once = snapshot()
        shmkit.install()  # harmless
        twice = snapshot()
        shmkit.uninstall()
        after = snapshot()
        shmkit.uninstall()  # harmless
        return {
            "during": during,
            "install_twice_same": once == twice,
            "restored": after == before,
            "after": names(),
            "again_same": snapshot() == before,
        }


    def not_imported_before():
        """Nothing of multiprocessing imported before install()."""
        import shmkit

        had = [m for m in ("multiprocessing", STDLIB, "multiprocessing.managers") if m in sys.modules]
        shmkit.install()
        from multiprocessing import shared_memory
        import multiprocessing.managers
        import multiprocessing.shared_memory as direct

        during = [
            shared_memory.__name__,
            direct.__name__,
            multiprocessing.shared_memory.SharedMemory.__module__,
            multiprocessing.managers.SharedMemoryManager.__module__,
            multiprocessing.managers.shared_memory.__name__,
        ]
        shmkit.uninstall()
        stdlib_loaded_by_uninstall = STDLIB in sys.modules
        import multiprocessing.shared_memory as again

        return {
            "had": had,
            "during": during,
            "after": [
                again.__name__,
                multiprocessing.shared_memory.__name__,
                multiprocessing.managers.shared_memory.__name__,
                multiprocessing.managers.SharedMemoryManager.__module__,
            ],
            "stdlib_loaded_by_uninstall": stdlib_loaded_by_uninstall,
            "env": os.environ.get("SHMKIT_INSTALL"),
        }


    def already_imported():
        """Modules that took the stdlib's names before install()."""
        import types

        early = types.ModuleType("early_user")
        exec(
            "from multiprocessing import shared_memory\n"
            "import multiprocessing.shared_memory as aliased\n"
            "from multiprocessing.shared_memory import SharedMemory\n"
            "from multiprocessing.managers import SharedMemoryManager\n",
            early.__dict__,
        )
        sys.modules["early_user"] = early
        import shmkit

        shmkit.install()
        during = {
            "module": early.shared_memory.__name__,
            "alias": early.aliased.__name__,
            # Copied names cannot be reached (documented).
            "copied_class": early.SharedMemory.__module__,
            "copied_manager": early.SharedMemoryManager.__module__,
        }
        shmkit.uninstall()
        after = {"module": early.shared_memory.__name__, "alias": early.aliased.__name__}
        return {"during": during, "after": after}


    def children(method):
        import shmkit

        before = child(method)
        shmkit.install()
        during = child(method)
        shmkit.uninstall()
        after = child(method)
        return {"before": before, "during": during, "after": after}


    def interpreters():
        import shmkit

        shmkit.install()
        during = {"plain": fresh_interpreter(), "-E": fresh_interpreter("-E"), "-I": fresh_interpreter("-I")}
        shmkit.uninstall()
        after = {"plain": fresh_interpreter(), "-E": fresh_interpreter("-E"), "-I": fresh_interpreter("-I")}
        return {"during": during, "after": after}


    def forkserver_restart():
        """A forkserver started before install() serves shmkit after it, and
        the stdlib again after uninstall()."""
        import multiprocessing.forkserver
        import shmkit

        before = child("forkserver")
        pid_before = multiprocessing.forkserver._forkserver._forkserver_pid
        shmkit.install()
        during = child("forkserver")
        pid_during = multiprocessing.forkserver._forkserver._forkserver_pid
        shmkit.uninstall()
        after = child("forkserver")
        return {
            "before": before,
            "during": during,
            "after": after,
            "restarted": len({pid_before, pid_during}) == 2,
        }


    def forkserver_busy():
        """A forkserver with a live child is left running, with a warning."""
        import multiprocessing
        import shmkit

        ctx = multiprocessing.get_context("forkserver")
        ev = ctx.Event()
        p = ctx.Process(target=ev.wait, args=(60,))
        p.start()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                shmkit.install()
        finally:
            ev.set()
            p.join()
        shmkit.uninstall()
        return {
            "warnings": [str(w.message) for w in caught if w.category is RuntimeWarning],
            "exitcode": p.exitcode,
        }


    def hook_missing():
        """install() warns when spawn children could not get shmkit."""
        import shmkit
        import shmkit._install as inst

        sys.path[:] = [p for p in sys.path if not os.path.isfile(os.path.join(p or ".", inst.PTH_NAME))]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            shmkit.install()
        shmkit.uninstall()
        return [str(w.message) for w in caught if w.category is RuntimeWarning]


    if __name__ == "__main__":
        what, *args = sys.argv[1:]
        print(json.dumps(globals()[what](*args)))
    '''
)


@pytest.fixture
def scenario(tmp_path):
    path = tmp_path / "install_scenario.py"
    path.write_text(SCENARIOS)

    def run(*args, env=None):
        environment = h.child_env(env)
        environment.pop("SHMKIT_INSTALL", None)
        proc = subprocess.run(
            [sys.executable, str(path), *args],
            capture_output=True,
            text=True,
            env=environment,
            timeout=120,
        )
        assert proc.returncode == 0, h.describe(proc)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return run


STDLIB_NAMES = ["multiprocessing.shared_memory", "multiprocessing.managers"]
SHMKIT_NAMES = ["shmkit.shared_memory", "shmkit.managers"]


def test_round_trip(scenario):
    got = scenario("round_trip")
    assert got["during"] == ["shmkit.shared_memory"] * 3 + ["shmkit.managers"]
    assert got["install_twice_same"]
    assert got["restored"], "uninstall() did not restore every module, attribute and the env var"
    assert got["after"] == ["multiprocessing.shared_memory"] * 3 + ["multiprocessing.managers"]
    assert got["again_same"]


def test_nothing_imported_before(scenario):
    got = scenario("not_imported_before")
    assert got["had"] == []
    assert got["during"] == ["shmkit.shared_memory"] * 3 + ["shmkit.managers", "shmkit.shared_memory"]
    # multiprocessing.managers was imported while installed: uninstall()
    # gives it the stdlib module back, which loads it.
    assert got["after"] == ["multiprocessing.shared_memory"] * 3 + ["multiprocessing.managers"]
    assert got["stdlib_loaded_by_uninstall"]
    assert got["env"] is None


def test_modules_imported_before(scenario):
    got = scenario("already_imported")
    assert got["during"] == {
        "module": "shmkit.shared_memory",
        "alias": "shmkit.shared_memory",
        "copied_class": "multiprocessing.shared_memory",
        "copied_manager": "multiprocessing.managers",
    }
    assert got["after"] == {"module": "multiprocessing.shared_memory", "alias": "multiprocessing.shared_memory"}


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_children(scenario, method):
    got = scenario("children", method)
    assert got["before"] == {"segment": STDLIB_NAMES[0], "manager": STDLIB_NAMES[1], "env": None}
    assert got["during"] == {"segment": SHMKIT_NAMES[0], "manager": SHMKIT_NAMES[1], "env": "1"}
    # uninstall() stops it for new children.
    assert got["after"] == {"segment": STDLIB_NAMES[0], "manager": STDLIB_NAMES[1], "env": None}


def test_interpreters_started_by_hand(scenario):
    """`python -c`, `-E` and `-I` children (as CPython's tests start them)
    get shmkit from the inherited variable and the .pth hook."""
    got = scenario("interpreters")
    assert got["during"] == {k: SHMKIT_NAMES for k in ("plain", "-E", "-I")}
    assert got["after"] == {k: STDLIB_NAMES for k in ("plain", "-E", "-I")}


def test_forkserver_started_before_install(scenario):
    got = scenario("forkserver_restart")
    assert got["before"]["segment"] == STDLIB_NAMES[0]
    assert got["during"]["segment"] == SHMKIT_NAMES[0]
    assert got["after"]["segment"] == STDLIB_NAMES[0]
    assert got["restarted"]


def test_busy_forkserver_is_left_alone(scenario):
    got = scenario("forkserver_busy")
    assert got["exitcode"] == 0  # its child still reports through it
    assert len(got["warnings"]) == 1 and "forkserver is running with live children" in got["warnings"][0]


def test_env_var_alone(scenario):
    """SHMKIT_INSTALL=1 switches an unmodified program over."""
    got = h.run_python(
        "import json, multiprocessing.shared_memory as m, multiprocessing.managers as g; "
        "print(json.dumps([m.__name__, g.SharedMemoryManager.__module__]))",
        env=h.child_env({"SHMKIT_INSTALL": "1"}),
    )
    assert got.returncode == 0, h.describe(got)
    assert json.loads(got.stdout) == SHMKIT_NAMES
    assert got.stderr == ""


def test_hook_is_installed():
    """The wheel (and `maturin develop`) put the start-up hook in site-packages."""
    import shmkit._install as inst

    site = sysconfig.get_paths()["purelib"]
    path = os.path.join(site, inst.PTH_NAME)
    assert os.path.isfile(path), f"{path} missing: rebuild with `maturin develop`"
    assert inst._hook_present()


def test_warns_without_hook(scenario):
    got = scenario("hook_missing")
    assert len(got) == 1 and "shmkit_install.pth is not in any sys.path directory" in got[0], got


def test_warns_without_site():
    """Under -S no child runs the hook (multiprocessing passes -S on)."""
    code = (
        "import warnings, shmkit\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    shmkit.install()\n"
        "print([str(x.message) for x in w])\n"
    )
    env = h.child_env()
    env.pop("SHMKIT_INSTALL", None)
    got = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env)
    assert got.returncode == 0, h.describe(got)
    assert "runs without site (-S)" in got.stdout, h.describe(got)
