"""Replication: pysyncobj node, the versioned entry codec and the durable journal."""
