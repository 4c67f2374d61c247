"""livegate: a real-time WebSocket gateway that speaks the Centrifuge client protocol v2."""

__version__ = "0.1.0"

from livegate.app import App  # noqa: E402
from livegate.errors import ClientError, DisconnectRequested, LivegateError  # noqa: E402

__all__ = ["App", "ClientError", "DisconnectRequested", "LivegateError", "__version__"]
