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
import select
import shutil
import signal
import subprocess
import time

import pytest

from conftest import HOST
from imap_grammar import GrammarError, Responses, check
from test_imap import USERS, deliver, imap, imapsrv, tls_context  # noqa: F401 (fixture)

ALICE = "alice@example.com"
NO_PLAIN = "[limits]\nplaintext_auth = no\n"  # 143 logins need STARTTLS


def need(tool):
    if not shutil.which(tool):
        pytest.skip(f"{tool} is not installed (scripts/deps.sh test installs it)")


def cert(srv):
    return os.path.join(srv.data_dir, "tls", "cert.pem")


def run(args, env=None, timeout=60, ok=(0,), **kw):
    out = subprocess.run(args, capture_output=True, timeout=timeout, env=env, **kw)
    assert out.returncode in ok, (out.returncode, out.stdout[-4000:], out.stderr[-4000:])
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
    """spec: {folder: [subject, ...]}; APPENDs each message with imaplib."""
    c = adm(srv)
    for folder, subs in spec.items():
        if folder != "INBOX":
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
        out = run(["offlineimap", "-c", str(rc), "-o", "-u", "basic"], env=env, timeout=120)
        text = (out.stdout + out.stderr).decode(errors="replace")
        assert "ERROR" not in text and "Traceback" not in text, text[-4000:]
        return text

    want_local = {"INBOX": {"in0", "in1", "in2"}, "Work": {"work0", "work1"},
                  "Lists.Debian": {"deb0", "deb1"}}
    for _ in range(2):  # the second sync has nothing to do
        sync()
        for folder, subs in want_local.items():
            assert maildir_subjects(local, folder) == collections.Counter(subs), folder
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
    r = run(["fetchmail", "-f", str(rc), "-v", "--all", "--keep"], env=env)
    assert fetched(out) == collections.Counter({"fm0", "fm1", "fm2"}), r.stdout
    st = server_state(srv, ["INBOX"])
    assert subjects(st, "INBOX") == collections.Counter({"fm0", "fm1", "fm2"})
    assert all(set(f) == {"\\Seen"} for _, f in st["INBOX"]), st
    # a plain run fetches only unseen mail: none (exit 1 is "no mail")
    run(["fetchmail", "-f", str(rc), "--keep"], env=env, ok=(1,))
    assert sum(fetched(out).values()) == 3
    deliver(srv, ALICE, subject="fm3")
    # no keep: the new one comes, and fetch-all flushes everything from the server
    run(["fetchmail", "-f", str(rc), "--all", "--nokeep"], env=env)
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
    p = subprocess.Popen(["fetchmail", "-f", str(rc), "-v", "--idle", "--nokeep"],
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
                env=tool_env(tmp_path))
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
print('counts', #urgent, #lists, #read_small, #big)
""")
    r = run(["imapfilter", "-c", str(cfg), "-t", cert(srv)], env=tool_env(tmp_path))
    assert b"counts\t1\t2\t1\t1" in r.stdout, (r.stdout, r.stderr)
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
