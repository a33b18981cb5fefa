"""``hv link LAB [CABLE [down|up|show]]``: pull a running lab's cable out and plug it back
through its control socket (the ``link`` op, docs/CONTROL.md), as Mininet's ``link r1 s1
down`` does, or ``ip link set ... down`` on a veth."""

from __future__ import annotations

import argparse
import json
from typing import Any

from hv._errors import ConfigError
from hv.cli._control import EXIT_FAILED, ask_lab

ACTIONS = ("show", "down", "up")


def add_parsers(sub: Any) -> None:
    """``hv link`` (``sub``: the subparsers)."""
    p = sub.add_parser(
        "link",
        help="pull a running lab's cable out (down) or plug it back (up); show cables",
        description=(
            "Set a cable of running lab LAB down or up, as Mininet's 'link r1 s1 down': "
            "'hv link LAB r1.eth0 down' pulls r1's first NIC's cable out (its guest loses "
            "carrier at once: Linux says NO-CARRIER and routing daemons react; the switch "
            "forgets the MACs it learned there); 'hv link LAB s1-s2 down' cuts the link "
            "between two switches. While a cable is down nothing crosses it either way, and "
            "what it would have carried is counted as drops by cause 'down' (hv stats, hv "
            "top). 'up' plugs it back. 'show' (the default) prints the cable's state and "
            "counts; without CABLE, every cable. Every NIC and every link has a cable, "
            "impaired or not. CABLE is named as hv netem names it: VM.ethN for a NIC's "
            "cable (or the VM's name when it has one NIC, or VM-SWITCH), links[N] for the "
            "lab file's Nth [[links]] entry (or its ends: s1-s2). On a virtual-time lab the "
            "change happens at the lab's current time."
        ),
    )
    p.add_argument("lab", metavar="LAB")
    p.add_argument("cable", nargs="?", metavar="CABLE", help="VM.ethN, VM, links[N] or A-B")
    p.add_argument("action", nargs="?", metavar="down|up|show", help="default: show")
    p.add_argument("--json", action="store_true", help="print the cable(s) as JSON")


def link_command(args: argparse.Namespace) -> int:
    cable, action = args.cable, args.action
    if cable in ACTIONS and action is None and cable != "show":
        raise ConfigError(f"{cable}: name the cable (hv link {args.lab} shows them)")
    if cable == "show" and action is None:
        cable = None
    action = action or "show"
    if action not in ACTIONS:
        raise ConfigError(f"{action!r}: the action is down, up or show")
    request: dict[str, Any] = {}
    if cable is not None:
        request["cable"] = cable
    if action != "show":
        request["state"] = action
    answer = ask_lab(args, "link", request)
    if answer is None:
        return EXIT_FAILED
    if args.json:
        print(json.dumps(answer.get("cable", answer), indent=2))
        return 0
    cables = [answer["cable"]] if "cable" in answer else answer["cables"]
    for c in cables:
        print(cable_line(c))
    if not cables:
        print(f"lab {args.lab} has no cables")
    return 0


def cable_line(c: dict[str, Any]) -> str:
    """One cable as ``hv link ... show`` prints it::

    a.eth0 a-lan nic up a->lan=12 lan->a=10 down_drops=0
    """
    eg, ing = c["egress"], c["ingress"]
    return (
        f"{c['name']} {c['label']} {c['kind']} {'up' if c['up'] else 'down'} "
        f"{eg['from']}->{eg['to']}={eg['frames']} {ing['from']}->{ing['to']}={ing['frames']} "
        f"down_drops={c['down_drops']}"
    )
