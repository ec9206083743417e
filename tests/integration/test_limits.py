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
    # A good command in between does not reset the count.
    s.sendall(b"NOOP\r\n" if port != 143 else b"t NOOP\r\n")
    assert recv_line(s) != b""
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
