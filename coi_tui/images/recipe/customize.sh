#!/bin/sh
# Runs on the build host with the image root filesystem as $1 (an mmdebstrap customize hook,
# or "/" inside a build container). Turns a plain Debian root into the coi-default image.
set -eu
ROOT="$1"
RECIPE_DIR="$(dirname "$0")"

# The agent user: uid/gid 1000, passwordless sudo.
if ! chroot "$ROOT" id -u code >/dev/null 2>&1; then
    chroot "$ROOT" groupadd --gid 1000 code
    chroot "$ROOT" useradd --create-home --uid 1000 --gid 1000 --shell /bin/bash --groups sudo code
fi
printf 'code ALL=(ALL) NOPASSWD:ALL\n' > "$ROOT/etc/sudoers.d/code"
chmod 0440 "$ROOT/etc/sudoers.d/code"

# Networking: systemd-networkd with DHCP on eth0 (needs udev to leave the "pending" state).
mkdir -p "$ROOT/etc/systemd/network"
printf '[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\n' \
    > "$ROOT/etc/systemd/network/eth0.network"
chroot "$ROOT" systemctl enable systemd-networkd >/dev/null 2>&1
# Services that only slow a container's boot down.
for unit in systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
            e2scrub_all.timer fstrim.timer; do
    chroot "$ROOT" systemctl mask "$unit" >/dev/null 2>&1 || true
done

# UTF-8 everywhere, so tmux and the agents draw correctly.
printf 'LANG=C.UTF-8\n' > "$ROOT/etc/default/locale"
# tmux, as COI's image: a long scrollback (the stock 2000 lines cut the start of a long build's
# output) and Escape delivered at once (500 ms per level of nested tmux made it feel broken).
printf '%s\n' '# coi: the agent session tmux' 'set -g history-limit 50000' \
    'set -g escape-time 10' > "$ROOT/etc/tmux.conf"

# Power wrappers: `poweroff` & co work for `code` (and end the coi session); `close` and `stop`
# are coi-only spellings of poweroff.
for cmd in poweroff shutdown reboot halt; do
    printf '#!/bin/sh\nexec sudo /usr/sbin/%s "$@"\n' "$cmd" > "$ROOT/usr/local/bin/$cmd"
    chmod 0755 "$ROOT/usr/local/bin/$cmd"
done
for cmd in close stop; do
    printf '#!/bin/sh\nexec sudo /usr/sbin/poweroff\n' > "$ROOT/usr/local/bin/$cmd"
    chmod 0755 "$ROOT/usr/local/bin/$cmd"
done

# The fake agent the tests use (claude-compatible for our purposes).
install -m 0755 "$RECIPE_DIR/dummy" "$ROOT/usr/local/bin/dummy"
# Stand-ins with the argv contract of claude, opencode, aider, codex, pi and omp, kept in their own directory
# (tests put it first on PATH), and linked under the agent's name until `coi build` copies the
# real CLI over the link.
mkdir -p "$ROOT/usr/local/lib/coi/stand-ins"
for agent in claude opencode aider codex pi omp; do
    install -m 0755 "$RECIPE_DIR/fake-agent" "$ROOT/usr/local/lib/coi/stand-ins/$agent"
    if ! chroot "$ROOT" sh -c "command -v $agent" >/dev/null 2>&1; then
        ln -s "/usr/local/lib/coi/stand-ins/$agent" "$ROOT/usr/local/bin/$agent"
    fi
done

# Full image extras: Docker without sudo for `code`, and the usual names of fd and bat
# (Debian ships them as fdfind and batcat).
if chroot "$ROOT" getent group docker >/dev/null 2>&1; then
    chroot "$ROOT" usermod -aG docker code
    # Docker starts on first use (docker.socket), not at boot: dockerd and containerd were
    # 1.4 s of every session's boot, which most sessions never need.
    chroot "$ROOT" systemctl disable docker.service containerd.service >/dev/null 2>&1 || true
    chroot "$ROOT" systemctl enable docker.socket >/dev/null 2>&1 || true
fi
[ -x "$ROOT/usr/bin/fdfind" ] && ln -sf /usr/bin/fdfind "$ROOT/usr/local/bin/fd"
[ -x "$ROOT/usr/bin/batcat" ] && ln -sf /usr/bin/batcat "$ROOT/usr/local/bin/bat"

mkdir -p "$ROOT/workspace"
chroot "$ROOT" chown code:code /workspace
printf 'coi\n' > "$ROOT/etc/hostname"
# Keep the image small: apt lists and caches are rebuilt by `apt-get update` when needed.
rm -rf "$ROOT/var/lib/apt/lists/"* "$ROOT/var/cache/apt/"*.bin "$ROOT/var/cache/apt/archives/"*.deb
