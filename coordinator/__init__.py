"""Concord coordinator: pure protocol core, replication, RPC and runtime."""
