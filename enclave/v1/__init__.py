"""Python stubs of the `enclave.v1` gRPC API, generated from proto/enclave/v1 by `make proto`.

Do not edit the ``*_pb2*`` files by hand; change the .proto and regenerate.
"""
