"""Errors raised for bad input.

Every message says which file, key or value is wrong, what was expected, and how to fix it.
They are raised before any long work starts.
"""


class SVIError(ValueError):
    """Bad input or settings; the message tells the user what to change."""


class CheckpointError(SVIError):
    """A model or LoRA file cannot be used (missing, corrupt, wrong kind, wrong size)."""


class RunStoreError(SVIError):
    """A run directory does not match the requested settings, or is damaged."""


class Cancelled(Exception):
    """The user cancelled generation; finished clips stay valid and the run can resume."""


class RunMismatchError(RunStoreError):
    """A run directory holds another run (other settings or inputs, or a finished clip that
    would now be made differently); a new run directory would not be a mistake."""


class RunInUseError(RunStoreError):
    """Another process is generating into the run directory right now."""
