"""LangGraph agents booking a trip on Concord (run.py)."""
