"""Enclave: the shared layer (CLI, artifact manifests, config, logging, model store).

The stages `tune`, `compress` and `serve` never import each other; they meet through
artifact directories described by `enclave.manifest`.
"""

__version__ = "0.1.0"
