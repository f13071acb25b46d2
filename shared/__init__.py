"""Code every Fapiao Sync service shares. Never imports from `services`."""
