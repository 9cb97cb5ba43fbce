"""Trust boundaries: identities in certificates, mutual TLS on every gRPC link."""
