"""Every plaintext port of the table greets in its protocol; NOOP, QUIT and
LOGOUT work; an unknown command gets the protocol's error and the session
goes on."""

import imaplib
import poplib
import smtplib
import time

import pytest

from conftest import HOST, expect_eof, recv_line

SMTP_PORTS = (25, 26, 2025, 2525, 587)


@pytest.mark.parametrize("port", SMTP_PORTS)
def test_smtp_greeting_noop_unknown_quit(server, port):
    s = smtplib.SMTP(timeout=5)
    code, msg = s.connect(HOST, server.port(port))
    assert (code, msg) == (220, b"mail.example.com ESMTP ringmail")
    assert s.noop() == (250, b"2.0.0 OK")
    code, msg = s.docmd("FROBNICATE", "now")
    assert code == 502, msg
    assert msg.startswith(b"5.5.1")
    # The session goes on after a protocol error.
    assert s.noop() == (250, b"2.0.0 OK")
    code, msg = s.quit()
    assert code == 221
    assert msg == b"2.0.0 mail.example.com Bye"


def test_smtp_raw_quit_closes(server):
    sock = server.connect(25)
    assert recv_line(sock) == b"220 mail.example.com ESMTP ringmail\r\n"
    # Case-insensitive verbs, several commands in one segment.
    sock.sendall(b"noop\r\nNoOp with args\r\nquit\r\n")
    assert recv_line(sock) == b"250 2.0.0 OK\r\n"
    assert recv_line(sock) == b"250 2.0.0 OK\r\n"
    assert recv_line(sock) == b"221 2.0.0 mail.example.com Bye\r\n"
    expect_eof(sock)


def test_smtp_command_split_across_segments(server):
    sock = server.connect(2525)
    assert recv_line(sock).startswith(b"220 ")
    for part in (b"NO", b"O", b"P\r", b"\n"):
        sock.sendall(part)
        time.sleep(0.05)
    assert recv_line(sock) == b"250 2.0.0 OK\r\n"
    sock.sendall(b"QUIT\r\n")
    assert recv_line(sock).startswith(b"221 ")
    expect_eof(sock)


def test_imap_greeting_capability_noop_unknown_logout(server):
    m = imaplib.IMAP4(HOST, server.port(143), timeout=5)
    assert m.welcome == b"* OK [CAPABILITY IMAP4rev1] ringmail ready"
    typ, data = m.capability()
    assert typ == "OK"
    assert data == [b"IMAP4rev1"]
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
    assert recv_line(sock) == b"* OK [CAPABILITY IMAP4rev1] ringmail ready\r\n"
    sock.sendall(b"a1 FROBNICATE\r\n")
    assert recv_line(sock) == b"a1 BAD Unknown command\r\n"
    sock.sendall(b"NOTAG\r\n")
    assert recv_line(sock).startswith(b"* BAD ")
    sock.sendall(b"a2 noop\r\n")
    assert recv_line(sock) == b"a2 OK NOOP completed\r\n"
    sock.sendall(b"a3 LOGOUT\r\n")
    assert recv_line(sock).startswith(b"* BYE")
    assert recv_line(sock) == b"a3 OK LOGOUT completed\r\n"
    expect_eof(sock)


def test_pop3_greeting_noop_unknown_quit(server):
    p = poplib.POP3(HOST, server.port(110), timeout=5)
    assert p.getwelcome() == b"+OK ringmail ready"
    assert p.noop().startswith(b"+OK")
    with pytest.raises(poplib.error_proto, match="-ERR"):
        p._shortcmd("FROBNICATE")
    assert p.noop().startswith(b"+OK")
    assert p.quit().startswith(b"+OK")


def test_pop3_raw_unknown_then_noop(server):
    sock = server.connect(110)
    assert recv_line(sock) == b"+OK ringmail ready\r\n"
    sock.sendall(b"FROBNICATE\r\n")
    assert recv_line(sock).startswith(b"-ERR ")
    sock.sendall(b"NOOP\r\n")
    assert recv_line(sock) == b"+OK\r\n"
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
    assert line == b"+OK ringmail ready\r\n"
    assert waited >= 0.95, f"greeted after {waited:.2f}s, before the dual-mode wait"
    assert waited < 3.0, f"greeted only after {waited:.2f}s"
    sock.sendall(b"NOOP\r\n")
    assert recv_line(sock) == b"+OK\r\n"
    sock.sendall(b"QUIT\r\n")
    assert recv_line(sock).startswith(b"+OK")
    expect_eof(sock)


def test_pop3_dual_port_client_speaking_first(server):
    """A plaintext client that talks before the wait ends is answered at
    once: its first command gets the greeting and then the reply."""
    sock = server.connect(995)
    t0 = time.monotonic()
    sock.sendall(b"NOOP\r\n")
    assert recv_line(sock) == b"+OK ringmail ready\r\n"
    assert recv_line(sock) == b"+OK\r\n"
    assert time.monotonic() - t0 < 0.9
    sock.sendall(b"QUIT\r\n")
    assert recv_line(sock).startswith(b"+OK")


def test_pop3_dual_port_with_poplib(server):
    p = poplib.POP3(HOST, server.port(995), timeout=5)
    assert p.getwelcome() == b"+OK ringmail ready"
    assert p.noop().startswith(b"+OK")
    assert p.quit().startswith(b"+OK")
