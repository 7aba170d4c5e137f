"""Training stage: the coprocessor, its block-mask one-pass training, and evaluation.

Built on ``latentcache.model`` (the owned decoder). Needs the ``[train]`` extra (torch, transformers).
"""
