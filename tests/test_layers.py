"""The import graph of hv, netfabric and blockdev, read from the source (AST only: nothing is
imported or executed here).

Every ``import`` counts, wherever it is written: at module level, inside a function (a lazy
import is still a dependency) and under ``TYPE_CHECKING``. A module imports another when it
names it in ``import a.b`` or ``from a.b import c`` (``a.b.c`` when that is a module).

Nodes for the package graph: each subpackage of ``hv`` (``hv.hw``, ``hv.board``, ...), each
top-level module of ``hv`` (``hv._vm``, ``hv._errors``, ``hv.aio``, ...) and ``hv`` itself
(its ``__init__``); likewise for ``netfabric``; ``blockdev`` is one node.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hv", "netfabric", "blockdev")

# The layer order, lowest first: the one docs/ARCHITECTURE.md ("The layers"), the README's
# "Layout" and hv/__init__.py's docstring describe. A node may import only nodes of its own
# layer or of a lower one. Every node of the package graph is in exactly one layer (a pattern
# such as netfabric.* places its subpackages and modules).
LAYERS: list[tuple[str, frozenset[str]]] = [
    ("base", frozenset({"hv._errors", "hv._status", "hv._log", "hv._lazy"})),
    # the board's vocabulary: memory and DMA accessor, bus, device protocol, platform, clock
    ("hw", frozenset({"hv.hw"})),
    # the parts: the hart's decoding and SBI, the devices, the zig build cache and builds
    ("parts", frozenset({"hv.riscv", "hv.devices", "hv.build"})),
    ("engine", frozenset({"hv.engine"})),
    # the network and the disks: no hv at all (checked on its own below)
    ("fabric", frozenset({"blockdev", "netfabric", "netfabric.*"})),
    ("virtio", frozenset({"hv.virtio"})),
    ("board", frozenset({"hv.board"})),
    (
        "vm",
        frozenset(
            {
                "hv._console",
                "hv._cores",
                "hv._disk",
                "hv._exec",
                "hv._nic",
                "hv._snapshot",
                "hv._timeline",
                "hv._values",
                "hv._vm",
            }
        ),
    ),
    ("lab", frozenset({"hv.lab", "hv.aio"})),
    ("top", frozenset({"hv", "hv.cli", "hv.pytest_plugin"})),
]

# The machine: it never reaches the switch, its ports or the old fabric module.
MACHINE = frozenset({"hv.hw", "hv.board", "hv.devices", "hv.riscv", "hv.engine", "hv.virtio"})
MACHINE_MODULES = frozenset({"hv._vm"})
NOT_FOR_THE_MACHINE = ("netfabric.fabric", "netfabric.switch", "netfabric.ports")
# On main hv/virtio/_net.py still attaches itself to a Switch; net17 removes this (the
# coordinator empties the set at merge).
KNOWN_MACHINE_NET: set[tuple[str, str]] = set()

# hw is the floor of the machine: nothing of hv but these.
HW_MAY_IMPORT = frozenset({"hv.hw", "hv._errors", "hv._status", "hv._log", "hv._lazy"})

# Cycles on main that other work of issue 17 removes; the coordinator empties this set at
# merge. A cycle found must be one of these or lie inside one (a part of it left); any other
# fails the test, and so does a known one once nothing of it is left (it cannot go stale).
KNOWN_CYCLES: set[frozenset[str]] = set()


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. "hv.board._machine"
    target: str  # the imported module, e.g. "hv.hw._memory"
    line: int

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}"


def module_files() -> dict[str, Path]:
    """Every module of the three packages, by dotted name (a package by its own name)."""
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            elif parts[-1] == "__main__":
                continue
            out[".".join(parts)] = path
    return out


MODULES = module_files()


def _imports_of(name: str, path: Path) -> Iterator[Import]:
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                parent = ".".join([*base, *([node.module] if node.module else [])])
            else:
                parent = node.module or ""
            for alias in node.names:
                sub = f"{parent}.{alias.name}"
                yield Import(name, sub if sub in MODULES else parent, node.lineno)


IMPORTS: list[Import] = [i for n, p in MODULES.items() for i in _imports_of(n, p)]
INTERNAL = [i for i in IMPORTS if i.target.split(".")[0] in PACKAGES]


def node_of(module: str) -> str:
    """The package-graph node a module belongs to."""
    parts = module.split(".")
    if parts[0] == "blockdev" or len(parts) == 1:
        return parts[0]
    return ".".join(parts[:2])


def _sccs(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[frozenset[str]] = []
    nodes = set(edges) | {t for ts in edges.values() for t in ts}
    for root in sorted(nodes):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(frozenset(comp))
    return out


def _graph(imports: Iterable[Import], by_node: bool) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for i in imports:
        a, b = (node_of(i.module), node_of(i.target)) if by_node else (i.module, i.target)
        if a != b:
            edges.setdefault(a, set()).add(b)
    return edges


def _describe(cycle: frozenset[str], by_node: bool) -> str:
    key = node_of if by_node else str
    lines = sorted(
        {
            f"  {i.module}:{i.line} imports {i.target}"
            for i in INTERNAL
            if key(i.module) in cycle and key(i.target) in cycle and key(i.module) != key(i.target)
        }
    )
    return " ⇄ ".join(sorted(cycle)) + "\n" + "\n".join(lines)


def package_cycles() -> list[frozenset[str]]:
    return _sccs(_graph(INTERNAL, by_node=True))


def module_cycles() -> list[frozenset[str]]:
    # a submodule taking a name from its own package's __init__ is not a cycle of modules
    real = [i for i in INTERNAL if not i.module.startswith(i.target + ".")]
    return _sccs(_graph(real, by_node=False))


def test_the_graph_is_read() -> None:
    # the reader sees what is there: an absolute import, a relative one, a lazy one
    edges = {(i.module, i.target) for i in IMPORTS}
    assert ("hv.board._machine", "hv.hw") in edges  # through the face: from hv.hw import ...
    assert ("hv._disk", "hv.virtio") in edges  # inside a function
    assert ("hv.engine._abi", "unicorn") in edges
    assert ("hv.engine._select", "hv.engine._build") in edges  # from hv.engine import _build
    assert _sccs({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]
    assert _sccs({"a": {"b"}, "b": set()}) == []


def _unknown(found: list[frozenset[str]]) -> list[frozenset[str]]:
    return [c for c in found if not any(c <= k for k in KNOWN_CYCLES)]


def test_no_package_cycles() -> None:
    new = _unknown(package_cycles())
    assert not new, "package cycles:\n" + "\n".join(_describe(c, True) for c in new)


def test_no_module_cycles() -> None:
    new = _unknown(module_cycles())
    assert not new, "module cycles:\n" + "\n".join(_describe(c, False) for c in new)


def test_known_cycles_still_exist() -> None:
    found = package_cycles() + module_cycles()
    gone = [sorted(k) for k in KNOWN_CYCLES if not any(c <= k for c in found)]
    assert not gone, f"these cycles are gone, take them out of KNOWN_CYCLES: {gone}"


def _layers_of(node: str) -> list[int]:
    return [n for n, (_, layer) in enumerate(LAYERS) if any(fnmatch(node, p) for p in layer)]


def test_every_node_has_one_layer() -> None:
    nodes = {node_of(m) for m in MODULES}
    assert {n: ls for n in sorted(nodes) if len(ls := _layers_of(n)) != 1} == {}


def _layer(node: str) -> int:
    (n,) = _layers_of(node)
    return n


def test_layer_order() -> None:
    upward = [
        f"{i} ({LAYERS[_layer(node_of(i.module))][0]} -> {LAYERS[_layer(node_of(i.target))][0]})"
        for i in INTERNAL
        if _layer(node_of(i.target)) > _layer(node_of(i.module))
        and (node_of(i.module), node_of(i.target)) not in _KNOWN_EDGES
    ]
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


# The upward edges of the known cycles (the lab importing the CLI); go with KNOWN_CYCLES.
_KNOWN_EDGES = {
    (a, b)
    for cycle in KNOWN_CYCLES
    for a in cycle
    for b in cycle
    if node_of(a) == a and node_of(b) == b
}


def test_hw_imports_only_the_base() -> None:
    bad = [
        str(i)
        for i in INTERNAL
        if node_of(i.module) == "hv.hw" and node_of(i.target) not in HW_MAY_IMPORT
    ]
    assert not bad, "hv.hw must stay the floor:\n" + "\n".join(bad)


def _machine_net_imports() -> set[tuple[str, str]]:
    return {
        (i.module, node_of(i.target))
        for i in INTERNAL
        if (node_of(i.module) in MACHINE or i.module in MACHINE_MODULES)
        and i.target.split(".")[0] == "netfabric"
    }


def test_the_machine_never_imports_the_switch() -> None:
    bad = sorted(
        (m, t)
        for m, t in _machine_net_imports() - KNOWN_MACHINE_NET
        if any(t == n or t.startswith(n + ".") for n in NOT_FOR_THE_MACHINE)
    )
    assert not bad, f"the machine reaches the fabric: {bad}"


def test_only_virtio_net_uses_the_network_and_only_frames() -> None:
    used = _machine_net_imports() - KNOWN_MACHINE_NET
    assert used <= {("hv.virtio._net", "netfabric.frame"), ("hv.virtio._net", "netfabric.offload")}


def test_known_machine_net_imports_still_exist() -> None:
    gone = KNOWN_MACHINE_NET - _machine_net_imports()
    assert not gone, f"gone, take them out of KNOWN_MACHINE_NET: {sorted(gone)}"


def test_only_abi_imports_unicorn() -> None:
    users = sorted({i.module for i in IMPORTS if i.target.split(".")[0] == "unicorn"})
    assert users == ["hv.engine._abi"]


def test_only_the_tap_module_opens_the_tun_device() -> None:
    users = sorted(
        n
        for n, p in MODULES.items()
        if "/dev/net/tun" in p.read_text() or "TUN_PATH" in p.read_text()
    )
    assert users == ["netfabric.ports.tap"]


@pytest.mark.parametrize("pkg", ["netfabric", "blockdev"])
def test_the_fabric_and_the_disks_never_import_hv(pkg: str) -> None:
    bad = [
        str(i) for i in IMPORTS if i.module.split(".")[0] == pkg and i.target.split(".")[0] == "hv"
    ]
    assert not bad, "\n".join(bad)


def _numbered_list(text: str, after: str) -> list[str]:
    """The items of the first numbered list after ``after`` (continuation lines joined)."""
    items: list[str] = []
    for line in text[text.index(after) :].splitlines()[1:]:
        if m := re.match(r"\d+\. (.*)", line):
            items.append(m.group(1))
        elif items and line.startswith(" ") and line.strip():
            items[-1] += " " + line.strip()
        elif items:
            break
    return items


def _named(item: str, prefix: str) -> frozenset[str]:
    """The modules an item of a layer list names: backticked, before any ':' outside
    parentheses (what follows is description)."""
    while (stripped := re.sub(r"\([^()]*\)", "", item)) != item:
        item = stripped
    head = item.split(":")[0]
    names = {
        prefix + n if prefix and n not in PACKAGES else n for n in re.findall(r"`+([\w.]+)`+", head)
    }
    if "this package" in head:
        names.add("hv")
    return frozenset(names)


def _layer_names() -> list[frozenset[str]]:
    return [frozenset(n for n in layer if "*" not in n) for _, layer in LAYERS]


def test_architecture_md_lists_these_layers() -> None:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    items = _numbered_list(text, "The layers, lowest first")
    assert [_named(i, "") for i in items] == _layer_names()


def test_the_package_docstring_lists_these_layers() -> None:
    text = (ROOT / "hv" / "__init__.py").read_text()
    items = _numbered_list(text, "Layers, lowest first")
    assert [_named(i, "hv.") for i in items] == _layer_names()
