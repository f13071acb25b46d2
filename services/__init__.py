"""The Fapiao Sync services: one package each, each its own process, port and schema."""
