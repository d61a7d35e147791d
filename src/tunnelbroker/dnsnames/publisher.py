"""Send each tunnel's records to the primary DNS server with RFC 2136 updates (dnspython).

The broker's observer hands tunnel changes in; one task sends them, one update message per
zone per change, authenticated with TSIG. Each name a tunnel owns is replaced as a whole
(delete the record set, add the new one), so a repeated or reordered update converges. A
failed update is retried with backoff, the newest state winning; the broker never waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import dns.asyncquery
import dns.exception
import dns.name
import dns.rcode
import dns.tsigkeyring
import dns.update

from tunnelbroker.config import DnsSection
from tunnelbroker.dnsnames.records import RRSet, plan
from tunnelbroker.store.records import TunnelRecord

log = logging.getLogger(__name__)

#: user id -> account name (the TSP tunnel's name is the account's); called on a thread.
UserNames = Callable[[int], str | None]


class DnsPublisher:
    """Keeps the DNS in step with the live tunnels."""

    def __init__(
        self,
        config: DnsSection,
        domain: str,
        user_names: UserNames,
        *,
        max_backoff: float = 60.0,
        on_problems: Callable[[int, str | None], None] | None = None,
    ) -> None:
        self.config = config
        #: Told what of a tunnel could not be published (None: all of it), for its user.
        self.on_problems = on_problems
        self.domain = domain
        self.user_names = user_names
        self.max_backoff = max_backoff
        self._published: dict[int, list[RRSet]] = {}
        self._pending: dict[int, TunnelRecord] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.errors: dict[int, str] = {}
        keyring = None
        if config.tsig_name:
            keyring = dns.tsigkeyring.from_text({config.tsig_name: config.tsig_secret})
        self._keyring = keyring

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def changed(self, record: TunnelRecord) -> None:
        """A tunnel came up, changed or went down (called on the event loop)."""
        if record.id is None:
            return
        self._pending[record.id] = record
        self._idle.clear()
        self._wake.set()

    async def settled(self, timeout: float = 10.0) -> bool:
        """Wait until everything pending is published (tests, shutdown)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        backoff = 1.0
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                tid, record = next(iter(self._pending.items()))
                del self._pending[tid]
                try:
                    await self._publish(tid, record)
                    backoff = 1.0
                except (OSError, TimeoutError, dns.exception.DNSException, _Refused) as e:
                    log.warning(
                        "dns: update for tunnel %s failed (%s); retrying in %.0fs", tid, e, backoff
                    )
                    self.errors[tid] = str(e)
                    self._pending.setdefault(tid, record)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff)
            self._idle.set()

    async def _publish(self, tid: int, record: TunnelRecord) -> None:
        user = None
        if record.user_id is not None:
            user = await asyncio.to_thread(self.user_names, record.user_id)
        wanted = plan(record, user, self.domain, self.config.zones)
        for problem in wanted.problems:
            log.info("dns: tunnel %s: %s", tid, problem)
        if self.on_problems is not None and record.state == "active":
            self.on_problems(tid, "; ".join(wanted.problems) or None)
        old = self._published.get(tid, [])
        zones: dict[str, dns.update.UpdateMessage] = {}

        def message(zone: str) -> dns.update.UpdateMessage:
            if zone not in zones:
                zones[zone] = dns.update.UpdateMessage(
                    zone,
                    keyring=self._keyring,
                    keyname=dns.name.from_text(self.config.tsig_name)
                    if self.config.tsig_name
                    else None,
                    keyalgorithm=self.config.tsig_algorithm,
                )
            return zones[zone]

        for rr in old:
            message(rr.zone).delete(rr.name, rr.rdtype)
        for rr in wanted.rrsets:
            m = message(rr.zone)
            m.delete(rr.name, rr.rdtype)
            for value in rr.values:
                m.add(rr.name, self.config.ttl, rr.rdtype, value)
        for zone, m in zones.items():
            answer = await dns.asyncquery.tcp(
                m, self.config.server, port=self.config.port, timeout=self.config.timeout
            )
            if answer.rcode() != dns.rcode.NOERROR:
                raise _Refused(f"{zone}: {dns.rcode.to_text(answer.rcode())}")
        if wanted.rrsets:
            self._published[tid] = wanted.rrsets
        else:
            self._published.pop(tid, None)
        self.errors.pop(tid, None)
        if wanted.rrsets or old:
            log.info("dns: tunnel %s: %d record sets published", tid, len(wanted.rrsets))


class _Refused(Exception):
    """The server answered the update with an error code."""
