#!/usr/bin/env bash
# Debian packages the test suite needs. Idempotent; needs root (CI is root).
set -euo pipefail
pkgs=(device-tree-compiler tshark iproute2 iputils-ping e2fsprogs)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
