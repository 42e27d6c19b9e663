"""The imageloc server: domain rules, use cases, store and gRPC surface."""
