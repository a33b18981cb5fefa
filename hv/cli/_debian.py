"""``hv image build debian`` and ``hv image info debian``: a Debian root disk for labs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from hv._errors import ConfigError
from hv.build import StderrProgress
from hv.build import _image_debian as D
from hv.cli._disk import parse_disk_size


def add_arguments(build: Any, info: Any) -> None:
    """The Debian options of ``hv image build`` and ``hv image info``."""
    for p in (build, info):
        p.add_argument(
            "--packages",
            metavar="A,B,...",
            help="debian: the packages beside minbase (default: "
            f"{','.join(D.DEFAULT_PACKAGES)}; '' for minbase only)",
        )
        p.add_argument(
            "--size",
            type=_image_size,
            metavar="SIZE",
            help=f"debian: the disk's virtual size (default {D.DEFAULT_SIZE >> 30}G)",
        )


def _image_size(text: str) -> int:
    n = parse_disk_size(text)
    if not D.MIN_SIZE <= n <= D.MAX_SIZE:
        raise argparse.ArgumentTypeError(
            f"'{text}': give {D.MIN_SIZE >> 20}M to {D.MAX_SIZE >> 30}G"
        )
    return n


def _packages(args: argparse.Namespace) -> tuple[str, ...]:
    if args.packages is None:
        return D.DEFAULT_PACKAGES
    return D.parse_packages(args.packages)


def debian_command(args: argparse.Namespace) -> int:
    pkgs = _packages(args)
    size = args.size or D.DEFAULT_SIZE
    if args.image_command == "build":
        progress = StderrProgress(clock=True)
        try:
            built = D.build_debian(
                pkgs, size=size, install_deps=args.install_deps, progress=progress
            )
        finally:
            progress.close()
        print(f"base: {built.base}\nmanifest: {built.manifest}")
        return 0
    img = D.debian_image_info(pkgs, size)
    if img is None:
        raise ConfigError(f"the debian image is not built yet; run: {D.build_command(pkgs)}")
    if args.json:
        info = {"base": str(img.base), "manifest": str(img.manifest), "packages": pkgs}
        print(json.dumps(info))
    else:
        print(f"base: {img.base}\nmanifest: {img.manifest}\npackages: {' '.join(pkgs)}")
    return 0


def list_images() -> None:
    for img in D.built_images():
        size = img.base.stat().st_size >> 20
        print(f"debian {img.key}  {size} MiB  {' '.join(img.packages) or '(minbase)'}")
