#!/usr/bin/env bash
# Install the OS packages coi needs (Debian 12). Idempotent: does nothing when all are present.
set -euo pipefail

. "$(dirname "$0")/lib.sh"

# incus-base is the daemon and client without the VM stack (qemu) that the incus package pulls in.
# sudo: `coi setup` installs sudo rules that let incus-admin users run exactly coi's helpers.
PACKAGES=(incus-base incus-client dnsmasq-base mmdebstrap btrfs-progs nftables tmux uidmap
    ca-certificates sudo)
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# `coi build` fetches claude and opencode with npm; any npm will do (Debian's, or one already
# installed by other means).
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ "${#missing[@]}" -eq 0 ]; then
    echo "os-deps: all packages present (${PACKAGES[*]})"
    exit 0
fi

require_root "os-deps: installing ${missing[*]}"
echo "os-deps: installing ${missing[*]}"
. /etc/os-release
if [ "${VERSION_CODENAME:-}" = "bookworm" ] && [ ! -f /etc/apt/sources.list.d/bookworm-backports.sources ]; then
    $SUDO tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
if [ "${VERSION_CODENAME:-}" = "bookworm" ]; then
    $SUDO apt-get install -y -q --no-install-recommends -t bookworm-backports incus-base incus-client
fi
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
