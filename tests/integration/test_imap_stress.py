r"""A randomized multi-session IMAP consistency checker (what Dovecot's
`imaptest` is for Dovecot) against the real binary.

About ten sessions of one user (plain 143 and 993, some with COMPRESS=DEFLATE,
some with CONDSTORE or QRESYNC enabled) run random commands on three
mailboxes at once while SMTP deliveries arrive in INBOX. Every session keeps
its own model of the selected mailbox from the responses alone and checks
RFC 3501 / RFC 9051 / RFC 7162 rules on every response:

- sequence number -> UID: UIDs strictly increase with the sequence number;
  every `* n FETCH (UID u ...)` names the UID the model holds at n; EXISTS
  never goes below the model's count (only EXPUNGE/VANISHED shrink it); no
  EXPUNGE or VANISHED during FETCH, STORE, SEARCH (RFC 3501 7.4.1); a UID
  once expunged never comes back; UIDNEXT and UIDVALIDITY agree.
- contents: a global record UID -> SHA-256 of the bytes APPENDed (or first
  FETCHed, for SMTP deliveries) follows COPYUID/MOVE; every BODY.PEEK[],
  RFC822.SIZE and Subject header must match it (each message holds a token).
- flags: the result of a session's own STORE matches what it set, and a
  non-silent STORE answers every message it changed (one it left as the
  session knew it may get no FETCH, as in Dovecot; each
  session owns a keyword no other session touches; system flags are checked
  when no other session's STORE overlapped in time); one (mailbox, UID,
  MODSEQ) always has the same flags, whichever session reports it; MODSEQ of
  a message never goes down and a reported change carries a higher one;
  UNCHANGEDSINCE's MODIFIED set names only messages changed since.
- QRESYNC: a session leaves a mailbox with its model and HIGHESTMODSEQ and
  comes back with SELECT (QRESYNC ...): applying VANISHED (EARLIER) and the
  FETCH responses to the old model must give the mailbox as a FETCH of every
  message then shows it (every message changed since is reported, every
  one expunged is in VANISHED).
- at the end: every session NOOPs, its model (UIDs, flags) must equal a
  fresh session's view; after a restart of the server every acknowledged
  APPEND/COPY/SMTP message is there with the same bytes and flags, or was
  announced as expunged (or is a copy made with \Deleted, which another
  session's EXPUNGE may remove before anyone was told it exists).

A message expunged while its FETCH literal is being sent used to close
that connection; the store now finishes the literal (docs/store.md,
"hpin"), and such a close fails the run like any other.

RINGMAIL_STRESS_SEED=n repeats a run's random choices (the interleaving of
the sessions still varies); RINGMAIL_STRESS_SECONDS (default 30) sets how
long the sessions run; RINGMAIL_STRESS_SESSIONS (default 10) how many.
"""
import collections
import hashlib
import os
import random
import re
import smtplib
import socket
import ssl
import sys
import threading
import time
import traceback
import zlib

import pytest

from conftest import HOST

USER = "alice@example.com"
PASSWORD = "alice-Secret-1"
MAILBOXES = ["INBOX", "Stress1", "Stress2"]
SYSFLAGS = ["\\Seen", "\\Answered", "\\Flagged", "\\Draft", "\\Deleted"]
SHARED_KW = ["$shared1", "$shared2"]
NO_EXPUNGE_CMDS = {"FETCH", "STORE", "SEARCH", "UID FETCH", "UID STORE", "UID SEARCH"}


class Violation(Exception):
    pass


# ---- parsing ------------------------------------------------------------------------

def parse_set(s):
    """'1:3,7' -> [1, 2, 3, 7] (no '*')."""
    out = []
    for part in s.split(","):
        if ":" in part:
            a, b = (int(x) for x in part.split(":"))
            a, b = min(a, b), max(a, b)
            out.extend(range(a, b + 1))
        else:
            out.append(int(part))
    return out


def make_set(nums):
    nums = sorted(set(nums))
    out, i = [], 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}:{nums[j]}")
        i = j + 1
    return ",".join(out)


class Lit:
    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data


def tokenize(text, lits):
    """Tokens of one response line: str atoms (a `[` inside an atom runs to
    its `]`), str for quoted strings, Lit for literals, lists for (...)."""
    stack = [[]]
    i, n, li = 0, len(text), 0
    while i < n:
        c = text[i]
        if c == " ":
            i += 1
        elif c == "(":
            stack.append([])
            i += 1
        elif c == ")":
            lst = stack.pop()
            stack[-1].append(lst)
            i += 1
        elif c == '"':
            j, s = i + 1, []
            while text[j] != '"':
                if text[j] == "\\":
                    j += 1
                s.append(text[j])
                j += 1
            stack[-1].append(Lit("".join(s).encode("latin-1")))
            i = j + 1
        elif c == "\x01":
            stack[-1].append(lits[li])
            li += 1
            i += 1
        else:
            j, depth = i, 0
            while j < n:
                ch = text[j]
                if ch == "[":
                    depth += 1
                elif ch == "]":
                    depth -= 1
                elif depth == 0 and ch in " ()":
                    break
                j += 1
            stack[-1].append(text[i:j])
            i = j
    return stack[0]


# ---- the shared truth -----------------------------------------------------------------

class World:
    """What every session learned that is true for all of them."""

    def __init__(self):
        self.lock = threading.RLock()
        self.content = {}        # (mbox, uid) -> (sha, size)
        self.token = {}          # (mbox, uid) -> token
        self.acked = {}          # (mbox, uid) -> how it was acknowledged
        self.copied_from = {}    # (mbox, uid) of a copy -> (mbox, uid) of its source
        self.deleted_seen = set()  # (mbox, uid) ever reported (or stored) with \Deleted
        self.smtp_tokens = set()
        self.expunged = collections.defaultdict(set)    # mbox -> UIDs announced gone
        self.flagtab = {}        # (mbox, uid, modseq) -> frozenset(flags)
        self.uidvalidity = {}
        self.max_uidnext = collections.defaultdict(int)
        self.store_ops = collections.defaultdict(list)  # mbox -> [(start, end, sid, kind)]
        self.missing_from_search = []                   # (mbox, uid) expected expunged
        self.violations = []
        self.stop = threading.Event()
        self.counts = collections.Counter()
        self.outdir = None

    def summary(self):
        return {k: v for k, v in sorted(self.counts.items())
                if not k.startswith(("storing-", "replacing-"))}

    def violation(self, sess, msg):
        if self.outdir:
            with open(os.path.join(self.outdir, f"session{sess.sid}.log"), "wb") as f:
                f.write(b"".join(l if l.endswith(b"\n") else l + b"\n" for l in sess.full))
        with self.lock:
            self.violations.append(f"session {sess.sid} ({sess.desc}): {msg}\n  last lines:\n    "
                                   + "\n    ".join(repr(l)[:300] for l in sess.transcript))
        self.stop.set()
        raise Violation(msg)


def msg_bytes(token, big, rng):
    head = (f"From: Stress <stress@example.com>\r\nTo: {USER}\r\nSubject: stress {token}\r\n"
            f"Date: Fri, 27 Nov 2026 08:00:00 +0000\r\nMessage-ID: <{token}@stress>\r\n\r\n")
    if big:
        n = rng.randint(100_000, 300_000)
        line = f"{token} big body line of the stress test, padding padding padding\r\n"
        body = (line * (n // len(line) + 1))[:n - 2] + "\r\n"
    else:
        body = f"token {token}\r\n" + "x" * rng.randint(0, 300) + "\r\n"
    return (head + body).encode()


def sha(b):
    return hashlib.sha256(b).hexdigest()


def tls_ctx(srv):
    ctx = ssl.create_default_context(cafile=os.path.join(srv.data_dir, "tls", "cert.pem"))
    ctx.check_hostname = False
    return ctx


# ---- one session ----------------------------------------------------------------------

class Session:
    def __init__(self, world, srv, sid, rng, tls=False, compress=False, mode="plain"):
        self.w, self.srv, self.sid, self.rng = world, srv, sid, rng
        self.tls, self.compress, self.mode = tls, compress, mode
        self.desc = f"{'993' if tls else '143'}{'+deflate' if compress else ''} {mode}"
        self.kw = f"$own{sid}"
        self.transcript = collections.deque(maxlen=60)
        self.full = collections.deque(maxlen=3000)   # written to a file on a violation
        self.n = 0
        self.buf = b""
        self.comp = self.dec = None
        self.sock = socket.create_connection((HOST, srv.port(993 if tls else 143)), timeout=30)
        if tls:
            self.sock = tls_ctx(srv).wrap_socket(self.sock)
        self.mbox = None
        self.cur = None          # the command running: its name
        self.reset_model()
        self.saved = {}          # mbox -> QRESYNC snapshot
        greet = self.line()
        assert greet.startswith(b"* OK"), greet
        self.ok(f"LOGIN {USER} \"{PASSWORD}\"")
        if compress:
            self.send(b"z COMPRESS DEFLATE\r\n")
            t = self.line()
            assert t.startswith(b"z OK"), t
            self.comp = zlib.compressobj(6, zlib.DEFLATED, -15)
            self.dec = zlib.decompressobj(-15)
            self.buf = self.dec.decompress(self.buf)
        if mode == "condstore":
            self.ok("ENABLE CONDSTORE")
        elif mode == "qresync":
            self.ok("ENABLE QRESYNC")

    # -- model ------------------------------------------------------------------

    def reset_model(self):
        self.uids = []           # index seq-1 -> UID or None
        self.flags = {}          # uid -> frozenset
        self.modseq = {}         # uid -> int
        self.gone = set()        # UIDs this session saw expunged (or known gone at SELECT)
        self.hms = 0             # HIGHESTMODSEQ as far as this session knows
        self.uidnext = 0
        self.select_uv = None

    @property
    def condstore(self):
        return self.mode in ("condstore", "qresync")

    def check(self, cond, msg):
        if not cond:
            self.w.violation(self, msg)

    # -- I/O --------------------------------------------------------------------

    def send(self, data):
        self.transcript.append(b"C: " + data[:200])
        self.full.append(b"C: " + data[:200])
        if self.comp:
            data = self.comp.compress(data) + self.comp.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def _fill(self):
        d = self.sock.recv(1 << 18)
        if not d:
            raise EOFError(f"session {self.sid}: server closed; buffered {self.buf[:300]!r}")
        self.buf += self.dec.decompress(d) if self.dec else d

    def line(self):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                ln, self.buf = self.buf[:i + 1], self.buf[i + 1:]
                return ln
            self._fill()

    def exact(self, n):
        while len(self.buf) < n:
            self._fill()
        d, self.buf = self.buf[:n], self.buf[n:]
        return d

    def response(self):
        """One response: (text with literals left as {n} markers, [literal bytes])."""
        parts, lits = [], []
        while True:
            ln = self.line()
            m = re.search(rb"~?\{(\d+)\}\r\n$", ln)
            if not m:
                parts.append(ln)
                break
            parts.append(ln[:m.start()] + b"\x01")
            lits.append(Lit(self.exact(int(m.group(1)))))
        text = b"".join(parts)
        self.transcript.append(b"S: " + text[:300])
        self.full.append(b"S: " + text[:300])
        return text.decode("latin-1"), lits

    def cmd(self, text, literal=None, idle=None):
        """Runs one command; every untagged response goes through the model.
        Returns (untagged [(text, tokens)], tagged text)."""
        self.n += 1
        tag = f"s{self.sid}.{self.n}"
        words = text.split()
        name = words[0].upper()
        if name == "UID":
            name = "UID " + words[1].upper()
        self.cur = name
        self.cmd_state = {"exists_before": len(self.uids)}
        if literal is not None:
            self.send(f"{tag} {text} {{{len(literal)}}}\r\n".encode())
        else:
            self.send(f"{tag} {text}\r\n".encode())
        untagged = []
        while True:
            t, lits = self.response()
            if t.startswith("+"):
                if literal is not None:
                    self.send(literal + b"\r\n")
                    literal = None
                    continue
                if idle is not None:
                    end = time.monotonic() + idle
                    self.sock.settimeout(0.05)
                    try:
                        while time.monotonic() < end:
                            try:
                                t2, lits2 = self.response()
                            except (socket.timeout, ssl.SSLWantReadError):
                                continue
                            untagged.append(self.untagged(t2, lits2))
                    finally:
                        self.sock.settimeout(30)
                    self.send(b"DONE\r\n")
                    idle = None
                    continue
                raise AssertionError(f"unexpected continuation {t!r}")
            if t.startswith(tag + " "):
                self.tagged_codes(t)
                if self.cmd_state.get("nil"):
                    self.check("[EXPUNGEISSUED]" in t, f"NIL body without EXPUNGEISSUED: {t!r}")
                self.cur = None
                return untagged, t
            self.check(t.startswith("* "), f"response neither untagged nor ours: {t!r}")
            untagged.append(self.untagged(t, lits))

    def ok(self, text, **kw):
        u, t = self.cmd(text, **kw)
        self.check(t.split()[1] == "OK", f"{text}: {t!r}")
        return u, t

    def tagged_codes(self, t):
        m = re.search(r"\[HIGHESTMODSEQ (\d+)\]", t)
        if m:
            self.note_hms(int(m.group(1)), t)

    def note_hms(self, v, t):
        self.check(v >= 1, f"HIGHESTMODSEQ 0: {t!r}")
        self.hms = max(self.hms, v)

    # -- untagged responses ------------------------------------------------------

    def untagged(self, text, lits):
        toks = tokenize(text[2:].rstrip("\r\n"), lits)
        if not toks:
            return text, toks
        t0 = toks[0]
        if isinstance(t0, str) and t0.isdigit() and len(toks) >= 2:
            n, what = int(t0), toks[1].upper()
            if what == "EXISTS":
                self.on_exists(n, text)
            elif what == "EXPUNGE":
                self.on_expunge(n, text)
            elif what == "FETCH":
                self.on_fetch(n, toks[2], text)
        elif t0 == "VANISHED":
            if isinstance(toks[1], list):
                self.check(toks[1] == ["EARLIER"], f"bad VANISHED {text!r}")
                self.cmd_state.setdefault("vanished_earlier", []).extend(parse_set(toks[2]))
            else:
                self.on_vanished(parse_set(toks[1]), text)
        elif t0 == "OK" and len(toks) > 1 and isinstance(toks[1], str) and toks[1].startswith("["):
            code = text[5:text.index("]")].split()
            if code[0] == "[HIGHESTMODSEQ":
                if "pending" in text:
                    self.cmd_state["pending"] = True
                    self.check(self.cur in NO_EXPUNGE_CMDS or "Updates" in text,
                               f"expunges held back during {self.cur}: {text!r}")
                else:
                    self.note_hms(int(code[1]), text)
            elif code[0] == "[UIDNEXT":
                self.uidnext = int(code[1])
            elif code[0] == "[UIDVALIDITY":
                self.select_uv = int(code[1])
            elif code[0] == "[COPYUID":
                self.cmd_state["copyuid"] = code[1:]
            elif code[0] == "[NOMODSEQ":
                self.check(not self.condstore, "NOMODSEQ")
        elif t0 in ("SEARCH",):
            self.cmd_state["search"] = [int(x) for x in toks[1:] if isinstance(x, str)
                                        and x.isdigit()]
            m = [x for x in toks[1:] if isinstance(x, list)]
            if m:
                self.cmd_state["search_modseq"] = int(m[0][1])
        elif t0 == "BYE":
            self.check(self.cur == "LOGOUT", f"unexpected BYE {text!r}")
        return text, toks

    def on_exists(self, n, text):
        self.cmd_state["exists_n"] = n
        self.check(n >= len(self.uids),
                   f"EXISTS {n} below the {len(self.uids)} messages known (no EXPUNGE first)")
        self.uids.extend([None] * (n - len(self.uids)))

    def forget(self, uid):
        self.gone.add(uid)
        self.flags.pop(uid, None)
        self.modseq.pop(uid, None)
        with self.w.lock:
            self.w.expunged[self.mbox].add(uid)

    def on_expunge(self, n, text):
        self.check(self.cur not in NO_EXPUNGE_CMDS, f"EXPUNGE during {self.cur}: {text!r}")
        self.check(self.mode != "qresync", f"EXPUNGE in a QRESYNC session: {text!r}")
        self.check(1 <= n <= len(self.uids), f"EXPUNGE {n} of {len(self.uids)} messages")
        uid = self.uids.pop(n - 1)
        if uid is not None:
            self.forget(uid)
        self.w.counts["expunge-seen"] += 1

    def on_vanished(self, uids, text):
        self.check(self.cur not in NO_EXPUNGE_CMDS, f"VANISHED during {self.cur}: {text!r}")
        self.check(self.mode == "qresync", f"VANISHED without QRESYNC: {text!r}")
        for u in uids:
            if u in self.uids:
                self.uids.remove(u)
                self.forget(u)
                continue
            # an unknown slot between the known neighbours of u
            lo = max([i for i, x in enumerate(self.uids) if x is not None and x < u], default=-1)
            hi = min([i for i, x in enumerate(self.uids) if x is not None and x > u],
                     default=len(self.uids))
            gap = [i for i in range(lo + 1, hi) if self.uids[i] is None]
            self.check(gap, f"VANISHED {u}: no such message in the session ({text!r})")
            del self.uids[gap[0]]
            self.forget(u)
        self.w.counts["expunge-seen"] += len(uids)

    def place_uid(self, n, uid, text):
        self.check(1 <= n <= len(self.uids), f"FETCH {n} of {len(self.uids)} messages: {text!r}")
        have = self.uids[n - 1]
        if have is not None:
            self.check(have == uid, f"FETCH {n} says UID {uid}, the session has {have}: {text!r}")
            return
        self.check(uid not in self.gone, f"UID {uid} reappeared after its expunge: {text!r}")
        self.check(uid not in self.uids, f"UID {uid} at two sequence numbers: {text!r}")
        prev = max([x for x in self.uids[:n - 1] if x is not None], default=0)
        nxt = min([x for x in self.uids[n:] if x is not None], default=None)
        self.check(uid > prev and (nxt is None or uid < nxt),
                   f"UID {uid} at {n} breaks the order ({prev} before, {nxt} after): {text!r}")
        self.uids[n - 1] = uid

    def on_fetch(self, n, items, text):
        d = {}
        it = iter(items)
        for k in it:
            d[k.upper() if isinstance(k, str) else k] = next(it)
        uid = int(d["UID"]) if "UID" in d else None
        if self.cur == "SELECT":
            # QRESYNC's FETCHes number the new state: check_qresync() places them
            self.check(uid is not None, f"FETCH without UID in SELECT: {text!r}")
        elif uid is None:
            self.check(1 <= n <= len(self.uids), f"FETCH {n} of {len(self.uids)}: {text!r}")
            uid = self.uids[n - 1]
        else:
            self.place_uid(n, uid, text)
        self.cmd_state.setdefault("fetched", {})[uid] = d
        self.cmd_state.setdefault("fetch_seq", {})[uid] = n
        if uid is None:
            return
        key = (self.mbox, uid)
        ms = None
        if "MODSEQ" in d:
            ms = int(d["MODSEQ"][0])
            old = self.modseq.get(uid)
            self.check(old is None or ms >= old, f"MODSEQ of UID {uid} went down {old} -> {ms}")
            self.check(ms >= 1, f"MODSEQ {ms}")
            self.modseq[uid] = ms
        if "FLAGS" in d:
            fl = frozenset(f for f in d["FLAGS"] if f != "\\Recent")
            if self.condstore and self.cur not in ("FETCH", "UID FETCH"):
                # an update or a STORE result: it carries MODSEQ (RFC 7162 3.1)
                self.check(ms is not None, f"FETCH FLAGS without MODSEQ in a CONDSTORE session: {text!r}")
            if ms is not None:
                with self.w.lock:
                    prev, who = self.w.flagtab.setdefault((self.mbox, uid, ms),
                                                          (fl, f"session {self.sid}: {text[:120]!r}"))
                self.check(prev == fl, f"UID {uid} MODSEQ {ms}: flags {sorted(fl)}, "
                           f"another response said {sorted(prev)} ({who})")
            self.flags[uid] = fl
            if "\\Deleted" in fl:
                with self.w.lock:
                    self.w.deleted_seen.add(key)
        for k, v in d.items():
            if not isinstance(k, str):
                continue
            if k == "RFC822.SIZE":
                self.check_size(key, int(v), text)
            elif k.startswith("BODY[") and k == "BODY[]":
                self.check_body(key, v, text)
            elif k.startswith("BODY[HEADER.FIELDS"):
                self.check_subject(key, v, text)

    def check_size(self, key, size, text):
        with self.w.lock:
            c = self.w.content.get(key)
        if c:
            self.check(c[1] == size, f"RFC822.SIZE of {key} is {size}, APPENDed {c[1]}: {text[:100]!r}")

    def check_body(self, key, v, text):
        if v == "NIL":
            self.cmd_state["nil"] = True   # expunged meanwhile: NO [EXPUNGEISSUED]
            return
        self.check(isinstance(v, Lit), f"BODY[] of {key} is not a string: {text[:100]!r}")
        data = v.data
        h = sha(data)
        m = re.search(rb"^Subject: stress (\S+)\r\n", data, re.M)
        self.check(m, f"BODY[] of {key} has no stress Subject: {data[:200]!r}")
        tok = m.group(1).decode()
        with self.w.lock:
            c = self.w.content.setdefault(key, (h, len(data)))
            t = self.w.token.setdefault(key, tok)
        self.check(t == tok, f"{key} holds token {tok}, it was {t}")
        self.check(c[0] == h, f"BODY[] of {key} ({len(data)} bytes) differs from what was "
                   f"stored ({c[1]} bytes)")
        self.w.counts["bodies-checked"] += 1

    def check_subject(self, key, v, text):
        if v == "NIL":
            self.cmd_state["nil"] = True
            return
        data = v.data if isinstance(v, Lit) else b""
        m = re.match(rb"Subject: stress (\S+)\r\n\r\n$", data)
        self.check(m, f"HEADER.FIELDS (Subject) of {key}: {data!r}")
        tok = m.group(1).decode()
        with self.w.lock:
            t = self.w.token.setdefault(key, tok)
        self.check(t == tok, f"{key} holds token {tok}, it was {t}")

    # -- commands ------------------------------------------------------------------

    def known(self):
        return [u for u in self.uids if u is not None]

    def fill(self):
        """Learns the UID, flags and Subject of every slot the model lacks
        (more may arrive meanwhile: a few rounds)."""
        items = "UID FLAGS BODY.PEEK[HEADER.FIELDS (Subject)]" + (" MODSEQ" if self.condstore else "")
        for _ in range(5):
            idx = [i + 1 for i, u in enumerate(self.uids) if u is None]
            with self.w.lock:
                notok = [u for u in self.known() if (self.mbox, u) not in self.w.token]
            if not idx and not notok:
                return
            if idx:
                u, t = self.cmd(f"FETCH {make_set(idx)} ({items})")
                if "EXPUNGEISSUED" in t:
                    self.ok("NOOP")    # the gone ones are announced now
            if notok:
                self.cmd(f"UID FETCH {make_set(notok)} ({items})")

    def select(self, mbox, qresync=None):
        with self.w.lock:
            gone = set(self.w.expunged[mbox])
            nxt = self.w.max_uidnext[mbox]
        old_mbox = self.mbox
        self.reset_model()
        self.mbox = mbox
        self.gone = gone
        arg = ""
        if qresync:
            known = qresync["uids"]
            arg = f" (QRESYNC ({qresync['uv']} {qresync['hms']}"
            if known and self.rng.random() < 0.5:
                arg += f" {make_set(known)}"
                qresync["known_given"] = True
            arg += "))"
            self.flags = dict(qresync["flags"])
            self.modseq = dict(qresync["modseq"])
        elif self.condstore and self.rng.random() < 0.5:
            arg = " (CONDSTORE)"
        u, t = self.cmd(f"SELECT {mbox}{arg}")
        self.check(t.split()[1] == "OK", f"SELECT {mbox}: {t!r}")
        self.check("READ-WRITE" in t, f"SELECT not read-write: {t!r}")
        with self.w.lock:
            uv = self.w.uidvalidity.setdefault(mbox, self.select_uv)
            self.w.max_uidnext[mbox] = max(self.w.max_uidnext[mbox], self.uidnext)
        self.check(self.select_uv == uv, f"UIDVALIDITY of {mbox} changed {uv} -> {self.select_uv}")
        self.check(self.uidnext >= nxt, f"UIDNEXT of {mbox} went down {nxt} -> {self.uidnext}")
        if self.condstore:
            self.check(self.hms >= 1, f"SELECT in a CONDSTORE session without HIGHESTMODSEQ: {u}")
        state = self.cmd_state
        if qresync:
            self.check_qresync(qresync, state, old_mbox)
        self.fill()

    def check_qresync(self, snap, state, old_mbox):
        """The SELECT (QRESYNC) answer applied to the old model."""
        exists = len(self.uids)       # EXISTS extended the list; VANISHED not applied yet
        earlier = set(state.get("vanished_earlier", []))
        for u in earlier:
            if u in self.uids:
                self.uids.remove(u)
            self.gone.add(u)
            self.flags.pop(u, None)
            self.modseq.pop(u, None)
        # EXISTS came before VANISHED: the list was extended from the old length
        fetched = state.get("fetched", {})
        n_exists = state.get("exists_n")
        h_old, h_new = snap["hms"], self.hms
        self.w.counts["qresync-selects"] += 1
        # Rebuild the model: old survivors plus the new UIDs the FETCHes named, then
        # unknown slots up to EXISTS (new messages outside known-uids).
        survivors = [u for u in snap["uids"] if u not in earlier]
        new = sorted(u for u in fetched if u is not None and u not in snap["uids"])
        for u in new:
            self.check(u not in self.gone, f"QRESYNC FETCH of UID {u} expunged before")
            self.check(u > max(snap["uids"], default=0),
                       f"QRESYNC: new UID {u} below a known one ({snap['uids'][-5:]})")
        model = survivors + new
        total = n_exists if n_exists is not None else exists
        self.check(len(model) <= total,
                   f"QRESYNC SELECT: {len(model)} messages after VANISHED (EARLIER) "
                   f"{make_set(earlier) if earlier else '-'} and FETCH, EXISTS {total}: an "
                   f"expunged UID is missing from VANISHED (old {make_set(snap['uids'])})")
        if not snap.get("known_given"):
            self.check(len(model) == total,
                       f"QRESYNC SELECT: {len(model)} messages known, EXISTS {total}: a new "
                       f"message was not reported")
        self.check(all(x < self.uidnext for x in model), f"QRESYNC: a UID >= UIDNEXT {self.uidnext}")
        self.uids = model + [None] * (total - len(model))
        for u, d in fetched.items():
            self.check(u is not None and "MODSEQ" in d and "FLAGS" in d,
                       f"QRESYNC FETCH without UID/FLAGS/MODSEQ: {d}")
            self.check(int(d["MODSEQ"][0]) > h_old,
                       f"QRESYNC reported UID {u} at MODSEQ {d['MODSEQ'][0]} <= {h_old}")
        for u, n in state.get("fetch_seq", {}).items():
            self.check(self.uids[n - 1] == u, f"QRESYNC FETCH {n} UID {u}: the model has "
                       f"{self.uids[n - 1]} there")
        # Now every message: unreported ones must be as they were at h_old.
        state2 = self._verify_all(f"QRESYNC from {h_old} (SELECT said {h_new})")
        f2 = state2.get("fetched", {})
        for u, d in f2.items():
            if u in fetched or u not in snap["flags"] or "MODSEQ" not in d:
                continue
            ms = int(d["MODSEQ"][0])
            if ms <= h_new:
                self.check(ms <= h_old, f"UID {u} changed at MODSEQ {ms} (after {h_old}, up to "
                           f"the SELECT's {h_new}) but QRESYNC SELECT did not report it")
                self.check(frozenset(f for f in d["FLAGS"] if f != "\\Recent") == snap["flags"][u],
                           f"UID {u} unchanged since {h_old} but its flags differ from the "
                           f"session's: {sorted(snap['flags'][u])} -> {d['FLAGS']}")

    def _verify_all(self, why):
        if not self.uids:
            return {}
        self.cmd(f"FETCH 1:{len(self.uids)} (UID FLAGS MODSEQ)")
        return self.cmd_state

    def leave_with_snapshot(self):
        """QRESYNC session: remembers its model, then UNSELECTs. The model
        is complete only after a NOOP that left nothing pending: a FETCH
        may carry MODSEQs above an expunge it may not announce (the server
        says so with `* OK [HIGHESTMODSEQ n] ... pending`, RFC 7162 3.2)."""
        for _ in range(10):
            self.ok("NOOP")
            if self.cmd_state.get("pending") or None in self.uids:
                self.fill()
                continue
            break
        self.check(None not in self.uids, "fill left unknown slots")
        hms = max([self.hms] + list(self.modseq.values()))
        self.saved[self.mbox] = {"uv": self.select_uv, "hms": hms, "uids": list(self.uids),
                                 "flags": dict(self.flags), "modseq": dict(self.modseq)}
        self.ok("UNSELECT")
        self.mbox = None

    def noop(self):
        self.ok(self.rng.choice(["NOOP", "NOOP", "CHECK"]))

    # -- random operations -------------------------------------------------------

    def op_append(self):
        rng = self.rng
        mbox = rng.choice(MAILBOXES)
        big = rng.random() < 0.04
        token = f"a{self.sid}x{self.n}x{rng.randrange(1 << 30):x}"
        data = msg_bytes(token, big, rng)
        fl = ""
        if rng.random() < 0.3:
            fl = " (" + " ".join(rng.sample(["\\Seen", "\\Flagged", self.kw], 2)) + ")"
        with self.w.lock:
            nxt = self.w.max_uidnext[mbox]
            pre = set(self.w.expunged[mbox])   # (others may expunge the new UID at once)
        u, t = self.cmd(f"APPEND {mbox}{fl}", literal=data)
        self.check(t.split()[1] == "OK", f"APPEND: {t!r}")
        m = re.search(r"\[APPENDUID (\d+) (\d+)\]", t)
        self.check(m, f"APPEND without APPENDUID: {t!r}")
        uv, uid = int(m.group(1)), int(m.group(2))
        with self.w.lock:
            wuv = self.w.uidvalidity.setdefault(mbox, uv)
            self.w.content[(mbox, uid)] = (sha(data), len(data))
            self.w.token[(mbox, uid)] = token
            self.w.acked[(mbox, uid)] = "APPEND"
            low = uid in pre or uid < nxt
        self.check(uv == wuv, f"APPENDUID validity {uv} != {wuv}")
        self.check(not low, f"APPENDUID {uid} in {mbox} reuses an old UID")
        self.w.counts["append-big" if big else "append"] += 1

    def pick(self, k=None):
        known = self.known()
        if not known:
            return []
        k = k or self.rng.choice([1, 1, 2, 3, 5])
        return sorted(self.rng.sample(known, min(k, len(known))))

    def note_store(self, kind, t0, replace_only=False):
        """Whether another session's flag change (replace_only: a FLAGS
        replace, which may clear anyone's keyword) overlapped [t0, now]."""
        with self.w.lock:
            ops = self.w.store_ops[self.mbox]
            now = time.monotonic()
            overlap = any(sid != self.sid and s < now and e > t0 and
                          (k == "FLAGS" or not replace_only) for s, e, sid, k in ops)
            if not replace_only:
                ops.append((t0, now, self.sid, kind))
            while ops and ops[0][1] < now - 10:
                ops.pop(0)
            # ops that started before t0 and have not ended are not in the list
            busy = self.w.counts[f"{'replacing' if replace_only else 'storing'}-{self.mbox}"] > 0
        return overlap or busy

    def timed_store(self, cmd, kind):
        """A STORE, and whether another session's STORE overlapped it in time."""
        keys = [f"storing-{self.mbox}"] + ([f"replacing-{self.mbox}"] if kind == "FLAGS" else [])
        with self.w.lock:
            for k in keys:
                self.w.counts[k] += 1
        t0 = time.monotonic()
        try:
            u, t = self.cmd(cmd)
        finally:
            with self.w.lock:
                for k in keys:
                    self.w.counts[k] -= 1
        self.replaced = self.note_store(kind, t0, replace_only=True)
        return u, t, self.note_store(kind, t0)

    def op_store(self):
        rng = self.rng
        uids = self.pick()
        if not uids:
            return
        mode = rng.choice(["+FLAGS", "+FLAGS", "-FLAGS", "-FLAGS", "FLAGS"])
        pool = [self.kw, self.kw, rng.choice(SHARED_KW)] + SYSFLAGS[:4]
        if mode == "+FLAGS" and rng.random() < 0.15:
            pool.append("\\Deleted")
        fl = sorted(set(rng.sample(pool, rng.randint(1, 3))))
        if mode == "FLAGS" and rng.random() < 0.3:
            fl = []
        silent = rng.random() < 0.3
        unch = None
        if self.condstore and rng.random() < 0.25:
            ms = [self.modseq[u] for u in uids if u in self.modseq]
            if ms:
                unch = min(ms)
        use_uid = rng.random() < 0.7
        if use_uid:
            target = make_set(uids)
        else:
            target = make_set([self.uids.index(u) + 1 for u in uids])
        mod = f" (UNCHANGEDSINCE {unch})" if unch is not None else ""
        cmd = f"{'UID ' if use_uid else ''}STORE {target}{mod} {mode}{'.SILENT' if silent else ''} ({' '.join(fl)})"
        before = {u: self.flags.get(u) for u in uids}
        seq_uids = list(self.uids)
        if "\\Deleted" in fl and mode != "-FLAGS":
            with self.w.lock:
                self.w.deleted_seen.update((self.mbox, x) for x in uids)
        u, t, concurrent = self.timed_store(cmd, mode)
        if t.split()[1] != "OK":
            self.check("EXPUNGEISSUED" in t or "NONEXISTENT" in t, f"{cmd}: {t!r}")
            return
        st = self.cmd_state
        fetched = st.get("fetched", {})
        m = re.search(r"\[MODIFIED ([\d:,]+)\]", t)
        modified = set(parse_set(m.group(1))) if m else set()
        if not use_uid:
            # RFC 7162 3.1.3: message numbers for STORE, UIDs for UID STORE
            self.check(all(1 <= x <= len(seq_uids) for x in modified), f"MODIFIED {modified}")
            modified = {seq_uids[x - 1] for x in modified}
        if modified:
            self.check(unch is not None, f"MODIFIED without UNCHANGEDSINCE: {t!r}")
            self.w.counts["store-modified"] += 1
        want = set(fl)
        for uid in uids:
            if uid in modified:
                continue
            d = fetched.get(uid)
            if silent:
                if d is not None and "FLAGS" in d:
                    continue          # reported because another session changed it too
                if uid in self.uids and before.get(uid) is not None and uid not in self.gone:
                    cur = self.flags.get(uid, before[uid])
                    if mode == "+FLAGS":
                        new = frozenset(cur | want)
                    elif mode == "-FLAGS":
                        new = frozenset(cur - want)
                    else:
                        new = frozenset(want)
                    self.flags[uid] = new
                    if d is not None and "MODSEQ" in d:
                        # What this client must now believe is the state at
                        # that MODSEQ: a change by another session would
                        # have come with FLAGS (RFC 3501 6.4.6).
                        ms = int(d["MODSEQ"][0])
                        with self.w.lock:
                            prev, who = self.w.flagtab.setdefault(
                                (self.mbox, uid, ms), (new, f"session {self.sid}: {cmd} (computed)"))
                        self.check(prev == new, f"{cmd}: UID {uid} MODSEQ {ms}: the session "
                                   f"must believe {sorted(new)} (no FLAGS came), another "
                                   f"response said {sorted(prev)} ({who})")
                continue
            if d is None:
                # no answer: the STORE changed nothing the client knew (no
                # FETCH then, as in Dovecot), or the message is gone
                # (expunged by another session)
                cur = self.flags.get(uid, before.get(uid)) \
                    if uid in self.uids and uid not in self.gone else None
                if cur is not None:
                    new = cur | want if mode == "+FLAGS" else cur - want if mode == "-FLAGS" \
                        else frozenset(want)
                    if new == cur:
                        continue
                self.w.missing_from_search.append((self.mbox, uid))
                continue
            self.check("FLAGS" in d, f"{cmd}: FETCH without FLAGS {d}")
            got = set(f for f in d["FLAGS"] if f != "\\Recent")
            own = {self.kw} & want
            if mode == "+FLAGS":
                if concurrent and self.replaced:
                    own = set()   # another session's FLAGS replace may have cleared it
                self.check(want <= got if not concurrent else own <= got,
                           f"{cmd}: UID {uid} has {sorted(got)}, missing {sorted(want - got)}")
            elif mode == "-FLAGS":
                self.check(not (want & got) if not concurrent else not (own & got),
                           f"{cmd}: UID {uid} still has {sorted(want & got)}")
            elif not concurrent:
                self.check(got == want, f"{cmd}: UID {uid} has {sorted(got)}")
            if self.condstore:
                self.check("MODSEQ" in d, f"{cmd}: no MODSEQ in {d}")
            if unch is not None and "MODSEQ" in d and before.get(uid) is not None \
                    and frozenset(got) != before[uid]:
                self.check(int(d["MODSEQ"][0]) > unch, f"{cmd}: UID {uid} changed at MODSEQ "
                           f"{d['MODSEQ'][0]} <= UNCHANGEDSINCE {unch}")
        if modified:
            # each one really changed since unch
            live = [x for x in modified if x in self.uids]
            if live:
                self.cmd(f"UID FETCH {make_set(live)} (MODSEQ)")
                for x, d in self.cmd_state.get("fetched", {}).items():
                    self.check(int(d["MODSEQ"][0]) > unch,
                               f"{cmd}: MODIFIED names UID {x} at MODSEQ {d['MODSEQ'][0]}")
        self.w.counts["store"] += 1

    def op_copy_move(self):
        rng = self.rng
        uids = self.pick()
        if not uids:
            return
        dst = rng.choice([m for m in MAILBOXES if m != self.mbox])
        verb = rng.choice(["COPY", "MOVE"])
        with self.w.lock:
            pre = set(self.w.expunged[dst])
            nxt = self.w.max_uidnext[dst]
        u, t = self.cmd(f"UID {verb} {make_set(uids)} {dst}")
        if t.split()[1] != "OK":
            self.check("EXPUNGEISSUED" in t or "NONEXISTENT" in t, f"UID {verb}: {t!r}")
            return
        m = re.search(r"\[COPYUID (\d+) ([\d:,]+) ([\d:,]+)\]", t)
        code = m.groups() if m else self.cmd_state.get("copyuid")
        if code is None:
            # nothing was copied: every UID must be gone
            self.w.missing_from_search.extend((self.mbox, x) for x in uids)
            return
        uv, src, dst_uids = int(code[0]), parse_set(code[1]), parse_set(code[2])
        self.check(len(src) == len(dst_uids), f"COPYUID sets differ in length: {code}")
        with self.w.lock:
            wuv = self.w.uidvalidity.setdefault(dst, uv)
            for s, d in zip(src, dst_uids):
                skey, dkey = (self.mbox, s), (dst, d)
                self.check(d not in pre and d >= nxt, f"COPYUID reuses UID {d} of {dst}")
                if skey in self.w.content:
                    self.w.content[dkey] = self.w.content[skey]
                if skey in self.w.token:
                    self.w.token[dkey] = self.w.token[skey]
                self.w.acked[dkey] = verb
                self.w.copied_from[dkey] = skey
        self.check(uv == wuv, f"COPYUID validity {uv} != {wuv}")
        for s in src:
            self.check(s in uids, f"COPYUID names UID {s} not asked for")
        if verb == "MOVE":
            for s in src:
                self.check(s not in self.uids, f"UID MOVE of {s}: no EXPUNGE/VANISHED for it")
        self.w.counts[verb.lower()] += 1

    def op_expunge(self):
        rng = self.rng
        uids = self.pick(rng.randint(1, 4))
        if not uids:
            return
        with self.w.lock:
            self.w.deleted_seen.update((self.mbox, x) for x in uids)
        _, _, conc = self.timed_store(f"UID STORE {make_set(uids)} +FLAGS.SILENT (\\Deleted)", "+")
        t0 = time.monotonic()
        sent = self.cmd_state.get("fetched", {})
        for x in uids:
            # FLAGS in the answer (another session changed it too) is the truth
            if x in self.flags and "FLAGS" not in sent.get(x, {}):
                self.flags[x] = self.flags[x] | {"\\Deleted"}
        if rng.random() < 0.5:
            u, t = self.cmd(f"UID EXPUNGE {make_set(uids)}")
        else:
            u, t = self.cmd("EXPUNGE")
        self.check(t.split()[1] == "OK", f"EXPUNGE: {t!r}")
        conc = self.note_store("expunge", t0) or conc
        if not conc:
            for x in uids:
                self.check(x not in self.uids, f"EXPUNGE: {x} (\\Deleted) still in the session")
        if self.condstore:
            self.check("HIGHESTMODSEQ" in t, f"EXPUNGE OK without HIGHESTMODSEQ: {t!r}")
        self.w.counts["expunge"] += 1

    def op_fetch(self):
        rng = self.rng
        uids = self.pick(rng.choice([1, 2, 4, 8]))
        if not uids:
            return
        items = rng.sample(["FLAGS", "UID", "RFC822.SIZE", "BODY.PEEK[]",
                            "BODY.PEEK[HEADER.FIELDS (Subject)]"], rng.randint(1, 4))
        if self.condstore and rng.random() < 0.5:
            items.append("MODSEQ")
        if rng.random() < 0.6:
            cmd = f"UID FETCH {make_set(uids)} ({' '.join(items)})"
        else:
            cmd = f"FETCH {make_set([self.uids.index(u) + 1 for u in uids])} ({' '.join(items)})"
        seen = rng.random() < 0.1
        if seen:
            # not PEEK: sets \Seen, and FLAGS comes with it (a flag change
            # for the other sessions' exactness checks)
            cmd = f"UID FETCH {make_set(uids)} (BODY[HEADER.FIELDS (Subject)])"
        elif self.condstore and rng.random() < 0.2:
            cmd += f" (CHANGEDSINCE {max(1, self.hms - rng.randint(0, 20))})"
        unseen = [x for x in uids if "\\Seen" not in self.flags.get(x, {"\\Seen"})]
        if seen:
            u, t, concurrent = self.timed_store(cmd, "+")
        else:
            u, t = self.cmd(cmd)
        self.check(t.split()[1] == "OK" or "EXPUNGEISSUED" in t, f"{cmd}: {t!r}")
        if seen and not concurrent:
            for x in unseen:
                d = self.cmd_state.get("fetched", {}).get(x)
                if d is not None and "BODY[HEADER.FIELDS (SUBJECT)]" in d and \
                        d["BODY[HEADER.FIELDS (SUBJECT)]"] != "NIL":
                    self.check("FLAGS" in d and "\\Seen" in d["FLAGS"],
                               f"{cmd}: UID {x} was unseen, the FETCH set \\Seen: no FLAGS "
                               f"(\\Seen) in {d}")
        self.w.counts["fetch-seen" if seen else "fetch"] += 1

    def op_search(self):
        rng = self.rng
        known_before = list(self.uids)
        if rng.random() < 0.5:
            u, t = self.cmd("UID SEARCH ALL")
            self.check(t.split()[1] == "OK", f"UID SEARCH: {t!r}")
            res = set(self.cmd_state.get("search", []))
            for x in res:
                self.check(x not in self.gone, f"UID SEARCH ALL found expunged UID {x}")
            k = set(x for x in known_before if x is not None)
            extra = res - k
            self.check(len(extra) <= known_before.count(None),
                       f"UID SEARCH ALL: UIDs {sorted(extra)} not in the session")
            for x in k - res:
                self.w.missing_from_search.append((self.mbox, x))
        else:
            key = rng.choice(["ALL", "FLAGGED", "UNSEEN", f"KEYWORD {self.kw}", "DELETED",
                              f"UID {make_set(self.pick(3) or [1])}", "SUBJECT stress"])
            u, t = self.cmd(f"SEARCH {key}")
            self.check(t.split()[1] == "OK", f"SEARCH: {t!r}")
            for x in self.cmd_state.get("search", []):
                self.check(1 <= x <= len(known_before), f"SEARCH {key}: {x} of {len(known_before)}")
        self.w.counts["search"] += 1

    def op_idle(self):
        self.cmd("IDLE", idle=self.rng.uniform(0.05, 0.4))
        self.w.counts["idle"] += 1

    def op_switch(self):
        """Leave the mailbox; come back (QRESYNC sessions resync) or go elsewhere."""
        rng = self.rng
        if self.mode == "qresync":
            mb = self.mbox
            self.leave_with_snapshot()
            time.sleep(rng.uniform(0.05, 0.5))
            target = mb if rng.random() < 0.6 else rng.choice(MAILBOXES)
            self.select(target, qresync=self.saved.get(target))
        else:
            self.select(rng.choice(MAILBOXES))
        self.w.counts["select"] += 1

    def step(self):
        rng = self.rng
        r = rng.random()
        if len(self.uids) > 80 and r < 0.3:
            self.op_expunge()
        elif r < 0.15:
            self.op_append()
        elif r < 0.40:
            self.op_store()
        elif r < 0.47:
            self.op_copy_move()
        elif r < 0.53:
            self.op_expunge()
        elif r < 0.70:
            self.op_fetch()
        elif r < 0.78:
            self.op_search()
        elif r < 0.88:
            self.noop()
        elif r < 0.94:
            self.op_idle()
        else:
            self.op_switch()
        if self.mbox:
            self.fill()

    def settle(self):
        """All sessions stopped: announce everything, learn everything."""
        self.ok("NOOP")
        self.fill()
        self.ok("NOOP")

    def close(self):
        try:
            self.cmd("LOGOUT")
        except (EOFError, OSError):
            pass
        self.sock.close()


def truth(srv, mbox):
    """A fresh session's view: [(uid, flags, modseq, sha, token)]."""
    w = World()
    s = Session(w, srv, 99, random.Random(0), mode="condstore")
    s.mbox = mbox
    u, t = s.cmd(f"SELECT {mbox}")
    assert " OK " in t, t
    out = []
    if s.uids:
        s.cmd("FETCH 1:* (UID FLAGS MODSEQ RFC822.SIZE BODY.PEEK[])")
        for x in s.uids:
            d = s.cmd_state["fetched"][x]
            out.append((x, frozenset(d["FLAGS"]) - {"\\Recent"}, int(d["MODSEQ"][0]),
                        sha(d["BODY[]"].data), w.token[(mbox, x)]))
    s.close()
    return out, s.select_uv, s.uidnext


# ---- the test -------------------------------------------------------------------------

def sanitizer_check(srv):
    log = srv.log()
    bad = [l for l in log.splitlines() if "ERROR: AddressSanitizer" in l or "LeakSanitizer" in l
           or ("runtime error" in l and os.environ.get("RINGMAIL_TEST_UBSAN_STRICT"))]
    assert not bad, log[-8000:]


def smtp_worker(world, srv, rng, errors):
    n = 0
    while not world.stop.is_set():
        time.sleep(rng.uniform(0.2, 0.8))
        token = f"smtp{n}x{rng.randrange(1 << 30):x}"
        n += 1
        msg = (f"From: Remote <r@remote.example>\r\nTo: {USER}\r\nSubject: stress {token}\r\n"
               f"Message-ID: <{token}@remote>\r\n\r\nsmtp body {token}\r\n").encode()
        try:
            with smtplib.SMTP(HOST, srv.port(25), timeout=30) as s:
                s.sendmail("r@remote.example", [USER], msg)
        except Exception as e:  # noqa: BLE001
            errors.append(f"SMTP: {e!r}")
            world.stop.set()
            return
        with world.lock:
            world.smtp_tokens.add(token)
        world.counts["smtp"] += 1


def session_worker(sess, deadline, errors, done_ev):
    try:
        sess.select(sess.rng.choice(MAILBOXES))
        while time.monotonic() < deadline and not sess.w.stop.is_set():
            sess.step()
    except Violation:
        pass
    except Exception:  # noqa: BLE001
        errors.append(f"session {sess.sid} ({sess.desc}): {traceback.format_exc()}\n  last:\n    "
                      + "\n    ".join(repr(l)[:300] for l in sess.transcript))
        sess.w.stop.set()
    finally:
        done_ev.set()


def test_imap_stress(ringmail, tmp_path):
    seed = int(os.environ.get("RINGMAIL_STRESS_SEED") or random.randrange(1 << 32))
    seconds = float(os.environ.get("RINGMAIL_STRESS_SECONDS", "30"))
    nsess = int(os.environ.get("RINGMAIL_STRESS_SESSIONS", "10"))
    print(f"RINGMAIL_STRESS_SEED={seed} RINGMAIL_STRESS_SECONDS={seconds} "
          f"RINGMAIL_STRESS_SESSIONS={nsess}")
    data = tmp_path / "data"
    data.mkdir()
    (data / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
    srv = ringmail(data_dir=str(data), threads=2)
    master = random.Random(seed)
    world = World()
    world.outdir = str(tmp_path)
    setup = Session(world, srv, 0, random.Random(seed), mode="plain")
    for m in MAILBOXES[1:]:
        setup.ok(f"CREATE {m}")
    for i in range(12):
        setup.op_append()
    setup.close()

    modes = ["plain", "condstore", "qresync"]
    sessions = []
    for i in range(1, nsess + 1):
        sessions.append(Session(world, srv, i, random.Random(master.randrange(1 << 62)),
                                tls=(i % 3 == 1), compress=(i % 4 == 2), mode=modes[i % 3]))
    errors = []
    deadline = time.monotonic() + seconds
    threads, dones = [], []
    for s in sessions:
        ev = threading.Event()
        th = threading.Thread(target=session_worker, args=(s, deadline, errors, ev), daemon=True)
        threads.append(th)
        dones.append(ev)
    smtp_th = threading.Thread(target=smtp_worker,
                               args=(world, srv, random.Random(master.randrange(1 << 62)), errors),
                               daemon=True)
    for th in threads:
        th.start()
    smtp_th.start()
    for th, s in zip(threads, sessions):
        th.join(max(1, deadline + 120 - time.monotonic()))
        if th.is_alive():
            stack = "".join(traceback.format_stack(sys._current_frames()[th.ident]))
            pytest.fail(f"seed {seed}: session {s.sid} ({s.desc}) hung:\n{stack}\n"
                        + "\n".join(repr(l)[:300] for l in s.transcript))
    world.stop.set()
    smtp_th.join(60)

    def report():
        return (f"seed {seed}: " + "\n".join(world.violations + errors)
                + f"\ncounts: {world.summary()}\nserver log tail:\n{srv.log()[-3000:]}")

    assert not world.violations and not errors, report()

    # settle every session and compare its model with a fresh session's view
    for s in sessions:
        if s.mbox is None:
            s.select(s.rng.choice(MAILBOXES))
    for s in sessions:
        s.settle()
    views = {}
    for m in MAILBOXES:
        views[m] = truth(srv, m)
    try:
        for s in sessions:
            view, uv, uidnext = views[s.mbox]
            s.check(s.uids == [x[0] for x in view],
                    f"after NOOP the session has {make_set(s.known())} in {s.mbox}, "
                    f"the mailbox {make_set([x[0] for x in view])}")
            for uid, fl, ms, _, _ in view:
                s.check(s.flags.get(uid) == fl, f"after NOOP UID {uid} in {s.mbox}: the session "
                        f"has flags {sorted(s.flags.get(uid) or [])}, the mailbox {sorted(fl)}")
                if s.condstore and uid in s.modseq:
                    s.check(s.modseq[uid] <= ms, f"UID {uid}: MODSEQ {s.modseq[uid]} > {ms}")
    except Violation:
        pass
    assert not world.violations, report()
    for s in sessions:
        s.close()

    # everything acknowledged is there or was announced as expunged; bytes as stored
    def check_acked(views, when):
        bad = []
        present = {}
        for m, (view, uv, _) in views.items():
            assert uv == world.uidvalidity[m], (m, uv)
            for uid, fl, ms, h, tok in view:
                present[tok] = (m, uid)
                c = world.content.get((m, uid))
                if c and c[0] != h:
                    bad.append(f"{when}: {m} UID {uid} bytes differ from those stored")
                if world.token.get((m, uid), tok) != tok:
                    bad.append(f"{when}: {m} UID {uid} holds {tok}, not {world.token[(m, uid)]}")
        def maybe_deleted(key):
            # a copy keeps its flags: made with \Deleted, another session's
            # EXPUNGE may remove it before any session was told it exists
            while key is not None:
                if key in world.deleted_seen:
                    return True
                key = world.copied_from.get(key)
            return False

        for (m, uid), how in world.acked.items():
            if uid not in [x[0] for x in views[m][0]] and uid not in world.expunged[m] \
                    and not maybe_deleted((m, uid)):
                bad.append(f"{when}: {how} {m} UID {uid} lost (no EXPUNGE/VANISHED announced)")
        gone_tokens = {world.token.get((m, u)) for m in MAILBOXES for u in world.expunged[m]}
        for tok in world.smtp_tokens:
            if tok not in present and tok not in gone_tokens:
                bad.append(f"{when}: SMTP message {tok} (250) lost")
        for m, uid in world.missing_from_search:
            if uid in [x[0] for x in views[m][0]]:
                bad.append(f"{when}: {m} UID {uid} was left out of a SEARCH/STORE answer but exists")
        return bad

    bad = check_acked(views, "before restart")
    assert not bad, f"seed {seed}:\n" + "\n".join(bad[:30]) + f"\ncounts: {world.summary()}"
    assert srv.stop() == 0, srv.log()[-3000:]
    sanitizer_check(srv)    # (the restart starts a new log)
    srv.start()
    after = {m: truth(srv, m) for m in MAILBOXES}
    for m in MAILBOXES:
        b4, af = {x[0]: x for x in views[m][0]}, {x[0]: x for x in after[m][0]}
        diff = [f"UID {u}: before {b4.get(u)}, after {af.get(u)}"
                for u in sorted(set(b4) | set(af)) if b4.get(u) != af.get(u)]
        assert not diff, f"seed {seed}: {m} differs after the restart:\n" + "\n".join(diff[:20])
        assert after[m][1] == views[m][1]
        assert after[m][2] >= views[m][2]
    sanitizer_check(srv)
    print(f"seed {seed}: {world.summary()}; "
          f"{sum(len(v[0]) for v in views.values())} messages at the end")
