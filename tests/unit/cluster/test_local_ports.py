"""The local cluster's port picking: one node's ports are distinct (back-to-back single picks can
repeat a port, which Ray refuses at start-up: "trying to use a port number … used by other components")."""

from __future__ import annotations

from cluster.local import free_ports


def test_free_ports_are_distinct():
    for _ in range(20):
        ports = free_ports(8)  # what one node's `ray start` asks for at once
        assert len(set(ports)) == 8 and all(1024 <= port < 65536 for port in ports)
