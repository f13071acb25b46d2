"""Operator tooling for Fapiao Sync: the `fapiao` CLI and the local stack manager."""
