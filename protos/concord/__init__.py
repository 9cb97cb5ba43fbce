"""Generated protobuf and gRPC code for the Concord wire protocol (see scripts/gen_protos)."""
