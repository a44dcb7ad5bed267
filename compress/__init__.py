"""compress: from a tuned model to small, fast, measured artifacts.

Each step (merge, prune, ...) is a function registered by name in ``compress.registry``,
reads one artifact directory and writes another with a manifest (lineage, settings,
metrics). ``compress.recipe`` chains them; ``compress.report`` compares the results.
"""
