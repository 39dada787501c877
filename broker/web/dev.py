"""Pages only a dev-mode broker serves: the console landing page that stands in for AWS's console.

AWS has no emulator for its console federation endpoint (IAM User Guide, "Enable custom identity broker
access to the AWS console"), so ``broker dev`` points ``aws.federation_endpoint`` here. ``getSigninToken``
honours only credentials the STS emulator really issued (it asks the emulator who they belong to), and
``login`` accepts each sign-in token once and shows the assumed role where the console would open.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from broker.aws import emulator
from broker.identity import Credentials
from broker.web.deps import TemplatesDep, request_settings

router = APIRouter(prefix="/dev", tags=["dev mode"], include_in_schema=False)
FEDERATION_PATH = "/dev/federation"
# Sign-in tokens are kept in memory until used (dev mode runs one process); at most this many at once.
MAX_TOKENS = 1000


def _tokens(request: Request) -> dict[str, str]:
    state = request.app.state
    if not hasattr(state, "dev_console_tokens"):
        state.dev_console_tokens = {}
    tokens: dict[str, str] = state.dev_console_tokens
    return tokens


@router.get("/federation", summary="Dev stand-in for AWS's console federation endpoint")
async def federation(request: Request, templates: TemplatesDep) -> Response:
    query = request.query_params
    action = query.get("Action")
    if action == "getSigninToken":
        try:
            session: Any = json.loads(query.get("Session") or "")
            credentials = Credentials(
                access_key_id=str(session["sessionId"]),
                secret_access_key=str(session["sessionKey"]),
                session_token=str(session["sessionToken"]),
                expiration=datetime.now(UTC),
            )
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"Error": "Session must be JSON with sessionId, sessionKey, sessionToken"}, 400)
        aws = request_settings(request).aws
        arn = await run_in_threadpool(emulator.caller_arn, aws, credentials)
        if arn is None:
            return JSONResponse({"Error": "The STS emulator does not know these credentials"}, 400)
        tokens = _tokens(request)
        if len(tokens) >= MAX_TOKENS:
            tokens.clear()
        token = secrets.token_urlsafe(32)
        tokens[token] = arn
        return JSONResponse({"SigninToken": token})
    if action == "login":
        arn = _tokens(request).pop(query.get("SigninToken") or "", None)
        status = 200 if arn is not None else 400
        return templates.TemplateResponse(
            request,
            "dev_console.html",
            {"title": "AWS console (dev stand-in)", "arn": arn, "destination": query.get("Destination", "")},
            status_code=status,
        )
    return JSONResponse({"Error": "Action must be getSigninToken or login"}, 400)
