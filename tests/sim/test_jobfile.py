"""`free_port`: the reply endpoint's port must still be free when the job binds it, seconds later."""

from __future__ import annotations

import socket

import pytest

from spine_sim import jobfile
from spine_sim.jobfile import free_port


def test_ports_come_from_below_the_ephemeral_range_and_are_never_given_twice() -> None:
    low = jobfile._ephemeral_low()
    if low is None or low - jobfile._LOWEST < 1_000:
        pytest.skip("this kernel does not say its ephemeral port range, or it leaves too little below it")
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(jobfile._LOWEST <= port < low for port in ports)


def test_a_port_given_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_the_kernel_chooses_when_the_range_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobfile, "_ephemeral_low", lambda: None)
    port = free_port()
    assert 0 < port < 65_536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_a_taken_port_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    if jobfile._ephemeral_low() is None:
        pytest.skip("this kernel does not say its ephemeral port range")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        real = jobfile._rng.randrange
        calls: list[int] = []

        def draw(start: int, stop: int) -> int:
            calls.append(start)
            return taken if len(calls) == 1 else real(start, stop)

        monkeypatch.setattr(jobfile._rng, "randrange", draw)
        assert free_port() != taken
        assert len(calls) >= 2
