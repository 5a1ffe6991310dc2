"""The MCP end-to-end client, run by tests/mcp.rs with the official Python MCP SDK.

Prints one JSON object per line (events the Rust test checks); reads nothing. When a query
needs review it prints {"event": "review", "id": ...} and polls review_status until the test
has approved it with the CLI, then runs it with the review id.
"""

import asyncio
import json
import os
import sys

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

URL = os.environ["GATEHOUSE_MCP_URL"]
TOKEN = os.environ["GATEHOUSE_MCP_TOKEN"]
TABLE = os.environ["GATEHOUSE_MCP_TABLE"]


def emit(**event):
    print(json.dumps(event, default=str), flush=True)


async def call(session, name, args):
    try:
        result = await session.call_tool(name, args)
    except Exception as e:  # protocol-level errors (unknown tool, bad arguments)
        return {"protocol_error": str(e)}
    return {
        "is_error": bool(result.is_error),
        "structured": result.structured_content,
        "text": " ".join(getattr(c, "text", "") for c in result.content or []),
    }


async def main():
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        # Missing and bad tokens: HTTP 401 with a JSON-RPC error.
        for auth in [None, "Bearer gatehouse_sa_notarealtoken"]:
            h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
            if auth:
                h["Authorization"] = auth
            async with httpx2.AsyncClient(timeout=10) as bare:
                r = await bare.post(URL, headers=h, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
            emit(event="unauthenticated", status=r.status_code, body=r.json())

        async with streamable_http_client(URL, http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = await session.list_tools()
                emit(event="tools", names=sorted(t.name for t in tools.tools))
                emit(event="connections", result=await call(session, "list_connections", {}))
                emit(event="describe", result=await call(session, "describe", {"connection": "appdb"}))
                emit(event="allowed", result=await call(session, "query", {
                    "connection": "appdb", "sql": f"SELECT name, ssn FROM {TABLE}"}))
                emit(event="denied", result=await call(session, "query", {
                    "connection": "appdb", "sql": f"DROP TABLE {TABLE}"}))
                emit(event="masked_refusal", result=await call(session, "query", {
                    "connection": "appdb", "sql": f"SELECT upper(ssn) FROM {TABLE}"}))
                emit(event="unknown_tool", result=await call(session, "drop_everything", {}))
                emit(event="malformed", result=await call(session, "query", {"connection": 5}))
                emit(event="oversized", result=await call(session, "query", {
                    "connection": "appdb", "sql": "SELECT '" + "x" * (2 << 20) + "'"}))

                held = await call(session, "query", {
                    "connection": "appdb", "sql": f"INSERT INTO {TABLE} VALUES ('via-mcp', '000-00-0000')"})
                emit(event="held", result=held)
                review = (held.get("structured") or {}).get("review_id")
                emit(event="review", id=review)
                for _ in range(120):
                    status = await call(session, "review_status", {"review_id": review})
                    if (status.get("structured") or {}).get("state") != "pending":
                        break
                    await asyncio.sleep(0.25)
                emit(event="review_status", result=status)
                emit(event="completed", result=await call(session, "query", {
                    "connection": "appdb", "review_id": review}))
                emit(event="done")


asyncio.run(main())
