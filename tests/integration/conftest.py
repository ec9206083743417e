"""Shared fixtures for the integration tests: start the real `ringmail serve`
on free high ports with a temporary data dir, talk to it, stop it.

Use the `ringmail` fixture, a factory:

    def test_x(ringmail):
        srv = ringmail()                                # embedded default
        srv = ringmail(config="[limits]\\nmax_connections_per_ip = 3\\n")
        sock = srv.connect(25)                          # port 25 + offset
        line = srv.readline(sock)                       # b"220 ..."
        srv.port(143)                                   # the shifted port
        srv.proc, srv.log(), srv.data_dir
        srv.stop()                                      # SIGTERM, returns exit code

Every server the factory started is stopped at teardown (SIGTERM) and must
exit 0 within its grace, unless the test set `srv.expect_exit` to another
code or to None (do not check), and must have logged no `imap-no-reply` (an
IMAP command handler that returned without answering). A test that wants the process to fail on
its own uses `srv = ringmail(wait=False)` and `srv.wait_exit()`.

Set RINGMAIL_BIN to the binary (meson does); tests skip without it.
"""

import os
import random
import re
import resource
import signal
import socket
import subprocess
import tempfile
import time
import weakref

import pytest

DEFAULT_PORTS = (465, 587, 25, 26, 2025, 2525, 993, 143, 995, 110,
                 80, 443)  # auto-discovery over HTTP and HTTPS
HOST = "127.0.0.1"

# Bytes read past a line, per socket (socket objects take no attributes).
_readahead = weakref.WeakKeyDictionary()


def ringmail_bin():
    path = os.environ.get("RINGMAIL_BIN")
    if not path:
        pytest.skip("RINGMAIL_BIN is not set")
    if not os.access(path, os.X_OK):
        pytest.fail(f"RINGMAIL_BIN={path} is not executable")
    return path


def port_is_free(port):
    """True when nothing listens on port (IPv6 dual-stack and IPv4)."""
    families = [(socket.AF_INET, "0.0.0.0")]
    if socket.has_ipv6:
        families.insert(0, (socket.AF_INET6, "::"))
    for fam, addr in families:
        try:
            s = socket.socket(fam, socket.SOCK_STREAM)
        except OSError:
            continue
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind((addr, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def free_port_offset(ports=DEFAULT_PORTS, lo=20000, hi=40000, tries=200):
    """A random offset in lo..hi with every shifted port free."""
    for _ in range(tries):
        off = random.randint(lo, hi)
        if all(p + off <= 65535 and port_is_free(p + off) for p in ports):
            return off
    raise RuntimeError("no free port offset found")


def raise_nofile(want=65536):
    """Raises RLIMIT_NOFILE for this process (and the servers it starts
    afterwards). Returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for new in (want, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, max(new, hard)))
            return new
        except (ValueError, OSError):
            continue
    return soft


def run_cli(*args, timeout=15, **kw):
    """Runs `ringmail ARGS` to completion; returns CompletedProcess (text)."""
    return subprocess.run([ringmail_bin(), *args], capture_output=True, text=True,
                          timeout=timeout, **kw)


def recv_line(sock, timeout=5.0, buf=None):
    """Reads one line (through LF) from sock. Returns b"" on EOF.
    buf, when given, is a bytearray that keeps bytes read past the line."""
    if buf is None:
        buf = _readahead.setdefault(sock, bytearray())
    deadline = time.monotonic() + timeout
    while True:
        i = buf.find(b"\n")
        if i >= 0:
            line = bytes(buf[: i + 1])
            del buf[: i + 1]
            return line
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete line within {timeout}s (have {bytes(buf)!r})")
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            if buf:
                line = bytes(buf)
                buf.clear()
                return line
            return b""
        buf.extend(chunk)


def expect_eof(sock, timeout=5.0):
    """Asserts the peer closes: nothing but EOF (or a reset) arrives."""
    try:
        line = recv_line(sock, timeout)
    except (ConnectionResetError, BrokenPipeError):
        return
    assert line == b"", f"expected EOF, got {line!r}"


class Server:
    def __init__(self, tmp_path, config=None, threads=2, args=(), port_offset=None,
                 data_dir=None, ports=None):
        self.bin = ringmail_bin()
        self.tmp = tmp_path
        self.threads = threads
        self.args = list(args)
        self.config_path = None
        if config is not None:
            self.config_path = os.path.join(tmp_path, "ringmail.conf")
            with open(self.config_path, "w") as f:
                f.write(config)
        self.data_dir = data_dir or os.path.join(tmp_path, "data")
        self.ports = tuple(ports) if ports else self._configured_ports()
        self.offset = port_offset
        self.proc = None
        self.expect_exit = 0
        self.stop_timeout = 20.0
        self._stderr_path = os.path.join(tmp_path, "stderr.log")
        self._stdout_path = os.path.join(tmp_path, "stdout.log")
        self._socks = []

    # -- configuration ------------------------------------------------------

    def _configured_ports(self):
        """The listener ports of the effective configuration, as
        check-config prints them (so custom [listener] rows work)."""
        args = ["check-config"]
        if self.config_path:
            args += ["--config", self.config_path]
        r = run_cli(*args)
        if r.returncode != 0:
            return DEFAULT_PORTS  # the test wants a failing start; no readiness needed
        ports = tuple(int(m) for m in re.findall(r"^port = (\d+)", r.stdout, re.M))
        return ports or DEFAULT_PORTS

    def port(self, p):
        """The real port of configured port p."""
        return p + self.offset

    # -- process ------------------------------------------------------------

    def command(self):
        cmd = [self.bin, "serve", "--port-offset", str(self.offset), "--data", self.data_dir,
               "--threads", str(self.threads)]
        if self.config_path:
            cmd += ["--config", self.config_path]
        return cmd + self.args

    def start(self, wait=True, timeout=15.0):
        for attempt in range(3):
            if self.offset is None or attempt > 0:
                self.offset = free_port_offset(self.ports)
            self._err = open(self._stderr_path, "w")
            self._out = open(self._stdout_path, "w")
            self.proc = subprocess.Popen(self.command(), stdout=self._out, stderr=self._err,
                                         stdin=subprocess.DEVNULL)
            if not wait:
                return self
            if self.wait_ready(timeout):
                return self
            # Lost a race for the ports with another test run: try again.
            if self.proc.poll() is not None and "already in use" in self.log():
                continue
            break
        raise AssertionError(f"ringmail did not become ready (exit {self.proc.poll()}):\n"
                             f"{self.log()}")

    def wait_ready(self, timeout=15.0):
        """Waits until every port accepts a connection. False if the
        process exited first."""
        deadline = time.monotonic() + timeout
        pending = list(self.ports)
        probes = 0
        while pending:
            if self.proc.poll() is not None:
                return False
            p = pending[0]
            try:
                with socket.create_connection((HOST, self.port(p)), timeout=1):
                    pending.pop(0)
                    probes += 1
                    continue
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"port {p}+{self.offset} never accepted:\n{self.log()}")
            time.sleep(0.02)
        self.quiesce(probes)
        return True

    def quiesce(self, at_least=0, timeout=5.0):
        """Waits until the server logged at least `at_least` connects and a
        close for every connect (e.g. the readiness probes are gone and no
        longer count against connection limits). Needs log level info; with
        no connect line at all after 1 s it gives up quietly."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            log = self.log()
            connects, closes = log.count("event=connect"), log.count("event=close")
            if connects >= at_least and closes >= connects:
                # The counters drop when the close completes, just after the
                # close line is logged.
                time.sleep(0.1)
                return
            if connects == 0 and time.monotonic() - start > 1.0:
                return
            time.sleep(0.02)

    def log(self):
        """Everything the server wrote to stderr so far."""
        try:
            with open(self._stderr_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_lines(self, level=None, event=None):
        """Log lines, optionally only those of a level ("error") and/or an
        event ("close"). Format: TIME LEVEL [loop=N] [sid=N] event=E k=v..."""
        out = []
        for line in self.log().splitlines():
            f = line.split()
            if len(f) < 3:
                continue
            if level and f[1] != level:
                continue
            if event and f"event={event}" not in f:
                continue
            out.append(line)
        return out

    def stdout(self):
        with open(self._stdout_path, errors="replace") as f:
            return f.read()

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=15.0):
        """Waits for the process to end on its own; returns the exit code."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"ringmail did not exit within {timeout}s:\n{self.log()}")

    def stop(self, sig=signal.SIGTERM, timeout=None):
        """Sends sig (SIGTERM) and waits; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait_exit(self.stop_timeout if timeout is None else timeout)

    def close(self):
        for s in self._socks:
            try:
                s.close()
            except OSError:
                pass
        for f in (getattr(self, "_err", None), getattr(self, "_out", None)):
            if f:
                f.close()

    # -- clients -------------------------------------------------------------

    def connect(self, p, timeout=5.0, source=None):
        """A TCP connection to configured port p (closed at teardown)."""
        s = socket.create_connection((HOST, self.port(p)), timeout=timeout,
                                     source_address=(source, 0) if source else None)
        self._socks.append(s)
        return s

    @staticmethod
    def readline(sock, timeout=5.0):
        return recv_line(sock, timeout)

    @staticmethod
    def command_reply(sock, line, timeout=5.0):
        """Sends one command line (CRLF added) and returns one reply line."""
        sock.sendall(line + b"\r\n")
        return recv_line(sock, timeout)


@pytest.fixture
def ringmail(tmp_path):
    """Factory: ringmail(config=None, threads=2, args=(), wait=True, ...)."""
    started = []

    def start(config=None, wait=True, **kw):
        d = tempfile.mkdtemp(prefix="srv", dir=tmp_path)
        srv = Server(d, config=config, **kw)
        started.append(srv)
        return srv.start(wait=wait)

    yield start
    failures = []
    for srv in started:
        try:
            if srv.proc is None:
                continue
            running = srv.proc.poll() is None
            code = srv.stop()
            if srv.expect_exit is not None and running and code != srv.expect_exit:
                failures.append(f"exit code {code}, expected {srv.expect_exit}:\n{srv.log()}")
            # An IMAP command whose handler returned without a reply (the
            # dispatcher answered NO [SERVERBUG] for it): a bug, whichever
            # test's client sent it.
            silent = srv.log_lines(event="imap-no-reply")
            if silent:
                failures.append("commands ended without a reply:\n" + "\n".join(silent))
        finally:
            srv.close()
    assert not failures, "\n".join(failures)


@pytest.fixture
def server(ringmail):
    """A server on the embedded default configuration."""
    return ringmail()
