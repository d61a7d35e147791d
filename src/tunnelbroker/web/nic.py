"""``/nic/update``: the DynDNS-style endpoint update routers and ddclient already speak.

``hostname`` names the tunnel(s) (``123`` or ``T123``, comma-separated), ``myip`` the new IPv4
endpoint (default: the caller's address). HTTP Basic carries the account name and either the
account password or the tunnel's update key. One answer line per tunnel, as dyndns2 does:

* ``good <ip>``: the endpoint changed, and the data plane follows at once;
* ``nochg <ip>``: it already was that; ``abuse`` once a tunnel has had ``nochg_limit``
  of those in a row within ``nochg_window`` seconds (clients that update in a loop);
* ``badauth``: wrong or missing credentials (401); an update key counts only for its own
  tunnel;
* ``nohost``: no such tunnel of this account (another account's tunnel answers the same, so
  ids cannot be probed), or no hostname;
* ``badip <reason>``: an address the tunnel cannot use (400): not IPv4, private for a static
  tunnel, already another tunnel's endpoint, or an AYIYA tunnel (which learns its endpoint).
  dyndns2 has no code for this; ``badip`` follows its one-word-then-detail style.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import deque
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.responses import PlainTextResponse

from tunnelbroker.broker.model import BrokerError
from tunnelbroker.store import UserRecord
from tunnelbroker.web.auth import parse_basic, same_secret

if TYPE_CHECKING:
    from tunnelbroker.web.app import WebContext

_MAX_HOSTS = 20


class NochgThrottle:
    """Counts unchanged updates per tunnel; too many in a window is abuse."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._seen: dict[int, deque[float]] = {}

    def nochg(self, tunnel_id: int, now: float) -> bool:
        """Record an unchanged update; False if it is one too many (answer ``abuse``)."""
        q = self._seen.setdefault(tunnel_id, deque())
        while q and now - q[0] > self.window:
            q.popleft()
        if len(q) >= self.limit:
            return False
        q.append(now)
        return True

    def changed(self, tunnel_id: int) -> None:
        self._seen.pop(tunnel_id, None)


def _text(lines: list[str], status: int = 200, auth: bool = False) -> PlainTextResponse:
    headers = {"WWW-Authenticate": 'Basic realm="tunnelbroker"'} if auth else None
    return PlainTextResponse("\n".join(lines) + "\n", status, headers=headers)


def _tunnel_ids(value: str) -> list[int] | None:
    out = []
    for part in value.split(",")[:_MAX_HOSTS]:
        digits = part.strip().removeprefix("T").removeprefix("t")
        if not digits.isdigit() or len(digits) > 12:
            return None
        out.append(int(digits))
    return out


async def update(ctx: WebContext, request: Request, caller: str) -> PlainTextResponse:
    params = dict(request.query_params)
    if request.method == "POST" and not params:
        form = await request.form()
        params = {k: str(v) for k, v in form.items()}
    mono = time.monotonic()
    if ctx.auth.retry_after(caller, mono) > 0:
        return _text(["abuse"], 429)
    creds = parse_basic(request.headers.get("authorization"))
    if creds is None:
        return _text(["badauth"], 401, auth=True)
    name, secret = creds
    ids = _tunnel_ids(params.get("hostname", ""))
    if not ids:
        return _text(["nohost"])
    myip = params.get("myip") or caller
    try:
        ip = str(ipaddress.IPv4Address(myip.strip()))
    except ValueError:
        return _text([f"badip {myip[:64]!r} is not an IPv4 address"], 400)

    user = await _thread_get_user(ctx, name)
    tunnels = [ctx.broker.tunnels.get(i) for i in ids]
    # The update key of every named tunnel, or else the account password.
    by_key = user is not None and all(
        t is not None and t.user_id == user.id and same_secret(secret, t.update_key)
        for t in tunnels
    )
    if not by_key:
        authed = await ctx.auth.password(name, secret)
        if authed is None or user is None or authed.id != user.id:
            ctx.auth.failed(caller, mono)
            return _text(["badauth"], 401, auth=True)
    assert user is not None
    now = time.time()
    lines = []
    status = 200
    for tid, t in zip(ids, tunnels, strict=True):
        if t is None or t.user_id != user.id:
            lines.append("nohost")
            continue
        try:
            changed = ctx.broker.update_endpoint(tid, ip, None, now)
        except BrokerError as e:
            lines.append(f"badip {e.detail or e.refusal.value}")
            status = 400
            continue
        if changed:
            ctx.nochg.changed(tid)
            lines.append(f"good {ip}")
        elif ctx.nochg.nochg(tid, mono):
            lines.append(f"nochg {ip}")
        else:
            lines.append("abuse")
    return _text(lines, status)


async def _thread_get_user(ctx: WebContext, name: str) -> UserRecord | None:
    if not name or len(name) > 64:
        return None
    return await asyncio.to_thread(ctx.store.get_user, name)
