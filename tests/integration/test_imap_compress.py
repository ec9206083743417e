"""IMAP COMPRESS=DEFLATE (RFC 4978) against the real binary: a raw client
with Python's zlib on 143, 143 after STARTTLS and 993; a command pipelined
behind COMPRESS in the same write; a large APPEND and FETCH through the
compressed stream; IDLE seeing an SMTP delivery; refusals; bytes that do
not inflate; and mbsync, which turns compression on by itself.
"""
import re
import shutil
import socket
import subprocess
import time
import zlib

import pytest

from conftest import HOST
from test_imap import USERS, deliver, imapsrv, mbsync_rc, srv, tls_context  # noqa: F401 (fixtures)


class ZRaw:
    """A line-level IMAP client that can turn on DEFLATE."""

    def __init__(self, srv, port=143, tls=None):
        self.sock = socket.create_connection((HOST, srv.port(port)), timeout=10)
        if tls == "implicit":
            self.sock = tls_context(srv).wrap_socket(self.sock)
        self.buf = b""
        self.comp = self.dec = None
        self.n = 0
        self.greeting = self.line()
        if tls == "starttls":
            _, t = self.cmd("STARTTLS")
            assert b" OK " in t, t
            self.sock = tls_context(srv).wrap_socket(self.sock)

    def send(self, data):
        if self.comp:
            data = self.comp.compress(data) + self.comp.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def _fill(self, timeout):
        self.sock.settimeout(timeout)
        d = self.sock.recv(65536)
        if not d:
            raise EOFError(self.buf)
        self.buf += self.dec.decompress(d) if self.dec else d

    def line(self, timeout=10):
        while b"\n" not in self.buf:
            self._fill(timeout)
        i = self.buf.index(b"\n") + 1
        ln, self.buf = self.buf[:i], self.buf[i:]
        return ln

    def exact(self, n, timeout=10):
        while len(self.buf) < n:
            self._fill(timeout)
        d, self.buf = self.buf[:n], self.buf[n:]
        return d

    def until(self, tag, timeout=10):
        lines = []
        while True:
            ln = self.line(timeout)
            if ln.startswith(tag.encode() + b" "):
                return lines, ln
            lines.append(ln)

    def cmd(self, text, timeout=10):
        self.n += 1
        tag = f"t{self.n}"
        self.send(f"{tag} {text}\r\n".encode())
        return self.until(tag, timeout)

    def login(self, user="alice@example.com"):
        _, t = self.cmd(f'LOGIN {user} "{USERS[user]}"')
        assert b" OK " in t, t
        return self

    def compress(self, behind=b""):
        """COMPRESS DEFLATE; behind: a command sent compressed in the same
        write (the server must take it as compressed)."""
        self.comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        tail = self.comp.compress(behind) + self.comp.flush(zlib.Z_SYNC_FLUSH) if behind else b""
        self.sock.sendall(b"z COMPRESS DEFLATE\r\n" + tail)
        _, t = self.until("z")
        assert t == b"z OK DEFLATE active\r\n", t
        # the OK came uncompressed; what is left in buf is compressed
        self.dec = zlib.decompressobj(-15)
        rest, self.buf = self.buf, b""
        self.buf = self.dec.decompress(rest)


def caps(lines):
    got = [l for l in lines if l.startswith(b"* CAPABILITY")]
    assert len(got) == 1, lines
    return got[0].split()


@pytest.mark.parametrize("mode", ["143", "starttls", "993"])
def test_compress_on_every_imap_row(srv, mode):
    port, tls = {"143": (143, None), "starttls": (143, "starttls"),
                 "993": (993, "implicit")}[mode]
    body = b"".join(b"line %06d of a big message, compressible text\r\n" % i
                    for i in range(60000))  # 2.9 MB
    msg = b"From: a@x.org\r\nSubject: big\r\n\r\n" + body
    r = ZRaw(srv, port, tls).login()
    assert b"COMPRESS=DEFLATE" in caps(r.cmd("CAPABILITY")[0])
    # SELECT pipelined behind COMPRESS, compressed, in the same write
    r.compress(behind=b"p SELECT INBOX\r\n")
    lines, t = r.until("p")
    assert t.startswith(b"p OK [READ-WRITE]"), (lines, t)
    # a synchronising literal: "+" comes compressed, the message goes compressed
    r.send(b"a APPEND INBOX {%d}\r\n" % len(msg))
    assert r.line().startswith(b"+ ")
    r.send(msg + b"\r\n")
    lines, t = r.until("a", timeout=30)
    assert t.startswith(b"a OK [APPENDUID "), t
    r.cmd("NOOP")
    r.send(b"f FETCH 1 (BODY.PEEK[])\r\n")
    head = r.line(30)
    m = re.match(rb"\* 1 FETCH \(BODY\[\] \{(\d+)\}\r\n", head)
    assert m, head
    assert r.exact(int(m.group(1)), 30) == msg
    assert r.line() == b")\r\n"
    _, t = r.until("f")
    assert b" OK " in t, t
    lines, t = r.cmd("COMPRESS DEFLATE")
    assert re.match(rb"t\d+ NO \[COMPRESSIONACTIVE\] ", t), t
    assert b"COMPRESS=DEFLATE" not in caps(r.cmd("CAPABILITY")[0])
    _, t = r.cmd("LOGOUT")
    assert b" OK " in t


def test_compress_idle_sees_delivery(srv):
    r = ZRaw(srv).login()
    r.compress()
    r.cmd("SELECT INBOX")
    r.send(b"i IDLE\r\n")
    assert r.line().startswith(b"+ ")
    deliver(srv, "alice@example.com", subject="while-idle")
    assert r.line(10) == b"* 1 EXISTS\r\n"
    r.send(b"DONE\r\n")
    _, t = r.until("i")
    assert t.startswith(b"i OK"), t


def test_compress_refusals(imapsrv):
    srv = imapsrv()
    r = ZRaw(srv)
    assert b"COMPRESS=DEFLATE" not in r.greeting
    _, t = r.cmd("COMPRESS DEFLATE")             # not before login
    assert re.match(rb"t1 (BAD|NO) ", t), t
    r.login()
    for bad, want in (("COMPRESS", b"BAD"), ("COMPRESS DEFLATE EXTRA", b"BAD"),
                      ("COMPRESS LZ4", b"NO")):
        _, t = r.cmd(bad)
        assert t.split()[1] == want, (bad, t)
    # still uncompressed and serving
    _, t = r.cmd("NOOP")
    assert b" OK " in t
    # imap_compress_level = 0: not offered, refused
    off = imapsrv(config="[limits]\nimap_compress_level = 0\n")
    r = ZRaw(off).login()
    assert b"COMPRESS=DEFLATE" not in caps(r.cmd("CAPABILITY")[0])
    _, t = r.cmd("COMPRESS DEFLATE")
    assert t.split()[1] == b"NO", t
    _, t = r.cmd("NOOP")
    assert b" OK " in t


def test_compress_bytes_that_do_not_inflate(srv):
    r = ZRaw(srv).login()
    r.compress()
    r.cmd("SELECT INBOX")
    r.sock.sendall(b"\xff\xff\xff\xff not deflate at all\r\n")
    with pytest.raises((EOFError, ConnectionResetError)):
        for _ in range(10):
            r.line(5)
    deadline = time.monotonic() + 5
    while "compress-error" not in srv.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert re.search(r"event=compress-error reason=\"[^\"]+\"", srv.log())
    # the server goes on
    other = ZRaw(srv).login()
    other.compress()
    _, t = other.cmd("SELECT INBOX")
    assert b" OK " in t, t


def test_mbsync_syncs_over_compress(srv, tmp_path):
    """mbsync (isync >= 1.4) turns COMPRESS on when it is offered: a
    two-way sync through it, with the protocol trace showing it did."""
    if not shutil.which("mbsync"):
        pytest.skip("mbsync (isync) not installed")
    for i in range(3):
        deliver(srv, "alice@example.com", subject=f"z{i}", body=b"text\r\n" * 2000)
    local = tmp_path / "Maildir"
    rc = mbsync_rc(srv, tmp_path, local)
    out = subprocess.run(["mbsync", "-Dn", "-c", str(rc), "-a"], capture_output=True,
                         timeout=60)
    assert out.returncode == 0, out
    trace = out.stdout + out.stderr
    if b"COMPRESS DEFLATE" not in trace:
        pytest.skip("this mbsync does not use COMPRESS")
    assert re.search(rb"OK DEFLATE active", trace), trace[-2000:]
    files = list((local / "INBOX" / "new").iterdir()) + list((local / "INBOX" / "cur").iterdir())
    assert len(files) == 3
    # (Maildir files have LF line ends)
    assert all(f.read_bytes().endswith(b"text\n" * 2000) for f in files)
    (local / "INBOX" / "new" / "9.local:2,").write_bytes(
        b"From: me@x\r\nSubject: from-local\r\n\r\nup\r\n")
    out = subprocess.run(["mbsync", "-c", str(rc), "-a"], capture_output=True, timeout=60)
    assert out.returncode == 0, out
    r = ZRaw(srv).login()
    r.compress()
    r.cmd("SELECT INBOX")
    lines, _ = r.cmd("SEARCH SUBJECT from-local")
    assert lines == [b"* SEARCH 4\r\n"], lines
