#!/usr/bin/env python3
"""imap_diff.py - sends the same raw IMAP commands to ringmail and to a
private Dovecot and prints both answers, one after the other, per command.
A tool for finding protocol differences by hand (docs/imap.md lists what
was found this way); nothing here asserts anything.

    sudo tests/tools/imap_diff.py [--ringmail build/app/ringmail] [--offset 21700]
                                  [--dovecot-port 46143] SCRIPT.py ...

Both servers start empty for every SCRIPT (a Python file run with the
helpers below in scope), with one user alice@example.com:

    session(login=True) -> [ringmail_conn, dovecot_conn]
    run(cs, ["SELECT INBOX", "FETCH 1 BODY.PEEK[]<0.10>", b"APPEND ... {3+}\\r\\nabc"])
    append(c, "INBOX", message_bytes, flags="", date="")
    msg(subject, date=..., body=..., extra="")   # a small RFC 5322 message

Dovecot (the Debian package; /usr/sbin/dovecot) runs as a private instance
in a temporary directory with its own dovecot.conf, IMAP only, plaintext
LOGIN, Maildir, "/" as separator, a count quota: the system configuration
and the bench peer (bench/peers/) are left alone. Needs root (Dovecot's
master) and the rmbench user that bench/peers/setup.sh creates (any
unprivileged user works: --user). Dovecot delays failed logins, and
closes a pre-login connection after a few BADs; keep such commands apart.
"""
import argparse
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

USER, PASS = "alice@example.com", "alice-Secret-1"
ARGS = argparse.Namespace(diff=False)


class Conn:
    """A raw IMAP connection: cmd() sends "aN text" and returns every line
    up to the tagged one (literals in responses are read whole)."""

    def __init__(self, addr):
        self.s = socket.create_connection(addr, timeout=15)
        self.buf = b""
        self.n = 0
        self.greeting = self.line()

    def line(self):
        while b"\r\n" not in self.buf:
            try:
                d = self.s.recv(65536)
            except socket.timeout:
                r, self.buf = self.buf, b""
                return r + b"<TIMEOUT>"
            except OSError:
                d = b""
            if not d:
                r, self.buf = self.buf, b""
                return r + b"<EOF>"
            self.buf += d
        i = self.buf.index(b"\r\n")
        r, self.buf = self.buf[:i], self.buf[i + 2:]
        m = re.search(rb"~?\{(\d+)\}$", r)
        if m:
            n = int(m.group(1))
            while len(self.buf) < n:
                d = self.s.recv(65536)
                if not d:
                    break
                self.buf += d
            r += b"\r\n" + self.buf[:n]
            self.buf = self.buf[n:]
            r += self.line()
        return r

    def send(self, data):
        """Raw bytes; False when the server has closed."""
        try:
            self.s.sendall(data)
            return True
        except OSError:
            return False

    def until(self, tag):
        """Every line up to the one tagged tag (or EOF, or a timeout)."""
        out = []
        while True:
            ln = self.line()
            out.append(ln)
            if ln.startswith(tag + b" ") or ln.endswith((b"<EOF>", b"<TIMEOUT>")):
                return out

    def cmd(self, text):
        self.n += 1
        tag = f"a{self.n}".encode()
        if isinstance(text, str):
            text = text.encode()
        if not self.send(b""):
            return [b"<EOF>"]
        # a synchronising literal waits for "+" (or a refusal)
        parts = re.split(rb"(\{\d+\}\r\n)", text)
        out, data = [], tag + b" " + parts[0]
        for i in range(1, len(parts), 2):
            if not self.send(data + parts[i]):
                return out + [b"<EOF>"]
            ln = self.line()
            out.append(ln)
            if not ln.startswith(b"+"):
                if not ln.startswith(tag + b" ") and not ln.endswith((b"<EOF>", b"<TIMEOUT>")):
                    out += self.until(tag)
                return out
            data = parts[i + 1]
        if not self.send(data + b"\r\n"):
            return out + [b"<EOF>"]
        return out + self.until(tag)


# --diff: what is compared of an answer. Wording, capability lists and
# \Recent (ringmail has none: docs/imap.md) are left out; response codes
# by name only (their arguments hold UIDVALIDITY, UIDs, MODSEQs).
IGNORED_KINDS = {"CAPABILITY", "RECENT", "OK[CAPABILITY]", "OK[UNSEEN]", "OK"}


def code_of(text):
    m = re.match(rb"\[([A-Za-z0-9.-]+)", text)
    return "[" + m.group(1).decode().upper() + "]" if m else ""


def summary(lines):
    """(tagged status with its code, sorted untagged kinds with counts)."""
    kinds, tagged = {}, "<none>"
    for ln in lines:
        if ln.endswith(b"<EOF>") and not ln[:-5]:
            tagged = tagged if tagged != "<none>" else "<EOF>"
            continue
        if ln.endswith(b"<TIMEOUT>"):
            tagged = "<TIMEOUT>"
            continue
        first = ln.split(b"\r\n", 1)[0]
        if first.startswith(b"* "):
            w = first[2:].split(b" ", 2)
            if w[0].isdigit() and len(w) > 1:
                k = w[1].decode(errors="replace").upper()
            else:
                k = w[0].decode(errors="replace").upper()
                if k in ("OK", "NO", "BAD", "BYE", "PREAUTH"):
                    k += code_of(first[2 + len(w[0]) + 1:])
                elif k in ("LIST", "LSUB"):
                    k += " " + re.sub(rb"^\([^)]*\) \S+ ", b"", first[2 + len(w[0]) + 1:]).decode(
                        errors="replace").strip('"')
            if k not in IGNORED_KINDS:
                kinds[k] = kinds.get(k, 0) + 1
        elif first.startswith(b"+"):
            kinds["+"] = kinds.get("+", 0) + 1
        elif b" " in first:
            w = first.split(b" ", 2)
            tagged = w[1].decode(errors="replace").upper() + (code_of(w[2]) if len(w) > 2 else "")
            if tagged.endswith("[CAPABILITY]"):
                tagged = tagged[:-len("[CAPABILITY]")]
    return tagged, sorted(kinds.items())


DIFFS = []


def show(name, a, b):
    if ARGS.diff:
        sa, sb = summary(a), summary(b)
        if sa == sb:
            return
        DIFFS.append(name)
        print(f"=== {name}\n  RM: {sa[0]} {sa[1]}\n  DC: {sb[0]} {sb[1]}")
    else:
        print(f"=== {name}")
    for who, lines in (("RM", a), ("DC", b)):
        for x in lines:
            print(f"  {who}:", x.decode("utf-8", "replace"))


class Servers:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="imap-diff-")
        os.chmod(self.tmp, 0o755)
        self.rm = None

    def start(self):
        self.stop_ringmail()
        a = self.args
        data = os.path.join(self.tmp, "rm")
        shutil.rmtree(data, ignore_errors=True)
        os.makedirs(data)
        with open(os.path.join(data, "passwd"), "w") as f:
            f.write(f"{USER}:{{PLAIN}}{PASS}\n")
        conf = os.path.join(self.tmp, "ringmail.conf")
        with open(conf, "w") as f:
            f.write("[limits]\nquota_storage = 100m\nmax_bad_commands = 1000\n")
        self.rm = subprocess.Popen([a.ringmail, "serve", "--config", conf, "--data", data,
                                    "--port-offset", str(a.offset), "--threads", "1",
                                    "--log-level", "warn"], stderr=subprocess.DEVNULL)
        wait_port(a.offset + 143)
        pw = pwd.getpwnam(a.user)
        mail = os.path.join(self.tmp, "dc", "mail")
        shutil.rmtree(mail, ignore_errors=True)
        os.makedirs(mail)
        os.chown(mail, pw.pw_uid, pw.pw_gid)
        if not os.path.exists(os.path.join(self.tmp, "dc", "dovecot.conf")):
            self.start_dovecot(pw)

    def start_dovecot(self, pw):
        d = os.path.join(self.tmp, "dc")
        for sub in ("run", "state"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        with open(os.path.join(d, "passwd"), "w") as f:
            f.write(f"{USER}:{{PLAIN}}{PASS}:{pw.pw_uid}:{pw.pw_gid}::{d}/mail/alice::\n")
        with open(os.path.join(d, "dovecot.conf"), "w") as f:
            f.write(f"""mail_plugins = quota
protocols = imap
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = {pw.pw_uid}
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Sent {{
    special_use = \\Sent
  }}
  mailbox Trash {{
    special_use = \\Trash
  }}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {d}/passwd
}}
userdb {{
  driver = passwd-file
  args = {d}/passwd
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.args.dovecot_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
protocol imap {{
  mail_plugins = quota imap_quota
}}
plugin {{
  quota = count:User quota
  quota_rule = *:storage=100M
  quota_vsizes = yes
}}
""")
        subprocess.run([self.args.dovecot, "-c", os.path.join(d, "dovecot.conf")], check=True)
        wait_port(self.args.dovecot_port)

    def stop_ringmail(self):
        if self.rm:
            self.rm.terminate()
            self.rm.wait(10)
            self.rm = None

    def stop(self):
        self.stop_ringmail()
        pid = os.path.join(self.tmp, "dc", "run", "master.pid")
        if os.path.exists(pid):
            with open(pid) as f:
                os.kill(int(f.read().strip()), 15)
            time.sleep(1)
        shutil.rmtree(self.tmp, ignore_errors=True)


def wait_port(port):
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on {port}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ringmail", default="build/app/ringmail")
    ap.add_argument("--offset", type=int, default=21700, help="ringmail --port-offset")
    ap.add_argument("--dovecot", default="/usr/sbin/dovecot")
    ap.add_argument("--dovecot-port", type=int, default=46143)
    ap.add_argument("--user", default="rmbench", help="owner of Dovecot's mail")
    ap.add_argument("--diff", action="store_true",
                    help="print only the commands whose tagged result (OK/NO/BAD and code) "
                    "or untagged response kinds differ, then a count")
    ap.add_argument("scripts", nargs="+")
    a = ap.parse_args()
    ARGS.diff = a.diff
    srv = Servers(a)
    rm_addr, dc_addr = ("127.0.0.1", a.offset + 143), ("127.0.0.1", a.dovecot_port)

    def session(login=True):
        cs = [Conn(rm_addr), Conn(dc_addr)]
        if login:
            for c in cs:
                c.cmd(f'LOGIN {USER} "{PASS}"')
        return cs

    def run(cs, cmds, quiet=False):
        for cmd in cmds:
            a_, b_ = cs[0].cmd(cmd), cs[1].cmd(cmd)
            if not quiet:
                show(cmd if isinstance(cmd, str) else repr(cmd)[:120], a_, b_)

    def append(c, box, m, flags="", date=""):
        head = f"APPEND {box} " + (f"({flags}) " if flags else "") + (f'"{date}" ' if date else "")
        return c.cmd(head.encode() + b"{%d+}\r\n" % len(m) + m)

    def msg(subject, date="Tue, 1 Jul 2003 10:52:37 +0200", body="hello\r\n", extra=""):
        return (f"From: Sender <sender@remote.example>\r\nTo: {USER}\r\nSubject: {subject}\r\n"
                f"Date: {date}\r\nMessage-ID: <{subject}@x>\r\n{extra}\r\n{body}").encode()

    try:
        for path in a.scripts:
            srv.start()
            print(f"##### {path}")
            with open(path) as f:
                code = compile(f.read(), path, "exec")
            exec(code, {"session": session, "run": run, "append": append, "msg": msg,
                        "Conn": Conn, "show": show})
    finally:
        srv.stop()
    if a.diff:
        print(f"##### {len(DIFFS)} commands answered differently")


if __name__ == "__main__":
    main()
