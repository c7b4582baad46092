"""The model core's error type, importable without torch (the node catches it at configure)."""


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, refused or does not match the expected model.

    The message is always one line (libraries' multi-line errors are folded into it)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ExportError(CheckpointError):
    """An ONNX export of a frozen encoder cannot be made, validated, stored or loaded.

    A CheckpointError: an export is a file derived from the weights, and callers that report
    checkpoint problems as one line (the node's configure) report this one the same way."""
