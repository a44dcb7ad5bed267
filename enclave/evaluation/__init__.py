"""One evaluation for every stage: the metrics, perplexity and task scores, over one model interface.

tune (after training), `enclave eval`, `enclave compress report` and the benchmark all score
through this package, in process, so two artifacts in one report are compared by the same code:

- ``metrics``: exact match, token F1, BLEU, ROUGE-L (and accuracy, macro F1 for label tasks), per
  group and the largest gaps between groups (pure functions of predictions and references).
- ``lm``: the model interface (``LanguageModel``: per-token log-probabilities and greedy
  decoding) with a transformers/PyTorch, an onnxruntime and a vLLM implementation.
- ``perplexity``: one definition: exp(mean negative log-likelihood) of the scored tokens, for raw
  held-out text (non-overlapping windows) and for reference answers given their prompts.
- ``task``: a test split's answers scored overall and per group, with fairness warnings.
"""
