"""Sync: mirrors every issued invoice into the tax store, exactly once in effect, whatever the store does."""
