"""SASL mechanisms for TSP (RFC 5572 §4.4.2) as pure functions and small state holders.

ANONYMOUS (RFC 4505), PLAIN (RFC 4616) in gogoc's raw framing, and DIGEST-MD5 (RFC 2831)
for both ends. Peer input fails only with :class:`SaslError` subclasses. Nonces and cnonces
are passed in by the caller.
"""

from tunnelbroker.protocols.sasl.anonymous import MAX_TRACE_CHARS, parse_anonymous
from tunnelbroker.protocols.sasl.digest_md5 import (
    INITIAL_NC,
    MAX_DIGEST_SIZE,
    DigestChallenge,
    DigestClient,
    DigestResponse,
    DigestServer,
    decode_b64_line,
    digest_ha1,
    encode_b64_line,
    ha1_hex,
    parse_challenge,
    parse_digest_response,
    response_value,
    session_key,
)
from tunnelbroker.protocols.sasl.errors import (
    AuthenticationFailed,
    MalformedResponse,
    SaslError,
)
from tunnelbroker.protocols.sasl.plain import (
    MAX_PLAIN_SIZE,
    PlainCredentials,
    encode_plain,
    parse_plain,
)

__all__ = [
    "INITIAL_NC",
    "MAX_DIGEST_SIZE",
    "MAX_PLAIN_SIZE",
    "MAX_TRACE_CHARS",
    "AuthenticationFailed",
    "DigestChallenge",
    "DigestClient",
    "DigestResponse",
    "DigestServer",
    "MalformedResponse",
    "PlainCredentials",
    "SaslError",
    "decode_b64_line",
    "digest_ha1",
    "encode_b64_line",
    "encode_plain",
    "ha1_hex",
    "parse_anonymous",
    "parse_challenge",
    "parse_digest_response",
    "parse_plain",
    "response_value",
    "session_key",
]
