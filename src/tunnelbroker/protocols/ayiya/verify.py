"""Receive-side validation of AYIYA datagrams (sixxs.md §3.6, §3.7) and one tunnel's link.

The checks, in order (cheap before expensive, and the replay window last so that only
authentic datagrams are remembered):

1. the header is the SHA-1/IPv6-identity profile and the payload matches Next Header
   (:func:`~.codec.decode`);
2. the OpCode is one this side acts on: a PoP takes NOOP, Forward and the two Echo Requests
   (sixxsd); a client takes Forward and the Echo Requests, and drops NOOPs (AICCU);
3. the identity is the peer's tunnel address (a PoP first finds the tunnel by it);
4. ``|now - epoch| <= 120`` s;
5. the SHA-1 signature;
6. the datagram was not accepted before (:class:`~.replay.ReplayCache`), and one from a new
   address is newer than every datagram accepted so far (it would move the tunnel).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from enum import Enum
from typing import Protocol

from tunnelbroker.protocols.ayiya import codec
from tunnelbroker.protocols.ayiya.errors import AyiyaDrop
from tunnelbroker.protocols.ayiya.messages import (
    FIXED_HEADER_SIZE,
    IDENTITY_SIZE,
    SIGNATURE_SIZE,
    AyiyaPacket,
    OpCode,
)
from tunnelbroker.protocols.ayiya.replay import CLOCK_WINDOW, ReplayCache, Verdict

_SIG_START = FIXED_HEADER_SIZE + IDENTITY_SIZE
_SIG_END = _SIG_START + SIGNATURE_SIZE


class ReplayState(Protocol):
    """What a link needs of its replay cache: :class:`~.replay.ReplayCache`, or one that
    lives elsewhere (the C fast path's, so a tunnel has one replay state, not two)."""

    @property
    def newest(self) -> int | None: ...

    def __len__(self) -> int: ...

    def seen(self, digest: bytes) -> bool: ...

    def check_and_record(self, epoch: int, digest: bytes, moving: bool = False) -> Verdict: ...


class Role(Enum):
    """Which side receives: the PoP (from clients) or a client (from the PoP)."""

    SERVER = "server"
    CLIENT = "client"


_ACCEPTED_OPCODES = {
    Role.SERVER: frozenset(
        {OpCode.NOOP, OpCode.FORWARD, OpCode.ECHO_REQUEST, OpCode.ECHO_REQUEST_FORWARD}
    ),
    Role.CLIENT: frozenset({OpCode.FORWARD, OpCode.ECHO_REQUEST, OpCode.ECHO_REQUEST_FORWARD}),
}


def verify(
    packet: AyiyaPacket,
    key: bytes,
    now: float,
    *,
    role: Role,
    peer_identity: ipaddress.IPv6Address,
    replay: ReplayState | None = None,
    clock_window: int = CLOCK_WINDOW,
    moving: bool = False,
) -> AyiyaPacket | AyiyaDrop:
    """Check a decoded datagram from the peer whose tunnel address is ``peer_identity``.

    Args:
        key: ``SHA1(tunnel secret)`` (:func:`~.codec.signing_key`).
        now: the current time, epoch seconds.
        replay: the tunnel's replay cache; None checks the clock only (sixxsd's behaviour).
        moving: the datagram comes from an address other than the tunnel's endpoint, and
            would move it there if accepted: it must then be newer than every datagram the
            cache accepted before.
    """
    return _check(
        packet,
        key,
        now,
        _ACCEPTED_OPCODES[role],
        peer_identity.packed,
        replay,
        clock_window,
        moving,
    )


def _check(
    packet: AyiyaPacket,
    key: bytes,
    now: float,
    opcodes: frozenset[OpCode],
    peer: bytes,
    replay: ReplayState | None,
    clock_window: int,
    moving: bool,
) -> AyiyaPacket | AyiyaDrop:
    if packet.opcode not in opcodes:
        return AyiyaDrop.BAD_OPCODE
    if packet.identity_packed != peer:
        return AyiyaDrop.WRONG_IDENTITY
    if abs(now - packet.epoch) > clock_window:
        return AyiyaDrop.CLOCK_SKEW
    # codec.signature_valid, inlined: this runs once per datagram on the data plane.
    signed = packet.signed
    h = hashlib.sha1(signed[:_SIG_START])
    h.update(key)
    h.update(signed[_SIG_END:])
    if not hmac.compare_digest(h.digest(), packet.signature):
        return AyiyaDrop.BAD_SIGNATURE
    if replay is not None:
        verdict = replay.check_and_record(packet.epoch, packet.signature, moving)
        if verdict is not Verdict.ACCEPTED:
            return AyiyaDrop.REPLAYED if verdict is Verdict.REPLAYED else AyiyaDrop.STALE_MOVE
    return packet


class AyiyaLink:
    """One tunnel's AYIYA on one side: signs what it sends, validates what it receives.

    A PoP keeps one per AYIYA tunnel (``local`` = the PoP's tunnel address, ``remote`` = the
    client's, which is also how it finds the link for a datagram); a client keeps one for its
    tunnel (the other way round).
    """

    def __init__(
        self,
        secret: str | bytes,
        *,
        role: Role,
        local: ipaddress.IPv6Address,
        remote: ipaddress.IPv6Address,
        replay: ReplayState | None = None,
        clock_window: int = CLOCK_WINDOW,
    ) -> None:
        self.role = role
        self.local = local
        self.remote = remote
        self.key = codec.signing_key(secret)
        self.replay: ReplayState = replay if replay is not None else ReplayCache()
        self.clock_window = clock_window
        self._opcodes = _ACCEPTED_OPCODES[role]
        self._local = local.packed
        self._remote = remote.packed

    def receive(self, datagram: bytes, now: float) -> AyiyaPacket | AyiyaDrop:
        """Decode and verify a datagram from the peer."""
        packet = codec.decode(datagram)
        if isinstance(packet, AyiyaDrop):
            return packet
        return self.verify(packet, now)

    def verify(
        self, packet: AyiyaPacket, now: float, *, moving: bool = False
    ) -> AyiyaPacket | AyiyaDrop:
        """Verify an already decoded datagram (a PoP decodes first to find the link).

        ``moving``: see :func:`verify`.
        """
        return _check(
            packet,
            self.key,
            now,
            self._opcodes,
            self._remote,
            self.replay,
            self.clock_window,
            moving,
        )

    def forward(self, payload: bytes, now: float) -> bytes:
        """A signed Forward datagram carrying ``payload`` (an IPv6 or IPv4 packet)."""
        return codec.build_forward(self._local, self.key, payload, now)

    def noop(self, now: float) -> bytes:
        """A signed NOOP keepalive (clients only: AICCU drops NOOPs from the PoP)."""
        return codec.build_noop(self._local, self.key, now)
