"""Connection caps, line length, and the bad-command limit."""

import time

import pytest

from conftest import expect_eof, recv_line


def test_per_ip_cap(ringmail):
    srv = ringmail(config="[limits]\nmax_connections_per_ip = 3\n")
    held = []
    for _ in range(3):
        s = srv.connect(25)
        assert recv_line(s) == b"220 mail.example.com ESMTP ringmail\r\n"
        held.append(s)
    fourth = srv.connect(25)
    line = recv_line(fourth)
    assert line.startswith(b"421 4.7.0 "), line
    expect_eof(fourth)
    # The cap counts across protocols: IMAP and POP3 are refused too.
    imap = srv.connect(143)
    assert recv_line(imap).startswith(b"* BYE ")
    expect_eof(imap)
    pop3 = srv.connect(110)
    assert recv_line(pop3).startswith(b"-ERR ")
    expect_eof(pop3)
    # The first three are served normally.
    for s in held:
        s.sendall(b"NOOP\r\n")
        assert recv_line(s).startswith(b"250 2.0.0")
    # When one leaves, a new one is let in (the count goes back down).
    held[0].sendall(b"QUIT\r\n")
    assert recv_line(held[0]).startswith(b"221 ")
    expect_eof(held[0])
    deadline = time.monotonic() + 3
    while True:
        s = srv.connect(25)
        line = recv_line(s)
        s.close()
        if line.startswith(b"220 "):
            break
        assert time.monotonic() < deadline, f"still refused after a slot freed: {line!r}"
        time.sleep(0.1)


def test_total_cap(ringmail):
    srv = ringmail(config="[limits]\nmax_connections = 2\n")
    a = srv.connect(25)
    b = srv.connect(143)
    assert recv_line(a).startswith(b"220 ")
    assert recv_line(b).startswith(b"* OK ")
    c = srv.connect(2525)
    assert recv_line(c).startswith(b"421 4.7.0 ")
    expect_eof(c)


def test_smtp_over_long_line_then_goes_on(server):
    s = server.connect(25)
    assert recv_line(s).startswith(b"220 ")
    line = b"NOOP " + b"a" * 593 + b"\r\n"
    assert len(line) == 600
    s.sendall(line)
    assert recv_line(s).startswith(b"500 5.5.6 ")
    s.sendall(b"NOOP\r\n")
    assert recv_line(s).startswith(b"250 2.0.0")
    # A long line arriving in pieces is one error, and its tail is not
    # taken for a command.
    s.sendall(b"NOOP " + b"b" * 400)
    time.sleep(0.1)
    s.sendall(b"c" * 300 + b" QUIT\r\nNOOP\r\n")
    assert recv_line(s).startswith(b"500 5.5.6 ")
    assert recv_line(s).startswith(b"250 2.0.0")
    # The longest legal line (512 octets with CRLF) is fine.
    s.sendall(b"NOOP " + b"d" * 505 + b"\r\n")
    assert recv_line(s).startswith(b"250 2.0.0")
    s.sendall(b"QUIT\r\n")
    assert recv_line(s).startswith(b"221 ")


# port, first bad command, reply prefix per bad command, final line prefix
BAD = [
    (25, b"FROB", b"50", b"421 4.7.0 "),
    (143, b"t FROB", b"t BAD ", b"* BYE "),
    (110, b"FROB", b"-ERR ", b"-ERR "),
]


@pytest.mark.parametrize("port,cmd,reply,final", BAD, ids=["smtp", "imap", "pop3"])
def test_ten_bad_commands_close(server, port, cmd, reply, final):
    s = server.connect(port)
    assert recv_line(s) != b""
    for i in range(9):
        s.sendall(cmd + b"\r\n")
        assert recv_line(s).startswith(reply), i
    # A good command in between does not reset the count in SMTP; IMAP and
    # POP3 count bad commands in a row (as Dovecot's imap and pop3 do): a
    # long-lived session is not closed for ten harmless quirks spread over
    # a day.
    s.sendall({25: b"NOOP\r\n", 143: b"t NOOP\r\n", 110: b"USER x@example.com\r\n"}[port])
    assert recv_line(s).startswith({25: b"250 ", 143: b"t OK ", 110: b"+OK"}[port])
    if port in (143, 110):
        for i in range(9):
            s.sendall(cmd + b"\r\n")
            assert recv_line(s).startswith(reply), i
    s.sendall(cmd + b"\r\n")
    assert recv_line(s).startswith(reply)
    last = recv_line(s)
    assert last.startswith(final), last
    if port == 25:
        assert b"too many" in last.lower(), last
    expect_eof(s)


def test_max_bad_commands_is_configurable(ringmail):
    srv = ringmail(config="[limits]\nmax_bad_commands = 2\n")
    s = srv.connect(25)
    assert recv_line(s).startswith(b"220 ")
    s.sendall(b"EHLO client.example\r\n")  # PIPELINING, then pipeline
    while not recv_line(s).startswith(b"250 "):
        pass
    s.sendall(b"FROB\r\nFROB\r\nNOOP\r\n")
    assert recv_line(s).startswith(b"50")
    assert recv_line(s).startswith(b"50")
    assert recv_line(s).startswith(b"421 4.7.0 ")
    expect_eof(s)  # the NOOP behind the limit is not answered


# ---- auth failure delay and MIME limits (issue 11 point 3) -----------------


def _server_with_alice(ringmail, tmp_path, config):
    data = tmp_path / "data-limits"
    data.mkdir()
    (data / "passwd").write_text("alice@example.com:{PLAIN}alice-Secret-1\n")
    return ringmail(config=config, data_dir=str(data))


def _pop3_fail(srv, source="127.0.0.1"):
    import socket
    s = socket.create_connection(("127.0.0.1", srv.port(110)), timeout=30,
                                 source_address=(source, 0))
    assert recv_line(s).startswith(b"+OK")
    s.sendall(b"USER alice@example.com\r\n")
    assert recv_line(s) == b"+OK\r\n"
    t0 = time.monotonic()
    s.sendall(b"PASS wrong\r\n")
    line = recv_line(s, timeout=30)
    took = time.monotonic() - t0
    assert line == b"-ERR [AUTH] Authentication failed\r\n", line
    s.close()
    return took


def test_auth_delay_settings(ringmail, tmp_path):
    """[limits] auth_delay / auth_delay_max: the first failure from an
    address waits auth_delay, each further one twice the last, up to
    auth_delay_max; another address starts afresh."""
    srv = _server_with_alice(ringmail, tmp_path,
                             "[limits]\nauth_delay = 300ms\nauth_delay_max = 600ms\n")
    times = [_pop3_fail(srv) for _ in range(4)]
    assert times[0] >= 0.28, times
    assert all(t >= 0.58 for t in times[1:]), times
    # capped at 600 ms (the default would be 2, 4, 8 s); generous margin
    assert all(t < 2.0 for t in times), times
    other = _pop3_fail(srv, source="127.0.0.5")
    assert 0.28 <= other < 2.0, other


def test_auth_delay_max_below_delay_refused(ringmail, tmp_path):
    import subprocess
    from conftest import ringmail_bin
    cfg = tmp_path / "bad.conf"
    cfg.write_text("[limits]\nauth_delay = 5s\nauth_delay_max = 1s\n")
    r = subprocess.run([ringmail_bin(), "check-config", "--config", str(cfg)],
                       capture_output=True, text=True)
    assert r.returncode == 2, r
    assert "auth_delay_max" in r.stderr, r.stderr


def _nested(levels):
    parts = []
    for i in range(levels):
        parts.append(f"Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n")
    parts.append("Content-Type: text/plain\r\n\r\ndeepest\r\n")
    for i in reversed(range(levels)):
        parts.append(f"--b{i}--\r\n")
    return "From: a@remote.example\r\nSubject: nested\r\nMIME-Version: 1.0\r\n" + "".join(parts)


def test_mime_limits_settings(ringmail, tmp_path):
    """[limits] mime_depth_max: a multipart at that depth is one opaque
    part in BODYSTRUCTURE; mime_parts_max: parts beyond it are not split.
    The message bytes are stored whole either way."""
    import imaplib
    import smtplib
    srv = _server_with_alice(ringmail, tmp_path,
                             "[limits]\nmime_depth_max = 2\nmime_parts_max = 4\n")
    deep = _nested(6)
    wide = ("From: a@remote.example\r\nSubject: wide\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=w\r\n\r\n" +
            "".join(f"--w\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n" for i in range(10)) +
            "--w--\r\n")
    with smtplib.SMTP("127.0.0.1", srv.port(25), timeout=30) as s:
        s.sendmail("a@remote.example", ["alice@example.com"], deep.encode())
        s.sendmail("a@remote.example", ["alice@example.com"], wide.encode())
    c = imaplib.IMAP4("127.0.0.1", srv.port(143), timeout=30)
    c.login("alice@example.com", "alice-Secret-1")
    c.select("INBOX", readonly=True)
    typ, data = c.fetch("1", "(BODYSTRUCTURE BODY.PEEK[])")
    assert typ == "OK", data
    head = data[0][0].decode()
    # depth 0 and 1 are split; the multipart at depth 2 (boundary b2) is
    # opaque: shown with one empty text/plain child, nothing below it
    assert '("boundary" "b2")' in head and '"b3"' not in head, head
    assert '"text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0' in head, head
    assert data[0][1].decode().replace("\r\n", "\n").endswith(deep.replace("\r\n", "\n")), data
    typ, data = c.fetch("2", "(BODYSTRUCTURE)")
    bs = data[0].decode()
    # the message itself + 3 parts split: at most 3 "part" leaves listed
    assert bs.upper().count('("TEXT" "PLAIN"') == 3, bs
    typ, data = c.fetch("2", "(BODY.PEEK[3])")
    assert data[0][1] == b"part 2", data
    typ, data = c.fetch("2", "(BODY.PEEK[4])")
    # part 4 was not split out: it does not exist (an empty section)
    assert typ == "OK" and data[0].endswith(b'BODY[4] "")'), data
    c.logout()


def test_imap_connections_per_user(ringmail, tmp_path):
    """[limits] max_connections_per_user: logged-in IMAP sessions of one
    user across both loops; one more gets NO [LIMIT] and stays logged out;
    a session that ends frees its place; other users are not affected."""
    import imaplib
    data = tmp_path / "data-peruser"
    data.mkdir()
    (data / "passwd").write_text("alice@example.com:{PLAIN}alice-Secret-1\n"
                                 "bob@example.com:{PLAIN}bob-Secret-2\n")
    srv = ringmail(config="[limits]\nmax_connections_per_user = 3\n", data_dir=str(data))

    def login(user, pw):
        c = imaplib.IMAP4("127.0.0.1", srv.port(143), timeout=30)
        c.login(user, pw)
        return c

    held = [login("alice@example.com", "alice-Secret-1") for _ in range(2)]
    held.append(login("ALICE@example.com", "alice-Secret-1"))  # same user
    extra = imaplib.IMAP4("127.0.0.1", srv.port(143), timeout=30)
    with pytest.raises(imaplib.IMAP4.error, match=r"\[LIMIT\]"):
        extra.login("alice@example.com", "alice-Secret-1")
    assert extra.state == "NONAUTH"
    typ, _ = extra.noop()
    assert typ == "OK"  # the connection goes on, logged out
    bob = login("bob@example.com", "bob-Secret-2")
    held[0].logout()
    deadline = time.monotonic() + 10
    while True:
        try:
            extra.login("alice@example.com", "alice-Secret-1")
            break
        except imaplib.IMAP4.error:
            assert time.monotonic() < deadline, "the ended session's place was not freed"
            time.sleep(0.1)
    assert extra.select("INBOX")[0] == "OK"
    for c in held[1:] + [extra, bob]:
        c.logout()
    wait = time.monotonic() + 10
    while "event=imap-user-limit" not in srv.log():
        assert time.monotonic() < wait
        time.sleep(0.05)


def test_imap_line_max_setting(ringmail, tmp_path):
    """[limits] imap_line_max: command text after login (64 KiB by default;
    12,000 bytes would pass). Over it: BAD [TOOBIG] and the session goes on."""
    import imaplib
    srv = _server_with_alice(ringmail, tmp_path, "[limits]\nimap_line_max = 10000\n")
    c = imaplib.IMAP4("127.0.0.1", srv.port(143), timeout=30)
    c.login("alice@example.com", "alice-Secret-1")
    c.select("INBOX")
    typ, data = c.search(None, "SUBJECT", '"' + "x" * 9000 + '"')
    assert typ == "OK", data
    with pytest.raises(imaplib.IMAP4.error, match="TOOBIG"):
        c.search(None, "SUBJECT", '"' + "x" * 12000 + '"')
    assert c.noop()[0] == "OK"
    c.logout()


def _imap_until(s, tag):
    lines = []
    while True:
        ln = recv_line(s, timeout=10)
        assert ln, f"EOF before {tag!r}: {lines[-3:]}"
        if ln.startswith(tag + b" "):
            return lines, ln
        lines.append(ln)


def test_imap_literal_max_setting(ringmail, tmp_path):
    """[limits] imap_literal_max: literal bytes per command outside APPEND
    (64 KiB by default). At the limit a literal is taken (`+`), one byte
    more gets BAD [TOOBIG] without `+` (a non-synchronising one: its data
    dropped, then BAD), counted over all of a command's literals, before
    and after login; the session goes on."""
    srv = _server_with_alice(ringmail, tmp_path, "[limits]\nimap_literal_max = 2000\n")
    s = srv.connect(143, timeout=30)
    assert recv_line(s).startswith(b"* OK")
    s.sendall(b"a LOGIN alice@example.com {2001}\r\n")
    assert recv_line(s) == b"a BAD [TOOBIG] Literal too large\r\n"
    s.sendall(b"b LOGIN alice@example.com {14}\r\n")
    assert recv_line(s).startswith(b"+ ")
    s.sendall(b"alice-Secret-1\r\n")
    assert _imap_until(s, b"b")[1].startswith(b"b OK")
    s.sendall(b"c SELECT INBOX\r\n")
    assert _imap_until(s, b"c")[1].startswith(b"c OK")

    s.sendall(b"d SEARCH TEXT {2000}\r\n")
    assert recv_line(s).startswith(b"+ ")
    s.sendall(b"x" * 2000 + b"\r\n")
    lines, t = _imap_until(s, b"d")
    assert t.startswith(b"d OK"), t
    assert lines == [b"* SEARCH\r\n"], lines

    s.sendall(b"e SEARCH TEXT {2001}\r\n")
    assert recv_line(s) == b"e BAD [TOOBIG] Literal too large\r\n"
    # 1000 + 1001 bytes in one command: the second literal is refused
    s.sendall(b"f SEARCH TEXT {1000}\r\n")
    assert recv_line(s).startswith(b"+ ")
    s.sendall(b"y" * 1000 + b" TEXT {1001}\r\n")
    assert recv_line(s) == b"f BAD [TOOBIG] Literal too large\r\n"
    s.sendall(b"g SEARCH TEXT {2001+}\r\n" + b"z" * 2001 + b"\r\n")
    assert recv_line(s) == b"g BAD [TOOBIG] Literal too large\r\n"
    s.sendall(b"h NOOP\r\n")
    assert _imap_until(s, b"h")[1].startswith(b"h OK")


def test_pop3_line_max_setting(ringmail, tmp_path):
    """[limits] pop3_line_max: the command line, CRLF included (255 by
    default, RFC 2449). Lowered to 128: 128 octets are taken, 129 get
    -ERR Line too long, before and after login; PASS (pass phrases) and
    AUTH stay exempt; the session goes on."""
    srv = _server_with_alice(ringmail, tmp_path,
                             "[limits]\npop3_line_max = 128\nauth_delay = 10ms\n"
                             "auth_delay_max = 20ms\n")
    s = srv.connect(110, timeout=30)
    assert recv_line(s).startswith(b"+OK")
    s.sendall(b"USER " + b"u" * 122 + b"\r\n")  # 129 octets
    assert recv_line(s) == b"-ERR Line too long\r\n"
    s.sendall(b"USER " + b"u" * 121 + b"\r\n")  # 128
    assert recv_line(s) == b"+OK\r\n"
    s.sendall(b"PASS " + b"p" * 300 + b"\r\n")
    assert recv_line(s, timeout=30) == b"-ERR [AUTH] Authentication failed\r\n"
    s.sendall(b"USER alice@example.com\r\nPASS alice-Secret-1\r\n")
    assert recv_line(s) == b"+OK\r\n"
    assert recv_line(s, timeout=30).startswith(b"+OK")
    s.sendall(b"NOOP" + b" " * 122 + b"\r\n")  # 128
    assert recv_line(s) == b"+OK\r\n"
    s.sendall(b"NOOP" + b" " * 123 + b"\r\n")  # 129
    assert recv_line(s) == b"-ERR Line too long\r\n"
    s.sendall(b"STAT\r\n")
    assert recv_line(s).startswith(b"+OK 0 ")
    s.sendall(b"QUIT\r\n")
    assert recv_line(s).startswith(b"+OK")
