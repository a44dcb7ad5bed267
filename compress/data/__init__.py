"""Text shipped with compress: held-out text for perplexity."""
