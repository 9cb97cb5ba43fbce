"""Integrations with agent frameworks, each imported only when used (its extra)."""
