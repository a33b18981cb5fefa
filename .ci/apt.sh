# shellcheck shell=sh
# Sourced by .ci/system-deps.sh, .ci/linux-deps.sh and .ci/test: Debian packages, checked
# with dpkg-query and installed with apt-get when root; otherwise a refusal that prints the
# exact command to run as root.

# The packages of "$@" that are not installed, on one line.
missing_packages() {
    _missing=""
    for _p in "$@"; do
        _status=$(dpkg-query -W -f='${db:Status-Status}' "$_p" 2>/dev/null || true)
        [ "$_status" = installed ] || _missing="$_missing $_p"
    done
    echo "${_missing# }"
}

# ensure_packages LABEL PKG...: install the missing ones (root), or refuse (exit 1).
ensure_packages() {
    _label=$1
    shift
    if ! command -v dpkg-query >/dev/null 2>&1; then
        echo "$_label: dpkg-query not found: the test command installs packages on Debian only;" >&2
        echo "$_label: elsewhere install the equivalents of: $*" >&2
        exit 1
    fi
    _missing=$(missing_packages "$@")
    if [ -z "$_missing" ]; then
        echo "$_label: Debian packages: all $# installed"
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "$_label: missing Debian packages: $_missing" >&2
        echo "$_label: installing them needs root; run this, then run the command again:" >&2
        echo "    sudo sh -c 'apt-get update && apt-get install -y --no-install-recommends $_missing'" >&2
        exit 1
    fi
    echo "$_label: installing Debian packages: $_missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $_missing
    _still=$(missing_packages "$@")
    if [ -n "$_still" ]; then
        echo "$_label: apt-get did not install: $_still" >&2
        exit 1
    fi
}
