"""Sessions: naming, slots, lifecycle, saved state."""
