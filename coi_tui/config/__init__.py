"""Configuration: defaults, files, environment."""

from coi_tui.config.settings import Settings, load_settings

__all__ = ["Settings", "load_settings"]
