"""Pipeline outputs: the `Output` base and the video recorder. Service outputs (HTTP, events...) live in edge.serve."""

from .base import CallbackOutput, Output

__all__ = ["Output", "CallbackOutput", "RecordOutput"]


def __getattr__(name: str):
    if name == "RecordOutput":
        from .record import RecordOutput

        return RecordOutput
    raise AttributeError(name)
