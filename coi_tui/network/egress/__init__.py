"""Egress by name: the host-side proxy that filters containers' web traffic by the name each
connection asks for (see proxy.py), its policies (policy.py) and its process (service.py)."""
