"""User-facing errors.

A `PeftportError` is a mistake the user can fix (bad id, bad file, missing asset): the CLI prints
its message and exits with status 2, never a traceback. Anything else is a bug and keeps its
traceback.
"""


class PeftportError(Exception):
    """A clear, specific problem with the user's input or environment."""


class AssetError(PeftportError):
    """An asset could not be resolved from any of its sources, or failed verification."""


class UnknownNameError(PeftportError, KeyError):
    """A registry lookup failed; the message lists close matches and what exists."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])
