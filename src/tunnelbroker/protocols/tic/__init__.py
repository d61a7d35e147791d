"""TIC, the SixXS Tunnel Information and Control protocol (TCP 3874), sans-IO.

:class:`TicServer` answers AICCU-style clients from a :class:`TicBackend`;
:class:`TicClient` walks AICCU's sequence to fetch a tunnel. See docs/sixxs.md.
"""

from tunnelbroker.protocols.tic.backend import MemoryBackend, MemoryUser, TicBackend
from tunnelbroker.protocols.tic.client import ClientSettings, ClientState, TicClient
from tunnelbroker.protocols.tic.codec import (
    BURST,
    MAX_LINE,
    LineReader,
    challenge_response,
    list_line,
    parse_list_line,
    parse_pop,
    parse_route_line,
    parse_show,
    password_md5,
    pop_lines,
    show_lines,
)
from tunnelbroker.protocols.tic.errors import LocalProtocolError, RemoteProtocolError, TicError
from tunnelbroker.protocols.tic.events import (
    Closed,
    Done,
    ErrorSent,
    Event,
    Failed,
    LoginFailed,
    LoginSucceeded,
    StartTls,
    TlsRequested,
    TunnelsListed,
)
from tunnelbroker.protocols.tic.messages import (
    PORT,
    TIC_VERSION,
    TUNNEL_TYPES,
    ReplyCode,
    TicListEntry,
    TicPop,
    TicRoute,
    TicTunnel,
)
from tunnelbroker.protocols.tic.server import ServerSettings, State, TicServer

__all__ = [
    "BURST",
    "MAX_LINE",
    "PORT",
    "TIC_VERSION",
    "TUNNEL_TYPES",
    "ClientSettings",
    "ClientState",
    "Closed",
    "Done",
    "ErrorSent",
    "Event",
    "Failed",
    "LineReader",
    "LocalProtocolError",
    "LoginFailed",
    "LoginSucceeded",
    "MemoryBackend",
    "MemoryUser",
    "RemoteProtocolError",
    "ReplyCode",
    "ServerSettings",
    "StartTls",
    "State",
    "TicBackend",
    "TicClient",
    "TicError",
    "TicListEntry",
    "TicPop",
    "TicRoute",
    "TicServer",
    "TicTunnel",
    "TlsRequested",
    "TunnelsListed",
    "challenge_response",
    "list_line",
    "parse_list_line",
    "parse_pop",
    "parse_route_line",
    "parse_show",
    "password_md5",
    "pop_lines",
    "show_lines",
]
