"""Glance's Image API v2 over HTTP (`serve --glance-listen`): an adapter over the service layer.

The same process, store and rules as the gRPC API; the clients people already have
(python-glanceclient, openstacksdk) call it unchanged. docs/glance-compat.md says how far.
"""
