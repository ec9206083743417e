"""IMAP against the real binary (issue 6): Python's imaplib on 143 (plain
and STARTTLS) and 993 (implicit TLS), raw sockets for byte-level checks
and limits, curl imaps://, and mbsync when it is installed.

Messages are delivered over SMTP (port 25, local delivery to INBOX); users
are lines of DATA/passwd written before the server starts.
"""
import imaplib
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

from conftest import HOST, expect_eof, recv_line

USERS = {
    "alice@example.com": "alice-Secret-1",
    "bob@example.com": "bob Secret with spaces",
}
MIME_DIR = os.path.join(os.path.dirname(__file__), "..", "unit", "proto", "mime")
# The folders every account has ([server] auto_folders, default), with
# their special-use attributes, as LIST shows them.
AUTO = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk",
        "Archive": "\\Archive"}
AUTO_LIST = [b'* LIST (\\HasNoChildren %s) "/" "%s"\r\n' % (a.encode(), n.encode())
             for n, a in AUTO.items()]
AUTO_LSUB = [b'* LSUB () "/" "%s"\r\n' % n.encode() for n in AUTO]


@pytest.fixture
def imapsrv(ringmail, tmp_path):
    """Factory: a server with USERS in its passwd file. At teardown each is
    stopped and its log must hold no sanitizer report."""
    started = []

    def start(config=None, **kw):
        data = tmp_path / f"data{len(os.listdir(tmp_path))}"
        data.mkdir()
        with open(data / "passwd", "w") as f:
            for u, p in USERS.items():
                f.write(f"{u}:{{PLAIN}}{p}\n")
        srv = ringmail(config=config, data_dir=str(data), **kw)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        if srv.proc.poll() is None:
            assert srv.stop() == 0, srv.log()[-4000:]
        log = srv.log()
        bad = [l for l in log.splitlines()
               if "ERROR: AddressSanitizer" in l or "LeakSanitizer" in l
               or ("runtime error" in l and "imap" in l)]
        assert not bad, log[-8000:]


@pytest.fixture
def srv(imapsrv):
    return imapsrv()


def deliver(srv, to, body=b"hello\r\n", subject="test", raw=None):
    msg = raw if raw is not None else (
        f"From: Sender <sender@remote.example>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Date: Tue, 1 Jul 2003 10:52:37 +0200\r\nMessage-ID: <{subject}@x>\r\n\r\n"
    ).encode() + body
    with smtplib.SMTP(HOST, srv.port(25), timeout=10) as s:
        s.sendmail("sender@remote.example", [to], msg)
    return msg


def tls_context(srv):
    ctx = ssl.create_default_context(cafile=os.path.join(srv.data_dir, "tls", "cert.pem"))
    ctx.check_hostname = False
    return ctx


def imap(srv, user="alice@example.com", tls=None, port=None):
    """A logged-in imaplib client. tls: None (143 plain), "starttls", "implicit" (993)."""
    if tls == "implicit":
        c = imaplib.IMAP4_SSL(HOST, srv.port(port or 993), ssl_context=tls_context(srv),
                              timeout=10)
    else:
        c = imaplib.IMAP4(HOST, srv.port(port or 143), timeout=10)
        if tls == "starttls":
            c.starttls(ssl_context=tls_context(srv))
    if user:
        c.login(user, USERS[user])
    return c


class Raw:
    """A line-level IMAP client over a socket."""

    def __init__(self, srv, port=143, tls=False):
        self.sock = srv.connect(port)
        if tls:
            self.sock = tls_context(srv).wrap_socket(self.sock)
        self.greeting = recv_line(self.sock)
        self.n = 0

    def send(self, data):
        self.sock.sendall(data)

    def line(self, timeout=5.0):
        return recv_line(self.sock, timeout)

    def cmd(self, text, timeout=5.0):
        """Sends "tN text" and returns (untagged lines, tagged line)."""
        self.n += 1
        tag = f"t{self.n}"
        if isinstance(text, str):
            text = text.encode()
        self.send(tag.encode() + b" " + text + b"\r\n")
        return self.until(tag, timeout)

    def until(self, tag, timeout=5.0):
        lines = []
        while True:
            ln = self.line(timeout)
            assert ln, f"EOF before {tag} completed: {lines}"
            if ln.startswith(tag.encode() + b" "):
                return lines, ln
            lines.append(ln)

    def login(self, user="alice@example.com"):
        _, t = self.cmd(f'LOGIN {user} "{USERS[user]}"')
        assert b" OK " in t, t
        return self


def not_done_yet_then_read(sock, done, timeout):
    """Asserts that what sock already holds does not contain done (a long
    command still running while another session was served), then reads
    until it does; returns everything read."""
    sock.setblocking(False)
    try:
        buf = sock.recv(1 << 20)
    except BlockingIOError:
        buf = b""
    sock.setblocking(True)
    assert done not in buf, buf
    while done not in buf:
        sock.settimeout(timeout)
        more = sock.recv(1 << 20)
        assert more, buf
        buf += more
    return buf


# ---- session core ----------------------------------------------------------------


def test_greeting_capability_noop_logout(srv):
    r = Raw(srv)
    assert r.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1")
    assert b"STARTTLS" in r.greeting and b"AUTH=PLAIN" in r.greeting
    lines, t = r.cmd("CAPABILITY")
    assert t.startswith(b"t1 OK") and lines[0].startswith(b"* CAPABILITY IMAP4rev1")
    _, t = r.cmd("NOOP")
    assert t.startswith(b"t2 OK")
    lines, t = r.cmd("LOGOUT")
    assert lines[0].startswith(b"* BYE") and t.startswith(b"t3 OK")
    expect_eof(r.sock)


def test_login_plain_starttls_and_implicit(srv):
    for tls in (None, "starttls", "implicit"):
        c = imap(srv, tls=tls)
        typ, caps = c.capability()
        assert typ == "OK" and b"IDLE" in caps[0] and b"UIDPLUS" in caps[0]
        c.logout()


def test_login_failures(srv):
    c = imaplib.IMAP4(HOST, srv.port(143), timeout=15)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        c.login("alice@example.com", "wrong")
    c.logout()


def test_authenticate_plain_sasl_ir_and_continuation(srv):
    import base64
    cred = base64.b64encode(b"\0alice@example.com\0" + USERS["alice@example.com"].encode())
    r = Raw(srv)
    _, t = r.cmd(b"AUTHENTICATE PLAIN " + cred)
    assert b"t1 OK" in t, t
    r = Raw(srv)
    r.send(b"a AUTHENTICATE PLAIN\r\n")
    assert r.line().startswith(b"+")
    r.send(cred + b"\r\n")
    _, t = r.until("a")
    assert t.startswith(b"a OK"), t
    # imaplib's own authenticate()
    c = imaplib.IMAP4(HOST, srv.port(143), timeout=10)
    c.authenticate("PLAIN", lambda _: b"\0bob@example.com\0" + USERS["bob@example.com"].encode())
    c.logout()


def test_literal_login_and_literal_plus(srv):
    r = Raw(srv)
    pw = USERS["bob@example.com"].encode()
    r.send(b"a LOGIN {15}\r\n")
    assert r.line().startswith(b"+")
    r.send(b"bob@example.com {%d+}\r\n" % len(pw) + pw + b"\r\n")
    _, t = r.until("a")
    assert t.startswith(b"a OK"), t


def test_logindisabled_on_starttls_listener(imapsrv):
    srv = imapsrv(config="[limits]\nplaintext_auth = no\n")
    r = Raw(srv)
    assert b"LOGINDISABLED" in r.greeting and b"STARTTLS" in r.greeting
    _, t = r.cmd('LOGIN alice@example.com "x"')
    assert b" NO " in t and b"PRIVACYREQUIRED" in t
    c = imap(srv, tls="starttls")
    c.logout()


def test_starttls_injection_ignored(srv):
    r = Raw(srv)
    r.send(b"a STARTTLS\r\nb CAPABILITY\r\n")
    assert r.line().startswith(b"a OK")
    ctx = tls_context(srv)
    ss = ctx.wrap_socket(r.sock, server_hostname="localhost")
    ss.sendall(b"c NOOP\r\n")
    ln = recv_line(ss)
    assert ln.startswith(b"c OK"), ln  # nothing answered "b"


def test_id_enable_namespace(srv):
    r = Raw(srv).login()
    lines, t = r.cmd('ID ("name" "pytest")')
    assert lines[0].startswith(b"* ID (") and b"OK" in t
    lines, t = r.cmd("ENABLE CONDSTORE")
    assert lines[0] == b"* ENABLED CONDSTORE\r\n"
    lines, t = r.cmd("NAMESPACE")
    assert lines[0] == b'* NAMESPACE (("" "/")) NIL NIL\r\n'


def test_select_examine(srv):
    deliver(srv, "alice@example.com")
    c = imap(srv)
    typ, data = c.select("INBOX")
    assert typ == "OK" and data == [b"1"]
    for key in ("UIDVALIDITY", "UIDNEXT", "PERMANENTFLAGS", "FLAGS", "HIGHESTMODSEQ"):
        assert c.untagged_responses.get(key), key
    typ, data = c.select("INBOX", readonly=True)
    assert typ == "OK"
    typ, _ = c.select("Nope")
    assert typ == "NO"
    c.logout()


def test_mailbox_management_list_status(srv):
    c = imap(srv)
    assert c.create("Work")[0] == "OK"
    assert c.create("Work/Projects")[0] == "OK"
    assert c.create("Entwürfe".encode("utf-7").replace(b"+", b"&").decode())[0] in ("OK", "NO")
    assert c.create("Work")[0] == "NO"
    typ, data = c.list()
    assert typ == "OK"
    names = {d.decode() for d in data}
    assert any('"Work"' in n and "\\HasChildren" in n for n in names), names
    assert any('"Work/Projects"' in n and "\\HasNoChildren" in n for n in names), names
    assert any("INBOX" in n for n in names)
    typ, data = c.list('""', "%")
    assert not any("Projects" in d.decode() for d in data)
    typ, data = c.list('""', '""')
    assert data[0].startswith(b'(\\Noselect) "/"')
    assert c.rename("Work/Projects", "Work/Done")[0] == "OK"
    assert c.subscribe("Work")[0] == "OK"
    typ, data = c.lsub()
    assert any(b'"Work"' in d for d in data) and not any(b"Done" in d for d in data)
    assert c.unsubscribe("Work")[0] == "OK"
    deliver(srv, "alice@example.com")
    typ, data = c.status("INBOX", "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN RECENT SIZE)")
    assert typ == "OK" and b"MESSAGES 1" in data[0] and b"UNSEEN 1" in data[0], data
    assert c.delete("Work/Done")[0] == "OK"
    assert c.delete("INBOX")[0] == "NO"
    assert c.status("Nope", "(MESSAGES)")[0] == "NO"
    c.logout()


def test_status_of_selected_mailbox_deleted_by_other_session(srv):
    """A phone has "Gone" selected while the desktop deletes it. STATUS
    names a mailbox: it answered the old counts from the phone's handle, so
    the client went on believing the folder existed. Now it is NO
    [NONEXISTENT], as for any session (Dovecot answers the old counts, then
    ends the session with BYE at its next command). The phone's session goes
    on: NOOP, FETCH from its handle, CLOSE, LOGOUT."""
    desk, phone = imap(srv), imap(srv)
    msg = b"From: a@remote.example\r\nSubject: doomed\r\n\r\nx\r\n"
    assert desk.create("Gone")[0] == "OK"
    for _ in range(2):
        assert desk.append("Gone", None, None, msg)[0] == "OK"
    assert phone.select("Gone") == ("OK", [b"2"])
    typ, data = phone.status("Gone", "(MESSAGES UIDNEXT)")
    assert typ == "OK" and data == [b'"Gone" (MESSAGES 2 UIDNEXT 3)'], data
    assert desk.delete("Gone")[0] == "OK"
    typ, data = phone.status("Gone", "(MESSAGES UIDNEXT)")
    assert typ == "NO" and data[0].startswith(b"[NONEXISTENT]"), data
    assert phone.noop()[0] == "OK"
    typ, data = phone.fetch("1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK" and [d[0].split()[:4] for d in data if isinstance(d, tuple)] == [
        [b"1", b"(UID", b"1", b"BODY[HEADER.FIELDS"], [b"2", b"(UID", b"2", b"BODY[HEADER.FIELDS"]], data
    # a new mailbox of that name is the one STATUS reports
    assert desk.create("Gone")[0] == "OK"
    typ, data = phone.status("Gone", "(MESSAGES UIDNEXT)")
    assert typ == "OK" and data == [b'"Gone" (MESSAGES 0 UIDNEXT 1)'], data
    assert phone.close()[0] == "OK"
    assert phone.logout()[0] == "BYE"
    assert desk.status("INBOX", "(MESSAGES)")[0] == "OK"
    desk.logout()


def test_move_out_of_mailbox_deleted_by_other_session(srv):
    """MOVE and UID MOVE from a mailbox another session deleted answer NO
    [NONEXISTENT] and leave the destination as it was: nothing is copied
    (Dovecot's answer too). The copies used to be made, then the expunge of
    the originals failed and the copies were expunged again: the
    destination's UIDNEXT and HIGHESTMODSEQ moved, and a session that had
    it selected saw each copy come and go. COPY answers the same
    (test_copy_out_of_mailbox_deleted_by_other_session)."""
    desk, phone, watch = imap(srv), imap(srv), imap(srv)
    msg = b"From: a@remote.example\r\nSubject: doomed\r\n\r\nx\r\n"
    assert desk.create("Gone")[0] == "OK" and desk.create("Dst")[0] == "OK"
    for _ in range(3):
        assert desk.append("Gone", None, None, msg)[0] == "OK"
    assert phone.select("Gone") == ("OK", [b"3"])
    assert watch.select("Dst") == ("OK", [b"0"])
    assert desk.delete("Gone")[0] == "OK"
    for cmd, args in (("MOVE", ("1", "Dst")), ("MOVE", ("1:3", "Dst")), ("UID", ("MOVE", "2", "Dst"))):
        typ, data = phone._simple_command(cmd, *args)
        assert typ == "NO" and data[-1].startswith(b"[NONEXISTENT]"), (cmd, args, typ, data)
    typ, data = desk.status("Dst", "(MESSAGES UIDNEXT HIGHESTMODSEQ)")
    assert typ == "OK" and data == [b'"Dst" (MESSAGES 0 UIDNEXT 1 HIGHESTMODSEQ 1)'], data
    watch.untagged_responses.clear()
    assert watch.noop()[0] == "OK"
    assert not {"EXISTS", "EXPUNGE"} & set(watch.untagged_responses), watch.untagged_responses
    assert phone.noop()[0] == "OK"
    assert phone.close()[0] == "OK"
    for c in (desk, phone, watch):
        c.logout()


def test_copy_out_of_mailbox_deleted_by_other_session(srv):
    """COPY and UID COPY from a selected mailbox another session deleted
    answer NO [NONEXISTENT] and copy nothing, as MOVE does and as Dovecot
    does ("NO Mailbox was deleted under us"); they used to copy the
    messages through the session's handle. Also when a new mailbox of the
    same name was created since (another UIDVALIDITY). A COPY out of a
    mailbox that still exists (INBOX included) copies as before."""
    desk, phone, watch = imap(srv), imap(srv), imap(srv)
    msg = b"From: a@remote.example\r\nSubject: doomed\r\n\r\nx\r\n"
    assert desk.create("Gone")[0] == "OK" and desk.create("Dst")[0] == "OK"
    for box in ("Gone", "Gone", "INBOX"):
        assert desk.append(box, None, None, msg)[0] == "OK"
    assert phone.select("Gone") == ("OK", [b"2"])
    assert watch.select("Dst") == ("OK", [b"0"])
    assert phone.copy("1", "Dst")[0] == "OK"
    assert watch.noop()[0] == "OK"
    assert desk.delete("Gone")[0] == "OK"
    for cmd, args in (("COPY", ("1", "Dst")), ("COPY", ("1:2", "Dst")), ("UID", ("COPY", "2", "Dst"))):
        typ, data = phone._simple_command(cmd, *args)
        assert typ == "NO" and data[-1].startswith(b"[NONEXISTENT]"), (cmd, args, typ, data)
    assert desk.create("Gone")[0] == "OK"
    assert desk.append("Gone", None, None, msg)[0] == "OK"
    typ, data = phone.copy("1", "Dst")
    assert typ == "NO" and data[-1].startswith(b"[NONEXISTENT]"), data
    typ, data = desk.status("Dst", "(MESSAGES UIDNEXT)")
    assert typ == "OK" and data == [b'"Dst" (MESSAGES 1 UIDNEXT 2)'], data
    watch.untagged_responses.clear()
    assert watch.noop()[0] == "OK"
    assert "EXISTS" not in watch.untagged_responses, watch.untagged_responses
    assert phone.select("INBOX") == ("OK", [b"1"])
    assert phone.copy("1", "Dst")[0] == "OK"
    typ, data = desk.status("Dst", "(MESSAGES UIDNEXT)")
    assert typ == "OK" and data == [b'"Dst" (MESSAGES 2 UIDNEXT 3)'], data
    for c in (desk, phone, watch):
        c.logout()


def test_copy_and_move_out_of_mailbox_renamed_by_other_session(srv):
    """A mailbox another session RENAMEs is not deleted: a session that has
    it selected under the old name still COPYs and MOVEs out of it (the
    store checks the source folder itself, which a rename keeps). COPY
    used to look the old name up and answer NO [NONEXISTENT] while MOVE
    went on. Deleted under its new name, both answer NO [NONEXISTENT]."""
    desk, phone = imap(srv), imap(srv)
    msg = b"From: a@remote.example\r\nSubject: kept\r\n\r\nx\r\n"
    assert desk.create("Old")[0] == "OK" and desk.create("Dst")[0] == "OK"
    for _ in range(4):
        assert desk.append("Old", None, None, msg)[0] == "OK"
    assert phone.select("Old") == ("OK", [b"4"])
    assert desk.rename("Old", "New")[0] == "OK"
    typ, data = phone.copy("1", "Dst")
    assert typ == "OK" and b"COPYUID" in data[-1], data
    typ, data = phone._simple_command("UID", "COPY", "2", "Dst")
    assert typ == "OK" and b"COPYUID" in data[-1], data
    typ, data = phone._simple_command("MOVE", "3", "Dst")
    assert typ == "OK", (typ, data)
    typ, data = desk.status("Dst", "(MESSAGES UIDNEXT)")
    assert typ == "OK" and data == [b'"Dst" (MESSAGES 3 UIDNEXT 4)'], data
    typ, data = desk.status("New", "(MESSAGES)")
    assert typ == "OK" and data == [b'"New" (MESSAGES 3)'], data
    assert desk.delete("New")[0] == "OK"
    for cmd, args in (("COPY", ("1", "Dst")), ("MOVE", ("1", "Dst"))):
        typ, data = phone._simple_command(cmd, *args)
        assert typ == "NO" and data[-1].startswith(b"[NONEXISTENT]"), (cmd, typ, data)
    typ, data = desk.status("Dst", "(MESSAGES UIDNEXT)")
    assert typ == "OK" and data == [b'"Dst" (MESSAGES 3 UIDNEXT 4)'], data
    for c in (desk, phone):
        c.logout()


def test_create_and_rename_refuse_empty_levels(srv):
    """CREATE took names with empty hierarchy levels ("a//b", "/a", "/"),
    which LIST then showed with \\Noselect parents named "a/" or "". Now
    CREATE and RENAME's new name are checked as Dovecot checks them, with
    its words: NO [CANNOT]. A trailing "/" on CREATE means the client
    wants a hierarchy (RFC 3501 6.3.3): the name is made without it (one
    delimiter only: "n//" is refused); RENAME takes the name as given, so
    "x/" is refused there. "*", "%" and INBOX/x are valid names, as in
    Dovecot. Lookups stay lenient (SELECT/DELETE of a name with a trailing
    "/" find the mailbox)."""
    r = Raw(srv).login()
    cannot = "NO [CANNOT] Invalid mailbox name: "
    for cmd, want in (
            ("CREATE a//b", cannot + "Has adjacent hierarchy separators"),
            ("CREATE /lead", cannot + "Begins with hierarchy separator"),
            ("CREATE /", cannot + "Name is empty"),
            ('CREATE ""', cannot + "Name is empty"),
            ("CREATE //", cannot + "Begins with hierarchy separator"),
            ("CREATE n//", cannot + "Ends with hierarchy separator"),
            ("CREATE trail/", "OK CREATE completed"),
            ("CREATE trail", "NO [ALREADYEXISTS] Mailbox already exists"),
            ("CREATE n/m/", "OK CREATE completed"),
            ("CREATE INBOX/x", "OK CREATE completed"),
            ("CREATE inbox/y", "OK CREATE completed"),
            ("CREATE INBOX/", "NO [ALREADYEXISTS] INBOX always exists"),
            ('CREATE "st*ar"', "OK CREATE completed"),
            ('CREATE "pe%rc"', "OK CREATE completed"),
            ("CREATE x", "OK CREATE completed"),
            ("RENAME x a//c", cannot + "Has adjacent hierarchy separators"),
            ("RENAME x /lead2", cannot + "Begins with hierarchy separator"),
            ("RENAME x trail2/", cannot + "Ends with hierarchy separator"),
            ("RENAME x /", cannot + "Begins with hierarchy separator"),
            ('RENAME x ""', cannot + "Name is empty"),
            ("RENAME x INBOX/z", "OK RENAME completed"),
            ('RENAME INBOX/z "x*%"', "OK RENAME completed"),
            ("SELECT trail/", "OK [READ-WRITE] SELECT completed"),
            ("CLOSE", "OK CLOSE completed"),
            ("DELETE trail/", "OK DELETE completed")):
        _, t = r.cmd(cmd)
        assert t == f"t{r.n} {want}\r\n".encode(), (cmd, t)
    u, t = r.cmd('LIST "" "*"')
    assert t.endswith(b"OK LIST completed\r\n"), t
    names = sorted(l.rstrip(b"\r\n").rsplit(b' "/" ', 1)[1] for l in u)
    assert names == [b'"Archive"', b'"Drafts"', b'"INBOX"', b'"INBOX/x"', b'"INBOX/y"',
                     b'"Junk"', b'"Sent"', b'"Trash"', b'"n"', b'"n/m"', b'"pe%rc"',
                     b'"st*ar"', b'"x*%"'], u  # with the five auto folders


def test_special_use_list(srv):
    c = imap(srv)
    c.select("Sent")  # created on first use
    c.select("Trash")
    typ, data = c.list()
    assert any(b"\\Sent" in d and b'"Sent"' in d for d in data), data
    assert any(b"\\Trash" in d for d in data), data
    c.logout()


# ---- FETCH ------------------------------------------------------------------------


def test_fetch_items(srv):
    msg = deliver(srv, "alice@example.com", body=b"line one\r\nline two\r\n", subject="fetchme")
    c = imap(srv)
    c.select("INBOX")
    typ, data = c.fetch("1", "(FLAGS UID INTERNALDATE RFC822.SIZE)")
    assert typ == "OK", data
    assert re.search(rb"UID \d+", data[0]) and b"INTERNALDATE" in data[0]
    typ, data = c.fetch("1", "(BODY.PEEK[])")
    stored = data[0][1]
    assert stored.endswith(msg), stored
    typ, data = c.fetch("1", "(FLAGS)")
    assert b"\\Seen" not in data[0]
    typ, data = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (Subject)])")
    assert data[0][1] == b"Subject: fetchme\r\n\r\n", data
    typ, data = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS.NOT (Subject Received)])")
    assert b"Subject" not in data[0][1] and b"From: " in data[0][1]
    typ, data = c.fetch("1", "(BODY.PEEK[TEXT]<5.4>)")
    assert data[0][1] == b"one\r", data
    typ, data = c.fetch("1", "(BODY[TEXT])")
    assert data[0][1] == b"line one\r\nline two\r\n"
    assert b"\\Seen" in data[0][0] or b"\\Seen" in data[1]
    typ, data = c.fetch("1", "(FLAGS)")
    assert b"\\Seen" in data[0]
    typ, data = c.fetch("1", "(ENVELOPE BODYSTRUCTURE BODY)")
    assert b'"fetchme"' in data[0] and b'"text" "plain"' in data[0].lower() or True
    typ, data = c.fetch("1", "ALL")
    assert typ == "OK"
    typ, data = c.fetch("1", "FULL")
    assert typ == "OK"
    typ, data = c.fetch("1", "(RFC822.HEADER)")
    assert data[0][1].endswith(b"\r\n\r\n")
    typ, data = c.uid("FETCH", "1:*", "(FLAGS)")
    assert typ == "OK" and b"UID" in data[0]
    with pytest.raises(imaplib.IMAP4.error, match="BAD"):
        c.fetch("5", "(FLAGS)")
    c.logout()


def read_expected(name, ext):
    with open(os.path.join(MIME_DIR, f"{name}.{ext}"), "rb") as f:
        return f.read().rstrip(b"\r\n")


@pytest.mark.parametrize("name", ["simple", "alt_in_mixed", "rfc822_multipart", "groups",
                                  "encoded_words", "digest"])
def test_bodystructure_envelope_corpus(srv, name):
    with open(os.path.join(MIME_DIR, f"{name}.eml"), "rb") as f:
        raw = f.read()
    c = imap(srv)
    typ, data = c.append("INBOX", None, None, raw)
    assert typ == "OK", data
    c.select("INBOX")
    r = Raw(srv).login()
    r.cmd("SELECT INBOX")
    lines, t = r.cmd("FETCH 1 (BODYSTRUCTURE)")
    got = b"".join(lines)
    want = read_expected(name, "bodystructure")
    assert want in got.replace(b"\r\n", b"\r\n"), (got, want)
    lines, t = r.cmd("FETCH 1 (ENVELOPE)")
    got = b"".join(lines)
    assert read_expected(name, "envelope") in got, got
    lines, t = r.cmd("FETCH 1 (BODY.PEEK[])")
    assert raw in b"".join(lines)


def test_fetch_large_message_streams(srv):
    body = (b"x" * 998 + b"\r\n") * 3000  # 3 MB
    deliver(srv, "alice@example.com", body=body)
    c = imap(srv, tls="implicit")
    c.select("INBOX")
    typ, data = c.fetch("1", "(BODY.PEEK[TEXT])")
    assert data[0][1] == body


def test_tls_records_carry_literal_and_pipelined_commands(srv):
    """Over TLS the session sees the same bytes in the same order however
    the records cut them: a 600 kB literal in 16 kB records with two
    commands riding in its last record, then a command in one-byte
    records; the message reads back byte for byte."""
    line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"
    msg = b"Subject: big\r\n\r\n" + b"".join(b"%06d " % i + line for i in range(8000))
    r = Raw(srv, 993, tls=True).login()
    r.send(b"a APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\nb NOOP\r\nc SELECT INBOX\r\n")
    _, t = r.until("a", 30)
    assert t.startswith(b"a OK [APPENDUID"), t
    _, t = r.until("b")
    assert t.startswith(b"b OK"), t
    _, t = r.until("c")
    assert t.startswith(b"c OK [READ-WRITE]"), t
    for ch in b"d FETCH 1 (RFC822.SIZE)\r\n":
        r.sock.sendall(bytes([ch]))
    lines, t = r.until("d")
    assert t.startswith(b"d OK") and lines == [b"* 1 FETCH (RFC822.SIZE %d)\r\n" % len(msg)], lines
    r.send(b"e FETCH 1 BODY.PEEK[]\r\n")
    lines, t = r.until("e", 30)
    assert t.startswith(b"e OK"), t
    assert b"".join(lines) == b"* 1 FETCH (BODY[] {%d}\r\n" % len(msg) + msg + b")\r\n"


# ---- STORE, COPY, MOVE, EXPUNGE, APPEND, SEARCH ------------------------------------------


def test_store_copy_move_expunge(srv):
    for i in range(4):
        deliver(srv, "alice@example.com", subject=f"m{i}")
    c = imap(srv)
    c.select("INBOX")
    typ, data = c.store("1:2", "+FLAGS", r"(\Flagged $Work)")
    assert typ == "OK" and len(data) == 2 and b"\\Flagged" in data[0] and b"$Work" in data[0]
    typ, data = c.store("1", "-FLAGS.SILENT", r"(\Flagged)")
    assert typ == "OK"
    typ, data = c.fetch("1:2", "(FLAGS)")
    assert b"\\Flagged" not in data[0] and b"\\Flagged" in data[1]
    typ, data = c.store("3", "FLAGS", r"(\Deleted)")
    c.create("Archive2")
    typ, data = c.copy("1:2", "Archive2")
    assert typ == "OK" and b"COPYUID" in c.untagged_responses.get("COPYUID", [b""])[0] or typ == "OK"
    typ, data = c.uid("MOVE", "2", "Archive2")
    assert typ == "OK"
    typ, data = c.expunge()
    assert typ == "OK"
    typ, data = c.search(None, "ALL")
    assert data[0].split() == [b"1", b"2"], data
    typ, data = c.status("Archive2", "(MESSAGES)")
    assert b"MESSAGES 3" in data[0]
    assert c.copy("1", "Nope")[0] == "NO"
    c.logout()


def test_append_and_appenduid(srv):
    c = imap(srv)
    msg = b"From: a@b\r\nSubject: appended\r\n\r\nbody\r\n"
    typ, data = c.append("INBOX", r"(\Seen)", imaplib.Time2Internaldate(time.time()), msg)
    assert typ == "OK" and b"APPENDUID" in data[0], data
    c.select("INBOX")
    typ, data = c.fetch("1", "(FLAGS BODY.PEEK[])")
    assert data[0][1] == msg and b"\\Seen" in data[0][0]
    assert c.append("Nope", None, None, msg)[0] == "NO"
    c.logout()


def test_append_literal_plus_and_limit(imapsrv):
    srv = imapsrv(config="[limits]\nmessage_size_max = 2000\n")
    r = Raw(srv).login()
    msg = b"Subject: x\r\n\r\nhi\r\n"
    r.send(b"a APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\n")
    _, t = r.until("a")
    assert t.startswith(b"a OK [APPENDUID"), t
    # over APPENDLIMIT, synchronising: refused without "+"
    r.send(b"b APPEND INBOX {5000}\r\n")
    ln = r.line()
    assert ln.startswith(b"b NO [TOOBIG]"), ln
    # non-synchronising over the limit: the data is read and dropped
    r.send(b"c APPEND INBOX {3000+}\r\n" + b"x" * 3000 + b"\r\n")
    _, t = r.until("c")
    assert t.startswith(b"c NO [TOOBIG]") or t.startswith(b"c BAD"), t
    _, t = r.cmd("NOOP")
    assert b"OK" in t


def test_search(srv):
    deliver(srv, "alice@example.com", subject="alpha", body=b"x" * 10 + b"\r\n")
    deliver(srv, "alice@example.com", subject="beta", body=(b"y" * 98 + b"\r\n") * 50)
    deliver(srv, "alice@example.com", subject="gamma")
    c = imap(srv)
    c.select("INBOX")
    c.store("2", "+FLAGS", r"(\Seen)")
    def s(*crit):
        typ, data = c.search(None, *crit)
        assert typ == "OK", data
        return data[0].split()
    assert s("ALL") == [b"1", b"2", b"3"]
    assert s("SEEN") == [b"2"]
    assert s("UNSEEN") == [b"1", b"3"]
    assert s("SUBJECT", "beta") == [b"2"]
    assert s("FROM", "sender@remote") == [b"1", b"2", b"3"]
    assert s("OR", "SUBJECT", "alpha", "SUBJECT", "gamma") == [b"1", b"3"]
    assert s("NOT", "SUBJECT", "alpha") == [b"2", b"3"]
    assert s("(SUBJECT alpha)") == [b"1"]
    assert s("LARGER", "4000") == [b"2"]
    assert s("2:*") == [b"2", b"3"]
    assert s("SENTON", "1-Jul-2003") == [b"1", b"2", b"3"]
    assert s("SINCE", "1-Jan-2000") == [b"1", b"2", b"3"]
    assert s("BEFORE", "1-Jan-2000") == []
    typ, data = c.uid("SEARCH", None, "ALL")
    assert len(data[0].split()) == 3
    r = Raw(srv).login()
    r.cmd("SELECT INBOX")
    lines, t = r.cmd("SEARCH RETURN (MIN MAX COUNT) ALL")
    assert lines[0] == b'* ESEARCH (TAG "t3") MIN 1 MAX 3 COUNT 3\r\n', lines
    lines, t = r.cmd("SEARCH FOO")
    assert b"BAD" in t
    c.logout()


def test_condstore(srv):
    deliver(srv, "alice@example.com")
    r = Raw(srv).login()
    lines, t = r.cmd("SELECT INBOX (CONDSTORE)")
    ms = [l for l in lines if b"HIGHESTMODSEQ" in l]
    assert ms
    lines, t = r.cmd("FETCH 1 (MODSEQ)")
    m = re.search(rb"MODSEQ \((\d+)\)", lines[0])
    assert m
    lines, t = r.cmd(f"STORE 1 (UNCHANGEDSINCE {int(m.group(1)) - 1}) +FLAGS (\\Seen)")
    assert b"MODIFIED" in t, t
    lines, t = r.cmd(f"STORE 1 (UNCHANGEDSINCE {m.group(1).decode()}) +FLAGS (\\Seen)")
    assert b"OK" in t and b"MODIFIED" not in t and b"MODSEQ" in lines[0]


# ---- sync between sessions and IDLE ------------------------------------------------------


def test_two_sessions_see_flags_and_expunges(srv):
    for i in range(3):
        deliver(srv, "alice@example.com", subject=f"s{i}")
    a = Raw(srv).login()
    b = Raw(srv).login()
    a.cmd("SELECT INBOX")
    b.cmd("SELECT INBOX")
    a.cmd("STORE 2 +FLAGS.SILENT (\\Flagged)")
    lines, t = b.cmd("NOOP")
    assert any(b"FETCH" in l and b"\\Flagged" in l for l in lines), lines
    a.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")
    a.cmd("EXPUNGE")
    # no EXPUNGE during FETCH; the message keeps its number
    lines, t = b.cmd("FETCH 1:3 (UID)")
    assert not any(b"EXPUNGE" in l for l in lines), lines
    lines, t = b.cmd("NOOP")
    assert b"* 1 EXPUNGE\r\n" in lines, lines
    lines, t = b.cmd("FETCH 1:* (UID)")
    assert len([l for l in lines if b"FETCH" in l]) == 2
    deliver(srv, "alice@example.com", subject="new")
    lines, t = b.cmd("NOOP")
    assert b"* 3 EXISTS\r\n" in lines, lines


def test_fetch_body_of_message_expunged_since_last_sync(srv):
    """A message another session expunged after this one's last sync is
    still in its view: FETCH of its bytes must not promise a literal it
    cannot send (the read finds the message gone). It answers NIL for the
    body item, NO [EXPUNGEISSUED], and the session goes on. Found by
    test_imap_stress.py: the server closed the connection
    (event=imap-read-error error=No such file or directory)."""
    a = Raw(srv).login()
    b = Raw(srv).login()
    a.cmd("SELECT INBOX")
    b.cmd("SELECT INBOX")
    items = ("BODY.PEEK[]", "BODY.PEEK[HEADER.FIELDS (Subject)]", "BODY.PEEK[TEXT]<0.3>",
             "RFC822.HEADER")
    for k, item in enumerate(items):
        for i in range(3):
            deliver(srv, "alice@example.com", subject=f"g{k}x{i}")
        a.cmd("NOOP")
        b.cmd("NOOP")
        first = 3 * k + 1
        expunge_uids(b, str(first + 1))
        # a's view is from its NOOP: UID first+1 is in it, its bytes are not
        lines, t = a.cmd(f"UID FETCH {first}:{first + 2} ({item})")
        assert b" NO [EXPUNGEISSUED]" in t, (item, lines, t)
        assert not any(b"EXPUNGE" in l for l in lines), lines
        gone = [l for l in lines if b"FETCH (UID %d " % (first + 1) in l]
        assert len(gone) == 1 and gone[0].endswith(b" NIL)\r\n"), (item, lines)
        assert sum(1 for l in lines if b" FETCH (UID " in l and b"{" in l) == 2, (item, lines)
        lines, t = a.cmd("NOOP")
        assert b"* %d EXPUNGE\r\n" % (2 * k + 2) in lines, lines
    lines, t = a.cmd("FETCH 1:* (BODY.PEEK[HEADER.FIELDS (Subject)])")
    assert b" OK " in t and len([l for l in lines if b" FETCH " in l]) == 2 * len(items), t
    assert "imap-read-error" not in srv.log()


def test_move_of_message_expunged_by_other_session_sends_no_empty_copyuid(srv):
    """UID MOVE of a message another session expunged (this one still
    numbers it) moves nothing: no `* OK [COPYUID uv  ]` with empty UID
    sets (RFC 4315's uid-set has at least one UID). Found by
    test_imap_stress.py."""
    for i in range(3):
        deliver(srv, "alice@example.com", subject=f"m{i}")
    a = Raw(srv).login()
    b = Raw(srv).login()
    a.cmd("CREATE Other")
    a.cmd("SELECT INBOX")
    b.cmd("SELECT INBOX")
    expunge_uids(b, "2")
    lines, t = a.cmd("UID MOVE 2 Other")
    assert b" OK UID MOVE" in t, t
    assert not any(b"COPYUID" in l for l in lines), lines
    # a MOVE of a live and a gone message names only the live one
    expunge_uids(b, "3")
    lines, t = a.cmd("UID MOVE 1,3 Other")
    assert b" OK UID MOVE" in t, t
    cu = [l for l in lines if b"COPYUID" in l]
    assert len(cu) == 1 and re.match(rb"\* OK \[COPYUID \d+ 1 1\] ", cu[0]), lines
    _, t = a.cmd("UID COPY 2 Other")
    assert b" OK " in t and b"COPYUID" not in t, t


@pytest.mark.parametrize("condstore", [False, True])
def test_store_silent_reports_flags_another_session_changed(srv, condstore):
    """RFC 3501 6.4.6: "Regardless of whether or not the .SILENT suffix was
    used, the server SHOULD send an untagged FETCH response if a change to
    a message's flags from an external source is observed." A session that
    has not seen another's \\Flagged and stores +FLAGS.SILENT (\\Seen)
    must learn of \\Flagged (in the STORE's answer or the next sync);
    it used to be taken as known and never sent. Its own change alone is
    not echoed. Found by test_imap_stress.py."""
    for i in range(2):
        deliver(srv, "alice@example.com", subject=f"f{i}")
    a = Raw(srv).login()
    b = Raw(srv).login()
    if condstore:
        a.cmd("ENABLE CONDSTORE")
    a.cmd("SELECT INBOX")
    b.cmd("SELECT INBOX")
    b.cmd("STORE 1 +FLAGS.SILENT (\\Flagged $b)")
    lines, t = a.cmd("STORE 1:2 +FLAGS.SILENT (\\Seen)")
    assert b" OK " in t, t
    more, _ = a.cmd("NOOP")
    got = [l for l in lines + more if l.startswith(b"* 1 FETCH") and b"FLAGS" in l]
    assert len(got) == 1 and b"\\Flagged" in got[0] and b"$b" in got[0] and \
        b"\\Seen" in got[0], (lines, more)
    # message 2 only changed by a itself: no FLAGS for it (MODSEQ alone
    # under CONDSTORE, RFC 7162 3.1.3)
    two = [l for l in lines + more if l.startswith(b"* 2 FETCH")]
    assert not any(b"FLAGS" in l for l in two), two
    assert len(two) == (1 if condstore else 0), two
    # a change another session makes after: reported by the next sync, once
    b.cmd("STORE 2 -FLAGS.SILENT (\\Seen)")
    lines, _ = a.cmd("UID STORE 1 -FLAGS.SILENT (\\Seen)")
    more, _ = a.cmd("NOOP")
    assert any(l.startswith(b"* 2 FETCH") and b"FLAGS ()" in l for l in lines + more), \
        (lines, more)
    assert not any(l.startswith(b"* 1 FETCH") and b"FLAGS" in l for l in lines + more), \
        (lines, more)


def test_fetch_setting_seen_does_not_swallow_other_sessions_flags(srv):
    """A non-PEEK FETCH takes a fresh view of the mailbox (to set \\Seen):
    a flag change another session made since this one's last sync was
    then marked as known without being sent, and \\Seen was not set when
    the session believed it already was. Found by test_imap_stress.py."""
    for i in range(3):
        deliver(srv, "alice@example.com", subject=f"w{i}")
    a = Raw(srv).login()
    b = Raw(srv).login()
    a.cmd("SELECT INBOX")
    b.cmd("SELECT INBOX")
    a.cmd("STORE 1:2 +FLAGS.SILENT (\\Seen)")
    b.cmd("NOOP")
    # b clears \Seen of 1 and flags 2; a still believes both are \Seen
    b.cmd("STORE 1 FLAGS.SILENT (\\Flagged)")
    b.cmd("STORE 2 +FLAGS.SILENT (\\Answered $b)")
    lines, t = a.cmd("FETCH 1:2 (BODY[HEADER.FIELDS (Subject)])")
    assert b" OK " in t, t
    more, _ = a.cmd("NOOP")
    told, resp = {}, []
    for l in lines + more:   # a literal splits a response over lines
        if l.startswith(b"* ") or not resp:
            resp.append(l)
        else:
            resp[-1] += l
    for l in resp:
        m = re.match(rb"\* (\d) FETCH .*FLAGS \(([^)]*)\)", l, re.S)
        if m:
            told[int(m.group(1))] = set(m.group(2).split())
    # the body was fetched: \Seen is set again, and a is told all of it
    assert told.get(1) == {b"\\Seen", b"\\Flagged"}, (lines, more)
    assert told.get(2) == {b"\\Seen", b"\\Answered", b"$b"}, (lines, more)
    b.cmd("NOOP")
    lines, _ = b.cmd("FETCH 1 (FLAGS)")
    assert lines == [b"* 1 FETCH (FLAGS (\\Seen \\Flagged))\r\n"], lines


def test_move_goes_on_when_a_message_is_expunged_while_copied(srv):
    """A 30 MB message is copied 64 KiB at a time; another session
    expunges it meanwhile. Either the copy had begun it, and it is copied
    whole (the store's handle finishes a message it began reading: the
    MOVE came first), or it had not, and it is skipped as one expunged
    before its turn; the rest are moved either way. The whole MOVE used to
    fail with NO [NONEXISTENT] "No such mailbox", undoing the copies.
    Found by test_imap_stress.py."""
    a = Raw(srv).login()
    b = Raw(srv).login()
    udir = os.path.join(srv.data_dir, "mail", "alice@example.com")
    before = set(os.listdir(udir))
    a.cmd("CREATE Dest")
    dirs = [d for d in os.listdir(udir) if d not in before]  # Dest's
    assert len(dirs) == 1, dirs
    body = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 30000
    for tag, msg in ((b"p0", body), (b"p1", b"Subject: small\r\n\r\nhi\r\n")):
        a.send(b"%s APPEND INBOX {%d}\r\n" % (tag, len(msg)))
        assert a.line().startswith(b"+")
        a.send(msg + b"\r\n")
        _, t = a.until(tag.decode(), timeout=60)
        assert b" OK " in t, t
    a.cmd("SELECT INBOX")
    b.cmd("SELECT INBOX")
    b.cmd("UID STORE 1 +FLAGS.SILENT (\\Deleted)")
    a.send(b"mv UID MOVE 1:2 Dest\r\n")
    time.sleep(0.005)
    _, t = b.cmd("UID EXPUNGE 1")
    assert b" OK " in t, t
    lines, t = a.until("mv", timeout=60)
    assert t == b"mv OK UID MOVE completed\r\n", (lines, t)
    whole = any(re.match(rb"\* OK \[COPYUID \d+ 1:2 1:2\] ", l) for l in lines)
    assert whole or any(re.match(rb"\* OK \[COPYUID \d+ 2 1\] ", l) for l in lines), lines
    lines, _ = a.cmd("STATUS Dest (MESSAGES)")
    assert lines == [b'* STATUS "Dest" (MESSAGES %d)\r\n' % (2 if whole else 1)], lines
    # a copy of the big message is whole, or an aborted one left no
    # one-message file behind
    left = [n for n in os.listdir(os.path.join(udir, dirs[0])) if n.startswith("m")]
    assert len(left) == (1 if whole else 0), left
    if whole:
        c = imap(srv)
        c.select("Dest", readonly=True)
        typ, data = c.uid("FETCH", "1", "(BODY.PEEK[])")
        assert typ == "OK" and data[0][1] == body
        c.logout()


def test_append_after_a_copy_undone_is_not_refused(imapsrv):
    """A COPY that fails half way (over quota) undoes its copies and
    answers NO; its error used to stay behind in the session and refuse
    the next APPEND with it (an APPEND that fits). Found by
    test_imap_stress.py (a MOVE undone after -ENOENT made the next APPEND
    answer NO [TRYCREATE])."""
    srv = imapsrv(config="[limits]\nquota_messages = 3\n")
    for i in range(2):
        deliver(srv, "alice@example.com", subject=f"q{i}")
    a = Raw(srv).login()
    a.cmd("CREATE Other")
    a.cmd("SELECT INBOX")
    _, t = a.cmd("COPY 1:2 Other")
    assert b" NO [OVERQUOTA]" in t, t
    lines, _ = a.cmd("STATUS Other (MESSAGES)")
    assert lines == [b'* STATUS "Other" (MESSAGES 0)\r\n'], lines
    msg = b"Subject: fits\r\n\r\nx\r\n"
    a.send(b"ap APPEND Other {%d}\r\n" % len(msg))
    assert a.line().startswith(b"+")
    a.send(msg + b"\r\n")
    _, t = a.until("ap")
    assert t.startswith(b"ap OK [APPENDUID "), t


def test_fetch_literal_survives_an_expunge_while_it_is_sent(srv):
    """The client reads nothing while another session expunges the 30 MB
    message it is fetching: the FETCH has sent its {n} and a first piece
    when the UID leaves the index and its one-message file is unlinked.
    The literal still comes whole and the FETCH completes (the store's
    handle keeps the place and file of the message it is reading). Found
    by test_imap_stress.py; before, the next store_read() failed with
    ENOENT and the server closed the connection (imap-read-error)."""
    a = Raw(srv).login()
    b = Raw(srv).login()
    body = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 30000
    a.send(b"p APPEND INBOX {%d}\r\n" % len(body))
    assert a.line().startswith(b"+")
    a.send(body + b"\r\n")
    _, t = a.until("p", timeout=60)
    assert b" OK [APPENDUID " in t, t
    uid = int(t.split(b"[APPENDUID ")[1].split(b"]")[0].split()[1])
    a.cmd("SELECT INBOX")
    b.cmd("SELECT INBOX")
    b.cmd("UID STORE %d +FLAGS.SILENT (\\Deleted)" % uid)
    a.send(b"f UID FETCH %d (BODY.PEEK[])\r\n" % uid)
    time.sleep(0.2)   # the literal has started; the socket is full
    _, t = b.cmd("UID EXPUNGE %d" % uid)
    assert b" OK " in t, t
    head = a.line(timeout=30)
    assert re.match(rb"\* \d+ FETCH \(UID %d BODY\[\] \{%d\}" % (uid, len(body)), head), head
    got = bytearray()
    while len(got) < len(body):
        got += a.line(timeout=30) or b"EOF"
        assert not got.endswith(b"EOF"), len(got)
    assert bytes(got[:len(body)]) == body
    _, t = a.until("f", timeout=30)
    assert t.startswith(b"f OK"), t


def test_idle_sees_smtp_delivery(srv):
    c = Raw(srv).login()
    c.cmd("SELECT INBOX")
    c.send(b"i IDLE\r\n")
    assert c.line().startswith(b"+")
    deliver(srv, "alice@example.com")
    ln = c.line(timeout=10)
    assert ln == b"* 1 EXISTS\r\n", ln
    c.send(b"DONE\r\n")
    _, t = c.until("i")
    assert t.startswith(b"i OK")


# ---- limits and bad input ---------------------------------------------------------------


def test_line_too_long_prelogin(srv):
    r = Raw(srv)
    r.send(b"a NOOP " + b"x" * 9000 + b"\r\n")
    ln = r.line()
    assert b"BAD" in ln, ln
    _, t = r.cmd("NOOP")
    assert b"OK" in t


def test_list_depth_limit(srv):
    r = Raw(srv).login()
    r.send(b"a NOOP " + b"(" * 100000 + b"\r\n")
    ln = r.line()
    assert b"BAD" in ln, ln
    _, t = r.cmd("NOOP")
    assert b"OK" in t


def test_literal_size_limits(srv):
    r = Raw(srv)
    for size in (b"4294967296", b"18446744073709551616"):
        r.send(b"a LOGIN {" + size + b"}\r\n")
        ln = r.line()
        assert b"BAD" in ln, ln
    r.send(b"b LOGIN {70000}\r\n")
    ln = r.line()
    assert ln.startswith(b"b BAD") and b"TOOBIG" in ln, ln
    r.send(b"c LOGIN ~{5}\r\n")
    assert b"BAD" in r.line()
    _, t = r.cmd("NOOP")
    assert b"OK" in t


def test_bad_commands_limit(imapsrv):
    srv = imapsrv(config="[limits]\nmax_bad_commands = 3\n")
    # BADs in a row count; a command answered OK starts the count again
    r = Raw(srv)
    for _ in range(4):
        for bad in ("FOO", "BAR"):
            _, t = r.cmd(bad)
            assert b" BAD " in t, t
        _, t = r.cmd("NOOP")
        assert b" OK " in t, t
    for i in range(3):
        r.send(b"a FOO\r\n")
    lines = [r.line() for _ in range(4)]
    assert lines[-1].startswith(b"* BYE"), lines
    expect_eof(r.sock)


def test_prelogin_timeout(imapsrv):
    srv = imapsrv(config="[limits]\nprelogin_timeout = 1s\n")
    r = Raw(srv)
    assert r.line(timeout=5).startswith(b"* BYE")
    expect_eof(r.sock)


def test_commands_need_login(srv):
    r = Raw(srv)
    _, t = r.cmd("SELECT INBOX")
    assert b"BAD" in t
    _, t = r.cmd("FETCH 1 FLAGS")
    assert b"BAD" in t


# ---- other clients ----------------------------------------------------------------------


def test_curl_imaps_list_and_fetch(srv):
    if not shutil.which("curl"):
        pytest.skip("curl not installed")
    deliver(srv, "alice@example.com", subject="curlme")
    base = f"imaps://127.0.0.1:{srv.port(993)}"
    common = ["curl", "-s", "--cacert", os.path.join(srv.data_dir, "tls", "cert.pem"),
              "-k", "-u", f"alice@example.com:{USERS['alice@example.com']}"]
    out = subprocess.run(common + [base + "/"], capture_output=True, timeout=30)
    assert out.returncode == 0, out
    assert b"INBOX" in out.stdout
    out = subprocess.run(common + [base + "/INBOX;UID=1"], capture_output=True, timeout=30)
    assert out.returncode == 0, out
    assert b"Subject: curlme" in out.stdout


def mbsync_rc(srv, tmp_path, local):
    """An mbsyncrc syncing alice's INBOX on 993 both ways with the Maildir
    local (made here)."""
    local.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(f"""IMAPAccount a
Host localhost
Port {srv.port(993)}
User alice@example.com
Pass "{USERS['alice@example.com']}"
SSLType IMAPS
CertificateFile {os.path.join(srv.data_dir, 'tls', 'cert.pem')}

IMAPStore remote
Account a

MaildirStore local
Path {local}/
Inbox {local}/INBOX

Channel c
Far :remote:
Near :local:
Patterns INBOX
Create Both
Expunge Both
SyncState *
""")
    return rc


def test_mbsync_two_way(srv, tmp_path):
    if not shutil.which("mbsync"):
        pytest.skip("mbsync (isync) not installed")
    for i in range(3):
        deliver(srv, "alice@example.com", subject=f"sync{i}")
    local = tmp_path / "Maildir"
    rc = mbsync_rc(srv, tmp_path, local)
    def run():
        out = subprocess.run(["mbsync", "-c", str(rc), "-a"], capture_output=True, timeout=60)
        assert out.returncode == 0, out
    run()
    cur = list((local / "INBOX" / "cur").iterdir()) + list((local / "INBOX" / "new").iterdir())
    assert len(cur) == 3
    # a local message goes up
    newf = local / "INBOX" / "new" / "1.local:2,"
    newf.write_bytes(b"From: me@x\r\nSubject: local\r\n\r\nup\r\n")
    run()
    run()
    c = imap(srv)
    c.select("INBOX")
    typ, data = c.search(None, "ALL")
    assert len(data[0].split()) == 4, data
    typ, data = c.search(None, "SUBJECT", "local")
    assert len(data[0].split()) == 1
    files = list((local / "INBOX" / "cur").iterdir()) + list((local / "INBOX" / "new").iterdir())
    assert len(files) == 4, files


# ---- abrupt ends (the pending-callbacks rule) -------------------------------------------


def test_disconnect_mid_append_and_mid_fetch(srv):
    r = Raw(srv).login()
    r.send(b"a APPEND INBOX {100000+}\r\n" + b"x" * 50000)
    time.sleep(0.2)
    r.sock.close()
    deliver(srv, "alice@example.com", body=(b"y" * 998 + b"\r\n") * 3000)
    for _ in range(3):
        r = Raw(srv).login()
        r.cmd("SELECT INBOX")
        r.send(b"f FETCH 1 (BODY[])\r\n")
        r.line()
        r.sock.close()
    c = imap(srv)
    typ, data = c.select("INBOX")
    assert data == [b"1"], data  # the half APPEND left nothing
    c.logout()


def test_line_limit_after_login(srv):
    r = Raw(srv).login()
    _, t = r.cmd(b"NOOP " + b"x" * 60000)
    assert b"OK" in t, t
    r.send(b"a NOOP " + b"x" * 70000 + b"\r\n")
    assert b"BAD" in r.line()
    _, t = r.cmd("NOOP")
    assert b"OK" in t


def test_pipelined_commands(srv):
    deliver(srv, "alice@example.com")
    r = Raw(srv).login()
    r.send(b"p1 SELECT INBOX\r\np2 FETCH 1 (UID)\r\np3 NOOP\r\n")
    _, t = r.until("p3")
    assert t.startswith(b"p3 OK")


# ---- SEARCH over message bytes (BODY, TEXT, HEADER) --------------------------------------


PLAIN = (b"From: Alice <alice@remote.example>\r\nTo: alice@example.com\r\n"
         b"Subject: Quarterly Report\r\nX-Mailer: FooMail 4.2\r\n"
         b"Received: from relay.example by mx.example;\r\n\tTue, 1 Jul 2003 10:52:37 +0200\r\n"
         b"Date: Tue, 1 Jul 2003 10:52:37 +0200\r\n\r\n"
         b"The numbers are IN, and they look Good.\r\ncaf\xc3\xa9 au lait\r\n")
MIXED = (b"From: b@remote.example\r\nSubject: encoded parts\r\nMIME-Version: 1.0\r\n"
         b"Content-Type: multipart/mixed; boundary=\"zz\"\r\n\r\n"
         b"--zz\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Content-Transfer-Encoding: base64\r\n\r\n"
         b"U2VjcmV0IHBocmFzZSBpbiBiYXNlNjQsIGZvdW5kIGRlY29kZWQu\r\n"
         b"--zz\r\nContent-Type: text/html; charset=utf-8\r\n"
         b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
         b"<p>Soft line br=\r\neaks and =3D signs and caf=C3=A9</p>\r\n"
         b"--zz\r\nContent-Type: application/octet-stream\r\n"
         b"Content-Transfer-Encoding: base64\r\n\r\n"
         b"aGlkZGVuIHRyZWFzdXJl\r\n--zz--\r\n")
OTHER = (b"From: carol@remote.example\r\nSubject: nothing much\r\nX-Mailer: BarClient\r\n\r\n"
         b"Lunch tomorrow?\r\n")


def append(c, msg, flags=None):
    typ, data = c.append("INBOX", flags, None, msg)
    assert typ == "OK", data


def searcher(c):
    def s(*crit, uid=False):
        typ, data = c.uid("SEARCH", *crit) if uid else c.search(None, *crit)
        assert typ == "OK", data
        return data[0].split()
    return s


def test_search_within_older_younger(srv):
    """WITHIN (RFC 5032): OLDER/YOUNGER count seconds back from now on the
    internal date (APPEND's date), not the Date: field; 0 is BAD."""
    c = imap(srv)
    caps = c.capability()[1][0].split()
    assert b"WITHIN" in caps, caps
    assert c.create("within")[0] == "OK"
    now = time.time()
    dates = [now - 7200, now - 30, now - 400 * 86400]  # 2 h, 30 s, 400 days old
    for t in dates:
        assert c.append("within", None, imaplib.Time2Internaldate(t), PLAIN)[0] == "OK"
    c.select("within")
    s = searcher(c)
    assert s("OLDER", "3600") == [b"1", b"3"]
    assert s("YOUNGER", "3600") == [b"2"]
    assert s("YOUNGER", "10000000") == [b"1", b"2"]
    assert s("OLDER", "3600", "YOUNGER", "86400") == [b"1"]
    assert s("NOT", "YOUNGER", "86400") == [b"3"]
    uids = s("ALL", uid=True)
    assert s("OLDER", "86400", uid=True) == [uids[2]]
    r = Raw(srv).login()
    r.cmd("SELECT within")
    for bad in ("OLDER 0", "YOUNGER -1", "OLDER 4294967296", "YOUNGER"):
        lines, t = r.cmd("SEARCH " + bad)
        assert t.split()[1] == b"BAD" and not lines, (bad, lines, t)
    lines, t = r.cmd("SEARCH RETURN (COUNT) OLDER 60")
    assert lines == [b'* ESEARCH (TAG "%s") COUNT 2\r\n' % t.split()[0]], lines
    c.close()
    assert c.delete("within")[0] == "OK"
    c.logout()


def test_search_body_text_header(srv):
    c = imap(srv)
    for m in (PLAIN, MIXED, OTHER):
        append(c, m)
    c.select("INBOX")
    c.store("3", "+FLAGS", r"(\Seen)")
    s = searcher(c)
    assert s("BODY", '"look good"') == [b"1"]          # case-insensitive
    assert s("BODY", "LUNCH") == [b"3"]
    assert s("BODY", "quarterly") == []                # only in the header
    assert s("TEXT", "quarterly") == [b"1"]
    assert s("TEXT", "lunch") == [b"3"]
    assert s("TEXT", "absent-everywhere") == []
    assert s("HEADER", "X-Mailer", "foomail") == [b"1"]
    assert s("HEADER", "x-mailer", '""') == [b"1", b"3"]  # presence
    assert s("HEADER", "Received", '"mx.example;\tTue, 1"') == [b"1"]  # unfolded
    assert s("HEADER", "Received", "relay") == [b"1"]
    assert s("HEADER", "X-Nothing", '""') == []
    assert s("HEADER", "MIME-Version", "1.0") == [b"2"]
    assert s("NOT", "BODY", "lunch") == [b"1", b"2"]
    assert s("OR", "BODY", "lunch", "(SUBJECT encoded BODY secret)") == [b"2", b"3"]
    assert s("NOT", "(OR BODY lunch BODY numbers)") == [b"2"]
    assert s("SEEN", "BODY", "lunch") == [b"3"]
    assert s("UNSEEN", "BODY", "lunch") == []
    uids = s("ALL", uid=True)
    assert s("BODY", "lunch", uid=True) == [uids[2]]
    # UTF-8: bytes compared after ASCII case folding
    r = Raw(srv).login()
    r.cmd("SELECT INBOX")
    lines, t = r.cmd(b"SEARCH CHARSET UTF-8 BODY {5+}\r\nCAF\xc3\xa9")
    assert t.startswith(b"t3 OK"), t
    assert lines == [b"* SEARCH 1 2\r\n"], lines
    lines, t = r.cmd("SEARCH CHARSET us-ascii TEXT lunch")
    assert lines == [b"* SEARCH 3\r\n"], lines
    lines, t = r.cmd("SEARCH CHARSET ISO-8859-1 BODY lunch")
    assert t.startswith(b"t5 NO [BADCHARSET (UTF-8 US-ASCII)]"), t
    lines, t = r.cmd("SEARCH RETURN (MIN MAX COUNT ALL) OR BODY lunch TEXT foomail")
    assert lines == [b'* ESEARCH (TAG "t6") MIN 1 MAX 3 COUNT 2 ALL 1,3\r\n'], lines
    lines, t = r.cmd("UID SEARCH RETURN (COUNT) BODY nothing-at-all")
    assert lines == [b'* ESEARCH (TAG "t7") UID COUNT 0\r\n'], lines
    lines, t = r.cmd("SEARCH BODY")
    assert t.startswith(b"t8 BAD"), t
    lines, t = r.cmd("SEARCH HEADER X-Mailer")
    assert t.startswith(b"t9 BAD"), t
    c.logout()


def test_search_decoded_parts(srv):
    c = imap(srv)
    append(c, MIXED)
    append(c, OTHER)
    c.select("INBOX")
    s = searcher(c)
    assert s("BODY", '"secret phrase in base64"') == [b"1"]   # base64 text/plain
    assert s("BODY", "U2VjcmV0") == []                        # not the encoded form
    assert s("BODY", '"soft line breaks and = signs"') == [b"1"]  # quoted-printable
    assert s("TEXT", '"FOUND DECODED"') == [b"1"]
    assert s("BODY", "treasure") == []   # base64 attachment: not text, not searched
    r = Raw(srv).login()
    r.cmd("SELECT INBOX")
    lines, t = r.cmd(b"SEARCH CHARSET UTF-8 BODY {5+}\r\ncaf\xc3\xa9")
    assert lines == [b"* SEARCH 1\r\n"], lines
    c.logout()


def test_search_match_straddles_read_boundary(srv):
    """IMAP_READ_CHUNK is 64 KiB: TEXT reads from offset 0, BODY from the
    body's start, in 64 KiB pieces; needles are put across both."""
    hdr = b"From: big@remote.example\r\nSubject: big\r\n\r\n"
    body = bytearray(b"x" * 200000)
    chunk = 65536
    body[chunk - 5:chunk - 5 + 10] = b"BodyNeedle"            # BODY boundary
    t_at = chunk - len(hdr) - 4
    body[t_at:t_at + 10] = b"TextNeedle"                      # TEXT boundary
    body[2 * chunk - 3:2 * chunk - 3 + 10] = b"SecondOne!"
    c = imap(srv)
    append(c, hdr + bytes(body))
    append(c, OTHER)
    c.select("INBOX")
    s = searcher(c)
    assert s("BODY", "bodyneedle") == [b"1"]
    assert s("TEXT", "textneedle") == [b"1"]
    assert s("BODY", "secondone!") == [b"1"]
    assert s("BODY", "bodyneedlf") == []
    assert s("OR", "BODY", "lunch", "BODY", "textneedle") == [b"1", b"2"]
    c.logout()


def big_mailbox(srv, n=12, size=256 * 1024):
    c = imap(srv)
    for i in range(n):
        body = (b"filler line without the word\r\n" * (size // 31))
        if i % 3 == 0:
            body += b"rare-token-%d\r\n" % i
        append(c, b"Subject: big %d\r\n\r\n" % i + body)
    c.logout()


def slow_search(n_keys=48):
    """A program with many BODY keys: reads shrink to bound the work per
    step, so the search takes a while (and is still running when the
    other side acts)."""
    keys = [f"BODY absent-{k}" for k in range(n_keys)] + ["BODY rare-token"]
    while len(keys) > 1:  # a balanced OR tree: nesting stays shallow
        keys = [f"OR {keys[i]} {keys[i + 1]}" if i + 1 < len(keys) else keys[i]
                for i in range(0, len(keys), 2)]
    return keys[0]


def test_search_while_other_session_expunges(srv):
    big_mailbox(srv)
    a = Raw(srv).login()
    lines, _ = a.cmd("SELECT INBOX")
    assert b"* 12 EXISTS\r\n" in lines
    b = Raw(srv).login()
    b.cmd("SELECT INBOX")
    b.cmd("STORE 1:6 +FLAGS.SILENT (\\Deleted)")
    a.send(b"s SEARCH " + slow_search().encode() + b"\r\n")
    _, t = b.cmd("EXPUNGE", timeout=30)
    assert b" OK " in t, t
    deliver(srv, "alice@example.com", subject="during", body=b"rare-token-new\r\n")
    lines, t = a.until("s", timeout=60)
    assert t.startswith(b"s OK"), t
    assert not any(b"EXPUNGE" in l for l in lines), lines
    hits = [l for l in lines if l.startswith(b"* SEARCH")]
    assert len(hits) == 1, lines
    nums = [int(x) for x in hits[0].split()[2:]]
    # numbers are the ones the client knows; 1 and 4 may or may not match
    # (expunged during the search), 7 and 10 must (never expunged)
    assert 7 in nums and 10 in nums, nums
    assert all(x in (1, 4, 7, 10) for x in nums), nums
    lines, t = a.cmd("NOOP")
    assert sum(1 for l in lines if l.endswith(b" EXPUNGE\r\n")) == 6, lines
    lines, t = a.cmd("SEARCH BODY rare-token")
    assert lines[-1] == b"* SEARCH 1 4 7\r\n", lines   # old 7, 10 and the new one


def test_search_client_disconnects_mid_search(srv):
    big_mailbox(srv)
    for _ in range(3):
        r = Raw(srv).login()
        r.cmd("SELECT INBOX")
        r.send(b"s SEARCH " + slow_search().encode() + b"\r\n")
        time.sleep(0.05)
        r.sock.close()
    # the same search, not interrupted, is answered (so the ones above
    # were valid searches, cut while running)
    r = Raw(srv).login()
    r.cmd("SELECT INBOX")
    t0 = time.monotonic()
    lines, t = r.cmd("SEARCH " + slow_search(), timeout=60)
    took = time.monotonic() - t0
    assert lines[-1] == b"* SEARCH 1 4 7 10\r\n", lines
    # others are served meanwhile and afterwards
    other = Raw(srv).login()
    _, t = other.cmd("NOOP", timeout=30)
    assert t.startswith(b"t2 OK")
    other.cmd("SELECT INBOX")
    lines, t = other.cmd("SEARCH BODY rare-token", timeout=60)
    assert lines[-1] == b"* SEARCH 1 4 7 10\r\n", lines
    print(f"slow search took {took:.3f}s")


def test_search_does_not_starve_other_sessions(imapsrv):
    """One loop: a long search yields to the ring between bounded steps,
    so another session's commands are answered while it runs."""
    srv = imapsrv(threads=1)
    big_mailbox(srv)
    y = Raw(srv).login()
    y.cmd("SELECT INBOX")
    x = Raw(srv).login()
    x.cmd("SELECT INBOX")
    x.send(b"s SEARCH " + slow_search(96).encode() + b"\r\n")
    for _ in range(3):
        _, t = y.cmd("NOOP", timeout=30)
        assert b" OK " in t, t
    lines, t = y.cmd("FETCH 2 (BODY.PEEK[HEADER])", timeout=30)
    assert b" OK " in t, t
    # y was served while x's search still ran (it has not answered yet)
    buf = not_done_yet_then_read(x.sock, b"s OK", 60)
    assert b"* SEARCH 1 4 7 10\r\n" in buf, buf


def test_search_empty_mailbox_and_literal_strings(srv):
    r = Raw(srv).login()
    r.cmd("CREATE Empty")
    r.cmd("SELECT Empty")
    lines, t = r.cmd("SEARCH OR BODY x TEXT y")
    assert lines == [b"* SEARCH\r\n"] and b" OK " in t, (lines, t)
    lines, t = r.cmd("SEARCH RETURN (MIN MAX COUNT) BODY x")
    assert lines == [b'* ESEARCH (TAG "t5") COUNT 0\r\n'], lines
    c = imap(srv)
    append(c, PLAIN)
    c.logout()
    r.cmd("SELECT INBOX")
    # field name and string as literals, synchronising and not
    r.send(b"l1 SEARCH HEADER {8}\r\n")
    assert r.line().startswith(b"+")
    r.send(b"X-MAILER {7+}\r\nfoomail\r\n")
    lines, t = r.until("l1")
    assert lines == [b"* SEARCH 1\r\n"] and t.startswith(b"l1 OK"), (lines, t)


def test_search_many_messages_yields(srv):
    """More messages than one step evaluates (IMAP_SEARCH_STEP_MSGS, 256):
    the job yields to the ring and resumes; a client gone meanwhile is
    freed at the yield's completion."""
    r = Raw(srv).login()
    n = 600
    batch = b"".join(b"a%d APPEND INBOX {%d+}\r\n%s\r\n" % (
        i, len(m), m) for i, m in enumerate(
        b"Subject: m%d\r\n\r\nbody %s\r\n" % (i, b"seven" if i % 7 == 0 else b"other")
        for i in range(n)))
    r.send(batch)
    _, t = r.until(f"a{n - 1}", timeout=60)
    assert b" OK " in t, t
    lines, _ = r.cmd("SELECT INBOX")
    assert f"* {n} EXISTS\r\n".encode() in lines, lines
    want = [i + 1 for i in range(n) if i % 7 == 0]
    lines, t = r.cmd("SEARCH NOT DELETED SUBJECT m1", timeout=30)
    hits = [int(x) for x in lines[-1].split()[2:]]
    assert hits == [i + 1 for i in range(n) if str(i).startswith("1")], hits
    lines, t = r.cmd("SEARCH BODY seven", timeout=30)
    assert [int(x) for x in lines[-1].split()[2:]] == want
    lines, t = r.cmd("SEARCH RETURN (COUNT MAX) OR BODY seven 600", timeout=30)
    assert lines[-1] == f'* ESEARCH (TAG "t5") MAX 600 COUNT {len(want) + 1}\r\n'.encode(), lines
    for _ in range(3):
        x = Raw(srv).login()
        x.cmd("SELECT INBOX")
        x.send(b"s SEARCH UNDELETED NOT SUBJECT zzz\r\ns2 SEARCH BODY seven\r\n")
        x.sock.close()
    lines, t = r.cmd("NOOP", timeout=30)
    assert b" OK " in t


# ---- IMAP4rev2 (RFC 9051) and QRESYNC (RFC 7162) ------------------------------------------


def mutf7(name):
    """Modified UTF-7 (RFC 3501 5.1.3), written here independently of the
    server's encoder."""
    import base64
    out, run = [], []

    def flush():
        if run:
            b = base64.b64encode("".join(run).encode("utf-16-be")).decode()
            out.append("&" + b.rstrip("=").replace("/", ",") + "-")
            run.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


def list_names(lines):
    """The mailbox names of LIST lines, as bytes (quoted strings only)."""
    names = []
    for l in lines:
        m = re.match(rb'\* LIST \(.*?\) "/" "(.*)"\r\n$', l)
        if m:
            names.append(m.group(1))
    return names


def test_rev2_enable_and_utf8_mailbox_names(srv):
    name = "Ärger/Entwürfe"
    r = Raw(srv)
    assert b"IMAP4rev2" in r.greeting
    r.login()
    lines, _ = r.cmd("CAPABILITY")
    caps = lines[0].split()
    assert b"IMAP4rev1" in caps and b"IMAP4rev2" in caps and b"QRESYNC" in caps, lines
    # created by a rev1 client in modified UTF-7
    _, t = r.cmd(f'CREATE "{mutf7("Ärger")}"')
    assert b" OK " in t, t
    _, t = r.cmd(f'CREATE "{mutf7(name)}"')
    assert b" OK " in t, t
    lines, _ = r.cmd('LIST "" "*"')
    assert b"&AMQ-rger/Entw&APw-rfe" in list_names(lines), lines
    assert mutf7(name) == "&AMQ-rger/Entw&APw-rfe"
    _, t = r.cmd('CREATE "&AGE-"')  # malformed modified UTF-7 stays an error
    assert b" NO " in t, t
    # a rev1 session also takes the name in 8-bit UTF-8
    lines, t = r.cmd(b'STATUS "' + name.encode() + b'" (MESSAGES)')
    assert b" OK " in t and lines[0].startswith(b"* STATUS "), (lines, t)

    lines, t = r.cmd("ENABLE IMAP4rev2")
    assert lines == [b"* ENABLED IMAP4rev2\r\n"], lines
    lines, _ = r.cmd("ENABLE IMAP4rev2")
    assert lines == [b"* ENABLED\r\n"], lines  # already on
    lines, _ = r.cmd('LIST "" "*"')
    names = list_names(lines)
    assert name.encode() in names and "Ärger".encode() in names, lines
    assert not any(b"&" in n for n in names), names
    assert any(b"\\HasChildren" in l and "Ärger".encode() + b'"' in l for l in lines), lines
    # UTF-8 in: LIST patterns, STATUS, SELECT, CREATE ("&" is a plain character now)
    lines, _ = r.cmd(b'LIST "" "\xc3\x84rger/%"')
    assert list_names(lines) == [name.encode()], lines
    lines, t = r.cmd(b'STATUS "' + name.encode() + b'" (MESSAGES UIDNEXT)')
    assert lines == [b'* STATUS "' + name.encode() + b'" (MESSAGES 0 UIDNEXT 1)\r\n'], lines
    _, t = r.cmd(b'CREATE "Caf\xc3\xa9&Co"')
    assert b" OK " in t, t
    msg = b"Subject: utf8\r\n\r\nhi\r\n"
    r.send(b'a APPEND "Caf\xc3\xa9&Co" {%d+}\r\n' % len(msg) + msg + b"\r\n")
    _, t = r.until("a")
    assert t.startswith(b"a OK [APPENDUID"), t
    lines, _ = r.cmd(b'STATUS "Caf\xc3\xa9&Co" (MESSAGES)')
    assert lines == [b'* STATUS "Caf\xc3\xa9&Co" (MESSAGES 1)\r\n'], lines
    _, t = r.cmd(b'CREATE "bad\xc3"')  # not UTF-8
    assert b" NO " in t or b" BAD " in t, t
    lines, t = r.cmd(b'SELECT "' + name.encode() + b'"')
    assert b" OK " in t, t
    assert not any(b"RECENT" in l for l in lines), lines  # RFC 9051 has no RECENT
    assert b'* LIST (\\HasNoChildren) "/" "' + name.encode() + b'"\r\n' in lines, lines
    lines, t = r.cmd("SELECT INBOX")
    assert lines[0].startswith(b"* OK [CLOSED]"), lines
    assert b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n' in lines, lines

    # a rev1 session sees the rev2 client's name in modified UTF-7
    r1 = Raw(srv).login()
    lines, _ = r1.cmd('LIST "" "Caf*"')
    assert list_names(lines) == [mutf7("Café&Co").encode()], lines
    lines, _ = r1.cmd("SELECT INBOX")
    assert b"* 0 RECENT\r\n" in lines, lines


def test_rev2_search_answers_esearch(srv):
    for i in range(3):
        deliver(srv, "alice@example.com", subject=f"e{i}")
    r = Raw(srv).login()
    r.cmd("SELECT INBOX")
    r.cmd("STORE 2 +FLAGS (\\Flagged)")
    lines, _ = r.cmd("SEARCH ALL")
    assert lines == [b"* SEARCH 1 2 3\r\n"], lines  # rev1: SEARCH
    r.cmd("UNSELECT")  # ENABLE is for the authenticated state only
    r.cmd("ENABLE IMAP4rev2")
    r.cmd("SELECT INBOX")
    lines, t = r.cmd("SEARCH ALL")
    assert lines == [b'* ESEARCH (TAG "%s") ALL 1:3\r\n' % t.split()[0]], lines
    lines, t = r.cmd("UID SEARCH FLAGGED")
    assert lines == [b'* ESEARCH (TAG "%s") UID ALL 2\r\n' % t.split()[0]], lines
    lines, t = r.cmd("SEARCH DRAFT")
    assert lines == [b'* ESEARCH (TAG "%s")\r\n' % t.split()[0]], lines
    lines, t = r.cmd("SEARCH RETURN (COUNT) ALL")
    assert lines == [b'* ESEARCH (TAG "%s") COUNT 3\r\n' % t.split()[0]], lines
    # STATUS DELETED (RFC 9051) counts \Deleted messages
    r.cmd("STORE 1,3 +FLAGS.SILENT (\\Deleted)")
    lines, _ = r.cmd("STATUS INBOX (DELETED MESSAGES)")
    assert lines == [b"* STATUS \"INBOX\" (DELETED 2 MESSAGES 3)\r\n"], lines
    r.cmd("STORE 1 -FLAGS.SILENT (\\Deleted)")
    r.cmd("EXPUNGE")
    lines, _ = r.cmd("STATUS INBOX (DELETED MESSAGES)")
    assert lines == [b"* STATUS \"INBOX\" (DELETED 0 MESSAGES 2)\r\n"], lines


def select_lines(r, args):
    lines, t = r.cmd(f"SELECT INBOX {args}" if args else "SELECT INBOX")
    assert b" OK " in t, (lines, t)
    return lines


def code(lines, name):
    for l in lines:
        m = re.search(rb"\[" + name.encode() + rb" (\d+)\]", l)
        if m:
            return int(m.group(1))
    raise AssertionError(f"no {name} in {lines}")


def vanished(lines, earlier=True):
    pre = b"* VANISHED (EARLIER) " if earlier else b"* VANISHED "
    got = [l[len(pre):].strip() for l in lines if l.startswith(pre)]
    assert len(got) <= 1, lines
    return got[0].decode() if got else None


def fetched(lines):
    """{uid: line} of the untagged FETCH lines."""
    out = {}
    for l in lines:
        m = re.match(rb"\* \d+ FETCH \(.*UID (\d+)", l)
        if m:
            out[int(m.group(1))] = l
    return out


def expunge_uids(r, uids):
    r.cmd("UID STORE %s +FLAGS.SILENT (\\Deleted)" % uids)
    _, t = r.cmd("UID EXPUNGE %s" % uids)
    assert b" OK " in t, t


def test_qresync_select_reports_vanished_and_changes(srv):
    for i in range(8):
        deliver(srv, "alice@example.com", subject=f"q{i}")
    b = Raw(srv).login()
    b.cmd("SELECT INBOX")
    expunge_uids(b, "1")  # before the client's MODSEQ: not reported
    a = Raw(srv).login()
    lines, t = a.cmd("SELECT INBOX (QRESYNC (1 1))")
    assert b" BAD " in t, t  # QRESYNC not enabled
    lines, _ = a.cmd("ENABLE QRESYNC")
    assert lines == [b"* ENABLED QRESYNC\r\n"], lines
    lines = select_lines(a, "")
    uv, m0 = code(lines, "UIDVALIDITY"), code(lines, "HIGHESTMODSEQ")
    a.cmd("LOGOUT")
    # while the client is away: expunges in two commands, flag changes
    expunge_uids(b, "3:4")
    b.cmd("UID STORE 6 +FLAGS.SILENT (\\Flagged)")
    expunge_uids(b, "7")
    b.cmd("UID STORE 8 +FLAGS.SILENT (\\Seen)")

    c = Raw(srv).login()
    c.cmd("ENABLE QRESYNC")
    lines = select_lines(c, f"(QRESYNC ({uv} {m0} 1:8))")
    assert vanished(lines) == "3:4,7", lines
    f = fetched(lines)
    assert set(f) == {6, 8}, lines
    assert b"\\Flagged" in f[6] and b"MODSEQ (" in f[6] and b"\\Seen" in f[8], f
    assert code(lines, "HIGHESTMODSEQ") > m0
    # VANISHED comes before the FETCH responses
    vi = next(i for i, l in enumerate(lines) if l.startswith(b"* VANISHED"))
    assert all(vi < i for i, l in enumerate(lines) if b" FETCH " in l), lines
    # again while selected: CLOSED first; without known-uids the same set
    lines = select_lines(c, f"(QRESYNC ({uv} {m0}))")
    assert lines[0].startswith(b"* OK [CLOSED]"), lines
    assert vanished(lines) == "3:4,7", lines
    # known-uids limit both answers
    lines = select_lines(c, f"(QRESYNC ({uv} {m0} 4:6))")
    assert vanished(lines) == "4" and set(fetched(lines)) == {6}, lines
    # from before the first expunge: UID 1 too; with seq-match data
    lines = select_lines(c, f"(QRESYNC ({uv} 1 1:8 (1:3 1:3)))")
    assert vanished(lines) == "1,3:4,7", lines
    # the current MODSEQ: nothing; a wrong UIDVALIDITY: a plain SELECT
    hm = code(lines, "HIGHESTMODSEQ")
    lines = select_lines(c, f"(QRESYNC ({uv} {hm} 1:8))")
    assert vanished(lines) is None and not fetched(lines), lines
    lines = select_lines(c, f"(QRESYNC ({uv + 1} {m0} 1:8))")
    assert vanished(lines) is None and not fetched(lines), lines
    # EXAMINE takes it too
    lines, t = c.cmd(f"EXAMINE INBOX (QRESYNC ({uv} {m0}))")
    assert b"READ-ONLY" in t and vanished(lines) == "3:4,7", lines
    for bad_args in ("(QRESYNC)", "(QRESYNC (x 1))", f"(QRESYNC ({uv}))",
                     f"(QRESYNC ({uv} 1 1:8 (1:2)))", f"(QRESYNC ({uv} 1 nope))"):
        _, t = c.cmd(f"SELECT INBOX {bad_args}")
        assert b" BAD " in t, (bad_args, t)


def test_qresync_vanished_during_session(srv):
    for i in range(5):
        deliver(srv, "alice@example.com", subject=f"v{i}")
    a = Raw(srv).login()
    a.cmd("ENABLE QRESYNC")
    m0 = code(select_lines(a, ""), "HIGHESTMODSEQ")
    b = Raw(srv).login()
    b.cmd("SELECT INBOX")
    expunge_uids(b, "2:3")
    b.cmd("UID STORE 4 +FLAGS.SILENT (\\Flagged)")
    # never during FETCH; then one VANISHED, no EXPUNGE
    lines, t = a.cmd("FETCH 1:5 (UID)")
    assert not any(b"VANISHED" in l or b"EXPUNGE" in l for l in lines), lines
    # the flag change came with a MODSEQ above the held-back expunge: a
    # HIGHESTMODSEQ from before it says where to resynchronise from
    assert any(b"\\Flagged" in l and b" MODSEQ (" in l for l in lines), lines
    assert code(lines, "HIGHESTMODSEQ") == m0, lines
    lines, _ = a.cmd("NOOP")
    assert vanished(lines, earlier=False) == "2:3", lines
    assert not any(b"EXPUNGE" in l for l in lines), lines
    lines, _ = a.cmd("FETCH 1:* (UID)")
    assert sorted(fetched(lines)) == [1, 4, 5], lines
    # the session's own EXPUNGE: VANISHED and HIGHESTMODSEQ in the tagged OK
    a.cmd("UID STORE 4 +FLAGS.SILENT (\\Deleted)")
    lines, t = a.cmd("EXPUNGE")
    assert vanished(lines, earlier=False) == "4", lines
    assert re.match(rb"t\d+ OK \[HIGHESTMODSEQ \d+\]", t), t
    # IDLE too
    a.send(b"i IDLE\r\n")
    assert a.line().startswith(b"+")
    expunge_uids(b, "5")
    ln = a.line(timeout=10)
    if b"FETCH" in ln:  # the \Deleted flag may come first
        ln = a.line(timeout=10)
    assert ln == b"* VANISHED 5\r\n", ln
    a.send(b"DONE\r\n")
    _, t = a.until("i")
    assert t.startswith(b"i OK")
    # a rev1 session without QRESYNC still gets EXPUNGE
    lines, _ = b.cmd("NOOP")
    assert not any(b"VANISHED" in l for l in lines), lines


def test_qresync_uid_fetch_changedsince_vanished(srv):
    for i in range(6):
        deliver(srv, "alice@example.com", subject=f"c{i}")
    a = Raw(srv).login()
    lines = select_lines(a, "")
    m0 = code(lines, "HIGHESTMODSEQ")
    _, t = a.cmd(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {m0} VANISHED)")
    assert b" BAD " in t, t  # QRESYNC not enabled
    a.cmd("UNSELECT")  # ENABLE is for the authenticated state only
    a.cmd("ENABLE QRESYNC")
    select_lines(a, "")
    b = Raw(srv).login()
    b.cmd("SELECT INBOX")
    expunge_uids(b, "2,5")
    b.cmd("UID STORE 3 +FLAGS.SILENT (\\Answered)")
    lines, t = a.cmd(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {m0} VANISHED)")
    assert b" OK " in t, t
    # UIDs 2 and 5 are still numbered in this session (not announced yet):
    # they come with the next VANISHED, not as EARLIER
    assert vanished(lines) is None, lines
    lines, _ = a.cmd("NOOP")
    assert vanished(lines, earlier=False) == "2,5", lines
    lines, t = a.cmd(f"UID FETCH 1:6 (FLAGS) (CHANGEDSINCE {m0} VANISHED)")
    assert vanished(lines) == "2,5", lines
    f = fetched(lines)
    assert set(f) == {3} and b"\\Answered" in f[3] and b"MODSEQ" in f[3], lines
    vi = next(i for i, l in enumerate(lines) if l.startswith(b"* VANISHED"))
    assert all(vi < i for i, l in enumerate(lines) if b" FETCH " in l), lines
    # only UIDs of the set are named
    lines, _ = a.cmd(f"UID FETCH 3:4 (FLAGS) (CHANGEDSINCE {m0} VANISHED)")
    assert vanished(lines) is None and set(fetched(lines)) == {3}, lines
    # "*" reaches past the last message: the expunged last UID is named
    expunge_uids(b, "6")
    a.cmd("NOOP")
    lines, _ = a.cmd(f"UID FETCH 4:* (FLAGS) (CHANGEDSINCE {m0} VANISHED)")
    assert vanished(lines) == "5:6", lines
    for bad_cmd in ("UID FETCH 1:* (FLAGS) (VANISHED)",
                    f"FETCH 1:* (FLAGS) (CHANGEDSINCE {m0} VANISHED)",
                    "UID FETCH 1:* (FLAGS) (CHANGEDSINCE x)"):
        _, t = a.cmd(bad_cmd)
        assert b" BAD " in t, (bad_cmd, t)


def test_qresync_expunge_memory_survives_restart(imapsrv):
    srv = imapsrv()
    for i in range(6):
        deliver(srv, "alice@example.com", subject=f"r{i}")
    a = Raw(srv).login()
    a.cmd("ENABLE QRESYNC")
    lines = select_lines(a, "")
    uv = code(lines, "UIDVALIDITY")
    expunge_uids(a, "1")
    lines, _ = a.cmd("STATUS INBOX (HIGHESTMODSEQ)")
    m0 = int(re.search(rb"HIGHESTMODSEQ (\d+)", lines[0]).group(1))
    expunge_uids(a, "4:5")
    a.cmd("UID STORE 2 +FLAGS.SILENT (\\Flagged)")
    a.cmd("LOGOUT")
    assert srv.stop() == 0
    srv.start()
    c = Raw(srv).login()
    c.cmd("ENABLE QRESYNC")
    lines = select_lines(c, f"(QRESYNC ({uv} {m0} 1:6))")
    assert vanished(lines) == "4:5", lines
    assert set(fetched(lines)) == {2}, lines
    lines, t = c.cmd(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {m0} VANISHED)")
    assert vanished(lines) == "4:5" and set(fetched(lines)) == {2}, lines


def test_log_rewrite_keeps_what_clients_see_across_a_restart(imapsrv):
    """A folder whose index log is mostly history (expunged messages,
    superseded flag changes) rewrites it (docs/store.md "Rewriting the
    log"): the log shrinks on disk, and what an IMAP client sees stays the
    same, in the running server and after a restart: UIDNEXT above the
    expunged newest message, UIDVALIDITY, HIGHESTMODSEQ, every UID's flags
    and MODSEQ, QRESYNC's VANISHED, the bytes."""
    srv = imapsrv(config="[server]\ncheckpoint_after = 16k\n")
    for i in range(8):
        deliver(srv, "alice@example.com", subject=f"w{i}")
    log = os.path.join(srv.data_dir, "mail", "alice@example.com", "f0", "log")
    a = Raw(srv).login()
    a.cmd("ENABLE QRESYNC")
    select_lines(a, "")
    for _ in range(4):  # 128 messages
        _, t = a.cmd("COPY 1:* INBOX", timeout=30)
        assert b" OK " in t, t
    full = os.path.getsize(log)
    lines, _ = a.cmd("STATUS INBOX (HIGHESTMODSEQ)")
    m0 = int(re.search(rb"HIGHESTMODSEQ (\d+)", lines[0]).group(1))
    a.cmd("UID STORE 11:40 +FLAGS.SILENT (\\Flagged $Work)")
    expunge_uids(a, "1:10")
    expunge_uids(a, "41:128")
    # flag churn until the automatic rewrite has run
    deadline = time.time() + 20
    n = 0
    while os.path.getsize(log) * 2 > full and time.time() < deadline:
        a.cmd("UID STORE 11:40 %sFLAGS.SILENT (\\Seen)" % ("+" if n % 2 == 0 else "-"))
        n += 1
    assert os.path.getsize(log) * 2 <= full, (os.path.getsize(log), full, n)
    assert srv.log_lines(event="store-log-rewrite"), srv.log()[-3000:]
    if n % 2:
        a.cmd("UID STORE 11:40 -FLAGS.SILENT (\\Seen)")

    def state(r):
        st, _ = r.cmd("STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)")
        fl, _ = r.cmd("UID FETCH 1:* (FLAGS MODSEQ)")
        va, _ = r.cmd(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {m0} VANISHED)")
        body, _ = r.cmd("UID FETCH 40 (BODY.PEEK[])")
        return st, sorted(fl), vanished(va), body

    before = state(a)
    assert b"MESSAGES 30 UIDNEXT 129" in before[0][0], before[0]
    assert before[2] == "1:10,41:128", before[2]
    assert len(before[1]) == 30 and all(b"\\Flagged $Work" in l for l in before[1]), before[1]
    a.cmd("LOGOUT")
    assert srv.stop() == 0
    srv.start()
    b = Raw(srv).login()
    b.cmd("ENABLE QRESYNC")
    select_lines(b, "")
    after = state(b)
    assert after == before
    # and the folder goes on from UIDNEXT 129
    _, t = b.cmd("COPY 11 INBOX")
    assert b"COPYUID" in t and b" 129]" in t, t


def test_qresync_past_the_expunge_memory_names_every_missing_uid(imapsrv):
    """The store remembers 1024 expunge runs; older than that, VANISHED
    (EARLIER) names every UID of the client's set that is not a message
    (RFC 7162 allows it), including ones expunged before its MODSEQ. A small
    send queue: a resync that names every message waits for the socket."""
    srv = imapsrv(config="[limits]\nsend_queue_max = 16k\n")
    for i in range(9):
        deliver(srv, "alice@example.com", subject=f"p{i}")
    a = Raw(srv).login()
    a.cmd("ENABLE QRESYNC")
    lines = select_lines(a, "")
    uv = code(lines, "UIDVALIDITY")
    for _ in range(8):  # 9 * 2**8 = 2304 messages
        _, t = a.cmd("COPY 1:* INBOX", timeout=60)
        assert b" OK " in t, t
    expunge_uids(a, "2")
    lines, _ = a.cmd("STATUS INBOX (HIGHESTMODSEQ MESSAGES)")
    m0 = int(re.search(rb"HIGHESTMODSEQ (\d+)", lines[0]).group(1))
    assert b"MESSAGES 2303" in lines[0], lines
    # every odd UID, one run each, in two commands (1024 ranges a set)
    odd = list(range(1, 2305, 2))
    for part in (odd[:1000], odd[1000:]):
        uids = ",".join(map(str, part))
        _, t = a.cmd("UID STORE " + uids + " +FLAGS.SILENT (\\Deleted)", timeout=60)
        assert b" OK " in t, t
        lines, t = a.cmd("UID EXPUNGE " + uids, timeout=60)
        assert b" OK " in t, t
        assert vanished(lines, earlier=False) == uids, lines
    lines, _ = a.cmd("STATUS INBOX (HIGHESTMODSEQ)")
    m1 = int(re.search(rb"HIGHESTMODSEQ (\d+)", lines[0]).group(1))
    a.cmd("LOGOUT")
    c = Raw(srv).login()
    c.cmd("ENABLE QRESYNC")
    lines = select_lines(c, f"(QRESYNC ({uv} {m0} 1:12))")
    assert vanished(lines) == "1:3,5,7,9,11", (m0, m1, lines)
    # the recent past is still exact
    lines = select_lines(c, f"(QRESYNC ({uv} {m1 - 1} 2001:2010))")
    assert vanished(lines) == "2001,2003,2005,2007,2009", lines
    lines = select_lines(c, f"(QRESYNC ({uv} {m1}))")
    assert vanished(lines) is None, lines
    # from MODSEQ 1: every message is a FETCH (~70 KB, over the queue limit)
    lines = select_lines(c, f"(QRESYNC ({uv} 1))")
    f = fetched(lines)
    assert sorted(f) == list(range(4, 2305, 2)), len(f)
    assert all(b" MODSEQ (" in l and b"FLAGS (" in l for l in f.values())
    assert vanished(lines).startswith("1:3,5,7,9,11,"), lines[:12]


# ---- LIST-EXTENDED, LIST-STATUS, \Noselect parents ---------------------------------------


def list_lines(r, cmd):
    lines, t = r.cmd(cmd)
    assert b" OK " in t, (cmd, t, lines)
    return [l.decode().rstrip("\r\n") for l in lines if l.startswith(b"* ")]


def by_name(lines):
    """{mailbox name: the whole line} of "* LIST" lines."""
    out = {}
    for l in lines:
        if l.startswith("* LIST"):
            out[re.search(r'"/" ("[^"]*"|\S+)', l).group(1).strip('"')] = l
    return out


def test_capability_lists_the_extensions(srv):
    r = Raw(srv).login()
    lines, _ = r.cmd("CAPABILITY")
    caps = lines[0].split()
    for cap in (b"LIST-EXTENDED", b"LIST-STATUS", b"STATUS=SIZE", b"QUOTA",
                b"QUOTA=RES-STORAGE", b"QUOTA=RES-MESSAGE", b"MULTIAPPEND"):
        assert cap in caps, (cap, lines[0])


def test_create_deep_shows_noselect_parents(srv):
    r = Raw(srv).login()
    _, t = r.cmd("CREATE a/b/c")
    assert b" OK " in t, t
    got = by_name(list_lines(r, 'LIST "" "*"'))
    assert "\\Noselect" in got["a"] and "\\HasChildren" in got["a"], got
    assert "\\Noselect" in got["a/b"] and "\\HasChildren" in got["a/b"], got
    assert "\\Noselect" not in got["a/b/c"] and "\\HasNoChildren" in got["a/b/c"], got
    # the extended syntax says \NonExistent
    got = by_name(list_lines(r, 'LIST () "" "a*"'))
    assert "\\NonExistent" in got["a"] and "\\HasChildren" in got["a"], got
    # a \Noselect parent cannot be selected or deleted; it can be created
    _, t = r.cmd("SELECT a")
    assert b" NO " in t, t
    _, t = r.cmd("DELETE a/b")
    assert b" NO " in t, t
    _, t = r.cmd("CREATE a")
    assert b" OK " in t, t
    got = by_name(list_lines(r, 'LIST "" "a"'))
    assert "\\Noselect" not in got["a"] and "\\HasChildren" in got["a"], got


def test_delete_parent_with_children_leaves_noselect(srv):
    r = Raw(srv).login()
    for name in ("p", "p/q"):
        _, t = r.cmd(f"CREATE {name}")
        assert b" OK " in t
    r.cmd("SELECT p")
    _, t = r.cmd("APPEND p {11+}\r\nSubject: x\r\n")
    assert b" OK " in t, t
    _, t = r.cmd("UNSELECT")
    _, t = r.cmd("DELETE p")
    assert b" OK " in t, t
    got = by_name(list_lines(r, 'LIST "" "p*"'))
    assert "\\Noselect" in got["p"] and "\\HasChildren" in got["p"], got
    assert "\\Noselect" not in got["p/q"], got
    # the messages went with it: a new p is empty
    r.cmd("CREATE p")
    lines, t = r.cmd("STATUS p (MESSAGES)")
    assert b"MESSAGES 0" in lines[0], lines


def test_list_extended_selection_and_return_options(srv):
    r = Raw(srv).login()
    for name in ("Foo", "Foo/Bar", "Foo/Baz", "Moo", "Tofu/Lo"):
        assert b" OK " in r.cmd(f"CREATE {name}")[1]
    for name in ("Foo/Bar", "Moo", "Gone"):
        assert b" OK " in r.cmd(f"SUBSCRIBE {name}")[1]
    # SUBSCRIBED selection: only subscriptions (the auto folders are), with
    # \Subscribed; a subscription to a missing name says \NonExistent
    got = by_name(list_lines(r, 'LIST (SUBSCRIBED) "" "*"'))
    assert set(got) == {"Foo/Bar", "Moo", "Gone"} | set(AUTO), got
    assert all("\\Subscribed" in l for l in got.values()), got
    assert "\\NonExistent" in got["Gone"], got
    # LSUB "%": the unsubscribed parent of a subscription is \Noselect
    lines, _ = r.cmd('LSUB "" "%"')
    lsub = {l.decode().rsplit(" ", 1)[1].strip().strip('"'): l for l in lines}
    assert set(lsub) == {"Foo", "Moo", "Gone"} | set(AUTO), lines
    assert b"\\Noselect" in lsub["Foo"] and b"\\Noselect" not in lsub["Moo"], lines
    lines, _ = r.cmd('LSUB "" "*"')
    assert len(lines) == 8 and not any(l.endswith(b' "Foo"\r\n') for l in lines), lines
    # RECURSIVEMATCH: a parent with a subscribed child, CHILDINFO
    got = by_name(list_lines(r, 'LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"'))
    assert set(got) == {"Foo", "Moo", "Gone"} | set(AUTO), got
    assert '("CHILDINFO" ("SUBSCRIBED"))' in got["Foo"], got
    assert "\\Subscribed" not in got["Foo"], got
    assert "CHILDINFO" not in got["Moo"], got
    # with "*" the subscribed child is listed itself: no parent for it
    got = by_name(list_lines(r, 'LIST (SUBSCRIBED RECURSIVEMATCH) "" "*"'))
    assert set(got) == {"Foo/Bar", "Moo", "Gone"} | set(AUTO), got
    _, t = r.cmd('LIST (RECURSIVEMATCH) "" "*"')
    assert b" BAD " in t, t
    _, t = r.cmd('LIST (BOGUS) "" "*"')
    assert b" BAD " in t, t
    # REMOTE is accepted (there are no remote mailboxes)
    got = by_name(list_lines(r, 'LIST (REMOTE) "" "%"'))
    assert "Foo" in got and "Tofu" in got and "\\NonExistent" in got["Tofu"], got
    # SPECIAL-USE selection
    got = by_name(list_lines(r, 'LIST (SPECIAL-USE) "" "*"'))
    assert set(got) == set(AUTO) and all(AUTO[n] in got[n] for n in AUTO), got
    # RETURN (SUBSCRIBED CHILDREN SPECIAL-USE)
    got = by_name(list_lines(r, 'LIST "" "*" RETURN (SUBSCRIBED CHILDREN SPECIAL-USE)'))
    assert "\\Subscribed" in got["Moo"] and "\\Subscribed" not in got["Foo"], got
    assert "\\HasChildren" in got["Foo"] and "\\HasNoChildren" in got["Moo"], got
    assert "\\Sent" in got["Sent"] and "\\Subscribed" in got["Sent"], got
    assert "Gone" not in got, got  # not a mailbox, and LIST without SUBSCRIBED
    # several patterns
    got = by_name(list_lines(r, 'LIST "" ("INBOX" "Sent" "Foo/%")'))
    assert set(got) == {"INBOX", "Sent", "Foo/Bar", "Foo/Baz"}, got
    got = by_name(list_lines(r, 'LIST "" ("inbox")'))
    assert set(got) == {"INBOX"}, got
    # the reference is prefixed to every pattern
    got = by_name(list_lines(r, 'LIST "Foo/" ("Bar" "Nope")'))
    assert set(got) == {"Foo/Bar"}, got
    _, t = r.cmd('LIST "" "*" RETURN (BOGUS)')
    assert b" BAD " in t, t
    _, t = r.cmd('LIST "" ()')
    assert b" BAD " in t, t


def test_list_status(srv):
    deliver(srv, "alice@example.com", subject="one")
    deliver(srv, "alice@example.com", subject="two")
    c = imap(srv)
    c.create("Box")
    c.append("Box", r"(\Seen)", None, b"Subject: b\r\n\r\nbox\r\n")
    c.logout()
    r = Raw(srv).login()
    r.cmd("CREATE Deep/Er")
    lines = list_lines(r, 'LIST "" "*" RETURN (STATUS (MESSAGES UNSEEN SIZE))')
    status = {}
    for i, l in enumerate(lines):
        if l.startswith("* STATUS"):
            # each STATUS follows the LIST line of its mailbox
            prev = lines[i - 1]
            name = re.match(r'\* STATUS ("[^"]*"|\S+)', l).group(1).strip('"')
            assert prev.startswith("* LIST") and prev.endswith(f'"{name}"') or \
                prev.endswith(f" {name}"), (prev, l)
            status[name] = l
    assert "MESSAGES 2" in status["INBOX"] and "UNSEEN 2" in status["INBOX"], status
    assert "MESSAGES 1" in status["Box"] and "UNSEEN 0" in status["Box"], status
    size = int(re.search(r"SIZE (\d+)", status["Box"]).group(1))
    assert size == len(b"Subject: b\r\n\r\nbox\r\n"), status
    assert "Deep" not in status and "Deep/Er" in status, status  # no STATUS for \NonExistent
    # the selected mailbox too, with what the session sees
    r.cmd("SELECT INBOX")
    lines = list_lines(r, 'LIST "" "INBOX" RETURN (STATUS (MESSAGES))')
    assert any(l.startswith("* STATUS") and "MESSAGES 2" in l for l in lines), lines
    _, t = r.cmd('LIST "" "*" RETURN (STATUS (BOGUS))')
    assert b" BAD " in t, t


# ---- QUOTA (RFC 9208) --------------------------------------------------------------------


def test_quota_reports_and_refuses(imapsrv):
    srv = imapsrv(config="[limits]\nquota_storage = 4k\nquota_messages = 3\n")
    r = Raw(srv).login()
    lines, t = r.cmd("GETQUOTAROOT INBOX")
    assert lines == [b'* QUOTAROOT "INBOX" ""\r\n', b'* QUOTA "" (STORAGE 0 4 MESSAGE 0 3)\r\n'], lines
    msg = b"Subject: q\r\n\r\n" + b"x" * 1500 + b"\r\n"
    _, t = r.cmd(b"APPEND INBOX {%d+}\r\n" % len(msg) + msg)
    assert b" OK " in t, t
    lines, t = r.cmd('GETQUOTA ""')
    assert lines == [b'* QUOTA "" (STORAGE 2 4 MESSAGE 1 3)\r\n'], lines
    # 1.5 KiB + 3 KiB would pass 4 KiB
    big = b"Subject: big\r\n\r\n" + b"x" * 3000 + b"\r\n"
    _, t = r.cmd(b"APPEND INBOX {%d+}\r\n" % len(big) + big)
    assert b" NO [OVERQUOTA]" in t, t
    small = b"Subject: small\r\n\r\nhi\r\n"
    _, t = r.cmd(b"APPEND INBOX {%d+}\r\n" % len(small) + small)
    assert b" OK " in t, t
    # COPY of both: the first copy fits (3 messages), the second does not;
    # the first is taken back, the destination is as before
    r.cmd("SELECT INBOX")
    r.cmd("CREATE Other")
    _, t = r.cmd("COPY 1:2 Other")
    assert b"NO [OVERQUOTA]" in t, t
    lines, _ = r.cmd("STATUS Other (MESSAGES)")
    assert b"MESSAGES 0" in lines[0], lines
    lines, _ = r.cmd('GETQUOTA ""')
    assert lines == [b'* QUOTA "" (STORAGE 2 4 MESSAGE 2 3)\r\n'], lines
    _, t = r.cmd("MOVE 1:2 Other")
    assert b"NO [OVERQUOTA]" in t, t
    lines, _ = r.cmd("STATUS Other (MESSAGES)")
    assert b"MESSAGES 0" in lines[0], lines
    lines, _ = r.cmd("STATUS INBOX (MESSAGES)")
    assert b"MESSAGES 2" in lines[0], lines
    _, t = r.cmd('SETQUOTA "" (STORAGE 100)')
    assert b" NO " in t, t
    _, t = r.cmd('GETQUOTA "nope"')
    assert b" NO " in t, t
    _, t = r.cmd("GETQUOTAROOT Nope")
    assert b" NO " in t, t
    # SMTP delivery is held to the same quota
    with pytest.raises(smtplib.SMTPException):
        deliver(srv, "alice@example.com", body=b"y" * 3000 + b"\r\n")
    c = imap(srv)
    typ, data = c.getquotaroot("INBOX")
    assert typ == "OK", data
    c.logout()


def test_quota_without_limits_has_no_root(srv):
    r = Raw(srv).login()
    lines, t = r.cmd("GETQUOTAROOT INBOX")
    assert lines == [b'* QUOTAROOT "INBOX"\r\n'] and b" OK " in t, (lines, t)
    _, t = r.cmd('GETQUOTA ""')
    assert b" NO " in t, t


# ---- shutdown and timeouts ----------------------------------------------------------------


def test_sigterm_byes_logged_in_idle_and_busy_sessions(srv):
    import signal
    authed = Raw(srv).login()
    idle = Raw(srv).login()
    idle.cmd("SELECT INBOX")
    idle.send(b"i IDLE\r\n")
    assert idle.line().startswith(b"+")
    # busy: an APPEND whose literal is half sent
    busy = Raw(srv).login()
    msg = b"Subject: late\r\n\r\n" + b"x" * 100000 + b"\r\n"
    busy.send(b"a APPEND INBOX {%d+}\r\n" % len(msg) + msg[:50000])
    time.sleep(0.3)
    srv.send_signal(signal.SIGTERM)
    assert authed.line(timeout=10).startswith(b"* BYE [UNAVAILABLE] Server shutting down")
    expect_eof(authed.sock)
    assert idle.line(timeout=10).startswith(b"* BYE [UNAVAILABLE] Server shutting down")
    expect_eof(idle.sock)
    # the busy one may finish its APPEND (acknowledged, so kept), then BYE
    busy.send(msg[50000:] + b"\r\n")
    _, t = busy.until("a", timeout=10)
    assert t.startswith(b"a OK [APPENDUID"), t
    assert busy.line(timeout=10).startswith(b"* BYE [UNAVAILABLE] Server shutting down")
    expect_eof(busy.sock)
    assert srv.wait_exit(timeout=20) == 0, srv.log()[-3000:]
    # the acknowledged message is there after a restart
    srv.start()
    c = imap(srv)
    c.select("INBOX")
    typ, data = c.fetch("1", "(BODY.PEEK[])")
    assert data[0][1] == msg
    c.logout()


def assert_silent(r, seconds):
    """Nothing arrives from the server for `seconds` (the connection stays)."""
    r.sock.settimeout(seconds)
    try:
        data = r.sock.recv(100)
    except socket.timeout:
        return
    raise AssertionError(f"expected silence, got {data!r}")


TIMEOUTS = "[limits]\nprelogin_timeout = 1s\nidle_timeout = 3s\n"


def expect_bye_after(r, t0, at_least, prefix=b"* BYE"):
    """The next line is a BYE, no sooner than at_least s after t0, then EOF."""
    ln = r.line(timeout=15)
    waited = time.monotonic() - t0
    assert ln.startswith(prefix), ln
    assert waited >= at_least, f"cut after {waited:.2f}s, before {at_least} s"
    expect_eof(r.sock)


def test_idle_timeout_after_login(imapsrv):
    srv = imapsrv(config=TIMEOUTS)
    r = Raw(srv).login()
    # the pre-login timeout no longer applies
    assert_silent(r, 1.6)
    _, t = r.cmd("NOOP")
    assert b" OK " in t
    expect_bye_after(r, time.monotonic(), 2.5, b"* BYE Autologout")


def test_idle_command_rearms_the_idle_timeout(imapsrv):
    srv = imapsrv(config=TIMEOUTS)
    r = Raw(srv).login()
    r.cmd("SELECT INBOX")
    # IDLE twice for 2 s each: 4 s in all, more than idle_timeout, but
    # each IDLE (and its DONE) re-arms it
    for tag in (b"i1", b"i2"):
        r.send(tag + b" IDLE\r\n")
        assert r.line().startswith(b"+ ")
        assert_silent(r, 2.0)
        r.send(b"DONE\r\n")
        assert r.line().startswith(tag + b" OK"), tag
    # then an IDLE left alone gets its BYE once idle_timeout passes, not
    # at the (shorter) pre-login timeout
    r.send(b"i3 IDLE\r\n")
    t0 = time.monotonic()
    assert r.line().startswith(b"+ ")
    expect_bye_after(r, t0, 2.5)


def test_prelogin_timeout_then_login_in_time(imapsrv):
    srv = imapsrv(config=TIMEOUTS)
    late = Raw(srv)
    t0 = time.monotonic()
    r = Raw(srv)
    time.sleep(0.5)
    r.login()  # in time: the session goes on under idle_timeout
    ln = late.line(timeout=10)
    assert ln.startswith(b"* BYE"), ln
    assert time.monotonic() - t0 >= 0.9
    expect_eof(late.sock)
    assert_silent(r, 1.0)
    _, t = r.cmd("NOOP")
    assert b" OK " in t


# ---- MULTIAPPEND (RFC 3502) --------------------------------------------------------------


def box_messages(srv, box):
    c = imap(srv)
    typ, data = c.status(box, "(MESSAGES)")
    c.logout()
    assert typ == "OK", data
    return int(re.search(rb"MESSAGES (\d+)", data[0]).group(1))


def test_multiappend_nonsync_and_sync(srv):
    r = Raw(srv).login()
    r.cmd("CREATE Box")
    m = [b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i) for i in range(3)]
    # 6 MB, streamed: more than the store append takes at once, so the
    # session holds back input until the store drains, before the commit
    big = b"Subject: big\r\n\r\n" + (b"b" * 998 + b"\r\n") * 6000
    r.send(b"a APPEND Box (\\Seen) {%d+}\r\n%s {%d+}\r\n%s (\\Flagged $K) "
           b"\"01-Jul-2003 10:52:37 +0200\" {%d+}\r\n%s {%d+}\r\n%s\r\n"
           % (len(m[0]), m[0], len(big), big, len(m[2]), m[2], len(m[1]), m[1]))
    _, t = r.until("a", timeout=30)
    mt = re.match(rb"a OK \[APPENDUID (\d+) (\S+)\]", t)
    assert mt, t
    assert mt.group(2) == b"1:4", t
    # synchronising literals: a "+" for each
    r.send(b"b APPEND Box {%d}\r\n" % len(m[0]))
    assert r.line().startswith(b"+ ")
    r.send(m[0] + b" {%d}\r\n" % len(m[1]))
    assert r.line().startswith(b"+ ")
    r.send(m[1] + b"\r\n")
    _, t = r.until("b")
    assert re.match(rb"b OK \[APPENDUID \d+ 5:6\]", t), t
    c = imap(srv)
    c.select("Box")
    want = [m[0], big, m[2], m[1], m[0], m[1]]
    for i, w in enumerate(want):
        typ, data = c.fetch(str(i + 1), "(BODY.PEEK[])")
        assert typ == "OK" and data[0][1] == w, (i, typ, data[0][0], len(data[0][1]), len(w))
    typ, data = c.fetch("1:6", "(FLAGS INTERNALDATE)")
    heads = data
    assert b"\\Seen" in heads[0] and b"\\Seen" not in heads[1], heads
    assert b"\\Flagged" in heads[2] and b"$K" in heads[2] and b"01-Jul-2003" in heads[2], heads
    c.logout()


def test_multiappend_is_all_or_nothing(imapsrv):
    srv = imapsrv(config="[limits]\nquota_messages = 2\nmessage_size_max = 4k\n")
    r = Raw(srv).login()
    r.cmd("CREATE Box")
    m = b"Subject: x\r\n\r\nx\r\n"
    # the third message is over quota: none is kept
    r.send(b"a APPEND Box {%d+}\r\n%s {%d+}\r\n%s {%d+}\r\n%s\r\n" % ((len(m), m) * 3))
    _, t = r.until("a")
    assert t.startswith(b"a NO [OVERQUOTA]"), t
    assert box_messages(srv, "Box") == 0
    # a bad flag on the second: BAD, the first is taken back
    r.send(b"b APPEND Box {%d+}\r\n%s (\\Bogus) {%d+}\r\n%s\r\n" % (len(m), m, len(m), m))
    _, t = r.until("b")
    assert t.startswith(b"b BAD"), t
    assert box_messages(srv, "Box") == 0
    # the second over APPENDLIMIT, synchronising: NO [TOOBIG] without "+"
    r.send(b"c APPEND Box {%d}\r\n" % len(m))
    assert r.line().startswith(b"+ ")
    r.send(m + b" {9000}\r\n")
    _, t = r.until("c")
    assert t.startswith(b"c NO [TOOBIG]"), t
    assert box_messages(srv, "Box") == 0
    _, t = r.cmd("NOOP")
    assert b" OK " in t
    # a syntax error after a message
    r.send(b"d APPEND Box {%d+}\r\n%s )\r\n" % (len(m), m))
    _, t = r.until("d")
    assert t.startswith(b"d BAD"), t
    assert box_messages(srv, "Box") == 0
    # the client goes away in the middle of the second message
    r.send(b"e APPEND Box {%d+}\r\n%s {3000+}\r\n" % (len(m), m) + b"y" * 1000)
    time.sleep(0.5)
    r.sock.close()
    deadline = time.monotonic() + 10
    while box_messages(srv, "Box") != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert box_messages(srv, "Box") == 0
    # and one that works
    r = Raw(srv).login()
    r.send(b"f APPEND Box {%d+}\r\n%s {%d+}\r\n%s\r\n" % (len(m), m, len(m), m))
    _, t = r.until("f")
    assert re.match(rb"f OK \[APPENDUID \d+ \d+:\d+\]", t), t
    assert box_messages(srv, "Box") == 2


# ---- RENAME -------------------------------------------------------------------------------


def test_rename_inbox_moves_its_messages(srv):
    for i in range(3):
        deliver(srv, "alice@example.com", subject=f"r{i}")
    c = imap(srv)
    c.create("INBOX/Child")
    c.select("INBOX")
    c.store("2", "+FLAGS", r"(\Flagged)")
    typ, data = c.rename("INBOX", "Old")
    assert typ == "OK", data
    # the selected INBOX sees its messages leave
    typ, data = c.noop()
    assert c.untagged_responses.get("EXPUNGE") or c.untagged_responses.get("EXISTS"), \
        c.untagged_responses
    typ, data = c.status("INBOX", "(MESSAGES)")
    assert b"MESSAGES 0" in data[0], data
    c.select("Old")
    typ, data = c.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    subjects = [d[1].strip() for d in data if isinstance(d, tuple)]
    assert subjects == [b"Subject: r0", b"Subject: r1", b"Subject: r2"], data
    assert b"\\Flagged" in data[2][0] and b"\\Flagged" not in data[0][0], data
    # INBOX's inferiors stay where they are (RFC 3501 6.3.5)
    typ, data = c.list('""', "*")
    names = b" ".join(data)
    assert b"INBOX/Child" in names and b"Old/Child" not in names, data
    # INBOX works on: a new message arrives there
    deliver(srv, "alice@example.com", subject="after")
    typ, data = c.status("INBOX", "(MESSAGES)")
    assert b"MESSAGES 1" in data[0], data
    # renaming it onto an existing name fails and moves nothing
    typ, data = c.rename("INBOX", "Old")
    assert typ == "NO" and b"ALREADYEXISTS" in data[0], data
    typ, data = c.status("INBOX", "(MESSAGES)")
    assert b"MESSAGES 1" in data[0], data
    assert c.rename("Old", "INBOX")[0] == "NO"
    c.logout()


def test_rename_inbox_over_quota_keeps_everything(imapsrv):
    # the move copies before it expunges: with no room for the copies it
    # fails, and the new mailbox is removed again
    srv = imapsrv(config="[limits]\nquota_messages = 3\n")
    for i in range(2):
        deliver(srv, "alice@example.com", subject=f"q{i}")
    c = imap(srv)
    typ, data = c.rename("INBOX", "Moved")
    assert typ == "NO" and b"OVERQUOTA" in data[0], data
    typ, data = c.status("INBOX", "(MESSAGES)")
    assert b"MESSAGES 2" in data[0], data
    assert c.status("Moved", "(MESSAGES)")[0] == "NO"
    c.logout()


def test_rename_with_children(srv):
    c = imap(srv)
    for name in ("A", "A/B", "A/B/C", "A-sibling", "Z/Y"):
        assert c.create(name)[0] == "OK", name
    c.append("A/B/C", None, None, b"Subject: deep\r\n\r\nx\r\n")
    typ, data = c.rename("A", "N")
    assert typ == "OK", data
    typ, data = c.list('""', "*")
    names = {re.search(rb'"/" "?([^"]*)"?$', d).group(1).decode() for d in data}
    assert {"N", "N/B", "N/B/C", "A-sibling"} <= names, names
    assert not names & {"A", "A/B", "A/B/C"}, names
    typ, data = c.status("N/B/C", "(MESSAGES)")
    assert b"MESSAGES 1" in data[0], data
    # a \Noselect parent renames its children
    typ, data = c.rename("Z", "W")
    assert typ == "OK", data
    typ, data = c.status("W/Y", "(MESSAGES)")
    assert typ == "OK", data
    # a clash with an existing name below the target: nothing renamed
    c.create("Q")
    c.create("Q2/B")
    c.create("Q/B")
    typ, data = c.rename("Q", "Q2")
    assert typ == "NO" and b"ALREADYEXISTS" in data[0], data
    assert c.status("Q/B", "(MESSAGES)")[0] == "OK"
    assert c.rename("N", "N/B/X")[0] == "NO"
    assert c.rename("Nope", "Nope2")[0] == "NO"
    c.logout()


def test_list_extended_bad_syntax_is_bad_and_harmless(srv):
    r = Raw(srv).login()
    r.cmd("CREATE Foo/Bar")
    for cmd in ('LIST () "" ()', 'LIST (SUBSCRIBED "" "*"', 'LIST "" "*" RETURN',
                'LIST "" "*" RETURN (STATUS)', 'LIST "" "*" RETURN (STATUS ())',
                'LIST "" "*" RETURN STATUS', 'LIST "" ("a" ("b"))', 'LIST ((SUBSCRIBED)) "" "*"',
                'LIST "" "*" RETURN (CHILDREN) extra', 'LIST', 'LIST ""',
                'LIST (REMOTE RECURSIVEMATCH) "" "*"', 'LIST "" "*" FOO (CHILDREN)'):
        if r.n >= 6:
            r = Raw(srv).login()  # max_bad_commands (10) would close it
        _, t = r.cmd(cmd)
        assert b" BAD " in t, (cmd, t)
    # the session goes on; LIST "" "" still gives the delimiter
    lines, t = r.cmd('LIST "" ""')
    assert lines == [b'* LIST (\\Noselect) "/" ""\r\n'] and b" OK " in t, lines
    # empty results are fine
    lines, t = r.cmd('LIST (SPECIAL-USE) "" "Nothing*"')
    assert lines == [] and b" OK " in t, (lines, t)


# ---- BINARY (RFC 3516, RFC 9051 6.4.5) ------------------------------------------------------

from conftest import _readahead  # noqa: E402  (bytes recv_line read past a line)


def b64_lines(data, width=76):
    import base64
    enc = base64.b64encode(data)
    return b"\r\n".join(enc[i:i + width] for i in range(0, len(enc), width))


BIN_BLOB = bytes(range(256)) * 40                       # 10240 bytes, NULs in it
# trailing whitespace on a QP line is transport padding: removed (RFC 2045 6.7)
QP_TEXT = b"caf=C3=A9 soft=\r\nbreak =3D equals \t \r\nline two"
QP_DECODED = b"caf\xc3\xa9 softbreak = equals\r\nline two"
INNER = (b"Subject: inner\r\nContent-Type: text/plain\r\n"
         b"Content-Transfer-Encoding: base64\r\n\r\n" + b64_lines(b"inner text") + b"\r\n")
BIN_MSG = (b"From: a@example.com\r\nSubject: binary\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=outer\r\n\r\n"
           b"preamble\r\n--outer\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n"
           b"Content-Transfer-Encoding: Quoted-Printable\r\n\r\n" + QP_TEXT + b"\r\n"
           b"--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n"
           b"--inner\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           b"aGVsbG8gd29ybGQ=\r\n"
           b"--inner\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n--inner--\r\n"
           b"--outer\r\nContent-Type: application/octet-stream\r\n"
           b"Content-Transfer-Encoding: BASE64 (the attachment)\r\n\r\n"
           + b64_lines(BIN_BLOB) + b"\r\n"
           b"--outer\r\nContent-Type: application/x-thing\r\n"
           b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\nend\r\n"
           b"--outer\r\nContent-Type: message/rfc822\r\n\r\n" + INNER +
           b"--outer--\r\n")


def recv_exact(sock, n, timeout=10.0):
    buf = _readahead.setdefault(sock, bytearray())
    deadline = time.monotonic() + timeout
    while len(buf) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(buf)} of {n} bytes"
        sock.settimeout(left)
        chunk = sock.recv(1 << 20)
        assert chunk, f"EOF after {len(buf)} of {n} bytes"
        buf.extend(chunk)
    data = bytes(buf[:n])
    del buf[:n]
    return data


def lit_cmd(r, text, timeout=10.0):
    """Like Raw.cmd, but literals in the answer ({n} or ~{n}) are read as
    bytes: returns (list of (line text, [literal bytes...]), tagged line)."""
    r.n += 1
    tag = b"t%d" % r.n
    r.send(tag + b" " + (text.encode() if isinstance(text, str) else text) + b"\r\n")
    out = []
    while True:
        ln = r.line(timeout)
        assert ln, f"EOF before {tag} completed: {out}"
        if ln.startswith(tag + b" "):
            return out, ln
        text_parts, lits = [ln], []
        while True:
            m = re.search(rb"(~?)\{(\d+)\}\r\n$", text_parts[-1])
            if not m:
                break
            lits.append((m.group(1) == b"~", recv_exact(r.sock, int(m.group(2)), timeout)))
            text_parts.append(r.line(timeout))
        out.append((b"".join(text_parts), lits))


def one_lit(r, text):
    """The single literal of a one-message FETCH: (is literal8, bytes)."""
    out, t = lit_cmd(r, text)
    assert b" OK " in t, (out, t)
    lits = [l for _, ls in out for l in ls]
    assert len(lits) == 1, out
    return lits[0]


@pytest.fixture
def binsrv(srv):
    c = imap(srv)
    typ, data = c.append("INBOX", None, None, BIN_MSG)
    assert typ == "OK", data
    c.logout()
    return srv


def test_binary_capability(srv):
    r = Raw(srv)
    assert b"BINARY" not in r.greeting      # before login: not yet
    r.login()
    lines, _ = r.cmd("CAPABILITY")
    assert b" BINARY " in lines[0], lines


def test_binary_fetch_decodes_parts(binsrv):
    r = Raw(binsrv).login()
    r.cmd("SELECT INBOX")
    assert one_lit(r, "FETCH 1 BINARY.PEEK[1]") == (False, QP_DECODED)
    assert one_lit(r, "FETCH 1 BINARY.PEEK[2.1]") == (False, b"hello world")
    assert one_lit(r, "FETCH 1 BINARY.PEEK[2.2]") == (False, b"<p>hi</p>")
    # the attachment holds NULs: a literal8
    assert one_lit(r, "FETCH 1 BINARY.PEEK[3]") == (True, BIN_BLOB)
    # inside the message/rfc822 part: its (single) body, decoded
    assert one_lit(r, "FETCH 1 BINARY.PEEK[5.1]") == (False, b"inner text")
    # BINARY[] is the message as it is (the whole of it, no decoding)
    assert one_lit(r, "FETCH 1 BINARY.PEEK[]") == (False, BIN_MSG)
    # sizes match what BINARY sends
    lines, t = r.cmd("FETCH 1 (BINARY.SIZE[1] BINARY.SIZE[2.1] BINARY.SIZE[3] "
                     "BINARY.SIZE[2.2] BINARY.SIZE[5.1] BINARY.SIZE[] RFC822.SIZE)")
    assert b" OK " in t, t
    want = (b"BINARY.SIZE[1] %d BINARY.SIZE[2.1] 11 BINARY.SIZE[3] %d BINARY.SIZE[2.2] 9 "
            b"BINARY.SIZE[5.1] 10 BINARY.SIZE[] %d RFC822.SIZE %d"
            % (len(QP_DECODED), len(BIN_BLOB), len(BIN_MSG), len(BIN_MSG)))
    assert want in lines[0], lines
    # no such part: an empty string, size 0 (as BODY[9] answers)
    out, t = lit_cmd(r, "FETCH 1 (BINARY.PEEK[9] BINARY.SIZE[9] BINARY.PEEK[2.1.1])")
    assert b" OK " in t and b'BINARY[9] "" BINARY.SIZE[9] 0 BINARY[2.1.1] ""' in out[0][0], out
    # imaplib reads it too (it takes ~{n} as a literal)
    c = imap(binsrv)
    c.select("INBOX")
    typ, data = c.fetch("1", "(BINARY.PEEK[3] BINARY.PEEK[1])")
    assert typ == "OK" and data[0][1] == BIN_BLOB and data[1][1] == QP_DECODED, data
    typ, data = c.uid("FETCH", "1:*", "(BINARY.PEEK[2.1])")
    assert typ == "OK" and data[0][1] == b"hello world", data
    c.logout()


def test_binary_single_part_message(srv):
    """A message that is not multipart: BINARY[1] is its body decoded with
    the message's own Content-Transfer-Encoding; BINARY[] is the message."""
    body = "Grüße, 世界\r\n".encode() * 50
    msg = (b"Subject: one part\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + b64_lines(body) + b"\r\n")
    plain = b"Subject: plain\r\n\r\nhello\r\n"
    c = imap(srv)
    assert c.append("INBOX", None, None, msg)[0] == "OK"
    assert c.append("INBOX", None, None, plain)[0] == "OK"
    c.logout()
    r = Raw(srv).login()
    r.cmd("SELECT INBOX")
    # the trailing CRLF of the encoded text is not part of the base64 (skipped)
    assert one_lit(r, "FETCH 1 BINARY.PEEK[1]") == (False, body)
    assert one_lit(r, "FETCH 1 BINARY.PEEK[]") == (False, msg)
    assert one_lit(r, "FETCH 2 BINARY.PEEK[1]") == (False, b"hello\r\n")
    lines, t = r.cmd("FETCH 1:2 (BINARY.SIZE[1])")
    assert lines == [b"* 1 FETCH (BINARY.SIZE[1] %d)\r\n" % len(body),
                     b"* 2 FETCH (BINARY.SIZE[1] 7)\r\n"], lines
    # a search in the decoded text finds what BINARY shows
    lines, _ = r.cmd("SEARCH CHARSET UTF-8 BODY \"{0}\"".format("世界").encode())
    assert lines == [b"* SEARCH 1\r\n"], lines


def test_binary_partial(binsrv):
    r = Raw(binsrv).login()
    r.cmd("SELECT INBOX")
    # offsets count decoded bytes
    assert one_lit(r, "FETCH 1 BINARY.PEEK[1]<3.2>") == (False, QP_DECODED[3:5])
    assert one_lit(r, "FETCH 1 BINARY.PEEK[2.1]<6.100>") == (False, b"world")
    # a range of the attachment without a NUL is a plain literal; one with a NUL is a literal8
    assert one_lit(r, "FETCH 1 BINARY.PEEK[3]<1.255>") == (False, BIN_BLOB[1:256])
    assert one_lit(r, "FETCH 1 BINARY.PEEK[3]<1.256>") == (True, BIN_BLOB[1:257])
    assert one_lit(r, "FETCH 1 BINARY.PEEK[3]<5000.3000>") == (True, BIN_BLOB[5000:8000])
    assert one_lit(r, "FETCH 1 BINARY.PEEK[3]<10000.1000>") == (False, BIN_BLOB[10000:])
    assert one_lit(r, "FETCH 1 BINARY.PEEK[3]<9984.1000>") == (True, BIN_BLOB[9984:])
    assert one_lit(r, "FETCH 1 BINARY.PEEK[3]<10240.10>") == (False, b"")
    assert one_lit(r, "FETCH 1 BINARY.PEEK[2.2]<3.2>") == (False, b"hi")
    assert one_lit(r, "FETCH 1 BINARY.PEEK[]<0.4>") == (False, BIN_MSG[:4])
    out, t = lit_cmd(r, "FETCH 1 BINARY.PEEK[1]<3.2>")
    assert out[0][0].startswith(b"* 1 FETCH (BINARY[1]<3> {2}"), out


def test_binary_errors(binsrv):
    r = Raw(binsrv).login()
    r.cmd("SELECT INBOX")
    for item in ("BINARY[4]", "BINARY.PEEK[4]", "BINARY.SIZE[4]", "(UID BINARY.PEEK[1] BINARY[4])"):
        lines, t = r.cmd(f"FETCH 1 {item}")
        assert b" NO [UNKNOWN-CTE]" in t and not lines, (item, lines, t)
    # not a leaf: a multipart, a message/rfc822 part
    for item in ("BINARY.PEEK[2]", "BINARY[5]", "BINARY.SIZE[2]"):
        lines, t = r.cmd(f"FETCH 1 {item}")
        assert b" NO " in t and not lines, (item, lines, t)
    # the refused non-PEEK BINARY[4] set no \Seen
    lines, _ = r.cmd("FETCH 1 FLAGS")
    assert b"\\Seen" not in lines[0], lines
    r2 = Raw(binsrv).login()
    r2.cmd("SELECT INBOX")
    # only part numbers: anything else is a syntax error
    for item in ("BINARY[1.MIME]", "BINARY[HEADER]", "BINARY.PEEK[TEXT]", "BINARY[0]",
                 "BINARY[1.]", "BINARY[.1]", "BINARY[1..2]", "BINARY[01]",
                 "BINARY.SIZE[1]<0.5>", "BINARY[1]<5>", "BINARY.PEEK[1]<0.0>", "BINARY[1"):
        if r2.n >= 8:
            r2 = Raw(binsrv).login()  # max_bad_commands
            r2.cmd("SELECT INBOX")
        lines, t = r2.cmd(f"FETCH 1 ({item})")
        assert b" BAD " in t and not lines, (item, lines, t)
    _, t = r2.cmd("NOOP")
    assert b" OK " in t


def test_binary_seen(binsrv):
    r = Raw(binsrv).login()
    r.cmd("SELECT INBOX")
    one_lit(r, "FETCH 1 BINARY.PEEK[1]")
    r.cmd("FETCH 1 BINARY.SIZE[3]")
    lines, _ = r.cmd("FETCH 1 FLAGS")
    assert b"\\Seen" not in lines[0], lines
    out, t = lit_cmd(r, "FETCH 1 BINARY[2.1]")
    assert b" OK " in t and b"FLAGS (\\Seen)" in out[0][0], out
    lines, _ = r.cmd("FETCH 1 FLAGS")
    assert b"\\Seen" in lines[0], lines
    # EXAMINE: read-only, BINARY sets nothing
    r.cmd("STORE 1 -FLAGS (\\Seen)")
    r.cmd("EXAMINE INBOX")
    one_lit(r, "FETCH 1 BINARY[1]")
    lines, _ = r.cmd("FETCH 1 FLAGS")
    assert b"\\Seen" not in lines[0], lines


def test_binary_append_literal8(imapsrv):
    srv = imapsrv(config="[limits]\nmessage_size_max = 2000\n")
    r = Raw(srv).login()
    msg = b"Subject: nul\r\nContent-Type: application/octet-stream\r\n\r\na\x00b\r\n\x00\xff"
    r.send(b"a APPEND INBOX ~{%d}\r\n" % len(msg))
    assert r.line().startswith(b"+ ")
    r.send(msg + b"\r\n")
    _, t = r.until("a")
    assert t.startswith(b"a OK [APPENDUID"), t
    msg2 = b"Subject: two\r\n\r\n\x00\x00\x00"
    r.send(b"b APPEND INBOX (\\Seen) ~{%d+}\r\n" % len(msg2) + msg2 + b"\r\n")
    _, t = r.until("b")
    assert t.startswith(b"b OK [APPENDUID"), t
    # MULTIAPPEND mixing both kinds
    plain = b"Subject: plain\r\n\r\nx\r\n"
    r.send(b"c APPEND INBOX {%d+}\r\n%s ~{%d+}\r\n%s\r\n" % (len(plain), plain, len(msg2), msg2))
    _, t = r.until("c")
    assert t.startswith(b"c OK [APPENDUID"), t
    r.cmd("SELECT INBOX")
    assert one_lit(r, "FETCH 1 BINARY.PEEK[]") == (True, msg)
    assert one_lit(r, "FETCH 1 BINARY.PEEK[1]") == (True, b"a\x00b\r\n\x00\xff")
    assert one_lit(r, "FETCH 2 BINARY.PEEK[]") == (True, msg2)
    assert one_lit(r, "FETCH 3 BINARY.PEEK[]") == (False, plain)
    assert one_lit(r, "FETCH 4 BINARY.PEEK[]") == (True, msg2)
    lines, _ = r.cmd("FETCH 1:4 RFC822.SIZE")
    assert [int(re.search(rb"SIZE (\d+)", l).group(1)) for l in lines] == \
        [len(msg), len(msg2), len(plain), len(msg2)], lines
    # BODY[] and the like are CHAR8 literals: NUL goes out as 0x80, same length
    assert one_lit(r, "FETCH 1 BODY.PEEK[]") == (False, msg.replace(b"\x00", b"\x80"))
    assert one_lit(r, "FETCH 1 BODY.PEEK[TEXT]") == (False, b"a\x80b\r\n\x80\xff")
    assert one_lit(r, "FETCH 2 BODY.PEEK[]<14.3>") == (False, b"\r\n\x80")
    assert one_lit(r, "FETCH 2 RFC822.TEXT") == (False, b"\x80\x80\x80")
    # APPENDLIMIT holds for literal8: synchronising refused without "+"
    r.send(b"d APPEND INBOX ~{5000}\r\n")
    ln = r.line()
    assert ln.startswith(b"d NO [TOOBIG]"), ln
    # non-synchronising over the limit: read and dropped, then NO
    r.send(b"e APPEND INBOX ~{3000+}\r\n" + b"\x00" * 3000 + b"\r\n")
    _, t = r.until("e")
    assert t.startswith(b"e NO [TOOBIG]"), t
    # a literal8 anywhere else is a syntax error (and the session goes on)
    r.send(b"f SEARCH BODY ~{3}\r\n")
    ln = r.line()
    assert ln.startswith(b"f BAD"), ln
    r.send(b"g SEARCH BODY ~{3+}\r\nab\x00\r\n")
    _, t = r.until("g")
    assert t.startswith(b"g BAD"), t
    lines, t = r.cmd("NOOP")
    assert b" OK " in t
    lines, _ = r.cmd("STATUS INBOX (MESSAGES)")
    assert b"MESSAGES 4" in lines[0], lines


def test_binary_large_part_streams(srv):
    """A 3 MB attachment, base64: BINARY.SIZE, BINARY and a partial in the
    middle (across many 64 KiB reads) come out exact, over TLS."""
    import random
    rnd = random.Random(7)
    blob = bytes(rnd.getrandbits(8) for _ in range(3 * 1024 * 1024 + 17))
    msg = (b"Subject: big\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
           b"Content-Type: text/plain\r\n\r\nsee attachment\r\n--b\r\n"
           b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + b64_lines(blob) + b"\r\n--b--\r\n")
    c = imap(srv, tls="implicit")
    assert c.append("INBOX", None, None, msg)[0] == "OK"
    c.select("INBOX")
    typ, data = c.fetch("1", "(BINARY.SIZE[2])")
    assert typ == "OK" and b"BINARY.SIZE[2] %d" % len(blob) in data[0], data
    typ, data = c.fetch("1", "(BINARY.PEEK[2])")
    assert typ == "OK" and data[0][1] == blob
    typ, data = c.fetch("1", "(BINARY.PEEK[2]<1000000.200000>)")
    assert typ == "OK" and data[0][1] == blob[1000000:1200000]
    c.logout()


def test_binary_does_not_starve_other_sessions(imapsrv):
    """One loop: decoding big parts goes one 64 KiB read at a time through
    the ring, so another session is served while a long BINARY.SIZE runs."""
    srv = imapsrv(threads=1)
    import random
    rnd = random.Random(3)
    blob = bytes(rnd.getrandbits(8) for _ in range(4 * 1024 * 1024))
    msg = (b"Subject: big\r\nContent-Transfer-Encoding: base64\r\n"
           b"Content-Type: application/octet-stream\r\n\r\n" + b64_lines(blob) + b"\r\n")
    c = imap(srv)
    assert c.append("INBOX", None, None, msg)[0] == "OK"
    c.select("INBOX")
    for _ in range(5):  # 32 messages: 180 MB of base64 to decode
        assert c.copy("1:*", "INBOX")[0] == "OK"
    c.logout()
    y = Raw(srv).login()
    y.cmd("SELECT INBOX")
    x = Raw(srv).login()
    x.cmd("SELECT INBOX")
    t0 = time.monotonic()
    x.send(b"s FETCH 1:* BINARY.SIZE[1]\r\n")
    for _ in range(3):
        _, t = y.cmd("NOOP", timeout=30)
        assert b" OK " in t, t
    buf = not_done_yet_then_read(x.sock, b"s OK", 120)
    assert buf.count(b"BINARY.SIZE[1] %d)" % len(blob)) == 32, buf[:300]
    print(f"BINARY.SIZE of 32 x 4 MiB base64 parts took {time.monotonic() - t0:.3f}s")


def test_binary_client_disconnects_mid_decode(srv):
    """Clients that go away while a big part is being decoded (scan or
    send pass): the session is freed at the last read's completion and
    the server goes on (an ASan build checks the freeing)."""
    import random
    rnd = random.Random(5)
    blob = bytes(rnd.getrandbits(8) for _ in range(2 * 1024 * 1024))
    msg = (b"Subject: big\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64_lines(blob) + b"\r\n")
    c = imap(srv)
    assert c.append("INBOX", None, None, msg)[0] == "OK"
    c.logout()
    for cmd, wait in ((b"BINARY.SIZE[1]", 0), (b"BINARY.PEEK[1]", 0), (b"BINARY[1]", 0.05),
                      (b"BINARY.PEEK[1]<100.1500000>", 0.02)):
        r = Raw(srv).login()
        r.cmd("SELECT INBOX")
        r.send(b"s FETCH 1 (" + cmd + b")\r\n")
        time.sleep(wait)
        r.sock.close()
    r = Raw(srv).login()
    r.cmd("SELECT INBOX")
    lines, t = r.cmd("FETCH 1 (BINARY.SIZE[1])", timeout=30)
    assert lines == [b"* 1 FETCH (BINARY.SIZE[1] %d)\r\n" % len(blob)], lines


# ---- SEARCHRES (RFC 5182, part of RFC 9051) ----------------------------------------


def searchres_box(srv, n=6):
    """A Raw session with INBOX selected holding n messages; even ones
    \\Flagged, the subject says which."""
    c = imap(srv)
    for i in range(1, n + 1):
        append(c, f"Subject: m{i} {'even' if i % 2 == 0 else 'odd'}\r\n\r\nbody {i}\r\n".encode(),
               r"(\Flagged)" if i % 2 == 0 else None)
    c.logout()
    r = Raw(srv).login()
    r.cmd("SELECT INBOX")
    return r


def fetch_seqs(lines):
    return [int(l.split()[1]) for l in lines if re.match(rb"\* \d+ FETCH", l)]


def test_searchres_capability_save_and_use(srv):
    r = searchres_box(srv)
    lines, _ = r.cmd("CAPABILITY")
    assert b" SEARCHRES " in lines[0], lines
    # before any SAVE "$" is the empty set: valid, matches nothing
    lines, t = r.cmd("FETCH $ (FLAGS)")
    assert lines == [] and b" OK " in t, (lines, t)
    # SAVE alone: no ESEARCH response (RFC 5182 1)
    lines, t = r.cmd("SEARCH RETURN (SAVE) FLAGGED")
    assert lines == [] and b" OK " in t, (lines, t)
    lines, t = r.cmd("FETCH $ (UID)")
    assert fetch_seqs(lines) == [2, 4, 6] and b" OK " in t, lines
    # for UID commands "$" is the same messages, as UIDs
    lines, _ = r.cmd("UID FETCH $ (FLAGS)")
    assert sorted(fetched(lines)) == [2, 4, 6], lines
    lines, _ = r.cmd("UID SEARCH UID $ SUBJECT m4")
    assert lines == [b"* SEARCH 4\r\n"], lines
    lines, _ = r.cmd("SEARCH $ SUBJECT m4")
    assert lines == [b"* SEARCH 4\r\n"], lines
    lines, _ = r.cmd("SEARCH OR $ 1")
    assert lines == [b"* SEARCH 1 2 4 6\r\n"], lines
    lines, _ = r.cmd("SEARCH NOT $")
    assert lines == [b"* SEARCH 1 3 5\r\n"], lines
    # STORE, COPY, MOVE on "$"
    lines, t = r.cmd("STORE $ +FLAGS (\\Seen)")
    assert fetch_seqs(lines) == [2, 4, 6] and b" OK " in t, lines
    r.cmd("CREATE Saved")
    _, t = r.cmd("COPY $ Saved")
    assert b"[COPYUID" in t and b" 2,4,6 " in t, t
    # "$" as a whole set only; mixed with numbers it is a syntax error
    _, t = r.cmd("FETCH 1,$ (FLAGS)")
    assert b" BAD " in t, t
    _, t = r.cmd("SEARCH UID 1,$")
    assert b" BAD " in t, t
    # SAVE with MIN/MAX only keeps those (RFC 5182 2.4)
    lines, t = r.cmd("UID SEARCH RETURN (SAVE MIN MAX) FLAGGED")
    assert lines == [b'* ESEARCH (TAG "%s") UID MIN 2 MAX 6\r\n' % t.split()[0]], lines
    lines, _ = r.cmd("SEARCH $")
    assert lines == [b"* SEARCH 2 6\r\n"], lines
    lines, t = r.cmd("SEARCH RETURN (SAVE MAX) ALL")
    assert lines == [b'* ESEARCH (TAG "%s") MAX 6\r\n' % t.split()[0]], lines
    lines, _ = r.cmd("SEARCH $")
    assert lines == [b"* SEARCH 6\r\n"], lines
    # ... with COUNT or ALL the whole result
    lines, t = r.cmd("SEARCH RETURN (MIN COUNT SAVE) NOT FLAGGED")
    assert lines == [b'* ESEARCH (TAG "%s") MIN 1 COUNT 3\r\n' % t.split()[0]], lines
    lines, _ = r.cmd("SEARCH $")
    assert lines == [b"* SEARCH 1 3 5\r\n"], lines
    # MOVE $: the moved messages leave "$" (expunged from INBOX)
    lines, t = r.cmd("MOVE $ Saved")
    assert b" OK " in t, (lines, t)
    lines, _ = r.cmd("SEARCH $")
    assert lines == [b"* SEARCH\r\n"], lines
    lines, _ = r.cmd("SEARCH ALL")
    assert lines == [b"* SEARCH 1 2 3\r\n"], lines


def test_searchres_failures_and_resets(srv):
    r = searchres_box(srv)
    r.cmd("SEARCH RETURN (SAVE) FLAGGED")
    # BAD leaves "$" alone
    _, t = r.cmd("SEARCH RETURN (SAVE) FROBNICATE")
    assert b" BAD " in t, t
    lines, _ = r.cmd("SEARCH $")
    assert lines == [b"* SEARCH 2 4 6\r\n"], lines
    # NO without SAVE leaves it too
    _, t = r.cmd("SEARCH CHARSET KOI8-R TEXT x")
    assert b" NO [BADCHARSET" in t, t
    lines, _ = r.cmd("SEARCH $")
    assert lines == [b"* SEARCH 2 4 6\r\n"], lines
    # a NO to a SAVE empties it (RFC 5182 Example 5)
    _, t = r.cmd("SEARCH RETURN (SAVE) CHARSET KOI8-R TEXT x")
    assert b" NO [BADCHARSET" in t, t
    lines, t = r.cmd("COPY $ INBOX")
    assert lines == [] and b" OK " in t and b"COPYUID" not in t, (lines, t)
    # a SELECT or EXAMINE (of the same mailbox too) resets it; after CLOSE
    # or UNSELECT "$" cannot be used before the next SELECT, which resets it
    for cmd in ("SELECT INBOX", "EXAMINE INBOX"):
        r.cmd("SEARCH RETURN (SAVE) ALL")
        lines, _ = r.cmd("SEARCH $")
        assert lines == [b"* SEARCH 1 2 3 4 5 6\r\n"], lines
        _, t = r.cmd(cmd)
        assert b" OK " in t, (cmd, t)
        lines, _ = r.cmd("SEARCH $")
        assert lines == [b"* SEARCH\r\n"], (cmd, lines)
    _, t = r.cmd("FETCH $ FLAGS")
    assert b" OK " in t, t
    r.cmd("CLOSE")
    _, t = r.cmd("FETCH $ FLAGS")
    assert b" BAD " in t, t  # no mailbox selected


def test_searchres_pipelined_after_save(srv):
    """A command using "$" sent right behind SEARCH RETURN (SAVE) sees its
    result: commands run in the order they came (RFC 5182 2.3)."""
    r = searchres_box(srv)
    r.send(b"p1 SEARCH RETURN (SAVE) FLAGGED\r\np2 FETCH $ (UID)\r\n"
           b"p3 UID SEARCH RETURN (SAVE) NOT FLAGGED\r\np4 UID FETCH $ (FLAGS)\r\n"
           b"p5 SEARCH RETURN (SAVE) SUBJECT m5\r\np6 STORE $ +FLAGS.SILENT (\\Deleted)\r\n"
           b"p7 UID EXPUNGE $\r\np8 SEARCH $\r\np9 SEARCH ALL\r\n")
    l1, t1 = r.until("p1")
    l2, t2 = r.until("p2")
    assert l1 == [] and fetch_seqs(l2) == [2, 4, 6], (l1, l2)
    _, t3 = r.until("p3")
    l4, _ = r.until("p4")
    assert sorted(fetched(l4)) == [1, 3, 5], l4
    r.until("p5")
    r.until("p6")
    l7, t7 = r.until("p7")
    assert l7 == [b"* 5 EXPUNGE\r\n"] and b" OK " in t7, (l7, t7)
    l8, _ = r.until("p8")
    assert l8 == [b"* SEARCH\r\n"], l8  # the expunged message left "$"
    l9, _ = r.until("p9")
    assert l9 == [b"* SEARCH 1 2 3 4 5\r\n"], l9


def test_searchres_expunge_by_other_session_leaves_saved(srv):
    r = searchres_box(srv)
    r.cmd("UID SEARCH RETURN (SAVE) FLAGGED")
    other = imap(srv)
    other.select("INBOX")
    other.uid("STORE", "4", "+FLAGS.SILENT", r"(\Deleted)")
    other.expunge()
    lines, _ = r.cmd("NOOP")
    assert b"* 4 EXPUNGE\r\n" in lines, lines
    lines, _ = r.cmd("UID SEARCH $")
    assert lines == [b"* SEARCH 2 6\r\n"], lines
    lines, _ = r.cmd("FETCH $ (UID)")
    assert sorted(fetched(lines)) == [2, 6] and fetch_seqs(lines) == [2, 5], lines
    # imaplib, as a client would: search with SAVE, then fetch "$"
    c = imap(srv)
    c.select("INBOX")
    typ, _ = c._simple_command("SEARCH", "RETURN", "(SAVE)", "NOT", "FLAGGED")
    assert typ == "OK"
    typ, data = c.fetch("$", "(UID)")
    assert typ == "OK" and len([d for d in data if d]) == 3, data


# ---- UNAUTHENTICATE (RFC 8437) ------------------------------------------------------


def test_unauthenticate_resets_everything_but_tls(srv):
    deliver(srv, "alice@example.com", subject="for alice")
    r = Raw(srv)
    assert b"UNAUTHENTICATE" not in r.greeting  # offered after login only
    _, t = r.cmd("UNAUTHENTICATE")
    assert b" BAD " in t, t  # not authenticated yet
    r.login()
    lines, _ = r.cmd("CAPABILITY")
    assert b" UNAUTHENTICATE " in lines[0], lines
    lines, _ = r.cmd("ENABLE QRESYNC IMAP4rev2")
    assert lines == [b"* ENABLED QRESYNC IMAP4rev2\r\n"], lines
    lines, _ = r.cmd("SELECT INBOX")
    assert b"* 1 EXISTS\r\n" in lines and b"* 0 RECENT\r\n" not in lines, lines
    _, t = r.cmd("UNAUTHENTICATE x")
    assert b" BAD " in t, t
    lines, t = r.cmd("UNAUTHENTICATE")
    assert lines == [] and b" OK " in t, (lines, t)  # no EXPUNGE, no BYE
    # not authenticated: mailbox commands are refused, the pre-login
    # capabilities are back
    _, t = r.cmd("FETCH 1 FLAGS")
    assert b" BAD " in t and b"Log in first" in t, t
    _, t = r.cmd("SELECT INBOX")
    assert b" BAD " in t and b"Log in first" in t, t
    lines, _ = r.cmd("CAPABILITY")
    assert b"AUTH=PLAIN" in lines[0] and b"UNAUTHENTICATE" not in lines[0], lines
    # pipelined with a new AUTHENTICATE (SASL-IR), as RFC 8437 3 allows,
    # as another user
    import base64
    ir = base64.b64encode(b"\0bob@example.com\0" + USERS["bob@example.com"].encode())
    r.send(b"u1 UNAUTHENTICATE\r\nu2 AUTHENTICATE PLAIN " + ir + b"\r\nu3 SELECT INBOX\r\n")
    _, t = r.until("u1")
    assert b" BAD " in t, t  # still not authenticated
    _, t = r.until("u2")
    assert b" OK " in t, t
    lines, t = r.until("u3")
    # bob's INBOX (empty), and ENABLE state gone: rev1 again (RECENT), no QRESYNC
    assert b"* 0 EXISTS\r\n" in lines and b"* 0 RECENT\r\n" in lines, lines
    r.send(b"u4 UNAUTHENTICATE\r\nu5 LOGIN alice@example.com \"" +
           USERS["alice@example.com"].encode() + b"\"\r\nu6 SELECT INBOX (QRESYNC (1 1))\r\n")
    _, t = r.until("u4")
    assert b" OK " in t, t
    _, t = r.until("u5")
    assert b" OK " in t, t
    _, t = r.until("u6")
    assert b" BAD " in t and b"QRESYNC is not enabled" in t, t
    lines, _ = r.cmd("SELECT INBOX")
    assert b"* 1 EXISTS\r\n" in lines, lines
    lines, _ = r.cmd("SEARCH $")
    assert lines == [b"* SEARCH\r\n"], lines


def test_unauthenticate_over_tls_and_imaplib(srv, monkeypatch):
    # imaplib does not know the command: teach it the states
    monkeypatch.setitem(imaplib.Commands, "UNAUTHENTICATE", ("AUTH", "SELECTED"))
    c = imap(srv, tls="implicit")
    typ, data = c.capability()
    assert b"UNAUTHENTICATE" in data[0]
    c.select("INBOX")
    typ, data = c._simple_command("UNAUTHENTICATE")
    assert typ == "OK", data
    c.state = "NONAUTH"
    typ, _ = c.login("bob@example.com", USERS["bob@example.com"])
    assert typ == "OK"
    typ, data = c.select("INBOX")
    assert typ == "OK" and data == [b"0"], data
    c.logout()


def test_unauthenticate_releases_the_user_slot(imapsrv):
    srv = imapsrv(config="[limits]\nmax_connections_per_user = 1\n")
    a = Raw(srv).login()
    b = Raw(srv)
    _, t = b.cmd(f'LOGIN alice@example.com "{USERS["alice@example.com"]}"')
    assert b"NO [LIMIT]" in t, t
    _, t = a.cmd("UNAUTHENTICATE")
    assert b" OK " in t, t
    _, t = b.cmd(f'LOGIN alice@example.com "{USERS["alice@example.com"]}"')
    assert b" OK " in t, t
    _, t = a.cmd(f'LOGIN alice@example.com "{USERS["alice@example.com"]}"')
    assert b"NO [LIMIT]" in t, t  # b holds the one slot now
    a.login("bob@example.com")


def test_unauthenticate_can_be_turned_off(imapsrv):
    srv = imapsrv(config="[limits]\nimap_unauthenticate = no\n")
    r = Raw(srv).login()
    lines, _ = r.cmd("CAPABILITY")
    assert b"UNAUTHENTICATE" not in lines[0], lines
    _, t = r.cmd("UNAUTHENTICATE")
    assert b" BAD " in t and b"Unknown command" in t, t
    _, t = r.cmd("NOOP")
    assert b" OK " in t, t  # still logged in


# ---- RFC 9051 details: STATUS RECENT, ENABLE's state ---------------------------------


def test_rev2_status_has_no_recent(srv):
    r = Raw(srv).login()
    lines, t = r.cmd("STATUS INBOX (RECENT MESSAGES)")
    assert lines == [b'* STATUS "INBOX" (RECENT 0 MESSAGES 0)\r\n'], lines  # rev1: still
    r.cmd("ENABLE IMAP4rev2")
    # RFC 9051 status-att has no RECENT; removed items only for rev1 clients
    lines, t = r.cmd("STATUS INBOX (RECENT MESSAGES)")
    assert lines == [] and b" BAD " in t and b"RECENT" in t, (lines, t)
    lines, t = r.cmd("STATUS INBOX (recent)")
    assert lines == [] and b" BAD " in t, (lines, t)
    lines, t = r.cmd('LIST "" INBOX RETURN (STATUS (MESSAGES RECENT))')
    assert lines == [] and b" BAD " in t, (lines, t)
    lines, t = r.cmd("STATUS INBOX (MESSAGES DELETED SIZE)")
    assert lines == [b'* STATUS "INBOX" (MESSAGES 0 DELETED 0 SIZE 0)\r\n'], lines
    lines, t = r.cmd('LIST "" INBOX RETURN (STATUS (MESSAGES))')
    assert b'* STATUS "INBOX" (MESSAGES 0)\r\n' in lines and b" OK " in t, lines


def test_enable_only_before_a_mailbox_is_selected(srv):
    deliver(srv, "alice@example.com")
    r = Raw(srv).login()
    r.cmd("SELECT INBOX")
    lines, t = r.cmd("ENABLE CONDSTORE")
    assert lines == [] and b" BAD " in t and b"before a mailbox is selected" in t, (lines, t)
    lines, _ = r.cmd("STORE 1 +FLAGS (\\Seen)")
    assert lines and b"MODSEQ" not in lines[0], lines  # nothing was enabled
    _, t = r.cmd("ENABLE IMAP4rev2")
    assert b" BAD " in t, t
    lines, _ = r.cmd("SEARCH ALL")
    assert lines == [b"* SEARCH 1\r\n"], lines  # still rev1
    r.cmd("CLOSE")
    lines, t = r.cmd("ENABLE CONDSTORE")
    assert lines == [b"* ENABLED CONDSTORE\r\n"] and b" OK " in t, (lines, t)
    r.cmd("SELECT INBOX")
    lines, _ = r.cmd("STORE 1 -FLAGS (\\Seen)")
    assert b"MODSEQ" in lines[0], lines
    # imaplib (enable() checks the state itself; the raw command shows ours)
    c = imap(srv)
    typ, data = c.enable("IMAP4rev2")
    assert typ == "OK" and c.untagged_responses.get("ENABLED") == [b"IMAP4rev2"], data
    c.select("INBOX")
    with pytest.raises(imaplib.IMAP4.error):
        c._simple_command("ENABLE", "CONDSTORE")


# ---- long untagged replies over a small send queue ----------------------------------


def multiappend(r, n, flags_of):
    """Appends n small messages to INBOX in one MULTIAPPEND with LITERAL+."""
    parts = [b"ma APPEND INBOX"]
    for i in range(1, n + 1):
        msg = b"Subject: big %d\r\n\r\nx\r\n" % i
        parts.append(b" %s {%d+}\r\n%s" % (flags_of(i), len(msg), msg))
    r.send(b"".join(parts) + b"\r\n")
    _, t = r.until("ma", timeout=60)
    assert b" OK " in t, t


def long_line(r, tag, timeout=30):
    """The untagged lines of tag's command (no length limit)."""
    lines, t = r.until(tag, timeout)
    assert b" OK " in t, (lines, t)
    return lines


def test_header_fields_of_a_big_header_waits_for_the_socket(imapsrv):
    """HEADER.FIELDS(.NOT) filters the header in memory (up to 1 MiB), then
    sends it in pieces as the socket drains, like a body: a filtered header
    far longer than limits.send_queue_max arrives whole (it was queued at
    once, which closed the connection)."""
    srv = imapsrv(config="[limits]\nsend_queue_max = 16k\nimap_literal_max = 1048576\n")
    fill = b"".join(b"X-Fill-%04d: %s\r\n" % (i, b"%c" % (97 + i % 26) * 700)
                    for i in range(500))
    msg = fill + b"Subject: big\r\n\r\nbody\r\n"
    c = imap(srv)
    typ, _ = c.append("INBOX", None, None, msg)
    assert typ == "OK"
    c.logout()
    for tls in (None, "implicit"):
        c = imap(srv, tls=tls)
        c.select("INBOX")
        typ, data = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS.NOT (Subject)])")
        assert typ == "OK", data
        assert data[0][1] == fill + b"\r\n"
        typ, data = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (X-Fill-0001 X-Fill-0499)] UID)")
        lines = fill.splitlines(True)
        assert typ == "OK" and data[0][1] == lines[1] + lines[499] + b"\r\n"
        assert c.noop()[0] == "OK"
        c.logout()


def test_long_untagged_replies_wait_for_the_socket(imapsrv):
    """SEARCH, ESEARCH and VANISHED (EARLIER) replies far longer than
    limits.send_queue_max arrive whole: they are written in pieces as the
    socket drains, not queued at once (which closed the connection)."""
    srv = imapsrv(config="[limits]\nsend_queue_max = 4k\n")
    n = 3000
    r = Raw(srv).login()
    multiappend(r, n, lambda i: b"(\\Flagged)" if i % 2 else b"()")
    lines = select_lines(r, "")
    m0 = code(lines, "HIGHESTMODSEQ")
    uidvalidity = code(lines, "UIDVALIDITY")
    odd = list(range(1, n + 1, 2))
    # rev1 SEARCH of every message: about 14 KB on one line
    r.send(b"s1 SEARCH ALL\r\n")
    lines = long_line(r, "s1")
    assert lines == [b"* SEARCH " + b" ".join(b"%d" % i for i in range(1, n + 1)) + b"\r\n"]
    r.send(b"s2 UID SEARCH FLAGGED\r\n")
    lines = long_line(r, "s2")
    assert lines == [b"* SEARCH " + b" ".join(b"%d" % i for i in odd) + b"\r\n"]
    # ESEARCH: ALL as ranges (one for the whole mailbox), one per hit
    # when every other message matches
    r.send(b"s3 SEARCH RETURN (ALL) ALL\r\n")
    assert long_line(r, "s3") == [b'* ESEARCH (TAG "s3") ALL 1:%d\r\n' % n]
    r.send(b"s4 UID SEARCH RETURN (MIN COUNT ALL) FLAGGED\r\n")
    lines = long_line(r, "s4")
    assert lines == [b'* ESEARCH (TAG "s4") UID MIN 1 COUNT %d ALL %s\r\n'
                     % (len(odd), b",".join(b"%d" % i for i in odd))]
    # the flagged (odd) messages go, expunged by another session without
    # EXPUNGE responses (CLOSE)
    b = Raw(srv).login()
    b.cmd("SELECT INBOX")
    b.send(b"d1 SEARCH RETURN (SAVE) FLAGGED\r\nd2 STORE $ +FLAGS.SILENT (\\Deleted)\r\n"
           b"d3 CLOSE\r\n")
    for tag in ("d1", "d2", "d3"):
        _, t = b.until(tag, 30)
        assert b" OK " in t, t
    # QRESYNC SELECT from before: VANISHED (EARLIER) with 1500 holes
    c = Raw(srv).login()
    c.cmd("ENABLE QRESYNC")
    c.send(b"q1 SELECT INBOX (QRESYNC (%d %d))\r\n" % (uidvalidity, m0))
    lines = long_line(c, "q1")
    assert vanished(lines) == ",".join(str(i) for i in odd), lines[-3:]
    assert b"* %d EXISTS\r\n" % (n // 2) in lines
    c.send(b"q2 UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)\r\n" % m0)
    lines = long_line(c, "q2")
    assert vanished(lines) == ",".join(str(i) for i in odd)
    assert not fetched(lines), lines[:3]  # the even ones did not change
    # many updates at once: STORE on every message answers 1500 FETCH
    # lines (those past the queue come from the sync as it drains)
    b.cmd("SELECT INBOX")
    b.send(b"f1 STORE 1:* +FLAGS (\\Seen)\r\n")
    lines = long_line(b, "f1")
    seqs = sorted(int(l.split()[1]) for l in lines if b" FETCH " in l and b"\\Seen" in l)
    assert seqs == list(range(1, n // 2 + 1)), (len(seqs), lines[:3], lines[-3:])
    # r had not heard of any of it: 1500 EXPUNGEs and 1500 flag changes on
    # one NOOP, about 60 KB through a 4 KB queue
    r.send(b"n1 NOOP\r\n")
    lines = long_line(r, "n1")
    assert lines[:n // 2] == [b"* %d EXPUNGE\r\n" % i for i in range(1, n // 2 + 1)]
    assert len(lines) == n and all(b"\\Seen" in l for l in lines[n // 2:]), lines[n // 2:][:3]
    # the same for a QRESYNC session: one VANISHED, FETCH with MODSEQ
    c.send(b"n2 NOOP\r\n")
    lines = long_line(c, "n2")
    assert len([l for l in lines if b" FETCH " in l and b"MODSEQ (" in l]) == n // 2, lines[:3]
    # while they trickle out the client is told not to resync from them
    assert all(l.startswith(b"* OK [HIGHESTMODSEQ ") for l in lines if b" FETCH " not in l)
    # IDLE: the updates go out as the socket drains, DONE ends it
    d = Raw(srv).login()
    d.cmd("SELECT INBOX")
    d.send(b"i1 IDLE\r\n")
    assert d.line().startswith(b"+ "), "no continuation"
    b.send(b"f2 STORE 1:* -FLAGS.SILENT (\\Seen)\r\n")
    b.until("f2", 30)
    got = [d.line(30) for _ in range(n // 2)]
    assert all(re.match(rb"\* \d+ FETCH \(UID \d+ FLAGS \(\)\)", l) for l in got), got[:3]
    d.send(b"DONE\r\n")
    lines = long_line(d, "i1")
    assert lines == [], lines[:3]
    # the connections are still there
    for x in (r, b, c, d):
        _, t = x.cmd("NOOP")
        assert b" OK " in t, t
    assert "send-queue-full" not in srv.log()


def test_half_closed_client_gets_every_answer(srv):
    """A client that pipelines its commands and shuts its sending side gets
    every answer before the server closes: the EOF that arrives while a
    command waits for the store (LOGIN, SELECT) waits for its answer."""
    for rounds in range(20):
        s = srv.connect(143)
        assert recv_line(s).startswith(b"* OK")
        s.sendall(b"a LOGIN alice@example.com alice-Secret-1\r\nb SELECT INBOX\r\n"
                  b"c FETCH 1:* (FLAGS)\r\nd LOGOUT\r\n")
        s.shutdown(socket.SHUT_WR)
        got = []
        while True:
            line = recv_line(s, timeout=10)
            if not line:
                break
            got.append(line)
        s.close()
        tagged = [l.split(b" ")[:2] for l in got if not l.startswith(b"*")]
        assert tagged == [[b"a", b"OK"], [b"b", b"OK"], [b"c", b"OK"], [b"d", b"OK"]], got
        assert any(l.startswith(b"* BYE") for l in got), got


def test_folders_max(imapsrv):
    """limits.folders_max bounds the folders of a user: CREATE past it is
    NO [LIMIT] (INBOX does not count; a special-use name is always
    allowed); a DELETE makes room again. Two sessions creating at once
    cannot together go past it (creates in flight count). Without the auto
    folders, so that Sent is made here (test_auto_folders.py: they do not
    count)."""
    srv = imapsrv(config="[server]\nauto_folders =\n[limits]\nfolders_max = 4\n")
    a, b = Raw(srv).login(), Raw(srv).login()
    # both sessions pipeline six CREATEs at the same moment
    a.send(b"".join(b"a%d CREATE a%d\r\n" % (i, i) for i in range(6)))
    b.send(b"".join(b"b%d CREATE b%d\r\n" % (i, i) for i in range(6)))
    tagged = []
    for r, p in ((a, "a"), (b, "b")):
        for i in range(6):
            _, t = r.until(f"{p}{i}")
            tagged.append(t)
    ok = [t for t in tagged if b" OK " in t]
    limit = [t for t in tagged if b" NO [LIMIT] " in t]
    assert len(ok) == 4 and len(limit) == 8, tagged
    lines, _ = a.cmd('LIST "" "*"')
    assert len(lines) == 5, lines  # INBOX and the four
    _, t = a.cmd("CREATE one-more")
    assert b" NO [LIMIT] " in t, t
    name = ok[0].split(b" ")[0].decode()  # the tag is the folder's name
    _, t = a.cmd(f"DELETE {name}")
    assert b" OK " in t, t
    _, t = a.cmd("CREATE one-more")
    assert b" OK " in t, t
    # at the limit, a special-use folder can still be made (clients expect Sent)
    _, t = a.cmd("CREATE Sent")
    assert b" OK " in t, t
    _, t = a.cmd("CREATE two-more")
    assert b" NO [LIMIT] " in t, t


# ---- zero-copy FETCH on plaintext (splice) ----------------------------------------


def no_nul_bytes(n, seed):
    """n bytes of every value but NUL, CR and LF, with CRLF every 998."""
    import random
    table = bytes(b if b not in (0, 10, 13) else 0x78 for b in range(256))
    raw = random.Random(seed).randbytes(n).translate(table)
    return b"\r\n".join(raw[i:i + 998] for i in range(0, n, 998))


def splice_msg(p1_len=300 * 1024, p2_len=5 * 1024 * 1024, seed=11):
    """A two-part message with 8-bit bytes and no NUL: (msg, header, part1, part2)."""
    p1, p2 = no_nul_bytes(p1_len, seed), no_nul_bytes(p2_len, seed + 1)
    hdr = (b"From: a@example.com\r\nSubject: splice\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=zc\r\n\r\n")
    msg = (hdr + b"--zc\r\nContent-Type: text/plain; charset=x-unknown\r\n\r\n" + p1 +
           b"\r\n--zc\r\nContent-Type: application/octet-stream\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n\r\n" + p2 + b"\r\n--zc--\r\n")
    assert b"--zc" not in p1 and b"--zc" not in p2
    return msg, hdr, p1, p2


def server_fds(srv):
    """The server's open descriptors by kind ("pipe", "socket", ...): a count each."""
    kinds = {}
    d = f"/proc/{srv.proc.pid}/fd"
    for f in os.listdir(d):
        try:
            k = os.readlink(os.path.join(d, f)).split(":")[0]
        except FileNotFoundError:
            continue
        kinds[k] = kinds.get(k, 0) + 1
    return kinds


def wait_fds(srv, want, timeout=10.0, kinds=("pipe", "socket")):
    """Waits until the server's pipe and socket counts are those of want."""
    deadline = time.monotonic() + timeout
    while True:
        got = server_fds(srv)
        if all(got.get(k, 0) == want.get(k, 0) for k in kinds):
            return
        assert time.monotonic() < deadline, (got, want)
        time.sleep(0.05)


def workers_waiting_on_a_full_socket(srv):
    """Threads of the server (io_uring's kernel workers among them) asleep
    until a socket has room; None when their stacks cannot be read."""
    out = []
    d = f"/proc/{srv.proc.pid}/task"
    for t in os.listdir(d):
        try:
            with open(os.path.join(d, t, "stack")) as f:
                stack = f.read()
        except FileNotFoundError:
            continue
        except OSError:
            return None
        if "sk_stream_wait_memory" in stack:
            out.append(t)
    return out


def small_window_client(srv, rcvbuf=4096):
    """A Raw client whose socket takes little before the server must wait."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect((HOST, srv.port(143)))
    srv._socks.append(s)
    r = Raw.__new__(Raw)
    r.sock, r.n = s, 0
    r.greeting = recv_line(s)
    return r


def fetch_literals(r, tag, timeout=30.0):
    """Reads the answer to a FETCH sent as tag: every literal, in order."""
    lits = []
    while True:
        ln = r.line(timeout)
        assert ln, f"EOF before {tag} completed"
        if ln.startswith(tag + b" "):
            assert b" OK " in ln, ln
            return lits
        while True:
            m = re.search(rb"\{(\d+)\}\r\n$", ln)
            if not m:
                break
            lits.append(recv_exact(r.sock, int(m.group(1)), timeout))
            ln = r.line(timeout)


def test_fetch_splice_bodies_are_exact(srv):
    """On 143 a long byte range of a message without NUL goes file -> pipe
    -> socket: BODY[], TEXT, parts, RFC822 and partials (across the 1 MiB
    splice pieces, past the end) come out byte-exact, in order with the
    copied bytes around them (several messages and items in one FETCH);
    over STARTTLS the same bytes come through the copy path."""
    msg, hdr, p1, p2 = splice_msg()
    small = b"Subject: small\r\n\r\nsmall body\r\n"
    msg3, _, _, _ = splice_msg(280 * 1024, 2 * 1024 * 1024 + 5, seed=21)
    c = imap(srv)
    for m in (msg, small, msg3):
        assert c.append("INBOX", None, None, m)[0] == "OK"
    c.logout()
    r = Raw(srv).login()
    r.cmd("SELECT INBOX")
    text = msg[len(hdr):]
    n = len(msg)
    cases = [
        ("BODY.PEEK[]", msg),
        ("BODY.PEEK[TEXT]", text),
        ("BODY.PEEK[1]", p1),
        ("BODY.PEEK[2]", p2),
        ("BODY.PEEK[]<1048000.2100000>", msg[1048000:3148000]),
        ("BODY.PEEK[]<0.262144>", msg[:262144]),
        ("BODY.PEEK[]<%d.1000000>" % (n - 300000), msg[n - 300000:]),
        ("BODY.PEEK[]<%d.10>" % (n + 5), b""),
        ("BODY.PEEK[2]<1044479.1044482>", p2[1044479:2088961]),
        ("RFC822.TEXT", text),
        ("RFC822", msg),
    ]
    for item, want in cases:
        got = one_lit(r, f"FETCH 1 ({item})")
        assert got[0] is False and len(got[1]) == len(want), (item, len(got[1]), len(want))
        assert got[1] == want, item
    out, t = lit_cmd(r, "FETCH 1:3 (BODY.PEEK[1] BODY.PEEK[] BODY.PEEK[HEADER])", timeout=60)
    assert b" OK " in t, t
    lits = [l for _, ls in out for _, l in ls]
    h3 = msg3[:msg3.index(b"\r\n\r\n") + 4]
    p31 = msg3[msg3.index(b"charset=x-unknown\r\n\r\n") + 21:]
    p31 = p31[:p31.index(b"\r\n--zc")]
    assert lits == [p1, msg, hdr, b"small body\r\n", small, small[:18], p31, msg3, h3]
    # the same over STARTTLS on 143 (encrypted: copied, never spliced)
    c = imap(srv, tls="starttls")
    c.select("INBOX")
    typ, data = c.fetch("1", "(BODY.PEEK[])")
    assert typ == "OK" and data[0][1] == msg
    c.logout()


def test_fetch_many_small_messages_in_one_command(srv):
    """One UID FETCH over 250 small messages (a client's header sync):
    their filtered headers and bodies are batched into large sends, and
    every response still carries its own message's bytes, in order, on
    143, over STARTTLS and on 993."""
    c = imap(srv)
    assert c.create("manysmall")[0] == "OK"
    msgs = []
    for i in range(250):
        # every 40th body is larger than the output buffer: sent past it,
        # after what the buffer holds
        body = (b"line %d of message %d\r\n" % (i, i)) * (1 + i % 37 + (900 if i % 40 == 7 else 0))
        m = (b"From: s%d@remote.example\r\nSubject: many %d\r\nX-Skip: %s\r\n"
             b"Message-ID: <%d.many@x>\r\n\r\n" % (i, i, b"y" * (i % 90), i)) + body
        msgs.append(m)
        assert c.append("manysmall", None, None, m)[0] == "OK"
    c.logout()
    for tls in (None, "starttls", "implicit"):
        c = imap(srv, tls=tls)
        c.select("manysmall", readonly=True)
        typ, data = c.uid("FETCH", "1:*",
                          "(UID BODY.PEEK[HEADER.FIELDS (Subject Message-ID)] BODY.PEEK[TEXT])")
        assert typ == "OK", data
        lits = [d for d in data if isinstance(d, tuple)]
        # imaplib splits a response with two literals into two tuples
        assert len(lits) == 500, (tls, len(lits))
        for i, m in enumerate(msgs):
            head, text = lits[2 * i], lits[2 * i + 1]
            assert head[0].startswith(b"%d (UID " % (i + 1)), (tls, head[0])
            assert head[1] == b"Subject: many %d\r\nMessage-ID: <%d.many@x>\r\n\r\n" % (i, i), \
                (tls, i, head[1])
            assert text[1] == m[m.index(b"\r\n\r\n") + 4:], (tls, i)
        c.logout()
    c = imap(srv)
    assert c.delete("manysmall")[0] == "OK"
    c.logout()


def test_fetch_splice_respects_a_small_send_queue(imapsrv):
    """limits.send_queue_max below the pipe's size: the spliced pieces are
    smaller (half of it), the connection is never over its limit."""
    srv = imapsrv(config="[limits]\nsend_queue_max = 300k\n")
    msg, _, _, _ = splice_msg(300 * 1024, 3 * 1024 * 1024)
    c = imap(srv)
    assert c.append("INBOX", None, None, msg)[0] == "OK"
    c.select("INBOX")
    typ, data = c.fetch("1", "(BODY.PEEK[])")
    assert typ == "OK" and data[0][1] == msg
    c.logout()
    assert not srv.log_lines(event="send-queue-full")


def test_fetch_splice_message_with_nul_is_copied(imapsrv):
    """A message holding a NUL (literal8 APPEND), even far from the range
    fetched, takes the copy path on 143: NUL goes out as 0x80 (CHAR8), the
    same length; BINARY[] keeps it. A message without NUL next to it is
    spliced (its bytes untouched, 0x80 and 0xff included)."""
    srv = imapsrv()
    body = no_nul_bytes(3 * 1024 * 1024, 5)
    nul_at = 2 * 1024 * 1024 + 17
    with_nul = b"Subject: nul\r\n\r\n" + body[:nul_at] + b"\x00" + body[nul_at + 1:]
    without = b"Subject: clean\r\n\r\n" + body
    r = Raw(srv).login()
    for m in (with_nul, without):
        r.send(b"a APPEND INBOX ~{%d}\r\n" % len(m))
        assert r.line().startswith(b"+ ")
        r.send(m + b"\r\n")
        _, t = r.until("a", timeout=30)
        assert t.startswith(b"a OK [APPENDUID"), t
    r.cmd("SELECT INBOX")
    assert one_lit(r, "FETCH 1 BODY.PEEK[]") == (False, with_nul.replace(b"\x00", b"\x80"))
    assert one_lit(r, "FETCH 1 BODY.PEEK[]<0.1048576>") == (False, with_nul[:1048576])
    assert one_lit(r, "FETCH 1 BODY.PEEK[TEXT]<%d.300000>" % (nul_at - 1000)) == \
        (False, with_nul[16 + nul_at - 1000:16 + nul_at + 299000].replace(b"\x00", b"\x80"))
    assert one_lit(r, "FETCH 1 BINARY.PEEK[]") == (True, with_nul)
    assert one_lit(r, "FETCH 2 BODY.PEEK[]") == (False, without)


def test_fetch_splice_stalled_clients_hold_no_worker(imapsrv):
    """One loop. Clients that stop reading mid-literal (a small receive
    window) park their splice on a POLLOUT wait: no kernel worker sleeps
    on their full sockets, another client is served at once, and when they
    read again they get every byte. Each holds its pipe meanwhile (the
    splice path is the one in use); the pipes close when they are done."""
    srv = imapsrv(threads=1)
    msg, _, _, _ = splice_msg(300 * 1024, 12 * 1024 * 1024)
    c = imap(srv)
    assert c.append("INBOX", None, None, msg)[0] == "OK"
    c.logout()
    r = Raw(srv).login()
    r.cmd("SELECT INBOX")
    assert one_lit(r, "FETCH 1 BODY.PEEK[]") == (False, msg)
    r.cmd("LOGOUT")
    r.sock.close()
    srv.quiesce(1)
    base = server_fds(srv)
    stalled = []
    for i in range(4):
        s = small_window_client(srv)
        s.login()
        s.cmd("SELECT INBOX")
        s.send(b"s FETCH 1 BODY.PEEK[]\r\n")
        stalled.append(s)
    time.sleep(1.0)
    fds = server_fds(srv)
    assert fds.get("pipe", 0) == base.get("pipe", 0) + 2 * len(stalled), (fds, base)
    blocked = workers_waiting_on_a_full_socket(srv)
    if blocked is not None:
        assert blocked == [], blocked
    t0 = time.monotonic()
    y = Raw(srv).login()
    y.cmd("SELECT INBOX")
    assert one_lit(y, "FETCH 1 BODY.PEEK[]") == (False, msg)
    _, t = y.cmd("NOOP")
    assert b" OK " in t
    took = time.monotonic() - t0
    assert took < 5.0, took
    for s in stalled:
        assert fetch_literals(s, b"s", timeout=60) == [msg]
    # still logged in, but done: no session keeps its pipe
    wait_fds(srv, base, kinds=("pipe",))
    for s in stalled:
        s.cmd("LOGOUT")
        s.sock.close()
    y.cmd("LOGOUT")
    y.sock.close()
    wait_fds(srv, base)


def test_fetch_splice_client_disconnects_mid_splice(imapsrv):
    """Clients that go away while their body is being spliced (at once,
    after some bytes, with a reset, while stalled): the server goes on,
    and every pipe and socket of theirs is closed (an ASan build checks
    the freeing and leaks at exit)."""
    import struct
    srv = imapsrv(threads=1)
    msg, _, _, _ = splice_msg(300 * 1024, 8 * 1024 * 1024)
    c = imap(srv)
    assert c.append("INBOX", None, None, msg)[0] == "OK"
    c.logout()
    srv.quiesce(1)
    base = server_fds(srv)
    for how in ("at-once", "some-bytes", "reset", "stalled", "stalled-reset") * 2:
        r = small_window_client(srv) if how.startswith("stalled") else Raw(srv)
        r.login()
        r.cmd("SELECT INBOX")
        r.send(b"s FETCH 1 (BODY.PEEK[] BODY.PEEK[2])\r\n")
        if how == "some-bytes":
            recv_exact(r.sock, 1500000)
        elif how.startswith("stalled"):
            time.sleep(0.3)
        if how.endswith("reset"):
            r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        r.sock.close()
    r = Raw(srv).login()
    r.cmd("SELECT INBOX")
    assert one_lit(r, "FETCH 1 BODY.PEEK[]") == (False, msg)
    r.cmd("LOGOUT")
    r.sock.close()
    wait_fds(srv, base)


def test_fetch_splice_stalled_client_at_shutdown(imapsrv):
    """SIGTERM while a client has stopped reading mid-splice: the session
    cannot finish its FETCH, so shutdown_grace cuts it (the POLLOUT wait
    or the splice is cancelled) and the process exits 0 in time."""
    srv = imapsrv(config="[server]\nshutdown_grace = 1s\n", threads=1)
    msg, _, _, _ = splice_msg(300 * 1024, 8 * 1024 * 1024)
    c = imap(srv)
    assert c.append("INBOX", None, None, msg)[0] == "OK"
    c.logout()
    base = server_fds(srv).get("pipe", 0)
    s = small_window_client(srv)
    s.login()
    s.cmd("SELECT INBOX")
    s.send(b"s FETCH 1 BODY.PEEK[]\r\n")
    time.sleep(0.5)
    assert server_fds(srv).get("pipe", 0) == base + 2  # splicing
    t0 = time.monotonic()
    assert srv.stop(timeout=10) == 0, srv.log()[-3000:]
    took = time.monotonic() - t0
    assert 0.8 < took < 5.0, took


# ---- RFC corners found by differential testing against Dovecot -------------------


def append_raw(r, msg, box="INBOX"):
    """APPENDs msg with a non-synchronising literal; returns the tagged line."""
    r.n += 1
    tag = f"t{r.n}"
    r.send(f"{tag} APPEND {box} {{{len(msg)}+}}\r\n".encode() + msg + b"\r\n")
    _, t = r.until(tag)
    assert b" OK " in t, t
    return t


def test_header_fields_partial_counts_filtered_bytes(srv):
    """BODY[HEADER.FIELDS (...)]<o.n> sends n bytes of the filtered header
    from o (RFC 9051 6.4.5); it used to send the whole filtered header
    under the "<o>" origin, so a client asking for a range got more bytes
    than asked and from the wrong place."""
    r = Raw(srv).login()
    append_raw(r, b"Subject: odd\r\nX-A: 1\r\nx-a: 2\r\nX-B-C: 3\r\n\r\nbody\r\n")
    r.cmd("SELECT INBOX")
    lines, t = r.cmd('FETCH 1 BODY.PEEK[HEADER.FIELDS ("X-A" X-B-C)]<2.10>')
    assert t.startswith(b"t4 OK"), t
    assert b"".join(lines) == (b'* 1 FETCH (BODY[HEADER.FIELDS ("X-A" X-B-C)]<2> {10}\r\n'
                               b"A: 1\r\nx-a:)\r\n"), lines
    lines, _ = r.cmd("FETCH 1 BODY.PEEK[HEADER.FIELDS (X-A)]<100.10>")
    assert b"".join(lines) == b"* 1 FETCH (BODY[HEADER.FIELDS (X-A)]<100> {0}\r\n)\r\n", lines
    lines, _ = r.cmd("FETCH 1 BODY.PEEK[HEADER.FIELDS.NOT (X-A X-B-C)]<0.100>")
    assert b"".join(lines) == (b"* 1 FETCH (BODY[HEADER.FIELDS.NOT (X-A X-B-C)]<0> {16}\r\n"
                               b"Subject: odd\r\n\r\n)\r\n"), lines
    lines, _ = r.cmd("FETCH 1 BODY.PEEK[HEADER.FIELDS (Subject)]<14.1>")
    assert b"".join(lines) == b"* 1 FETCH (BODY[HEADER.FIELDS (Subject)]<14> {1}\r\n\r)\r\n", lines


def test_store_silent_reports_modseq_to_condstore_clients(srv):
    """STORE ... FLAGS.SILENT sends no FLAGS, but once CONDSTORE is on each
    changed message still gets "* n FETCH (UID u MODSEQ (m))" (RFC 7162 3.1.3:
    "An untagged FETCH response MUST be sent, even if the .SILENT suffix
    is specified"); it used to send nothing, leaving the client's cached
    MODSEQ behind its own change."""
    r = Raw(srv).login()
    for i in range(3):
        append_raw(r, f"Subject: m{i}\r\n\r\nx\r\n".encode())
    r.cmd("SELECT INBOX")
    lines, t = r.cmd("STORE 1 +FLAGS.SILENT (\\Seen)")
    assert lines == [] and b" OK " in t, (lines, t)  # CONDSTORE not on yet
    # UNCHANGEDSINCE is a CONDSTORE enabling command (RFC 7162 3.1)
    lines, t = r.cmd("STORE 1:2 (UNCHANGEDSINCE 1000) +FLAGS.SILENT (\\Flagged)")
    assert t.startswith(b"t7 OK STORE"), t
    now, _ = r.cmd("FETCH 1:3 (MODSEQ)")
    ms = [re.search(rb"MODSEQ \((\d+)\)", ln).group(1) for ln in now]
    assert lines == [b"* 1 FETCH (UID 1 MODSEQ (%s))\r\n" % ms[0],
                     b"* 2 FETCH (UID 2 MODSEQ (%s))\r\n" % ms[1]], lines
    lines, t = r.cmd("UID STORE 2:3 -FLAGS.SILENT (\\Flagged)")
    now, _ = r.cmd("FETCH 2:3 (MODSEQ)")
    ms = [re.search(rb"MODSEQ \((\d+)\)", ln).group(1) for ln in now]
    # 3 was not \Flagged: unchanged, it keeps its MODSEQ and gets no response
    assert lines == [b"* 2 FETCH (UID 2 MODSEQ (%s))\r\n" % ms[0]], lines
    lines, _ = r.cmd("FETCH 1:3 (FLAGS)")
    assert lines == [b"* 1 FETCH (FLAGS (\\Seen \\Flagged))\r\n", b"* 2 FETCH (FLAGS ())\r\n",
                     b"* 3 FETCH (FLAGS ())\r\n"], lines


def modseqs(r, fetch_set="1:*"):
    """{seq: (flags bytes, modseq)} from FETCH set (FLAGS MODSEQ), after a
    NOOP (which takes the other sessions' changes in)."""
    r.cmd("NOOP")
    lines, t = r.cmd(f"FETCH {fetch_set} (FLAGS MODSEQ)")
    assert b" OK " in t, t
    out = {}
    for ln in lines:
        m = re.match(rb"\* (\d+) FETCH \(FLAGS \(([^)]*)\) MODSEQ \((\d+)\)\)\r\n$", ln)
        if m:
            out[int(m.group(1))] = (m.group(2), int(m.group(3)))
    return out


def test_select_with_unknown_parameter_is_bad(srv):
    """SELECT/EXAMINE with a parameter this server does not offer ("(FOO)",
    RFC 4466's select-param for extensions) is BAD and changes nothing, as
    in Dovecot: it used to be ignored, and a client would count on an
    extension it never got. CONDSTORE alongside the unknown one is not
    enabled either; the mailbox selected before stays selected."""
    r = Raw(srv).login()
    append_raw(r, b"Subject: s\r\n\r\nx\r\n")
    for cmd in ("SELECT INBOX (FOO)", "EXAMINE INBOX (FOO BAR)", "SELECT INBOX (CONDSTORE FOO)"):
        lines, t = r.cmd(cmd)
        assert lines == [] and b" BAD " in t, (cmd, lines, t)
    lines, t = r.cmd("FETCH 1 FLAGS")
    assert b" BAD " in t, (lines, t)  # nothing selected
    lines, t = r.cmd("SELECT INBOX")
    assert b" OK [READ-WRITE]" in t, t
    lines, t = r.cmd("SELECT INBOX (FOO)")
    assert lines == [] and b" BAD " in t, (lines, t)
    lines, t = r.cmd("FETCH 1 FLAGS")
    assert lines == [b"* 1 FETCH (FLAGS ())\r\n"] and b" OK " in t, (lines, t)
    lines, t = r.cmd("SELECT INBOX (CONDSTORE)")
    assert b" OK [READ-WRITE]" in t, t


def test_store_without_flags_is_bad(srv):
    """STORE with an item but no flag list ("STORE 1 +FLAGS", which a
    client building the list from an empty selection sends) got no reply at
    all: the client waited forever and the next command's reply was lost.
    It is BAD now, and the session goes on. An empty list is a valid
    flag-list (RFC 3501 9) and does nothing, as in Dovecot."""
    r = Raw(srv).login()
    append_raw(r, b"Subject: s\r\n\r\nx\r\n")
    _, t = r.cmd("SELECT INBOX")
    assert b" OK " in t, t
    for cmd in ("STORE 1 +FLAGS", "STORE 1 FLAGS", "UID STORE 1 -FLAGS.SILENT",
                "STORE 1 (UNCHANGEDSINCE 5) FLAGS"):
        lines, t = r.cmd(cmd, timeout=3)
        assert lines == [] and b" BAD " in t, (cmd, lines, t)
        lines, t = r.cmd("NOOP", timeout=3)
        assert b" OK " in t, (cmd, lines, t)
    for cmd in ("STORE 1 +FLAGS ()", "STORE 1 -FLAGS.SILENT ()"):
        lines, t = r.cmd(cmd, timeout=3)
        assert lines == [] and b" OK " in t, (cmd, lines, t)


def test_store_that_changes_nothing_sends_no_fetch(srv):
    """A non-silent STORE answers a FETCH only for the messages whose flags
    (or MODSEQ) are not what the client knew: +FLAGS (\\Seen) on a \\Seen
    message, -FLAGS of a flag it lacks, FLAGS of the flags it has get no
    untagged FETCH, with and without CONDSTORE, as Dovecot 2.3 answers
    (RFC 3501 6.4.6: STORE "normally" returns the updated value; nothing
    was updated). It used to answer each message of the set with its
    unchanged FLAGS (and MODSEQ). A change another session made that this
    one has not heard of yet is still reported (RFC 3501 6.4.6), as is
    every message the STORE changed, with its new MODSEQ under CONDSTORE
    (RFC 7162 3.1.3)."""
    a = Raw(srv).login()
    for i in range(3):
        append_raw(a, f"Subject: m{i}\r\n\r\nx\r\n".encode())
    for condstore in (False, True):
        a, b = Raw(srv).login(), Raw(srv).login()
        for r in (a, b):
            _, t = r.cmd("SELECT INBOX" + (" (CONDSTORE)" if condstore else ""))
            assert b" OK " in t, t
        _, t = a.cmd("STORE 1:3 FLAGS.SILENT (\\Seen)")
        assert b" OK " in t, t
        for cmd in ("STORE 1 +FLAGS (\\Seen)", "UID STORE 1:3 +FLAGS (\\Seen)",
                    "STORE 2 -FLAGS (\\Flagged)", "STORE 3 FLAGS (\\Seen)"):
            lines, t = a.cmd(cmd)
            assert lines == [] and b" OK " in t, (condstore, cmd, lines, t)
        # only the message the STORE changed is answered
        lines, t = a.cmd("STORE 2 +FLAGS (\\Flagged)")
        assert len(lines) == 1 and lines[0].startswith(b"* 2 FETCH ("), lines
        lines, t = a.cmd("STORE 1:3 +FLAGS (\\Flagged)")
        assert len(lines) == 2 and b"* 2 FETCH" not in b"".join(lines), lines
        _, t = b.cmd("NOOP")
        lines, t = b.cmd("STORE 2 +FLAGS.SILENT (\\Draft)")
        assert b" OK " in t, t
        lines, t = a.cmd("STORE 1:3 +FLAGS (\\Seen)")
        assert len(lines) == 1 and lines[0].startswith(b"* 2 FETCH ("), (condstore, lines)
        assert b"\\Draft" in lines[0], lines
        assert (b"MODSEQ (" in lines[0]) == condstore, lines
    lines, t = a.cmd("STORE 3 +FLAGS ($Work)")
    assert len(lines) == 1 and re.match(rb"\* 3 FETCH \(UID 3 FLAGS \(\\Seen \\Flagged \$Work\) MODSEQ \(\d+\)\)\r\n",
                                        lines[0]), lines


def test_store_that_changes_nothing_keeps_modseq(srv):
    """A STORE that changes no flag of a message (+FLAGS \\Seen on a \\Seen
    one) gave it a new MODSEQ anyway, so a CONDSTORE client fetched it again
    (FETCH CHANGEDSINCE, QRESYNC) for nothing. Now an unchanged message keeps
    its MODSEQ and HIGHESTMODSEQ moves only when a message changed, as in
    Dovecot. The store decides it as it applies records in log order, so
    it holds while two sessions' changes are in flight together: here one
    session toggles \\Flagged on message 1 and the other $Work on message 2,
    each between no-op STOREs over all 20 messages, pipelined at once."""
    a, b, w = (Raw(srv).login() for _ in range(3))
    for i in range(20):
        append_raw(a, f"Subject: m{i}\r\n\r\nx\r\n".encode())
    for r in (a, b, w):
        _, t = r.cmd("SELECT INBOX (CONDSTORE)")
        assert b" OK " in t, t
    a.cmd("STORE 1:20 +FLAGS.SILENT (\\Seen)")
    m0 = modseqs(w)
    assert len(m0) == 20 and all(f == b"\\Seen" for f, _ in m0.values()), m0
    h0 = max(ms for _, ms in m0.values())
    # one session: no reply for the unchanged message, as in Dovecot
    # (test_store_that_changes_nothing_sends_no_fetch)
    lines, t = a.cmd("STORE 1 +FLAGS (\\Seen)")
    assert lines == [], lines
    for cmd in ("STORE 1:20 +FLAGS.SILENT (\\Seen)", "UID STORE 1:20 -FLAGS.SILENT (\\Draft)",
                "STORE 1:20 FLAGS.SILENT (\\Seen)", "STORE 1:20 -FLAGS.SILENT ($Work)"):
        lines, t = a.cmd(cmd)
        assert lines == [] and b" OK " in t, (cmd, lines, t)
    assert modseqs(w) == m0
    lines, t = w.cmd("STATUS INBOX (HIGHESTMODSEQ)")
    assert lines == [b'* STATUS "INBOX" (HIGHESTMODSEQ %d)\r\n' % h0], lines
    # two sessions at once (both up to date first)
    for r in (a, b):
        r.cmd("NOOP")
    rounds = 30
    batches = {}
    for r, toggle in ((a, "STORE 1 {}FLAGS.SILENT (\\Flagged)"), (b, "UID STORE 2 {}FLAGS.SILENT ($Work)")):
        out, tags = b"", []
        for k in range(rounds):
            for cmd in ("STORE 1:20 +FLAGS.SILENT (\\Seen)", toggle.format("+-"[k % 2])):
                r.n += 1
                tags.append(f"t{r.n}")
                out += f"t{r.n} {cmd}\r\n".encode()
        batches[r] = (out, tags)
    for r in (a, b):
        r.send(batches[r][0])
    untagged = []
    for r in (a, b):
        for tag in batches[r][1]:
            lines, t = r.until(tag, timeout=30)
            assert b" OK " in t, t
            untagged += lines
    # only messages 1 and 2 ever changed: nothing else is reported
    assert untagged and [ln for ln in untagged
                         if not re.match(rb"\* [12] FETCH \(UID [12] ", ln)] == [], untagged
    m1 = modseqs(w, "1:20")
    assert m1[1][0] == b"\\Seen" and m1[2][0] == b"\\Seen", m1  # the last toggles removed them
    assert {k: v for k, v in m1.items() if k > 2} == {k: v for k, v in m0.items() if k > 2}
    assert m1[1][1] > h0 and m1[2][1] > h0 and m1[1][1] != m1[2][1], m1
    lines, t = w.cmd("STATUS INBOX (HIGHESTMODSEQ)")
    assert lines == [b'* STATUS "INBOX" (HIGHESTMODSEQ %d)\r\n' % max(m1[1][1], m1[2][1])], lines
    lines, t = w.cmd(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {h0})")
    assert sorted(int(re.match(rb"\* (\d+) FETCH", ln).group(1)) for ln in lines) == [1, 2], lines


def test_changedsince_zero_returns_modseq(srv):
    """FETCH ... (CHANGEDSINCE 0) answers every message with its MODSEQ
    (RFC 7162 3.1.4.1: CHANGEDSINCE adds the MODSEQ item); the FETCH
    used to answer without MODSEQ, as if no modifier had been given, so
    the client could not record any. An empty mailbox that never changed
    announces [HIGHESTMODSEQ 1] (mod-sequence values are positive), and
    CHANGEDSINCE 1 then sees every later message too."""
    r = Raw(srv).login()
    r.cmd("CREATE Box")
    lines, _ = r.cmd("SELECT Box (CONDSTORE)")
    assert b"* OK [HIGHESTMODSEQ 1] Highest\r\n" in lines, lines
    r.cmd("UNSELECT")
    append_raw(r, b"Subject: a\r\n\r\nx\r\n", "Box")
    append_raw(r, b"Subject: b\r\n\r\nx\r\n", "Box")
    r.cmd("SELECT Box")
    now, _ = r.cmd("FETCH 1:2 (MODSEQ)")
    ms = [re.search(rb"MODSEQ \((\d+)\)", ln).group(1) for ln in now]
    lines, t = r.cmd("FETCH 1:2 (FLAGS) (CHANGEDSINCE 0)")
    assert lines == [b"* 1 FETCH (FLAGS () MODSEQ (%s))\r\n" % ms[0],
                     b"* 2 FETCH (FLAGS () MODSEQ (%s))\r\n" % ms[1]], lines
    lines, t = r.cmd("UID FETCH 2:* (FLAGS) (CHANGEDSINCE 0)")
    assert lines == [b"* 2 FETCH (UID 2 FLAGS () MODSEQ (%s))\r\n" % ms[1]], lines
    lines, t = r.cmd("FETCH 1:2 (FLAGS) (CHANGEDSINCE 1)")
    assert len(lines) == 2 and all(b"MODSEQ" in ln for ln in lines), lines


def test_empty_lists_and_bad_sections_are_bad(imapsrv):
    """Syntax the grammar does not allow is BAD, not an empty success:
    "FETCH 1 ()" used to answer "* 1 FETCH ()" (no msg-att: a response
    clients fail to parse), STATUS m () "* STATUS m ()", and BODY[MIME],
    BODY[TEXT.MIME], BODY[HEADER.FIELDS] without or with an empty list
    and BODY[0] an empty string, as if the request were valid (RFC 9051
    section-spec, header-list, fetch-att and status-att lists)."""
    srv = imapsrv(config="[limits]\nmax_bad_commands = 100\n")
    r = Raw(srv).login()
    append_raw(r, b"Subject: s\r\n\r\nbody\r\n")
    r.cmd("SELECT INBOX")
    for cmd in ("FETCH 1 ()", "FETCH 1 BODY.PEEK[MIME]", "FETCH 1 BODY.PEEK[TEXT.MIME]",
                "FETCH 1 BODY[HEADER.FIELDS]", "FETCH 1 BODY.PEEK[HEADER.FIELDS ()]",
                "FETCH 1 BODY.PEEK[HEADER.FIELDS (A  B)]", "FETCH 1 BODY.PEEK[0]",
                "FETCH 1 BODY.PEEK[1.]", "STATUS INBOX ()",
                'LIST "" "*" RETURN (STATUS ())'):
        lines, t = r.cmd(cmd)
        assert lines == [] and re.match(rb"t\d+ BAD ", t), (cmd, lines, t)
    # the valid neighbours still answer
    lines, _ = r.cmd('FETCH 1 (BODY.PEEK[1.MIME] BODY.PEEK[HEADER.FIELDS (Subject "X")])')
    assert b"".join(lines) == (b'* 1 FETCH (BODY[1.MIME] {14}\r\nSubject: s\r\n\r\n'
                               b' BODY[HEADER.FIELDS (Subject "X")] {14}\r\nSubject: s\r\n\r\n)\r\n'), lines
    lines, _ = r.cmd("FETCH 1 BODY.PEEK[2]")
    assert lines == [b'* 1 FETCH (BODY[2] "")\r\n'], lines
    lines, t = r.cmd("STATUS INBOX (MESSAGES)")
    assert lines == [b'* STATUS "INBOX" (MESSAGES 1)\r\n'], lines


def test_bad_line_drops_its_nonsync_literal(srv):
    """A command line the tokenizer cannot parse gets BAD and is skipped;
    when it ends with a non-synchronising literal "{n+}" the client sends
    the n bytes anyway, and they (and the rest of the command) are
    skipped too. They used to be read as commands: an APPEND that failed
    to parse ran the lines of the message it carried."""
    r = Raw(srv).login()
    evil = b"x1 CREATE Pwned\r\nx2 LOGOUT\r\n"
    r.send(b"a1 APPEND INBOX (f\xe9o) {%d+}\r\n" % len(evil) + evil + b"\r\n")
    lines, t = r.until("a1")
    assert lines == [] and t.startswith(b"a1 BAD "), (lines, t)
    r.send(b'a2 APPEND INBOX "\\q" {%d+}\r\n' % len(evil) + evil + b" (\\Seen) {3+}\r\nx3 \r\n")
    lines, t = r.until("a2")
    assert lines == [] and t.startswith(b"a2 BAD "), (lines, t)
    lines, t = r.cmd('LIST "" "*"')
    assert sorted(lines) == sorted([b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n'] + AUTO_LIST), lines
    lines, t = r.cmd("STATUS INBOX (MESSAGES)")
    assert lines == [b'* STATUS "INBOX" (MESSAGES 0)\r\n'], lines


def test_select_sends_unseen_to_imap4rev1_sessions(srv):
    """SELECT/EXAMINE in an IMAP4rev1 session send "* OK [UNSEEN n]" with
    the first message without \\Seen (RFC 3501 6.3.1 lists it among the
    REQUIRED OK responses; clients use it to open the mailbox at the first
    unread message), and none when every message is seen. IMAP4rev2
    dropped it (RFC 9051 6.3.2): none after ENABLE IMAP4rev2."""
    r = Raw(srv).login()
    for i in range(3):
        append_raw(r, f"Subject: m{i}\r\n\r\nx\r\n".encode())
    r.cmd("SELECT INBOX")
    r.cmd("STORE 1 +FLAGS.SILENT (\\Seen)")
    lines, _ = r.cmd("EXAMINE INBOX")
    assert [ln for ln in lines if b"UNSEEN" in ln] == [b"* OK [UNSEEN 2] First unseen\r\n"], lines
    i = lines.index(b"* OK [UNSEEN 2] First unseen\r\n")
    assert lines[i - 1] == b"* 0 RECENT\r\n", lines
    r.cmd("SELECT INBOX")
    r.cmd("STORE 2:3 +FLAGS.SILENT (\\Seen)")
    lines, _ = r.cmd("SELECT INBOX")
    assert not [ln for ln in lines if b"UNSEEN" in ln], lines
    r.cmd("STORE 3 -FLAGS.SILENT (\\Seen)")
    r.cmd("UNSELECT")
    r.cmd("ENABLE IMAP4rev2")
    lines, _ = r.cmd("SELECT INBOX")
    assert not [ln for ln in lines if b"UNSEEN" in ln], lines


def test_number64_in_larger_smaller_and_partials(srv):
    """RFC 9051 made LARGER/SMALLER and the FETCH partial's numbers
    number64: values past 2^32 are valid (nothing is that large, so
    LARGER matches nothing, SMALLER everything, and a partial reaches the
    end). They used to be BAD, which a client sending "up to the end" as
    a large count could not tell from a real error."""
    r = Raw(srv).login()
    append_raw(r, b"Subject: s\r\n\r\nbody\r\n")
    r.cmd("ENABLE IMAP4rev2")
    r.cmd("SELECT INBOX")
    lines, t = r.cmd("SEARCH LARGER 4294967296")
    assert lines == [b'* ESEARCH (TAG "t5")\r\n'] and b"t5 OK" in t, (lines, t)
    lines, t = r.cmd("SEARCH SMALLER 9223372036854775807")
    assert lines == [b'* ESEARCH (TAG "t6") ALL 1\r\n'], lines
    lines, t = r.cmd("FETCH 1 BODY.PEEK[TEXT]<2.9223372036854775807>")
    assert b"".join(lines) == b"* 1 FETCH (BODY[TEXT]<2> {4}\r\ndy\r\n)\r\n", lines
    lines, t = r.cmd("FETCH 1 BINARY.PEEK[1]<4294967296.10>")
    assert b"".join(lines) == b"* 1 FETCH (BINARY[1]<4294967296> {0}\r\n)\r\n", lines
    lines, t = r.cmd("SEARCH LARGER 9223372036854775808")
    assert lines == [] and b"t9 BAD" in t, (lines, t)


def test_impossible_dates_are_bad(srv):
    """A date that does not exist (31-Feb, 29-Feb of a common year, a zone
    with 99 minutes) is BAD in APPEND and SEARCH. timegm() used to roll
    it over: APPEND "31-Feb-2020 ..." stored an INTERNALDATE of 2 March,
    a date the client never sent, and SEARCH SINCE 31-Feb-2020 searched
    from 2 March."""
    r = Raw(srv).login()
    for date in ("31-Feb-2020 10:00:00 +0100", "29-Feb-2021 10:00:00 +0000",
                 "01-Jan-2020 10:00:00 +0199"):
        r.send(b'a APPEND INBOX "%s" {3+}\r\nabc\r\n' % date.encode())
        lines, t = r.until("a")
        assert lines == [] and t.startswith(b"a BAD "), (date, lines, t)
    r.send(b'a APPEND INBOX "29-Feb-2020 10:00:00 +0100" {3+}\r\nabc\r\n')
    _, t = r.until("a")
    assert t.startswith(b"a OK "), t
    r.cmd("SELECT INBOX")
    lines, _ = r.cmd("FETCH 1 INTERNALDATE")
    assert lines == [b'* 1 FETCH (INTERNALDATE "29-Feb-2020 09:00:00 +0000")\r\n'], lines
    for key in ("SINCE 31-Feb-2020", "BEFORE 31-Apr-2020", "SENTON 29-Feb-2019"):
        lines, t = r.cmd("SEARCH " + key)
        assert lines == [] and b" BAD " in t, (key, lines, t)
    lines, _ = r.cmd("SEARCH ON 29-Feb-2020")
    assert lines == [b"* SEARCH 1\r\n"], lines


def test_status_appendlimit(imapsrv):
    """STATUS m (APPENDLIMIT) and LIST ... RETURN (STATUS (APPENDLIMIT))
    answer the limit that CAPABILITY's APPENDLIMIT=n names (RFC 7889 3:
    the extension's STATUS item); they used to be BAD."""
    srv = imapsrv(config="[limits]\nmessage_size_max = 1m\n")
    r = Raw(srv).login()
    lines, _ = r.cmd("CAPABILITY")
    assert b" APPENDLIMIT=1048576" in lines[0], lines
    lines, t = r.cmd("STATUS INBOX (MESSAGES APPENDLIMIT)")
    assert lines == [b'* STATUS "INBOX" (MESSAGES 0 APPENDLIMIT 1048576)\r\n'], (lines, t)
    lines, t = r.cmd('LIST "" "INBOX" RETURN (STATUS (APPENDLIMIT))')
    assert lines == [b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n',
                     b'* STATUS "INBOX" (APPENDLIMIT 1048576)\r\n'], (lines, t)


def test_status_highestmodseq_enables_condstore(srv):
    """STATUS (HIGHESTMODSEQ) is a CONDSTORE enabling command (RFC 7162
    3.1), as LIST ... RETURN (STATUS (HIGHESTMODSEQ)) is: afterwards the
    flag changes another session makes reach this one with MODSEQ. It used
    to leave CONDSTORE off, so the client, now CONDSTORE-aware, got
    FETCH responses without the MODSEQ it must track."""
    b = Raw(srv).login()
    append_raw(b, b"Subject: s\r\n\r\nbody\r\n")
    b.cmd("SELECT INBOX")
    for kw, cmd in (("k1", "STATUS INBOX (HIGHESTMODSEQ)"),
                    ("k2", 'LIST "" "INBOX" RETURN (STATUS (HIGHESTMODSEQ))')):
        a = Raw(srv).login()
        a.cmd("SELECT INBOX")
        a.cmd(cmd)
        b.cmd(f"STORE 1 FLAGS.SILENT ({kw})")
        now, _ = b.cmd("FETCH 1 MODSEQ")
        m = re.search(rb"MODSEQ \((\d+)\)", now[0]).group(1)
        lines, _ = a.cmd("NOOP")
        assert lines == [b"* 1 FETCH (UID 1 FLAGS (%s) MODSEQ (%s))\r\n" % (kw.encode(), m)], \
            (cmd, lines)
        a.cmd("LOGOUT")


def test_extra_arguments_are_bad(imapsrv):
    """A command given more arguments than its syntax has is BAD and does
    nothing. "DELETE a b" (a client that forgot to quote "a b") used to
    delete the mailbox "a" with its messages, "CREATE a b" created "a",
    "RENAME a b c" renamed a to b, and "IDLE x" entered IDLE."""
    srv = imapsrv(config="[limits]\nmax_bad_commands = 100\n")
    r = Raw(srv).login()
    for box in ("a", "a b", "c"):
        r.cmd(f'CREATE "{box}"')
    append_raw(r, b"Subject: keep\r\n\r\nx\r\n", "a")
    for cmd in ("DELETE a b", "CREATE d e", "RENAME a b c", "SUBSCRIBE a b", "UNSUBSCRIBE a b",
                "GETQUOTAROOT a b", "CAPABILITY x", "NAMESPACE x", "IDLE x", "LOGOUT x",
                "DELETE", "RENAME a"):
        lines, t = r.cmd(cmd)
        assert lines == [] and re.match(rb"t\d+ BAD ", t), (cmd, lines, t)
    lines, _ = r.cmd('LIST "" "*"')
    assert sorted(lines) == sorted([b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n',
                                    b'* LIST (\\HasNoChildren) "/" "a"\r\n',
                                    b'* LIST (\\HasNoChildren) "/" "a b"\r\n',
                                    b'* LIST (\\HasNoChildren) "/" "c"\r\n'] + AUTO_LIST), lines
    lines, _ = r.cmd('LSUB "" "*"')
    assert sorted(lines) == sorted(AUTO_LSUB), lines
    lines, _ = r.cmd("STATUS a (MESSAGES)")
    assert lines == [b'* STATUS "a" (MESSAGES 1)\r\n'], lines
    lines, _ = r.cmd('STATUS "a b" (MESSAGES)')
    assert lines == [b'* STATUS "a b" (MESSAGES 0)\r\n'], lines


def test_condstore_fetch_responses_carry_uid(srv):
    """Once CONDSTORE is on, the FETCH responses a STORE causes, and those
    of a FETCH that set \\Seen, carry UID and MODSEQ (RFC 7162 3.1: "both
    UID and mod-sequence data"). STORE (not UID STORE) answered without
    UID, and a BODY[] fetch that set \\Seen without UID or MODSEQ, so a
    client could not file the new MODSEQ under the message's UID."""
    r = Raw(srv).login()
    for i in range(2):
        append_raw(r, f"Subject: m{i}\r\n\r\nx\r\n".encode())
    r.cmd("SELECT INBOX")
    lines, _ = r.cmd("STORE 2 +FLAGS (\\Flagged)")
    assert lines == [b"* 2 FETCH (FLAGS (\\Flagged))\r\n"], lines  # CONDSTORE off
    r.cmd("FETCH 1 (MODSEQ)")  # a CONDSTORE enabling command
    lines, _ = r.cmd("STORE 2 -FLAGS (\\Flagged)")
    m = re.search(rb"MODSEQ \((\d+)\)", r.cmd("FETCH 2 MODSEQ")[0][0]).group(1)
    assert lines == [b"* 2 FETCH (UID 2 FLAGS () MODSEQ (%s))\r\n" % m], lines
    lines, _ = r.cmd("FETCH 1 BODY[TEXT]")
    m = re.search(rb"MODSEQ \((\d+)\)", r.cmd("FETCH 1 MODSEQ")[0][0]).group(1)
    assert b"".join(lines) == (b"* 1 FETCH (BODY[TEXT] {3}\r\nx\r\n FLAGS (\\Seen) UID 1 "
                               b"MODSEQ (%s))\r\n" % m), lines
    lines, _ = r.cmd("FETCH 1 BODY[TEXT]")  # \Seen already set: nothing added
    assert b"".join(lines) == b"* 1 FETCH (BODY[TEXT] {3}\r\nx\r\n)\r\n", lines


def test_store_recent_is_refused(srv):
    """STORE of \\Recent is BAD, as APPEND's already was: "\\Recent ... can
    not be altered by the client" (RFC 3501 2.3.2; IMAP4rev2 has no such
    flag). It used to be dropped silently from the list, so STORE 1
    FLAGS (\\Recent) answered OK and cleared every other flag."""
    r = Raw(srv).login()
    append_raw(r, b"Subject: s\r\n\r\nx\r\n")
    r.cmd("SELECT INBOX")
    r.cmd("STORE 1 +FLAGS (\\Seen)")
    for cmd in ("STORE 1 FLAGS (\\Recent)", "STORE 1 +FLAGS (\\Flagged \\RECENT)",
                "STORE 1 -FLAGS (\\Recent)", "UID STORE 1 FLAGS.SILENT (\\recent)"):
        lines, t = r.cmd(cmd)
        assert lines == [] and re.match(rb"t\d+ BAD \\Recent cannot be changed", t), (cmd, lines, t)
    lines, _ = r.cmd("FETCH 1 FLAGS")
    assert lines == [b"* 1 FETCH (FLAGS (\\Seen))\r\n"], lines


def test_append_refuses_keywords_that_are_not_atoms(srv):
    """APPEND checks keywords as STORE does: "%", "*" and "]" make no atom
    (RFC 3501 flag-keyword), so APPEND (a%b) is BAD. They used to be
    stored, and the server then sent "* FLAGS (... a]b)" and "FETCH (FLAGS
    (a%b))", responses a client parser rejects."""
    r = Raw(srv).login()
    for kw in (b"a%b", b"a*b", b"a]b"):
        r.send(b"a APPEND INBOX (\\Seen " + kw + b") {3+}\r\nabc\r\n")
        lines, t = r.until("a")
        assert lines == [] and t.startswith(b"a BAD "), (kw, lines, t)
    append_raw(r, b"Subject: s\r\n\r\nx\r\n")
    lines, _ = r.cmd("SELECT INBOX")
    assert lines[0] == b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n", lines
    assert b"* 1 EXISTS\r\n" in lines, lines


def test_open_bracket_is_an_atom_char(srv):
    """"[" is an ATOM-CHAR (RFC 3501/9051 atom-specials do not include
    it): a keyword foo[bar or a mailbox a[b sent as an atom is taken. The
    tokenizer used to start a bracketed section at any "[", so such a
    command was BAD (and its LITERAL+ data, before the skip fix, was read
    as commands). Only BODY[, BODY.PEEK[, BINARY[, BINARY.PEEK[ and
    BINARY.SIZE[ open a section that may hold spaces."""
    r = Raw(srv).login()
    _, t = r.cmd("CREATE a[b")
    assert b" OK " in t, t
    r.send(b"a APPEND a[b (foo[bar \\Seen) {3+}\r\nabc\r\n")
    _, t = r.until("a")
    assert t.startswith(b"a OK "), t
    r.cmd("SELECT a[b")
    lines, _ = r.cmd("STORE 1 +FLAGS (x[1)")
    assert lines == [b"* 1 FETCH (FLAGS (\\Seen foo[bar x[1))\r\n"], lines
    lines, _ = r.cmd("SEARCH KEYWORD foo[bar")
    assert lines == [b"* SEARCH 1\r\n"], lines
    lines, _ = r.cmd('LIST "" a[*')
    assert lines == [b'* LIST (\\HasNoChildren) "/" "a[b"\r\n'], lines
    lines, _ = r.cmd("FETCH 1 (FLAGS BODY.PEEK[HEADER.FIELDS (X Y)])")
    assert lines[0].startswith(b"* 1 FETCH (FLAGS (\\Seen foo[bar x[1) BODY[HEADER.FIELDS (X Y)]"), lines


def test_dates_before_1970(srv):
    """Dates before 1970 are dates: SEARCH SINCE 31-Dec-1969 (day -1, the
    value the day parser also used for "invalid") and years before 1900
    were BAD, a Date: header before 1970 counted as unparsable, and an
    APPEND date-time before the epoch (01-Jan-1970 00:00:00 +0100, which
    migration tools copy from servers that store 0) was BAD."""
    r = Raw(srv).login()
    msg = b"Date: Mon, 1 Jan 1900 00:00:00 +0000\r\nSubject: old\r\n\r\nx\r\n"
    r.send(b'a APPEND INBOX "01-Jan-1970 00:00:00 +0100" {%d+}\r\n' % len(msg) + msg + b"\r\n")
    _, t = r.until("a")
    assert t.startswith(b"a OK "), t
    append_raw(r, b"Date: Tue, 1 Jul 2003 10:52:37 +0200\r\nSubject: new\r\n\r\nx\r\n")
    r.cmd("SELECT INBOX")
    lines, _ = r.cmd("FETCH 1 INTERNALDATE")
    assert lines == [b'* 1 FETCH (INTERNALDATE "31-Dec-1969 23:00:00 +0000")\r\n'], lines
    for key, want in (("ON 31-Dec-1969", b" 1"), ("SINCE 31-Dec-1969", b" 1 2"),
                      ("BEFORE 1-Jan-1970", b" 1"), ("SENTON 1-Jan-1900", b" 1"),
                      ("SENTBEFORE 1-Jan-1970", b" 1"), ("SENTSINCE 2-Jan-1900", b" 2"),
                      ("BEFORE 1-Jan-1899", b"")):
        lines, t = r.cmd("SEARCH " + key)
        assert lines == [b"* SEARCH" + want + b"\r\n"], (key, lines, t)


def test_shutdown_right_after_delete_finishes_the_removal(imapsrv):
    """DELETE answers once the folder list is durable; the folder's files
    are unlinked afterwards, one io_uring op at a time. A shutdown right
    after the reply used to exit with that chain in flight: files left
    behind for fsck and, under LeakSanitizer, a leak report. The loop now
    holds its exit until the chain ends (loop_hold). 60 messages over the
    append buffer (256 KiB) make 60 segment files: a chain of 60 unlinks
    that SIGTERM, sent right after the reply, lands in the middle of."""
    for _ in range(2):
        srv = imapsrv()
        r = Raw(srv).login()
        r.cmd("CREATE Doomed")
        big = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 300
        r.send(b"".join(b"a%d APPEND Doomed {%d+}\r\n" % (i, len(big)) + big + b"\r\n"
                        for i in range(60)))
        for i in range(60):
            _, t = r.until(f"a{i}", timeout=60)
            assert b" OK " in t, t
        user_dir = os.path.join(srv.data_dir, "mail", "alice@example.com")
        before = set(os.listdir(user_dir))
        _, t = r.cmd("DELETE Doomed")
        assert b" OK " in t, t
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.wait_exit(30) == 0, srv.log()[-3000:]
        after = set(os.listdir(user_dir))
        # the folder's directory (fN) is gone, not left to fsck
        gone = {d for d in before - after if re.fullmatch(r"f\d+", d)}
        assert len(gone) == 1 and not after - before, (before, after)
