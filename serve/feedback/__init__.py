"""Reviewers' feedback on answers: the store (``store``), text sealed at rest (``crypto``), the
server's side (``capture``) and the training file made from it (``export``)."""
