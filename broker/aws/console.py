"""AWS console sign-in through the federation endpoint (IAM User Guide, "Enable custom identity broker
access to the AWS console").

``getSigninToken`` trades temporary credentials for a sign-in token; the login URL carries that token to the
console. AWS has no emulator for this endpoint, so tests point ``aws.federation_endpoint`` at a documented
stand-in. The credentials travel in the request; the HTTP library's request logging is kept at WARNING by
``broker.logs``.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from broker.errors import ServiceUnavailable, UpstreamError
from broker.http import HttpClient, HttpPolicy, UpstreamTooLarge, UpstreamUnavailable
from broker.identity import Credentials

# A getSigninToken answer is a small JSON object; anything larger is not one.
MAX_RESPONSE_BYTES = 64 * 1024
# Console sessions may last 15 minutes to 12 hours (SessionDuration of getSigninToken).
MIN_SESSION_SECONDS, MAX_SESSION_SECONDS = 900, 43200


def signin_url(
    credentials: Credentials,
    *,
    endpoint: str,
    destination: str,
    issuer: str,
    session_duration: int | None,
    timeout: float = 5.0,
) -> str:
    """Return the console login URL for these credentials.

    ``session_duration`` must be None for role-chained credentials: the endpoint refuses it for them.
    """
    params = {
        "Action": "getSigninToken",
        "Session": json.dumps(
            {
                "sessionId": credentials.access_key_id,
                "sessionKey": credentials.secret_access_key,
                "sessionToken": credentials.session_token,
            }
        ),
    }
    if session_duration is not None:
        params["SessionDuration"] = str(max(MIN_SESSION_SECONDS, min(session_duration, MAX_SESSION_SECONDS)))
    policy = HttpPolicy(
        connect_seconds=timeout, read_seconds=timeout, max_bytes=MAX_RESPONSE_BYTES, trust_env=True, peer="aws_console"
    )
    try:
        with HttpClient(policy) as http:
            response = http.get(endpoint, params=params)
    except UpstreamTooLarge:
        raise UpstreamError(
            "The AWS console sign-in service gave an unexpected answer.", reason="federation_bad_response"
        ) from None
    except UpstreamUnavailable:
        raise ServiceUnavailable(
            "The AWS console sign-in service is unreachable. Try again in a minute.",
            reason="federation_unavailable",
            retry_after=10,
        ) from None
    if response.status != 200:
        raise UpstreamError("The AWS console sign-in service refused these credentials.", reason="federation_refused")
    try:
        token = response.json()["SigninToken"]
    except (ValueError, KeyError, TypeError):
        raise UpstreamError(
            "The AWS console sign-in service gave an unexpected answer.", reason="federation_bad_response"
        ) from None
    query = urlencode({"Action": "login", "Issuer": issuer, "Destination": destination, "SigninToken": token})
    return f"{endpoint}?{query}"
