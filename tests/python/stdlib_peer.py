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

    stdlib_peer.py lists
        Serves ShareableList commands; NAME is a segment name, VALUE a value
        as encode_value() gives it (JSON null, booleans, numbers and strings
        as themselves; {"bytes": HEX}; {"float": "nan"|"inf"|"-inf"}):
          {"create": [NAME|null, [VALUE...]]} -> STATE
          {"attach": NAME}         -> STATE (untracked: ShareableList has no
                                      track=, so it is unregistered, gh-82300)
          {"state": NAME}          -> STATE
          {"set": [NAME, I, VALUE]} -> {"ok": true}
          {"close": NAME}          -> {"ok": true}
          {"unlink": NAME}         -> {"ok": true} (closes and unlinks)
        STATE = {"name", "size", "len", "format", "values", "hex"}: "hex" is
        the whole segment, and an item that cannot be read is
        {"error": [TYPE, MESSAGE]} in "values". A command that raises is
        answered {"error": [TYPE, MESSAGE]}. At end of input it closes every
        list, and unlinks those it created.
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


def encode_value(value):
    """A ShareableList value as JSON can carry it, type and all."""
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, float) and (value != value or abs(value) == float("inf")):
        return {"float": repr(value)}
    return value


def decode_value(value):
    if isinstance(value, dict):
        if "bytes" in value:
            return bytes.fromhex(value["bytes"])
        if "float" in value:
            return float(value["float"])
    return value


def _error(e):
    return {"error": [type(e).__name__, str(e)]}


def _state(sl):
    values = []
    for i in range(len(sl)):
        try:
            values.append(encode_value(sl[i]))
        except Exception as e:
            values.append(_error(e))
    return {
        "name": sl.shm.name,
        "size": sl.shm.size,
        "len": len(sl),
        "format": sl.format,
        "values": values,
        "hex": bytes(sl.shm.buf[: sl.shm.size]).hex(),
    }


def lists():
    opened = {}  # name -> (ShareableList, created)
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            try:
                if "create" in cmd:
                    name, values = cmd["create"]
                    sl = shared_memory.ShareableList([decode_value(v) for v in values], name=name)
                    opened[sl.shm.name] = (sl, True)
                    answer(_state(sl))
                elif "attach" in cmd:
                    sl = shared_memory.ShareableList(name=cmd["attach"])
                    resource_tracker.unregister(sl.shm._name, "shared_memory")
                    opened[sl.shm.name] = (sl, False)
                    answer(_state(sl))
                elif "state" in cmd:
                    answer(_state(opened[cmd["state"]][0]))
                elif "set" in cmd:
                    name, i, value = cmd["set"]
                    opened[name][0][i] = decode_value(value)
                    answer({"ok": True})
                elif "close" in cmd or "unlink" in cmd:
                    sl, _ = opened.pop(cmd.get("close") or cmd["unlink"])
                    sl.shm.close()
                    if "unlink" in cmd:
                        sl.shm.unlink()
                    answer({"ok": True})
                else:
                    answer({"error": ["KeyError", f"unknown command {cmd!r}"]})
            except Exception as e:
                answer(_error(e))
    finally:
        for sl, created in opened.values():
            sl.shm.close()
            if created:
                sl.shm.unlink()


def main(argv):
    if argv[0] == "create":
        create(argv[1], argv[2], bytes.fromhex(argv[3]))
    elif argv[0] == "attach":
        attach(argv[1], argv[2], bytes.fromhex(argv[3]), tracked=argv[4:] == ["tracked"])
    elif argv[0] == "lists":
        lists()
    else:
        raise SystemExit(f"unknown command {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
