"""``python -m shmkit COMMAND``, and the ``shmkit`` script ``pip install``
makes: ``demo`` runs here, in Python; every other command (``ls``, ``show``,
``rm``, ``gc``, ``serve``, ``--help``) is the native ``shmkit`` command, the
same as the Rust binary's."""

import sys


def main(argv=None):
    """Runs ``shmkit ARGV...`` and returns its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "demo":
        from . import demo

        demo.main(argv[1:])
        return 0
    from ._shmkit import cli_main

    # The native command writes to the file descriptors directly.
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        return cli_main(["shmkit", *argv])
    except UnicodeEncodeError:
        print("shmkit: arguments must be valid UTF-8", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, seen by Python once the command returns
        return 130


if __name__ == "__main__":
    sys.exit(main())
