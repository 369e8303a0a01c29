"""The stdlib side of the interop tests, run by another CPython (3.11, 3.13).

It imports nothing but the standard library, and talks JSON lines: commands on
stdin, one answer per command on stdout.

    stdlib_peer.py create NAME|- SIZE HEX
        Creates the segment (a generated name for "-"), writes HEX at offset 0
        and answers {"name", "size"}. Then serves commands:
          {"read": [offset, length]}  -> {"hex": ...}
          {"write": [offset, hex]}    -> {"ok": true}
          {"unlink": true}            -> {"ok": true}  (closes and unlinks; ends)
        At end of input it closes and unlinks, so that nothing leaks.

    stdlib_peer.py attach NAME OFFSET HEX
        Attaches without taking responsibility for the segment (track=False on
        3.13+, resource_tracker.unregister before: gh-82300), answers
        {"size", "head"} (head = the first 64 bytes), writes HEX at OFFSET,
        closes and exits. With the extra argument "tracked", it stays
        registered, as a naive 3.8-3.12 program would.
"""

import json
import sys
from multiprocessing import resource_tracker, shared_memory


def answer(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def create(name, size, data):
    shm = shared_memory.SharedMemory(None if name == "-" else name, create=True, size=int(size))
    try:
        shm.buf[: len(data)] = data
        answer({"name": shm.name, "size": shm.size})
        for line in sys.stdin:
            cmd = json.loads(line)
            if "read" in cmd:
                offset, length = cmd["read"]
                answer({"hex": bytes(shm.buf[offset : offset + length]).hex()})
            elif "write" in cmd:
                offset, hexdata = cmd["write"]
                payload = bytes.fromhex(hexdata)
                shm.buf[offset : offset + len(payload)] = payload
                answer({"ok": True})
            elif "unlink" in cmd:
                break
    finally:
        shm.close()
        shm.unlink()
    answer({"ok": True})


def attach(name, offset, data, tracked=False):
    if tracked:
        shm = shared_memory.SharedMemory(name)
    elif sys.version_info >= (3, 13):
        shm = shared_memory.SharedMemory(name, track=False)
    else:
        shm = shared_memory.SharedMemory(name)
        resource_tracker.unregister(shm._name, "shared_memory")
    try:
        answer({"size": shm.size, "head": bytes(shm.buf[:64]).hex()})
        shm.buf[int(offset) : int(offset) + len(data)] = data
    finally:
        shm.close()


def main(argv):
    if argv[0] == "create":
        create(argv[1], argv[2], bytes.fromhex(argv[3]))
    elif argv[0] == "attach":
        attach(argv[1], argv[2], bytes.fromhex(argv[3]), tracked=argv[4:] == ["tracked"])
    else:
        raise SystemExit(f"unknown command {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
