"""The portal: server-rendered pages that work without JavaScript.

Sign up (open, approval, invitation or closed), log in and out, change the password, API
tokens; create, inspect, change and delete tunnels; administration. Every form carries the
session's CSRF token; logins and sign-ups are rate-limited per client address; every change
goes to the audit log.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData

from tunnelbroker.broker.model import BrokerError, ManagedRequest
from tunnelbroker.broker.users import InvalidPassword, InvalidUsername, validate_username
from tunnelbroker.store import StoreError, UserExists, UserRecord
from tunnelbroker.web.app import WebContext, broker_host, client_address
from tunnelbroker.web.auth import new_token
from tunnelbroker.web.configs import ConfigError
from tunnelbroker.web.errors import PortalError
from tunnelbroker.web.schemas import TunnelOut
from tunnelbroker.web.sessions import (
    check_csrf,
    csrf_token,
    flash,
    log_in,
    session_user_id,
    take_flashes,
)

_HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(_HERE / "templates"))
templates.env.filters["when"] = lambda ts: (
    datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M") if ts else "-"
)

#: Longest value accepted in any form field (the body limit bounds the whole form).
_FIELD_MAX = 1024


def mount(app: FastAPI, ctx: WebContext) -> None:
    """Add the portal's pages and static files to the application."""
    app.mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static")
    app.include_router(_router(ctx))


def _router(ctx: WebContext) -> APIRouter:
    r = APIRouter(include_in_schema=False)
    web = ctx.config.web

    # ------------------------------------------------------------------ helpers

    async def current(request: Request) -> UserRecord | None:
        uid = session_user_id(request, web.session_lifetime)
        if uid is None:
            return None
        user = await asyncio.to_thread(ctx.store.get_user_by_id, uid)
        if user is None or user.disabled:
            request.session.clear()
            return None
        return user

    async def need_user(request: Request) -> UserRecord:
        user = await current(request)
        if user is None:
            raise _Redirect(f"/login?next={request.url.path}")
        return user

    async def need_admin(request: Request) -> UserRecord:
        user = await need_user(request)
        if not user.is_admin:
            raise PortalError(403, "This page is for administrators.")
        return user

    def page(
        request: Request, name: str, user: UserRecord | None, status: int = 200, **extra: Any
    ) -> HTMLResponse:
        context = {
            "user": user,
            "csrf": csrf_token(request),
            "signup": web.signup,
            "flashes": take_flashes(request),
            "title": extra.pop("title", "tunnelbroker"),
            **extra,
        }
        return templates.TemplateResponse(request, name, context, status_code=status)

    async def form(request: Request) -> FormData:
        data = await request.form(max_files=0, max_fields=50, max_part_size=_FIELD_MAX)
        given = data.get("csrf")
        check_csrf(request, given if isinstance(given, str) else None)
        return data

    def field(data: FormData, name: str) -> str:
        value = data.get(name)
        if not isinstance(value, str):
            return ""
        if len(value) > _FIELD_MAX:
            raise PortalError(400, f"The field {name} is too long.")
        return value.strip()

    async def audit(
        request: Request,
        action: str,
        actor: str | None,
        target: str | None = None,
        detail: str | None = None,
    ) -> None:
        source = client_address(request)
        await asyncio.to_thread(
            lambda: ctx.store.audit(
                action, actor=actor, source=source, target=target, detail=detail
            )
        )

    def own(user: UserRecord, tunnel_id: int) -> TunnelOut:
        t = ctx.broker.tunnels.get(tunnel_id)
        if t is None or t.user_id != user.id:
            raise PortalError(404, f"You have no tunnel T{tunnel_id}.")
        return TunnelOut.of(t, ctx.stats(tunnel_id))

    # ------------------------------------------------------------------ account

    @r.get("/")
    async def home(request: Request) -> Response:
        return page(request, "home.html", await current(request), tunnels=len(ctx.broker.tunnels))

    @r.get("/login")
    async def login_page(request: Request) -> Response:
        return page(request, "login.html", await current(request), title="Log in")

    @r.post("/login")
    async def login(request: Request) -> Response:
        data = await form(request)
        client, now = client_address(request), time.monotonic()
        name, password = field(data, "username"), field(data, "password")
        if ctx.auth.retry_after(client, now) > 0:
            return page(
                request,
                "login.html",
                None,
                429,
                title="Log in",
                username=name,
                error="Too many failed logins from your address: wait a few minutes.",
            )
        user = await ctx.auth.password(name, password)
        if user is None:
            ctx.auth.failed(client, now)
            await audit(request, "login failed", None, target=name[:64])
            return page(
                request,
                "login.html",
                None,
                401,
                title="Log in",
                username=name,
                error="Wrong user name or password, or the account is not enabled.",
            )
        log_in(request, user.id)
        await audit(request, "login", user.name)
        target = request.query_params.get("next", "/tunnels")
        # Only local paths: never an open redirect.
        if not target.startswith("/") or target.startswith("//"):
            target = "/tunnels"
        return RedirectResponse(target, 303)

    @r.post("/logout")
    async def logout(request: Request) -> Response:
        await form(request)
        request.session.clear()
        return RedirectResponse("/", 303)

    @r.get("/signup")
    async def signup_page(request: Request) -> Response:
        if web.signup == "closed":
            raise PortalError(403, "Sign-up is closed on this broker.")
        return page(request, "signup.html", await current(request), title="Sign up")

    @r.post("/signup")
    async def signup(request: Request) -> Response:
        if web.signup == "closed":
            raise PortalError(403, "Sign-up is closed on this broker.")
        data = await form(request)
        name = field(data, "username")

        def again(error: str, status: int = 400) -> Response:
            return page(
                request, "signup.html", None, status, title="Sign up", username=name, error=error
            )

        password, password2 = field(data, "password"), field(data, "password2")
        try:
            validate_username(name)
        except InvalidUsername as e:
            return again(str(e))
        if password != password2:
            return again("The two passwords differ.")
        client = client_address(request)
        if not ctx.signups.allow(client, time.monotonic()):
            return again("Too many sign-ups from your address: try again later.", 429)
        invite_hash = None
        if web.signup == "invite":
            invite_hash = hashlib.sha256(field(data, "invite").encode()).hexdigest()
        try:
            user = await asyncio.to_thread(ctx.users.add, name, password)
        except (InvalidPassword, InvalidUsername) as e:
            return again(str(e))
        except UserExists:
            return again(f"The name {name} is taken.")
        if invite_hash is not None and not await asyncio.to_thread(
            ctx.store.use_invite, invite_hash, name, time.time()
        ):
            await asyncio.to_thread(ctx.users.delete, name)
            return again("That invitation code is wrong or already used.")
        if web.signup == "approval":
            await asyncio.to_thread(ctx.users.set_disabled, name, True)
            await audit(request, "sign-up (awaiting approval)", name)
            flash(request, "Account created. An administrator will enable it; then log in.")
            return RedirectResponse("/login", 303)
        await audit(request, "sign-up", name)
        log_in(request, user.id)
        flash(request, f"Welcome, {name}. Create your first tunnel below.")
        return RedirectResponse("/tunnels", 303)

    @r.get("/account")
    async def account(request: Request) -> Response:
        user = await need_user(request)
        tokens = await asyncio.to_thread(ctx.store.list_tokens, user.id)
        new = request.session.pop("new_token", None)
        return page(request, "account.html", user, title="Account", tokens=tokens, new_token=new)

    @r.post("/account/password")
    async def change_password(request: Request) -> Response:
        user = await need_user(request)
        data = await form(request)
        current_pw, new, new2 = (
            field(data, "current"),
            field(data, "password"),
            field(data, "password2"),
        )
        tokens = await asyncio.to_thread(ctx.store.list_tokens, user.id)

        def again(error: str, status: int = 400) -> Response:
            return page(
                request, "account.html", user, status, title="Account", tokens=tokens, error=error
            )

        if await ctx.auth.password(user.name, current_pw) is None:
            ctx.auth.failed(client_address(request), time.monotonic())
            return again("The current password is wrong.", 401)
        if new != new2:
            return again("The two new passwords differ.")
        try:
            await asyncio.to_thread(ctx.users.set_password, user.name, new)
        except InvalidPassword as e:
            return again(str(e))
        await audit(request, "password changed", user.name)
        flash(request, "Password changed.")
        return RedirectResponse("/account", 303)

    @r.post("/account/tokens")
    async def add_token(request: Request) -> Response:
        user = await need_user(request)
        data = await form(request)
        name = field(data, "name")[:64] or "api"
        token, hashed = new_token()
        await asyncio.to_thread(ctx.store.add_token, user.id, hashed, name, time.time())
        await audit(request, "token created", user.name, target=name)
        request.session["new_token"] = token
        return RedirectResponse("/account", 303)

    @r.post("/account/tokens/{token_id}/delete")
    async def delete_token(request: Request, token_id: int) -> Response:
        user = await need_user(request)
        await form(request)
        if not await asyncio.to_thread(ctx.store.delete_token, user.id, token_id):
            raise PortalError(404, "No such token.")
        await audit(request, "token revoked", user.name, target=str(token_id))
        flash(request, "Token revoked.")
        return RedirectResponse("/account", 303)

    # ------------------------------------------------------------------ tunnels

    def tunnels_page(
        request: Request, user: UserRecord, status: int = 200, **extra: Any
    ) -> Response:
        mine = [TunnelOut.of(t, ctx.stats(t.id or 0)) for t in ctx.broker.user_tunnels(user.id)]
        return page(
            request,
            "tunnels.html",
            user,
            status,
            title="Tunnels",
            tunnels=mine,
            pop_name=ctx.pop_name,
            server_ipv4=ctx.config.broker.server_ipv4,
            caller=client_address(request),
            form=extra.pop("form", {}),
            **extra,
        )

    @r.get("/tunnels")
    async def tunnels(request: Request) -> Response:
        return tunnels_page(request, await need_user(request))

    @r.post("/tunnels")
    async def create(request: Request) -> Response:
        user = await need_user(request)
        data = await form(request)
        values = {
            k: field(data, k) for k in ("type", "client_ipv4", "mtu", "name", "want48", "pop")
        }
        try:
            mtu = int(values["mtu"] or 1280)
        except ValueError:
            return tunnels_page(request, user, 400, form=values, error="The MTU must be a number.")
        if values["pop"]:
            return tunnels_page(request, user, 400, form=values, error="Unknown tunnel server.")
        kind = values["type"]
        if kind == "tsp":
            port = ctx.tsp_port
            host = request.url.hostname or ctx.config.broker.server_ipv4
            server = host if port == 3653 else f"{host}:{port}"
            return page(request, "tsp.html", user, title="A TSP tunnel", tsp_server=server)
        endpoint = values["client_ipv4"] if kind == "static" else None
        if kind == "static" and endpoint and web.reachability_check:
            if not await _answers_ping(endpoint):
                return tunnels_page(
                    request,
                    user,
                    400,
                    form=values,
                    error=f"{endpoint} does not answer ICMP echo (ping). Allow "
                    "ping from the tunnel server, or check the address.",
                )
        req = ManagedRequest(
            kind,
            client_ipv4=endpoint or None,
            mtu=mtu,
            prefix_length=48 if values["want48"] else None,
            name=values["name"] or None,
        )
        try:
            t = ctx.broker.create_tunnel(user.id, req, time.time())
        except BrokerError as e:
            return tunnels_page(request, user, 400, form=values, error=_sentence(e))
        await audit(request, "tunnel created", user.name, target=f"T{t.id}", detail=kind)
        flash(request, f"Tunnel T{t.id} created.")
        return RedirectResponse(f"/tunnels/{t.id}", 303)

    def tunnel_page(
        request: Request,
        user: UserRecord,
        tunnel_id: int,
        status: int = 200,
        error: str | None = None,
    ) -> Response:
        t = own(user, tunnel_id)
        base = f"{request.url.scheme}://{request.url.netloc}"
        return page(
            request,
            "tunnel.html",
            user,
            status,
            title=f"Tunnel T{tunnel_id}",
            t=t,
            caller=client_address(request),
            base_url=base,
            configs=ctx.config_platforms(t),
            error=error,
        )

    @r.get("/tunnels/{tunnel_id}")
    async def tunnel(request: Request, tunnel_id: int) -> Response:
        return tunnel_page(request, await need_user(request), tunnel_id)

    async def tunnel_action(request: Request, tunnel_id: int, what: str) -> Response:
        user = await need_user(request)
        data = await form(request)
        own(user, tunnel_id)
        now = time.time()
        try:
            if what == "endpoint":
                ctx.broker.update_endpoint(tunnel_id, field(data, "client_ipv4"), None, now)
            elif what == "settings":
                try:
                    mtu = int(field(data, "mtu"))
                except ValueError:
                    return tunnel_page(request, user, tunnel_id, 400, "The MTU must be a number.")
                ctx.broker.modify_tunnel(
                    tunnel_id,
                    now,
                    mtu=mtu,
                    name=field(data, "name"),
                    user_state="enabled" if field(data, "enabled") else "disabled",
                )
            elif what == "rdns":
                servers = tuple(
                    s for s in (v.strip() for v in data.getlist("ns") if isinstance(v, str)) if s
                )
                ctx.broker.modify_tunnel(tunnel_id, now, dns_servers=servers)
            elif what == "update-key":
                ctx.broker.modify_tunnel(tunnel_id, now, new_update_key=True)
            elif what == "delete":
                ctx.broker.delete_tunnel(tunnel_id, now, "deleted by its user")
        except BrokerError as e:
            return tunnel_page(request, user, tunnel_id, 400, _sentence(e))
        await audit(request, f"tunnel {what}", user.name, target=f"T{tunnel_id}")
        if what == "delete":
            flash(request, f"Tunnel T{tunnel_id} deleted.")
            return RedirectResponse("/tunnels", 303)
        flash(request, "Saved.")
        return RedirectResponse(f"/tunnels/{tunnel_id}", 303)

    for what in ("endpoint", "settings", "rdns", "update-key", "delete"):
        r.add_api_route(
            f"/tunnels/{{tunnel_id}}/{what}",
            _bind(tunnel_action, what),
            methods=["POST"],
        )

    @r.get("/tunnels/{tunnel_id}/config")
    async def config(request: Request, tunnel_id: int, platform: str = "") -> Response:
        user = await need_user(request)
        t = own(user, tunnel_id)
        try:
            out = ctx.render_config(t, platform, user.name, broker_host(request, ctx))
        except ConfigError as e:
            raise PortalError(404 if "unknown platform" in str(e) else 400, str(e)) from e
        await audit(
            request,
            "configuration downloaded",
            user.name,
            target=f"T{tunnel_id}",
            detail=platform[:40],
        )
        return Response(
            out.text,
            media_type=out.media_type,
            headers={"Content-Disposition": f'attachment; filename="{out.filename}"'},
        )

    # ------------------------------------------------------------------ admin

    @r.get("/admin")
    async def admin(request: Request) -> Response:
        user = await need_admin(request)
        users = await asyncio.to_thread(ctx.store.list_users)
        counts = await asyncio.to_thread(ctx.store.count_live_tunnels_by_user)
        audit_entries = await asyncio.to_thread(ctx.store.audit_entries, 100)
        invites = await asyncio.to_thread(ctx.store.count_unused_invites)
        all_tunnels = [
            TunnelOut.of(t) for t in sorted(ctx.broker.tunnels.values(), key=lambda t: t.id or 0)
        ]
        owners = {t.id: t.user_id for t in ctx.broker.tunnels.values()}
        names = {u.id: u.name for u in users}
        return page(
            request,
            "admin.html",
            user,
            title="Administration",
            users=users,
            counts=counts,
            tunnels=all_tunnels,
            owners=owners,
            names=names,
            pools=ctx.broker.pool_usage(),
            audit=audit_entries,
            invites=invites,
            config=ctx.config,
            pop_name=ctx.pop_name,
            new_invite=request.session.pop("new_invite", None),
        )

    @r.post("/admin/users/{name}/{action}")
    async def admin_user(request: Request, name: str, action: str) -> Response:
        admin_user = await need_admin(request)
        await form(request)
        if action not in ("enable", "disable"):
            raise PortalError(404, "No such action.")
        if name == admin_user.name:
            raise PortalError(400, "You cannot disable yourself.")
        if not await asyncio.to_thread(ctx.users.set_disabled, name, action == "disable"):
            raise PortalError(404, f"No user {name[:64]!r}.")
        await audit(request, f"user {action}d", admin_user.name, target=name)
        flash(request, f"User {name} {action}d.")
        return RedirectResponse("/admin", 303)

    @r.post("/admin/tunnels/{tunnel_id}/{action}")
    async def admin_tunnel(request: Request, tunnel_id: int, action: str) -> Response:
        admin_user = await need_admin(request)
        await form(request)
        now = time.time()
        try:
            if action in ("enable", "disable"):
                ctx.broker.modify_tunnel(tunnel_id, now, admin_state=f"{action}d")
            elif action == "delete":
                ctx.broker.delete_tunnel(tunnel_id, now, "deleted by an administrator")
            else:
                raise PortalError(404, "No such action.")
        except BrokerError as e:
            raise PortalError(400, _sentence(e)) from e
        await audit(request, f"tunnel {action}d by admin", admin_user.name, target=f"T{tunnel_id}")
        flash(request, f"Tunnel T{tunnel_id} {action}d.")
        return RedirectResponse("/admin", 303)

    @r.post("/admin/invites")
    async def admin_invite(request: Request) -> Response:
        admin_user = await need_admin(request)
        await form(request)
        code = secrets.token_urlsafe(12)
        await asyncio.to_thread(
            ctx.store.add_invite,
            hashlib.sha256(code.encode()).hexdigest(),
            admin_user.name,
            time.time(),
        )
        await audit(request, "invitation created", admin_user.name)
        request.session["new_invite"] = code
        return RedirectResponse("/admin", 303)

    return r


class _Redirect(Exception):
    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


def install_handlers(app: FastAPI) -> None:
    """Page errors as pages (the API keeps its JSON errors)."""

    @app.exception_handler(_Redirect)
    async def _redirect(_r: Request, e: _Redirect) -> Response:
        return RedirectResponse(e.location, 303)

    @app.exception_handler(PortalError)
    async def _portal(request: Request, e: PortalError) -> Response:
        return templates.TemplateResponse(
            request,
            "message.html",
            {
                "user": None,
                "csrf": "",
                "signup": "closed",
                "flashes": [],
                "title": "Sorry",
                "message": e.message,
            },
            status_code=e.status,
        )

    @app.exception_handler(StoreError)
    async def _store(request: Request, e: StoreError) -> Response:
        return await _portal(request, PortalError(503, f"The database is not answering: {e}"))


def _bind(fn: Any, what: str) -> Any:
    async def endpoint(request: Request, tunnel_id: int) -> Response:
        return await fn(request, tunnel_id, what)  # type: ignore[no-any-return]

    endpoint.__name__ = f"tunnel_{what.replace('-', '_')}"
    return endpoint


def _sentence(e: BrokerError) -> str:
    text = str(e)
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


async def _answers_ping(address: str) -> bool:
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        return True  # the broker refuses it with a clearer message
    proc = await asyncio.create_subprocess_exec(
        "ping",
        "-n",
        "-q",
        "-c",
        "1",
        "-W",
        "2",
        address,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        return await asyncio.wait_for(proc.wait(), 5) == 0
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return False
