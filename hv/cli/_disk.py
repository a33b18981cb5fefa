"""``hv disk create`` and ``hv disk info``: images for ``--disk`` and lab ``disks``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from hv._errors import ConfigError
from hv._values import argument, size


def parse_disk_size(text: str) -> int:
    """'10G', '512M', '1048576' (bytes) -> bytes (``hv._values.size``); a multiple of 512."""
    n = argument(size, lo=1)(text)
    if n % 512:
        raise argparse.ArgumentTypeError(f"'{text}' is {n} bytes: not a multiple of 512")
    return n


def add_parser(sub: Any) -> None:
    disk = sub.add_parser("disk", help="create disk images and show what is in them")
    dsub = disk.add_subparsers(dest="disk_command", metavar="ACTION")
    dc = dsub.add_parser(
        "create",
        help="create a raw image, or a qcow2 image (an overlay with --backing)",
        description=(
            "Create FILE: raw by default, qcow2 with --format qcow2 or when --backing is "
            "given (an overlay: reads come from BASE until written; SIZE defaults to BASE's)."
        ),
    )
    dc.add_argument("file", type=Path, metavar="FILE")
    dc.add_argument("size", type=parse_disk_size, nargs="?", metavar="SIZE", help="e.g. 1G")
    dc.add_argument("--backing", type=Path, metavar="BASE", help="the image underneath")
    dc.add_argument("--format", choices=("raw", "qcow2"), help="image format (see above)")
    dc.add_argument("--force", action="store_true", help="replace FILE if it exists")
    di = dsub.add_parser("info", help="format, sizes and backing chain of an image")
    di.add_argument("file", type=Path, metavar="FILE")
    di.add_argument("--json", action="store_true", help="print it as JSON")
    for p in (dc, di):
        p.add_argument(
            "--backing-dir",
            action="append",
            default=[],
            metavar="DIR",
            help="also follow backing files into DIR (default: only the image's own folder)",
        )


def _size_text(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.4g} {unit} ({n} bytes)"
    return f"{n} bytes"


def _hint_backing_dir(image: Path, base: Path, allowed: list[str]) -> None:
    """Say so when ``hv run --disk IMAGE`` will need ``--backing-dir`` for its backing file
    ``base`` (as stored: relative to IMAGE's folder)."""
    from blockdev import BlockError
    from blockdev.qcow2 import follow_backing

    chain = ((str(image), os.path.realpath(image)),)
    try:
        follow_backing(chain, str(base), allowed)
    except BlockError:
        where = (image.parent / base).resolve().parent
        print(
            f"note: {base} is outside {image}'s folder: using {image} needs --backing-dir "
            f"{where} (lab files: backing_dirs)",
            file=sys.stderr,
        )


def disk_command(args: argparse.Namespace) -> int:
    from blockdev import BlockError
    from blockdev.qcow2 import create_image, image_info, read_virtual_size

    try:
        if args.disk_command == "create":
            fmt = args.format or ("qcow2" if args.backing else "raw")
            if args.size is None and args.backing is None:
                raise ConfigError("hv disk create: give a SIZE (e.g. 1G), or --backing BASE")
            if args.backing is not None:  # named here, so allowed; its own chain is checked
                image_info(args.file.parent / args.backing, args.backing_dir)
            create_image(
                args.file,
                fmt,
                args.size,
                backing=args.backing,
                overwrite=args.force,
            )
            size = _size_text(read_virtual_size(args.file, fmt))
            print(f"{args.file}: {fmt}, {size}", file=sys.stderr)
            if args.backing is not None:
                _hint_backing_dir(args.file, args.backing, args.backing_dir)
            return 0
        if args.disk_command == "info":
            info = image_info(args.file, args.backing_dir)
            if args.json:
                print(json.dumps(info, indent=2))
                return 0
            print(f"file:          {info['filename']}")
            print(f"format:        {info['format']}")
            print(f"virtual size:  {_size_text(info['virtual_size'])}")
            print(f"allocated:     {_size_text(info['disk_size'])}")
            if info.get("cluster_size"):
                print(f"cluster size:  {info['cluster_size']}")
            for i, b in enumerate(info.get("backing_chain", [])):
                print(f"backing {i}:     {b['filename']} ({b['format']})")
            if info["backing_chain"]:
                names = [info["filename"], *(b["filename"] for b in info["backing_chain"])]
                print(f"chain:         {' -> '.join(names)}")
            return 0
    except (BlockError, OSError) as e:
        raise ConfigError(str(e)) from None
    print("hv disk: give an action: create or info (hv disk --help)", file=sys.stderr)
    return 2
