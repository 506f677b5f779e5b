"""The one error type the library raises for bad input; the CLI prints it as one line."""


class DGLError(Exception):
    """A user-facing error: the message names the file/setting and the cause (and the fix when known)."""
