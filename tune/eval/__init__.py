"""Evaluation: perplexity, exact match, token F1, BLEU, ROUGE-L, label metrics, fairness by group."""
