"""The domain: images, locations, the status machine and the location rules.

It imports only the standard library; tests/test_architecture.py keeps it so.
"""
