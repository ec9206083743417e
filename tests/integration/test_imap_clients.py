"""The IMAP clients our users run, against the real binary.

1. Real programs from Debian's packages (scripts/deps.sh test installs
   them), driven non-interactively on 993 (implicit TLS, verified against
   the server's certificate) and on 143 with STARTTLS (the server refuses a
   plaintext login there, `plaintext_auth = no`, so a run that logs in
   proves the upgrade): offlineimap3, fetchmail (IMAP), getmail6,
   imapfilter and neomutt. mbsync, curl and imaplib are in test_imap.py.
   A test skips only when its program is not installed.
2. Raw sockets replaying the command sequences of the big GUI clients
   (Thunderbird, Apple Mail / iOS, Outlook) as their protocol logs show
   them: pipelined, split into many small writes, over TLS. Every response
   is parsed against RFC 9051's grammar (imap_grammar.py) and the mailbox
   state is checked afterwards.
"""
import base64
import collections
import email
import glob
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import HOST
from imap_grammar import GrammarError, Responses, check
from test_imap import AUTO, USERS, deliver, imap, imapsrv, tls_context  # noqa: F401 (fixture)

ALICE = "alice@example.com"
NO_PLAIN = "[limits]\nplaintext_auth = no\n"  # 143 logins need STARTTLS


def need(tool):
    if not shutil.which(tool):
        pytest.skip(f"{tool} is not installed (scripts/deps.sh test installs it)")


def cert(srv):
    return os.path.join(srv.data_dir, "tls", "cert.pem")


def run(args, env=None, timeout=60, ok=(0,), python=False, **kw):
    """Runs a client to completion. python: the client is a Python program;
    one that hangs gets SIGSEGV at timeout with PYTHONFAULTHANDLER set, so
    the failure shows every thread's stack (how the offlineimap STARTTLS
    hang was found to be the client's)."""
    if python:
        env = dict(env or os.environ, PYTHONFAULTHANDLER="1")
        args = ["timeout", "-s", "SEGV", str(timeout)] + list(args)
        timeout += 10
    out = subprocess.run(args, capture_output=True, timeout=timeout, env=env, **kw)
    assert out.returncode in ok, (out.returncode, out.stdout[-4000:], out.stderr[-6000:])
    return out


def tool_env(home):
    env = dict(os.environ)
    env["HOME"] = str(home)
    env["LC_ALL"] = "C.UTF-8"
    return env


def adm(srv):
    """The test's own imaplib session (993: 143 may refuse plaintext logins)."""
    return imap(srv, tls="implicit")


def server_state(srv, folders=None):
    """{folder: [(subject, sorted flags), ...]} read back with imaplib."""
    c = adm(srv)
    if folders is None:
        typ, data = c.list()
        folders = []
        for l in data:
            flags = l.split(b")", 1)[0]
            if b"\\Noselect" in flags or b"\\NonExistent" in flags:
                continue
            folders.append(l.rsplit(b' "/" ', 1)[1].strip(b'"').decode())
    out = {}
    for f in folders:
        typ, data = c.select(f'"{f}"', readonly=True)
        assert typ == "OK", (f, data)
        msgs = []
        if int(data[0]) > 0:
            typ, data = c.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            assert typ == "OK", data
            for item in data:
                if not isinstance(item, tuple):
                    continue
                flags = item[0].split(b"FLAGS (", 1)[1].split(b")", 1)[0].decode().split()
                subj = email.message_from_bytes(item[1])["Subject"]
                msgs.append((subj, tuple(sorted(f for f in flags if f != "\\Recent"))))
        out[f] = sorted(msgs)
    c.logout()
    return out


def subjects(state, folder):
    return collections.Counter(s for s, _ in state.get(folder, []))


def flags_of(state, folder, subject):
    got = [f for s, f in state[folder] if s == subject]
    assert len(got) == 1, (folder, subject, state[folder])
    return set(got[0])


def make_folders(srv, spec):
    """spec: {folder: [subject, ...]}; APPENDs each message with imaplib.
    INBOX and the auto folders (test_imap.AUTO) exist already."""
    c = adm(srv)
    for folder, subs in spec.items():
        if folder != "INBOX" and folder not in AUTO:
            typ, data = c.create(f'"{folder}"')
            assert typ == "OK", data
        for s in subs:
            msg = (f"From: Sender <sender@remote.example>\r\nTo: {ALICE}\r\nSubject: {s}\r\n"
                   f"Message-ID: <{s}@remote.example>\r\n"
                   f"Date: Tue, 1 Jul 2003 10:52:37 +0200\r\n\r\nbody of {s}\r\n").encode()
            typ, data = c.append(f'"{folder}"', None, None, msg)
            assert typ == "OK", data
    c.logout()


MODES = [pytest.param("implicit", id="993"), pytest.param("starttls", id="143-starttls")]


def start(imapsrv, mode):
    return imapsrv(config=NO_PLAIN if mode == "starttls" else None)


# ---- offlineimap3 ----------------------------------------------------------------------


def maildir_files(root, folder):
    d = os.path.join(root, folder)
    return sorted(glob.glob(os.path.join(d, "cur", "*")) + glob.glob(os.path.join(d, "new", "*")))


def maildir_subjects(root, folder):
    out = collections.Counter()
    for f in maildir_files(root, folder):
        with open(f, "rb") as fh:
            out[email.message_from_binary_file(fh)["Subject"]] += 1
    return out


def maildir_file(root, folder, subject):
    for f in maildir_files(root, folder):
        with open(f, "rb") as fh:
            if email.message_from_binary_file(fh)["Subject"] == subject:
                return f
    raise AssertionError(f"{subject} not in {folder}")


def write_maildir_msg(root, folder, name, subject, info=""):
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(root, folder, sub), exist_ok=True)
    where = "cur" if info else "new"
    path = os.path.join(root, folder, where, name + (f":2,{info}" if info else ""))
    with open(path, "wb") as f:
        f.write(f"From: Me <{ALICE}>\r\nTo: someone@remote.example\r\nSubject: {subject}\r\n"
                f"Message-ID: <{subject}@example.com>\r\n"
                f"Date: Wed, 2 Jul 2003 10:00:00 +0200\r\n\r\nwritten locally\r\n".encode())


@pytest.mark.parametrize("mode", MODES)
def test_offlineimap_two_way_sync(imapsrv, tmp_path, mode):
    need("offlineimap")
    srv = start(imapsrv, mode)
    for i in range(3):
        deliver(srv, ALICE, subject=f"in{i}")
    make_folders(srv, {"Work": ["work0", "work1"], "Lists/Debian": ["deb0", "deb1"]})
    local = tmp_path / "mail"
    local.mkdir()
    port = srv.port(993 if mode == "implicit" else 143)
    tls = (f"ssl = yes\nsslcacertfile = {cert(srv)}\n" if mode == "implicit"
           else "ssl = no\nstarttls = yes\n")
    rc = tmp_path / "offlineimaprc"
    rc.write_text(f"""[general]
accounts = a
metadata = {tmp_path}/meta
ui = basic

[Account a]
localrepository = L
remoterepository = R

[Repository L]
type = Maildir
localfolders = {local}

[Repository R]
type = IMAP
remotehost = localhost
remoteport = {port}
remoteuser = {ALICE}
remotepass = {USERS[ALICE]}
{tls}""")
    env = tool_env(tmp_path)
    if mode == "starttls":
        # offlineimap's imaplib2 reads and writes one SSL object from two
        # threads. Under TLS 1.3 the server's NewSessionTicket arrives while
        # the writer sends the first command after STARTTLS, and about one
        # run in five the command never leaves the client (seen with a
        # Python stack dump: the writer idle, the reader in SSL_read, the
        # socket queues empty on both ends). TLS 1.2 has no post-handshake
        # message: the client is held to it here; 993 runs TLS 1.3.
        conf = tmp_path / "openssl-tls12.cnf"
        conf.write_text("openssl_conf = c\n[c]\nssl_conf = s\n[s]\nsystem_default = d\n"
                        "[d]\nMaxProtocol = TLSv1.2\n")
        env["OPENSSL_CONF"] = str(conf)

    def sync():
        out = run(["offlineimap", "-c", str(rc), "-o", "-u", "basic"], env=env, timeout=120,
                  python=True)
        text = (out.stdout + out.stderr).decode(errors="replace")
        assert "ERROR" not in text and "Traceback" not in text, text[-4000:]
        return text

    want_local = {"INBOX": {"in0", "in1", "in2"}, "Work": {"work0", "work1"},
                  "Lists.Debian": {"deb0", "deb1"}}
    for _ in range(2):  # the second sync has nothing to do
        sync()
        for folder, subs in want_local.items():
            assert maildir_subjects(local, folder) == collections.Counter(subs), folder
        # the account's auto folders come down too, empty
        assert sorted(os.listdir(local)) == sorted(set(want_local) | set(AUTO)), \
            os.listdir(local)
        for folder in AUTO:
            assert maildir_files(local, folder) == [], folder
    before = server_state(srv)
    assert subjects(before, "INBOX") == collections.Counter({"in0", "in1", "in2"})

    # Changes on both sides.
    f = maildir_file(local, "INBOX", "in0")  # local: \Seen \Flagged
    base = os.path.basename(f).split(":2,")[0]
    os.rename(f, os.path.join(local, "INBOX", "cur", base + ":2,FS"))
    os.remove(maildir_file(local, "Work", "work1"))  # local: deletion
    write_maildir_msg(local, "INBOX", "1.local.host", "local-new")  # local: new message
    write_maildir_msg(local, "Local", "2.local.host", "local-folder", info="S")  # new folder
    c = adm(srv)
    c.select("INBOX")
    typ, data = c.search(None, "SUBJECT", "in1")
    assert c.store(data[0].decode(), "+FLAGS", "(\\Flagged)")[0] == "OK"  # remote: flag
    c.select('"Lists/Debian"')
    typ, data = c.search(None, "SUBJECT", "deb0")
    c.store(data[0].decode(), "+FLAGS", "(\\Deleted)")
    assert c.expunge()[0] == "OK"  # remote: deletion
    assert c.create("Remote")[0] == "OK"  # remote: new folder
    assert c.append("Remote", "(\\Seen)", None,
                    b"From: x@remote.example\r\nSubject: remote-folder\r\n\r\nr\r\n")[0] == "OK"
    c.logout()
    deliver(srv, ALICE, subject="remote-new")  # remote: new message

    for _ in range(2):  # the third sync moves everything; a fourth finds nothing
        sync()
        st = server_state(srv)
        assert subjects(st, "INBOX") == collections.Counter(
            {"in0", "in1", "in2", "local-new", "remote-new"}), st["INBOX"]
        assert flags_of(st, "INBOX", "in0") == {"\\Seen", "\\Flagged"}
        assert flags_of(st, "INBOX", "in1") == {"\\Flagged"}
        assert flags_of(st, "INBOX", "in2") == set()
        assert subjects(st, "Work") == collections.Counter({"work0"})
        assert subjects(st, "Lists/Debian") == collections.Counter({"deb1"})
        assert subjects(st, "Local") == collections.Counter({"local-folder"})
        assert flags_of(st, "Local", "local-folder") == {"\\Seen"}
        assert subjects(st, "Remote") == collections.Counter({"remote-folder"})
        assert maildir_subjects(local, "INBOX") == subjects(st, "INBOX")
        assert maildir_file(local, "INBOX", "in1").endswith(":2,F")
        assert maildir_file(local, "INBOX", "in0").endswith(":2,FS")
        assert maildir_subjects(local, "Work") == collections.Counter({"work0"})
        assert maildir_subjects(local, "Lists.Debian") == collections.Counter({"deb1"})
        assert maildir_subjects(local, "Remote") == collections.Counter({"remote-folder"})
        assert maildir_file(local, "Remote", "remote-folder").endswith(":2,S")


def test_mbsync_starttls(imapsrv, tmp_path):
    """mbsync (isync, OpenSSL) on 143 with SSLType STARTTLS, both ways;
    test_imap.py runs it on 993."""
    need("mbsync")
    srv = imapsrv(config=NO_PLAIN)
    for i in range(2):
        deliver(srv, ALICE, subject=f"mb{i}")
    make_folders(srv, {"Work": ["w0"]})
    local = tmp_path / "Maildir"
    local.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(f"""IMAPAccount a
Host localhost
Port {srv.port(143)}
User {ALICE}
Pass "{USERS[ALICE]}"
SSLType STARTTLS
CertificateFile {cert(srv)}

IMAPStore remote
Account a

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel c
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
""")

    def sync():
        run(["mbsync", "-c", str(rc), "-a"], env=tool_env(tmp_path))

    sync()
    assert maildir_subjects(local, "INBOX") == collections.Counter({"mb0", "mb1"})
    assert maildir_subjects(local, "Work") == collections.Counter({"w0"})
    # Patterns *: the account's auto folders too, empty
    assert sorted(os.listdir(local)) == sorted({"INBOX", "Work"} | set(AUTO)), os.listdir(local)
    for folder in AUTO:
        assert maildir_files(local, folder) == [], folder
    write_maildir_msg(local, "Work", "1.local.host", "from-mbsync", info="S")
    os.remove(maildir_file(local, "INBOX", "mb0"))
    sync()
    st = server_state(srv, ["INBOX", "Work"])
    assert subjects(st, "INBOX") == collections.Counter({"mb1"})
    assert subjects(st, "Work") == collections.Counter({"w0", "from-mbsync"})
    assert flags_of(st, "Work", "from-mbsync") == {"\\Seen"}


# ---- fetchmail (IMAP) ------------------------------------------------------------------


def fetchmailrc(srv, tmp_path, mode, extra=""):
    out = tmp_path / "fetched"
    out.mkdir(exist_ok=True)
    port = srv.port(993 if mode == "implicit" else 143)
    tls = "ssl" if mode == "implicit" else "sslproto tls1.2+"  # the latter: STARTTLS required
    rc = tmp_path / "fetchmailrc"
    rc.write_text(f"""set no bouncemail
set no syslog
poll localhost protocol IMAP port {port} auth password
  user "{ALICE}" password "{USERS[ALICE]}" is "alice" here
  {tls} sslcertfile {cert(srv)} sslcertck
  mda "/bin/sh -c 'cat > {out}/msg.$$'"
  {extra}
""")
    rc.chmod(0o600)
    return rc, out


def fetched(out):
    got = collections.Counter()
    for f in glob.glob(str(out / "msg.*")):
        with open(f, "rb") as fh:
            got[email.message_from_binary_file(fh)["Subject"]] += 1
    return got


def fetchmail_cmd(tmp_path, rc, *args):
    """--pidfile in tmp_path: as root, fetchmail's lock is
    /var/run/fetchmail.pid whatever FETCHMAILHOME says, so two runs at once
    (test files run in parallel) would refuse each other."""
    return ["fetchmail", "--pidfile", str(tmp_path / "fetchmail.pid"), "-f", str(rc), *args]


def fetchmail_env(tmp_path):
    env = tool_env(tmp_path)
    env["FETCHMAILHOME"] = str(tmp_path)
    return env


@pytest.mark.parametrize("mode", MODES)
def test_fetchmail_imap_keep_then_flush(imapsrv, tmp_path, mode):
    need("fetchmail")
    srv = start(imapsrv, mode)
    for i in range(3):
        deliver(srv, ALICE, subject=f"fm{i}")
    env = fetchmail_env(tmp_path)
    rc, out = fetchmailrc(srv, tmp_path, mode)
    # fetch all, keep: everything comes, the server keeps it, marked \Seen
    r = run(fetchmail_cmd(tmp_path, rc, "-v", "--all", "--keep"), env=env)
    assert fetched(out) == collections.Counter({"fm0", "fm1", "fm2"}), r.stdout
    st = server_state(srv, ["INBOX"])
    assert subjects(st, "INBOX") == collections.Counter({"fm0", "fm1", "fm2"})
    assert all(set(f) == {"\\Seen"} for _, f in st["INBOX"]), st
    # a plain run fetches only unseen mail: none (exit 1 is "no mail")
    run(fetchmail_cmd(tmp_path, rc, "--keep"), env=env, ok=(1,))
    assert sum(fetched(out).values()) == 3
    deliver(srv, ALICE, subject="fm3")
    # no keep: the new one comes, and fetch-all flushes everything from the server
    run(fetchmail_cmd(tmp_path, rc, "--all", "--nokeep"), env=env)
    assert fetched(out) == collections.Counter({"fm0": 2, "fm1": 2, "fm2": 2, "fm3": 1})
    assert server_state(srv, ["INBOX"]) == {"INBOX": []}


@pytest.mark.parametrize("mode", MODES)
def test_fetchmail_idle_sees_later_delivery(imapsrv, tmp_path, mode):
    need("fetchmail")
    srv = start(imapsrv, mode)
    deliver(srv, ALICE, subject="before")
    env = fetchmail_env(tmp_path)
    rc, out = fetchmailrc(srv, tmp_path, mode)
    log = open(tmp_path / "fetchmail.log", "wb")
    p = subprocess.Popen(fetchmail_cmd(tmp_path, rc, "-v", "--idle", "--nokeep"),
                         stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        def wait_for(pred, what, timeout=20):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if pred():
                    return
                assert p.poll() is None, (p.returncode, (tmp_path / "fetchmail.log").read_text())
                time.sleep(0.1)
            raise AssertionError(f"{what}: {(tmp_path / 'fetchmail.log').read_text()[-3000:]}")
        wait_for(lambda: fetched(out) == collections.Counter({"before"}), "first fetch")
        wait_for(lambda: b"IDLE\n" in (tmp_path / "fetchmail.log").read_bytes()
                 and b"+ idling" in (tmp_path / "fetchmail.log").read_bytes(), "IDLE")
        deliver(srv, ALICE, subject="during-idle")
        wait_for(lambda: fetched(out) == collections.Counter({"before", "during-idle"}),
                 "the message delivered during IDLE")
        wait_for(lambda: server_state(srv, ["INBOX"]) == {"INBOX": []}, "flushed")
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()


# ---- getmail6 --------------------------------------------------------------------------


GETMAIL_MODES = [pytest.param("implicit", id="993"), pytest.param("plain", id="143")]


@pytest.mark.parametrize("mode", GETMAIL_MODES)
def test_getmail_imap_retriever(imapsrv, tmp_path, mode):
    """getmail6 has no STARTTLS for IMAP: 993, and 143 in plaintext."""
    need("getmail")
    srv = imapsrv()
    for i in range(2):
        deliver(srv, ALICE, subject=f"gm{i}")
    make_folders(srv, {"Work": ["gw0"]})
    out = tmp_path / "got"
    out.mkdir()
    gmdir = tmp_path / "getmail"
    gmdir.mkdir()
    if mode == "implicit":
        retr = (f"type = SimpleIMAPSSLRetriever\nport = {srv.port(993)}\n"
                f"ca_certs = {cert(srv)}\n")
    else:
        retr = f"type = SimpleIMAPRetriever\nport = {srv.port(143)}\n"

    def rc(delete, move=""):
        p = gmdir / "rc"
        p.write_text(f"""[retriever]
{retr}server = localhost
username = {ALICE}
password = {USERS[ALICE]}
mailboxes = ("INBOX", "Work")
{move}
[destination]
type = MDA_external
path = /bin/sh
arguments = ("-c", "cat > {out}/msg.$$$$")
allow_root_commands = true

[options]
verbose = 1
read_all = false
delete = {"true" if delete else "false"}
""")
        return p

    def getmail(delete=False, move=""):
        r = run(["getmail", "--getmaildir", str(gmdir), "-r", str(rc(delete, move))],
                env=tool_env(tmp_path), python=True)
        return r.stdout.decode(errors="replace")

    getmail()
    assert fetched(out) == collections.Counter({"gm0", "gm1", "gw0"})
    # read_all = false: what was retrieved is remembered by UID, not fetched again
    getmail()
    assert sum(fetched(out).values()) == 3
    st = server_state(srv, ["INBOX", "Work"])
    assert all(f == () for _, f in st["INBOX"] + st["Work"]), st  # BODY.PEEK: no \Seen
    deliver(srv, ALICE, subject="gm2")
    getmail()
    assert fetched(out) == collections.Counter({"gm0", "gm1", "gw0", "gm2"})
    # delete, with the message moved first (getmail's move_on_delete: COPY)
    deliver(srv, ALICE, subject="gm3")
    getmail(delete=True, move="move_on_delete = Archive")
    st = server_state(srv, ["INBOX", "Work", "Archive"])
    assert st["INBOX"] == [] and st["Work"] == [], st
    assert subjects(st, "Archive") == collections.Counter({"gm0", "gm1", "gm2", "gm3", "gw0"})
    assert fetched(out)["gm3"] == 1


# ---- imapfilter ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_imapfilter_search_flag_move(imapsrv, tmp_path, mode):
    need("imapfilter")
    srv = start(imapsrv, mode)
    lst = (b"From: announce@lists.debian.org\r\nTo: %s\r\nSubject: %s\r\n"
           b"List-Id: <debian-announce.lists.debian.org>\r\n\r\nlist mail\r\n")
    for i in range(2):
        deliver(srv, ALICE, raw=lst % (ALICE.encode(), b"deb%d" % i))
    deliver(srv, ALICE, subject="URGENT: call me")
    deliver(srv, ALICE, subject="plain", body=(b"x" * 70 + b"\r\n") * 70)
    deliver(srv, ALICE, subject="old news")
    c = adm(srv)
    c.select("INBOX")
    typ, data = c.search(None, "SUBJECT", '"old news"')
    c.store(data[0].decode(), "+FLAGS", "(\\Seen)")
    c.logout()
    port = srv.port(993 if mode == "implicit" else 143)
    ssl = "ssl = 'auto'," if mode == "implicit" else ""  # no ssl on 143: STARTTLS
    cfg = tmp_path / "config.lua"
    cfg.write_text(f"""
options.timeout = 30
options.info = false
options.create = true
acc = IMAP {{
  server = 'localhost',
  port = {port},
  username = '{ALICE}',
  password = '{USERS[ALICE]}',
  {ssl}
}}
local urgent = acc.INBOX:contain_subject('urgent')
urgent:mark_flagged()
local lists = acc.INBOX:contain_field('List-Id', 'lists.debian.org')
local fetched = acc.INBOX:match_header('List-Id:.*debian-announce')
assert(#fetched == #lists)
lists:move_messages(acc['Lists/Debian'])
local read_small = acc.INBOX:is_seen() * acc.INBOX:is_smaller(1000)
read_small:move_messages(acc['Archive'])
local big = acc.INBOX:is_larger(4000) + acc.INBOX:contain_body('never there')
big:add_flags({{'$Big', '\\\\Answered'}})
local exist, recent, unseen, uidnext = acc.INBOX:check_status()
print('counts', #urgent, #lists, #read_small, #big)
print('status', exist, unseen, uidnext)
""")
    r = run(["imapfilter", "-c", str(cfg), "-t", cert(srv)], env=tool_env(tmp_path))
    assert b"counts\t1\t2\t1\t1" in r.stdout, (r.stdout, r.stderr)
    # STATUS (MESSAGES RECENT UNSEEN UIDNEXT) after the moves: the two
    # left are unseen, UIDs 1-5 were given out. (The first COPY to a
    # missing folder gets NO [TRYCREATE]; imapfilter creates it, retries.)
    assert b"status\t2\t2\t6" in r.stdout, r.stdout
    st = server_state(srv, ["INBOX", "Lists/Debian", "Archive"])
    assert subjects(st, "INBOX") == collections.Counter({"URGENT: call me", "plain"})
    assert flags_of(st, "INBOX", "URGENT: call me") == {"\\Flagged"}
    assert flags_of(st, "INBOX", "plain") == {"$Big", "\\Answered"}
    assert subjects(st, "Lists/Debian") == collections.Counter({"deb0", "deb1"})
    assert subjects(st, "Archive") == collections.Counter({"old news"})
    assert flags_of(st, "Archive", "old news") == {"\\Seen"}


# ---- neomutt ---------------------------------------------------------------------------


def drive_tty(args, env, timeout=60):
    """Runs a full-screen program on a pseudo-terminal until it exits;
    returns (exit status, what it drew)."""
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execvpe(args[0], args, env)
        finally:
            os._exit(127)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.5)
            if r:
                try:
                    d = os.read(fd, 65536)
                except OSError:
                    break
                if not d:
                    break
                out += d
            else:
                wpid, status = os.waitpid(pid, os.WNOHANG)
                if wpid:
                    return os.waitstatus_to_exitcode(status), out
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


@pytest.mark.parametrize("mode", MODES)
def test_neomutt_batch_save_flag_delete(imapsrv, tmp_path, mode):
    need("neomutt")
    srv = start(imapsrv, mode)
    for s in ("keep-me", "archive-me", "flag-me", "delete-me"):
        deliver(srv, ALICE, subject=s)
    if mode == "implicit":
        folder = f"imaps://alice%40example.com@localhost:{srv.port(993)}/"
    else:
        folder = f"imap://alice%40example.com@localhost:{srv.port(143)}/"
    debug = tmp_path / "neomutt.debug"
    rc = tmp_path / "neomuttrc"
    rc.write_text(f"""set folder = "{folder}"
set spoolfile = "+INBOX"
set imap_pass = "{USERS[ALICE]}"
set certificate_file = "{cert(srv)}"
set ssl_starttls = yes
set ssl_force_tls = yes
set header_cache = ""
set message_cachedir = ""
set confirmcreate = no
set confirmappend = no
set delete = yes
set quit = yes
set move = no
set mark_old = no
set wait_key = no
set sleep_time = 0
set timeout = 0
set debug_level = 2
set debug_file = "{debug}"
""")
    keys = ("<tag-pattern>~s archive-me<enter><tag-prefix><save-message>=Archive<enter>"
            "<untag-pattern>~A<enter>"
            "<tag-pattern>~s flag-me<enter><tag-prefix><flag-message>"
            "<untag-pattern>~A<enter>"
            "<tag-pattern>~s delete-me<enter><tag-prefix><delete-message>"
            "<sync-mailbox><quit>")
    env = tool_env(tmp_path)
    env["TERM"] = "xterm"
    status, screen = drive_tty(["neomutt", "-n", "-F", str(rc), "-e", f'push "{keys}"'], env)
    logs = "".join(open(f, errors="replace").read() for f in glob.glob(str(debug) + "*"))
    assert status == 0, (status, screen[-2000:], logs[-4000:])
    st = server_state(srv, ["INBOX", "Archive"])
    assert subjects(st, "INBOX") == collections.Counter({"keep-me", "flag-me"}), (st, logs[-4000:])
    assert flags_of(st, "INBOX", "flag-me") == {"\\Flagged"}
    assert subjects(st, "Archive") == collections.Counter({"archive-me"})


# ---- the GUI clients' command sequences, replayed raw ------------------------------------


class Session:
    """A raw IMAP connection that checks every response against RFC 9051's
    grammar. tls: None (143 plaintext), "starttls" (143), "implicit" (993)."""

    def __init__(self, srv, tls=None):
        self.srv = srv
        port = 993 if tls == "implicit" else 143
        self.sock = socket.create_connection((HOST, srv.port(port)), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls == "implicit":
            self.sock = tls_context(srv).wrap_socket(self.sock, server_hostname="localhost")
        self.r = Responses(self.sock)
        self.greeting = self.r.next()
        check(self.greeting)
        if tls == "starttls":
            got = self.exchange([("s0", "STARTTLS")])
            assert got["s0"][-1][1][2] == b"OK", got
            self.sock = tls_context(srv).wrap_socket(self.sock, server_hostname="localhost")
            self.r = Responses(self.sock)

    def send(self, data, bytewise=False):
        if not bytewise:
            self.sock.sendall(data)
            return
        for i in range(len(data)):
            self.sock.sendall(data[i:i + 1])
            if i % 8 == 0:
                time.sleep(0.0005)  # let the server read pieces, not one coalesced run

    def exchange(self, cmds, mode="each"):
        """cmds: [(tag, command bytes or str)]. mode: "each" (one write per
        command, then its responses), "pipelined" (every command in one
        write), "bytewise" (every command in one-byte writes). Returns
        {tag: [(raw, parsed), ...]} with the tagged response last."""
        out = {}
        wire = [(t, (c.encode() if isinstance(c, str) else c)) for t, c in cmds]
        if mode == "each":
            for tag, c in wire:
                self.send(tag.encode() + b" " + c + b"\r\n")
                out[tag] = self.read(tag)
            return out
        data = b"".join(tag.encode() + b" " + c + b"\r\n" for tag, c in wire)
        self.send(data, bytewise=mode == "bytewise")
        for tag, _ in wire:
            out[tag] = self.read(tag)
        return out

    def read(self, tag):
        got = []
        while True:
            raw = self.r.next()
            assert raw, f"EOF before {tag}: {got}"
            parsed = check(raw)
            got.append((raw, parsed))
            if parsed[0] == "tagged":
                assert parsed[1] == tag.encode(), (tag, raw)
                return got


def tagged_ok(resps):
    raw, p = resps[-1]
    assert p[0] == "tagged" and p[2] == b"OK", raw
    return raw


def untagged(resps, kw):
    return [(raw, p[3]) for raw, p in resps if p[0] == "untagged" and p[2] == kw]


def fetch_items(raw):
    """The FETCH response's items as {NAME: value bytes} (literal values
    whole), for the checks after the grammar passed."""
    out = {}
    body = raw[raw.index(b"(") + 1:]
    i = 0
    while i < len(body) and body[i:i + 3] != b")\r\n":
        j = i
        depth = 0
        while body[j:j + 1] != b" " or depth:
            if body[j:j + 1] == b"[":
                depth += 1
            elif body[j:j + 1] == b"]":
                depth -= 1
            j += 1
        name = body[i:j].upper()
        j += 1
        if body[j:j + 1] == b"{":
            k = body.index(b"}\r\n", j)
            n = int(body[j + 1:k])
            val = body[k + 3:k + 3 + n]
            i = k + 3 + n
        elif body[j:j + 1] == b"(":
            depth, k = 0, j
            while True:
                c = body[k:k + 1]
                if c == b'"':
                    k = body.index(b'"', k + 1)
                    while body[k - 1:k] == b"\\":
                        k = body.index(b'"', k + 1)
                elif c == b"(":
                    depth += 1
                elif c == b")":
                    depth -= 1
                    if depth == 0:
                        break
                k += 1
            val = body[j:k + 1]
            i = k + 1
        else:
            k = j
            if body[k:k + 1] == b'"':
                k = body.index(b'"', k + 1) + 1
            else:
                while body[k:k + 1] not in (b" ", b")"):
                    k += 1
            val = body[j:k]
            i = k
        out[name] = val
        if body[i:i + 1] == b" ":
            i += 1
    return out


BIG_TEXT = b"".join(b"line %04d of a long letter, long enough to be cut at 2048\r\n" % i
                    for i in range(120))
MULTIPART = (b"From: Carol <carol@remote.example>\r\nTo: alice@example.com\r\n"
             b"Cc: Dave <dave@remote.example>, eve@remote.example\r\n"
             b"Subject: =?UTF-8?Q?R=C3=A9sum=C3=A9?= attached\r\n"
             b"Date: Wed, 2 Jul 2003 09:00:00 +0200\r\nMessage-ID: <mp@remote.example>\r\n"
             b"In-Reply-To: <earlier@remote.example>\r\nReferences: <earlier@remote.example>\r\n"
             b"X-Priority: 1 (Highest)\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
             b"preamble\r\n--b1\r\nContent-Type: multipart/alternative; boundary=\"b2\"\r\n\r\n"
             b"--b2\r\nContent-Type: text/plain; charset=utf-8\r\n"
             b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
             b"Hello, caf=C3=A9.\r\n" + BIG_TEXT +
             b"--b2\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Hello</p>\r\n"
             b"--b2--\r\n--b1\r\nContent-Type: application/pdf; name=\"cv.pdf\"\r\n"
             b"Content-Disposition: attachment; filename=\"cv.pdf\"\r\n"
             b"Content-Transfer-Encoding: base64\r\n\r\n"
             b"JVBERi0xLjQKJcTl8uXr\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\n"
             b"From: inner@remote.example\r\nSubject: inner\r\n\r\ninner body\r\n"
             b"--b1--\r\n")


def seed_inbox(srv):
    """Three messages in INBOX (UIDs 1-3): a short one, a multipart with an
    attachment and an embedded message, a long plain one."""
    deliver(srv, ALICE, subject="short")
    deliver(srv, ALICE, raw=MULTIPART)
    deliver(srv, ALICE, subject="long", body=BIG_TEXT)


def stored(srv, folder, uid):
    """The message bytes as the server stores them (with its Received line)."""
    c = adm(srv)
    c.select(f'"{folder}"', readonly=True)
    typ, data = c.uid("FETCH", str(uid), "(BODY.PEEK[])")
    c.logout()
    assert typ == "OK", data
    return data[0][1]


SEND_MODES = ["each", "pipelined", "bytewise"]
TB_HEADERS = (b"From To Cc Bcc Subject Date Message-ID Priority X-Priority References "
              b"Newsgroups In-Reply-To Content-Type Reply-To")


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
@pytest.mark.parametrize("mode", SEND_MODES)
def test_thunderbird_startup_sequence(imapsrv, tls, mode):
    srv = start(imapsrv, "starttls" if tls == "starttls" else "implicit")
    seed_inbox(srv)
    s = Session(srv, tls)
    cred = base64.b64encode(b"\0" + ALICE.encode() + b"\0" + USERS[ALICE].encode())
    got = s.exchange([
        ("1", "capability"),
        ("2", 'ID ("name" "Thunderbird" "version" "115.12.2")'),
        ("3", b"authenticate PLAIN " + cred),
        ("4", "namespace"),
        ("5", "enable CONDSTORE"),
        ("6", 'list (subscribed) "" "*" return (special-use)'),
        ("7", 'list "" "*" return (special-use)'),
        ("8", 'select "INBOX" (CONDSTORE)'),
        ("9", "UID fetch 1:* (FLAGS)"),
        ("10", b"UID fetch 2:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (" + TB_HEADERS
         + b")])"),
        ("11", "UID fetch 4:* (FLAGS)"),  # past the last UID: * is 3, so 3:4
        ("12", 'getquotaroot "INBOX"'),
    ], mode)
    for tag, resps in got.items():
        tagged_ok(resps)
    caps = untagged(got["1"], b"CAPABILITY")[0][1]
    assert b"XLIST" not in caps and b"AUTH=PLAIN" in caps
    # a new account: Thunderbird picks Sent, Drafts, Trash, Junk and Archive
    # by their attributes instead of making folders of its own
    subscribed = {n: f for _, (f, n) in untagged(got["6"], b"LIST")}
    assert subscribed == {n.encode(): [b"\\HasNoChildren", b"\\Subscribed", a.encode()]
                          for n, a in AUTO.items()}, subscribed
    listed = {n: f for _, (f, n) in untagged(got["7"], b"LIST")}
    assert listed == {b"INBOX": [b"\\HasNoChildren"],
                      **{n.encode(): [b"\\HasNoChildren", a.encode()] for n, a in AUTO.items()}}, \
        listed
    assert untagged(got["5"], b"ENABLED")[0][1] == [b"CONDSTORE"]
    assert b"HIGHESTMODSEQ" in b"".join(r for r, _ in got["8"])
    assert b"[READ-WRITE]" in tagged_ok(got["8"])
    flags = untagged(got["9"], b"FETCH")
    assert [p[0] for _, p in flags] == [1, 2, 3]
    hdrs = untagged(got["10"], b"FETCH")
    assert [p[0] for _, p in hdrs] == [2, 3], hdrs
    mp = fetch_items(hdrs[0][0])
    want = b"".join(l + b"\r\n" for l in MULTIPART.split(b"\r\n\r\n")[0].split(b"\r\n")
                    if l.split(b":")[0].lower() in TB_HEADERS.lower().split()) + b"\r\n"
    key = [k for k in mp if k.startswith(b"BODY[HEADER.FIELDS")][0]
    assert mp[key] == want, mp[key]
    assert int(mp[b"RFC822.SIZE"]) == len(stored(srv, "INBOX", 2))
    last = untagged(got["11"], b"FETCH")
    assert [p[0] for _, p in last] == [3], last
    # IDLE, then mail arrives
    s.send(b"13 IDLE\r\n")
    check(s.r.next())
    deliver(srv, ALICE, subject="while idling")
    raw = s.r.next()
    assert check(raw)[2:] == (b"EXISTS", 4), raw
    s.send(b"DONE\r\n", bytewise=mode == "bytewise")
    tagged_ok(s.read("13"))
    # read, move to Trash, file a copy in Sent
    sent = b"From: alice@example.com\r\nTo: bob@example.com\r\nSubject: reply\r\n\r\nthanks\r\n"
    got = s.exchange([
        ("14", "uid store 1 +Flags (\\Seen)"),
        ("15", 'UID MOVE 2 "Trash"'),
        ("16", b'APPEND "Sent" (\\Seen) {%d+}\r\n' % len(sent) + sent),
        ("17", "UID fetch 1:* (FLAGS) (CHANGEDSINCE 1)"),
        ("18", "logout"),
    ], mode)
    for resps in got.values():
        tagged_ok(resps)
    st = untagged(got["14"], b"FETCH")
    assert b"\\Seen" in st[0][0] and b"MODSEQ" in st[0][0], st
    assert b"[COPYUID " in b"".join(r for r, _ in got["15"])
    assert [p for _, p in untagged(got["15"], b"EXPUNGE")] == [2]
    assert b"[APPENDUID " in tagged_ok(got["16"])
    assert untagged(got["18"], b"BYE")
    state = server_state(srv, ["INBOX", "Trash", "Sent"])
    assert state["INBOX"] == [("long", ()), ("short", ("\\Seen",)), ("while idling", ())]
    assert [f for _, f in state["Trash"]] == [()] and [s_ for s_, _ in state["Sent"]] == ["reply"]
    assert flags_of(state, "Sent", "reply") == {"\\Seen"}


def test_grammar_checker_accepts_and_rejects():
    """The checker the replays rely on: well-formed responses pass, each
    malformed one is refused (else a replay could pass on garbage)."""
    good = [
        b"* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n",
        b"* 3 FETCH (UID 7 FLAGS (\\Seen $Forwarded) RFC822.SIZE 12 "
        b"INTERNALDATE \" 1-Jul-2003 10:52:37 +0200\" BODY[HEADER.FIELDS (From \"To\")]<0> {4}\r\n"
        b"a\r\n\r MODSEQ (5))\r\n",
        b"* 1 FETCH (BODYSTRUCTURE ((\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"7bit\" 3 1 NIL"
        b" NIL NIL NIL)(\"text\" \"html\" NIL NIL NIL \"7bit\" 3 1) \"alternative\" (\"boundary\" \"x\")"
        b" NIL NIL NIL))\r\n",
        b"* LIST (\\HasNoChildren \\Sent) \"/\" \"Sent\"\r\n",
        b"* STATUS \"INBOX\" (MESSAGES 1 UNSEEN 0 RECENT 0)\r\n",
        b"a1 OK [COPYUID 17 1:3 4,6:7] done\r\n",
        b"+ idling\r\n",
    ]
    bad = [
        b"* 3 FETCH (UID 7  FLAGS ())\r\n",                    # two spaces
        b"* 3 FETCH (UID 0)\r\n",                              # UID is nz-number
        b"* 3 FETCH (FLAGS (\\Seen)\r\n",                      # unbalanced
        b"* 3 FETCH (BODY[] {5}\r\nabc)\r\n",                  # short literal
        b"* 3 FETCH (BODY[] {3}\r\na\0b)\r\n",                 # NUL in a literal
        b"* 3 FETCH (INTERNALDATE \"1-Jul-2003 10:52:37 +0200\")\r\n",  # day not 2 wide
        b"* 3 FETCH (ENVELOPE (NIL NIL NIL NIL NIL NIL NIL NIL NIL))\r\n",  # 9 fields
        b"* 3 FETCH (BODY (\"text\" \"plain\" NIL NIL NIL \"7bit\" 3 1 NIL))\r\n",  # ext in BODY
        b"* 3 FETCH (BODYSTRUCTURE ((\"text\" \"plain\" NIL NIL NIL \"7bit\" 3 1) "
        b"(\"text\" \"html\" NIL NIL NIL \"7bit\" 3 1) \"alternative\"))\r\n",  # SP between parts
        b"* 3 FETCH (FLAGS (\\Seen) FLAGS (\\Seen))\r\n",     # item twice
        b"* LIST (\\Noselect) \"//\" foo\r\n",                 # delimiter of two
        b"* STATUS INBOX (MESSAGES)\r\n",
        b"* 3 FETCH (X-UNKNOWN 1)\r\n",
        b"* FLAGS (\\Seen \"x\")\r\n",
        b"a+1 OK done\r\n",
        b"* OK [UIDVALIDITY 0] zero\r\n",
        b"* SEARCH 1 2 \r\n",
        b"* OK [HIGHESTMODSEQ 0] Highest\r\n",               # mod-sequence-value >= 1
        b"* 1 FETCH (UID 1)",                                  # no CRLF
        b"* CAPABILITY IDLE\r\n",                              # no IMAP4rev1/rev2
        b"* LIST () \"/\" \"caf\xc3\xa9\"\r\n",                # 8-bit in a rev1 session
    ]
    for r in good:
        check(r)
    for r in bad:
        with pytest.raises(GrammarError):
            check(r)
            print(r)


@pytest.mark.parametrize("mode", SEND_MODES)
def test_apple_mail_sequence(imapsrv, mode):
    """Apple Mail / iOS: ID before anything, LIST "" "" and LIST "" "*" (no
    XLIST: not advertised, so not sent; sent anyway it is BAD), STATUS for
    every folder in one burst, UID FETCH with BODYSTRUCTURE and the first
    2048 bytes of body and part, pipelined. Over 143 with STARTTLS."""
    srv = start(imapsrv, "starttls")
    seed_inbox(srv)
    make_folders(srv, {"Archive": ["a0"], "Lists/Debian": ["d0", "d1"], "Notes": []})
    s = Session(srv, "starttls")
    got = s.exchange([
        ("1.1", 'ID ("name" "iPhone Mail" "version" "21E236" "os" "iOS" "os-version" "17.4.1 (21E236)")'),
        ("1.2", "CAPABILITY"),
        ("2.1", f'LOGIN "{ALICE}" "{USERS[ALICE]}"'),
        ("2.2", "CAPABILITY"),
        ("3.1", 'LIST "" ""'),
        ("3.2", 'LIST "" "*"'),
        ("3.3", 'XLIST "" "*"'),
    ], mode)
    for tag in ("1.1", "1.2", "2.1", "2.2", "3.1", "3.2"):
        tagged_ok(got[tag])
    assert got["3.3"][-1][1][2] == b"BAD"
    for tag in ("1.2", "2.2"):
        assert b"XLIST" not in untagged(got[tag], b"CAPABILITY")[0][1]
    assert untagged(got["3.1"], b"LIST")[0][1] == ([b"\\Noselect"], b"")
    names = [v[1] for _, v in untagged(got["3.2"], b"LIST")]
    assert names == [b"Archive", b"Drafts", b"INBOX", b"Junk", b"Lists", b"Lists/Debian",
                     b"Notes", b"Sent", b"Trash"], names
    special = {n: f[-1] for _, (f, n) in untagged(got["3.2"], b"LIST") if n.decode() in AUTO}
    assert special == {n.encode(): a.encode() for n, a in AUTO.items()}, special
    selectable = [n for (_, (f, n)) in untagged(got["3.2"], b"LIST") if b"\\Noselect" not in f]
    got = s.exchange([(f"4.{i}", f'STATUS "{n.decode()}" (MESSAGES UIDNEXT UIDVALIDITY UNSEEN)')
                      for i, n in enumerate(selectable, 1)], mode)
    counts = {}
    for resps in got.values():
        tagged_ok(resps)
        (name, atts), = [v for _, v in untagged(resps, b"STATUS")]
        counts[name] = (atts[b"MESSAGES"], atts[b"UNSEEN"], atts[b"UIDNEXT"])
    assert counts == {b"Archive": (1, 1, 2), b"INBOX": (3, 3, 4), b"Lists/Debian": (2, 2, 3),
                      b"Notes": (0, 0, 1), b"Drafts": (0, 0, 1), b"Junk": (0, 0, 1),
                      b"Sent": (0, 0, 1), b"Trash": (0, 0, 1)}, counts
    got = s.exchange([
        ("5.1", "SELECT INBOX"),
        ("5.2", "UID FETCH 1:* (FLAGS UID)"),
        ("5.3", "UID SEARCH 1:* NOT DELETED"),
        ("5.4", "UID FETCH 2:3 (UID BODYSTRUCTURE BODY.PEEK[HEADER] RFC822.SIZE INTERNALDATE FLAGS)"),
        ("5.5", "UID FETCH 3 (BODY.PEEK[]<0.2048>)"),
        ("5.6", "UID FETCH 2 (BODY.PEEK[1.1]<0.2048> BODY.PEEK[2.MIME] BODY.PEEK[3.HEADER])"),
        ("5.7", "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 0)"),
        ("5.8", "NOOP"),
    ], mode)
    for resps in got.values():
        tagged_ok(resps)
    assert untagged(got["5.3"], b"SEARCH")[0][1] == [1, 2, 3]
    items = [fetch_items(r) for r, _ in untagged(got["5.4"], b"FETCH")]
    assert len(items) == 2
    bs = items[0][b"BODYSTRUCTURE"]
    assert bs.startswith(b"(((\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"quoted-printable\"")
    assert b"(\"attachment\" (\"filename\" \"cv.pdf\"))" in bs
    assert b"\"message\" \"rfc822\"" in bs and bs.endswith(b"\"mixed\" (\"boundary\" \"b1\") NIL NIL NIL)")
    full3 = stored(srv, "INBOX", 3)
    assert items[1][b"BODY[HEADER]"] == full3.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert int(items[1][b"RFC822.SIZE"]) == len(full3)
    first = fetch_items(untagged(got["5.5"], b"FETCH")[0][0])
    assert first[b"BODY[]<0>"] == full3[:2048]
    parts = fetch_items(untagged(got["5.6"], b"FETCH")[0][0])
    qp = MULTIPART.split(b"quoted-printable\r\n\r\n")[1]
    assert parts[b"BODY[1.1]<0>"] == qp[:2048]
    assert parts[b"BODY[2.MIME]"] == (b"Content-Type: application/pdf; name=\"cv.pdf\"\r\n"
                                      b"Content-Disposition: attachment; filename=\"cv.pdf\"\r\n"
                                      b"Content-Transfer-Encoding: base64\r\n\r\n")
    assert parts[b"BODY[3.HEADER]"] == b"From: inner@remote.example\r\nSubject: inner\r\n\r\n"
    # the PEEKs left every message unseen
    assert [fetch_items(r)[b"FLAGS"] for r, _ in untagged(got["5.7"], b"FETCH")] == [b"()"] * 3
    s.send(b"6.1 IDLE\r\n")
    check(s.r.next())
    s.send(b"DONE\r\n7.1 LOGOUT\r\n", bytewise=mode == "bytewise")
    tagged_ok(s.read("6.1"))
    tagged_ok(s.read("7.1"))


@pytest.mark.parametrize("mode", SEND_MODES)
def test_outlook_sequence(imapsrv, mode):
    """Outlook: LSUB for the folder list, STATUS (MESSAGES UNSEEN RECENT
    UIDNEXT UIDVALIDITY) for each, FETCH with RFC822.HEADER, all pipelined;
    mark read, delete and expunge. Over 993."""
    srv = start(imapsrv, "implicit")
    seed_inbox(srv)
    make_folders(srv, {"Drafts": [], "Work": ["w0", "w1"]})
    full = {uid: stored(srv, "INBOX", uid) for uid in (1, 2, 3)}
    s = Session(srv, "implicit")
    hello = b"From: alice@example.com\r\nSubject: draft\r\n\r\nunfinished\r\n"
    got = s.exchange([
        ("A1", "CAPABILITY"),
        ("A2", f"LOGIN {ALICE} {USERS[ALICE]}"),
        ("A3", "SUBSCRIBE INBOX"),
        ("A4", "SUBSCRIBE Work"),
        ("A5", "SUBSCRIBE Drafts"),
        ("A6", 'LSUB "" "*"'),
        ("A7", 'LIST "" "*"'),
        ("A8", 'STATUS "INBOX" (MESSAGES UNSEEN RECENT UIDNEXT UIDVALIDITY)'),
        ("A9", 'STATUS "Work" (MESSAGES UNSEEN RECENT UIDNEXT UIDVALIDITY)'),
        ("A10", 'STATUS "Drafts" (MESSAGES UNSEEN RECENT UIDNEXT UIDVALIDITY)'),
        ("A11", b'APPEND "Drafts" (\\Draft) {%d+}\r\n' % len(hello) + hello),
        ("A12", 'SELECT "INBOX"'),
        ("A13", "UID FETCH 1:* (UID FLAGS)"),
        ("A14", "FETCH 1:3 (UID RFC822.SIZE FLAGS INTERNALDATE)"),
        ("A15", "FETCH 1:3 (UID RFC822.HEADER)"),
        ("A16", "UID FETCH 1 (UID RFC822.SIZE BODY.PEEK[])"),
        ("A17", "UID STORE 1 +FLAGS.SILENT (\\Seen)"),
        ("A18", "UID FETCH 1:* (UID FLAGS)"),
        ("A19", "UID STORE 3 +FLAGS (\\Deleted)"),
        ("A20", "EXPUNGE"),
        ("A21", 'STATUS "Drafts" (MESSAGES UNSEEN RECENT UIDNEXT UIDVALIDITY)'),
        ("A22", "NOOP"),
        ("A23", "LOGOUT"),
    ], mode)
    for resps in got.values():
        tagged_ok(resps)
    lsub = sorted(v[1] for _, v in untagged(got["A6"], b"LSUB"))
    assert lsub == [b"Archive", b"Drafts", b"INBOX", b"Junk", b"Sent", b"Trash", b"Work"], lsub
    stats = {v[0]: v[1] for tag in ("A8", "A9", "A10", "A21")
             for _, v in untagged(got[tag], b"STATUS")}
    assert stats[b"INBOX"] == {b"MESSAGES": 3, b"UNSEEN": 3, b"RECENT": 0, b"UIDNEXT": 4,
                               b"UIDVALIDITY": stats[b"INBOX"][b"UIDVALIDITY"]}
    assert stats[b"Work"][b"MESSAGES"] == 2 and stats[b"Drafts"][b"MESSAGES"] == 1  # after A11
    assert [p[0] for _, p in untagged(got["A14"], b"FETCH")] == [1, 2, 3]
    for raw, p in untagged(got["A15"], b"FETCH"):
        it = fetch_items(raw)
        msg = full[int(it[b"UID"])]
        assert it[b"RFC822.HEADER"] == msg.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
        assert b"FLAGS" not in it  # RFC822.HEADER is a peek
    body = fetch_items(untagged(got["A16"], b"FETCH")[0][0])
    assert body[b"BODY[]"] == full[1]
    assert untagged(got["A17"], b"FETCH") == []  # .SILENT
    flags = [fetch_items(r)[b"FLAGS"] for r, _ in untagged(got["A18"], b"FETCH")]
    assert flags == [b"(\\Seen)", b"()", b"()"], flags
    assert [p for _, p in untagged(got["A20"], b"EXPUNGE")] == [3]
    assert untagged(got["A23"], b"BYE")
    st = server_state(srv, ["INBOX", "Drafts"])
    assert subjects(st, "INBOX") == collections.Counter(
        {"short", "=?UTF-8?Q?R=C3=A9sum=C3=A9?= attached"}), st
    assert flags_of(st, "Drafts", "draft") == {"\\Draft"}


# ---- what the replays found --------------------------------------------------------------


def test_header_fields_partial_is_cut(imapsrv):
    """BODY[HEADER.FIELDS (...)]<o.n> (and .NOT) sent the whole filtered
    header whatever the partial asked, labelled <o>: a client fetching a
    filtered header in pieces got it whole at every offset."""
    srv = imapsrv()
    deliver(srv, ALICE, subject="cut me")
    c = adm(srv)
    assert c.append("INBOX", None, None, b"\r\nno header at all\r\n")[0] == "OK"
    c.logout()
    s = Session(srv)
    want_not = stored(srv, "INBOX", 1).split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    want_not = b"".join(l + b"\r\n" for l in want_not[:-4].split(b"\r\n")
                        if not l.startswith(b"Subject:")) + b"\r\n"
    cases = [
        ("BODY.PEEK[HEADER.FIELDS (SUBJECT)]<0.5>", b"BODY[HEADER.FIELDS (SUBJECT)]<0>", b"Subje"),
        ("BODY.PEEK[HEADER.FIELDS (SUBJECT)]<3.4>", b"BODY[HEADER.FIELDS (SUBJECT)]<3>", b"ject"),
        ("BODY.PEEK[HEADER.FIELDS (SUBJECT)]<9.100>", b"BODY[HEADER.FIELDS (SUBJECT)]<9>",
         b"cut me\r\n\r\n"),
        ("BODY.PEEK[HEADER.FIELDS (SUBJECT)]<100.10>", b"BODY[HEADER.FIELDS (SUBJECT)]<100>", b""),
        ("BODY.PEEK[HEADER.FIELDS (X-NONE)]<1.9>", b"BODY[HEADER.FIELDS (X-NONE)]<1>", b"\n"),
        ("BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT)]<2.10>", b"BODY[HEADER.FIELDS.NOT (SUBJECT)]<2>",
         want_not[2:12]),
        ("BODY.PEEK[HEADER.FIELDS (SUBJECT)]", b"BODY[HEADER.FIELDS (SUBJECT)]",
         b"Subject: cut me\r\n\r\n"),
    ]
    got = s.exchange([("l", f"LOGIN {ALICE} {USERS[ALICE]}"), ("s", "SELECT INBOX")] +
                     [(f"f{i}", f"FETCH 1 ({item})") for i, (item, _, _) in enumerate(cases)] +
                     [("e1", "FETCH 2 (BODY.PEEK[HEADER.FIELDS (SUBJECT)]<1.1>)"),
                      ("e2", "FETCH 2 (BODY.PEEK[HEADER.FIELDS (SUBJECT)]<0.1>)")],
                     "pipelined")
    for i, (_, key, want) in enumerate(cases):
        tagged_ok(got[f"f{i}"])
        (raw, _), = untagged(got[f"f{i}"], b"FETCH")
        assert fetch_items(raw)[key] == want, (key, raw)
    # a message without a header: its filtered header is the empty line
    assert fetch_items(untagged(got["e1"], b"FETCH")[0][0])[
        b"BODY[HEADER.FIELDS (SUBJECT)]<1>"] == b"\n"
    assert fetch_items(untagged(got["e2"], b"FETCH")[0][0])[
        b"BODY[HEADER.FIELDS (SUBJECT)]<0>"] == b"\r"


def test_empty_mailbox_highestmodseq_is_positive(imapsrv):
    """Thunderbird's first SELECT "Trash" (CONDSTORE) on a new account: an
    empty mailbox that never changed answered [HIGHESTMODSEQ 0], which RFC
    7162's grammar does not allow (mod-sequence-value is 1 or more; in
    STATUS, 0 means "no persistent MODSEQs", so a client turns CONDSTORE
    off for that mailbox). Its first message must then be seen as a change
    since the value the client was given, by CHANGEDSINCE and QRESYNC."""
    srv = imapsrv()
    s = Session(srv, "implicit")
    got = s.exchange([("l", f"LOGIN {ALICE} {USERS[ALICE]}"), ("e", "ENABLE QRESYNC"),
                      ("c", "CREATE Empty"), ("st", "STATUS Empty (HIGHESTMODSEQ UIDVALIDITY)"),
                      ("s", 'SELECT "Trash" (CONDSTORE)'), ("u", "UNSELECT")])
    for r in got.values():
        tagged_ok(r)
    (name, st), = [v for _, v in untagged(got["st"], b"STATUS")]
    assert st[b"HIGHESTMODSEQ"] >= 1, st
    sel = b"".join(r for r, _ in got["s"])
    m0 = int(re.search(rb"\[HIGHESTMODSEQ (\d+)\]", sel).group(1))
    uv = int(re.search(rb"\[UIDVALIDITY (\d+)\]", sel).group(1))
    assert m0 >= 1
    msg = b"From: a@remote.example\r\nSubject: first\r\n\r\nx\r\n"
    got = s.exchange([("a", b"APPEND Trash {%d+}\r\n" % len(msg) + msg),
                      ("a2", b"APPEND Empty {%d+}\r\n" % len(msg) + msg),
                      ("st", "STATUS Empty (HIGHESTMODSEQ)"),
                      ("q", f"SELECT Trash (QRESYNC ({uv} {m0}))"),
                      ("f", f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {m0})")])
    for r in got.values():
        tagged_ok(r)
    (name, st2), = [v for _, v in untagged(got["st"], b"STATUS")]
    assert st2[b"HIGHESTMODSEQ"] > st[b"HIGHESTMODSEQ"], (st, st2)
    sel = b"".join(r for r, _ in got["q"])
    assert int(re.search(rb"\[HIGHESTMODSEQ (\d+)\]", sel).group(1)) > m0
    assert [p[0] for _, p in untagged(got["q"], b"FETCH")] == [1], got["q"]
    assert [p[0] for _, p in untagged(got["f"], b"FETCH")] == [1], got["f"]


def test_change_in_mailbox_deleted_by_other_session(imapsrv):
    """A phone has a folder open while the desktop client deletes it; the
    phone then marks a message read (or expunges). The STORE reached the
    store for a deleted folder, whose refusal completed without a log, and
    the completion dereferenced it: the whole server died (SIGSEGV), every
    user's sessions with it. Now each change is NO [NONEXISTENT]."""
    srv = imapsrv()
    phone, desk = Session(srv, "implicit"), Session(srv, "implicit")
    msg = b"From: a@remote.example\r\nSubject: doomed\r\n\r\nx\r\n"
    for s in (phone, desk):
        tagged_ok(s.exchange([("l", f"LOGIN {ALICE} {USERS[ALICE]}")])["l"])
    got = desk.exchange([("c", "CREATE Projects"),
                         ("a", b"APPEND Projects {%d+}\r\n" % len(msg) + msg),
                         ("a2", b"APPEND Projects {%d+}\r\n" % len(msg) + msg)])
    for r in got.values():
        tagged_ok(r)
    tagged_ok(phone.exchange([("s", "SELECT Projects")])["s"])
    phone.send(b"i IDLE\r\n")
    check(phone.r.next())
    tagged_ok(desk.exchange([("d", "DELETE Projects")])["d"])
    phone.send(b"DONE\r\n")
    tagged_ok(phone.read("i"))
    got = phone.exchange([("f1", "STORE 1 +FLAGS (\\Seen)"),
                          ("f2", "UID STORE 2 +FLAGS.SILENT (\\Deleted)"),
                          ("f3", "EXPUNGE"),
                          ("f4", "UID EXPUNGE 2"),
                          ("n", "NOOP")], "pipelined")
    for tag in ("f1", "f2", "f3", "f4"):
        raw, p = got[tag][-1]
        assert p[2] == b"NO" and b"[NONEXISTENT]" in raw, raw
    tagged_ok(got["n"])
    # the server is alive for everyone
    got = desk.exchange([("s", "SELECT INBOX"), ("o", "LOGOUT")])
    tagged_ok(got["s"])
    c = adm(srv)
    typ, data = c.list()
    assert typ == "OK" and not any(b'"Projects"' in l for l in data), data
    c.logout()
    assert srv.proc.poll() is None
