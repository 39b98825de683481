"""Network isolation: nftables rules per container (restricted, allowlist, open)."""
