"""Errors a user can act on.

Every error raised for bad input is a ``LatentcacheError`` whose message is one line naming the file or
value at fault and, where there is one, the fix. The CLI prints that line and exits 1; anything else is a
bug and keeps its traceback.
"""


class LatentcacheError(Exception):
    """Bad input or environment, explained in one line."""


class CheckpointError(LatentcacheError):
    """A model directory or weight file is missing, truncated or inconsistent with its config."""


class UnsupportedModelError(LatentcacheError):
    """The checkpoint's ``model_type`` (or one of its options) is not implemented."""


class AssetError(LatentcacheError):
    """A downloadable asset could not be fetched or failed its integrity check."""


class DataError(LatentcacheError):
    """A training or evaluation corpus is missing, unreadable, malformed or too small for the requested packing."""


class BackendUnavailable(LatentcacheError):
    """A runtime backend's (or the TensorRT builder's) library or device is missing; the message names what to
    install."""
