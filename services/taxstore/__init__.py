"""Taxstore: a stand-in for the central tax authority's store, so sync and reconciliation can be
proven against the failures a real authority shows (slowness, 5xx, ambiguous timeouts, silent loss,
replication lag, corruption, outages) without a real authority."""
