"""Helpers for the SMTP integration tests: a real `ringmail serve` on shifted
ports with a temporary data dir, a raw SMTP client for byte-level tests, and a
mailbox reader that reads what was delivered.

The reader is behind one function, `Server.messages(user)`, so it can switch
from the store's files (docs/store.md) to POP3/IMAP retrieval once those
exist; set RINGMAIL_TEST_READER=store|pop3 to force one.
"""
import errno
import os
import random
import re
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path

import conftest  # the shared server fixture (tests/integration/conftest.py)

REPO = Path(__file__).resolve().parents[2]

# The embedded default's SMTP rows (core/config.c): port -> (security, role).
SMTP_PORTS = {
    465: ("tls", "submission"),
    587: ("starttls", "submission"),
    25: ("plain", "mx"),
    26: ("plain", "mx"),
    2025: ("plain", "mx"),
    2525: ("plain", "mx"),
}
MX_PORTS = (25, 26, 2025, 2525)

PASSWORDS = {
    "alice@example.com": "alice-Secret-1",
    "bob@example.com": "bob-Secret-2",
    "carol@example.com": "carol-Secret-3",
    "dave@example.com": "dave-Secret-5",   # large messages go here
}
DEFAULT_ALIASES = "sales@example.com: alice@example.com\nteam@example.com: alice@example.com, bob@example.com\n"


# ---- CRC32C (Castagnoli), for checking the store's records ----------------

def _crc32c_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_CRC_T = _crc32c_table()


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    t = _CRC_T
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _crc32c_fast(data):
    # Large messages: the pure-Python loop is slow but fine up to a few MB;
    # use a C implementation when one is installed.
    try:
        import crc32c as _c  # type: ignore
        return _c.crc32c(data)
    except Exception:
        pass
    try:
        import google_crc32c  # type: ignore
        return google_crc32c.value(data)
    except Exception:
        pass
    return crc32c(data)


# ---- the store's files (docs/store.md, store/record.h) ---------------------

REC_APPEND, REC_FLAGS, REC_EXPUNGE, REC_RELOC = 2, 3, 4, 6
SEG_SINGLE = 0x80000000


def store_user_dirname(user):
    out = []
    for i, ch in enumerate(user.encode()):
        c = chr(ch)
        keep = ("a" <= c <= "z") or ("0" <= c <= "9") or c in "@_+-" or (c == "." and i)
        out.append(c if keep else "%%%02x" % ch)
    return "".join(out)


class StoreCorrupt(AssertionError):
    pass


_crc_ok = set()  # segments already checked, unchanged since


def read_store_inbox(data_dir, user, check_crc=True, fdir=None):
    """Messages in user's INBOX as [(uid, bytes)], read from the folder's
    index log and segments. Stops at the first torn or zeroed record (the
    store's own recovery rule); raises StoreCorrupt on a CRC mismatch in a
    complete record or a message whose bytes do not match their CRC."""
    if fdir is None:
        fdir = Path(data_dir) / "mail" / store_user_dirname(user) / "f0"
    log = fdir / "log"
    if not log.exists():
        return []
    buf = log.read_bytes()
    msgs = {}
    pos = 0
    while pos + 4 <= len(buf):
        (ln,) = struct.unpack_from("<I", buf, pos)
        if ln == 0 or pos + ln > len(buf):
            break
        if ln < 16:
            raise StoreCorrupt(f"{log}: record at {pos} has length {ln}")
        rec = buf[pos:pos + ln]
        crc, typ, zero = struct.unpack_from("<III", rec, 4)
        if check_crc and crc32c(rec[8:], crc32c(rec[:4])) != crc:
            # a torn tail is cut by recovery; a bad record in the middle is not
            raise StoreCorrupt(f"{log}: CRC mismatch at {pos}")
        p = rec[16:]
        if typ == REC_APPEND:
            uid, seg, off, mlen, date, modseq, flags, dcrc, kw, bl = struct.unpack_from(
                "<IIQQqQIIQI", p, 0)
            msgs[uid] = {"seg": seg, "off": off, "len": mlen, "crc": dcrc, "flags": flags}
        elif typ == REC_EXPUNGE:
            modseq, n = struct.unpack_from("<QI", p, 0)
            for i in range(n):
                (u,) = struct.unpack_from("<I", p, 12 + 4 * i)
                msgs.pop(u, None)
        elif typ == REC_RELOC:
            uid, seg, off = struct.unpack_from("<IIQ", p, 0)
            if uid in msgs:
                msgs[uid]["seg"] = seg
                msgs[uid]["off"] = off
        pos += ln
    out = []
    for uid in sorted(msgs):
        m = msgs[uid]
        seg = m["seg"]
        name = ("m%u" if seg & SEG_SINGLE else "s%u") % (seg & ~SEG_SINGLE)
        path = fdir / name
        with open(path, "rb") as f:
            f.seek(m["off"])
            data = f.read(m["len"])
        if len(data) != m["len"]:
            if check_crc:
                raise StoreCorrupt(f"{path}: uid {uid} short: {len(data)} of {m['len']}")
        elif check_crc:
            st = os.stat(path)
            key = (str(path), m["off"], m["len"], m["crc"], st.st_size, st.st_mtime_ns)
            if key not in _crc_ok:
                if _crc32c_fast(data) != m["crc"]:
                    raise StoreCorrupt(f"{path}: uid {uid} data CRC mismatch (its bytes were "
                                       f"overwritten or never written)")
                _crc_ok.add(key)
        out.append((uid, data))
    return out


# ---- the server -------------------------------------------------------------

class Server(conftest.Server):
    """conftest.Server (the shared fixture's process handling) plus what the
    SMTP tests need: users and aliases in the data dir, [limits] keys, the
    TLS context for the generated certificate, and reading the mailboxes.

    limits: dict of [limits] keys (e.g. {"message_size_max": "100k"}).
    users: {address: password}, created with `ringmail user add` before start.
    aliases: text of DATA/aliases.
    """

    def __init__(self, base, limits=None, users=None, aliases=DEFAULT_ALIASES,
                 threads=2, extra_config="", data_dir=None):
        base = Path(base)
        base.mkdir(parents=True, exist_ok=True)
        lines = ["[server]", "hostname = mail.example.com", "domains = example.com",
                 "shutdown_grace = 2s", "", "[limits]"]
        lines += [f"{k} = {v}" for k, v in (limits or {}).items()]
        lines += ["", extra_config, ""]
        super().__init__(str(base), config="\n".join(lines), threads=threads,
                         data_dir=str(data_dir) if data_dir else None)
        self.data = Path(self.data_dir)
        self.data.mkdir(parents=True, exist_ok=True)
        self.users = dict(PASSWORDS if users is None else users)
        self.aliases = aliases

    def user_add(self, address, password):
        r = subprocess.run([self.bin, "user", "add", address, "--data", str(self.data)],
                           input=(password + "\n").encode(), capture_output=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"user add {address}: rc={r.returncode} {r.stderr.decode()}")

    def start(self, wait=True, timeout=20.0):
        for address, pw in self.users.items():
            self.user_add(address, pw)
        if self.aliases is not None:
            (self.data / "aliases").write_text(self.aliases)
        super().start(wait=wait, timeout=timeout)
        return self

    def stop(self, *a, **kw):
        try:
            return super().stop(*a, **kw)
        finally:
            self.close()
            self.assert_no_sanitizer_report()

    def sanitizer_report(self):
        """The first AddressSanitizer/UBSan report in the log, or None (the
        suite may run against a -Db_sanitize=address,undefined build)."""
        log = self.log()
        markers = ["ERROR: AddressSanitizer", "ERROR: LeakSanitizer"]
        if os.environ.get("RINGMAIL_TEST_UBSAN_STRICT"):
            markers.append("runtime error:")  # UBSan's reports do not stop the process
        for marker in markers:
            i = log.find(marker)
            if i >= 0:
                start = log.rfind("\n", 0, max(0, i - 300)) + 1
                return log[start:i + 2500]
        return None

    def assert_no_sanitizer_report(self):
        rep = self.sanitizer_report()
        assert rep is None, "sanitizer report in the server log:\n" + rep

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_mark(self):
        return len(self.log())

    def wait_log(self, pattern, mark=0, timeout=5):
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = rx.search(self.log()[mark:])
            if m:
                return m
            time.sleep(0.05)
        return None

    @property
    def cafile(self):
        return str(self.data / "tls" / "cert.pem")

    def ssl_context(self):
        ctx = ssl.create_default_context(cafile=self.cafile)
        return ctx

    # -- what was delivered --
    def messages(self, user, wait_count=None, timeout=5.0, strict=True):
        """The messages in user's INBOX, oldest first, as bytes. With
        wait_count, waits until at least that many are there (delivery is
        acknowledged only after fsync, so normally they already are)."""
        deadline = time.time() + timeout
        while True:
            msgs = self._read(user, strict)
            if wait_count is None or len(msgs) >= wait_count or time.time() > deadline:
                return msgs
            time.sleep(0.05)

    def _read(self, user, strict=True):
        how = os.environ.get("RINGMAIL_TEST_READER", "store")
        if how == "store":
            return [m for _, m in read_store_inbox(self.data, user, check_crc=strict)]
        if how == "pop3":
            return pop3_read_all(self, user, PASSWORDS[user])
        raise NotImplementedError(f"reader {how}")

    def count(self, user):
        return len(self.messages(user))

    def all_messages(self):
        """Every message in every INBOX of the data dir (any user, even one
        not in the passwd file): for "nothing was delivered anywhere".
        Read without the CRC checks: counting must not fail on a message
        some other test found damaged."""
        out = []
        root = self.data / "mail"
        if not root.is_dir():
            return out
        for d in sorted(root.iterdir()):
            if (d / "f0").is_dir():
                out += [m for _, m in read_store_inbox(None, None, check_crc=False,
                                                       fdir=d / "f0")]
        return out

    def total(self):
        return len(self.all_messages())


# ---- a raw SMTP client ------------------------------------------------------

class Closed(Exception):
    pass


class Raw:
    """A byte-exact SMTP client: send() writes exactly what it is given,
    reply() reads one (multi-line) reply."""

    def __init__(self, server, port, tls=False, timeout=10, greet=True):
        self.server = server
        self.sock = socket.create_connection(("127.0.0.1", server.port(port)), timeout=timeout)
        self.timeout = timeout
        if tls:
            self.sock = server.ssl_context().wrap_socket(self.sock, server_hostname="localhost")
        self.buf = b""
        self.greeting = self.reply() if greet else None

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self, timeout):
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise
        if not chunk:
            raise Closed(self.buf)
        self.buf += chunk

    def line(self, timeout=None):
        timeout = self.timeout if timeout is None else timeout
        deadline = time.time() + timeout
        while b"\r\n" not in self.buf:
            left = deadline - time.time()
            if left <= 0:
                raise socket.timeout("no line")
            self._fill(left)
        ln, self.buf = self.buf.split(b"\r\n", 1)
        return ln

    def reply(self, timeout=None):
        """(code, text) of the next reply; text joins the lines with \\n."""
        lines = []
        while True:
            ln = self.line(timeout)
            lines.append(ln)
            if len(ln) < 4 or ln[3:4] != b"-":
                break
        code = int(lines[-1][:3]) if lines[-1][:3].isdigit() else -1
        return code, b"\n".join(l[4:] for l in lines).decode(errors="replace")

    def cmd(self, line, timeout=None):
        self.send(line + "\r\n" if isinstance(line, str) else line + b"\r\n")
        return self.reply(timeout)

    def ehlo(self, name="client.example"):
        code, text = self.cmd(f"EHLO {name}")
        assert code == 250, (code, text)
        return text

    def starttls(self):
        code, text = self.cmd("STARTTLS")
        assert code == 220, (code, text)
        assert self.buf == b"", f"bytes after the 220: {self.buf!r}"
        self.sock = self.server.ssl_context().wrap_socket(self.sock, server_hostname="localhost")

    def closed(self, timeout=3):
        """True if the server closes the connection (EOF or reset) within
        timeout, with nothing (more) to read; returns the unread bytes too."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                self._fill(deadline - time.time())
            except Closed:
                return True
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                return True
            except socket.timeout:
                return False
        return False

    def nothing_within(self, timeout):
        """True if no byte arrives within timeout (connection still open)."""
        try:
            self._fill(timeout)
        except socket.timeout:
            return True
        except Closed:
            return False
        return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def token():
    """A unique string to find a message again."""
    return "tok%016x" % random.getrandbits(64)


def message(tok, body=b"Hello.\r\n", frm="sender@remote.example", to="alice@example.com",
            extra_headers=b""):
    """A small RFC 5322 message with CRLF line ends, as bytes, carrying tok
    in its Subject and Message-ID."""
    if isinstance(body, str):
        body = body.encode()
    if isinstance(extra_headers, str):
        extra_headers = extra_headers.encode()
    head = (f"From: <{frm}>\r\nTo: <{to}>\r\nSubject: test {tok}\r\n"
            f"Message-ID: <{tok}@test.example>\r\n").encode()
    return head + extra_headers + b"\r\n" + body


def dot_stuff(data):
    """Dot-stuffs message bytes for DATA and adds the terminator."""
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


RETURN_PATH_RX = re.compile(rb"\AReturn-Path: <([^\r\n<>]*)>\r\n")
# match() anchors it: at the start, or where the Return-Path field ends
RECEIVED_RX = re.compile(rb"Received: [^\r\n]*(?:\r\n[ \t][^\r\n]*)*\r\n")


def return_path(stored):
    """The envelope sender of a locally delivered message: its first field
    must be Return-Path (RFC 5321 4.4)."""
    m = RETURN_PATH_RX.match(stored)
    assert m, f"stored message does not start with a Return-Path: field: {stored[:200]!r}"
    return m.group(1).decode()


def strip_received(stored):
    """Splits a stored message into (our Received: header, the rest): our
    Return-Path and Received fields come first. Fails otherwise."""
    rp = RETURN_PATH_RX.match(stored)
    assert rp, f"stored message does not start with a Return-Path: field: {stored[:200]!r}"
    m = RECEIVED_RX.match(stored, rp.end())
    assert m, f"Return-Path is not followed by a Received: field: {stored[:300]!r}"
    hdr = m.group(0)
    assert b"by mail.example.com (ringmail)" in hdr, hdr
    return hdr, stored[m.end():]


def find(msgs, token):
    return [m for m in msgs if token in m]


def mount_tmpfs(path, size="512k"):
    """Mounts a tmpfs of size on path; returns False when not permitted."""
    Path(path).mkdir(parents=True, exist_ok=True)
    if not shutil.which("mount"):
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


def umount(path):
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


# ---- reading back through the server: POP3 --------------------------------

def pop3_read_all(srv, user, password, port=110):
    """Every message of user's INBOX through POP3 (USER/PASS, RETR, no
    DELE), byte for byte: the reply is read raw up to CRLF.CRLF and only
    the dot-stuffing is undone. Messages holding bare CR or LF may come
    back normalised (RFC 1939 speaks in CRLF lines)."""
    s = socket.create_connection(("127.0.0.1", srv.port(port)), timeout=30)
    buf = b""

    def line():
        nonlocal buf
        while b"\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise Closed(buf)
            buf += chunk
        ln, buf = buf.split(b"\r\n", 1)
        return ln

    def cmd(c):
        s.sendall(c.encode() + b"\r\n")
        ln = line()
        assert ln.startswith(b"+OK"), (c.split()[0], ln)
        return ln

    def multiline():
        nonlocal buf
        while True:
            i = buf.find(b"\r\n.\r\n")
            if buf.startswith(b".\r\n"):
                body, buf = b"", buf[3:]
                return body
            if i >= 0:
                body, buf = buf[:i + 2], buf[i + 5:]
                return body
            chunk = s.recv(1 << 20)
            if not chunk:
                raise Closed(buf)
            buf += chunk

    try:
        assert line().startswith(b"+OK")
        cmd(f"USER {user}")
        # the maildrop lock of a session that just said QUIT may still be
        # held for a moment: retry [IN-USE] briefly
        for _ in range(40):
            s.sendall(f"PASS {password}\r\n".encode())
            ln = line()
            if ln.startswith(b"+OK") or b"IN-USE" not in ln:
                break
            time.sleep(0.05)
            cmd(f"USER {user}")
        assert ln.startswith(b"+OK"), ("PASS", ln)
        n = int(cmd("STAT").split()[1])
        out = []
        for i in range(1, n + 1):
            cmd(f"RETR {i}")
            body = multiline()
            if body.startswith(b".."):
                body = body[1:]
            out.append(body.replace(b"\r\n..", b"\r\n."))
        cmd("QUIT")
        return out
    finally:
        s.close()
