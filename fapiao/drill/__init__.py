"""Fault drills: scenarios as data (drills/*.toml), a workload that records every request and its answer, faults on
a schedule, and a checker that compares what was acknowledged with what ended up stored. See docs/drills.md."""
