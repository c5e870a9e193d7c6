"""Datamodules: one file per data family, all yielding the batch contract.

A batch is a dict: ``x`` the data tensor in model space (images ``(B,C,H,W)`` in [-1, 1],
video ``(B,T,C,H,W)``, poses ``(B,J,3)``, points ``(B,D)``); optional ``y`` class ids,
``text`` a list of prompts, ``cond`` a dict of extra conditions.
"""
