"""The coordinator's audit log: hash-chained records derived from the replicated log."""
