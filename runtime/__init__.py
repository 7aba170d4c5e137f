"""Runtime stage: runs exported artifacts (prefill, optional coprocessor, decode) on the device.

Imports nothing from ``latentcache.train`` or ``latentcache.export`` and needs neither torch nor
transformers: an edge device installs only ``latentcache[runtime]``.
"""
