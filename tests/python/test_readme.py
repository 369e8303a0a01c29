"""The README's code, checked so that it stays true.

Every fenced block of README.md is handled by its language:

* ``python``: run, each in a fresh interpreter (this one: the venv's, with
  shmkit and numpy), and must exit 0;
* ``rust``: compiled and run by ``cargo test -p shmkit`` as doctests
  (crates/shmkit/src/lib.rs includes README.md under ``cfg(doctest)``); here
  only that the include is in place and that each block has a ``main``;
* ``toml``: parsed, and the dependency's path must be the crate's;
* ``sh``: the setup and benchmark commands (``make demo``, ``make test``,
  ``make bench``...) are not run here, since they are what runs this test;
  each ``make`` target they name must exist in the Makefile;
* ``text``: sample output, not checked.

A block in any other language fails the test, so a new kind of example
gets a check of its own rather than none.

The stdlib-attacher caveat (a stdlib process's resource tracker unlinks a
segment it merely attached to) is shown real, and the README's fix shown to
work, with the README's own ``attach()`` in a stdlib child.
"""

import os
import re
import subprocess
import sys

import pytest

import shm_helpers as h

README = os.path.join(h.REPO, "README.md")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
KNOWN = {"python", "rust", "toml", "sh", "text"}


def blocks(lang=None):
    with open(README, encoding="utf-8") as f:
        text = f.read()
    found = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        if lang is None or m.group(1) == lang:
            found.append((m.group(1), line, m.group(2)))
    return found


def ids(found):
    return [f"README.md:{line}" for _, line, _ in found]


def test_every_block_has_a_check():
    langs = {lang for lang, _, _ in blocks()}
    assert langs <= KNOWN, f"README blocks in {langs - KNOWN} are neither run nor checked"
    assert "" not in langs, "a README block without a language is neither run nor checked"


PYTHON_BLOCKS = blocks("python")


@pytest.mark.parametrize("code", [b[2] for b in PYTHON_BLOCKS], ids=ids(PYTHON_BLOCKS))
def test_python_block_runs(code, tmp_path):
    env = h.child_env()
    env.pop("SHMKIT_INSTALL", None)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,  # whatever a block writes stays out of the clone
    )
    assert proc.returncode == 0, h.describe(proc)
    assert "Traceback" not in proc.stderr, h.describe(proc)


def test_rust_blocks_are_doctests():
    with open(os.path.join(h.REPO, "crates", "shmkit", "src", "lib.rs"), encoding="utf-8") as f:
        lib = f.read()
    assert re.search(
        # With the default features: the README's examples use the manager.
        r'#\[cfg\((doctest|all\(doctest, feature = "manager"\))\)\]\s*'
        r'#\[doc = include_str!\("\.\./\.\./\.\./README\.md"\)\]',
        lib,
    ), "lib.rs no longer runs the README's Rust blocks as doctests"
    rust = blocks("rust")
    assert rust
    for _, line, code in rust:
        assert "fn main()" in code, f"README.md:{line}: a doctest without main() may not run"


def test_toml_block_names_the_crate():
    tomllib = pytest.importorskip("tomllib")
    for _, line, code in blocks("toml"):
        deps = tomllib.loads(code)["dependencies"]
        path = deps["shmkit"]["path"]
        assert os.path.isfile(os.path.join(h.REPO, path, "Cargo.toml")), f"README.md:{line}: {path}"


def test_sh_blocks_name_existing_make_targets():
    with open(os.path.join(h.REPO, "Makefile"), encoding="utf-8") as f:
        targets = set(re.findall(r"^([A-Za-z][\w-]*):", f.read(), re.M))
    named = []
    for _, line, code in blocks("sh"):
        for cmd in code.splitlines():
            m = re.match(r"\s*make\s+([\w-]+)", cmd)
            if m:
                named.append(m.group(1))
                assert m.group(1) in targets, f"README.md:{line}: no Makefile target {m.group(1)}"
    assert {"demo", "test"} <= set(named)


# --------------------------------------------------------------------------
# The stdlib attacher's resource tracker


def readme_attach():
    """The README's ``attach()`` block, as it is printed."""
    found = [code for _, _, code in PYTHON_BLOCKS if "def attach(" in code]
    assert len(found) == 1, "the README's attach() example is gone"
    return found[0]


def stdlib_child_attaches(name, code):
    """Runs a stdlib-only child (this interpreter, shmkit not installed)
    that attaches to ``name`` with ``code`` and exits; then waits for its
    resource tracker, which does its unlinking as it shuts down."""
    env = h.child_env()
    env.pop("SHMKIT_INSTALL", None)
    proc = h.run_python(code, args=(name,), env=env)
    assert proc.returncode == 0, h.describe(proc)
    assert "shmkit" not in proc.stdout
    return proc


def test_stdlib_attacher_unlinks_at_exit(shmkit_mod, segments):
    """The problem the caveat is about: a plain stdlib attach (3.9-3.13
    alike) leaves the segment to the attacher's tracker, which unlinks it
    when the attacher exits; the creator's unlink() then fails."""
    shm = segments.add(shmkit_mod.SharedMemory(create=True, size=64))
    code = (
        "import sys\nfrom multiprocessing import shared_memory\n"
        "shm = shared_memory.SharedMemory(sys.argv[1])\n"
        "print(type(shm).__module__)\nshm.close()\n"
    )
    proc = stdlib_child_attaches(shm.name, code)
    assert proc.stdout.strip() == "multiprocessing.shared_memory"
    assert h.wait_gone(shm.name, 10.0), "the stdlib attacher's tracker left the segment alone"
    with pytest.raises(FileNotFoundError):
        shm.unlink()


@pytest.mark.parametrize("path", ["3.13+: track=False", "before 3.13: unregister"])
def test_readme_attach_keeps_the_segment(shmkit_mod, segments, path):
    """The README's fix, on this venv's Python: the branch for its version
    runs; the other is skipped."""
    if (sys.version_info >= (3, 13)) != path.startswith("3.13+"):
        pytest.skip(f"{path} is the other Python's branch of attach()")
    shm = segments.add(shmkit_mod.SharedMemory(create=True, size=64))
    shm.buf[:5] = b"howdy"
    code = readme_attach() + (
        "\nother = attach(sys.argv[1])\n"
        "assert bytes(other.buf[:5]) == b'howdy'\n"
        "print(type(other).__module__)\nother.close()\n"
    )
    proc = stdlib_child_attaches(shm.name, code)
    assert proc.stdout.strip() == "multiprocessing.shared_memory"
    assert "leaked shared_memory" not in proc.stderr, proc.stderr
    # Its tracker has had the time it takes to unlink a segment (the test
    # above waits for that) and has not.
    assert not h.wait_gone(shm.name, 2.0), "attach() did not keep the tracker out"
    shm.unlink()  # the creator's unlink works
