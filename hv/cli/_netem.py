"""``hv netem LAB [CABLE [show|set ...]]``: a running lab's impaired cables, shown and changed
live through its control socket (the ``netem`` op, docs/CONTROL.md), as containerlab's
``tools netem`` does for a node's interface.

Values are spelled as in a lab file's ``impair`` table, with two stricter rules where
netem's and containerlab's habits differ from ours: a probability other than 0 needs its
``%`` (``--loss 1`` is 1 % to them and would be 100 % in a lab file), and a rate needs its
unit (containerlab's ``--rate 1000`` is kbit/s, a lab file's bare number bits/s).
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from hv._errors import ConfigError
from hv.cli._control import EXIT_FAILED, ask_lab

DELAY_HELP = (
    "Each direction of a cable has its own settings, and a delay applies per direction: "
    "--delay 20ms on a link adds 20 ms each way, 40 ms to a round trip (tc netem, and "
    "containerlab's tools netem, delay one interface's egress: once per round trip; "
    "--direction egress does that here)."
)

UP_IMPAIR_EPILOG = (
    "Impairment (impair = {...} on a link or a NIC in the lab file) applies to each direction "
    'of the cable on its own, so a delay applies per direction: delay = "20ms" adds 20 ms '
    "each way, 40 ms to a round trip (netem on one interface adds it once; give "
    "impair = { egress = {...} } for one direction only). 'hv netem LAB CABLE set ...' "
    "changes it while the lab runs."
)

# option -> the impair key it sets, and how its value is spelled
_OPTIONS = {
    "delay": "duration",
    "jitter": "duration",
    "jitter_dist": "choice",
    "loss": "percent",
    "loss_burst": "burst",
    "duplicate": "percent",
    "corrupt": "percent",
    "reorder": "percent",
    "rate": "rate",
    "queue": "size",
    "burst": "size",
    "mtu": "mtu",
    "seed": "seed",
}
_NONE = ("none", "off", "0")
_BARE = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")


def add_parsers(sub: Any, up: argparse.ArgumentParser | None = None) -> None:
    """``hv netem`` (``sub``: the subparsers); ``up``: hv up's parser, whose help gets a word
    on impairment."""
    p = sub.add_parser(
        "netem",
        help="show or change a running lab's impaired cables (delay, loss, rate, ...)",
        description=(
            "Show or change the impairment on a cable of running lab LAB, as containerlab's "
            "tools netem does: 'hv netem LAB links[0] set --delay 20ms --jitter 5ms --loss 1% "
            "--rate 50Mbit' changes only the settings given and keeps the others (and the "
            "counters); 'show' (the default) prints each direction's settings and counters; "
            "without CABLE, every cable. CABLE is a key of the lab's impairments: links[N] "
            "for the lab file's Nth [[links]] entry (or its ends: lan-wan), VM.ethN for a "
            "NIC's cable (or the VM's name when one of its NICs is impaired). Only a cable "
            "with impair = {...} in the lab file has an impairment to change (impair = {} "
            "starts one with nothing). " + DELAY_HELP + " On a link egress runs from a to b; "
            "on a NIC's cable it leaves the VM."
        ),
    )
    p.add_argument("lab", metavar="LAB")
    p.add_argument("cable", nargs="?", metavar="CABLE", help="links[N], A-B, VM.ethN or VM")
    p.add_argument("action", nargs="?", metavar="show|set", help="default: show")
    p.add_argument(
        "--direction",
        default="both",
        choices=("both", "egress", "ingress"),
        help="which direction set changes (default both)",
    )
    p.add_argument("--json", action="store_true", help="print the cable(s) as JSON")
    s = p.add_argument_group("settings (set)")
    s.add_argument("--delay", metavar="D", help="e.g. 20ms (per direction)")
    s.add_argument("--jitter", metavar="D", help="e.g. 5ms, around the delay")
    s.add_argument("--jitter-dist", choices=("uniform", "normal"), help="default uniform")
    s.add_argument("--loss", metavar="P%", help="e.g. 1%% (0 for none)")
    s.add_argument(
        "--loss-burst", metavar="P%:LEN", help="bursty loss: 2%%:4 is 2%% in bursts of 4; off"
    )
    s.add_argument("--duplicate", metavar="P%", help="e.g. 0.1%%")
    s.add_argument("--corrupt", metavar="P%", help="a flipped bit, e.g. 0.1%%")
    s.add_argument("--reorder", metavar="P%", help="frames sent ahead of the delay, e.g. 1%%")
    s.add_argument("--rate", metavar="R", help="e.g. 50Mbit, 800kbit; none: no limit")
    s.add_argument("--queue", metavar="SIZE", help="the rate limiter's queue, e.g. 64KiB")
    s.add_argument("--burst", metavar="SIZE", help="the token bucket, e.g. 3KiB")
    s.add_argument("--mtu", metavar="N", help="largest L3 payload in bytes; none: no limit")
    s.add_argument("--seed", metavar="S", help="reseeds the direction's random decisions")
    if up is not None and up.epilog is None:
        up.epilog = UP_IMPAIR_EPILOG


def _value(option: str, kind: str, text: str) -> Any:
    """A command-line value as the ``set`` table wants it (a ConfigError if it is not one)."""
    flag = "--" + option.replace("_", "-")
    low = text.strip().lower()
    if kind == "percent":
        if _BARE.fullmatch(low):
            if float(low) == 0:
                return 0
            raise ConfigError(
                f"{flag}: {text} is ambiguous: write {text}% (or {float(low) * 100:g}%)"
            )
        return text
    if kind == "duration":
        if _BARE.fullmatch(low):
            if float(low) == 0:
                return 0
            raise ConfigError(f"{flag}: {text} is not a duration; use e.g. 20ms")
        return text
    if kind == "rate":
        if low in _NONE:
            return None
        if _BARE.fullmatch(low):
            raise ConfigError(
                f"{flag}: {text} needs a unit: e.g. 50Mbit or 800kbit (containerlab's "
                "--rate counts kbit/s); none for no limit"
            )
        return text
    if kind == "mtu":
        if low in _NONE:
            return None
        if not low.isdigit():
            raise ConfigError(f"{flag}: {text} is not an MTU; use e.g. 1400, or none")
        return int(low)
    if kind == "size":
        return int(low) if low.isdigit() else text
    if kind == "seed":
        return int(low) if low.isdigit() else text
    if kind == "burst":
        if low in _NONE:
            return None
        loss, sep, length = text.partition(":")
        try:
            mean = float(length)
        except ValueError:
            mean = -1.0
        if not sep or not loss.endswith("%") or mean < 1:
            raise ConfigError(
                f"{flag}: {text} is not LOSS%:LENGTH (e.g. 2%:4: 2% of frames lost in bursts "
                "of 4 on average), or off"
            )
        return {"loss": loss, "length": mean}
    return text


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ``set`` table the options ask for, checked as the lab will check it (a
    ConfigError naming the option)."""
    from hv.lab import parse_changes

    table = {
        name: _value(name, kind, getattr(args, name))
        for name, kind in _OPTIONS.items()
        if getattr(args, name) is not None
    }
    try:
        parse_changes(table, "set")
    except ValueError as e:
        message = str(e)
        if message.startswith("set."):  # set.delay: ... -> --delay: ...
            key, _, rest = message[4:].partition(":")
            message = f"--{key.split('.')[0].replace('_', '-')}:{rest}"
        raise ConfigError(message) from None
    return table


def netem_command(args: argparse.Namespace) -> int:
    cable, action = args.cable, args.action
    if cable in ("show", "set") and action is None:
        cable, action = None, cable
    action = action or "show"
    if action not in ("show", "set"):
        raise ConfigError(f"{action!r}: the action is show or set")
    table = settings(args)
    if action == "show" and table:
        raise ConfigError("settings go with set: hv netem LAB CABLE set --loss 1% ...")
    if action == "set" and cable is None:
        raise ConfigError("set: name the cable (hv netem LAB shows them)")
    if action == "set" and not table:
        raise ConfigError("set: nothing to set (e.g. --delay 20ms, --loss 1%, --rate 50Mbit)")
    request: dict[str, Any] = {}
    if cable is not None:
        request["cable"] = cable
    if action == "set":
        request |= {"set": table, "direction": args.direction}
    answer = ask_lab(args, "netem", request)
    if answer is None:
        return EXIT_FAILED
    if args.json:
        print(json.dumps(answer.get("cable", answer), indent=2))
        return 0
    for c in [answer["cable"]] if "cable" in answer else answer["cables"]:
        for line in cable_lines(c):
            print(line)
    if "cables" in answer and not answer["cables"]:
        print(f"lab {args.lab} has no impaired cables")
    return 0


def cable_lines(c: dict[str, Any]) -> list[str]:
    """One cable as ``hv netem ... show`` prints it."""
    from hv.lab import cable_counters_text, duration_text, settings_text

    eg, ing = c["egress"], c["ingress"]
    rtt = eg["settings"]["delay"] + ing["settings"]["delay"]
    out = [
        f"{c['name']} {c['label']} ({c['kind']}): a delay applies per direction; this cable "
        f"adds {duration_text(rtt)} to a round trip"
    ]
    for way, d in (("egress", eg), ("ingress", ing)):
        out.append(f"  {way} {d['from']}->{d['to']} {settings_text(d['settings'])}")
        out.append(f"    {cable_counters_text(d)}")
    return out
