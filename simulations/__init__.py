"""Simulations: tier 1 (deterministic, in-process) and tier 2 (real processes, real faults)."""
