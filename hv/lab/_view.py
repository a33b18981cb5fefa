"""The live view of a lab: per VM state, guest MIPS, exits/s and CPU share; per switch port
frames/s, bytes/s and drops. On a terminal a ``rich`` table that refreshes, with the VMs'
console lines printed above it; elsewhere plain lines (``render_lines``).

The pieces, usable on their own (``hv top`` renders what a control socket sends):

- ``render_table(rates)``: a ``rich.console.Group`` of two tables, the VMs (titled
  ``lab NAME``) and the switch ports;
- ``render_lines(rates)``: the same as plain text, a stable format (see its docstring);
- ``live_view(source, console_output, interval, terminal=...)``: samples ``source`` (a
  ``LabRun``, or an async function returning a snapshot) every ``interval`` seconds and shows
  the rates until the lab ends or the task is cancelled;
- ``LiveConsole``: hv up's console stream; its ``write`` is the lab's output, and while a
  table is up, complete console lines go above it (a partial line, a prompt, shows on the
  display's first row until it is finished), so the display is never garbled.

The rates come from ``hv.lab._stats`` (``snapshot``, ``rates``).
"""

from __future__ import annotations

import codecs
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import trio
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from hv.lab._runner import LabRun, Output
from hv.lab._stats import (
    Rates,
    Snapshot,
    clock_fields,
    clock_text,
    drops_by_field,
    exit_fields,
    rates,
    snapshot,
)

# How often console lines are printed above the table (a batch per refresh of the display).
CONSOLE_FLUSH_S = 0.1

Source: TypeAlias = LabRun | Callable[[], Awaitable[Snapshot | None]]


# -- plain lines ---------------------------------------------------------------------------


def _uptime(v: dict[str, Any]) -> str:
    return "-" if v["uptime"] is None else f"{v['uptime']:.1f}s"


def _mips(v: dict[str, Any]) -> str:
    return "-" if v["insns_counter"] == "none" else f"{v['mips']:.1f}"


def render_lines(r: Rates) -> list[str]:
    """The rates as plain lines: a header line, then one line per VM and one per switch port.
    The format is stable (``hv up --stats`` and ``hv top`` off a terminal print it; scripts
    may parse it), fields separated by single spaces::

        lab NAME interval=1.00s running=2/3 mips=12.3 exits/s=5000 cpu=45% clock=real
        vm NAME STATE mips=123.4 exits/s=5000 cpu=45% uptime=12.3s
        vm NAME stopped mips=0.0 exits/s=0 cpu=0% uptime=- exit=0 kind=poweroff reason="..."
        port SWITCH PORT rx=10/s rx_bytes=980/s tx=9/s tx_bytes=882/s drops=0/s drops_total=0
             rx_wire=10/s tx_wire=9/s [drops_by=REASON:N,...]
             [cable=KEY duplicated=N corrupted=N reordered=N]            (one line)

    The ``lab`` line ends with the lab's clock: ``clock=real``, or ``clock=virtual
    virtual=12.345s wall=0.402s ratio=30.7x`` (the lab's virtual time, the wall time it
    took, their ratio). ``mips`` is ``-`` when the engine counts no instructions; ``cpu`` is
    the share of one host CPU, which a busy VM can take all of (100%); ``uptime`` is guest
    time since boot (``-`` once stopped). A stopped VM's line ends with its exit status,
    stop kind and reason (a JSON string). Port ``rx`` is what the port's device sent into
    the switch, ``tx`` what the switch delivered to it, as the devices handed frames over;
    ``rx_wire`` and ``tx_wire`` the same on the wire (an offloaded TCP frame as its
    segments). ``drops`` the port's drops per second and ``drops_total`` since the start:
    the switch's, and its cable's when it has one (``cable=``, with what the cable did to
    frames it passed on), by reason in ``drops_by=REASON:N,...`` when there are any (a
    cable's: ``loss``, ``queue``, ``mtu``; ``down`` while it is pulled out, ``hv link``;
    see hv.lab._stats)."""
    vms = r["vms"].values()
    running = sum(v["state"] == "running" for v in vms)
    t = r["total"]
    out = [
        f"lab {r['lab'] or '-'} interval={r['interval']:.2f}s running={running}/{len(vms)} "
        f"mips={t['mips']:.1f} exits/s={t['exits_per_s']:.0f} cpu={t['cpu']:.0%}"
        + clock_fields(r.get("clock"))
    ]
    for v in vms:
        line = (
            f"vm {v['name']} {v['state']} mips={_mips(v)} exits/s={v['exits_per_s']:.0f} "
            f"cpu={v['cpu']:.0%} uptime={_uptime(v)}"
        )
        out.append(line + exit_fields(v["exit"]))
    for sw in r["switches"].values():
        for p in sw["ports"]:
            line = (
                f"port {sw['name']} {p['name']} rx={p['rx_fps']:.0f}/s "
                f"rx_bytes={p['rx_bps']:.0f}/s tx={p['tx_fps']:.0f}/s "
                f"tx_bytes={p['tx_bps']:.0f}/s drops={p['drops_per_s']:.0f}/s "
                f"drops_total={p['drops']}"
            )
            line += _wire_and_cable(p)
            out.append(line)
    return out


def _wire_and_cable(p: dict[str, Any]) -> str:
    """The end of a port's line: wire frames per second, drops by cause, its cable's counts."""
    text = f" rx_wire={p.get('rx_wire_fps', p['rx_fps']):.0f}/s"
    text += f" tx_wire={p.get('tx_wire_fps', p['tx_fps']):.0f}/s"
    text += drops_by_field(p["drops_by"])
    if p.get("cable"):
        counts = p.get("cable_counts", {})
        text += f" cable={p['cable']}" + "".join(f" {k}={n}" for k, n in counts.items())
    return text


# -- the table -----------------------------------------------------------------------------


def _si(x: float, unit: str = "") -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.1f} {prefix}{unit}".rstrip()
    return f"{x:.0f} {unit}".rstrip()


def _frames(p: dict[str, Any], way: str) -> str:
    """Frames per second as the device sent them, and on the wire when that differs (an
    offloaded TCP frame is one frame from the guest, its segments on the wire)."""
    sent, wire = _si(p[f"{way}_fps"]), _si(p.get(f"{way}_wire_fps", p[f"{way}_fps"]))
    return sent if wire == sent else f"{sent} ({wire} wire)"


def _causes(p: dict[str, Any]) -> str:
    """Drops by cause, then what the port's cable did to the frames it passed on."""
    parts = [f"{k} {n}" for k, n in sorted(p["drops_by"].items())]
    parts += [f"{k} {n}" for k, n in p.get("cable_counts", {}).items() if n]
    return ", ".join(parts)


_STATE_STYLE = {"running": "green", "paused": "yellow", "created": "cyan", "stopped": "dim"}


def render_table(r: Rates) -> Group:
    """The rates as two ``rich`` tables in a ``Group``: the VMs (title ``lab NAME``; state,
    MIPS, exits/s, CPU share, uptime, exit; the lab's clock below them) and the switch
    ports (frames and bytes per second each way, frames as sent and, where offloads make
    them differ, on the wire; drops per second, in all and by cause, the port's impaired
    cable included)."""
    vms = Table(
        title=f"lab {r['lab'] or '-'}",
        caption=(
            f"every {r['interval']:.1f}s  total: {r['total']['mips']:.1f} MIPS, "
            f"{_si(r['total']['exits_per_s'])} exits/s, {r['total']['cpu']:.0%} CPU"
            + (f"\n{clock}" if (clock := clock_text(r.get("clock"))) else "")
        ),
        title_justify="left",
        caption_justify="left",
        expand=False,
    )
    vms.add_column("VM")
    vms.add_column("state")
    vms.add_column("MIPS", justify="right")
    vms.add_column("exits/s", justify="right")
    vms.add_column("CPU", justify="right")
    vms.add_column("uptime", justify="right")
    vms.add_column("exit")
    for v in r["vms"].values():
        e = v["exit"]
        style = _STATE_STYLE.get(v["state"], "")
        if e is not None and e["code"] and e["kind"] != "stopped":
            style = "red"  # a failure (stopped by the host, the lab ending, is not one)
        vms.add_row(
            v["name"],
            Text(v["state"], style=style),
            _mips(v),
            _si(v["exits_per_s"]),
            f"{v['cpu']:.0%}",
            _uptime(v),
            Text("" if e is None else f"{e['code']} {e['reason']}", overflow="ellipsis"),
        )
    ports = Table(title="ports", title_justify="left", expand=False)
    ports.add_column("switch")
    ports.add_column("port")
    ports.add_column("rx frames/s", justify="right")
    ports.add_column("rx bytes/s", justify="right")
    ports.add_column("tx frames/s", justify="right")
    ports.add_column("tx bytes/s", justify="right")
    ports.add_column("drops/s", justify="right")
    ports.add_column("drops", justify="right")
    ports.add_column("by cause")
    for sw in r["switches"].values():
        for p in sw["ports"]:
            ports.add_row(
                sw["name"],
                p["name"] + (f" ({p['cable']})" if p.get("cable") else ""),
                _frames(p, "rx"),
                _si(p["rx_bps"], "B"),
                _frames(p, "tx"),
                _si(p["tx_bps"], "B"),
                Text(_si(p["drops_per_s"]), style="red" if p["drops_per_s"] else ""),
                str(p["drops"]),
                Text(_causes(p), overflow="fold"),
            )
    return Group(vms, ports)


class _Rendered:
    """A renderable drawn once per width: the table is redrawn with every batch of console
    lines, and laying it out again each time would cost milliseconds of the event loop."""

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable
        self._cache: tuple[int, list[list[Segment]]] | None = None

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if self._cache is None or self._cache[0] != options.max_width:
            lines = console.render_lines(self.renderable, options, pad=False)
            self._cache = (options.max_width, lines)
        for line in self._cache[1]:
            yield from line
            yield Segment.line()


# -- the console stream --------------------------------------------------------------------


def _text(line: str) -> Text:
    line = line.rstrip("\r")
    return Text.from_ansi(line) if "\x1b" in line else Text(line)


class LiveConsole:
    """hv up's console stream with a live view: pass ``write`` to ``run_lab`` as its output.

    Without a table up it writes through to ``raw`` unchanged (today's output). While
    ``live_view`` shows a table, complete lines are batched and printed above the table
    every ``CONSOLE_FLUSH_S`` (one redraw per batch); a partial line (a prompt) is shown on
    the display's first row, and printed above once finished. It is the display's
    renderable itself: any redraw shows the current partial line and table."""

    def __init__(self, raw: Output) -> None:
        self.raw = raw
        self.at_line_start = True  # the raw stream's last byte was a newline (or nothing yet)
        self._live: Live | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._lines: list[str] = []
        self._partial = ""
        self._shown_partial = ""  # the partial line the display last drew
        self._body: RenderableType = Text("")

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._live is None:
            self.raw(data)
            self.at_line_start = data.endswith(b"\n")
            return
        *lines, self._partial = (self._partial + self._decoder.decode(data)).split("\n")
        self._lines += lines

    def write_lines(self, lines: list[str]) -> None:
        """Lines of our own (the plain stats) on the raw stream, each on a line of its own:
        a console line left open (a prompt) is ended first."""
        text = "".join(line + "\n" for line in lines)
        self.raw((b"" if self.at_line_start else b"\n") + text.encode())
        self.at_line_start = True

    def attach(self, live: Live) -> None:
        """The table is up: console lines go above it from now on."""
        self._live = live
        if live.renderable is not self:
            live.update(self, refresh=True)

    def detach(self) -> None:
        """The table is going: print what is pending (a partial line as a line of its own);
        then the stream writes through again."""
        if self._partial:
            self._lines.append(self._partial)
            self._partial = ""
        self.flush()
        self._live = None

    def show(self, body: RenderableType) -> None:
        """The table (or whatever the view shows) below the console lines."""
        self._body = _Rendered(body)
        if self._live is not None:
            self._live.refresh()

    def flush(self) -> None:
        """Print the complete lines that came since the last flush above the table (one
        redraw for the batch; none if nothing changed)."""
        live = self._live
        if live is None:
            return
        if self._lines:
            lines, self._lines = self._lines, []
            text = Text("\n").join(_text(line) for line in lines)
            live.console.print(text, soft_wrap=True, highlight=False, markup=False)
        elif self._partial != self._shown_partial:
            live.refresh()

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        self._shown_partial = self._partial
        if self._partial:
            yield _text(self._partial)
        yield self._body


# -- the view ------------------------------------------------------------------------------


async def _sample(source: Source) -> Snapshot | None:
    if isinstance(source, LabRun):
        return snapshot(source)
    return await source()


def _print_stdout(lines: list[str]) -> None:
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()


async def live_view(
    source: Source,
    console_output: LiveConsole | None = None,
    interval: float = 1.0,
    *,
    terminal: bool,
    console: Console | None = None,
    print_lines: Callable[[list[str]], None] | None = None,
) -> None:
    """Show ``source``'s rates every ``interval`` seconds until the lab ends (a ``LabRun``'s
    ``ended``, or the snapshot function returning None) or the task is cancelled.

    ``terminal``: a ``rich.live.Live`` table on ``console`` (default: a ``Console()`` on
    stdout) that refreshes, with ``console_output``'s console lines printed above it; the
    last table stays on the screen. Else the plain lines (``render_lines``) every interval,
    through ``print_lines`` (default: ``console_output.write_lines``, or stdout); for a
    ``LabRun``, a last block when the view ends."""
    prev = await _sample(source)
    if prev is None:
        return
    if terminal:
        await _table_view(source, prev, console_output, interval, console or Console())
        return
    emit = print_lines or (console_output.write_lines if console_output else _print_stdout)
    ended = source.ended if isinstance(source, LabRun) else None
    shown_end = False
    try:
        deadline = trio.current_time()
        while True:
            deadline = max(deadline + interval, trio.current_time())  # no bursts
            await trio.sleep_until(deadline)
            cur = await _sample(source)
            if cur is None:
                return
            emit(render_lines(rates(prev, cur)))
            prev = cur
            if ended is not None and ended.is_set():
                shown_end = True
                return
    finally:
        if isinstance(source, LabRun) and not shown_end:
            # cancelled (the lab is over, or Ctrl-C): how it ended
            cur = snapshot(source)
            if cur["time"] > prev["time"]:
                emit(render_lines(rates(prev, cur)))


async def _table_view(
    source: Source,
    prev: Snapshot,
    out: LiveConsole | None,
    interval: float,
    console: Console,
) -> None:
    out = out or LiveConsole(lambda data: None)
    ended = source.ended if isinstance(source, LabRun) else None
    last: Rates = rates(None, prev)
    out.show(render_table(last))
    with Live(
        out,
        console=console,
        auto_refresh=False,
        redirect_stdout=True,
        redirect_stderr=False,  # stderr may not be this terminal
        transient=False,
    ) as live:
        out.attach(live)
        try:
            deadline = trio.current_time()
            while not (ended is not None and ended.is_set()):
                deadline = max(deadline + interval, trio.current_time())
                while trio.current_time() < deadline:
                    out.flush()
                    await trio.sleep(min(CONSOLE_FLUSH_S, max(0.0, deadline - trio.current_time())))
                cur = await _sample(source)
                if cur is None:
                    break
                last = rates(prev, cur)
                prev = cur
                out.show(render_table(last))
        finally:
            if isinstance(source, LabRun):  # the last state (cancelled when the lab is over)
                cur = snapshot(source)
                if cur["time"] > prev["time"]:
                    out.show(render_table(rates(prev, cur)))
            out.detach()


def view_mode(choice: str | None, terminal: bool) -> str | None:
    """What ``hv up`` shows besides the consoles: "table" (the live view, on a terminal
    unless ``--no-view``), "lines" (``--stats`` off a terminal) or None (consoles only)."""
    if choice == "off":
        return None
    if terminal:
        return "table"
    return "lines" if choice == "on" else None
