# Shared by the setup scripts (sourced). SUDO is "" as root, "sudo" for a user who has it.
# A user without sudo gets one line saying what needs root, never a shell error.
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

# require_root WHAT: stop with one line when WHAT needs root and there is no way to get it.
require_root() {
    if [ -n "$SUDO" ] && ! command -v sudo >/dev/null 2>&1; then
        echo "$1 needs root and sudo is not installed: run 'make setup' as root once" >&2
        exit 1
    fi
}
