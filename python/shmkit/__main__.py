"""``python -m shmkit COMMAND``: the Python-side commands of shmkit."""

import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    commands = {"demo": "shared memory between worker processes, against pickling"}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: python -m shmkit COMMAND [ARGS]\n\ncommands:")
        for name, what in commands.items():
            print(f"  {name:<8} {what}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] == "demo":
        from . import demo

        demo.main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
