"""`ringmail user add|del|passwd|list` (issue 4, point 4) against the real
binary: the password comes from standard input or a terminal prompt, never
from the command line; the passwd file stays Dovecot-compatible; a running
server picks up every change without a restart; a second `serve` on the
same data dir is refused while the first keeps serving."""

import os
import poplib
import pty
import select
import subprocess
import time

import pytest

from conftest import HOST, ringmail_bin

CONFIG = "[limits]\nauth_delay = 100ms\nauth_delay_max = 100ms\n"


def user(data, *args, password=None, stdin=None):
    """Runs `ringmail user ARGS --data DATA`; password (one line) on stdin."""
    if password is not None:
        stdin = (password + "\n").encode()
    return subprocess.run([ringmail_bin(), "user", *args, "--data", str(data)], input=stdin,
                          capture_output=True, timeout=30)


def listed(data):
    r = user(data, "list")
    assert r.returncode == 0, r.stderr
    return dict(line.split("\t") for line in r.stdout.decode().splitlines())


def can_login(srv, address, password):
    """True when POP3 USER/PASS on 110 succeeds."""
    p = poplib.POP3(HOST, srv.port(110), timeout=10)
    try:
        p.user(address)
        try:
            p.pass_(password)
        except poplib.error_proto:
            return False
        return True
    finally:
        try:
            p.quit()
        except (poplib.error_proto, OSError):
            pass


def wait_login(srv, address, password, want, timeout=5.0):
    """Waits until a login's outcome is `want` (the server rereads the
    passwd file when its mtime changes, within about a second)."""
    deadline = time.monotonic() + timeout
    while True:
        got = can_login(srv, address, password)
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_add_list_passwd_del(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    r = user(data, "add", "Alice@Example.com", password="first secret")
    assert r.returncode == 0, r.stderr
    # Dovecot's format: address:{SCHEME}hash, yescrypt for new passwords.
    line = (data / "passwd").read_text().strip()
    addr, _, field = line.partition(":")
    assert addr.lower() == "alice@example.com"
    assert field.startswith("{CRYPT}$y$"), field
    assert "first secret" not in line
    assert listed(data) == {addr: "YESCRYPT"}

    r = user(data, "add", "alice@example.com", password="again")
    assert r.returncode == 1
    assert b"already exists" in r.stderr

    before = (data / "passwd").read_text()
    r = user(data, "passwd", "alice@example.com", password="second secret")
    assert r.returncode == 0, r.stderr
    after = (data / "passwd").read_text()
    assert after != before and "second secret" not in after

    r = user(data, "passwd", "nobody@example.com", password="x")
    assert r.returncode == 1
    assert b"no user nobody@example.com" in r.stderr

    r = user(data, "del", "alice@example.com")
    assert r.returncode == 0, r.stderr
    assert listed(data) == {}
    r = user(data, "del", "alice@example.com")
    assert r.returncode == 1


def test_other_lines_kept_byte_for_byte(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    keep = "# operators' comment\nbob@example.com:{PLAIN}bob-pw\n\n"
    (data / "passwd").write_text(keep)
    assert user(data, "add", "carol@example.com", password="c").returncode == 0
    text = (data / "passwd").read_text()
    assert text.startswith(keep), text
    assert user(data, "del", "carol@example.com").returncode == 0
    assert (data / "passwd").read_text() == keep


@pytest.mark.parametrize("args", [
    ("add", "alice@example.com", "secret"),      # a password as an argument
    ("add", "alice@example.com", "--password"),  # or as an option
    ("add", "not-an-address"),
    ("list", "alice@example.com"),
    ("frob", "alice@example.com"),
])
def test_bad_command_lines_refused(tmp_path, args):
    data = tmp_path / "data"
    data.mkdir()
    r = user(data, *args, password="secret")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert not (data / "passwd").exists() or "secret" not in (data / "passwd").read_text()


def test_empty_or_missing_password_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    r = user(data, "add", "alice@example.com", stdin=b"")
    assert r.returncode == 1 and b"no password given" in r.stderr
    r = user(data, "add", "alice@example.com", password="")
    assert r.returncode == 1 and b"empty password refused" in r.stderr
    assert listed(data) == {}


def _run_on_pty(args, answers, timeout=30.0):
    """Runs the command with a terminal as stdin; writes each answer when a
    prompt ending in ':' has appeared. Returns (exit code, what the
    terminal showed)."""
    pid, fd = pty.fork()
    if pid == 0:  # child
        os.execv(args[0], args)
    shown = b""
    pending = list(answers)
    answered = 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(fd, 1024)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                if not chunk:
                    break
                shown += chunk
                # answer each prompt once: a prompt shown after the last
                # answer (the echoed newline of an answer must not count)
                if pending and shown[answered:].rstrip().endswith(b":"):
                    os.write(fd, pending.pop(0).encode() + b"\n")
                    answered = len(shown)
            else:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    return os.waitstatus_to_exitcode(status), shown
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError(f"no exit; terminal showed {shown!r}")
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status), shown
    finally:
        os.close(fd)


def test_terminal_prompt_twice_without_echo(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    args = [ringmail_bin(), "user", "add", "alice@example.com", "--data", str(data)]
    rc, shown = _run_on_pty(args, ["pty secret", "pty secret"])
    assert rc == 0, shown
    assert shown.count(b":") >= 2, shown  # two prompts
    assert b"pty secret" not in shown, "the password was echoed"
    assert "alice@example.com" in listed(data)

    args[2] = "passwd"
    rc, shown = _run_on_pty(args, ["one", "two"])
    assert rc == 1
    assert b"do not match" in shown
    assert b"one" not in shown.replace(b"done", b"")


def test_running_server_picks_up_changes(ringmail, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    assert user(data, "add", "alice@example.com", password="pw-one").returncode == 0
    srv = ringmail(config=CONFIG, data_dir=str(data))
    assert can_login(srv, "alice@example.com", "pw-one")

    assert user(data, "add", "bob@example.com", password="pw-bob").returncode == 0
    assert wait_login(srv, "bob@example.com", "pw-bob", True), "new user not picked up"

    assert user(data, "passwd", "alice@example.com", password="pw-two").returncode == 0
    assert wait_login(srv, "alice@example.com", "pw-two", True), "new password not taken"
    assert not can_login(srv, "alice@example.com", "pw-one"), "old password still works"

    assert user(data, "del", "bob@example.com").returncode == 0
    assert wait_login(srv, "bob@example.com", "pw-bob", False) is False, "deleted user logs in"
    assert can_login(srv, "alice@example.com", "pw-two")


def test_second_serve_on_same_data_dir_refused(ringmail, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    assert user(data, "add", "alice@example.com", password="pw").returncode == 0
    first = ringmail(config=CONFIG, data_dir=str(data))
    # Other ports, same data dir: the lock, not the ports, refuses it.
    second = ringmail(config=CONFIG, data_dir=str(data), wait=False)
    rc = second.wait_exit(15)
    assert rc != 0
    assert "is in use by another ringmail process" in second.log(), second.log()
    assert f"pid {first.proc.pid}" in second.log(), second.log()
    assert can_login(first, "alice@example.com", "pw")
