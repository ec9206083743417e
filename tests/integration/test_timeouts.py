"""limits.prelogin_timeout: a client that says nothing is disconnected on
time (never early), while another client on the same server is served.

SMTP's pre-login timeout applies on the submission rows (587 here) before
AUTH; the MX rows wait smtp_timeout between commands (RFC 5321 4.5.3.2.7,
see test_smtp_adversarial.py)."""

import time

from conftest import expect_eof, recv_line

CONFIG = "[limits]\nprelogin_timeout = 1s\n"

# port, greeting prefix, the timeout line's prefix
SILENT = (
    (587, b"220 ", b"421 4.4.2 "),
    (143, b"* OK ", b"* BYE "),
    (110, b"+OK ", b"-ERR "),
)


def test_silent_clients_are_disconnected_while_others_are_served(ringmail):
    srv = ringmail(config=CONFIG)
    socks = []
    for port, greeting, _ in SILENT:
        t0 = time.monotonic()
        s = srv.connect(port)
        assert recv_line(s).startswith(greeting)
        socks.append((t0, s))

    # A busy client on the same server: a NOOP every 200 ms for 2 s, each
    # answered at once. Its own timer restarts with each command.
    busy = srv.connect(25)
    assert recv_line(busy).startswith(b"220 ")
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        t = time.monotonic()
        busy.sendall(b"NOOP\r\n")
        assert recv_line(busy, timeout=1.0).startswith(b"250 2.0.0")
        assert time.monotonic() - t < 0.5
        time.sleep(0.2)

    # More than 2 s after they connected, the silent ones already hold
    # their timeout line, then EOF.
    for (t0, s), (port, _, want) in zip(socks, SILENT):
        assert time.monotonic() - t0 > 2.0
        line = recv_line(s, timeout=0.5)
        assert line.startswith(want), f"port {port}: {line!r}"
        expect_eof(s, timeout=1.0)
    busy.sendall(b"QUIT\r\n")
    assert recv_line(busy).startswith(b"221 ")


def test_timeout_is_on_time(ringmail):
    srv = ringmail(config=CONFIG)
    t0 = time.monotonic()
    s = srv.connect(587)
    assert recv_line(s).startswith(b"220 mail.example.com")
    line = recv_line(s, timeout=5.0)
    waited = time.monotonic() - t0
    assert line.startswith(b"421 4.4.2 mail.example.com ")
    assert waited >= 0.98, f"disconnected after {waited:.2f}s, before the 1 s timeout"
    assert waited <= 2.5, f"disconnected only after {waited:.2f}s"
    expect_eof(s, timeout=2.0)
    assert srv.log_lines(event="close")


def test_activity_restarts_the_timeout(ringmail):
    srv = ringmail(config=CONFIG)
    s = srv.connect(587)
    assert recv_line(s).startswith(b"220 ")
    # 0.7 s of silence, a command, 0.7 s more: still connected (1.4 s > 1 s).
    time.sleep(0.7)
    s.sendall(b"NOOP\r\n")
    assert recv_line(s).startswith(b"250 2.0.0")
    time.sleep(0.7)
    s.sendall(b"NOOP\r\n")
    assert recv_line(s).startswith(b"250 2.0.0")
    t = time.monotonic()
    assert recv_line(s, timeout=3.0).startswith(b"421 4.4.2 ")
    assert time.monotonic() - t >= 0.9
