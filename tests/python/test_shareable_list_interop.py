"""ShareableList shared between a stdlib process and this one, in either role.

The stdlib side is ``stdlib_peer.py lists`` under a separate CPython of each
supported version (test_interop.py's Peer and fixtures); this side is the
module under test. Values are compared one by one, with their types, and the segment's
bytes against shm_helpers' model of the layout (reference §2.1, §2.2).
"""

import pytest

import shm_helpers as h
import stdlib_peer
from test_interop import peer_python, peers  # noqa: F401  (fixtures)

EXAMPLE = h.SL_EXAMPLE

# name -> (values to create, then (index, value) writes by the creator).
CASES = {
    "example": (EXAMPLE, []),
    "six_types": (h.SL_SIX_TYPES, []),
    "empty": ([], []),
    "alpha": (list("alpha"), []),
    "type_changes": (
        EXAMPLE,
        [(2, -78.5), (2, "dry ice"), (4, "some"), (0, 5), (3, None), (5, 2.5), (6, b"bytes"), (1, True)],
    ),
}

# What the attaching side writes, item by item, in turn: all of them fit any
# slot (every slot holds at least 8 bytes). A slot wider than 8 gets a str or
# bytes, which fills it: a fixed-size value would leave the rest of the slot
# as it was (CPython does; the model cannot know those bytes).
REPLIES = [None, True, -2, 0.5, "w\u00e9", b"b\0b", 2**63 - 1, "", False]
WIDE_REPLIES = ["w\u00e9", b"b\0b", ""]


def enc(values):
    return [stdlib_peer.encode_value(v) for v in values]


def dec(values):
    return [stdlib_peer.decode_value(v) for v in values]


def apply(values, writes):
    values = list(values)
    for i, v in writes:
        values[i] = v
    return values


def replies(slots):
    return [
        (i, WIDE_REPLIES[i % 3] if slot > 8 else REPLIES[i % len(REPLIES)])
        for i, slot in enumerate(slots)
    ]


def check_state(state, values, slots):
    """The peer's view: the values, and the segment's bytes."""
    assert "error" not in state, state
    assert h.typed(dec(state["values"])) == h.typed(values)
    assert state["len"] == len(values)
    assert bytes.fromhex(state["hex"]) == h.sl_layout(values, slots=slots)


@pytest.mark.parametrize("case", CASES)
def test_stdlib_creates_we_attach(impl, segments, peers, peer_python, case):
    values, writes = CASES[case]
    slots = [h.sl_slot_size(v, "chars") for v in values]
    peer = peers(peer_python, "lists")
    state = peer.ask(create=[None, enc(values)])
    assert "error" not in state, state
    name = segments.add_name(state["name"])
    for i, v in writes:
        assert peer.ask(set=[name, i, stdlib_peer.encode_value(v)]) == {"ok": True}
    expected = apply(values, writes)
    state = peer.ask(state=name)
    check_state(state, expected, slots)

    ours = h.attach_list_untracked(impl, name)
    assert ours.shm.name == name
    assert len(ours) == len(expected)
    assert h.typed(ours) == h.typed(expected)
    assert ours.format == state["format"]
    assert h.segment_bytes(name) == bytes.fromhex(state["hex"])

    for i, v in replies(slots):
        ours[i] = v
    expected = apply(expected, replies(slots))
    assert h.segment_bytes(name) == h.sl_layout(expected, slots=slots)
    state = peer.ask(state=name)
    check_state(state, expected, slots)
    assert state["format"] == ours.format
    ours.shm.close()

    assert peer.ask(unlink=name) == {"ok": True}
    rc, stderr = peer.finish()
    assert rc == 0, stderr
    assert "resource_tracker" not in stderr, stderr
    assert not h.segment_exists(name)


@pytest.mark.parametrize("case", CASES)
def test_we_create_stdlib_attaches(impl, segments, peers, peer_python, case):
    values, writes = CASES[case]
    slots = [h.sl_slot_size(v) for v in values]  # ASCII: the same as "chars"
    ours = h.list_class(impl)(values)
    segments.add(ours.shm)
    for i, v in writes:
        ours[i] = v
    expected = apply(values, writes)
    assert h.segment_bytes(ours.shm.name) == h.sl_layout(expected, slots=slots)

    peer = peers(peer_python, "lists")
    state = peer.ask(attach=ours.shm.name)
    check_state(state, expected, slots)
    assert state["format"] == ours.format
    assert state["size"] == ours.shm.size

    for i, v in replies(slots):
        assert peer.ask(set=[ours.shm.name, i, stdlib_peer.encode_value(v)]) == {"ok": True}
    expected = apply(expected, replies(slots))
    assert h.typed(ours) == h.typed(expected)
    assert h.segment_bytes(ours.shm.name) == h.sl_layout(expected, slots=slots)
    assert peer.ask(close=ours.shm.name) == {"ok": True}
    rc, stderr = peer.finish()
    assert rc == 0, stderr
    assert "resource_tracker" not in stderr, stderr
    assert h.segment_exists(ours.shm.name), "an untracked stdlib attach must leave the segment alone"


MULTIBYTE = ["\u00e9" * 5, "\u20ac" * 5, "na\u00efve caf\u00e9", "\u65e5\u672c\u8a9e\u30c6\u30ad\u30b9\u30c8", 1, b"\xc3\xa9"]


@pytest.mark.shmkit_only
def test_we_create_multibyte_str_stdlib_reads_it(shmkit_mod, segments, peers, peer_python):
    """shmkit sizes str slots by UTF-8 bytes and writes the size in the
    format, which is all a stdlib reader needs: it reads every character.
    (A list the stdlib creates cuts 'é'*5 to 'éééé', gh-88336.)"""
    ours = h.list_class(shmkit_mod)(MULTIBYTE)
    segments.add(ours.shm)
    assert ours.format == "16s16s16s24sq8s"
    assert h.segment_bytes(ours.shm.name) == h.sl_layout(MULTIBYTE)

    peer = peers(peer_python, "lists")
    state = peer.ask(attach=ours.shm.name)
    check_state(state, MULTIBYTE, [16, 16, 16, 24, 8, 8])
    assert state["format"] == ours.format

    # The stdlib writes by UTF-8 length into the slot it finds: 16 bytes fit.
    assert peer.ask(set=[ours.shm.name, 0, "\u00fc" * 8]) == {"ok": True}
    assert ours[0] == "\u00fc" * 8
    reply = peer.ask(set=[ours.shm.name, 1, "\u00fc" * 9])
    assert reply["error"][0] == "ValueError" and "exceeds available storage" in reply["error"][1]
    assert ours[1] == "\u20ac" * 5
    ours[3] = "\u4e2d" * 8  # 24 bytes
    assert dec(peer.ask(state=ours.shm.name)["values"])[3] == "\u4e2d" * 8
    assert peer.ask(close=ours.shm.name) == {"ok": True}
    rc, stderr = peer.finish()
    assert rc == 0, stderr
