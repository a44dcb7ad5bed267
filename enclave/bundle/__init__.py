"""Offline bundles: signed tar files that carry artifacts (and optionally the wheels that run them)
to a machine with no network.

``keys`` makes and reads Ed25519 keys, ``layout`` describes ``bundle.json`` and the tar layout,
``create`` writes a bundle, ``reader`` checks one (signature, every entry, every hash), and
``install`` unpacks a checked bundle into a serve model repository and installs its wheels.
"""
