"""Screens for coi-tui: the main dashboard and its dialogs."""
