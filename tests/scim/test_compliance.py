"""RFC 7643/7644 compliance, checked by scim2-tester against the live broker over HTTP."""

from __future__ import annotations

from typing import Any

import httpx2
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server

from tests.scim.conftest import ScimBroker


def test_scim2_tester_finds_no_error(scim_broker: ScimBroker) -> None:
    http = httpx2.Client(base_url=scim_broker.base, headers={"Authorization": f"Bearer {scim_broker.tokens['idp']}"})
    try:
        client = SyncSCIMClient(http)
        results = check_server(client)
    finally:
        http.close()
    failures: list[Any] = [r for r in results if r.status not in (Status.SUCCESS, Status.SKIPPED)]
    for r in results:
        print(r.status, r.title, r.reason)
    assert failures == []
