"""Every plaintext port of the table greets in its protocol; NOOP, QUIT and
LOGOUT work; an unknown command gets the protocol's error and the session
goes on."""

import imaplib
import poplib
import re
import smtplib
import time

import pytest

from conftest import HOST, expect_eof, recv_line

SMTP_PORTS = (25, 26, 2025, 2525, 587)
# The greeting may list more capabilities as the IMAP session grows.
IMAP_GREETING = re.compile(rb"\* OK \[CAPABILITY IMAP4rev1( [^\]]*)?\] ringmail ready\r\n")


def smtp_ok(reply):
    """smtplib's (code, text) of a NOOP/RSET: 250 with enhanced code 2.0.0."""
    code, text = reply
    return code == 250 and text.startswith(b"2.0.0")


@pytest.mark.parametrize("port", SMTP_PORTS)
def test_smtp_greeting_noop_unknown_quit(server, port):
    s = smtplib.SMTP(timeout=5)
    code, msg = s.connect(HOST, server.port(port))
    assert (code, msg) == (220, b"mail.example.com ESMTP ringmail")
    assert smtp_ok(s.noop())
    code, msg = s.docmd("FROBNICATE", "now")
    assert code in (500, 502), (code, msg)
    assert msg.startswith(b"5.5."), msg
    # The session goes on after a protocol error.
    assert smtp_ok(s.noop())
    code, msg = s.quit()
    assert code == 221
    assert msg.startswith(b"2.0.0 mail.example.com")


def test_smtp_raw_quit_closes(server):
    sock = server.connect(25)
    assert recv_line(sock) == b"220 mail.example.com ESMTP ringmail\r\n"
    # Case-insensitive verbs, several commands in one segment: allowed
    # only after EHLO announced PIPELINING (RFC 2920; early talkers are
    # refused, see test_smtp_adversarial).
    sock.sendall(b"EHLO client.example\r\n")
    while not recv_line(sock).startswith(b"250 "):
        pass
    sock.sendall(b"noop\r\nNoOp with args\r\nquit\r\n")
    assert recv_line(sock).startswith(b"250 2.0.0")
    assert recv_line(sock).startswith(b"250 2.0.0")
    assert recv_line(sock).startswith(b"221 2.0.0 mail.example.com")
    expect_eof(sock)


def test_smtp_command_split_across_segments(server):
    sock = server.connect(2525)
    assert recv_line(sock).startswith(b"220 ")
    for part in (b"NO", b"O", b"P\r", b"\n"):
        sock.sendall(part)
        time.sleep(0.05)
    assert recv_line(sock).startswith(b"250 2.0.0")
    sock.sendall(b"QUIT\r\n")
    assert recv_line(sock).startswith(b"221 ")
    expect_eof(sock)


def test_imap_greeting_capability_noop_unknown_logout(server):
    m = imaplib.IMAP4(HOST, server.port(143), timeout=5)
    assert IMAP_GREETING.fullmatch(m.welcome + b"\r\n"), m.welcome
    typ, data = m.capability()
    assert typ == "OK"
    assert b"IMAP4rev1" in data[0].split(), data
    typ, data = m.noop()
    assert typ == "OK", data
    with pytest.raises(imaplib.IMAP4.error, match="BAD"):
        m.xatom("FROBNICATE")
    typ, data = m.noop()
    assert typ == "OK", data
    typ, data = m.logout()
    assert typ == "BYE", data


def test_imap_raw_bad_and_logout(server):
    sock = server.connect(143)
    assert IMAP_GREETING.fullmatch(recv_line(sock))
    sock.sendall(b"a1 FROBNICATE\r\n")
    assert recv_line(sock).startswith(b"a1 BAD ")
    sock.sendall(b"NOTAG\r\n")
    assert recv_line(sock).startswith(b"* BAD ")
    sock.sendall(b"a2 noop\r\n")
    assert recv_line(sock).startswith(b"a2 OK")
    sock.sendall(b"a3 LOGOUT\r\n")
    assert recv_line(sock).startswith(b"* BYE")
    assert recv_line(sock).startswith(b"a3 OK")
    expect_eof(sock)


def test_pop3_greeting_noop_unknown_quit(server):
    p = poplib.POP3(HOST, server.port(110), timeout=5)
    assert p.getwelcome().startswith(b"+OK ringmail ready")
    # RFC 1939: NOOP only in the TRANSACTION state, i.e. after login
    with pytest.raises(poplib.error_proto, match="-ERR Command not valid in this state"):
        p.noop()
    with pytest.raises(poplib.error_proto, match="-ERR"):
        p._shortcmd("FROBNICATE")
    assert p.capa()
    assert p.quit().startswith(b"+OK")


def test_pop3_raw_unknown_then_user(server):
    sock = server.connect(110)
    assert recv_line(sock).startswith(b"+OK ringmail ready")
    sock.sendall(b"FROBNICATE\r\n")
    assert recv_line(sock).startswith(b"-ERR ")
    sock.sendall(b"USER someone@example.com\r\n")
    assert recv_line(sock).startswith(b"+OK")
    sock.sendall(b"QUIT\r\n")
    assert recv_line(sock).startswith(b"+OK")
    expect_eof(sock)


def test_pop3_dual_port_greets_silent_client_after_wait(server):
    """995 waits ~1 s (limits.dual_wait) for a TLS ClientHello; a client
    that says nothing then gets the plaintext greeting."""
    t0 = time.monotonic()
    sock = server.connect(995)
    line = recv_line(sock, timeout=5)
    waited = time.monotonic() - t0
    assert line.startswith(b"+OK ringmail ready")
    assert waited >= 0.95, f"greeted after {waited:.2f}s, before the dual-mode wait"
    assert waited < 3.0, f"greeted only after {waited:.2f}s"
    sock.sendall(b"NOOP\r\n")  # not before login, and no login before TLS here
    assert recv_line(sock).startswith(b"-ERR")
    sock.sendall(b"QUIT\r\n")
    assert recv_line(sock).startswith(b"+OK")
    expect_eof(sock)


def test_pop3_dual_port_client_speaking_first(server):
    """A plaintext client that talks before the wait ends is answered at
    once: its first command gets the greeting and then the reply."""
    sock = server.connect(995)
    t0 = time.monotonic()
    sock.sendall(b"NOOP\r\n")
    assert recv_line(sock).startswith(b"+OK ringmail ready")
    assert recv_line(sock).startswith(b"-ERR")
    assert time.monotonic() - t0 < 0.9
    sock.sendall(b"QUIT\r\n")
    assert recv_line(sock).startswith(b"+OK")


def test_pop3_dual_port_with_poplib(server):
    p = poplib.POP3(HOST, server.port(995), timeout=5)
    assert p.getwelcome().startswith(b"+OK ringmail ready")
    caps = p.capa()
    assert "STLS" in caps and "USER" not in caps, caps  # only the upgrade
    assert p.quit().startswith(b"+OK")
