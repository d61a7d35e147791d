"""Fetch a tunnel from a TIC server (SixXS, TCP 3874) over asyncio, as AICCU does.

:func:`fetch` drives :class:`~tunnelbroker.protocols.tic.TicClient` over a TCP connection:
greeting, client identification, the ±120 s clock check, optional STARTTLS, the MD5
challenge login, then ``tunnel list`` and/or ``tunnel show``. The result is the tunnel's
:class:`~tunnelbroker.protocols.tic.TicTunnel` (everything needed to bring up an AYIYA,
heartbeat or static 6in4 tunnel) or the listing.

TLS: ``starttls=True`` asks for it; ``require_tls`` gives up if the server refuses. The
certificate is verified (system CAs, or ``cafile``) unless ``verify=False`` is asked for
explicitly: AICCU never verified, and SixXS-era servers often had self-signed certificates.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from tunnelbroker import __version__ as _version
from tunnelbroker.protocols.tic import (
    PORT,
    ClientSettings,
    Done,
    Failed,
    LocalProtocolError,
    TicClient,
    TicListEntry,
    TicTunnel,
    TlsRequested,
)

__all__ = ["PORT", "TicClientError", "TicResult", "fetch"]

log = logging.getLogger(__name__)

_READ_SIZE = 4096


class TicClientError(Exception):
    """The exchange failed: ``server_text`` is the server's refusal when there was one.

    ``permanent``: another attempt cannot succeed until someone changes something (a refused
    login, an unknown tunnel, TLS required but refused, an unusable tunnel, bad arguments),
    as opposed to a network error, a busy server or a clock off, which may pass.
    """

    def __init__(
        self, reason: str, server_text: str | None = None, *, permanent: bool = False
    ) -> None:
        super().__init__(reason if server_text is None else f"{reason}: {server_text}")
        self.reason = reason
        self.server_text = server_text
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class TicResult:
    #: The tunnel asked for (or the account's only one); None for a listing.
    tunnel: TicTunnel | None
    #: The ``tunnel list`` entries, when the list was fetched.
    entries: tuple[TicListEntry, ...]
    #: The session ran over TLS.
    tls: bool
    #: Our clock minus the server's, seconds.
    clock_offset: float | None


def _os_name() -> str:
    # "Linux/6.1.0-18-amd64", as AICCU's uname sysname/release.
    return f"{platform.system() or 'unknown'}/{platform.release() or 'unknown'}".replace(" ", "_")


def client_context(verify: bool = True, cafile: str | None = None) -> ssl.SSLContext:
    """A TLS client context; without ``verify`` it accepts any certificate (AICCU's way)."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def fetch(
    host: str,
    username: str,
    password: str,
    *,
    port: int = PORT,
    tunnel_id: str | None = None,
    list_only: bool = False,
    starttls: bool = False,
    require_tls: bool = False,
    verify: bool = True,
    cafile: str | None = None,
    timeout: float = 30.0,
    clock: Callable[[], float] = time.time,
) -> TicResult:
    """Log in to the TIC server at ``host`` and fetch a tunnel (or, ``list_only``, the list).

    Raises:
        TicClientError: the server refused, the clock is off, TLS failed, the connection
            failed or the whole exchange took longer than ``timeout`` seconds.
    """
    try:
        settings = ClientSettings(
            username=username,
            password=password,
            tunnel_id=tunnel_id,
            list_only=list_only,
            starttls=starttls or require_tls,
            require_tls=require_tls,
            client_name=f"tunnelbroker/{_version}",
            os_name=_os_name(),
        )
        machine = TicClient(settings, now=clock())
    except LocalProtocolError as e:
        raise TicClientError(str(e), permanent=True) from None
    tls_context = client_context(verify, cafile) if settings.starttls else None
    try:
        async with asyncio.timeout(timeout):
            return await _run(host, port, machine, tls_context, clock)
    except TimeoutError:
        raise TicClientError(f"no answer from {host} port {port} within {timeout:g} s") from None
    except ssl.SSLError as e:
        raise TicClientError(f"TLS with {host} failed: {e.reason or e}") from None
    except OSError as e:
        raise TicClientError(f"cannot talk to {host} port {port}: {e.strerror or e}") from None


async def _run(
    host: str,
    port: int,
    machine: TicClient,
    tls_context: ssl.SSLContext | None,
    clock: Callable[[], float],
) -> TicResult:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            out = machine.data_to_send()
            if out:
                writer.write(out)
                await writer.drain()
            while (ev := machine.next_event()) is not None:
                if isinstance(ev, TlsRequested):
                    assert tls_context is not None
                    await writer.start_tls(tls_context, server_hostname=host)
                    machine.tls_started()
                    writer.write(machine.data_to_send())
                    await writer.drain()
                elif isinstance(ev, Done):
                    return TicResult(ev.tunnel, ev.entries, machine.tls, machine.clock_offset)
                elif isinstance(ev, Failed):
                    raise TicClientError(
                        ev.reason, ev.server_text, permanent=machine.failure_permanent
                    )
            data = await reader.read(_READ_SIZE)
            if not data:
                machine.connection_lost()
            else:
                machine.receive_data(data, clock())
    finally:
        # Send what is queued (our QUIT) and close without waiting for a reply.
        try:
            out = machine.data_to_send()
            if out and not writer.is_closing():
                writer.write(out)
                await asyncio.wait_for(writer.drain(), 2.0)
        except (OSError, TimeoutError):
            pass
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 2.0)
        except (OSError, TimeoutError, ssl.SSLError):
            pass
