"""Hugging Face checkpoints: what a checkpoint directory holds (``checkpoint``: JSON and safetensors
headers only, no torch), loading one with transformers (``loader``), and generating from it
(``generate``).
"""
