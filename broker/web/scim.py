"""``/scim/v2``: SCIM 2.0 provisioning (RFC 7644) for the clients in ``scim.clients``.

The route reads the HTTP request, rate limits it (per address, then per client), authenticates the bearer
token and hands the rest to :class:`~broker.scim.service.Provisioning`. Errors are broker errors, rendered
once by ``broker.web.errors`` as SCIM Error messages. URLs in responses are built from ``public_url``, never
from the request's Host header.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from broker.ratelimit import limiter_of
from broker.scim.service import Provisioning, ScimCall
from broker.web.deps import ContextDep, request_settings

router = APIRouter(prefix="/scim/v2", include_in_schema=False)
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


@router.api_route("", methods=METHODS)
@router.api_route("/{path:path}", methods=METHODS)
async def scim(request: Request, ctx: ContextDep, path: str = "") -> Response:
    provisioning: Provisioning = request.app.state.provisioning
    limiter = limiter_of(request)
    if limiter is not None:
        # Counting may reach Redis, and a refusal is audited in the database: off the event loop.
        await run_in_threadpool(lambda: limiter.hit("scim", per="ip", key=ctx.client_ip or "unknown", ctx=ctx))
    call = ScimCall(
        method=request.method,
        base_url=f"{request_settings(request).public_url}/scim/v2",
        path="/" + path,
        query=dict(request.query_params),
        headers=list(request.headers.items()),
        body=await request.body(),
    )
    client = None
    if provisioning.needs_client(call):
        try:
            client = await run_in_threadpool(provisioning.authenticate, request.headers.get("authorization"), ctx)
        except Exception:
            # Guessing tokens costs a failure budget per address, on top of the request budget.
            if limiter is not None:
                await run_in_threadpool(
                    lambda: limiter.hit("scim_auth", per="ip", key=ctx.client_ip or "unknown", ctx=ctx)
                )
            raise
        request.state.principal = f"scim:{client.name}"
        if limiter is not None:
            name, store = client.name, client.store
            await run_in_threadpool(
                lambda: limiter.hit("scim", per="principal", key=f"scim:{name}", ctx=ctx, store=store)
            )
    answer = await run_in_threadpool(provisioning.serve, client, call, ctx)
    content = b"" if answer.body is None else json.dumps(answer.body).encode()
    return Response(content=content, status_code=answer.status, headers=answer.headers)
