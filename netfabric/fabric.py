"""Deprecated: the old home of the switch with ports. Import from ``netfabric`` (or its
modules: ``netfabric.switch``, ``netfabric.ports``) instead.

(Its parts moved: ``Switch`` to ``netfabric.switch``, ``SwitchPort``, ``Deliver``,
``Listener`` and ``Cable`` to ``netfabric.ports.base``, ``HostPort`` to
``netfabric.ports.host``, ``Link`` to ``netfabric.ports.link``. This module keeps the old
names importable.)
"""

from netfabric.ports.base import Cable, Deliver, Listener, SwitchPort
from netfabric.ports.host import HostPort
from netfabric.ports.link import Link, find_loop
from netfabric.switch import FLUSH_INTERVAL, Switch

__all__ = [
    "FLUSH_INTERVAL", "Cable", "Deliver", "HostPort", "Link", "Listener", "Switch", "SwitchPort",
    "find_loop",
]  # fmt: skip
