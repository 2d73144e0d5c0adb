"""Which Unix user owns the other end of a TCP connection on this machine (the kernel knows).

The frontend asks once per new connection, so the lookup must stay fast on a login node with tens
of thousands of sockets. Netlink ``sock_diag`` asks the kernel for exactly one socket (a hash
lookup of its address pair): its cost does not grow with the number of sockets. Reading
``/proc/net/tcp`` walks every socket on the machine and is kept only as the fallback where
netlink is not available (some containers); ``bench/peercheck.py`` measures both.
"""

from __future__ import annotations

import errno
import os
import pwd
import select
import socket
import struct
import threading
from collections.abc import Iterable

# linux/sock_diag.h, linux/inet_diag.h, linux/netlink.h
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
# inet_diag_req_v2: family, protocol, ext, pad, states; inet_diag_sockid: sport, dport (big-endian),
# src[16], dst[16], if, cookie[2]
_REQ = struct.Struct("=BBBBI2s2s16s16sIII")
WAIT_S = 1.0  # the longest a lookup may hold the event loop if the kernel ever does not answer at once
_UID_AT = _NLMSGHDR.size + 4 + 48 + 12  # inet_diag_msg: family..retrans, id, expires/rqueue/wqueue, uid

Addr = tuple[str, int]
_ZERO12 = bytes(12)
_MAPPED = bytes(10) + b"\xff\xff"


def _family_and_bytes(host: str) -> tuple[int, bytes]:
    """The address family and 16 raw bytes of ``host``; an IPv4-mapped IPv6 address (a dual-stack
    listener's view of an IPv4 client) becomes the plain IPv4 address its peer socket has.
    ``inet_pton``, not ``ipaddress``: this runs on every new connection."""
    try:
        return socket.AF_INET, socket.inet_pton(socket.AF_INET, host) + _ZERO12
    except OSError:
        raw = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    if raw[:12] == _MAPPED:
        return socket.AF_INET, raw[12:] + _ZERO12
    return socket.AF_INET6, raw


class NetlinkLookup:
    """One netlink socket, reused for every query (a query is one sendto and one recv)."""

    def __init__(self) -> None:
        # Blocking, no timeout: a socket timeout costs a poll() before each sendto and recv (14 us
        # a query instead of 7). The kernel answers inside sendto, so the recv that follows does
        # not wait (MSG_DONTWAIT); only if it would, a poll of at most WAIT_S.
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
        self._seq = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self._sock.close()

    def uid(self, src: Addr, dst: Addr) -> int | None:
        """UID of the TCP socket bound to ``src`` and connected to ``dst``; None if there is none."""
        fam, s = _family_and_bytes(src[0])
        fam_d, d = _family_and_bytes(dst[0])
        if fam != fam_d:
            return None
        with self._lock:
            self._seq += 1
            req = _REQ.pack(
                fam, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF,
                struct.pack(">H", src[1]), struct.pack(">H", dst[1]), s, d,
                0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE,
            )  # fmt: skip
            hdr = _NLMSGHDR.pack(_NLMSGHDR.size + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, self._seq, 0)
            self._sock.sendto(hdr + req, (0, 0))
            data = self._answer(self._seq)
        _, kind, _, _, _ = _NLMSGHDR.unpack_from(data)
        if kind == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", data, _NLMSGHDR.size)
            if -err == errno.ENOENT:
                return None
            raise OSError(-err, f"sock_diag: {os.strerror(-err)}")
        if kind != SOCK_DIAG_BY_FAMILY or len(data) < _UID_AT + 4:
            raise OSError(errno.EPROTO, f"sock_diag: unexpected answer type {kind}")
        return int(struct.unpack_from("=I", data, _UID_AT)[0])

    def _answer(self, seq: int) -> bytes:
        """The kernel's answer to query ``seq`` (a late answer to an earlier one is skipped)."""
        while True:
            try:
                data = self._sock.recv(8192, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if not select.select([self._sock], [], [], WAIT_S)[0]:
                    raise OSError(errno.ETIMEDOUT, "sock_diag: no answer from the kernel") from None
                continue
            if len(data) >= _NLMSGHDR.size and _NLMSGHDR.unpack_from(data)[3] == seq:
                return data


def _proc_hex(raw: bytes) -> str:
    """An address as /proc/net/tcp prints it: each 32-bit word in host (little-endian) order."""
    return "".join(raw[i : i + 4][::-1].hex().upper() for i in range(0, len(raw), 4))


def proc_uid(src: Addr, dst: Addr) -> int | None:
    """Like ``NetlinkLookup.uid`` from /proc/net/tcp{,6}: reads every socket of the machine."""
    fam, s = _family_and_bytes(src[0])
    fam_d, d = _family_and_bytes(dst[0])
    if fam != fam_d:
        return None
    width = 4 if fam == socket.AF_INET else 16
    local = f"{_proc_hex(s[:width])}:{src[1]:04X}"
    remote = f"{_proc_hex(d[:width])}:{dst[1]:04X}"
    if fam == socket.AF_INET:  # an IPv4 client of a dual-stack socket shows up mapped in tcp6
        mapped = "0000000000000000FFFF0000"
        tables = [("/proc/net/tcp", local, remote), ("/proc/net/tcp6", mapped + local, mapped + remote)]
    else:
        tables = [("/proc/net/tcp6", local, remote)]
    for name, want_local, want_remote in tables:
        try:
            with open(name) as f:
                next(f, None)
                for row in f:
                    cols = row.split(None, 8)
                    if cols[1] == want_local and cols[2] == want_remote:
                        return int(cols[7])
        except OSError:
            continue
    return None


class PeerLookup:
    """``peer_uid`` by netlink where it works, else /proc; ``method`` says which is in use."""

    def __init__(self, method: str = "auto") -> None:
        self._netlink: NetlinkLookup | None = None
        if method in ("auto", "netlink"):
            try:
                self._netlink = NetlinkLookup()
                self._netlink.uid(("127.0.0.1", 1), ("127.0.0.1", 1))  # works here (ENOENT is fine)
            except OSError:
                if method == "netlink":
                    raise
                self._netlink = None
        self.method = "netlink" if self._netlink is not None else "proc"

    def peer_uid(self, local: Addr, peer: Addr) -> int | None:
        """UID owning the peer's socket of our connection ``local`` <-> ``peer``; None when no
        socket on this machine has that address pair (the peer is remote, or already gone)."""
        if self._netlink is not None:
            return self._netlink.uid(peer, local)
        return proc_uid(peer, local)

    def close(self) -> None:
        if self._netlink is not None:
            self._netlink.close()


_default: PeerLookup | None = None


def peer_uid(local_addr: Addr, peer_addr: Addr) -> int | None:
    """The UID of the process at the other end of a TCP connection on this machine (see
    ``PeerLookup.peer_uid``), through one lookup shared by the process."""
    global _default
    if _default is None:
        _default = PeerLookup()
    return _default.peer_uid(local_addr, peer_addr)


def user_uids(names: Iterable[str]) -> dict[str, int]:
    """UIDs of user names; ``KeyError`` names the first unknown one."""
    out = {}
    for n in names:
        try:
            out[n] = pwd.getpwnam(n).pw_uid
        except KeyError:
            raise KeyError(n) from None
    return out
