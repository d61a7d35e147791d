"""The web broker (RFC 3053's "web server"): the REST API and ``/nic/update``.

Everything that touches the broker runs on the event loop (the broker is not thread-safe);
password checks and store reads go to worker threads. Every error is JSON ``{"error": ...}``
with a 4xx status, never a 500 for bad input.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunnelbroker import __version__
from tunnelbroker.broker.limits import KeyedRateLimiter
from tunnelbroker.broker.model import BrokerError, ManagedRequest, Refusal
from tunnelbroker.broker.service import Broker
from tunnelbroker.broker.users import UserService
from tunnelbroker.config import Config
from tunnelbroker.metrics import BrokerCollector, Figures
from tunnelbroker.store import Store, UserRecord
from tunnelbroker.web import nic
from tunnelbroker.web.auth import Authenticator, new_token, parse_basic, parse_bearer
from tunnelbroker.web.configs import (
    ConfigError,
    Platform,
    Rendered,
    TunnelConfigInput,
    platforms_for,
)
from tunnelbroker.web.configs import render as render_config
from tunnelbroker.web.schemas import (
    ErrorOut,
    StatusOut,
    TokenIn,
    TokenOut,
    TunnelIn,
    TunnelOut,
    TunnelPatch,
    TunnelStats,
)
from tunnelbroker.web.sessions import session_key

_T = TypeVar("_T")

#: Live counters of a tunnel from the data plane, or None (no data plane, not installed).
StatsSource = Callable[[int], TunnelStats | None]

#: HTTP status for each broker refusal.
_STATUS = {
    Refusal.NO_TUNNEL: 404,
    Refusal.USER_LIMIT: 409,
    Refusal.IPV4_LIMIT: 409,
    Refusal.ENDPOINT_IN_USE: 409,
    Refusal.NO_CAPACITY: 503,
    Refusal.BUSY: 503,
    Refusal.INTERNAL: 500,
}


class ApiError(Exception):
    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers


@dataclass
class WebContext:
    """What the web layer needs from the daemon."""

    config: Config
    broker: Broker
    users: UserService
    store: Store
    stats: StatsSource = lambda _tid: None
    #: The TSP port clients connect to (the configured one, or the one picked for 0).
    tsp_port: int = 3653
    #: The daemon's figures for /metrics; None: no metrics.
    figures: Callable[[], Figures] | None = None
    auth: Authenticator = field(init=False)
    nochg: nic.NochgThrottle = field(init=False)
    signups: KeyedRateLimiter[str] = field(init=False)

    def __post_init__(self) -> None:
        web = self.config.web
        self.auth = Authenticator(
            self.users,
            self.store,
            KeyedRateLimiter(web.login_failures_per_second, web.login_failure_burst),
        )
        self.nochg = nic.NochgThrottle(web.nochg_limit, web.nochg_window)
        self.signups = KeyedRateLimiter(web.signups_per_second, web.signup_burst)

    @property
    def pop_name(self) -> str:
        """This tunnel server's name as users see it."""
        return self.config.broker.pop_name

    def config_platforms(self, tunnel: TunnelOut) -> list[Platform]:
        """Platforms a configuration can be downloaded for, for this tunnel."""
        return platforms_for(tunnel.type)

    def render_config(self, tunnel: TunnelOut, platform: str, username: str, host: str) -> Rendered:
        """The configuration download. Raises ConfigError (unknown platform, a tunnel the
        platform cannot run, a static tunnel without its endpoint...)."""
        params = TunnelConfigInput.make(
            tunnel_id=tunnel.id,
            kind=tunnel.type,
            server_ipv4=tunnel.server_ipv4 or self.config.broker.server_ipv4,
            client_ipv4=tunnel.client_ipv4 if tunnel.type == "static" else None,
            link_prefix=tunnel.link_prefix,
            routed_prefix=tunnel.routed_prefix,
            delegated_prefix=tunnel.delegated_prefix,
            mtu=tunnel.mtu,
            broker_host=host,
            username=username,
            description=tunnel.name,
        )
        return render_config(platform, params)


class BodyLimit:
    """413 for bodies over ``limit`` bytes, whether announced by Content-Length or not."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.limit:
                    await _too_large(self.limit, send)
                    return
        seen = 0
        started = False

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _too_large(self.limit, send)


class _BodyTooLarge(Exception):
    pass


async def _too_large(limit: int, send: Send) -> None:
    body = b'{"error":"request body larger than %d bytes"}' % limit
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def client_address(request: Request) -> str:
    """The caller's address (uvicorn has already applied trusted proxies' headers)."""
    return request.client.host if request.client else "unknown"


async def current_user(request: Request) -> UserRecord:
    """Bearer token or HTTP Basic with the account password."""
    ctx: WebContext = request.app.state.ctx
    now = time.monotonic()
    client = client_address(request)
    wait = ctx.auth.retry_after(client, now)
    if wait > 0:
        raise ApiError(429, "too many failed logins", {"Retry-After": str(int(wait) + 1)})
    header = request.headers.get("authorization")
    token = parse_bearer(header)
    user: UserRecord | None = None
    if token is not None:
        user = await ctx.auth.token(token, time.time())
    elif (basic := parse_basic(header)) is not None:
        user = await ctx.auth.password(*basic)
    else:
        raise ApiError(
            401, "credentials needed", {"WWW-Authenticate": 'Basic realm="tunnelbroker"'}
        )
    if user is None:
        ctx.auth.failed(client, now)
        raise ApiError(401, "wrong credentials or disabled account")
    return user


#: The authenticated caller of an API route.
User = Annotated[UserRecord, Depends(current_user)]


def create_app(ctx: WebContext) -> FastAPI:
    """The ASGI application."""
    app = FastAPI(
        title="tunnelbroker",
        version=__version__,
        description="IPv6 tunnel broker: tunnels, tokens and endpoint updates.",
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
        responses={400: {"model": ErrorOut}, 401: {"model": ErrorOut}},
    )
    app.state.ctx = ctx

    @app.exception_handler(ApiError)
    async def _api_error(_r: Request, e: ApiError) -> JSONResponse:
        return JSONResponse({"error": e.reason}, e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, e: RequestValidationError) -> JSONResponse:
        detail = [
            {"loc": [str(x) for x in err.get("loc", ())], "msg": str(err.get("msg", ""))}
            for err in e.errors()
        ]
        first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
        reason = f"{'.'.join(first['loc'][1:]) or 'request'}: {first['msg']}"
        return JSONResponse({"error": reason, "detail": detail}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(e.detail)}, e.status_code, headers=e.headers)

    @app.exception_handler(ConfigError)
    async def _no_config(_r: Request, e: ConfigError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, 404 if "unknown platform" in str(e) else 400)

    @app.exception_handler(BrokerError)
    async def _refused(_r: Request, e: BrokerError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, _STATUS.get(e.refusal, 400))

    from tunnelbroker.web import portal

    portal.install_handlers(app)
    portal.mount(app, ctx)
    web = ctx.config.web
    app.add_middleware(
        SessionMiddleware,
        secret_key=session_key(ctx.config.data_dir),
        session_cookie="tb_session",
        max_age=web.session_lifetime,
        same_site="lax",
        https_only=web.secure_cookies,
    )
    app.add_middleware(BodyLimit, limit=web.max_body)

    def own_tunnel(user: UserRecord, tunnel_id: int) -> Any:
        t = ctx.broker.tunnels.get(tunnel_id)
        if t is None or t.user_id != user.id:
            raise ApiError(404, f"no tunnel {tunnel_id}")
        return t

    # ----------------------------------------------------------------- status and tokens

    @app.get("/api/v1/status", response_model=StatusOut, tags=["status"])
    async def status() -> StatusOut:
        """Public: version and how many tunnels are live."""
        return StatusOut(
            version=__version__,
            tunnels=len(ctx.broker.tunnels),
            tunnel_types=["static", "heartbeat", "ayiya", *ctx.config.tsp.tunnel_types],
        )

    @app.post("/api/v1/tokens", response_model=TokenOut, status_code=201, tags=["tokens"])
    async def create_token(body: TokenIn, user: User) -> TokenOut:
        """A new API token; the answer is the only time it is shown."""
        token, hashed = new_token()
        record = await _thread(ctx.store.add_token, user.id, hashed, body.name, time.time())
        return TokenOut(id=record.id, name=record.name, created_at=record.created_at, token=token)

    @app.get("/api/v1/tokens", response_model=list[TokenOut], tags=["tokens"])
    async def list_tokens(user: User) -> list[TokenOut]:
        records = await _thread(ctx.store.list_tokens, user.id)
        return [
            TokenOut(id=r.id, name=r.name, created_at=r.created_at, last_used=r.last_used)
            for r in records
        ]

    @app.delete("/api/v1/tokens/{token_id}", status_code=204, tags=["tokens"])
    async def delete_token(token_id: int, user: User) -> Response:
        if not await _thread(ctx.store.delete_token, user.id, token_id):
            raise ApiError(404, f"no token {token_id}")
        return Response(status_code=204)

    # ----------------------------------------------------------------- tunnels

    @app.get("/api/v1/tunnels", response_model=list[TunnelOut], tags=["tunnels"])
    async def list_tunnels(user: User) -> list[TunnelOut]:
        return [TunnelOut.of(t, ctx.stats(t.id or 0)) for t in ctx.broker.user_tunnels(user.id)]

    @app.post("/api/v1/tunnels", response_model=TunnelOut, status_code=201, tags=["tunnels"])
    async def create_tunnel(body: TunnelIn, user: User) -> TunnelOut:
        """A static 6in4, heartbeat or AYIYA tunnel with a link /64, a routed /64 and,
        on request, a shorter prefix."""
        req = ManagedRequest(
            body.type,
            client_ipv4=body.client_ipv4,
            mtu=body.mtu,
            routed_64=body.routed_64,
            prefix_length=body.prefix_length,
            name=body.name,
        )
        t = ctx.broker.create_tunnel(user.id, req, time.time())
        return TunnelOut.of(t, ctx.stats(t.id or 0))

    @app.get("/api/v1/tunnels/{tunnel_id}", response_model=TunnelOut, tags=["tunnels"])
    async def show_tunnel(tunnel_id: int, user: User) -> TunnelOut:
        return TunnelOut.of(own_tunnel(user, tunnel_id), ctx.stats(tunnel_id))

    @app.patch("/api/v1/tunnels/{tunnel_id}", response_model=TunnelOut, tags=["tunnels"])
    async def update_tunnel(tunnel_id: int, body: TunnelPatch, user: User) -> TunnelOut:
        """Change the endpoint, MTU, name, rDNS servers, or switch the tunnel on or off."""
        t = own_tunnel(user, tunnel_id)
        now = time.time()
        if body.client_ipv4 is not None:
            ctx.broker.update_endpoint(tunnel_id, body.client_ipv4, None, now)
        t = ctx.broker.modify_tunnel(
            tunnel_id,
            now,
            mtu=body.mtu,
            name=body.name,
            dns_servers=tuple(body.dns_servers) if body.dns_servers is not None else None,
            user_state=None
            if body.enabled is None
            else ("enabled" if body.enabled else "disabled"),
        )
        return TunnelOut.of(t, ctx.stats(tunnel_id))

    @app.get("/api/v1/tunnels/{tunnel_id}/config", tags=["tunnels"])
    async def tunnel_platforms(tunnel_id: int, user: User) -> list[dict[str, str]]:
        """The platforms a ready configuration exists for, for this tunnel."""
        t = TunnelOut.of(own_tunnel(user, tunnel_id))
        return [{"id": p.id, "name": p.name} for p in ctx.config_platforms(t)]

    @app.get(
        "/api/v1/tunnels/{tunnel_id}/config/{platform}",
        response_class=PlainTextResponse,
        tags=["tunnels"],
    )
    async def tunnel_config(
        tunnel_id: int, platform: str, request: Request, user: User
    ) -> PlainTextResponse:
        """A ready configuration script or file for ``platform``, values filled in."""
        t = TunnelOut.of(own_tunnel(user, tunnel_id))
        out = ctx.render_config(t, platform, user.name, broker_host(request, ctx))
        return PlainTextResponse(
            out.text,
            media_type=out.media_type,
            headers={"Content-Disposition": f'attachment; filename="{out.filename}"'},
        )

    @app.post("/api/v1/tunnels/{tunnel_id}/update-key", response_model=TunnelOut, tags=["tunnels"])
    async def new_update_key(tunnel_id: int, user: User) -> TunnelOut:
        """Replace the tunnel's update key (the old one stops working at once)."""
        own_tunnel(user, tunnel_id)
        t = ctx.broker.modify_tunnel(tunnel_id, time.time(), new_update_key=True)
        return TunnelOut.of(t, ctx.stats(tunnel_id))

    @app.delete("/api/v1/tunnels/{tunnel_id}", status_code=204, tags=["tunnels"])
    async def delete_tunnel(tunnel_id: int, user: User) -> Response:
        own_tunnel(user, tunnel_id)
        ctx.broker.delete_tunnel(tunnel_id, time.time(), "deleted by its user")
        return Response(status_code=204)

    # ----------------------------------------------------------------- metrics

    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(lambda: ctx.figures() if ctx.figures else Figures()))
    metrics_from = [ipaddress.ip_network(n) for n in ctx.config.web.metrics_from]

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics, for the networks in ``[web] metrics_from`` only."""
        try:
            caller = ipaddress.ip_address(client_address(request))
        except ValueError:
            caller = None
        if caller is None or not any(caller in n for n in metrics_from):
            raise ApiError(404, "Not Found")
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # ----------------------------------------------------------------- dyndns

    async def nic_update(request: Request) -> PlainTextResponse:
        """DynDNS-style endpoint update: ``hostname`` = tunnel id(s), ``myip`` optional."""
        return await nic.update(ctx, request, client_address(request))

    for method in ("GET", "POST"):
        app.add_api_route(
            "/nic/update",
            nic_update,
            methods=[method],
            response_class=PlainTextResponse,
            operation_id=f"nic_update_{method.lower()}",
            tags=["dyndns"],
        )

    return app


def broker_host(request: Request, ctx: WebContext) -> str:
    """The broker's name as the user reached it (for the scripts), else its address."""
    host = request.url.hostname or ""
    return (
        host
        if host and host not in ("127.0.0.1", "localhost", "::1")
        else (ctx.config.broker.server_ipv4)
    )


async def _thread(fn: Callable[..., _T], *args: Any) -> _T:
    return await asyncio.to_thread(fn, *args)
