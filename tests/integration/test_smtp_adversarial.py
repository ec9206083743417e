"""SMTP under hostile input, against the real binary over real sockets
(issue 5): SMTP smuggling with every bare CR/LF end-of-data variant under
both smtp_bare_lf policies, the limits of [limits] (line length, message and
header size, hops, bad commands, timeouts, connections per IP), HTTP and
early talkers, STARTTLS command injection, and a store that fails.

Each limit is checked on both sides where it matters: the reply, and that
nothing reached any mailbox.
"""
import os
import socket
import ssl
import time

import pytest

from smtp_helpers import (Closed, Raw, Server, dot_stuff, find, message, mount_tmpfs,
                          strip_received, token, umount)

ALICE, BOB = "alice@example.com", "bob@example.com"

LIMITS = {
    "plaintext_auth": "no",
    "message_size_max": "100k",
    "recipients_max": 3,
    "header_size_max": "16k",
    "max_hops": 50,
    "max_bad_commands": 5,
}


def _server(tmp_path_factory, name, **kw):
    s = Server(tmp_path_factory.mktemp(name), **kw)
    s.start()
    return s


@pytest.fixture(scope="module")
def lim(tmp_path_factory):
    s = _server(tmp_path_factory, "lim", limits=LIMITS)
    yield s
    assert s.alive(), "the server died:\n" + s.log()[-3000:]
    assert s.stop() == 0, s.log()[-3000:]


@pytest.fixture
def fresh(tmp_path):
    """A server of its own, for tests that end sessions abruptly: if one
    kills the process, it does not take the other tests with it."""
    s = Server(tmp_path / "fresh", limits=LIMITS)
    s.start()
    yield s
    assert s.alive(), "the server died:\n" + s.log()[-4000:]
    assert s.stop() == 0, s.log()[-3000:]


@pytest.fixture(scope="module")
def norm(tmp_path_factory):
    s = _server(tmp_path_factory, "norm", limits=dict(LIMITS, smtp_bare_lf="normalize"))
    yield s
    assert s.stop() == 0, s.log()[-3000:]


@pytest.fixture(scope="module")
def tmo(tmp_path_factory):
    s = _server(tmp_path_factory, "tmo", limits={"smtp_timeout": "1s", "prelogin_timeout": "1s"})
    yield s
    assert s.stop() == 0, s.log()[-3000:]


@pytest.fixture(scope="module")
def cap(tmp_path_factory):
    s = _server(tmp_path_factory, "cap", limits={"max_connections_per_ip": 3})
    yield s
    assert s.stop() == 0, s.log()[-3000:]


def ready(srv, port=25):
    r = Raw(srv, port)
    assert r.greeting[0] == 220, r.greeting
    r.ehlo()
    return r


def open_data(r, rcpts=(ALICE,), frm="x@remote.example", params=""):
    assert r.cmd(f"MAIL FROM:<{frm}>{params}")[0] == 250
    for rc in rcpts:
        code, text = r.cmd(f"RCPT TO:<{rc}>")
        assert code == 250, (rc, code, text)
    code, text = r.cmd("DATA")
    assert code == 354, (code, text)


def in_sync(r):
    """Nothing more is pending, and the next command gets its own reply."""
    assert r.nothing_within(0.5), f"unexpected extra reply: {r.buf!r}"
    code, text = r.cmd("NOOP")
    assert code == 250 and "Ok" in text, (code, text)


# ---- SMTP smuggling ---------------------------------------------------------------

SMUGGLE_ENDS = [b"\n.\n", b"\r.\r", b"\r.\n", b"\n.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n",
                b"\r\n.\r"]
IDS = [e.decode().replace("\r", "CR").replace("\n", "LF") for e in SMUGGLE_ENDS]


def smuggle(srv, end, tok):
    """One transaction whose body holds `end` and then a whole second
    transaction. Returns (reply to the real end of data, the Raw client)."""
    r = ready(srv)
    open_data(r)
    body = (f"From: <x@remote.example>\r\nTo: <{ALICE}>\r\nSubject: smuggle {tok}\r\n\r\n"
            f"first part {tok}").encode() + end + (
        f"MAIL FROM:<x@example.com>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n"
        f"smuggled {tok}\r\n").encode() + b"\r\n.\r\n"
    r.send(body)
    return r.reply(timeout=30), r


@pytest.mark.parametrize("end", SMUGGLE_ENDS, ids=IDS)
def test_smuggling_rejected_by_default(lim, end):
    tok = token()
    before = lim.total()
    (code, text), r = smuggle(lim, end, tok)
    with r:
        assert code == 550, (code, text)
        in_sync(r)
    assert lim.total() == before
    assert find(lim.all_messages(), tok.encode()) == []


@pytest.mark.parametrize("end", SMUGGLE_ENDS, ids=IDS)
def test_smuggling_normalized_is_one_message(norm, end):
    tok = token()
    before = norm.total()
    (code, text), r = smuggle(norm, end, tok)
    with r:
        assert code == 250, (code, text)
        in_sync(r)
    msgs = find(norm.all_messages(), tok.encode())
    assert len(msgs) == 1, f"{len(msgs)} messages"
    assert norm.total() == before + 1
    _, rest = strip_received(msgs[0])
    # the smuggled "transaction" is body text of the one message
    assert f"first part {tok}".encode() in rest
    assert f"smuggled {tok}".encode() in rest
    assert b"MAIL FROM:<x@example.com>" in rest
    # normalised: no bare CR or LF left in what is stored
    assert rest.replace(b"\r\n", b"").count(b"\r") == 0
    assert rest.replace(b"\r\n", b"").count(b"\n") == 0


def test_normalize_keeps_a_clean_message_exact(norm):
    tok = token()
    msg = message(tok, body=b"line one\r\n..dotted\r\n")
    r = ready(norm)
    with r:
        open_data(r)
        r.send(dot_stuff(msg))
        assert r.reply(timeout=30)[0] == 250
    msgs = find(norm.messages(ALICE), tok.encode())
    assert len(msgs) == 1
    assert strip_received(msgs[0])[1] == msg


def test_bare_lf_reject_then_next_message_ok(lim):
    """After a 550 for a bare LF the same session delivers the next one."""
    tok, tok2 = token(), token()
    r = ready(lim)
    with r:
        open_data(r)
        r.send(message(tok, body=b"bare\nlf\r\n") + b".\r\n")
        code, text = r.reply(timeout=30)
        assert code == 550 and "5.5.2" in text, (code, text)
        msg = message(tok2)
        open_data(r)
        r.send(dot_stuff(msg))
        assert r.reply(timeout=30)[0] == 250
    assert find(lim.all_messages(), tok.encode()) == []
    assert len(find(lim.messages(ALICE), tok2.encode())) == 1


def test_rejected_messages_do_not_break_the_mailbox(lim):
    """Each message rejected after DATA opened (and closed) the INBOX
    without appending. A hundred of them, each in its own session (so the
    folder is loaded again each time), must leave the mailbox working: an
    outsider must not be able to make it refuse mail."""
    user = "carol@example.com"
    for i in range(100):
        r = ready(lim)
        with r:
            open_data(r, rcpts=(user,))
            r.send(message(token(), body=b"bare\nLF\r\n") + b".\r\n")
            code, text = r.reply(timeout=30)
            assert code == 550, (i, code, text)
        time.sleep(0.02)
    tok = token()
    msg = message(tok, to=user)
    r = ready(lim)
    with r:
        open_data(r, rcpts=(user,))
        r.send(dot_stuff(msg))
        code, text = r.reply(timeout=30)
        assert code == 250, (code, text, [l for l in lim.log().splitlines()
                                          if "store-load" in l][-1:])
    assert strip_received(find(lim.messages(user), tok.encode())[0])[1] == msg


# ---- line and size limits ----------------------------------------------------------

def test_long_command_line(lim):
    r = ready(lim)
    with r:
        code, text = r.cmd("NOOP " + "x" * 595)  # 600 bytes + CRLF
        assert code == 500 and text.startswith("5.5.6"), (code, text)
        in_sync(r)
        code, text = r.cmd("MAIL FROM:<" + "a" * 580 + "@remote.example>")
        assert code == 500 and text.startswith("5.5.6"), (code, text)
        in_sync(r)
        # a 512-octet line (RFC 5321 4.5.3.1.4) is still a command
        line = "NOOP " + "y" * (512 - 2 - 5)
        assert len(line) + 2 == 512
        assert r.cmd(line)[0] == 250


def test_very_long_command_line_in_pieces(lim):
    """64 kB without a line end, in pieces: one 500, no unbounded buffering,
    and the session goes on."""
    r = ready(lim)
    with r:
        for _ in range(16):
            r.send(b"x" * 4096)
        r.send(b"\r\n")
        code, text = r.reply()
        assert code == 500, (code, text)
        in_sync(r)


def test_size_param_over_limit(lim):
    r = ready(lim)
    with r:
        code, text = r.cmd("MAIL FROM:<x@remote.example> SIZE=200000")
        assert code == 552, (code, text)
        code, text = r.cmd("MAIL FROM:<x@remote.example> SIZE=99999999999999999999999")
        assert code == 552, (code, text)
        code, text = r.cmd("MAIL FROM:<x@remote.example> SIZE=1000")
        assert code == 250, (code, text)


def test_body_over_limit_without_size(lim):
    tok = token()
    before = lim.total()
    body = (b"y" * 78 + b"\r\n") * (200 * 1024 // 80)
    r = ready(lim)
    with r:
        open_data(r)
        r.send(dot_stuff(message(tok, body=body)))
        code, text = r.reply(timeout=30)
        assert code == 552, (code, text)
        in_sync(r)
    assert lim.total() == before
    assert find(lim.all_messages(), tok.encode()) == []


def test_bdat_over_limit(lim):
    tok = token()
    before = lim.total()
    msg = message(tok, body=b"z" * (150 * 1024))
    r = ready(lim)
    with r:
        r.cmd("MAIL FROM:<x@remote.example>")
        r.cmd(f"RCPT TO:<{ALICE}>")
        half = len(msg) // 2
        r.send(f"BDAT {half}\r\n".encode() + msg[:half])
        c1, t1 = r.reply(timeout=30)
        r.send(f"BDAT {len(msg) - half} LAST\r\n".encode() + msg[half:])
        c2, t2 = r.reply(timeout=30)
        assert c2 == 552 or c1 == 552, ((c1, t1), (c2, t2))
        in_sync(r)
    assert lim.total() == before


def test_long_body_line_rejected(lim):
    tok = token()
    before = lim.total()
    msg = message(tok, body=b"short\r\n" + b"L" * 1200 + b"\r\nend\r\n")
    r = ready(lim)
    with r:
        open_data(r)
        r.send(dot_stuff(msg))
        code, text = r.reply(timeout=30)
        assert 500 <= code < 600, (code, text)
        in_sync(r)
    assert lim.total() == before


def test_body_line_of_1000_octets_accepted(lim):
    tok = token()
    msg = message(tok, body=b"M" * 998 + b"\r\n")
    r = ready(lim)
    with r:
        open_data(r)
        r.send(dot_stuff(msg))
        code, text = r.reply(timeout=30)
        assert code == 250, (code, text)
    assert strip_received(find(lim.messages(ALICE), tok.encode())[0])[1] == msg


def _received(n):
    return b"".join(f"Received: from hop{i}.example by hop{i + 1}.example; "
                    f"Thu, 1 Jan 2024 00:00:{i % 60:02d} +0000\r\n".encode() for i in range(n))


def test_too_many_hops(lim):
    tok = token()
    before = lim.total()
    r = ready(lim)
    with r:
        open_data(r)
        r.send(dot_stuff(message(tok, extra_headers=_received(51))))
        code, text = r.reply(timeout=30)
        assert code == 554 and text.startswith("5.4.6"), (code, text)
        in_sync(r)
    assert lim.total() == before


def test_hops_at_limit_accepted(lim):
    tok = token()
    msg = message(tok, extra_headers=_received(50))
    r = ready(lim)
    with r:
        open_data(r)
        r.send(dot_stuff(msg))
        code, text = r.reply(timeout=30)
        assert code == 250, (code, text)
    assert strip_received(find(lim.messages(ALICE), tok.encode())[0])[1] == msg


def test_too_many_hops_bdat(lim):
    tok = token()
    before = lim.total()
    msg = message(tok, extra_headers=_received(51))
    r = ready(lim)
    with r:
        r.cmd("MAIL FROM:<x@remote.example>")
        r.cmd(f"RCPT TO:<{ALICE}>")
        r.send(f"BDAT {len(msg)} LAST\r\n".encode() + msg)
        code, text = r.reply(timeout=30)
        assert code == 554, (code, text)
    assert lim.total() == before


def test_header_size_max(lim):
    tok = token()
    before = lim.total()
    fill = b"".join(b"X-Fill-%04d: " % i + b"f" * 60 + b"\r\n" for i in range(300))  # ~22 kB
    r = ready(lim)
    with r:
        open_data(r)
        r.send(dot_stuff(message(tok, extra_headers=fill)))
        code, text = r.reply(timeout=30)
        assert code == 552, (code, text)
        in_sync(r)
    assert lim.total() == before


def test_big_body_small_header_accepted(lim):
    """header_size_max counts the header section only."""
    tok = token()
    msg = message(tok, body=(b"b" * 70 + b"\r\n") * 1000)  # 72 kB body, < 100k
    r = ready(lim)
    with r:
        open_data(r)
        r.send(dot_stuff(msg))
        assert r.reply(timeout=30)[0] == 250
    assert strip_received(find(lim.messages(ALICE), tok.encode())[0])[1] == msg


def test_recipients_max_452(lim):
    r = ready(lim)
    with r:
        r.cmd("MAIL FROM:<x@remote.example>")
        for rc in (ALICE, BOB, "carol@example.com"):
            assert r.cmd(f"RCPT TO:<{rc}>")[0] == 250
        code, text = r.cmd("RCPT TO:<sales@example.com>")
        assert code == 452, (code, text)


# ---- bad clients -----------------------------------------------------------------------

def test_max_bad_commands(fresh):
    lim = fresh
    r = ready(lim)
    with r:
        for i in range(4):
            code, text = r.cmd(f"BOGUS{i}")
            assert code == 500, (code, text)
        code, text = r.cmd("BOGUS5")
        assert code == 500, (code, text)
        code, text = r.reply()
        assert code == 421, (code, text)
        assert r.closed(), "connection still open after 421"


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\r\nHost: mail.example.com\r\n\r\n",   # more lines behind it
    b"GET / HTTP/1.1\r\n",                                   # the request line alone
    b"GET /" + b"a" * 700 + b" HTTP/1.1\r\n",                  # an over-long one
], ids=["with-headers", "line-only", "long-line"])
def test_http_request_closes_at_once(fresh, request_bytes):
    lim = fresh
    r = Raw(lim, 25)
    with r:
        r.send(request_bytes)
        assert r.closed(timeout=3)
        assert r.buf == b"", f"an SMTP reply to HTTP: {r.buf!r}"
    # the server lives on (and, under ASan, has not touched freed memory)
    time.sleep(0.2)
    assert lim.alive(), lim.log()[-4000:]
    lim.assert_no_sanitizer_report()
    with ready(lim):
        pass


def test_http_post_closes_at_once(fresh):
    lim = fresh
    r = Raw(lim, 587)
    with r:
        r.send(b"POST /x HTTP/1.0\r\nContent-Length: 4\r\n\r\nabcd")
        assert r.closed(timeout=3)
        assert r.buf == b"", r.buf


def test_pipelining_before_ehlo(fresh):
    lim = fresh
    r = Raw(lim, 25)
    with r:
        r.send(b"HELO x.example\r\nMAIL FROM:<a@b.example>\r\n")
        replies = []
        try:
            while True:
                replies.append(r.reply(timeout=3))
        except (Closed, ConnectionResetError):
            pass
        codes = [c for c, _ in replies]
        assert codes and codes[-1] == 554, replies
        assert replies[-1][1].startswith("5.5.0"), replies
        assert 250 not in codes[1:], replies  # the MAIL was not executed


def test_early_talker_before_greeting(lim):
    """A client that talks before the greeting: the first line it sends
    with a second behind it is an early talker too."""
    s = socket.create_connection(("127.0.0.1", lim.port(25)), timeout=5)
    try:
        s.sendall(b"EHLO x\r\n")  # may arrive before or after the greeting: allowed
        data = b""
        s.settimeout(3)
        while b"250 " not in data:
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
        assert data.startswith(b"220 "), data
    finally:
        s.close()


def test_nul_in_command(lim):
    r = ready(lim)
    with r:
        code, text = r.cmd(b"NOOP\x00x")
        assert code == 500, (code, text)
        in_sync(r)


def test_auth_garbage(lim):
    r = ready(lim, 587)
    with r:
        r.starttls()
        r.ehlo()
        code, text = r.cmd("AUTH PLAIN !!!notbase64")
        assert code == 501, (code, text)
        code, text = r.cmd("AUTH LOGIN")
        assert code == 334
        code, text = r.cmd("*")
        assert code == 501, (code, text)
        code, text = r.cmd("AUTH CRAM-MD5")
        assert code == 504, (code, text)
        in_sync(r)


def test_plaintext_auth_no(lim):
    """limits.plaintext_auth = no: no AUTH on a plain MX port before TLS."""
    r = ready(lim)
    with r:
        text = r.ehlo()
        assert "AUTH" not in text, text
        code, text = r.cmd("AUTH LOGIN")
        assert code == 530, (code, text)
        r.starttls()
        text = r.ehlo()
        assert "AUTH PLAIN LOGIN" in text, text


def test_auth_plain_authzid_mismatch(lim):
    import base64
    r = ready(lim, 587)
    with r:
        r.starttls()
        r.ehlo()
        arg = base64.b64encode(b"bob@example.com\0alice@example.com\0alice-Secret-1").decode()
        code, text = r.cmd(f"AUTH PLAIN {arg}")
        assert code == 535, (code, text)


def test_client_disconnects_inside_data(fresh):
    tok = token()
    for i in range(5):
        r = ready(fresh)
        open_data(r)
        r.send(message(tok, body=b"half a message\r\n" * 100))
        r.close()
    time.sleep(0.5)
    assert fresh.alive()
    assert find(fresh.all_messages(), tok.encode()) == []
    with ready(fresh):
        pass


def test_client_disconnects_before_the_reply(fresh):
    """The whole message, then gone before the 250: the session is freed
    while the store commits. Either outcome is allowed (delivered once or
    not at all); a crash or a double delivery is not."""
    toks = [token() for _ in range(10)]
    for tok in toks:
        r = ready(fresh)
        open_data(r)
        r.send(dot_stuff(message(tok)) + b"QUIT\r\n")
        r.close()
    time.sleep(1)
    assert fresh.alive(), fresh.log()[-4000:]
    for tok in toks:
        assert len(find(fresh.all_messages(), tok.encode())) <= 1
    with ready(fresh):
        pass


def test_message_size_boundary(lim):
    """100k = 102400 octets: a message of exactly that size is taken, one
    octet more is not (size as sent, CRLFs counted, before dot-stuffing)."""
    for extra, want in ((0, 250), (1, 552)):
        tok = token()
        head = message(tok, body=b"")
        n = 102400 + extra - len(head)
        body = (b"s" * 98 + b"\r\n") * (n // 100)
        body += b"t" * (n - len(body) - 2) + b"\r\n"
        msg = head + body
        assert len(msg) == 102400 + extra
        r = ready(lim)
        with r:
            open_data(r)
            r.send(dot_stuff(msg))
            code, text = r.reply(timeout=30)
            assert code == want, (extra, code, text)
        got = find(lim.messages(ALICE), tok.encode())
        assert len(got) == (1 if want == 250 else 0)


def test_body_line_of_1001_octets_rejected(lim):
    tok = token()
    msg = message(tok, body=b"M" * 999 + b"\r\n")
    r = ready(lim)
    with r:
        open_data(r)
        r.send(dot_stuff(msg))
        code, text = r.reply(timeout=30)
        assert code == 550 and "5.5.6" in text, (code, text)
    assert find(lim.all_messages(), tok.encode()) == []


def test_smtp_line_max_setting(tmp_path):
    """[limits] smtp_line_max raises the DATA line limit (RFC 5321's 1000
    octets is the minimum): a 1500-octet line passes, one over 2000 gets
    550 5.5.6 naming the limit."""
    srv = Server(tmp_path / "linemax", limits=dict(LIMITS, smtp_line_max=2000))
    srv.start()
    try:
        ok, bad = token(), token()
        for tok, body, want in ((ok, b"W" * 1498 + b"\r\n", 250),
                                (bad, b"W" * 1999 + b"\r\n", 550)):
            r = ready(srv)
            with r:
                open_data(r)
                r.send(dot_stuff(message(tok, body=body)))
                code, text = r.reply(timeout=30)
                assert code == want, (code, text)
                if want == 550:
                    assert "5.5.6" in text and "2000 octets" in text, text
        assert len(find(srv.messages(ALICE), ok.encode())) == 1
        assert find(srv.all_messages(), bad.encode()) == []
        assert srv.alive()
    finally:
        assert srv.stop() == 0, srv.log()[-3000:]


# ---- STARTTLS injection (CVE-2011-0411) -------------------------------------------------

@pytest.mark.parametrize("port", [25, 587])
def test_starttls_injection(lim, port):
    r = ready(lim, port)
    with r:
        r.send(b"STARTTLS\r\nNOOP\r\nMAIL FROM:<x@remote.example>\r\n")
        code, text = r.reply()
        assert code == 220, (code, text)
        assert r.buf == b"", f"plaintext reply after 220: {r.buf!r}"
        r.sock = lim.ssl_context().wrap_socket(r.sock, server_hostname="localhost")
        assert r.nothing_within(1.0), f"a reply to an injected command: {r.buf!r}"
        text = r.ehlo()
        assert "STARTTLS" not in text
        code, text = r.cmd("MAIL FROM:<x@remote.example>")
        assert code in (250, 530), (code, text)


def test_starttls_injection_in_a_separate_packet(lim):
    """Plaintext right behind STARTTLS, in its own packet, before reading
    the 220: it must never be answered in plaintext nor inside TLS. The
    handshake may fail (those bytes are not a ClientHello): that is safe."""
    r = ready(lim, 25)
    with r:
        r.send(b"STARTTLS\r\n")
        r.send(b"NOOP\r\n")
        code, text = r.reply()
        assert code == 220, (code, text)
        if not r.nothing_within(0.5):
            # closed at once (those bytes are not a ClientHello): safe
            assert r.buf == b"", f"plaintext after the 220: {r.buf!r}"
            return
        try:
            r.sock = lim.ssl_context().wrap_socket(r.sock, server_hostname="localhost")
        except (ssl.SSLError, ConnectionResetError, OSError):
            return  # refused: nothing was executed
        assert r.nothing_within(1.0), f"a reply to the injected NOOP: {r.buf!r}"
        r.ehlo()


# ---- timeouts and connection limits -----------------------------------------------------

def test_prelogin_timeout_after_greeting(tmo):
    r = Raw(tmo, 25)
    with r:
        assert r.greeting[0] == 220, r.greeting
        t0 = time.monotonic()
        code, text = r.reply(timeout=10)
        took = time.monotonic() - t0
        assert code == 421 and "4.4.2" in text, (code, text)
        assert took < 5, took
        assert r.closed()


def test_timeout_in_transaction(tmo):
    r = ready(tmo)
    with r:
        r.cmd("MAIL FROM:<x@remote.example>")
        code, text = r.reply(timeout=10)
        assert code == 421 and "4.4.2" in text, (code, text)
        assert r.closed()


def test_timeout_inside_data(tmo):
    tok = token()
    before = tmo.total()
    r = ready(tmo)
    with r:
        open_data(r)
        r.send(message(tok))  # no end of data
        code, text = r.reply(timeout=10)
        assert code == 421 and "4.4.2" in text, (code, text)
        assert r.closed()
    assert tmo.total() == before


def test_activity_keeps_session(tmo):
    """The timer is per command, not per session: NOOPs 0.5 s apart for 3 s."""
    r = ready(tmo)
    with r:
        for _ in range(6):
            time.sleep(0.5)
            assert r.cmd("NOOP")[0] == 250


def _wait_for_220(srv, port=25, timeout=5):
    """Waits until a new connection is greeted with 220 (earlier closes,
    the fixture's readiness probes included, have been counted)."""
    deadline = time.time() + timeout
    while True:
        r = Raw(srv, port, greet=False)
        code, _ = r.reply()
        r.close()
        if code == 220 or time.time() > deadline:
            return code
        time.sleep(0.1)


def test_max_connections_per_ip(cap):
    tmo = cap
    assert _wait_for_220(cap) == 220
    time.sleep(0.3)  # the probe's close reaches the server
    conns = [Raw(tmo, 25) for _ in range(3)]
    try:
        for c in conns:
            assert c.greeting[0] == 220
        extra = Raw(tmo, 25, greet=False)
        with extra:
            code, text = extra.reply(timeout=5)
            assert code == 421, (code, text)
            assert extra.closed()
    finally:
        for c in conns:
            c.close()
    # the slots come back
    assert _wait_for_220(cap) == 220
    # and the cap is per port-independent: 465 counts the same IP
    conns = [Raw(cap, 25) for _ in range(3)]
    try:
        s = socket.create_connection(("127.0.0.1", cap.port(465)), timeout=5)
        try:
            tls = cap.ssl_context().wrap_socket(s, server_hostname="localhost")
            data = tls.recv(512)
            assert data.startswith(b"421"), data
        except (ssl.SSLError, ConnectionResetError, OSError) as e:
            # refusing before the handshake is fine too; a 220 is not
            pass
        finally:
            s.close()
    finally:
        for c in conns:
            c.close()


# ---- the store fails ----------------------------------------------------------------------

def test_store_failure_user_dir_unusable(tmp_path_factory):
    """The user's store directory cannot be created (a file is in its way):
    4xx, never 250, and the server goes on serving other users. (chmod does
    not stop root, so the obstacle is a file.)"""
    base = tmp_path_factory.mktemp("brokenuser")
    users = {"alice@example.com": "alice-Secret-1", "dave@example.com": "dave-Secret-5"}
    s = Server(base, users=users, aliases=None)
    (s.data / "mail").mkdir(parents=True, exist_ok=True)
    (s.data / "mail" / "dave@example.com").write_text("not a directory\n")
    s.start()
    try:
        tok = token()
        r = ready(s)
        with r:
            assert r.cmd("MAIL FROM:<x@remote.example>")[0] == 250
            assert r.cmd("RCPT TO:<dave@example.com>")[0] == 250
            code, text = r.cmd("DATA")
            if code == 354:
                r.send(dot_stuff(message(tok, to="dave@example.com")))
                code, text = r.reply(timeout=30)
            assert 400 <= code < 500, (code, text)
            in_sync(r)
            # another user on the same session works
            msg = message(tok + "b")
            open_data(r)
            r.send(dot_stuff(msg))
            code, text = r.reply(timeout=30)
            assert code == 250, (code, text)
        assert len(find(s.messages(ALICE), (tok + "b").encode())) == 1
        assert "smtp-store-error" in s.log()
    finally:
        assert s.stop() == 0


def test_store_full_disk(tmp_path_factory):
    """DATA/mail on a 512 kB tmpfs; a 1 MB message: 451/452, never 250,
    nothing half-delivered, the server serves on."""
    base = tmp_path_factory.mktemp("full")
    s = Server(base)
    mail = s.data / "mail"
    if not mount_tmpfs(mail, "512k"):
        pytest.skip("mount -t tmpfs not permitted here")
    try:
        s.start()
        tok = token()
        msg = message(tok, body=(b"F" * 98 + b"\r\n") * 10240)  # 1 MB
        r = ready(s)
        with r:
            open_data(r)
            r.send(dot_stuff(msg))
            code, text = r.reply(timeout=60)
            assert code in (451, 452), (code, text)
            in_sync(r)
        assert find(s.all_messages(), tok.encode()) == []
        # new connections are served
        r2 = ready(s)
        r2.close()
        assert s.alive()
        assert s.stop() == 0
    finally:
        if s.alive():
            s.stop()
        umount(mail)
