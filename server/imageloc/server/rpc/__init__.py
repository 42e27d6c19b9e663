"""The gRPC adapter: requests in, the service called, responses and rich statuses out.

Everything here may import grpc and the generated code; nothing in domain, service or
store imports it.
"""
