"""prune: magnitude, Wanda and SparseGPT, unstructured or N:M.

The math of each method lives in its own module (magnitude.py, wanda.py, sparsegpt.py);
run.py is the lifecycle (calibration, layer by layer, artifact).
"""
