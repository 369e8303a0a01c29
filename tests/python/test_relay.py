"""The bindings' RelayClient writes the manager's tracking-channel lines
(crates/shmkit/src/manager/relay.rs owns both ends); managers.py only calls
it."""

import socket

import pytest

from shmkit import _shmkit


def test_relay_client_writes_the_channel_lines():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    relay = _shmkit.RelayClient(ours.detach())
    relay.send_track("psm_a")
    relay.request_confirmation()
    theirs.sendall(b".")
    assert relay.await_confirmations(1) == 1
    with pytest.raises(ValueError):
        relay.send_track("psm\nb")
    relay.shutdown()
    relay.close()
    sent = b""
    while chunk := theirs.recv(4096):
        sent += chunk
    assert sent == b"+psm_a\n\n!\n"
    with pytest.raises(ValueError):
        relay.shutdown()  # closed
    theirs.close()


def test_await_counts_answers_until_the_channel_closes():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    relay = _shmkit.RelayClient(ours.detach())
    theirs.sendall(b".")
    theirs.close()
    assert relay.await_confirmations(2) == 1
    relay.close()
