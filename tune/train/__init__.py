"""The training loop and its parts: model setup, batching, optimisers, checkpoints, ranks."""
