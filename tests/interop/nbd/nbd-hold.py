#!/usr/bin/env python3
"""Clients that hold NBD connections, for test-nbd-limits.sh.

  nbd-hold.py hold TARGET N READY DONE
      open N connections and take each to the transmission phase (GO),
      then idle; write "served K" (how many the server kept) to READY and
      hold them until the file DONE appears (at most 60 s).
  nbd-hold.py idle TARGET IDLE_S
      4 connections idle in transmission, 1 reading every IDLE_S/4: the
      idle ones must be closed after about IDLE_S, the busy one must not.

TARGET: unix:PATH or tcp:HOST:PORT[:SOURCE_ADDR]. Exit 0 pass, 1 fail.
"""
import os
import socket
import struct
import sys
import time

IHAVEOPT = 0x49484156454F5054
OPT_GO = 7
REQ_MAGIC = 0x25609513


def connect(target):
    kind, _, rest = target.partition(":")
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(rest)
        return s
    parts = rest.split(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    if len(parts) > 2:
        s.bind((parts[2], 0))
    s.connect((parts[0], int(parts[1])))
    return s


def recvn(s, n):
    b = b""
    while len(b) < n:
        chunk = s.recv(n - len(b))
        if not chunk:
            raise EOFError("closed")
        b += chunk
    return b


def negotiate(s):
    """Greeting, client flags, GO: True once in transmission."""
    recvn(s, 18)
    s.sendall(struct.pack(">I", 3))
    s.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, 6) + struct.pack(">IH", 0, 0))
    while True:
        _, _, typ, ln = struct.unpack(">QIII", recvn(s, 20))
        recvn(s, ln)
        if typ == 1:
            return True
        if typ & (1 << 31):
            return False


def is_closed(s):
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        s.settimeout(5)


def hold(target, n, ready, done):
    socks = []
    for _ in range(n):
        try:
            s = connect(target)
            if negotiate(s):
                socks.append(s)
            else:
                s.close()
        except (OSError, EOFError):
            pass
    with open(ready + ".tmp", "w") as f:
        f.write("served %d\n" % len(socks))
    os.rename(ready + ".tmp", ready)
    t0 = time.time()
    while not os.path.exists(done) and time.time() - t0 < 60:
        time.sleep(0.05)
    still = sum(1 for s in socks if not is_closed(s))
    print("holder: %d of %d held connections still open at the end" % (still, len(socks)))
    return 0


def idle(target, idle_s):
    idle_socks = []
    for _ in range(4):
        s = connect(target)
        assert negotiate(s), "GO refused"
        idle_socks.append(s)
    busy = connect(target)
    assert negotiate(busy)
    t0 = time.time()
    closed_at = {}
    cookie = 0
    while time.time() - t0 < idle_s * 2.5 and len(closed_at) < len(idle_socks):
        cookie += 1
        busy.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, 0, cookie, 0, 512))
        magic, err, ck = struct.unpack(">IIQ", recvn(busy, 16))
        assert magic == 0x67446698 and err == 0 and ck == cookie, "busy client: bad reply"
        recvn(busy, 512)
        for i, s in enumerate(idle_socks):
            if i not in closed_at and is_closed(s):
                closed_at[i] = time.time() - t0
        time.sleep(idle_s / 4.0)
    rc = 0
    if len(closed_at) != len(idle_socks):
        print("FAIL: %d of %d idle connections still open after %.1f s"
              % (len(idle_socks) - len(closed_at), len(idle_socks), time.time() - t0))
        rc = 1
    elif min(closed_at.values()) < idle_s * 0.75:
        print("FAIL: an idle connection closed after %.1f s, before the %g s timeout"
              % (min(closed_at.values()), idle_s))
        rc = 1
    else:
        print("ok: idle connections closed after %.1f..%.1f s (timeout %g s)"
              % (min(closed_at.values()), max(closed_at.values()), idle_s))
    if is_closed(busy):
        print("FAIL: the busy connection was closed")
        rc = 1
    else:
        print("ok: the busy connection (a read every %.2f s) stays open" % (idle_s / 4.0))
    return rc


if __name__ == "__main__":
    if sys.argv[1] == "hold":
        sys.exit(hold(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]))
    sys.exit(idle(sys.argv[2], float(sys.argv[3])))
