"""coi-tui: AI coding agents in hardened Incus containers."""

__version__ = "0.1.0"
