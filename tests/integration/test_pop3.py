"""POP3 against the real binary (issue 7): Python's poplib on 110 (plain,
STLS), 995 (implicit TLS and the dual mode), raw sockets for byte-level
checks, curl pop3s://, and fetchmail downloading and deleting everything.

Messages are delivered over SMTP (port 25, local delivery to INBOX); users
are lines of DATA/passwd written before the server starts.
"""
import base64
import os
import poplib
import shutil
import smtplib
import socket
import ssl
import stat
import subprocess
import time

import pytest

from conftest import HOST, expect_eof, recv_line

USERS = {
    "alice@example.com": "alice-Secret-1",
    "bob@example.com": "bob Secret with spaces",
    "carol@example.com": "carol-Secret-3",
}


# ---- helpers -------------------------------------------------------------


@pytest.fixture
def pop3srv(ringmail, tmp_path):
    """Factory: a server with USERS in its passwd file; config as for
    the ringmail fixture."""

    def start(config=None, **kw):
        data = tmp_path / f"data{len(os.listdir(tmp_path))}"
        data.mkdir()
        with open(data / "passwd", "w") as f:
            for u, p in USERS.items():
                f.write(f"{u}:{{PLAIN}}{p}\n")
        return ringmail(config=config, data_dir=str(data), **kw)

    return start


def deliver(srv, to, body, subject="test"):
    """Delivers one message over SMTP; returns the bytes sent (CRLF)."""
    msg = (f"From: sender@remote.example\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n"
           ).encode() + body
    with smtplib.SMTP(HOST, srv.port(25), timeout=10) as s:
        s.sendmail("sender@remote.example", [to], msg)
    return msg


def tls_context(srv):
    ctx = ssl.create_default_context(cafile=os.path.join(srv.data_dir, "tls", "cert.pem"))
    ctx.check_hostname = False
    return ctx


def pop(srv, port=110, user="alice@example.com", tls=None):
    """A logged-in poplib client. tls: None (plain), "stls", "implicit"."""
    if tls == "implicit":
        p = poplib.POP3_SSL(HOST, srv.port(port), context=tls_context(srv), timeout=10)
    else:
        p = poplib.POP3(HOST, srv.port(port), timeout=10)
        if tls == "stls":
            p.stls(context=tls_context(srv))
    if user:
        p.user(user)
        p.pass_(USERS[user])
    return p


class Raw:
    """A line-level POP3 client over a socket (optionally from a source
    address, so failure delays of one test do not slow the others)."""

    def __init__(self, srv, port=110, source=None, greet=True):
        self.sock = srv.connect(port, timeout=10, source=source)
        self.greeting = recv_line(self.sock, 10) if greet else None

    def send(self, data):
        self.sock.sendall(data)

    def line(self, timeout=10):
        return recv_line(self.sock, timeout)

    def cmd(self, line, timeout=10):
        self.send(line.encode() + b"\r\n" if isinstance(line, str) else line + b"\r\n")
        return self.line(timeout)

    def multi(self, timeout=10):
        """The body of a multi-line reply, raw (still dot-stuffed), without
        the terminating ".\\r\\n"."""
        out = bytearray()
        while True:
            ln = self.line(timeout)
            assert ln, "EOF inside a multi-line reply"
            if ln == b".\r\n":
                return bytes(out)
            out += ln

    def login(self, user="alice@example.com"):
        assert self.cmd(f"USER {user}").startswith(b"+OK")
        r = self.cmd(f"PASS {USERS[user]}")
        assert r.startswith(b"+OK"), r
        return r


def drop(p):
    """Drops a poplib connection without QUIT."""
    p.sock.shutdown(socket.SHUT_RDWR)
    p.close()


def unstuff(raw):
    return b"".join(l[1:] if l.startswith(b".") else l for l in raw.splitlines(True))


def retr_bytes(p, n):
    """The message as poplib gives it, joined back with CRLF."""
    resp, lines, octets = p.retr(n)
    return b"".join(l + b"\r\n" for l in lines)


# ---- login and the ports --------------------------------------------------


def test_capa_user_pass_on_110(pop3srv):
    srv = pop3srv()
    p = poplib.POP3(HOST, srv.port(110), timeout=10)
    assert p.getwelcome().startswith(b"+OK")
    capa = p.capa()
    for c in ("TOP", "UIDL", "USER", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "STLS"):
        assert c in capa, capa
    assert capa["SASL"] == ["PLAIN"]
    assert capa["IMPLEMENTATION"] == ["ringmail"]
    assert p.user("alice@example.com").startswith(b"+OK")
    assert p.pass_(USERS["alice@example.com"]).startswith(b"+OK")
    assert p.stat() == (0, 0)
    capa = p.capa()
    assert "USER" not in capa and "STLS" not in capa and "TOP" in capa
    assert p.quit().startswith(b"+OK")


def test_password_with_spaces(pop3srv):
    srv = pop3srv()
    p = pop(srv, user="bob@example.com")
    assert p.stat() == (0, 0)
    p.quit()


def test_auth_plain_initial_response_and_continuation(pop3srv):
    srv = pop3srv()
    cred = base64.b64encode(b"\0alice@example.com\0" + USERS["alice@example.com"].encode())
    c = Raw(srv)
    assert c.cmd(b"AUTH PLAIN " + cred).startswith(b"+OK")
    assert c.cmd("STAT") == b"+OK 0 0\r\n"
    assert c.cmd("QUIT").startswith(b"+OK")

    c = Raw(srv)
    assert c.cmd("AUTH PLAIN") == b"+ \r\n"
    assert c.cmd(cred).startswith(b"+OK")
    assert c.cmd("QUIT").startswith(b"+OK")

    # authzid equal to authcid is accepted
    cred2 = base64.b64encode(b"alice@example.com\0alice@example.com\0" +
                             USERS["alice@example.com"].encode())
    c = Raw(srv)
    assert c.cmd(b"AUTH PLAIN " + cred2).startswith(b"+OK")
    assert c.cmd("QUIT").startswith(b"+OK")

    # "*" aborts; the session goes on
    c = Raw(srv)
    assert c.cmd("AUTH PLAIN") == b"+ \r\n"
    assert c.cmd("*").startswith(b"-ERR")
    assert c.cmd("USER alice@example.com") == b"+OK\r\n"
    # the mechanism listing, and an unknown mechanism
    c.send(b"AUTH\r\n")
    assert c.line().startswith(b"+OK")
    assert c.multi() == b"PLAIN\r\n"
    assert c.cmd("AUTH CRAM-MD5").startswith(b"-ERR")


def test_stls_on_110(pop3srv):
    srv = pop3srv()
    p = poplib.POP3(HOST, srv.port(110), timeout=10)
    p.stls(context=tls_context(srv))
    capa = p.capa()
    assert "STLS" not in capa and "USER" in capa
    p.user("alice@example.com")
    p.pass_(USERS["alice@example.com"])
    assert p.stat() == (0, 0)
    # STLS again is refused
    with pytest.raises(poplib.error_proto):
        p._shortcmd("STLS")
    p.quit()


def test_stls_discards_injected_commands(pop3srv):
    srv = pop3srv()
    c = Raw(srv)
    # USER behind STLS in the same packet must not survive the upgrade
    c.send(b"STLS\r\nUSER alice@example.com\r\n")
    assert c.line().startswith(b"+OK")
    tls = tls_context(srv).wrap_socket(c.sock, server_hostname="mail.example.com")
    tls.sendall(b"PASS " + USERS["alice@example.com"].encode() + b"\r\n")
    r = recv_line(tls, 10, bytearray())
    assert r.startswith(b"-ERR"), r
    tls.close()


def test_implicit_tls_995(pop3srv):
    srv = pop3srv()
    deliver(srv, "alice@example.com", b"over TLS\r\n")
    p = pop(srv, 995, tls="implicit")
    assert p.stat()[0] == 1
    assert b"over TLS\r\n" in retr_bytes(p, 1)
    assert "STLS" not in p.capa()
    p.quit()


def test_dual_mode_995_plaintext_needs_stls(pop3srv):
    srv = pop3srv()
    t0 = time.monotonic()
    c = Raw(srv, 995)  # sends nothing: the plaintext greeting after dual_wait
    assert time.monotonic() - t0 >= 0.5
    assert c.greeting.startswith(b"+OK"), c.greeting
    c.send(b"CAPA\r\n")
    assert c.line().startswith(b"+OK")
    capa = c.multi().split(b"\r\n")
    assert b"STLS" in capa and b"USER" not in capa and not any(
        l.startswith(b"SASL") for l in capa)
    assert c.cmd("USER alice@example.com") == b"-ERR [AUTH] TLS required\r\n"
    assert c.cmd("PASS x") == b"-ERR [AUTH] TLS required\r\n"
    cred = base64.b64encode(b"\0alice@example.com\0" + USERS["alice@example.com"].encode())
    assert c.cmd(b"AUTH PLAIN " + cred) == b"-ERR [AUTH] TLS required\r\n"
    # before TLS only CAPA, STLS and QUIT work (RFC 1939: NOOP needs login)
    assert c.cmd("NOOP") == b"-ERR Command not valid in this state\r\n"
    assert c.cmd("STAT").startswith(b"-ERR")
    assert c.cmd("STLS").startswith(b"+OK")
    tls = tls_context(srv).wrap_socket(c.sock, server_hostname="mail.example.com")
    buf = bytearray()
    tls.sendall(b"USER alice@example.com\r\n")
    assert recv_line(tls, 10, buf).startswith(b"+OK")
    tls.sendall(b"PASS " + USERS["alice@example.com"].encode() + b"\r\n")
    assert recv_line(tls, 10, buf).startswith(b"+OK")
    tls.sendall(b"QUIT\r\n")
    assert recv_line(tls, 10, buf).startswith(b"+OK")
    tls.close()


def test_plaintext_auth_no(pop3srv):
    srv = pop3srv(config="[limits]\nplaintext_auth = no\n")
    c = Raw(srv)
    assert c.cmd("USER alice@example.com") == b"-ERR [AUTH] TLS required\r\n"
    p = pop(srv, tls="stls")
    p.quit()


def test_wrong_password_and_unknown_user_look_the_same(pop3srv):
    srv = pop3srv()
    replies, times = [], []
    for src, user, pw in (("127.0.0.2", "alice@example.com", "wrong"),
                          ("127.0.0.3", "nobody@example.com", "wrong")):
        c = Raw(srv, source=src)
        assert c.cmd(f"USER {user}") == b"+OK\r\n"  # no enumeration
        t0 = time.monotonic()
        replies.append(c.cmd(f"PASS {pw}", timeout=30))
        times.append(time.monotonic() - t0)
        # back in AUTHORIZATION: USER/PASS again works
        assert c.cmd("USER alice@example.com") == b"+OK\r\n"
        assert c.cmd(f"PASS {USERS['alice@example.com']}").startswith(b"+OK")
        c.cmd("QUIT")
    assert replies[0] == replies[1] == b"-ERR [AUTH] Authentication failed\r\n"
    assert min(times) >= 1.5, times  # the authenticator's failure delay
    assert "alice-Secret-1" not in srv.log() and "PASS" not in srv.log()


def test_pass_without_user_and_wrong_state(pop3srv):
    srv = pop3srv()
    c = Raw(srv)
    assert c.cmd("PASS x").startswith(b"-ERR")
    assert c.cmd("STAT").startswith(b"-ERR")
    assert c.cmd("RETR 1").startswith(b"-ERR")
    c.login()
    assert c.cmd("USER bob@example.com").startswith(b"-ERR")
    assert c.cmd("STLS").startswith(b"-ERR")
    assert c.cmd("NOOP") == b"+OK\r\n"


# ---- the maildrop -------------------------------------------------------------


def test_stat_list_retr_top_uidl(pop3srv):
    srv = pop3srv()
    sent = [deliver(srv, "alice@example.com", f"body {i}\r\nline 2\r\nline 3\r\n".encode(),
                    subject=f"m{i}") for i in range(3)]
    p = pop(srv)
    n, size = p.stat()
    assert n == 3
    resp, listing, _ = p.list()
    sizes = [int(l.split()[1]) for l in listing]
    assert sum(sizes) == size
    for i in range(3):
        m = retr_bytes(p, i + 1)
        assert m.endswith(sent[i]), m  # our Received: line, then the message
        assert len(m) == sizes[i]  # the RFC 822 size (CRLF) is the store's
        assert p.list(i + 1) == f"+OK {i + 1} {sizes[i]}".encode()
    resp, lines, _ = p.top(2, 1)
    top = b"".join(l + b"\r\n" for l in lines)
    assert top.endswith(b"Subject: m1\r\n\r\nbody 1\r\n"), top
    resp, lines, _ = p.top(2, 0)
    assert lines[-1] == b"" and b"body 1" not in b"".join(lines)
    resp, lines, _ = p.top(2, 100)
    assert b"".join(l + b"\r\n" for l in lines) == retr_bytes(p, 2)
    resp, uidl, _ = p.uidl()
    uids = [l.split()[1] for l in uidl]
    assert len(set(uids)) == 3 and all(len(u) == 16 for u in uids)
    assert p.uidl(3).split()[2] == uids[2]
    for bad in ("RETR 0", "RETR 4", "RETR x", "LIST 99", "TOP 1", "TOP 1 x", "DELE"):
        with pytest.raises(poplib.error_proto):
            p._shortcmd(bad)
    p.quit()


def test_dele_quit_deletes_rset_and_drop_keep(pop3srv):
    srv = pop3srv()
    for i in range(4):
        deliver(srv, "alice@example.com", f"message {i}\r\n".encode())
    p = pop(srv)
    resp, uidl, _ = p.uidl()
    uids = [l.split()[1] for l in uidl]
    # DELE then a dropped connection: nothing is deleted
    p.dele(1)
    drop(p)
    time.sleep(0.3)
    p = pop(srv)
    assert p.stat()[0] == 4
    # DELE, RSET: nothing is deleted
    p.dele(1)
    p.dele(2)
    assert p.stat()[0] == 2
    with pytest.raises(poplib.error_proto):
        p.retr(1)  # deleted in this session
    with pytest.raises(poplib.error_proto):
        p.dele(1)
    assert p.rset().startswith(b"+OK")
    assert p.stat()[0] == 4
    # DELE 2 and 4, QUIT: they are gone, the others keep their UIDLs
    p.dele(2)
    p.dele(4)
    assert b"2 messages deleted" in p.quit()
    p = pop(srv)
    resp, uidl, _ = p.uidl()
    assert [l.split()[1] for l in uidl] == [uids[0], uids[2]]
    assert [l.split()[0] for l in uidl] == [b"1", b"2"]
    p.quit()


def test_uidl_stable_across_sessions_and_new_mail(pop3srv):
    srv = pop3srv()
    deliver(srv, "alice@example.com", b"one\r\n")
    deliver(srv, "alice@example.com", b"two\r\n")
    p = pop(srv)
    first = p.uidl()[1]
    p.quit()
    deliver(srv, "alice@example.com", b"three\r\n")
    p = pop(srv)
    second = p.uidl()[1]
    assert second[:2] == first and len(second) == 3
    p.quit()
    # after a restart of the server too
    srv.stop()
    srv.start()
    p = pop(srv)
    assert p.uidl()[1] == second
    p.quit()


def test_uidl_stable_across_compaction(pop3srv):
    """Expunged space is reclaimed by the server on its own (small segments
    and threshold here); the messages that stay keep their UIDL and bytes,
    also after a restart."""
    srv = pop3srv(config="[server]\nsegment_max = 8k\ncompact_after = 16k\n")
    bodies = [(f"message {i}\r\n".encode() + (b"x" * 78 + b"\r\n") * 25) for i in range(30)]
    sent = [deliver(srv, "alice@example.com", b) for b in bodies]
    inbox = os.path.join(srv.data_dir, "mail", "alice@example.com", "f0")
    segs_before = sorted(f for f in os.listdir(inbox) if f.startswith("s"))
    assert len(segs_before) >= 4, segs_before  # the bytes rolled over several files
    p = pop(srv)
    uidl = [l.split()[1] for l in p.uidl()[1]]
    assert len(uidl) == 30
    for n in range(1, 25):
        p.dele(n)
    p.quit()
    deadline = time.monotonic() + 10
    while "event=store-compacted" not in srv.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "event=store-compacted" in srv.log(), srv.log()[-3000:]
    segs_after = sorted(f for f in os.listdir(inbox) if f.startswith("s"))
    assert "s1" not in segs_after and len(segs_after) < len(segs_before), (segs_before,
                                                                           segs_after)
    for restart in (False, True):
        if restart:
            srv.stop()
            srv.start()
        p = pop(srv)
        assert [l.split()[1] for l in p.uidl()[1]] == uidl[24:]
        for n in range(1, 7):
            assert retr_bytes(p, n).endswith(sent[23 + n]), n
        p.quit()


def test_snapshot_new_mail_not_seen_until_next_login(pop3srv):
    srv = pop3srv()
    deliver(srv, "alice@example.com", b"one\r\n")
    p = pop(srv)
    deliver(srv, "alice@example.com", b"two\r\n")  # deliveries go on under the lock
    assert p.stat()[0] == 1
    p.quit()
    p = pop(srv)
    assert p.stat()[0] == 2
    p.quit()


def test_reconnect_right_after_quit_is_not_in_use(pop3srv):
    """The lock goes before QUIT's +OK does: a client that reconnects the
    moment it reads +OK (on either loop) finds the maildrop free, with or
    without deletions to carry out."""
    srv = pop3srv(threads=2)
    for k in range(12):
        deliver(srv, "alice@example.com", b"body %d\r\n" % k)
    for i in range(24):
        c = Raw(srv)
        assert c.cmd("USER alice@example.com") == b"+OK\r\n"
        r = c.cmd(f"PASS {USERS['alice@example.com']}")
        assert r.startswith(b"+OK"), (i, r)
        if i % 2:
            assert c.cmd("DELE 1").startswith(b"+OK")
        assert c.cmd("QUIT").startswith(b"+OK")


def test_in_use_lock(pop3srv):
    srv = pop3srv(threads=2)
    first = pop(srv)
    for _ in range(4):  # on either loop thread
        c = Raw(srv)
        assert c.cmd("USER alice@example.com") == b"+OK\r\n"
        r = c.cmd(f"PASS {USERS['alice@example.com']}")
        assert r == b"-ERR [IN-USE] maildrop already locked\r\n", r
        # other users are not affected
        assert c.cmd("USER carol@example.com") == b"+OK\r\n"
        assert c.cmd(f"PASS {USERS['carol@example.com']}").startswith(b"+OK")
        c.cmd("QUIT")
    first.quit()
    second = pop(srv)
    second.quit()
    # a dropped connection releases the lock too
    third = pop(srv)
    drop(third)
    deadline = time.monotonic() + 5
    while True:
        c = Raw(srv)
        c.cmd("USER alice@example.com")
        r = c.cmd(f"PASS {USERS['alice@example.com']}")
        if r.startswith(b"+OK") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert r.startswith(b"+OK"), r


def test_dot_stuffing(pop3srv):
    srv = pop3srv()
    body = b".starts with a dot\r\n..two dots\r\n.\r\nend.\r\n."  # no final CRLF
    sent = deliver(srv, "alice@example.com", body)
    c = Raw(srv)
    c.login()
    r = c.cmd("RETR 1")
    assert r.startswith(b"+OK")
    raw = c.multi()
    assert b"\r\n..starts with a dot\r\n...two dots\r\n..\r\nend.\r\n" in raw, raw
    # poplib undoes the stuffing; the store got what smtplib sent (+CRLF)
    p_msg = unstuff(raw)
    assert p_msg.endswith(sent + b"\r\n") or p_msg.endswith(sent), p_msg
    assert c.cmd("TOP 1 2").startswith(b"+OK")
    top = c.multi()
    assert top.endswith(b"\r\n\r\n..starts with a dot\r\n...two dots\r\n"), top


def imap_append_raw(srv, msg, user="alice@example.com"):
    """APPENDs msg to INBOX over a raw IMAP connection, as it is (imaplib
    would turn bare LFs into CRLF)."""
    s = srv.connect(143, timeout=10)
    assert recv_line(s).startswith(b"* OK")
    s.sendall(f'a LOGIN "{user}" "{USERS[user]}"\r\n'.encode())
    while not (ln := recv_line(s)).startswith(b"a "):
        pass
    assert ln.startswith(b"a OK"), ln
    s.sendall(b"b APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\n")
    while not (ln := recv_line(s)).startswith(b"b "):
        pass
    assert ln.startswith(b"b OK"), ln
    s.sendall(b"c LOGOUT\r\n")


def test_bare_lf_message_goes_out_with_crlf(pop3srv):
    """A message appended over IMAP with bare LF line ends (and a bare CR)
    is sent by RETR and TOP with CRLF line ends, dot-stuffed after a bare
    LF too, and terminated by CRLF "." CRLF: curl and poplib read it."""
    srv = pop3srv()
    msg = b"Subject: lf\n\nline1\n.\nline3\rstill3\nlast"
    imap_append_raw(srv, msg)
    c = Raw(srv)
    c.login()
    # LIST gives the stored size (the exception README documents): RETR
    # then sends one more octet per bare LF
    assert c.cmd("LIST 1") == b"+OK 1 %d\r\n" % len(msg)
    assert c.cmd("RETR 1").startswith(b"+OK")
    raw = c.multi()
    assert raw == b"Subject: lf\r\n\r\nline1\r\n..\r\nline3\rstill3\r\nlast\r\n", raw
    assert c.cmd("TOP 1 1").startswith(b"+OK")
    assert c.multi() == b"Subject: lf\r\n\r\nline1\r\n"
    assert c.cmd("QUIT").startswith(b"+OK")
    p = pop(srv)
    assert p.retr(1)[1] == [b"Subject: lf", b"", b"line1", b".", b"line3\rstill3", b"last"]
    p.quit()
    if shutil.which("curl"):
        url = f"pop3://127.0.0.1:{srv.port(110)}/1"
        r = subprocess.run(["curl", "-sS", "-m", "20", "-u",
                            f"alice@example.com:{USERS['alice@example.com']}", url],
                           capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert r.stdout == b"Subject: lf\r\n\r\nline1\r\n.\r\nline3\rstill3\r\nlast\r\n"
    # IMAP still returns the bytes as they were appended
    import imaplib
    m = imaplib.IMAP4(HOST, srv.port(143), timeout=10)
    m.login("alice@example.com", USERS["alice@example.com"])
    m.select("INBOX")
    typ, data = m.fetch("1", "(BODY.PEEK[])")
    assert data[0][1] == msg
    m.logout()


def test_autologout_after_login(pop3srv):
    """pop3_autologout disconnects a logged-in client that says nothing
    (and deletes nothing it marked); one that keeps talking stays."""
    srv = pop3srv(config="[limits]\npop3_autologout = 2s\n")
    deliver(srv, "alice@example.com", b"keep me\r\n")
    idle = Raw(srv)
    idle.login()
    assert idle.cmd("DELE 1").startswith(b"+OK")
    busy = Raw(srv, source="127.0.0.2")
    busy.login("bob@example.com")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3.5:
        assert busy.cmd("NOOP").startswith(b"+OK")
        time.sleep(0.5)
    assert idle.line(timeout=3).startswith(b"-ERR"), "a goodbye line"
    assert 1.5 < time.monotonic() - t0 < 6
    expect_eof(idle.sock, timeout=3)
    assert busy.cmd("STAT").startswith(b"+OK")
    assert busy.cmd("QUIT").startswith(b"+OK")
    p = pop(srv)
    assert p.stat()[0] == 1, "an autologout must not run the UPDATE state"
    p.quit()


def test_imap_and_pop3_see_each_others_changes(pop3srv):
    """What POP3 deleted is gone for IMAP (a selected session hears
    EXPUNGE); what IMAP expunged is gone for the next POP3 session; while
    POP3 holds the maildrop, IMAP logs in, appends and expunges, and SMTP
    delivers; a RETR of a message IMAP expunged meanwhile is a clean -ERR."""
    import imaplib
    srv = pop3srv()
    for i in range(5):
        deliver(srv, "alice@example.com", f"msg {i}\r\n".encode(), subject=f"m{i}")
    m = imaplib.IMAP4(HOST, srv.port(143), timeout=10)
    m.login("alice@example.com", USERS["alice@example.com"])
    assert m.select("INBOX")[1] == [b"5"]

    # POP3 deletes 1 and 2: gone for IMAP, the selected session is told
    p = pop(srv)
    p.dele(1)
    p.dele(2)
    p.quit()
    typ, _ = m.noop()
    untagged = m.untagged_responses
    assert untagged.get("EXPUNGE"), untagged
    typ, data = m.search(None, "ALL")
    assert data == [b"1 2 3"], data
    typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    subjects = [d[1].strip() for d in data if isinstance(d, tuple)]
    assert subjects == [b"Subject: m2", b"Subject: m3", b"Subject: m4"], subjects

    # IMAP expunges m2: gone for the next POP3 session
    m.store("1", "+FLAGS", "\\Deleted")
    m.expunge()
    p = pop(srv)
    assert p.stat()[0] == 2
    assert retr_bytes(p, 1).endswith(b"msg 3\r\n")

    # POP3 holds the lock: IMAP and SMTP go on
    m2 = imaplib.IMAP4(HOST, srv.port(143), timeout=10)
    m2.login("alice@example.com", USERS["alice@example.com"])
    m2.select("INBOX")
    assert m2.append("INBOX", None, None, b"Subject: appended\r\n\r\nx\r\n")[0] == "OK"
    deliver(srv, "alice@example.com", b"delivered during pop3\r\n", subject="m5")
    # IMAP expunges what POP3 still lists as 2 (msg 4)
    typ, data = m2.search(None, "HEADER", "SUBJECT", "m4")
    m2.store(data[0].decode(), "+FLAGS", "\\Deleted")
    m2.expunge()
    c_resp = None
    try:
        p.retr(2)
    except poplib.error_proto as e:
        c_resp = e.args[0]
    assert c_resp is not None and c_resp.startswith(b"-ERR"), c_resp
    assert p.noop().startswith(b"+OK")  # the session goes on
    assert p.stat()[0] == 2  # its maildrop is the one it logged in to
    p.quit()
    p = pop(srv)
    assert p.stat()[0] == 3  # msg 3, appended, delivered
    p.quit()
    m2.logout()
    m.logout()


def test_quit_is_durable_before_its_ok(pop3srv):
    """+OK to QUIT after DELE means the deletions are on disk: a SIGKILL
    right after it loses nothing and brings nothing back."""
    srv = pop3srv()
    sent = [deliver(srv, "alice@example.com", f"body {i}\r\n".encode()) for i in range(6)]
    c = Raw(srv)
    c.login()
    for n in (1, 3, 5):
        assert c.cmd(f"DELE {n}").startswith(b"+OK")
    r = c.cmd("QUIT")
    assert r.startswith(b"+OK"), r
    srv.proc.kill()
    srv.proc.wait()
    srv.expect_exit = None
    srv.start()
    srv.expect_exit = 0
    p = pop(srv)
    assert p.stat()[0] == 3
    got = [retr_bytes(p, n) for n in (1, 2, 3)]
    for g, want in zip(got, (sent[1], sent[3], sent[5])):
        assert g.endswith(want), (g, want)
    p.quit()


def test_message_without_final_crlf_gets_one(pop3srv):
    """TOP of a message cut in its last line ends the line before ".". """
    srv = pop3srv()
    deliver(srv, "alice@example.com", b"l1\r\nl2\r\n")
    c = Raw(srv)
    c.login()
    assert c.cmd("TOP 1 1").startswith(b"+OK")
    assert c.multi().endswith(b"\r\n\r\nl1\r\n")


def test_large_message_streams(pop3srv):
    """A message several times the send queue limit streams through: RETR
    reads on only as the socket takes what is queued, so a slow reader
    still gets all of it, and the server never holds the message."""
    srv = pop3srv(config="[limits]\nsend_queue_max = 128k\n")
    line = b"." + b"x" * 75 + b"\r\n"  # every line stuffed: the reply grows
    body = line * (900 * 1024 // len(line))
    sent = deliver(srv, "alice@example.com", body)
    c = Raw(srv)
    c.login()
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    r = c.cmd("RETR 1")
    size = int(r.split()[1])
    time.sleep(1.0)  # let the server hit its high-water mark
    raw = c.multi(timeout=60)
    assert len(raw) > 900 * 1024
    msg = unstuff(raw)
    assert len(msg) == size
    assert msg.endswith(sent)
    assert c.cmd("NOOP") == b"+OK\r\n"
    assert "send-queue-full" not in srv.log()


def test_pipelining(pop3srv):
    srv = pop3srv()
    deliver(srv, "alice@example.com", b"one\r\n")
    deliver(srv, "alice@example.com", b"two\r\n")
    c = Raw(srv)
    c.send(b"USER alice@example.com\r\nPASS " + USERS["alice@example.com"].encode() +
           b"\r\nSTAT\r\nRETR 1\r\nLIST\r\nTOP 2 0\r\nUIDL 2\r\nNOOP\r\nQUIT\r\n")
    assert c.line() == b"+OK\r\n"
    assert c.line().startswith(b"+OK Logged in")
    assert c.line().startswith(b"+OK 2 ")
    assert c.line().startswith(b"+OK")
    assert c.multi().endswith(b"one\r\n")
    assert c.line().startswith(b"+OK 2 messages")
    assert c.multi().count(b"\r\n") == 2
    assert c.line().startswith(b"+OK")
    assert b"Subject" in c.multi()
    assert c.line().startswith(b"+OK 2 ")
    assert c.line() == b"+OK\r\n"
    assert c.line().startswith(b"+OK")
    expect_eof(c.sock)


# ---- limits -------------------------------------------------------------------


def test_over_long_line(pop3srv):
    srv = pop3srv()
    c = Raw(srv)
    c.login()
    # 255 octets with CRLF is the limit (RFC 2449)
    assert c.cmd("NOOP" + " " * 249) == b"+OK\r\n"
    assert c.cmd("NOOP" + " " * 250) == b"-ERR Line too long\r\n"
    assert c.cmd(b"X" * 100000) == b"-ERR Line too long\r\n"
    assert c.cmd("NOOP") == b"+OK\r\n"
    # AUTH lines may be longer: a 1500-octet response is parsed (and fails)
    cred = base64.b64encode(b"\0alice@example.com\0" + b"p" * 1000)
    assert len(cred) > 255
    c2 = Raw(srv, source="127.0.0.4")
    assert c2.cmd(b"AUTH PLAIN " + cred, timeout=30) == b"-ERR [AUTH] Authentication failed\r\n"


def test_bad_commands_disconnect(pop3srv):
    srv = pop3srv(config="[limits]\nmax_bad_commands = 3\n")
    c = Raw(srv)
    # bad commands in a row count (as in Dovecot's pop3): +OK ends a run
    for _ in range(3):
        assert c.cmd("FOO") == b"-ERR Unknown command\r\n"
        assert c.cmd("STAT") == b"-ERR Command not valid in this state\r\n"
        assert c.cmd("USER alice@example.com") == b"+OK\r\n"
    assert c.cmd("FOO") == b"-ERR Unknown command\r\n"
    assert c.cmd("STAT") == b"-ERR Command not valid in this state\r\n"
    assert c.cmd("BAR") == b"-ERR Unknown command\r\n"
    assert c.line() == b"-ERR Too many bad commands, closing connection\r\n"
    expect_eof(c.sock)


def test_no_such_message_counts_as_bad_command(pop3srv):
    """RETR, DELE, LIST, UIDL and TOP of a number that names no message, or
    a deleted one, count toward max_bad_commands as in Dovecot's pop3
    (which closes at its 21st bad command in a row, "RETR 99" included);
    they used to be free, so a client could loop over them forever."""
    srv = pop3srv(config="[limits]\nmax_bad_commands = 7\n")
    deliver(srv, "alice@example.com", b"hello\r\n")
    c = Raw(srv)
    c.login()
    assert c.cmd("DELE 1").startswith(b"+OK")
    for cmd in ("RETR 99", "DELE 99", "LIST 99", "UIDL 0", "TOP 99 0"):
        assert c.cmd(cmd) == b"-ERR No such message\r\n", cmd
    assert c.cmd("NOOP") == b"+OK\r\n"  # a run ends at +OK
    for _ in range(6):
        assert c.cmd("RETR 99") == b"-ERR No such message\r\n"
    assert c.cmd("RETR 1") == b"-ERR Message 1 already deleted\r\n"
    assert c.line() == b"-ERR Too many bad commands, closing connection\r\n"
    expect_eof(c.sock)


def test_prelogin_timeout_and_autologout(pop3srv):
    srv = pop3srv(config="[limits]\nprelogin_timeout = 1s\n")
    c = Raw(srv)
    t0 = time.monotonic()
    assert c.line(timeout=5) == b"-ERR Disconnected for inactivity\r\n"
    assert 0.8 <= time.monotonic() - t0 < 4
    expect_eof(c.sock)
    # after login the (10-minute) autologout applies, not the pre-login one
    c = Raw(srv)
    c.login()
    time.sleep(2.5)
    assert c.cmd("NOOP") == b"+OK\r\n"


def test_connection_cap_per_address(pop3srv):
    srv = pop3srv(config="[limits]\nmax_connections_per_ip = 2\n")
    a, b = Raw(srv), Raw(srv)
    c = Raw(srv)
    assert c.greeting.startswith(b"-ERR [SYS/TEMP] Too many connections"), c.greeting
    expect_eof(c.sock)
    a.cmd("QUIT")
    b.cmd("QUIT")


# ---- other clients ------------------------------------------------------------


def test_curl_pop3s(pop3srv):
    if not shutil.which("curl"):
        pytest.skip("curl not installed")
    srv = pop3srv()
    sent = [deliver(srv, "alice@example.com", f"curl {i}\r\n.dot\r\n".encode())
            for i in range(2)]
    p = pop(srv)
    want = [retr_bytes(p, i + 1) for i in range(2)]
    sizes = [int(l.split()[1]) for l in p.list()[1]]
    p.quit()
    base = ["curl", "-sS", "--cacert", os.path.join(srv.data_dir, "tls", "cert.pem"),
            "--resolve", f"mail.example.com:{srv.port(995)}:127.0.0.1",
            "-u", f"alice@example.com:{USERS['alice@example.com']}"]
    url = f"pop3s://mail.example.com:{srv.port(995)}/"
    r = subprocess.run(base + [url], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"1 {sizes[0]}\r\n2 {sizes[1]}\r\n".encode()
    for i in range(2):
        r = subprocess.run(base + [url + str(i + 1)], capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert r.stdout == want[i]
        assert r.stdout.endswith(sent[i])


def test_fetchmail_downloads_and_deletes(pop3srv, tmp_path):
    if not shutil.which("fetchmail"):
        pytest.skip("fetchmail not installed")
    srv = pop3srv()
    bodies = [b"plain text\r\n", b".leading dot\r\n..two\r\n.\r\nlast\r\n",
              (b"y" * 998 + b"\r\n") * 300]
    sent = [deliver(srv, "alice@example.com", b, subject=f"fm{i}") for i, b in enumerate(bodies)]
    p = pop(srv)
    want = [retr_bytes(p, i + 1) for i in range(len(bodies))]
    p.quit()
    # One local file: the MDA appends each message after a separator line
    # that cannot occur in them.
    box = tmp_path / "mailbox"
    sep = b"=== fetchmail message ===\n"
    mda = tmp_path / "mda.sh"
    mda.write_text(f"#!/bin/sh\nprintf '%s\\n' '{sep.decode().strip()}' >> {box}\n"
                   f"cat >> {box}\n")
    mda.chmod(0o755)
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        f"poll 127.0.0.1 service {srv.port(995)} protocol pop3 uidl\n"
        f"  user 'alice@example.com' there with password '{USERS['alice@example.com']}'\n"
        f"  is root here\n"
        f"  ssl sslcertfile '{os.path.join(srv.data_dir, 'tls', 'cert.pem')}'\n"
        f"  sslcommonname mail.example.com\n"
        f"  nokeep stripcr mda '{mda}'\n")
    rc.chmod(stat.S_IRUSR | stat.S_IWUSR)
    env = dict(os.environ, HOME=str(tmp_path), FETCHMAILHOME=str(tmp_path))
    # --pidfile: as root the lock is /var/run/fetchmail.pid otherwise,
    # shared with the IMAP clients suite running beside this file
    r = subprocess.run(["fetchmail", "--pidfile", str(tmp_path / "fetchmail.pid"), "-f", str(rc),
                        "--nodetach", "--invisible", "-v"],
                       capture_output=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    data = box.read_bytes()
    assert data.startswith(sep)
    got = data[len(sep):].split(sep)
    assert len(got) == len(bodies)
    # fetchmail hands the MDA LF line ends (stripcr); otherwise each message
    # is, byte for byte, the server's Return-Path: and Received: fields
    # followed by exactly what the SMTP client sent.
    for g, w, orig in zip(got, want, sent):
        assert g == w.replace(b"\r\n", b"\n")
        lf = orig.replace(b"\r\n", b"\n")
        assert g.endswith(lf), (g[:200], lf[:200])
        head = g[:len(g) - len(lf)]
        assert head.startswith(b"Return-Path: <sender@remote.example>\nReceived: "), head
        assert all(l.startswith((b"Received: ", b" ", b"\t"))
                   for l in head.splitlines()[1:]), head
    # and they are gone from the server
    p = pop(srv)
    assert p.stat() == (0, 0)
    p.quit()
