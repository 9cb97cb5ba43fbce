"""Version 1 of the Concord wire protocol (generated; do not edit *_pb2*.py by hand)."""
