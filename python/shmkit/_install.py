"""``shmkit.install()`` and ``shmkit.uninstall()``: shmkit in place of
``multiprocessing.shared_memory`` and ``multiprocessing.managers.SharedMemoryManager``,
in this process and in the Python processes it starts.

How children get it
-------------------
Fork children inherit the patched modules with the rest of memory. Spawn
and forkserver children, and any other interpreter started from this one,
are fresh interpreters: they get shmkit from the environment variable
``SHMKIT_INSTALL=1``, which ``install()`` sets and every child inherits, and
from ``shmkit_install.pth``, which the wheel installs into site-packages and
which the ``site`` module runs at every start-up of an interpreter of that
environment. The hook costs a dictionary lookup when the variable is unset;
when it is ``1``, it calls ``install()`` before any user code runs.

Why this and not patching ``multiprocessing`` itself: rewriting
``multiprocessing.spawn.get_command_line`` (or adding to the forkserver's
preload list) reaches only ``multiprocessing``'s own children, only through
private functions whose shape changes between versions, and the forkserver's
preload list is read once, when the server starts. Code and libraries also
start interpreters by hand (``subprocess.run([sys.executable, '-c', ...])``,
as CPython's own tests do, with ``-E`` or ``-I``): an inherited variable
reaches those too, and ``-E``/``-I`` ignore only ``PYTHON*`` variables and
never skip site-packages' ``.pth`` files (only ``-S`` does). The same
variable also lets a user switch unmodified programs over without touching
them: ``SHMKIT_INSTALL=1 python app.py``. The hook needs shmkit installed in
the child's environment (always true for ``sys.executable``) and ``site``
enabled; ``install()`` warns when it cannot find the ``.pth`` file or runs
under ``-S`` (which ``multiprocessing`` passes on to its children).

In an editable install (``maturin develop``) maturin's ``shmkit.pth`` puts
the source tree on ``sys.path``; ``site`` runs ``.pth`` files in name order,
and ``shmkit.pth`` sorts before ``shmkit_install.pth``, so shmkit is
importable by the time the hook runs.
"""

from __future__ import annotations

import os
import sys
import types
from _thread import RLock, _local

#: Set to ``1`` by ``install()``; the ``.pth`` hook installs shmkit in every
#: interpreter started with it.
ENV_VAR = "SHMKIT_INSTALL"
#: The start-up hook's file name, in site-packages (see the module docs).
PTH_NAME = "shmkit_install.pth"

_STDLIB_SHM = "multiprocessing.shared_memory"
_MISSING = object()
_CURRENT = object()  # set_attr's default: the value the attribute has now
# A saved value meaning "the stdlib module": for a module imported while
# shmkit was installed, whose ``from . import shared_memory`` got shmkit's.
_STDLIB = object()

_lock = RLock()
_state = None  # an _Installed while installed


class _Installed:
    """What ``install()`` changed, so that ``uninstall()`` can undo it."""

    def __init__(self, shm_module):
        self.shm_module = shm_module
        self.modules = []  # (sys.modules key, prior value or _MISSING, new value)
        self.attrs = []  # (object, name, prior value or _MISSING/_STDLIB, new value)
        self.env_prior = _MISSING
        self.finder = None

    def set_module(self, key, new):
        self.modules.append((key, sys.modules.get(key, _MISSING), new))
        sys.modules[key] = new

    def set_attr(self, obj, name, new, prior=_CURRENT):
        """Sets ``obj.name``; ``prior`` is what uninstall() puts back (by
        default the current value, or nothing if it has none)."""
        if prior is _CURRENT:
            prior = getattr(obj, name, _MISSING)
            if prior is new:
                return
        self.attrs.append((obj, name, prior, new))
        setattr(obj, name, new)

    def restore(self):
        """Puts back what install() replaced, except where someone has
        replaced it since: that value is theirs."""
        for key, prior, new in reversed(self.modules):
            if sys.modules.get(key) is not new:
                continue
            if prior is _MISSING:
                del sys.modules[key]
            else:
                sys.modules[key] = prior
        for obj, name, prior, new in reversed(self.attrs):
            if getattr(obj, name, _MISSING) is not new:
                continue
            if prior is _STDLIB:
                import importlib

                prior = importlib.import_module(_STDLIB_SHM)
            if prior is _MISSING:
                delattr(obj, name)
            else:
                setattr(obj, name, prior)


def _patch_multiprocessing(state, mp):
    """``multiprocessing.shared_memory`` (the package's attribute)."""
    state.set_attr(mp, "shared_memory", state.shm_module)


def _patch_managers(state, managers, imported_while_installed):
    """``multiprocessing.managers``: its ``shared_memory`` global (which the
    stdlib's SharedMemoryServer and SharedMemoryManager use) and
    ``SharedMemoryManager``."""
    from .managers import SharedMemoryManager

    if hasattr(managers, "shared_memory"):
        # Imported while installed, its ``from . import shared_memory`` got
        # shmkit's already: uninstall() gives it the stdlib's.
        prior = _STDLIB if imported_while_installed else _CURRENT
        state.set_attr(managers, "shared_memory", state.shm_module, prior)
    state.set_attr(managers, "SharedMemoryManager", SharedMemoryManager)


class _PatchingLoader:
    """Runs the real loader, then patches the module it made. The module's
    ``__loader__`` and ``__spec__.loader`` are set back to the real loader
    (as wrapt's post-import hooks do), so nothing sees this wrapper after."""

    def __init__(self, loader, patch):
        self._loader = loader
        self._patch = patch

    def create_module(self, spec):
        create = getattr(self._loader, "create_module", None)
        return None if create is None else create(spec)

    def exec_module(self, module):
        module.__loader__ = self._loader
        spec = getattr(module, "__spec__", None)
        if spec is not None:
            spec.loader = self._loader
        self._loader.exec_module(module)
        self._patch(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _Finder:
    """A ``sys.meta_path`` entry that patches ``multiprocessing`` and
    ``multiprocessing.managers`` when they are first imported, so that
    installing costs no import of either (``multiprocessing.managers`` takes
    about 30 ms to import, which every spawn child would pay)."""

    _WATCHED = ("multiprocessing", "multiprocessing.managers")

    def __init__(self, state):
        self._state = state
        self._busy = _local()

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self._WATCHED or getattr(self._busy, "on", False):
            return None
        self._busy.on = True
        try:
            spec = None
            for finder in list(sys.meta_path):
                find_spec = getattr(finder, "find_spec", None)
                if finder is self or find_spec is None:
                    continue
                spec = find_spec(fullname, path, target)
                if spec is not None:
                    break
        finally:
            self._busy.on = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _PatchingLoader(spec.loader, self._patch)
        return spec

    def _patch(self, module):
        state = self._state
        with _lock:
            if _state is not state:
                return  # uninstalled meanwhile
            if module.__name__ == "multiprocessing":
                _patch_multiprocessing(state, module)
            else:
                _patch_managers(state, module, imported_while_installed=True)

    def invalidate_caches(self):
        pass


def _replace_module_references(state, old):
    """Module globals that hold the stdlib module object (``from multiprocessing
    import shared_memory`` done before install()) are pointed at shmkit's."""
    new = state.shm_module
    for module in list(sys.modules.values()):
        if not isinstance(module, types.ModuleType) or module is new:
            continue
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for name, value in list(namespace.items()):
            if value is old:
                state.set_attr(module, name, new)


def _hook_present():
    """Whether the ``.pth`` hook is in a directory on ``sys.path``."""
    return any(
        isinstance(d, str) and os.path.isfile(os.path.join(d or ".", PTH_NAME)) for d in sys.path
    )


def _forkserver_idle_restart(reason):
    """A forkserver already running forks children from its own memory and
    environment, set when it started: stop it, so that the next child starts
    a new one that sees the change. Only when none of this process's live
    children came from it (they report their exit code through it)."""
    forkserver = sys.modules.get("multiprocessing.forkserver")
    server = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is None:
        return
    import multiprocessing

    busy = [
        p
        for p in multiprocessing.active_children()
        if type(getattr(p, "_popen", None)).__module__ == "multiprocessing.popen_forkserver"
    ]
    stop = getattr(server, "_stop", None)
    if busy or stop is None:
        import warnings

        warnings.warn(
            f"shmkit.{reason}(): a multiprocessing forkserver is running with live children; "
            "it keeps serving new children as before until it is restarted",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    stop()


def _install(from_hook):
    global _state
    from . import shared_memory as shm_module

    state = _Installed(shm_module)
    old = sys.modules.get(_STDLIB_SHM)
    try:
        state.set_module(_STDLIB_SHM, shm_module)
        mp = sys.modules.get("multiprocessing")
        if mp is not None:
            _patch_multiprocessing(state, mp)
        managers = sys.modules.get("multiprocessing.managers")
        if managers is not None:
            _patch_managers(state, managers, imported_while_installed=False)
        if isinstance(old, types.ModuleType) and old is not shm_module:
            _replace_module_references(state, old)
    except BaseException:
        state.restore()  # all or nothing
        raise
    state.finder = _Finder(state)
    sys.meta_path.insert(0, state.finder)

    # The hook ran because the variable was set: uninstall() in this process
    # clears it, so that its own children go back to the stdlib.
    state.env_prior = _MISSING if from_hook else os.environ.get(ENV_VAR, _MISSING)
    changed = os.environ.get(ENV_VAR) != "1"
    os.environ[ENV_VAR] = "1"
    _state = state
    if not from_hook:
        if changed:
            _forkserver_idle_restart("install")
        if sys.flags.no_site:
            problem = "this interpreter runs without site (-S), and so will its children"
        elif not _hook_present():
            problem = f"{PTH_NAME} is not in any sys.path directory (install shmkit with pip or maturin)"
        else:
            problem = None
        if problem:
            import warnings

            warnings.warn(
                f"shmkit.install(): {problem}, so spawn and forkserver children will use "
                "the stdlib's multiprocessing.shared_memory",
                RuntimeWarning,
                stacklevel=3,
            )


def install():
    """Makes the stdlib's shared-memory names resolve to shmkit's, in this
    process and in every Python process it starts.

    Afterwards ``import multiprocessing.shared_memory``, ``from multiprocessing
    import shared_memory`` and ``multiprocessing.shared_memory.SharedMemory``
    give ``shmkit.shared_memory`` (``SharedMemory``, ``ShareableList``), and
    ``multiprocessing.managers.SharedMemoryManager`` is
    ``shmkit.managers.SharedMemoryManager``; the stdlib's own
    ``SharedMemoryServer`` and manager use shmkit's segments too.

    Reached: the ``sys.modules`` entry; the ``multiprocessing`` and
    ``multiprocessing.managers`` attributes, whether these modules are
    imported before or after; every module global that holds the stdlib
    module object (``from multiprocessing import shared_memory`` done before
    ``install()``); and children: fork children inherit it, and spawn and
    forkserver children (and any interpreter of this environment started
    from this process, with ``subprocess`` too) get it at start-up from the
    inherited ``SHMKIT_INSTALL=1`` and the ``shmkit_install.pth`` hook that
    the wheel installs. A forkserver already running is restarted, unless it
    has live children (then a ``RuntimeWarning`` says it keeps serving the
    stdlib until it restarts).

    Not reached: names copied before ``install()`` (``from
    multiprocessing.shared_memory import SharedMemory``, ``from
    multiprocessing.managers import SharedMemoryManager``), subclasses of the
    stdlib classes, objects already made, and default arguments or closures
    that captured them; interpreters started with ``-S`` (no ``site``), with
    another Python, or with a cleared environment; a ``RuntimeWarning`` says
    so when the ``.pth`` hook is missing from ``sys.path`` or ``site`` is
    disabled.

    Calling it again while installed does nothing. Thread-safe.
    """
    with _lock:
        if _state is None:
            _install(from_hook=False)


def uninstall():
    """Undoes ``install()``: the ``sys.modules`` entry, the attributes and
    module globals it changed (those not rebound since), the import hook and
    ``SHMKIT_INSTALL`` get back exactly what they held before, and new
    children (spawn and forkserver too; an idle forkserver is restarted)
    use the stdlib again.

    Modules imported while installed keep the shmkit names they took (only
    ``multiprocessing.managers`` is set back to the stdlib's module); objects
    made while installed stay shmkit objects, and children already started
    keep shmkit. In a process that got shmkit from its parent's
    ``install()``, ``uninstall()`` also removes ``SHMKIT_INSTALL``, so that
    its own children do not. Does nothing when not installed.
    """
    global _state
    with _lock:
        state = _state
        if state is None:
            return
        _state = None
        try:
            sys.meta_path.remove(state.finder)
        except ValueError:
            pass
        state.restore()
        prior = None if state.env_prior is _MISSING else state.env_prior
        changed = os.environ.get(ENV_VAR) != prior
        if prior is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = prior
        if changed:
            _forkserver_idle_restart("uninstall")


def installed():
    """Whether ``install()`` is in effect in this process."""
    return _state is not None


def _from_env():
    """The ``.pth`` hook's entry point: installs in a process started with
    ``SHMKIT_INSTALL=1``; never raises (a failure is one line on stderr)."""
    try:
        with _lock:
            if _state is None:
                _install(from_hook=True)
    except Exception as e:  # pragma: no cover - a broken environment
        sys.stderr.write(f"shmkit: {ENV_VAR}=1 but shmkit.install() failed: {e!r}\n")
