#!/bin/sh
# Debian packages the test suite needs (besides the Linux guest's, .ci/linux-deps.sh).
# Idempotent; installs as root, otherwise prints the command. --list prints the packages.
set -eu
pkgs="device-tree-compiler tshark iproute2 iputils-ping e2fsprogs python3-venv"
if [ "${1:-}" = --list ]; then echo "$pkgs"; exit 0; fi
# shellcheck source=.ci/apt.sh
. "$(dirname "$0")/apt.sh"
# shellcheck disable=SC2086
ensure_packages system-deps $pkgs
