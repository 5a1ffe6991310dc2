"""Opens IDLE_N authenticated PostgreSQL sessions through Gatehouse (TLS, token as password)
and holds them until killed. Writes the number opened to READY once all are ready."""

import asyncio
import os
import ssl
import struct
import sys

N = int(os.environ["IDLE_N"])
TOKEN = os.environ["TOKEN"].encode()
PORT = int(os.environ["PORT"])
HOLD = os.environ.get("HOLD") == "1"

CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE


async def message(reader):
    head = await reader.readexactly(5)
    (length,) = struct.unpack("!i", head[1:])
    return head[:1], await reader.readexactly(length - 4)


async def session():
    # SSLRequest on a plain socket first, then TLS on the same socket.
    reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
    writer.write(struct.pack("!ii", 8, 80877103))
    await writer.drain()
    if await reader.readexactly(1) != b"S":
        raise RuntimeError("TLS refused")
    await writer.start_tls(CTX)
    params = b"user\x00idle\x00database\x00postgres\x00\x00"
    writer.write(struct.pack("!ii", 8 + len(params), 196608) + params)
    await writer.drain()
    kind, _ = await message(reader)
    if kind != b"R":
        raise RuntimeError(f"expected an authentication request, got {kind}")
    writer.write(b"p" + struct.pack("!i", 4 + len(TOKEN) + 1) + TOKEN + b"\x00")
    await writer.drain()
    while True:
        kind, body = await message(reader)
        if kind == b"E":
            raise RuntimeError(body.decode(errors="replace"))
        if kind == b"Z":
            return reader, writer


async def main():
    opened = []
    sem = asyncio.Semaphore(64)

    async def one():
        async with sem:
            opened.append(await session())

    await asyncio.gather(*(one() for _ in range(N)))
    if os.environ.get("READY"):
        with open(os.environ["READY"], "w") as f:
            f.write(f"{len(opened)}\n")
    if HOLD:
        await asyncio.sleep(3600)


asyncio.run(main())
