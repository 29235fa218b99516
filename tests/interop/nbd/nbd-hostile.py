#!/usr/bin/env python3
"""Hostile NBD clients against `vdisk serve-nbd` on a UNIX socket.

Every case checks the protocol's answer (an error reply, or the connection
closed) and then that a well-behaved client is still served. Exit 0 pass,
1 fail. Usage: nbd-hostile.py SOCKET EXPORT_SIZE
"""
import socket
import struct
import sys
import time

SOCK = sys.argv[1]
SIZE = int(sys.argv[2])

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x0003E889045565A9
REQ_MAGIC = 0x25609513
SIMPLE = 0x67446698
STRUCT = 0x668E33EF
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
OPT_STRUCTURED, OPT_LIST_META, OPT_SET_META = 8, 9, 10
REP_ACK, REP_INFO, REP_META = 1, 3, 4
ERR = 1 << 31
REP_ERR_UNSUP, REP_ERR_POLICY, REP_ERR_INVALID, REP_ERR_UNKNOWN, REP_ERR_TOO_BIG = (
    ERR + 1, ERR + 2, ERR + 3, ERR + 6, ERR + 9)
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_WZ, CMD_BS = 0, 1, 2, 3, 4, 6, 7
EPERM, EIO, EINVAL, ENOSPC, ENOTSUP = 1, 5, 22, 28, 95

failures = 0


def fail(msg):
    global failures
    failures += 1
    print("FAIL: " + msg)


def ok(msg):
    print("ok: " + msg)


def recvn(s, n):
    b = b""
    while len(b) < n:
        chunk = s.recv(n - len(b))
        if not chunk:
            raise EOFError("closed after %d of %d bytes" % (len(b), n))
        b += chunk
    return b


def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(SOCK)
    return s


def greet(s, cflags=3):
    magic, opt, hflags = struct.unpack(">QQH", recvn(s, 18))
    assert magic == NBDMAGIC and opt == IHAVEOPT, "bad greeting"
    assert hflags & 1, "not fixed newstyle"
    s.sendall(struct.pack(">I", cflags))


def send_opt(s, opt, data=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)


def read_rep(s):
    magic, opt, typ, ln = struct.unpack(">QIII", recvn(s, 20))
    assert magic == REPLY_MAGIC, "bad option reply magic"
    return opt, typ, recvn(s, ln)


def read_reps(s):
    """All replies of one option, up to the ACK or an error."""
    out = []
    while True:
        opt, typ, data = read_rep(s)
        out.append((typ, data))
        if typ == REP_ACK or typ & ERR:
            return out


def go(s, name=b"", structured=True, meta=True):
    if structured:
        send_opt(s, OPT_STRUCTURED)
        assert read_reps(s)[-1][0] == REP_ACK
    if structured and meta:
        q = b"base:allocation"
        send_opt(s, OPT_SET_META, struct.pack(">I", len(name)) + name +
                 struct.pack(">II", 1, len(q)) + q)
        reps = read_reps(s)
        assert reps[-1][0] == REP_ACK and reps[0][0] == REP_META, reps
    send_opt(s, OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
    reps = read_reps(s)
    assert reps[-1][0] == REP_ACK, reps
    for typ, data in reps:
        if typ == REP_INFO and struct.unpack(">H", data[:2])[0] == 0:
            size, flags = struct.unpack(">QH", data[2:12])
            return size, flags
    raise AssertionError("no NBD_INFO_EXPORT")


def good_session(label=""):
    s = connect()
    greet(s)
    size, flags = go(s)
    # a region no hostile case writes (their writes may still be landing)
    data = bytes([0x5A]) * 4096
    req(s, CMD_WRITE, SIZE - 8192, 4096, data, cookie=77)
    e = simple_reply(s, 77)
    assert e == 0, "write error %d" % e
    req(s, CMD_READ, SIZE - 8192, 4096, cookie=78)
    err, got = read_reply(s, 78, 4096)
    assert err == 0 and got == data, "read back differs"
    req(s, CMD_DISC, 0, 0)
    s.close()
    return size


def req(s, typ, off, ln, payload=b"", flags=0, cookie=1, magic=REQ_MAGIC):
    s.sendall(struct.pack(">IHHQQI", magic, flags, typ, cookie, off, ln) + payload)


def simple_reply(s, cookie):
    magic, err, ck = struct.unpack(">IIQ", recvn(s, 16))
    assert magic == SIMPLE, "expected a simple reply, magic 0x%x" % magic
    assert ck == cookie, "cookie %d, expected %d" % (ck, cookie)
    return err


def read_reply(s, cookie, ln):
    """Structured READ reply: (error, data)."""
    data = b""
    err = 0
    while True:
        magic, flags, typ, ck, plen = struct.unpack(">IHHQI", recvn(s, 20))
        assert magic == STRUCT, "expected a structured reply"
        assert ck == cookie
        payload = recvn(s, plen)
        if typ == 1:
            data += payload[8:]
        elif typ & 0x8000:
            err = struct.unpack(">I", payload[:4])[0]
        if flags & 1:
            return err, data


def closed(s):
    """True if the server closed the connection (EOF or reset) within 5 s."""
    s.settimeout(5)
    try:
        while True:
            b = s.recv(65536)
            if not b:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def case(name):
    def wrap(fn):
        try:
            fn()
            good_session()
            ok(name)
        except Exception as e:  # noqa: BLE001 - report and go on
            fail("%s: %r" % (name, e))
        return fn
    return wrap


@case("bad option magic: connection closed")
def _():
    s = connect()
    greet(s)
    s.sendall(struct.pack(">QII", 0x1122334455667788, OPT_GO, 0))
    assert closed(s)


@case("unknown client flags: connection closed")
def _():
    s = connect()
    greet(s, cflags=0x80)
    assert closed(s)


@case("oversized option (1 MiB): NBD_REP_ERR_TOO_BIG, then GO works")
def _():
    s = connect()
    greet(s)
    send_opt(s, OPT_INFO, b"\0" * (1 << 20))
    reps = read_reps(s)
    assert reps[-1][0] == REP_ERR_TOO_BIG, reps
    size, _ = go(s)
    assert size == SIZE
    s.close()


@case("huge export name in EXPORT_NAME (16 MiB declared): closed")
def _():
    s = connect()
    greet(s)
    try:
        s.sendall(struct.pack(">QII", IHAVEOPT, OPT_EXPORT_NAME, 16 << 20) + b"x" * 65536)
    except (ConnectionResetError, BrokenPipeError):
        return  # closed on the header, before the payload went out: right
    assert closed(s)


@case("GO with a name length past the option: NBD_REP_ERR_INVALID")
def _():
    s = connect()
    greet(s)
    send_opt(s, OPT_GO, struct.pack(">I", 0xFFFFFFF0) + b"abc" + struct.pack(">H", 0))
    assert read_reps(s)[-1][0] == REP_ERR_INVALID
    send_opt(s, OPT_GO, struct.pack(">I", 3) + b"abc" + struct.pack(">H", 0))
    assert read_reps(s)[-1][0] == REP_ERR_UNKNOWN
    s.close()


@case("STARTTLS: NBD_REP_ERR_POLICY; unknown option: NBD_REP_ERR_UNSUP; LIST")
def _():
    s = connect()
    greet(s)
    send_opt(s, OPT_STARTTLS)
    assert read_reps(s)[-1][0] == REP_ERR_POLICY
    send_opt(s, 0x4242, b"zz")
    assert read_reps(s)[-1][0] == REP_ERR_UNSUP
    send_opt(s, OPT_LIST)
    reps = read_reps(s)
    assert reps[0][0] == 2 and reps[-1][0] == REP_ACK, reps
    send_opt(s, OPT_LIST_META, struct.pack(">II", 0, 0))
    assert read_reps(s)[-1][0] == REP_ERR_INVALID  # before structured replies
    send_opt(s, OPT_ABORT)
    assert read_reps(s)[-1][0] == REP_ACK
    assert closed(s)


@case("requests past the end, oversized, unaligned, unknown: EINVAL/ENOSPC, connection lives")
def _():
    s = connect()
    greet(s)
    go(s, structured=False)
    req(s, CMD_READ, SIZE - 512, 4096, cookie=1)
    assert simple_reply(s, 1) == EINVAL
    req(s, CMD_WRITE, SIZE - 512, 4096, b"\1" * 4096, cookie=2)
    assert simple_reply(s, 2) == ENOSPC
    req(s, CMD_READ, (1 << 64) - 512, 1024, cookie=3)
    assert simple_reply(s, 3) == EINVAL
    # oversized write: 64 MiB > the 32 MiB maximum; the payload is skipped
    big = 64 << 20
    req(s, CMD_WRITE, 0, big, cookie=4)
    chunk = b"\0" * (1 << 20)
    for _ in range(big // len(chunk)):
        s.sendall(chunk)
    assert simple_reply(s, 4) == EINVAL
    req(s, CMD_WRITE, 100, 512, b"\2" * 512, cookie=5)
    assert simple_reply(s, 5) == EINVAL  # not sector aligned
    req(s, 99, 0, 512, cookie=6)
    assert simple_reply(s, 6) == EINVAL
    req(s, CMD_BS, 0, 4096, cookie=7)
    assert simple_reply(s, 7) == EINVAL  # no meta context
    req(s, CMD_READ, 0, 512, flags=0x80, cookie=8)
    assert simple_reply(s, 8) == EINVAL  # unknown flag
    req(s, CMD_READ, 0, 512, cookie=9)
    assert simple_reply(s, 9) == 0 and len(recvn(s, 512)) == 512
    req(s, CMD_DISC, 0, 0)
    assert closed(s)


@case("zero-length WRITE/READ/TRIM/WRITE_ZEROES: success, no data, connection lives")
def _():
    # qemu-nbd answers these with success; a zero-length WRITE used to drop
    # the connection without a reply
    for structured in (False, True):
        s = connect()
        greet(s)
        go(s, structured=structured)
        for i, typ in enumerate((CMD_WRITE, CMD_WRITE, CMD_TRIM, CMD_WZ)):
            req(s, typ, 4096, 0, cookie=10 + i, flags=1 if i == 1 else 0)
            assert simple_reply(s, 10 + i) == 0, "type %d" % typ
        req(s, CMD_READ, 0, 0, cookie=20)
        if structured:
            err, data = read_reply(s, 20, 0)
            assert err == 0 and data == b""
        else:
            assert simple_reply(s, 20) == 0
        req(s, CMD_READ, 0, 512, cookie=21)
        if structured:
            err, data = read_reply(s, 21, 512)
        else:
            err, data = simple_reply(s, 21), recvn(s, 512)
        assert err == 0 and len(data) == 512
        req(s, CMD_DISC, 0, 0)
        assert closed(s)


@case("bad request magic: connection closed")
def _():
    s = connect()
    greet(s)
    go(s)
    req(s, CMD_READ, 0, 512, magic=0xDEADBEEF)
    assert closed(s)


@case("disconnect mid-write with I/O in flight, and mid-header")
def _():
    for _ in range(20):
        s = connect()
        greet(s)
        go(s)
        payload = b"\3" * (1 << 20)
        for i in range(16):
            req(s, CMD_WRITE, i << 20, 1 << 20, payload, cookie=i, flags=1)
        req(s, CMD_WRITE, 0, 1 << 20, payload[:4096])  # cut short
        s.close()
    s = connect()
    greet(s)
    go(s)
    s.sendall(struct.pack(">IHH", REQ_MAGIC, 0, 0))  # half a header
    s.close()


@case("a client that never reads its replies does not block another")
def _():
    s = connect()
    greet(s)
    go(s)
    s.setblocking(False)
    sent = 0
    try:
        for i in range(20000):
            s.send(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_READ, i, 0, 1 << 20))
            sent += 1
    except BlockingIOError:
        pass
    t0 = time.time()
    good_session()
    assert time.time() - t0 < 5, "good client starved"
    s.close()


@case("150 connections: at most 64 served, the rest closed; all released")
def _():
    socks = []
    for _ in range(150):
        try:
            socks.append(connect())
        except OSError:
            break
    served = 0
    for s in socks:
        s.settimeout(2)
        try:
            recvn(s, 18)
            served += 1
        except (EOFError, OSError):
            pass
    for s in socks:
        s.close()
    assert 0 < served <= 64, "served %d" % served
    time.sleep(0.5)


@case("block status: REQ_ONE gives one extent; past the end: EINVAL")
def _():
    s = connect()
    greet(s)
    go(s)
    req(s, CMD_BS, 0, SIZE, flags=8, cookie=5)
    magic, flags, typ, ck, plen = struct.unpack(">IHHQI", recvn(s, 20))
    payload = recvn(s, plen)
    assert typ == 5 and plen == 12 and flags & 1, (typ, plen)
    req(s, CMD_BS, SIZE, 512, cookie=6)
    err, _ = read_reply(s, 6, 0)
    assert err == EINVAL
    s.close()


@case("a client idle in negotiation is closed after the handshake timeout")
def _():
    s = connect()
    recvn(s, 18)  # the greeting, then nothing
    s2 = connect()
    greet(s2)  # client flags, then nothing
    t0 = time.time()
    assert closed(s) and closed(s2), "still open"
    assert time.time() - t0 < 5


# The server is still there and correct.
try:
    assert good_session() == SIZE
    ok("a good client is served after all of it")
except Exception as e:  # noqa: BLE001
    fail("final good session: %r" % e)
sys.exit(1 if failures else 0)
