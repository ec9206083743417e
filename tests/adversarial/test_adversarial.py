"""Hostile input against the real binary (issue 11, part 4): each attack
must get a bounded, well-defined answer while another client is served,
and nothing already delivered may be lost.

What tests/integration already covers is not repeated here (100,000 '('
after login, literal sizes in LOGIN, an HTTP request on port 25, the
per-IP cap, STARTTLS injection, SMTP smuggling...). Every test starts a
server with a canary message in alice's INBOX; the `adv` fixture checks at
teardown that the canary is still there, the server still answers on SMTP,
IMAP and POP3, its log holds no sanitizer report, and it exits 0.

The server fixture is tests/integration/conftest.py's (re-exported by
conftest.py here).
"""
import base64
import imaplib
import os
import poplib
import smtplib
import socket
import ssl
import time

import pytest

from conftest import HOST, recv_line

USERS = {"alice@example.com": "alice-Secret-1", "bob@example.com": "bob-Secret-2"}
CANARY = (b"From: canary@remote.example\r\nTo: alice@example.com\r\n"
          b"Subject: canary\r\nMessage-ID: <canary@x>\r\n\r\nstill here\r\n")
SANITIZER = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")
# An answer to one hostile command is bounded by this many bytes.
BOUND = 64 * 1024


def deliver(srv, to, msg, sender="sender@remote.example"):
    with smtplib.SMTP(HOST, srv.port(25), timeout=30) as s:
        s.sendmail(sender, [to], msg)


def imap_login(srv, user="alice@example.com"):
    c = imaplib.IMAP4(HOST, srv.port(143), timeout=30)
    c.login(user, USERS[user])
    return c


def served(srv):
    """Another client gets full service on SMTP, IMAP and POP3."""
    with smtplib.SMTP(HOST, srv.port(25), timeout=10) as s:
        assert s.noop()[0] == 250
    c = imap_login(srv)
    typ, data = c.select("INBOX", readonly=True)
    assert typ == "OK", data
    c.logout()
    p = poplib.POP3(HOST, srv.port(110), timeout=10)
    p.user("bob@example.com")
    p.pass_(USERS["bob@example.com"])
    p.quit()


def canary_present(srv):
    c = imap_login(srv)
    c.select("INBOX", readonly=True)
    typ, data = c.fetch("1", "(BODY.PEEK[])")  # the first message delivered
    assert typ == "OK" and data[0][1].endswith(CANARY), f"canary lost: {data}"
    c.logout()


def read_until_eof(sock, limit=BOUND, timeout=10.0):
    """Everything the peer sends until it closes (or timeout); asserts it
    stays under limit bytes. Returns (bytes, closed)."""
    got = bytearray()
    deadline = time.monotonic() + timeout
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return bytes(got), True
        if not chunk:
            return bytes(got), True
        got += chunk
        assert len(got) <= limit, f"unbounded answer: {len(got)} bytes, {bytes(got[:200])!r}"
    return bytes(got), False


@pytest.fixture
def adv(ringmail, tmp_path):
    """Factory: a server with USERS and the canary delivered."""
    started = []

    def start(config=None, **kw):
        data = tmp_path / f"data{len(started)}"
        data.mkdir()
        with open(data / "passwd", "w") as f:
            for u, p in USERS.items():
                f.write(f"{u}:{{PLAIN}}{p}\n")
        srv = ringmail(config=config, data_dir=str(data), **kw)
        deliver(srv, "alice@example.com", CANARY)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        assert srv.proc.poll() is None, f"server died:\n{srv.log()[-8000:]}"
        served(srv)
        canary_present(srv)
        assert srv.stop() == 0, srv.log()[-8000:]
        bad = [l for l in srv.log().splitlines() if any(m in l for m in SANITIZER)]
        assert not bad, srv.log()[-8000:]


class Imap:
    def __init__(self, srv, port=143):
        self.sock = srv.connect(port, timeout=30)
        self.greeting = recv_line(self.sock)
        assert self.greeting.startswith(b"* OK"), self.greeting

    def send(self, data):
        self.sock.sendall(data)

    def line(self, timeout=10.0):
        return recv_line(self.sock, timeout)

    def until(self, tag, timeout=10.0, limit=BOUND):
        lines, total = [], 0
        while True:
            ln = self.line(timeout)
            assert ln, f"EOF before {tag}: {lines[-5:]}"
            total += len(ln)
            assert total <= limit, f"unbounded answer to {tag}: {total} bytes"
            if ln.startswith(tag + b" "):
                return lines, ln
            lines.append(ln)

    def login(self, user="alice@example.com"):
        self.send(f'L LOGIN {user} "{USERS[user]}"\r\n'.encode())
        _, t = self.until(b"L")
        assert t.startswith(b"L OK"), t
        return self


# ---- IMAP parser ---------------------------------------------------------------


def test_imap_paren_flood_before_login(adv):
    """100,000 '(' before login: one BAD (the 8 KiB pre-login line limit or
    the list depth), the session goes on, a second client is served."""
    srv = adv()
    r = Imap(srv)
    other = Imap(srv).login()
    r.send(b"a LOGIN " + b"(" * 100000 + b"\r\n")
    _, t = r.until(b"a")
    assert b"BAD" in t, t
    other.send(b"n NOOP\r\n")
    assert other.until(b"n")[1].startswith(b"n OK")
    r.send(b"b NOOP\r\n")
    assert r.until(b"b")[1].startswith(b"b OK")


def test_imap_paren_flood_in_pieces_while_other_fetches(adv):
    """The same flood dribbled in 1 KiB pieces after login, while another
    session fetches: bounded BAD, the other is not starved."""
    srv = adv()
    r = Imap(srv).login()
    other = Imap(srv).login()
    other.send(b"s SELECT INBOX\r\n")
    other.until(b"s")
    r.send(b"a SEARCH ")
    for _ in range(100):
        r.send(b"(" * 1000)
        other.send(b"f FETCH 1 (FLAGS)\r\n")
        assert other.until(b"f")[1].startswith(b"f OK")
    r.send(b"\r\n")
    _, t = r.until(b"a")
    assert b"BAD" in t, t
    r.send(b"b NOOP\r\n")
    assert r.until(b"b")[1].startswith(b"b OK")


@pytest.mark.parametrize("quoted", [b'"al\x00ice@example.com"', b'"x\x00"', b'"\x00"'])
def test_imap_nul_in_quoted_string(adv, quoted):
    """NUL is not allowed in a quoted string: BAD (never a login with a
    truncated name), the session goes on."""
    srv = adv()
    r = Imap(srv)
    r.send(b"a LOGIN " + quoted + b' "alice-Secret-1"\r\n')
    _, t = r.until(b"a")
    assert t.startswith(b"a BAD") or t.startswith(b"a NO"), t
    r.send(b"b NOOP\r\n")
    assert r.until(b"b")[1].startswith(b"b OK")
    r.send(b"c SELECT INBOX\r\n")  # not logged in
    assert not r.until(b"c")[1].startswith(b"c OK")


@pytest.mark.parametrize("size", [b"4294967295", b"4294967296", b"18446744073709551616",
                                  b"99999999999999999999", b"4294967296+", b"00000000000000000001"])
def test_imap_append_huge_literal_sizes(adv, size):
    """APPEND (the streaming path, not LOGIN's) with literal sizes at and
    past 2^32 and with 20 digits: a tagged BAD/NO without a '+'
    continuation, the session goes on, nothing is stored."""
    srv = adv()
    r = Imap(srv).login()
    r.send(b"a APPEND INBOX {" + size + b"}\r\n")
    ln = r.line()
    assert not ln.startswith(b"+"), ln
    if size.endswith(b"+"):
        # non-synchronising: the client is already sending; the server must
        # refuse without reading 4 GiB (closing is allowed too).
        assert ln.startswith((b"a NO", b"a BAD", b"* BYE")), ln
        return
    # 20 digits, even of value 1, are never parsed (IMAP_LITERAL_SIZE_MAX)
    assert ln.startswith((b"a BAD", b"a NO")), ln
    r.send(b"b STATUS INBOX (MESSAGES)\r\n")
    lines, t = r.until(b"b")
    assert t.startswith(b"b OK"), t
    assert any(b"MESSAGES 1)" in l for l in lines), lines


# ---- MIME bomb -----------------------------------------------------------------------


def mime_bomb(depth=2000, width=3000):
    """A message nested `depth` multiparts deep, then `width` empty parts."""
    out = [b"From: bomb@remote.example\r\nTo: alice@example.com\r\nSubject: bomb\r\n"
           b"MIME-Version: 1.0\r\n"]
    for i in range(depth):
        out.append(b'Content-Type: multipart/mixed; boundary="d%d"\r\n\r\n--d%d\r\n' % (i, i))
    out.append(b'Content-Type: multipart/mixed; boundary="w"\r\n\r\n')
    for i in range(width):
        out.append(b"--w\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i)
    out.append(b"--w--\r\n")
    for i in reversed(range(depth)):
        out.append(b"--d%d--\r\n" % i)
    return b"".join(out)


def test_mime_bomb_bodystructure_is_bounded(adv):
    srv = adv()
    bomb = mime_bomb()
    deliver(srv, "alice@example.com", bomb)
    r = Imap(srv).login()
    r.send(b"s SELECT INBOX\r\n")
    r.until(b"s")
    t0 = time.monotonic()
    r.send(b"f FETCH 2 (BODYSTRUCTURE ENVELOPE RFC822.SIZE)\r\n")
    lines, t = r.until(b"f", timeout=30, limit=1 << 20)
    assert t.startswith(b"f OK"), t
    assert time.monotonic() - t0 < 20
    # The raw message is still exactly what was sent.
    c = imap_login(srv)
    c.select("INBOX", readonly=True)
    typ, data = c.fetch("2", "(BODY.PEEK[])")
    assert typ == "OK" and data[0][1].endswith(bomb)
    c.logout()


# ---- HTTP on mail ports --------------------------------------------------------------

HTTP_GET = b"GET / HTTP/1.1\r\nHost: mail.example.com\r\nUser-Agent: x\r\n\r\n"


@pytest.mark.parametrize("port", [26, 2025, 2525, 587])
def test_http_on_smtp_ports_closes_at_once(adv, port):
    """Port 25 is in test_smtp_adversarial; the other plaintext SMTP rows
    must close too, without echoing anything back after the greeting."""
    srv = adv()
    s = srv.connect(port)
    assert recv_line(s).startswith(b"220")
    s.sendall(HTTP_GET)
    got, closed = read_until_eof(s, limit=512, timeout=5)
    assert closed, got


@pytest.mark.parametrize("port,greet", [(143, b"* OK"), (110, b"+OK"), (995, b"+OK")])
def test_http_on_imap_pop3_ports_closes_at_once(adv, port, greet):
    """IMAP and POP3 (995: its plaintext greeting after the dual-mode wait)
    close on an HTTP request line with one fixed line, never answering the
    header lines that follow it (nothing of the request is reflected)."""
    srv = adv()
    s = srv.connect(port)
    assert recv_line(s, timeout=5).startswith(greet)
    s.sendall(HTTP_GET)
    got, closed = read_until_eof(s, limit=4096, timeout=5)
    assert closed, got
    assert got in (b"* BYE This is an IMAP server\r\n", b"-ERR This is a POP3 server\r\n"), got
    deadline = time.monotonic() + 10
    while "-http-request closing=yes" not in srv.log():
        assert time.monotonic() < deadline, srv.log()[-2000:]
        time.sleep(0.05)


@pytest.mark.parametrize("port", [465, 993, 995, 443])
def test_http_plaintext_on_tls_ports(adv, port):
    """Plaintext HTTP on an implicit-TLS row: no TLS record is a valid
    ClientHello, so the connection ends with at most an alert (995 is dual:
    it may greet in plaintext and then refuse the request)."""
    srv = adv()
    s = srv.connect(port)
    s.sendall(HTTP_GET)
    got, closed = read_until_eof(s, limit=4096, timeout=8)
    assert closed or port == 995, got
    assert b"HTTP/1.1 200" not in got


# The answer to an HTTP request that arrives inside an established TLS
# session (ALPACA with a client that offers no ALPN): the protocol's one
# fixed line (SMTP: none) and a close, and the log line that says why.
HTTP_IN_TLS = {
    465: (b"220", b"", "smtp-http-request"),
    993: (b"* OK", b"* BYE This is an IMAP server\r\n", "imap-http-request closing=yes"),
    995: (b"+OK", b"-ERR This is a POP3 server\r\n", "pop3-http-request closing=yes"),
}


def tls_connect(srv, port, alpn=None):
    ctx = ssl.create_default_context(cafile=os.path.join(srv.data_dir, "tls", "cert.pem"))
    ctx.check_hostname = False
    if alpn:
        ctx.set_alpn_protocols(alpn)
    raw = srv.connect(port, timeout=10)
    return ctx.wrap_socket(raw, server_hostname="mail.example.com")


def tls_read_until_eof(sock, limit, timeout=8.0):
    """read_until_eof over TLS: a close_notify, a TCP FIN or a reset all
    count as closed."""
    got = bytearray()
    deadline = time.monotonic() + timeout
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
            return bytes(got), True
        if not chunk:
            return bytes(got), True
        got += chunk
        assert len(got) <= limit, f"unbounded answer: {len(got)} bytes, {bytes(got[:200])!r}"
    return bytes(got), False


def tls_session_works(srv, port, s):
    """One command on an already greeted TLS session gets its answer."""
    if port == 465:
        s.sendall(b"NOOP\r\n")
        assert recv_line(s, timeout=10).startswith(b"250")
    elif port == 993:
        s.sendall(b"n NOOP\r\n")
        assert recv_line(s, timeout=10).startswith(b"n OK")
    else:
        s.sendall(b"CAPA\r\n")
        assert recv_line(s, timeout=10).startswith(b"+OK")
        while recv_line(s, timeout=10) != b".\r\n":
            pass


@pytest.mark.parametrize("port", sorted(HTTP_IN_TLS))
def test_http_inside_tls_on_implicit_tls_ports(adv, port):
    """ALPACA inside TLS (docs/tls.md): a client offering no ALPN completes
    the handshake (most mail clients send none), so an HTTP request reaches
    the mail protocol inside the session: it gets the protocol's one fixed
    line and a close, never an answer per header line, while a session
    greeted earlier on the same port goes on. A client offering ALPN
    "http/1.1" never gets a session: the handshake fails with a fatal
    no_application_protocol alert (RFC 7301 3.2), so nothing of the
    request is read."""
    greet, answer, event = HTTP_IN_TLS[port]
    srv = adv()
    other = tls_connect(srv, port)
    assert recv_line(other, timeout=10).startswith(greet)

    s = tls_connect(srv, port)
    assert s.selected_alpn_protocol() is None
    assert recv_line(s, timeout=10).startswith(greet)
    s.sendall(HTTP_GET)
    got, closed = tls_read_until_eof(s, limit=4096)
    assert closed, got
    assert got == answer, got
    deadline = time.monotonic() + 10
    while event not in srv.log():
        assert time.monotonic() < deadline, srv.log()[-2000:]
        time.sleep(0.05)

    with pytest.raises(ssl.SSLError, match="NO_APPLICATION_PROTOCOL|no application protocol"):
        tls_connect(srv, port, alpn=["http/1.1"])
    # Offered beside the mail protocol's id, the server picks its own.
    mine = {465: "smtp", 993: "imap", 995: "pop3"}[port]
    s2 = tls_connect(srv, port, alpn=["http/1.1", mine])
    assert s2.selected_alpn_protocol() == mine
    assert recv_line(s2, timeout=10).startswith(greet)
    s2.sendall(HTTP_GET)
    got, closed = tls_read_until_eof(s2, limit=4096)
    assert closed and got == answer, got

    tls_session_works(srv, port, other)


# ---- half-open TLS ----------------------------------------------------------------------


def test_thousand_half_open_tls_while_a_client_logs_in(adv):
    """1,000 connections to 993 that send a partial ClientHello and stop
    (from 10 loopback addresses, under the per-IP cap): a normal client
    still completes its handshake and logs in."""
    srv = adv()
    # A real ClientHello, truncated: the record header promises more.
    partial = bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]) + b"\x00" * 20
    socks = []
    try:
        for i in range(1000):
            src = f"127.0.0.{10 + i % 10}"
            s = socket.create_connection((HOST, srv.port(993)), timeout=10,
                                         source_address=(src, 0))
            s.sendall(partial)
            socks.append(s)
        ctx = ssl.create_default_context(cafile=os.path.join(srv.data_dir, "tls", "cert.pem"))
        ctx.check_hostname = False
        t0 = time.monotonic()
        c = imaplib.IMAP4_SSL(HOST, srv.port(993), ssl_context=ctx, timeout=15)
        c.login("alice@example.com", USERS["alice@example.com"])
        assert c.select("INBOX")[0] == "OK"
        c.logout()
        assert time.monotonic() - t0 < 10
    finally:
        for s in socks:
            s.close()


# ---- SMTP floods -------------------------------------------------------------------------


def smtp_raw(srv, port=25):
    s = srv.connect(port, timeout=30)
    assert recv_line(s).startswith(b"220")
    s.sendall(b"EHLO flood.example\r\n")
    while True:
        ln = recv_line(s)
        if ln.startswith(b"250 "):
            return s
        assert ln.startswith(b"250-"), ln


def test_recipient_flood(adv):
    """10,000 pipelined RCPT for one local user: recipients_max (1000) get
    250 or a duplicate answer, the rest 452; one reply per command, no
    close; RSET works; another client is served meanwhile."""
    srv = adv()
    s = smtp_raw(srv)
    n = 10000
    s.sendall(b"MAIL FROM:<flood@remote.example>\r\n" +
              b"RCPT TO:<alice@example.com>\r\n" * n + b"RSET\r\n")
    assert recv_line(s).startswith(b"250")
    codes = {}
    for i in range(n):
        ln = recv_line(s, timeout=30)
        assert ln, f"closed after {i} RCPT replies"
        codes[ln[:3]] = codes.get(ln[:3], 0) + 1
        if i == n // 2:
            with smtplib.SMTP(HOST, srv.port(25), timeout=10) as o:
                assert o.noop()[0] == 250
    assert set(codes) <= {b"250", b"452"}, codes
    assert codes.get(b"250", 0) <= 1000, codes
    assert recv_line(s).startswith(b"250")  # RSET
    s.sendall(b"QUIT\r\n")
    assert recv_line(s).startswith(b"221")


def test_header_bomb(adv):
    """100,000 header lines (600 KB, under header_size_max): accepted or
    refused with one reply; if stored, IMAP answers ENVELOPE,
    BODYSTRUCTURE and HEADER.FIELDS boundedly and BODY[] is exact."""
    srv = adv()
    msg = (b"From: hb@remote.example\r\nTo: alice@example.com\r\nSubject: hb\r\n" +
           b"A: b\r\n" * 100000 + b"\r\nbody\r\n")
    try:
        deliver(srv, "alice@example.com", msg)
        stored = True
    except smtplib.SMTPDataError as e:
        assert 500 <= e.smtp_code < 600, e
        stored = False
    r = Imap(srv).login()
    r.send(b"s SELECT INBOX\r\n")
    lines, _ = r.until(b"s")
    assert any(b"EXISTS" in l for l in lines)
    if not stored:
        return
    r.send(b"f FETCH 2 (ENVELOPE BODYSTRUCTURE BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n")
    lines, t = r.until(b"f", timeout=30)
    assert t.startswith(b"f OK"), t
    assert b"hb" in b"".join(lines)
    c = imap_login(srv)
    c.select("INBOX", readonly=True)
    typ, data = c.fetch("2", "(BODY.PEEK[])")
    assert typ == "OK" and data[0][1].endswith(msg)
    c.logout()


def test_header_bomb_over_limit_refused(adv):
    """Past header_size_max (here 64k): one 5xx, the session goes on."""
    srv = adv(config="[limits]\nheader_size_max = 64k\n")
    msg = (b"From: hb@remote.example\r\nTo: alice@example.com\r\n" +
           b"A: b\r\n" * 100000 + b"\r\nbody\r\n")
    with smtplib.SMTP(HOST, srv.port(25), timeout=30) as s:
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("x@remote.example", ["alice@example.com"], msg)
        assert 500 <= e.value.smtp_code < 600
        assert s.noop()[0] == 250


# ---- SASL identities with control characters -------------------------------------------

IDENTITIES = [b"alice@example.com\r\nFAKE event=login user=bob", b"alice@example.com\n",
              b"alice\t@example.com", b"alice@example.com\x00x", b"\r\n", b"\t"]


def b64(b):
    return base64.b64encode(b)


def no_injected_lines(srv):
    for line in srv.log().splitlines():
        assert not line.startswith("FAKE"), line
        assert "user=bob" not in line or "FAKE" not in line, line


# ---- ESMTP parameters whose xtext decodes to control characters --------------------

CTRL_PARAMS = [
    (b"MAIL", b"ENVID=x+0D+0AInjected:+20envid"),
    (b"MAIL", b"ENVID=+00"),
    (b"MAIL", b"AUTH=<a+0AInjected:+20auth@example.com>"),
    (b"MAIL", b"ENVID=x\x00y"),
    (b"RCPT", b"ORCPT=rfc822;a+0D+0AInjected:+20orcpt@example.com"),
    (b"RCPT", b"ORCPT=rfc822;a+09b+00@example.com"),
    (b"RCPT", b"NOTIFY=SUCCESS+0D+0AInjected:+20notify"),
]


@pytest.mark.parametrize("verb,param", CTRL_PARAMS)
def test_esmtp_params_decoding_to_controls(adv, verb, param):
    """ENVID, AUTH and ORCPT are xtext (RFC 3461 4, RFC 4954 5): one that
    decodes to CR, LF, TAB or NUL is refused with a 501 (a raw NUL: 500) and the session goes
    on; nothing of it reaches the log or a stored message."""
    srv = adv()
    s = smtp_raw(srv)
    if verb == b"MAIL":
        s.sendall(b"MAIL FROM:<sender@remote.example> " + param + b"\r\n")
        r = recv_line(s)
        assert r.startswith((b"501 ", b"500 ")), r  # 500: a raw NUL in the line
        s.sendall(b"MAIL FROM:<sender@remote.example> ENVID=clean+2Bid\r\n")
        assert recv_line(s).startswith(b"250")
        s.sendall(b"RCPT TO:<alice@example.com>\r\n")
        assert recv_line(s).startswith(b"250")
    else:
        s.sendall(b"MAIL FROM:<sender@remote.example>\r\n")
        assert recv_line(s).startswith(b"250")
        s.sendall(b"RCPT TO:<alice@example.com> " + param + b"\r\n")
        r = recv_line(s)
        assert r.startswith(b"501 "), r
        s.sendall(b"RCPT TO:<alice@example.com> ORCPT=rfc822;alice@example.com NOTIFY=FAILURE\r\n")
        assert recv_line(s).startswith(b"250")
    s.sendall(b"DATA\r\n")
    assert recv_line(s).startswith(b"354")
    s.sendall(b"Subject: params\r\n\r\nclean\r\n.\r\n")
    assert recv_line(s, timeout=30).startswith(b"250")
    s.sendall(b"QUIT\r\n")
    assert recv_line(s).startswith(b"221")
    c = imap_login(srv)
    c.select("INBOX", readonly=True)
    typ, data = c.fetch("*", "(BODY.PEEK[])")
    assert typ == "OK" and data[0][1].endswith(b"clean\r\n"), data
    assert b"Injected" not in data[0][1]
    c.logout()
    for line in srv.log().splitlines():
        assert not line.startswith("Injected"), line


@pytest.mark.parametrize("ident", IDENTITIES)
def test_sasl_control_chars_imap(adv, ident):
    srv = adv()
    r = Imap(srv)
    for resp in (b"\x00" + ident + b"\x00alice-Secret-1", ident + b"\x00alice@example.com\x00alice-Secret-1"):
        r.send(b"a AUTHENTICATE PLAIN " + b64(resp) + b"\r\n")
        _, t = r.until(b"a")
        assert t.startswith(b"a NO") or t.startswith(b"a BAD"), t
    r.send(b"b SELECT INBOX\r\n")
    assert not r.until(b"b")[1].startswith(b"b OK")
    no_injected_lines(srv)


@pytest.mark.parametrize("ident", IDENTITIES)
def test_sasl_control_chars_smtp_pop3(adv, ident):
    srv = adv()
    s = smtp_raw(srv)
    s.sendall(b"AUTH PLAIN " + b64(b"\x00" + ident + b"\x00alice-Secret-1") + b"\r\n")
    ln = recv_line(s, timeout=30)
    assert ln[:1] in (b"5", b"4"), ln
    s.sendall(b"NOOP\r\n")
    assert recv_line(s).startswith(b"250")
    p = srv.connect(110, timeout=30)
    assert recv_line(p).startswith(b"+OK")
    p.sendall(b"AUTH PLAIN " + b64(b"\x00" + ident + b"\x00alice-Secret-1") + b"\r\n")
    ln = recv_line(p, timeout=30)
    assert ln.startswith(b"-ERR"), ln
    p.sendall(b"STAT\r\n")
    assert recv_line(p).startswith(b"-ERR")  # still not logged in
    no_injected_lines(srv)


# ---- IMAP LOGIN and POP3 USER with control characters -------------------------------
# (SASL identities are above; SMTP addresses are in tests/integration.)

FAST_AUTH = "[limits]\nauth_delay = 10ms\nauth_delay_max = 20ms\n"
# IMAP LOGIN user names as they go on the wire. RFC 3501 9: a quoted string
# holds no CR, LF or NUL (BAD), but may hold a TAB (a well-formed name of no
# user: NO). A literal's octets are taken as they are: CR, LF, TAB, and a
# NUL too (which CHAR8 excludes; the name is compared with its length,
# never cut at the NUL), make a name of no user: NO.
IMAP_LOGIN_NAMES = [
    (b'"alice@example.com\rFAKE"', b"BAD"),
    (b'"al\rice@example.com"', b"BAD"),
    (b'"alice\t@example.com"', b"NO"),
    (b'"\t"', b"NO"),
    (b'"alice@example.com\x00"', b"BAD"),
    (b"{44}\r\nalice@example.com\r\nFAKE event=login user=bob", b"NO"),
    (b"{18}\r\nalice@example.com\r", b"NO"),
    (b"{18}\r\nalice\t@example.com", b"NO"),
    (b"{18}\r\nalice@example.com\x00", b"NO"),
    (b"{1}\r\n\x00", b"NO"),
]


@pytest.mark.parametrize("name,verdict", IMAP_LOGIN_NAMES)
def test_imap_login_control_chars(adv, name, verdict):
    """LOGIN with CR, TAB or NUL in the user name (quoted or a literal, the
    right password): a tagged NO or BAD as RFC 3501's grammar says, never a
    login and never an injected log line; the session goes on and logs in
    properly afterwards."""
    srv = adv(config=FAST_AUTH)
    r = Imap(srv)
    if name.startswith(b"{"):
        head, body = name.split(b"\r\n", 1)
        r.send(b"a LOGIN " + head + b"\r\n")
        assert r.line().startswith(b"+"), "no continuation for the literal"
        r.send(body + b' "alice-Secret-1"\r\n')
    else:
        r.send(b"a LOGIN " + name + b' "alice-Secret-1"\r\n')
    _, t = r.until(b"a")
    assert t.startswith(b"a " + verdict + b" "), t
    r.send(b"b SELECT INBOX\r\n")
    assert r.until(b"b")[1].startswith(b"b BAD"), "logged in"
    r.login()
    r.send(b"c SELECT INBOX\r\n")
    assert r.until(b"c")[1].startswith(b"c OK")
    no_injected_lines(srv)


# POP3 USER names: a bare CR or a NUL makes the line no command (-ERR at
# once); a TAB is a name of no user (USER +OK, as for every name, then PASS
# -ERR).
POP3_USER_NAMES = [
    (b"alice@example.com\rFAKE event=login user=bob", False),
    (b"al\rice@example.com", False),
    (b"alice@example.com\x00", False),
    (b"\x00", False),
    (b"alice\t@example.com", True),
    (b"\t", True),
]


@pytest.mark.parametrize("name,user_ok", POP3_USER_NAMES)
def test_pop3_user_control_chars(adv, name, user_ok):
    """USER with CR, TAB or NUL in the name, then the right password:
    -ERR (for the line, or for PASS), never a login and never an injected
    log line; the session goes on and logs in properly afterwards."""
    srv = adv(config=FAST_AUTH)
    p = srv.connect(110, timeout=30)
    assert recv_line(p).startswith(b"+OK")
    p.sendall(b"USER " + name + b"\r\n")
    ln = recv_line(p)
    assert ln.startswith(b"+OK" if user_ok else b"-ERR"), ln
    p.sendall(b"PASS alice-Secret-1\r\n")
    ln = recv_line(p, timeout=30)
    assert ln.startswith(b"-ERR"), ln
    p.sendall(b"STAT\r\n")
    assert recv_line(p).startswith(b"-ERR")  # still not logged in
    p.sendall(b"USER alice@example.com\r\n")
    assert recv_line(p).startswith(b"+OK")
    p.sendall(b"PASS alice-Secret-1\r\n")
    assert recv_line(p, timeout=30).startswith(b"+OK")
    p.sendall(b"STAT\r\n")
    assert recv_line(p).startswith(b"+OK 1 ")
    p.sendall(b"QUIT\r\n")
    assert recv_line(p).startswith(b"+OK")
    no_injected_lines(srv)


# ---- shell metacharacters in addresses ---------------------------------------------------

SHELL = ["`touch {f}`@remote.example", "$(touch {f})@remote.example", "a;touch {f}@remote.example",
         "|touch {f}@remote.example", '"|touch {f}"@remote.example', "a&&touch${{IFS}}{f}@remote.example"]


@pytest.mark.parametrize("tmpl", SHELL)
def test_shell_metacharacters_in_addresses(adv, tmp_path, tmpl):
    """As sender and as recipient: 250 or a 5xx, never a command run; a
    message accepted with such a sender is stored with its envelope intact."""
    srv = adv()
    marker = tmp_path / "pwned"
    addr = tmpl.format(f=marker).encode()
    s = smtp_raw(srv)
    s.sendall(b"MAIL FROM:<" + addr + b">\r\n")
    mail = recv_line(s)
    assert mail[:1] in (b"2", b"5"), mail
    if mail.startswith(b"250"):
        s.sendall(b"RCPT TO:<alice@example.com>\r\n")
        assert recv_line(s).startswith(b"250")
        s.sendall(b"DATA\r\n")
        assert recv_line(s).startswith(b"354")
        s.sendall(b"Subject: shell\r\n\r\nx\r\n.\r\n")
        assert recv_line(s, timeout=30).startswith(b"250")
    else:
        s.sendall(b"RSET\r\n")
        assert recv_line(s).startswith(b"250")
    local = tmpl.format(f=marker).split("@")[0].encode()
    s.sendall(b"MAIL FROM:<x@remote.example>\r\nRCPT TO:<" + local + b"@example.com>\r\nRSET\r\n")
    assert recv_line(s).startswith(b"250")
    rc = recv_line(s)
    assert rc[:1] in (b"5", b"4"), rc  # no such local user
    assert recv_line(s).startswith(b"250")
    time.sleep(0.2)
    assert not marker.exists()
