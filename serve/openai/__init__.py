"""The OpenAI-compatible HTTP API of `enclave serve` (serve.openai.app), on the same admission and engines as gRPC."""
