"""serve: the gRPC server that runs Enclave's artifacts (`enclave serve`)."""
