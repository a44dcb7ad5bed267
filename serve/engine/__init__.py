"""The engine layer: what runs the jobs of one loaded model.

``interface`` declares ``Engine`` (what admission and the model table call) and ``StepModel``
(what a step-by-step backend offers); ``batching`` is the continuous-batching ``StepEngine``;
``tracker`` turns sampled tokens into text, stop sequences and finish reasons for every engine;
``launch`` picks a backend for an artifact and starts its engine.
"""
