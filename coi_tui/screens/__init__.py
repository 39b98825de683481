"""Screens for coi-tui. The first dashboard runs on the default screen; more screens come later."""
