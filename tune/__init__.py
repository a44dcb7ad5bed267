"""tune: from a base model and a domain data set to a LoRA adapter artifact.

Read top to bottom: ``tune.data`` (load, check, clean, split, tokenize), ``tune.train``
(the training loop, checkpoints, distributed), ``tune.eval`` (metrics and reports),
``tune.search`` (hyperparameter search). The CLI is ``enclave tune`` / ``enclave eval``.
"""
