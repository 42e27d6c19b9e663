"""Deployment tooling: Envoy in front of imageloc replicas (docs/deploy.md).

Imports the standard library only; `imageloc cluster` (imageloc.client.cluster_commands) uses it.
"""
