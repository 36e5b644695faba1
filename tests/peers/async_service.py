#!/usr/bin/env python3
"""An asyncio HTTP/1.1 service (aiohttp) with no tracing code: one thread, one event loop,
serving every request at once.

Usage: async_service.py URL_PREFIX DELAY_MS
  GET /work?i=N -> waits DELAY_MS (other requests are read meanwhile), then calls
                   GET URL_PREFIX/item/N with aiohttp's client (its own connection pool) and
                   answers 200 with "got <length of the answer>".
Prints "PORT <n>" once listening on 127.0.0.1.
"""
import asyncio
import sys

from aiohttp import ClientSession, TCPConnector, web

prefix = sys.argv[1]
delay = int(sys.argv[2]) / 1000


async def work(request):
    i = int(request.query.get("i", "0"))
    await asyncio.sleep(delay)
    async with request.app["session"].get(f"{prefix}/item/{i}") as resp:
        body = await resp.read()
    return web.Response(text=f"got {len(body)}")


async def main():
    app = web.Application()
    app.router.add_get("/work", work)
    # No DNS (the prefix is an address), so no resolver thread: every call leaves the loop.
    app["session"] = ClientSession(connector=TCPConnector(limit=100))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
