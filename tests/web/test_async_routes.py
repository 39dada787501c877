"""No blocking call on the event loop: a lint over the route modules (``broker/web``).

A route (or helper) declared ``async def`` runs on the event loop, so one database query, row lock, STS or
IdP call inside it stalls every request of the process. Such code belongs in a plain ``def`` route (FastAPI
runs those in its thread pool) or behind ``await run_in_threadpool(...)``. This test reads every ``async def``
in ``broker/web`` and allows only calls that are awaited, that run in the thread pool (a lambda or function
handed to an awaited call), or whose names are known not to block (below). A new call fails here until it
is moved off the loop or, if it truly cannot block, named in ``NON_BLOCKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[2] / "broker" / "web"

# Calls that touch neither the database nor the network: parsing, building responses, reading the request.
NON_BLOCKING = frozenset(
    {
        # builtins and standard library
        "len", "str", "int", "bool", "bytes", "bytearray", "dict", "list", "set", "tuple", "isinstance", "max",
        "min", "parse_qs", "parse_qsl", "loads", "decode", "encode", "split", "strip", "lower", "isdigit",
        "extend", "append", "get", "items", "multi_items", "startswith",
        # the request and response objects (their I/O is awaited)
        "Response", "JSONResponse", "RedirectResponse", "HTMLResponse", "stream", "delete_cookie", "set_cookie",
        "send", "receive",
        # broker errors and pure helpers
        "InvalidRequest", "PayloadTooLarge", "Params", "safe_return_path", "set_session_cookie",
        "session_cookie", "connector", "MutableHeaders", "Headers", "_refuse", "capped", "guarded_send", "call_next",
        # the one error renderer (a template, no I/O), exception handlers' logging, the size-cap middleware
        "render_error", "info", "error", "errors", "join", "type", "NotFound", "BrokerError", "HTTPException",
        "sum", "next", "dumps",
        # request plumbing: the app's own objects, clocks and ids, template rendering (no I/O)
        "_broker", "request_context", "perf_counter", "uuid4", "setdefault", "isEnabledFor", "round", "now",
        "TemplateResponse", "token_urlsafe", "pop", "clear", "limiter_of",
        # pure constructors: credentials to check (checked in the thread pool), the SAML use case, a SCIM call
        "Credentials", "SamlSignIn", "ScimCall", "needs_client", "_tokens",
        # the composition root's services and settings, read off app.state
        "request_services", "request_settings",
        # metrics: the route template is pure; prometheus-client's multiprocess values are memory-mapped writes
        "route_template", "observe_request",
    }
)  # fmt: skip


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ast.unparse(func)


def blocking_calls(source: str, filename: str) -> list[str]:
    """``file:line name`` for every call in an ``async def`` that is neither awaited nor known not to block."""
    found: list[str] = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        if not isinstance(node, ast.AsyncFunctionDef):
            continue
        awaited = {id(n.value) for n in ast.walk(node) if isinstance(n, ast.Await)}
        stack: list[ast.AST] = list(node.body)
        while stack:
            current = stack.pop()
            # Nested functions and lambdas run wherever they are handed (run_in_threadpool); nested async defs
            # are checked on their own.
            if isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            if isinstance(current, ast.Call):
                name = _name(current.func)
                if id(current) not in awaited and name not in NON_BLOCKING:
                    found.append(f"{filename}:{current.lineno} {name}() in async def {node.name}")
            stack.extend(ast.iter_child_nodes(current))
    return sorted(found)


def test_no_async_route_calls_anything_that_may_block() -> None:
    problems = []
    for module in sorted(WEB.glob("*.py")):
        problems += blocking_calls(module.read_text(), module.name)
    assert problems == [], "move these off the event loop (plain def route or run_in_threadpool):\n" + "\n".join(
        problems
    )


@pytest.mark.parametrize(
    "body",
    [
        "    broker.issue(identity, role=role)\n",  # the database and STS, on the loop
        "    with db.transaction() as s:\n        pass\n",
        "    check_csrf(request, csrf, event='x')\n",  # audits a refusal: a database write
        "    data = await request.json()\n    return ops.elevation.approve(actor, data['id'])\n",
    ],
)
def test_the_lint_catches_a_blocking_call(body: str) -> None:
    source = "async def route(request):\n" + body
    assert blocking_calls(source, "route.py") != []


@pytest.mark.parametrize(
    "body",
    [
        "    return await run_in_threadpool(lambda: broker.issue(identity, role=role))\n",
        "    body = await request.body()\n    return JSONResponse({'n': len(body)})\n",
        "    await run_in_threadpool(check_csrf, request, csrf, event='x')\n",
    ],
)
def test_the_lint_allows_work_handed_to_the_thread_pool(body: str) -> None:
    source = "async def route(request):\n" + body
    assert blocking_calls(source, "route.py") == []
