"""Concord participant SDK: the agent side of transactions, checkpoints and rollback."""
