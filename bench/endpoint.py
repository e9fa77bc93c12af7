"""A light HTTP endpoint on asyncio: answers 200 to every POST and counts requests,
bytes, rows and distinct ids, and notes when the first request came. ``GET /stats``
returns the counts; ``POST /reset`` clears them. Run: ``python -m bench.endpoint PORT``."""

from __future__ import annotations

import asyncio
import re
import sys
import time

import orjson

ROW_ID = re.compile(rb'\{"id": ?(\d+)')


class Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        self.rows = 0
        self.ids: set[int] = set()
        self.first = 0.0  # when the first request since the reset arrived (time.time())

    def add(self, body: bytes) -> None:
        """Count the rows by their leading ``{"id": N`` (every benchmark row starts with
        its id): a regular expression, much lighter than parsing each body."""
        if not self.requests:
            self.first = time.time()
        self.requests += 1
        self.bytes += len(body)
        ids = ROW_ID.findall(body)
        self.rows += len(ids)
        self.ids.update(map(int, ids))

    def as_json(self) -> bytes:
        return orjson.dumps(
            {"requests": self.requests, "bytes": self.bytes, "rows": self.rows,
             "distinct_ids": len(self.ids), "first": self.first}
        )  # fmt: skip


STATS = Stats()
OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.decode("latin-1").split("\r\n")
            length = 0
            for line in lines:
                if line[:15].lower() == "content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length) if length else b""
            method, path = request_line.split(" ")[:2]
            if method == "GET" and path == "/stats":
                payload = STATS.as_json()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
            elif path == "/reset":
                STATS.__init__()  # type: ignore[misc]
                writer.write(OK)
            else:
                STATS.add(body)
                writer.write(OK)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionResetError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, limit=64 * 1024 * 1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
