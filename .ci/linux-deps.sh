#!/bin/sh
# Debian packages for `hv image build linux` (the Linux guest kernel and initramfs) and for
# its boot test under qemu. Idempotent; installs as root, otherwise prints the command.
# --list prints the packages.
# Keep build_pkgs in sync with REQUIRED_PACKAGES in hv/build/_image_linux.py, debian_pkgs with
# hv/build/_image_debian.py's (`hv image build debian`; tests check both).
set -eu

build_pkgs="linux-source-6.1 gcc-riscv64-linux-gnu binutils-riscv64-linux-gnu gcc libc6-dev make bc bison flex xz-utils apt dpkg debian-archive-keyring"
debian_pkgs="debootstrap e2fsprogs qemu-utils debian-archive-keyring"
test_pkgs="qemu-system-misc qemu-utils opensbi u-boot-qemu"

if [ "${1:-}" = --list ]; then echo "$build_pkgs $debian_pkgs $test_pkgs"; exit 0; fi
# shellcheck source=.ci/apt.sh
. "$(dirname "$0")/apt.sh"
# shellcheck disable=SC2086
ensure_packages linux-deps $build_pkgs $debian_pkgs $test_pkgs
