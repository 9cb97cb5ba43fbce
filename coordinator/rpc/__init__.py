"""gRPC layer: thin servicers and clients that translate protobuf <-> core."""
