"""The session core: the per-connection protocol state machine that transports and handlers
meet in. ``Session`` is what a transport shell creates for each connection::

    session = Session(node, transport, HANDLERS)
    await session.handle_frame(frame)   # for every inbound frame
    await session.release()             # when the connection ends
"""

from livegate.session.core import Followup, Handler, SessionCore, State, Transport
from livegate.session.session import Session

__all__ = ["Session", "SessionCore", "State", "Transport", "Followup", "Handler"]
