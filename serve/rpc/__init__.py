"""The gRPC layer: the enclave.v1 services (``inference``, ``admin``) and the interceptor that maps
errors to status codes (``interceptors``). Handlers translate messages; admission does the rest.
"""
