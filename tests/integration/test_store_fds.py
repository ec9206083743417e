"""File descriptors per logged-in user (docs/store.md "Descriptors"): a
folder's files are open only while a session uses it, so a user with
INBOX selected holds INBOX's three (directory, log, active segment), its
folder list's two and its connection's socket, not the ~20 it took when
every folder of a loaded user (five auto folders besides INBOX) held its
files. A folder whose files were closed opens them again when a session
selects it; what was appended there is still there for the next session.
"""
import os
import time

from conftest import HOST  # noqa: F401
from test_imap import Raw

N = 20
# socket + folders.log + the user's directory + INBOX's three
PER_USER = 6
IDLE_USER = 5


def users():
    return {f"fd{i}@example.com": f"fd-Secret-{i}" for i in range(N)}


def nfds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_nfds(pid, want=None, timeout=5.0):
    """The server's descriptor count once it stopped changing (closes run
    on the rings behind the replies); with want, as soon as it is at most
    want."""
    deadline = time.monotonic() + timeout
    last = nfds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        n = nfds(pid)
        if (want is not None and n <= want) or (want is None and n == last):
            return n
        last = n
    return last


def login(srv, user, pw):
    r = Raw(srv)
    _, t = r.cmd(f'LOGIN {user} "{pw}"')
    assert b" OK " in t, t
    return r


def ok(r, cmd):
    lines, t = r.cmd(cmd)
    assert b" OK " in t, (cmd, t, lines)
    return lines


def test_a_user_holds_only_the_selected_folders_descriptors(ringmail, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    creds = users()
    with open(data / "passwd", "w") as f:
        for u, p in creds.items():
            f.write(f"{u}:{{PLAIN}}{p}\n")
    srv = ringmail(data_dir=str(data))
    pid = srv.proc.pid
    base = settled_nfds(pid)

    sessions = []
    for u, p in creds.items():
        r = login(srv, u, p)
        lines = ok(r, "SELECT INBOX")
        assert b"* 0 EXISTS\r\n" in lines, lines
        sessions.append(r)
    # every account got its five auto folders at this first login
    lines = ok(sessions[0], 'LIST "" "*"')
    assert len(lines) == 6, lines
    per_user = (settled_nfds(pid, base + N * PER_USER) - base) / N
    print(f"descriptors: base {base}, per logged-in user with INBOX selected {per_user:.2f}")
    assert per_user <= PER_USER, f"{per_user:.1f} descriptors per user, want {PER_USER}"

    # a folder nobody had open: SELECT reopens its files, APPEND goes there
    r = sessions[0]
    ok(r, "SELECT Archive")
    msg = b"From: fd0@example.com\r\nSubject: kept\r\n\r\nin the archive\r\n"
    _, t = r.cmd(b"APPEND Archive {%d+}\r\n" % len(msg) + msg)
    assert b" OK " in t, t
    ok(r, "LOGOUT")
    for s in sessions[1:]:
        ok(s, "LOGOUT")
    # logged out: the users stay loaded (user_cache), with their folder
    # lists' two descriptors each and INBOX's three (kept open: every
    # delivery and login uses it), no other folder's
    left = settled_nfds(pid, base + N * IDLE_USER)
    print(f"descriptors: per idle loaded user {(left - base) / N:.2f}")
    assert left - base <= N * IDLE_USER, f"{left - base} descriptors for {N} idle users"

    user, pw = next(iter(creds.items()))

    def archived(srv):
        r = login(srv, user, pw)
        lines = ok(r, "SELECT Archive")
        assert b"* 1 EXISTS\r\n" in lines, lines
        lines = ok(r, "FETCH 1 BODY.PEEK[]")
        assert msg in b"".join(lines), lines
        ok(r, "LOGOUT")

    archived(srv)
    # and after a restart, from the logs on disk
    srv.stop()
    archived(ringmail(data_dir=str(data)))
