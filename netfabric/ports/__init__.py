"""Ports: the ends of cables plugged into a switch, one module per kind: ``host`` (a port
driven from code), ``link`` (a cable between two switches), ``tap`` (the host's kernel
through a TAP device)."""
