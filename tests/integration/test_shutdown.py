"""SIGTERM drains: idle sessions are told goodbye in their protocol and the
process exits 0; a client that does not read is cut at shutdown_grace."""

import signal
import socket
import time

from conftest import expect_eof, recv_line


def test_sigterm_says_goodbye_and_exits_0(ringmail):
    srv = ringmail()
    smtp = srv.connect(25)
    assert recv_line(smtp).startswith(b"220 ")
    imap = srv.connect(143)
    assert recv_line(imap).startswith(b"* OK ")
    pop3 = srv.connect(110)
    assert recv_line(pop3).startswith(b"+OK ")

    t0 = time.monotonic()
    srv.send_signal(signal.SIGTERM)
    assert recv_line(smtp).startswith(b"421 4.3.2 mail.example.com ")
    expect_eof(smtp)
    assert recv_line(imap).startswith(b"* BYE ")
    expect_eof(imap)
    assert recv_line(pop3).startswith(b"-ERR ")
    expect_eof(pop3)
    assert srv.wait_exit(timeout=10) == 0, srv.log()
    # Idle sessions need no grace: they are gone as soon as the goodbye is out.
    assert time.monotonic() - t0 < 5.0
    assert srv.log_lines(event="stopped")


def test_sigterm_stops_accepting(ringmail):
    srv = ringmail(config="[server]\nshutdown_grace = 3s\n" + STUCK_LIMITS)
    # A client that keeps the server in its grace period (it does not read).
    hold = _stuck_client(srv)
    srv.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert srv.proc.poll() is None, "exited before the stuck client was cut"
    # New connections are refused or closed without a greeting.
    try:
        s = socket.create_connection(("127.0.0.1", srv.port(25)), timeout=2)
        try:
            s.settimeout(2)
            data = s.recv(100)
            assert data == b"" or data.startswith(b"421"), data
        except (ConnectionResetError, socket.timeout):
            pass
        finally:
            s.close()
    except ConnectionRefusedError:
        pass
    # How the stuck client ends is test_grace_cuts_a_client_that_does_not_read's
    # business; here only the refusal matters.
    srv.expect_exit = None
    srv.proc.kill()
    srv.proc.wait()
    hold.close()


# Lets replies pile up in the server's send queue (beyond the kernel's
# socket buffer, up to 4 MB on loopback) without hitting the queue limit.
STUCK_LIMITS = "[limits]\nsend_queue_max = 64m\n"


def _stuck_client(srv, flood_bytes=3_000_000):
    """A connection whose replies pile up in the server: it sends many
    NOOPs (6 bytes in, 14 bytes out) and never reads, with a tiny receive
    buffer. Needs STUCK_LIMITS."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    s.connect(("127.0.0.1", srv.port(25)))
    srv._socks.append(s)
    # The greeting, then EHLO: it grants PIPELINING. A client that talks
    # before the greeting, or floods commands without PIPELINING, is an
    # early talker and is cut at once.
    assert recv_line(s).startswith(b"220 ")
    s.sendall(b"EHLO stuck.example\r\n")
    time.sleep(0.2)
    s.setblocking(False)
    chunk = b"NOOP\r\n" * 1000
    sent = 0
    deadline = time.monotonic() + 5
    while sent < flood_bytes and time.monotonic() < deadline:
        try:
            sent += s.send(chunk)
        except BlockingIOError:
            time.sleep(0.01)
    # Let the server read it all and queue the replies.
    time.sleep(0.5)
    return s


def test_grace_cuts_a_client_that_does_not_read(ringmail):
    srv = ringmail(config="[server]\nshutdown_grace = 1s\n" + STUCK_LIMITS)
    stuck = _stuck_client(srv)
    # An idle client as well: it is told goodbye at once.
    idle = srv.connect(25)
    assert recv_line(idle).startswith(b"220 ")

    t0 = time.monotonic()
    srv.send_signal(signal.SIGTERM)
    assert recv_line(idle).startswith(b"421 4.3.2 ")
    code = srv.wait_exit(timeout=10)
    took = time.monotonic() - t0
    assert code == 0, srv.log()
    assert took >= 0.9, f"exited after {took:.2f}s: the stuck client was not stuck"
    assert took < 5.0, f"exited after {took:.2f}s, grace is 1 s"
    assert srv.log_lines(event="shutdown-grace-over"), srv.log()[-3000:]
    assert [l for l in srv.log_lines(event="close") if "reason=shutdown" in l]
    stuck.close()


def test_sigint_also_drains(ringmail):
    srv = ringmail()
    s = srv.connect(2525)
    assert recv_line(s).startswith(b"220 ")
    srv.send_signal(signal.SIGINT)
    assert recv_line(s).startswith(b"421 4.3.2 ")
    expect_eof(s)
    assert srv.wait_exit(timeout=10) == 0
