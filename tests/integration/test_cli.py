"""The command line: version, check-config, configuration errors, a second
instance on the same ports, privileged ports, dropping privileges, SIGHUP
with command-line overrides, and what the log never holds (a password)."""

import base64
import imaplib
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import struct
import subprocess
import tempfile
import time

import pytest

from conftest import DEFAULT_PORTS, Server, recv_line, ringmail_bin, run_cli

SRC_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def project_version():
    with open(os.path.join(SRC_ROOT, "meson.build")) as f:
        m = re.search(r"version:\s*'([^']+)'", f.read())
    assert m, "no version in meson.build"
    return m.group(1)


def test_version():
    r = run_cli("version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"ringmail {project_version()} "), r.stdout
    # The allocator is named with its version, and it is the one linked in.
    assert re.fullmatch(rf"ringmail {re.escape(project_version())} \(jemalloc \d+\.\d+\.\d+\S*\)\n",
                        r.stdout), r.stdout
    ldd = subprocess.run(["ldd", ringmail_bin()], capture_output=True, text=True)
    # A sanitizer build's allocator is ASan's (it intercepts malloc).
    if ldd.returncode == 0 and "libasan" not in ldd.stdout:
        assert "libjemalloc" in ldd.stdout, ldd.stdout


def test_unknown_command_exits_2():
    r = run_cli("frobnicate")
    assert r.returncode == 2
    assert "unknown command" in r.stderr


def test_check_config_prints_effective_default():
    r = run_cli("check-config")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "[listener smtps]" in out
    assert "port = 465" in out
    ports = [int(p) for p in re.findall(r"^port = (\d+)", out, re.M)]
    assert sorted(ports) == sorted(DEFAULT_PORTS)
    assert "\nhostname = mail.example.com\n" in out
    assert "\ndomains = example.com\n" in out
    assert "\ndata = ./ringmail-data\n" in out
    assert "\nport_offset = 0\n" in out
    assert "\ncheckpoint_after = 4194304\n" in out
    assert "\nauto_folders = Sent Drafts Trash Junk Archive\n" in out
    ncpu = os.sysconf("SC_NPROCESSORS_ONLN")
    assert f"\nthreads = 0   # one loop per online CPU: {ncpu} here\n" in out, out
    # Every listener row on every address.
    rows = out.split("\n[listener ")[1:]
    assert len(rows) == len(DEFAULT_PORTS)
    for row in rows:
        assert "\naddress = *   # every address, IPv6 and IPv4\n" in row, row


def test_check_config_applies_overrides(tmp_path):
    r = run_cli("check-config", "--port-offset", "10000", "--hostname", "mx.example.net",
                "--threads", "3")
    assert r.returncode == 0, r.stderr
    assert "port_offset = 10000" in r.stdout
    assert "# listening on 10465" in r.stdout
    assert "hostname = mx.example.net" in r.stdout
    assert "threads = 3" in r.stdout


def test_data_option(tmp_path):
    """--data names the data directory: check-config prints it, serve
    creates it and keeps its lock, certificate and mailboxes there."""
    data = tmp_path / "some" / "where"
    r = run_cli("check-config", "--data", str(data))
    assert r.returncode == 0, r.stderr
    assert f"\ndata = {data}\n" in r.stdout
    assert f"self-signed one is generated in {data}/tls/" in r.stdout
    # A file's data line loses to the option.
    conf = tmp_path / "d.conf"
    conf.write_text("[server]\ndata = /nonexistent/from-the-file\n")
    r = run_cli("check-config", "--config", str(conf), "--data", str(data))
    assert r.returncode == 0, r.stderr
    assert f"\ndata = {data}\n" in r.stdout and "from-the-file" not in r.stdout
    srv = Server(str(tmp_path), data_dir=str(data), threads=1)
    srv.start()
    try:
        s = srv.connect(25)
        assert recv_line(s).startswith(b"220 ")
        s.close()
        assert os.path.isdir(data)
        assert os.path.isfile(data / "lock")
        assert os.path.isfile(data / "tls" / "cert.pem")
    finally:
        assert srv.stop() == 0, srv.log()
        srv.close()


def test_check_config_output_is_a_valid_config(tmp_path):
    conf = tmp_path / "in.conf"
    conf.write_text("[server]\nhostname = a.example\n[limits]\nprelogin_timeout = 90s\n")
    r = run_cli("check-config", "--config", str(conf))
    assert r.returncode == 0, r.stderr
    again = tmp_path / "again.conf"
    again.write_text(r.stdout)
    r2 = run_cli("check-config", "--config", str(again))
    assert r2.returncode == 0, r2.stderr
    # Same effective configuration, apart from the source comment.
    assert r.stdout.split("\n", 1)[1] == r2.stdout.split("\n", 1)[1]


BAD_CONFIGS = [
    ("[server]\nhostname = ok.example\nbogus = 1\n", 3),
    ("[limits]\nprelogin_timeout = soon\n", 2),
    ("\n[listener a]\nport = 2000\n[listener b]\nport = 2000\n", 4),
    ("[nonsense]\n", 1),
]


@pytest.mark.parametrize("text,line", BAD_CONFIGS)
def test_bad_config_check_config(tmp_path, text, line):
    conf = tmp_path / "bad.conf"
    conf.write_text(text)
    r = run_cli("check-config", "--config", str(conf))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert f"{conf}:{line}: " in r.stderr, r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize("text,line", BAD_CONFIGS)
def test_bad_config_serve(tmp_path, text, line):
    conf = tmp_path / "bad.conf"
    conf.write_text(text)
    r = run_cli("serve", "--config", str(conf), "--port-offset", "30000", "--data",
                str(tmp_path / "data"), timeout=10)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert f"{conf}:{line}: " in r.stderr, r.stderr


def test_bad_command_line_values():
    for args in (["--port-offset", "70000"], ["--threads", "x"], ["--hostname", "bad_name"]):
        r = run_cli("check-config", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("ringmail: "), r.stderr


def test_missing_config_file(tmp_path):
    r = run_cli("check-config", "--config", str(tmp_path / "nope.conf"))
    assert r.returncode == 2
    assert "nope.conf" in r.stderr


def test_second_instance_fails_first_keeps_serving(ringmail, tmp_path):
    first = ringmail()
    r = run_cli("serve", "--port-offset", str(first.offset), "--data", str(tmp_path / "d2"),
                "--threads", "1", timeout=10)
    assert r.returncode != 0
    assert "already in use" in r.stderr, r.stderr
    assert "--port-offset" in r.stderr, r.stderr
    # The first one is untouched and serves on every plaintext port.
    for p in (25, 143, 110):
        s = first.connect(p)
        assert recv_line(s) != b""
        s.close()
    assert first.proc.poll() is None


def _nobody_can_run(binary):
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        binary, "version"], capture_output=True, text=True, timeout=10)
    return r.returncode == 0


def test_privileged_port_without_privilege():
    binary = ringmail_bin()
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to nobody with setpriv")
    if not shutil.which("setpriv"):
        pytest.skip("setpriv is missing")
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        if int(f.read()) <= min(DEFAULT_PORTS):
            pytest.skip("ip_unprivileged_port_start lets anyone bind the low ports")
    if not _nobody_can_run(binary):
        pytest.skip(f"{binary} is not executable by nobody")
    # pytest's tmp_path sits under a root-only directory: use one in /tmp.
    top = tempfile.mkdtemp(prefix="ringmail-nobody-")
    try:
        os.chown(top, 65534, 65534)
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            binary, "serve", "--data", os.path.join(top, "data")],
                           capture_output=True, text=True, timeout=15)
    finally:
        shutil.rmtree(top)
    assert r.returncode != 0, r.stderr
    assert "--port-offset" in r.stderr, r.stderr
    assert "CAP_NET_BIND_SERVICE" in r.stderr, r.stderr


def _status_ids(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def test_drops_privileges_to_configured_user(ringmail):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    nobody = pwd.getpwnam("nobody")
    srv = ringmail(config="[server]\nuser = nobody\n")
    assert _status_ids(srv.proc.pid, "Uid") == [nobody.pw_uid] * 4
    assert _status_ids(srv.proc.pid, "Gid") == [nobody.pw_gid] * 4
    assert _status_ids(srv.proc.pid, "Groups") == []
    # Every thread, not only the main one.
    for tid in os.listdir(f"/proc/{srv.proc.pid}/task"):
        assert _status_ids(f"{srv.proc.pid}/task/{tid}", "Uid") == [nobody.pw_uid] * 4
    # It still serves, and the data directory belongs to the user now.
    s = srv.connect(25)
    assert recv_line(s).startswith(b"220 ")
    assert os.stat(srv.data_dir).st_uid == nobody.pw_uid
    assert srv.log_lines(event="privileges-dropped")


# ---- io_uring unavailable ---------------------------------------------------

@pytest.mark.parametrize("errno_name,expect", [
    ("ENOSYS", "seccomp"),
    ("EPERM", "permission denied"),
    ("EINVAL", "the kernel lacks SINGLE_ISSUER/DEFER_TASKRUN (ringmail needs Linux 6.1 or later)"),
])
def test_io_uring_unavailable_names_the_cause(tmp_path, errno_name, expect):
    """A seccomp filter (as a container runtime may install) blocks
    io_uring_setup, or the kernel is too old for the setup flags (EINVAL):
    serve exits non-zero with a message naming the cause."""
    tool = os.environ.get("RINGMAIL_NO_IO_URING")
    if not tool or not os.path.exists(tool):
        pytest.skip("tests/tools/no_io_uring not built")
    r = subprocess.run([tool, "-e", errno_name, ringmail_bin(), "serve", "--port-offset", "31000",
                        "--data", str(tmp_path / "data")],
                       capture_output=True, timeout=20)
    err = r.stderr.decode()
    assert r.returncode != 0
    assert "io_uring is unavailable" in err, err
    assert expect in err, err


# ---- SIGHUP: the file again, with the command line on top ----------------

def _wait_log(srv, pattern, count=1, timeout=10.0):
    """Waits until the log holds `count` matches of regex pattern."""
    deadline = time.monotonic() + timeout
    while True:
        found = re.findall(pattern, srv.log())
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no {count} x {pattern!r} in the log:\n{srv.log()[-4000:]}")
        time.sleep(0.02)


def _reload(srv, nth):
    """SIGHUP, then waits until every loop switched to the new snapshot
    (the nth reload of this server)."""
    srv.send_signal(signal.SIGHUP)
    _wait_log(srv, r"loop=\d+ event=reloaded ", count=nth * srv.threads)


def _smtp(srv, *lines):
    """A new SMTP connection on 25: the greeting, then one reply line per
    command (the last line of a multi-line reply)."""
    s = srv.connect(25)
    out = [recv_line(s)]
    for line in lines:
        s.sendall(line + b"\r\n")
        r = recv_line(s)
        while r[3:4] == b"-":
            r = recv_line(s)
        out.append(r)
    s.sendall(b"QUIT\r\n")
    assert recv_line(s).startswith(b"221 ")
    s.close()
    return out


def _reset(srv):
    """A connection closed with a RST after its greeting: the loop's recv
    fails with ECONNRESET, logged as recv-error only at level debug."""
    s = srv.connect(25)
    assert recv_line(s).startswith(b"220 ")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def test_sighup_keeps_command_line_overrides(ringmail):
    """The file says one thing, the command line another: the command line
    wins at start and still wins after SIGHUP (hostname, domain, log level)."""
    conf = ("[server]\nhostname = file.example\ndomains = file.example\n"
            "log_level = warn\n")
    srv = ringmail(config=conf, args=["--hostname", "mx.example.net", "--domain", "example.org",
                                      "--log-level", "debug"])

    def check(nth_reset):
        greet, _, _, rcpt_local, rcpt_file = _smtp(srv, b"EHLO client.example",
                                                   b"MAIL FROM:<a@remote.example>",
                                                   b"RCPT TO:<nobody@example.org>",
                                                   b"RCPT TO:<nobody@file.example>")
        assert greet == b"220 mx.example.net ESMTP ringmail\r\n", greet
        # example.org is local (unknown user); file.example is not (relay).
        assert rcpt_local.startswith(b"550 5.1.1 "), rcpt_local
        assert rcpt_file.startswith(b"554 5.7.1 "), rcpt_file
        _reset(srv)
        _wait_log(srv, r"debug loop=\d+ sid=[0-9a-f]+ event=recv-error error=", count=nth_reset)

    check(1)
    _reload(srv, 1)
    check(2)
    assert _wait_log(srv, r"event=reload source=\S+ hostname=mx.example.net log_level=debug")
    # Still true after a second reload.
    _reload(srv, 2)
    check(3)


def test_sighup_applies_file_changes_to_new_connections(ringmail):
    """A hostname changed in the file takes effect at SIGHUP for new
    connections; a connection opened before keeps its snapshot and works."""
    srv = ringmail(config="[server]\nhostname = one.example\n")
    old = srv.connect(25)
    assert recv_line(old) == b"220 one.example ESMTP ringmail\r\n"
    with open(srv.config_path, "w") as f:
        f.write("[server]\nhostname = two.example\n")
    _reload(srv, 1)
    assert _smtp(srv)[0] == b"220 two.example ESMTP ringmail\r\n"
    # The old connection goes on, with the name it was greeted with.
    old.sendall(b"EHLO client.example\r\n")
    assert recv_line(old).startswith(b"250-one.example ")
    while recv_line(old)[3:4] == b"-":
        pass
    assert srv.command_reply(old, b"NOOP").startswith(b"250 ")
    assert srv.command_reply(old, b"QUIT").startswith(b"221 ")
    # A file that no longer parses keeps the current configuration.
    with open(srv.config_path, "w") as f:
        f.write("[server]\nhostname = three.example\nbogus = 1\n")
    srv.send_signal(signal.SIGHUP)
    _wait_log(srv, r"event=reload-failed error=\"\S+:3: unknown key 'bogus'")
    assert _smtp(srv)[0] == b"220 two.example ESMTP ringmail\r\n"


# ---- the log never holds a password -----------------------------------------

LOG_USERS = {"alice@example.com": "Alice-Pw-7f3a9c", "bob@example.com": "Bob-Pw-2e81d0"}
WRONG_PW = "Wrong-Pw-b61c4e"


def _secrets():
    """Every form a password takes on the wire: as typed, base64 (AUTH
    LOGIN), and inside the base64 of an AUTH PLAIN / AUTHENTICATE blob."""
    out = []
    for user, pw in list(LOG_USERS.items()) + [("alice@example.com", WRONG_PW)]:
        out += [pw, base64.b64encode(pw.encode()).decode(),
                base64.b64encode(f"\0{user}\0{pw}".encode()).decode()]
    return out


@pytest.fixture
def debug_srv(ringmail, tmp_path):
    """A server at log level debug with LOG_USERS in its passwd file and
    short failure delays."""
    data = tmp_path / "logdata"
    data.mkdir()
    (data / "passwd").write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in LOG_USERS.items()))
    return ringmail(config="[limits]\nauth_delay = 100ms\nauth_delay_max = 100ms\n",
                    data_dir=str(data), args=["--log-level", "debug"])


def _assert_no_password_logged(srv):
    # The level really is debug: a reset connection logs recv-error.
    _reset(srv)
    _wait_log(srv, r"debug loop=\d+ sid=[0-9a-f]+ event=recv-error ")
    srv.quiesce()
    log = srv.log()
    for secret in _secrets():
        assert secret not in log, f"{secret!r} in the log"


def test_imap_login_never_logged(debug_srv):
    srv = debug_srv
    # LOGIN with quoted strings, as a literal, wrong and right.
    for user, pw in (("alice@example.com", WRONG_PW), *LOG_USERS.items()):
        c = imaplib.IMAP4("127.0.0.1", srv.port(143), timeout=10)
        if pw == WRONG_PW:
            with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
                c.login(user, pw)
        else:
            assert c.login(user, pw)[0] == "OK"
        c.logout()
    s = srv.connect(143)
    assert recv_line(s).startswith(b"* OK ")
    pw = LOG_USERS["bob@example.com"].encode()
    s.sendall(b"a LOGIN bob@example.com {%d}\r\n" % len(pw))
    assert recv_line(s).startswith(b"+ ")
    s.sendall(pw + b"\r\n")
    assert recv_line(s).startswith(b"a OK ")
    # AUTHENTICATE PLAIN, with an initial response and after a continuation.
    blob = base64.b64encode(b"\0alice@example.com\0" + LOG_USERS["alice@example.com"].encode())
    s2 = srv.connect(143)
    assert recv_line(s2).startswith(b"* OK ")
    s2.sendall(b"b AUTHENTICATE PLAIN " + blob + b"\r\n")
    assert recv_line(s2).startswith(b"b OK ")
    s3 = srv.connect(143)
    assert recv_line(s3).startswith(b"* OK ")
    s3.sendall(b"c AUTHENTICATE PLAIN\r\n")
    assert recv_line(s3).startswith(b"+")
    s3.sendall(base64.b64encode(b"\0alice@example.com\0" + WRONG_PW.encode()) + b"\r\n")
    assert b"AUTHENTICATIONFAILED" in recv_line(s3)
    for sock in (s, s2, s3):
        sock.close()
    _assert_no_password_logged(srv)


def test_smtp_auth_never_logged(debug_srv):
    srv = debug_srv
    for mech in ("PLAIN", "LOGIN"):
        for user, pw in (("alice@example.com", WRONG_PW), *LOG_USERS.items()):
            c = smtplib.SMTP("127.0.0.1", srv.port(25), timeout=10)
            c.ehlo("client.example")
            assert mech in c.esmtp_features.get("auth", "").split(), c.esmtp_features
            c.user, c.password = user, pw
            # PLAIN with an initial response; LOGIN as username, password.
            auth = lambda: c.auth(mech, getattr(c, "auth_" + mech.lower()),
                                  initial_response_ok=(mech == "PLAIN"))
            if pw == WRONG_PW:
                with pytest.raises(smtplib.SMTPAuthenticationError) as e:
                    auth()
                assert e.value.smtp_code == 535
            else:
                assert auth()[0] == 235
            c.quit()
    # AUTH PLAIN without an initial response: the blob on its own line.
    s = srv.connect(25)
    assert recv_line(s).startswith(b"220 ")
    s.sendall(b"EHLO client.example\r\n")
    while recv_line(s)[3:4] == b"-":
        pass
    s.sendall(b"AUTH PLAIN\r\n")
    assert recv_line(s) == b"334 \r\n"
    s.sendall(base64.b64encode(b"\0bob@example.com\0" + LOG_USERS["bob@example.com"].encode())
              + b"\r\n")
    assert recv_line(s).startswith(b"235 ")
    s.close()
    _assert_no_password_logged(srv)
