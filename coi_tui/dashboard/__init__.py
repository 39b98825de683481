"""Non-UI backend of the dashboard: what it shows (slots, snapshots, threats) and does."""
