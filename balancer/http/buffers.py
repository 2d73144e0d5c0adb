"""One shared receive buffer for every socket of the event loop (``asyncio.BufferedProtocol``).

A plain ``asyncio.Protocol`` gets each read as a new bytes object: the selector loop calls
``recv(256 KiB)``, which glibc serves with an mmap, a shrinking mremap and a munmap per read. On
the per-call path (two reads per call) that churn also made the heap top grow and trim on every
call: 4 page faults and ~40 us of kernel time per call, measured here, depending on heap layout
luck. With ``recv_into`` one preallocated buffer serves all reads. Sharing it is safe: the loop
calls ``get_buffer``, ``recv_into`` and ``buffer_updated`` back to back on its one thread, and the
llhttp parsers copy out (as bytes) whatever they hand to a callback.
"""

from __future__ import annotations

import asyncio

_BUF = bytearray(256 * 1024)
_VIEW = memoryview(_BUF)


class SharedBufferProtocol(asyncio.BufferedProtocol):
    """Feeds ``data_received`` from the shared buffer; subclasses implement it as usual."""

    __slots__ = ()

    def get_buffer(self, sizehint: int) -> memoryview:
        return _VIEW

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(_VIEW[:nbytes])

    def data_received(self, data: memoryview) -> None:
        raise NotImplementedError
