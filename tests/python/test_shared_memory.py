"""SharedMemory's API and errors, run against the stdlib and against shmkit.

The expectations are CPython 3.11.7's (reference/cpython-shared-memory.md
§1, error table §1.6). Tests marked ``shmkit_only`` cover the places where
shmkit deliberately does better than the stdlib (DESIGN.md: "compatible by
default, better where CPython loses"); where useful, a stdlib twin shows the
stdlib's behaviour that shmkit fixes.
"""

import errno
import gc
import os
import pickle
import signal
import sys
import unittest.mock

import pytest

import shm_helpers as h

# --------------------------------------------------------------------------
# Attributes


def test_module_constants(impl):
    assert impl._USE_POSIX is True
    assert impl._SHM_SAFE_NAME_LENGTH == 14
    assert impl._SHM_NAME_PREFIX == "/psm_"
    assert impl._O_CREX == os.O_CREAT | os.O_EXCL
    names = {impl._make_filename() for _ in range(20)}
    assert len(names) == 20
    for name in names:
        assert name.startswith("/") and h.GENERATED_NAME.match(name[1:]), name


def test_create_named_attributes(impl, segments):
    name = segments.name("attrs")
    shm = segments.add(impl.SharedMemory(name, create=True, size=100))
    assert isinstance(shm, impl.SharedMemory)
    assert shm.name == name
    assert shm._name == "/" + name
    assert shm.size == 100
    assert h.segment_exists(name)
    assert os.stat(h.shm_path(name)).st_size == 100
    assert oct(os.stat(h.shm_path(name)).st_mode & 0o777) == oct(0o600)


def test_generated_name_format(impl, segments):
    seen = set()
    for _ in range(5):
        shm = segments.add(impl.SharedMemory(create=True, size=8))
        assert h.GENERATED_NAME.match(shm.name), shm.name
        assert shm._name == "/" + shm.name
        assert h.segment_exists(shm.name)
        seen.add(shm.name)
    assert len(seen) == 5


def test_buf_is_a_writable_memoryview(impl, segments):
    shm = segments.add(impl.SharedMemory(create=True, size=4096))
    buf = shm.buf
    assert isinstance(buf, memoryview)
    assert not buf.readonly
    assert (buf.format, buf.itemsize, buf.ndim) == ("B", 1, 1)
    assert buf.contiguous
    assert len(buf) == buf.nbytes == shm.size == 4096
    assert bytes(buf[:16]) == bytes(16)  # a new segment is zero-filled
    buf[0] = 42
    buf[100:105] = b"hello"
    buf[-1] = 255
    assert buf[0] == 42 and bytes(buf[100:105]) == b"hello" and buf[4095] == 255
    with pytest.raises(IndexError):
        buf[4096]
    with pytest.raises(ValueError):
        buf[0:2] = b"abc"  # memoryview assignment cannot resize
    del buf


def test_size_is_exact_and_ignored_on_attach(impl, segments):
    name = segments.name("size")
    shm = segments.add(impl.SharedMemory(name, create=True, size=1))
    assert shm.size == 1 and len(shm.buf) == 1
    for asked in (0, 5, 10**6):
        other = segments.add(impl.SharedMemory(name, size=asked))
        assert other.size == 1  # Linux: st_size, whatever was asked


def test_two_handles_share_bytes(impl, segments):
    name = segments.name("share")
    a = segments.add(impl.SharedMemory(name, create=True, size=512))
    b = segments.add(impl.SharedMemory(name))
    a.buf[0:6] = b"abcdef"
    assert bytes(b.buf[0:6]) == b"abcdef"
    b.buf[510:512] = b"zz"
    assert bytes(a.buf[510:512]) == b"zz"


def test_repr(impl, segments):
    shm = segments.add(impl.SharedMemory(create=True, size=10))
    expected = f"SharedMemory({shm.name!r}, size=10)"
    assert repr(shm) == expected
    assert str(shm) == expected
    shm.close()
    assert repr(shm) == expected  # still works after close()

    class Sub(impl.SharedMemory):
        pass

    sub = segments.add(Sub(shm.name))
    assert repr(sub) == f"Sub({shm.name!r}, size=10)"


def test_fd_attribute(impl, segments):
    shm = segments.add(impl.SharedMemory(create=True, size=300))
    assert isinstance(shm._fd, int) and shm._fd >= 0
    assert os.fstat(shm._fd).st_size == 300
    shm.close()
    assert shm._fd == -1


def test_close_releases_buf_and_is_idempotent(impl, segments):
    shm = segments.add(impl.SharedMemory(create=True, size=64))
    view = shm.buf
    shm.close()
    assert shm.buf is None
    with pytest.raises(ValueError):  # "operation forbidden on released memoryview object"
        view[0]
    shm.close()  # a second close() is a no-op
    shm.close()
    assert h.segment_exists(shm.name)  # close() does not unlink


def test_close_and_del_release_descriptors(impl, segments):
    name = segments.name("fds")
    # Warm up: a first segment may start helpers that keep descriptors open
    # (the stdlib's resource tracker pipe).
    warm = impl.SharedMemory(create=True, size=8)
    warm.close()
    warm.unlink()
    before = h.open_fds()
    shm = impl.SharedMemory(name, create=True, size=64)
    assert h.open_fds() - before, "an open segment holds a descriptor"
    shm.close()
    assert h.open_fds() == before
    shm.unlink()

    # __del__ closes an object that was never closed.
    shm = impl.SharedMemory(name, create=True, size=64)
    shm.unlink()
    del shm
    gc.collect()
    assert h.open_fds() == before


def test_unlink_then_attach_fails(impl, segments):
    name = segments.name("unlink")
    shm = segments.add(impl.SharedMemory(name, create=True, size=64))
    shm.buf[0] = 7
    shm.unlink()
    assert not h.segment_exists(name)
    assert shm.buf[0] == 7  # unlink() does not close: the mapping stays usable
    with pytest.raises(FileNotFoundError) as ei:
        impl.SharedMemory(name)
    assert ei.value.filename == "/" + name
    shm.close()


def test_unlink_after_close(impl, segments):
    shm = segments.add(impl.SharedMemory(create=True, size=64))
    shm.close()
    shm.unlink()  # either order is allowed
    assert not h.segment_exists(shm.name)


def test_unlink_twice_raises_file_not_found(impl, segments):
    shm = segments.add(impl.SharedMemory(create=True, size=64))
    shm.unlink()
    with pytest.raises(FileNotFoundError) as ei:
        shm.unlink()
    assert ei.value.errno == errno.ENOENT
    assert ei.value.filename == "/" + shm.name


def test_flags_subclass_attaches_to_existing(impl, segments):
    name = segments.name("flags")
    shm = segments.add(impl.SharedMemory(name, create=True, size=512))
    shm.buf[0] = 99

    class OptionalAttach(impl.SharedMemory):
        _flags = os.O_CREAT | os.O_RDWR

    other = segments.add(OptionalAttach(name))
    assert other.size == shm.size == 512
    assert other.buf[0] == 99


def test_name_with_leading_slash(impl, segments):
    # CPython prepends a slash anyway; glibc strips the extra one, so it is the
    # same segment, and .name strips exactly one slash (spec §1.3).
    name = segments.name("slash")
    shm = segments.add(impl.SharedMemory(name, create=True, size=16))
    shm.buf[0] = 5
    other = segments.add(impl.SharedMemory("/" + name))
    assert other.buf[0] == 5
    assert other.name == "/" + name


def test_make_filename_collision_retries(impl, segments):
    taken = segments.add(impl.SharedMemory(create=True, size=1))
    free = impl._SHM_NAME_PREFIX + segments.name("free")
    with unittest.mock.patch.object(impl, "_make_filename") as make:
        make.side_effect = [taken._name, free]
        shm = segments.add(impl.SharedMemory(create=True, size=1))
    assert make.call_count == 2
    assert shm._name == free
    assert shm.name == free[1:]
    assert h.segment_exists(free)


def test_make_filename_patched_by_dotted_path(impl, segments):
    # CPython's own tests patch 'multiprocessing.shared_memory._make_filename';
    # the same must work on the module under test, looked up at call time.
    free = impl._SHM_NAME_PREFIX + segments.name("dotted")
    with unittest.mock.patch(impl.__name__ + "._make_filename", return_value=free):
        shm = segments.add(impl.SharedMemory(create=True, size=3))
    assert shm._name == free


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 1 << 20])
def test_sizes(impl, segments, size):
    shm = segments.add(impl.SharedMemory(create=True, size=size))
    assert shm.size == size == len(shm.buf)
    shm.buf[size - 1] = 1
    assert shm.buf[size - 1] == 1


def test_name_of_255_bytes_is_accepted(impl, segments):
    name = segments.name("long")
    name = segments.add_name(name + "b" * (255 - len(name)))
    assert len(name.encode()) == 255
    shm = segments.add(impl.SharedMemory(name, create=True, size=8))
    assert shm.name == name
    assert h.segment_exists(name)


# --------------------------------------------------------------------------
# Pickling


@pytest.mark.parametrize("proto", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_roundtrip_attaches(impl, segments, proto):
    shm = segments.add(impl.SharedMemory(create=True, size=512))
    shm.buf[0:6] = b"pickle"
    data = pickle.dumps(shm, protocol=proto)
    other = segments.add(pickle.loads(data))
    assert isinstance(other, impl.SharedMemory)
    assert other is not shm
    assert (other.name, other.size) == (shm.name, shm.size)
    assert bytes(other.buf[0:6]) == b"pickle"
    shm.buf[0:6] = b"newval"
    assert bytes(other.buf[0:6]) == b"newval"
    other.buf[0:6] = b"oldval"
    assert bytes(shm.buf[0:6]) == b"oldval"


def test_reduce(impl, segments):
    shm = segments.add(impl.SharedMemory(create=True, size=10))
    assert shm.__reduce__() == (impl.SharedMemory, (shm.name, False, 10))


@pytest.mark.parametrize("proto", range(pickle.HIGHEST_PROTOCOL + 1))
def test_unpickle_dead_object(impl, segments, proto):
    shm = segments.add(impl.SharedMemory(create=True, size=512))
    data = pickle.dumps(shm, protocol=proto)
    shm.close()
    shm.unlink()
    with pytest.raises(FileNotFoundError) as ei:
        pickle.loads(data)
    assert ei.value.filename == "/" + shm.name


# --------------------------------------------------------------------------
# The error table (§1.6), in CPython's order of checks:
# size >= 0, then create and size == 0, then name is None.

SIZE_NEGATIVE = "'size' must be a positive integer"
SIZE_ZERO = "'size' must be a positive number different from zero"
NAME_NONE = "'name' can only be None if create=True"


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((), dict(create=True, size=-1)),
        ((), dict(create=True, size=-2)),
        ((None, False, -1), {}),  # size is checked before name
        (("shmkit_t_no_such_segment",), dict(size=-1)),  # even on attach
        ((5,), dict(create=True, size=-1)),  # before the name's type
    ],
)
def test_negative_size(impl, args, kwargs):
    with pytest.raises(ValueError) as ei:
        impl.SharedMemory(*args, **kwargs)
    assert str(ei.value) == SIZE_NEGATIVE
    assert type(ei.value) is ValueError


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((), dict(create=True)),
        ((), dict(create=True, size=0)),
        ((None, True, 0), {}),
        (("shmkit_t_zero",), dict(create=True, size=0)),
    ],
)
def test_create_with_size_zero(impl, args, kwargs):
    with pytest.raises(ValueError) as ei:
        impl.SharedMemory(*args, **kwargs)
    assert str(ei.value) == SIZE_ZERO
    assert type(ei.value) is ValueError


@pytest.mark.parametrize(
    "args, kwargs",
    [((), {}), ((None, False, 10), {}), ((), dict(size=0)), ((None,), dict(create=False))],
)
def test_name_none_without_create(impl, args, kwargs):
    with pytest.raises(ValueError) as ei:
        impl.SharedMemory(*args, **kwargs)
    assert str(ei.value) == NAME_NONE
    assert type(ei.value) is ValueError


def test_create_existing_name(impl, segments):
    name = segments.name("exists")
    segments.add(impl.SharedMemory(name, create=True, size=64))
    with pytest.raises(FileExistsError) as ei:
        impl.SharedMemory(name, create=True, size=64)
    e = ei.value
    assert e.errno == errno.EEXIST
    assert e.strerror == os.strerror(errno.EEXIST)
    assert e.filename == "/" + name
    assert e.args == (errno.EEXIST, os.strerror(errno.EEXIST))


def test_attach_missing_name(impl):
    name = h.unique_name("missing")
    with pytest.raises(FileNotFoundError) as ei:
        impl.SharedMemory(name)
    e = ei.value
    assert e.errno == errno.ENOENT
    assert e.strerror == os.strerror(errno.ENOENT)
    assert e.filename == "/" + name
    assert e.args == (errno.ENOENT, os.strerror(errno.ENOENT))
    assert not h.segment_exists(name)


@pytest.mark.parametrize("create", [True, False], ids=["create", "attach"])
@pytest.mark.parametrize(
    "name, code, filename",
    [
        ("a/b", errno.EINVAL, "/a/b"),
        ("shmkit_t/x/y", errno.EINVAL, "/shmkit_t/x/y"),
        ("", errno.EINVAL, "/"),
        ("c" * 256, errno.ENAMETOOLONG, "/" + "c" * 256),
        ("\u00e9" * 128, errno.ENAMETOOLONG, "/" + "\u00e9" * 128),  # 256 bytes in UTF-8
    ],
    ids=["slash", "slashes", "empty", "256-bytes", "256-utf8-bytes"],
)
def test_invalid_names(impl, create, name, code, filename):
    with pytest.raises(OSError) as ei:
        impl.SharedMemory(name, create=create, size=10)
    e = ei.value
    assert type(e) is OSError, f"{type(e).__name__}: {e}"
    assert e.errno == code, h.errno_name(e.errno)
    assert e.strerror == os.strerror(code)
    assert e.filename == filename


@pytest.mark.parametrize("create", [True, False], ids=["create", "attach"])
@pytest.mark.parametrize("name", [5, b"psm_bytes"], ids=["int", "bytes"])
def test_name_of_wrong_type(impl, create, name):
    before = set(os.listdir(h.DEV_SHM))
    with pytest.raises(TypeError) as ei:
        impl.SharedMemory(name, create=create, size=10)
    if not h.is_shmkit(impl):  # the stdlib's message comes from '/' + name
        assert str(ei.value) == f'can only concatenate str (not "{type(name).__name__}") to str'
    assert h.new_segments(before) == []
    assert not h.segment_exists(os.fsdecode(name) if isinstance(name, bytes) else str(name))


@pytest.mark.parametrize("create", [True, False], ids=["create", "attach"])
def test_size_of_str(impl, create):
    name = h.unique_name("strsize")
    with pytest.raises(TypeError) as ei:
        impl.SharedMemory(name, create=create, size="10")
    if not h.is_shmkit(impl):
        assert str(ei.value) == "'>=' not supported between instances of 'str' and 'int'"
    assert not h.segment_exists(name)


def test_attach_to_empty_segment(impl, segments):
    name = segments.name("empty")
    os.close(os.open(h.shm_path(name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
    with pytest.raises(ValueError) as ei:
        impl.SharedMemory(name)
    assert str(ei.value) == "cannot mmap an empty file"
    assert h.segment_exists(name)  # not ours to remove


@pytest.mark.parametrize("create", [True, False], ids=["create", "attach"])
def test_lone_surrogate_name(impl, create):
    # UnicodeEncodeError (a ValueError) in the stdlib; nothing may be created.
    before = set(os.listdir(h.DEV_SHM))
    with pytest.raises(ValueError):
        impl.SharedMemory(h.unique_name("sur") + "\udc80", create=create, size=10)
    assert h.new_segments(before) == []


# --------------------------------------------------------------------------
# track= (3.13+ in the stdlib; always in shmkit)


def test_track_keyword(impl, segments):
    if not h.has_track(impl):
        pytest.skip("the stdlib takes track= from 3.13 on")
    shm = segments.add(impl.SharedMemory(create=True, size=16, track=False))
    assert shm._track is False
    other = segments.add(impl.SharedMemory(shm.name, track=True))
    assert other._track is True
    with pytest.raises(TypeError):
        impl.SharedMemory(shm.name, False, 0, False)  # keyword-only
    # track is not pickled: the copy tracks (spec §1.7).
    copy = segments.add(pickle.loads(pickle.dumps(shm)))
    assert copy._track is True


def test_untracked_attach_survives_child_exit(impl, segments):
    """A child that attaches with track=False and exits leaves the segment
    alone (gh-82300, fixed by track= in 3.13)."""
    if not h.has_track(impl):
        pytest.skip("the stdlib takes track= from 3.13 on")
    shm = segments.add(impl.SharedMemory(create=True, size=16))
    code = (
        f"import {impl.__name__} as m\n"
        f"s = m.SharedMemory({shm.name!r}, track=False)\n"
        "s.buf[0] = 17\n"
        "s.close()\n"
    )
    proc = h.run_python(code)
    assert proc.returncode == 0, h.describe(proc)
    assert "resource_tracker" not in proc.stderr, proc.stderr
    assert h.segment_exists(shm.name)
    assert shm.buf[0] == 17


# --------------------------------------------------------------------------
# Buffer exports: close() refuses while views are alive


def test_close_with_live_slice_raises_buffer_error(impl, segments):
    shm = segments.add(impl.SharedMemory(create=True, size=64))
    part = shm.buf[0:4]
    part[0] = 1
    with pytest.raises(BufferError):
        shm.close()
    part.release()
    del part
    shm.close()
    assert shm._fd == -1


def test_close_with_live_memoryview_of_buf_raises_buffer_error(impl, segments):
    shm = segments.add(impl.SharedMemory(create=True, size=64))
    view = memoryview(shm.buf)
    with pytest.raises(BufferError):
        shm.close()
    view.release()
    shm.close()
    assert shm._fd == -1


def test_close_with_pickle_buffer_export_raises_buffer_error(impl, segments):
    shm = segments.add(impl.SharedMemory(create=True, size=64))
    pb = pickle.PickleBuffer(shm.buf)
    with pytest.raises(BufferError):
        shm.close()
    pb.release()
    del pb
    shm.close()
    assert shm._fd == -1


# --------------------------------------------------------------------------
# Where shmkit does better than the stdlib


@pytest.mark.shmkit_only
def test_float_size_raises_and_leaves_nothing(shmkit_mod, segments):
    name = segments.name("float")
    with pytest.raises(TypeError):
        shmkit_mod.SharedMemory(name, create=True, size=10.0)
    assert not h.segment_exists(name)
    with pytest.raises(TypeError):
        shmkit_mod.SharedMemory(create=True, size=10.5)


def test_stdlib_float_size_leaks_an_empty_segment(stdlib_mod, segments):
    """The stdlib's TypeError comes after shm_open(O_CREAT): a 0-byte segment
    is left behind, never registered with the tracker (spec §1.4). This is
    what the shmkit_only test above fixes. 3.9 still converts the float,
    with a DeprecationWarning (docs/compat.md)."""
    name = segments.name("floatleak")
    if sys.version_info < (3, 10):
        with pytest.warns(DeprecationWarning):
            shm = stdlib_mod.SharedMemory(name, create=True, size=10.0)
        assert shm.size == 10
        shm.close()
        shm.unlink()
        return
    with pytest.raises(TypeError):
        stdlib_mod.SharedMemory(name, create=True, size=10.0)
    assert h.segment_exists(name)
    assert os.stat(h.shm_path(name)).st_size == 0
    assert h.remove_segment(name)


NON_ASCII_TAG = "t\u00e9st_\u00fc_\u65e5\u672c"


@pytest.mark.shmkit_only
def test_non_ascii_name(shmkit_mod, segments):
    name = segments.name(NON_ASCII_TAG)
    shm = segments.add(shmkit_mod.SharedMemory(name, create=True, size=32))
    assert shm.name == name
    assert name in os.listdir(h.DEV_SHM)  # stored as its UTF-8 bytes
    shm.buf[0:3] = b"abc"
    other = segments.add(shmkit_mod.SharedMemory(name))
    assert bytes(other.buf[0:3]) == b"abc"
    other.close()
    shm.close()
    shm.unlink()
    assert name not in os.listdir(h.DEV_SHM)


def test_stdlib_non_ascii_name_leaks(stdlib_mod, segments):
    """The stdlib creates the segment, then fails to register it with the
    resource tracker, whose protocol is ASCII: UnicodeEncodeError, and the
    segment is left behind. The shmkit_only test above is the fix."""
    name = segments.name(NON_ASCII_TAG)
    with pytest.raises(UnicodeEncodeError):
        stdlib_mod.SharedMemory(name, create=True, size=32)
    gc.collect()
    assert h.segment_exists(name)
    assert h.remove_segment(name)


@pytest.mark.parametrize("create", [True, False], ids=["create", "attach"])
def test_embedded_nul_in_name(impl, segments, create):
    """shmkit refuses a NUL on every Python; the stdlib only from 3.13 on
    (3.11 silently truncates the name at the NUL, spec §1.3)."""
    if not h.is_shmkit(impl) and sys.version_info < (3, 13):
        pytest.skip("the 3.11 stdlib truncates the name at the NUL")
    base = segments.name("nul")
    if not create:
        segments.add(impl.SharedMemory(base, create=True, size=16))
    before = set(os.listdir(h.DEV_SHM))
    with pytest.raises(ValueError) as ei:
        impl.SharedMemory(base + "\0x", create=create, size=16)
    assert "null" in str(ei.value)
    assert h.new_segments(before) == []


def test_embedded_nul_on_unlink(impl, segments):
    if not h.is_shmkit(impl) and sys.version_info < (3, 13):
        pytest.skip("the 3.11 stdlib truncates the name at the NUL")
    shm = segments.add(impl.SharedMemory(segments.name("nulunlink"), create=True, size=16))
    orig = shm._name
    try:
        shm._name = orig + "\0a"
        with pytest.raises(ValueError):
            shm.unlink()
    finally:
        shm._name = orig
    assert h.segment_exists(shm.name)


# --------------------------------------------------------------------------
# rename() (shmkit only; CPython has it only on FreeBSD, in an unmerged PR)


@pytest.mark.shmkit_only
def test_rename_constants(shmkit_mod):
    # FreeBSD's values, as the CPython PR exposes them.
    assert shmkit_mod.SHM_RENAME_NOREPLACE == 1
    assert shmkit_mod.SHM_RENAME_EXCHANGE == 2


@pytest.mark.shmkit_only
def test_rename_to_fresh_name(shmkit_mod, segments):
    old = segments.name("ren_old")
    new = segments.name("ren_new")
    shm = segments.add(shmkit_mod.SharedMemory(old, create=True, size=32))
    shm.buf[0:3] = b"abc"
    shm.rename(new)
    assert shm.name == new and shm._name == "/" + new
    assert not h.segment_exists(old) and h.segment_exists(new)
    assert bytes(shm.buf[0:3]) == b"abc"
    other = segments.add(shmkit_mod.SharedMemory(new))
    assert bytes(other.buf[0:3]) == b"abc"
    assert repr(shm) == f"SharedMemory({new!r}, size=32)"
    assert pickle.loads(pickle.dumps(shm)).name == new
    shm.unlink()
    assert not h.segment_exists(new)


@pytest.mark.shmkit_only
def test_rename_replaces_by_default(shmkit_mod, segments):
    a = segments.add(shmkit_mod.SharedMemory(segments.name("ren_a"), create=True, size=16))
    b = segments.add(shmkit_mod.SharedMemory(segments.name("ren_b"), create=True, size=16))
    a.buf[0] = 1
    b.buf[0] = 2
    old_a = a.name
    a.rename(b.name, flags=0)
    assert a.name == b.name
    assert not h.segment_exists(old_a)
    other = segments.add(shmkit_mod.SharedMemory(b.name))
    assert other.buf[0] == 1


@pytest.mark.shmkit_only
def test_rename_noreplace(shmkit_mod, segments):
    a = segments.add(shmkit_mod.SharedMemory(segments.name("ren_a"), create=True, size=16))
    b = segments.add(shmkit_mod.SharedMemory(segments.name("ren_b"), create=True, size=16))
    with pytest.raises(FileExistsError) as ei:
        a.rename(b.name, flags=shmkit_mod.SHM_RENAME_NOREPLACE)
    assert ei.value.errno == errno.EEXIST
    assert ei.value.filename == "/" + b.name
    assert h.segment_exists(a.name) and h.segment_exists(b.name)
    fresh = segments.name("ren_fresh")
    a.rename(fresh, shmkit_mod.SHM_RENAME_NOREPLACE)
    assert a.name == fresh and h.segment_exists(fresh)


@pytest.mark.shmkit_only
def test_rename_exchange(shmkit_mod, segments):
    a = segments.add(shmkit_mod.SharedMemory(segments.name("ren_a"), create=True, size=16))
    b = segments.add(shmkit_mod.SharedMemory(segments.name("ren_b"), create=True, size=16))
    a.buf[0] = 1
    b.buf[0] = 2
    name_a, name_b = a.name, b.name
    a.rename(name_b, flags=shmkit_mod.SHM_RENAME_EXCHANGE)
    assert a.name == name_b
    at_a = segments.add(shmkit_mod.SharedMemory(name_a))
    at_b = segments.add(shmkit_mod.SharedMemory(name_b))
    assert (at_a.buf[0], at_b.buf[0]) == (2, 1)
    missing = segments.name("ren_missing")
    with pytest.raises(FileNotFoundError):
        a.rename(missing, flags=shmkit_mod.SHM_RENAME_EXCHANGE)
    assert a.name == name_b


@pytest.mark.shmkit_only
def test_rename_refuses_bad_names_and_flags(shmkit_mod, segments):
    shm = segments.add(shmkit_mod.SharedMemory(segments.name("ren_bad"), create=True, size=16))
    name = shm.name
    with pytest.raises(OSError) as ei:
        shm.rename("a/b")
    assert ei.value.errno == errno.EINVAL
    with pytest.raises((ValueError, OSError)):
        shm.rename(h.unique_name("x"), flags=4)
    with pytest.raises((ValueError, OSError)):
        shm.rename(
            h.unique_name("x"),
            flags=shmkit_mod.SHM_RENAME_NOREPLACE | shmkit_mod.SHM_RENAME_EXCHANGE,
        )
    assert shm.name == name and h.segment_exists(name)


PY_LONG_OVERFLOW = "Python int too large to convert to C long"


@pytest.mark.parametrize("size", [2**63, 2**64, 10**30], ids=["2**63", "2**64", "10**30"])
def test_size_beyond_a_c_long_raises_overflow_error(impl, segments, size):
    name = segments.name("huge")
    with pytest.raises(OverflowError) as ei:
        impl.SharedMemory(name, create=True, size=size)
    assert str(ei.value) == PY_LONG_OVERFLOW
    assert type(ei.value) is OverflowError
    if h.is_shmkit(impl):
        # Raised before anything exists (the stdlib leaks an empty segment
        # here, as for a float size).
        assert not h.segment_exists(name)


@pytest.mark.parametrize("size", [2**63 - 1, 2**62], ids=["2**63-1", "2**62"])
def test_size_no_machine_has_is_an_os_error_leaving_nothing(impl, segments, size):
    """The stdlib's mmap fails (ENOMEM); shmkit's reservation fails first
    (ENOSPC, as for any create /dev/shm has no room for)."""
    name = segments.name("huge")
    with pytest.raises(OSError) as ei:
        impl.SharedMemory(name, create=True, size=size)
    want = errno.ENOSPC if h.is_shmkit(impl) else errno.ENOMEM
    assert type(ei.value) is OSError and ei.value.errno == want
    assert not h.segment_exists(name)


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_attach_to_what_is_not_a_segment_is_einval(impl, segments, kind):
    name = segments.name(kind)
    path = h.shm_path(name)
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    else:
        os.mkdir(path, 0o700)
    def stuck(signum, frame):
        raise TimeoutError("the attach waited on the FIFO")

    previous = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(10)
    try:
        # Opening a FIFO must not wait for a writer.
        with pytest.raises(OSError) as ei:
            h.attach_untracked(impl, name)
        signal.alarm(0)
        assert type(ei.value) is OSError and ei.value.errno == errno.EINVAL, ei.value
        # glibc's shm_open answers EINVAL for a directory (with the name);
        # mmap answers it for a FIFO (naming no file).
        assert ei.value.filename == ("/" + name if kind == "directory" else None)
        assert str(ei.value).startswith("[Errno 22] Invalid argument")
        if h.is_shmkit(impl):
            # Left as it was: an attach never removes what it did not make
            # (the stdlib unlinks the FIFO).
            assert os.path.lexists(path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        if kind == "directory":
            os.rmdir(path)


@pytest.mark.shmkit_only
def test_reserve_keyword(shmkit_mod, segments):
    """``reserve=False`` makes a create sparse; ``reserve=True`` makes an
    attach fill the holes (tests/python/test_no_space.py: what for)."""
    size = 1 << 20
    name = segments.name("reserve")

    def allocated():
        return os.stat(h.shm_path(name)).st_blocks * 512

    made = segments.add(shmkit_mod.SharedMemory(name, create=True, size=size, reserve=False))
    made.buf[-5:] = b"kept!"
    sparse = allocated()
    assert sparse < size // 2
    plain = shmkit_mod.SharedMemory(name, track=False)
    assert allocated() == sparse
    reserved = shmkit_mod.SharedMemory(name, track=False, reserve=True)
    assert allocated() >= size
    assert bytes(reserved.buf[-5:]) == b"kept!" and reserved.size == size
    plain.close()
    reserved.close()
    with pytest.raises(TypeError):
        shmkit_mod.SharedMemory(name, False, 0, False)  # keyword-only
