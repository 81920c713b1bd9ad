"""The one error type kerascheck raises for anything a user can fix.

The CLI turns it into exit code 2 and a single line on stderr, so the message
must name what was expected and what was found.
"""


class KerascheckError(Exception):
    """A problem with the user's model file, inputs or options."""


class UnsupportedLayerError(KerascheckError):
    """The model uses a layer class the engine does not implement."""


class UnsafeModelError(KerascheckError):
    """The model file asks for code execution, which kerascheck refuses."""
