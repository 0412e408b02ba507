"""One end of the channel between the front process and a compute worker: framed messages over a
Unix socket, with bodies over ``INLINE_MAX`` bytes passed through shared memory (an ``Arena``)
instead of the socket.

A frame is a header (kind, length of its JSON meta, length of its inline data), the meta, then the
data. A body in the arena is announced by ``"arena": n`` in the meta; its reader copies it out at
once and answers ``ACK``, and the writer waits for that before writing the arena again.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import socket
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import orjson

FRAME = struct.Struct("!BII")
INLINE_MAX = 64 * 1024
"""Bodies up to this size travel in the frame itself."""
PAGE = mmap.PAGESIZE


class Kind(IntEnum):
    """What a frame carries."""

    READY = 1  # worker -> front: started and warmed up
    REQUEST = 2  # front -> worker: an HTTP request (scope in meta, body as data)
    START = 3  # worker -> front: http.response.start
    BODY = 4  # worker -> front: http.response.body
    END = 5  # worker -> front: the request is answered (with the worker's resident memory)
    DISCONNECT = 6  # front -> worker: the client went away
    ACK = 7  # either way: the arena's last body was copied out
    STOP = 8  # front -> worker: finish the request in hand, then exit
    OBSERVE = 9  # worker -> front: a metric observation
    BEGIN = 10  # worker -> front: the request is being computed now


@dataclass
class Message:
    kind: Kind
    meta: dict[str, Any] = field(default_factory=dict)
    data: bytes = b""


class Arena:
    """A shared-memory file (a memfd where the system has them) mapped by both processes: one
    writes bodies into it, the other reads them. It grows as needed and keeps its size."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map: mmap.mmap | None = None
        self._size = 0

    @classmethod
    def create(cls) -> Arena:
        if hasattr(os, "memfd_create"):
            return cls(os.memfd_create("gradient-arena", os.MFD_CLOEXEC))
        with tempfile.TemporaryFile() as file:  # elsewhere: an unlinked file
            return cls(os.dup(file.fileno()))

    def _mapping(self, size: int) -> mmap.mmap:
        if self._map is None or self._size < size:
            if self._map is not None:
                with contextlib.suppress(BufferError):  # a view still out: unmapped once it is gone
                    self._map.close()
            self._size = os.fstat(self.fd).st_size
            self._map = mmap.mmap(self.fd, self._size)
        return self._map

    def write(self, chunks: Sequence[bytes]) -> int:
        """Write ``chunks`` one after another from the start; return their total size."""
        size = sum(len(chunk) for chunk in chunks)
        if os.fstat(self.fd).st_size < size:
            os.ftruncate(self.fd, -(-size * 5 // 4 // PAGE) * PAGE)  # a quarter to spare, whole pages
        mapping, offset = self._mapping(size), 0
        for chunk in chunks:
            mapping[offset : offset + len(chunk)] = chunk
            offset += len(chunk)
        return size

    def read(self, size: int) -> bytes:
        """A copy of the first ``size`` bytes."""
        return self._mapping(size)[:size]

    def close(self) -> None:
        if self._map is not None:
            with contextlib.suppress(BufferError):
                self._map.close()
        os.close(self.fd)


class Channel:
    """Framed messages over a connected Unix socket (asyncio streams), bodies over ``INLINE_MAX``
    through ``outgoing`` and ``incoming`` arenas. ``receive`` handles ACKs itself."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, outgoing: Arena, incoming: Arena
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.outgoing = outgoing
        self.incoming = incoming
        self._arena_free = asyncio.Event()
        self._arena_free.set()
        self._sending = asyncio.Lock()
        self.closed = False

    @classmethod
    async def open(cls, sock: socket.socket, outgoing: Arena, incoming: Arena) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=2 * INLINE_MAX)
        return cls(reader, writer, outgoing, incoming)

    def post(self, kind: Kind, meta: dict[str, Any] | None = None, data: bytes = b"") -> None:
        """Queue a frame with inline data, without waiting for the socket."""
        encoded = orjson.dumps(meta) if meta else b""
        self.writer.write(FRAME.pack(kind, len(encoded), len(data)) + encoded)
        if data:
            self.writer.write(data)

    async def send(self, kind: Kind, meta: dict[str, Any] | None = None, data: bytes | Sequence[bytes] = b"") -> None:
        """Send a frame whose data is ``data`` (or its chunks, joined); a large one goes through
        the arena once the reader freed it. Frames sent this way keep their order. Raises
        ConnectionError once the channel is closed."""
        chunks = [data] if isinstance(data, bytes) else list(data)  # (a body as it arrived: not joined)
        size = sum(len(chunk) for chunk in chunks)
        async with self._sending:
            if size > INLINE_MAX:
                await self._arena_free.wait()
                if self.closed:
                    raise ConnectionError("the channel is closed")
                self._arena_free.clear()
                try:
                    self.outgoing.write(chunks)
                except BaseException:
                    self._arena_free.set()
                    raise
                meta, chunks = {**(meta or {}), "arena": size}, []
            if self.closed:
                raise ConnectionError("the channel is closed")
            self.post(kind, meta, b"".join(chunks))
            await self.writer.drain()

    async def receive(self) -> Message | None:
        """The next message other than an ACK; None once the other end has closed."""
        while True:
            try:
                kind, meta_size, data_size = FRAME.unpack(await self.reader.readexactly(FRAME.size))
                meta = orjson.loads(await self.reader.readexactly(meta_size)) if meta_size else {}
                data = await self.reader.readexactly(data_size) if data_size else b""
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            if kind == Kind.ACK:
                self._arena_free.set()
                continue
            if "arena" in meta:
                data = self.incoming.read(meta.pop("arena"))
                self.post(Kind.ACK)
            return Message(Kind(kind), meta, data)

    def close(self) -> None:
        self.closed = True
        self._arena_free.set()  # a sender waiting for it raises ConnectionError
        self.writer.close()
