"""The core's errno → exception table (crates/shmkit/src/pyexc.rs), which the
manager server and the bindings both use, against this interpreter's own
mapping of OSError(errno, ...) to its subclasses."""

import errno

from shmkit import _shmkit


def test_table_matches_the_interpreter():
    table = _shmkit.errno_exceptions()
    assert table
    for code, name in table:
        assert type(OSError(code, "x")).__name__ == name, errno.errorcode.get(code, code)


def test_unlisted_errnos_stay_oserror():
    listed = {code for code, _ in _shmkit.errno_exceptions()}
    for code in (errno.EINVAL, errno.ENOSPC, errno.EBADF, errno.ENOMEM):
        assert code not in listed
        assert type(OSError(code, "x")) is OSError
