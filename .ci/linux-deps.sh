#!/bin/sh
# Debian packages for `hv image build linux` (the Linux guest kernel and initramfs) and for
# its boot test under qemu. Idempotent: installs only what is missing.
# Keep the first list in sync with REQUIRED_PACKAGES in hv/_image_linux.py (a test checks).
set -eu

build_pkgs="linux-source-6.1 gcc-riscv64-linux-gnu binutils-riscv64-linux-gnu gcc libc6-dev make bc bison flex xz-utils"
test_pkgs="qemu-system-misc qemu-utils opensbi u-boot-qemu"

missing=""
for p in $build_pkgs $test_pkgs; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$status" = installed ] || missing="$missing $p"
done
if [ -z "$missing" ]; then
    echo "linux-deps: all packages installed"
    exit 0
fi

sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
echo "linux-deps: installing$missing"
$sudo apt-get update
# shellcheck disable=SC2086
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
