"""TSP status codes (RFC 5572 Appendix B) and the exceptions that carry them."""

from __future__ import annotations

from enum import IntEnum


class StatusCode(IntEnum):
    """Numeric TSP reply codes. A referral adds :data:`REFERRAL_OFFSET` to the code."""

    #: Successful operation.
    SUCCESS = 200
    #: Invalid userid, password, or authentication mechanism.
    AUTHENTICATION_FAILED = 300
    #: The server has reached its capacity limit.
    NO_MORE_TUNNELS = 301
    #: The client version is not supported by the server.
    UNSUPPORTED_CLIENT_VERSION = 302
    #: The server does not provide the requested tunnel type.
    UNSUPPORTED_TUNNEL_TYPE = 303
    #: Undefined server error.
    SERVER_SIDE_ERROR = 310
    #: The received request has invalid syntax or is truncated.
    INVALID_REQUEST_FORMAT = 500
    #: The IPv4 address specified by the client is invalid.
    INVALID_IPV4_ADDRESS = 501
    #: The IPv6 address specified by the client is invalid.
    INVALID_IPV6_ADDRESS = 502
    #: An IPv6-over-IPv4 tunnel already exists using the same IPv4 address endpoints.
    IPV4_ADDRESS_ALREADY_USED = 506
    #: Requested prefix length cannot be assigned.
    PREFIX_LENGTH_UNAVAILABLE = 507
    #: DNS delegation error (HexOS extension known to gogoc).
    DNS_DELEGATION_ERROR = 509
    #: Unsupported prefix length (HexOS extension).
    UNSUPPORTED_PREFIX_LENGTH = 518
    #: Missing prefix length (HexOS extension).
    MISSING_PREFIX_LENGTH = 520
    #: The client tunnel request is being processed by the server. Temporary.
    REQUEST_IN_PROGRESS = 521
    #: Prefix requested for an anonymous user (HexOS extension).
    PREFIX_FOR_ANONYMOUS = 522
    #: Request cannot be processed, insufficient resources. Temporary.
    SERVER_TOO_BUSY = 530

    @property
    def text(self) -> str:
        return _TEXT[self]

    def to_line(self, referral: bool = False) -> str:
        """The status line without CRLF, e.g. ``"1302 Unsupported client version"``."""
        code = int(self) + (REFERRAL_OFFSET if referral else 0)
        return f"{code} {self.text}"


#: RFC 5572 Appendix B: "1000 is added to the code" when a broker list follows.
REFERRAL_OFFSET = 1000

_TEXT: dict[StatusCode, str] = {
    StatusCode.SUCCESS: "Success",
    StatusCode.AUTHENTICATION_FAILED: "Authentication failed",
    StatusCode.NO_MORE_TUNNELS: "No more tunnels available",
    StatusCode.UNSUPPORTED_CLIENT_VERSION: "Unsupported client version",
    StatusCode.UNSUPPORTED_TUNNEL_TYPE: "Unsupported tunnel type",
    StatusCode.SERVER_SIDE_ERROR: "Server side error",
    StatusCode.INVALID_REQUEST_FORMAT: "Invalid request format or specified length",
    StatusCode.INVALID_IPV4_ADDRESS: "Invalid IPv4 address",
    StatusCode.INVALID_IPV6_ADDRESS: "Invalid IPv6 address",
    StatusCode.IPV4_ADDRESS_ALREADY_USED: "IPv4 address already used for existing tunnel",
    StatusCode.PREFIX_LENGTH_UNAVAILABLE: "Requested prefix length cannot be assigned",
    StatusCode.DNS_DELEGATION_ERROR: "DNS delegation error",
    StatusCode.UNSUPPORTED_PREFIX_LENGTH: "Unsupported prefix length",
    StatusCode.MISSING_PREFIX_LENGTH: "Missing prefix length",
    StatusCode.REQUEST_IN_PROGRESS: "Request already in progress",
    StatusCode.PREFIX_FOR_ANONYMOUS: "Prefix requested for anonymous",
    StatusCode.SERVER_TOO_BUSY: "Server too busy",
}


class TspError(Exception):
    """Base of all TSP errors."""


class LocalProtocolError(TspError):
    """Our own side misused the protocol API (a bug in the caller)."""


class RemoteProtocolError(TspError):
    """The peer sent something invalid. ``code`` is what the server answers with."""

    def __init__(self, message: str, code: StatusCode = StatusCode.INVALID_REQUEST_FORMAT) -> None:
        super().__init__(message)
        self.code = code


class DecodeError(RemoteProtocolError):
    """Bytes that cannot be decoded: framing, XML or header errors."""
