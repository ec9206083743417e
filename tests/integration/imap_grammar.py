"""A strict reader and checker of IMAP server responses (RFC 9051 section 9,
with the RFC 3501 forms an IMAP4rev1 session gets: RECENT, LSUB, SEARCH),
for the tests that replay what real clients send.

    reader = Responses(sock)
    resp = reader.next()          # one whole response: its lines and literals
    check(resp)                   # raises GrammarError naming what is wrong
    tree = check(resp)            # ("untagged"|"tagged"|"cont", tag, words, parsed)

A response is bytes up to its last CRLF with every literal inside it. The
checker is a recursive-descent parser over those bytes: anything the grammar
does not allow (a missing SP, a stray space, an unescaped quote, a NUL in a
literal, a FETCH item with a malformed value, a BODYSTRUCTURE that is not
one) is an error. It knows the responses a client sees in the sessions the
tests replay; an unknown untagged response is an error too.
"""
import re

from conftest import recv_line


class GrammarError(AssertionError):
    pass


class Responses:
    """Reads whole responses (a line, and after each literal header the
    literal's bytes and the rest of the line) from a socket."""

    LITERAL_END = re.compile(rb"~?\{(\d+)\}\r\n$")

    def __init__(self, sock):
        self.sock = sock

    def _exact(self, n, timeout):
        # recv_line's read-ahead buffer holds what came after the last line
        from conftest import _readahead
        buf = _readahead.setdefault(self.sock, bytearray())
        while len(buf) < n:
            self.sock.settimeout(timeout)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise GrammarError(f"EOF inside a literal of {n} bytes")
            buf.extend(chunk)
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def next(self, timeout=10.0):
        out = b""
        while True:
            line = recv_line(self.sock, timeout)
            if not line:
                if out:
                    raise GrammarError(f"EOF inside a response: {out!r}")
                return b""
            if not line.endswith(b"\r\n"):
                raise GrammarError(f"line without CRLF: {line!r}")
            out += line
            m = self.LITERAL_END.search(line)
            if not m:
                return out
            out += self._exact(int(m.group(1)), timeout)

    def until(self, tag, timeout=10.0):
        """Responses up to and including the tagged one; each is checked."""
        got = []
        while True:
            r = self.next(timeout)
            if not r:
                raise GrammarError(f"EOF before {tag}: {got!r}")
            check(r)
            got.append(r)
            if r.startswith(tag.encode() + b" "):
                return got


# ---- the parser ------------------------------------------------------------------------

ATOM_SPECIALS = set(b'(){ %*"\\]') | set(range(0x00, 0x20)) | {0x7F}
MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


class P:
    def __init__(self, data, utf8=False):
        self.d = data
        self.i = 0
        self.utf8 = utf8

    def fail(self, what):
        raise GrammarError(f"{what} at byte {self.i}: ...{self.d[max(0, self.i - 60):self.i]!r}"
                           f" ^ {self.d[self.i:self.i + 60]!r}")

    def peek(self, n=1):
        return self.d[self.i:self.i + n]

    def eat(self, s):
        if self.d[self.i:self.i + len(s)] != s:
            self.fail(f"expected {s!r}")
        self.i += len(s)

    def sp(self):
        self.eat(b" ")

    def at_end(self):
        return self.d[self.i:] == b"\r\n"

    def end(self):
        if not self.at_end():
            self.fail("expected CRLF ending the response")

    def word(self):
        """Atom characters (no ']'), as for a keyword or an atom."""
        j = self.i
        while j < len(self.d) and self.d[j] not in ATOM_SPECIALS:
            j += 1
        if j == self.i:
            self.fail("expected an atom")
        w = self.d[self.i:j]
        self.i = j
        return w

    def kw(self, *choices):
        w = self.word()
        if choices and w.upper() not in choices:
            self.fail(f"expected one of {choices}, got {w!r}")
        return w.upper()

    def number(self, nz=False, bits=32):
        m = re.compile(rb"\d+").match(self.d, self.i)
        if not m:
            self.fail("expected a number")
        s = m.group()
        v = int(s)
        if v >= 1 << bits:
            self.fail(f"number {v} does not fit {bits} bits")
        if nz and (v == 0 or s.startswith(b"0")):
            self.fail("expected nz-number")
        self.i = m.end()
        return v

    def quoted(self):
        self.eat(b'"')
        out = bytearray()
        while True:
            if self.i >= len(self.d):
                self.fail("unterminated quoted string")
            c = self.d[self.i]
            if c == 0x22:
                self.i += 1
                break
            if c == 0x5C:
                nxt = self.d[self.i + 1:self.i + 2]
                if nxt not in (b'"', b"\\"):
                    self.fail("bad escape in quoted string")
                out += nxt
                self.i += 2
                continue
            if c in (0x0D, 0x0A, 0x00):
                self.fail("CR, LF or NUL in a quoted string")
            if c >= 0x80 and not self.utf8:
                self.fail("8-bit byte in a quoted string (IMAP4rev1 session)")
            out.append(c)
            self.i += 1
        if self.utf8:
            try:
                bytes(out).decode("utf-8")
            except UnicodeDecodeError:
                self.fail("quoted string is not UTF-8")
        return bytes(out)

    def literal(self, binary=False):
        if binary and self.peek() == b"~":
            self.i += 1
            binary_lit = True
        else:
            binary_lit = False
        self.eat(b"{")
        n = self.number()
        self.eat(b"}\r\n")
        body = self.d[self.i:self.i + n]
        if len(body) != n:
            self.fail("short literal")
        if not binary_lit and b"\0" in body:
            self.fail("NUL in a literal (CHAR8 excludes it; only literal8 may hold one)")
        self.i += n
        return body

    def string(self):
        c = self.peek()
        if c == b'"':
            return self.quoted()
        if c == b"{":
            return self.literal()
        self.fail("expected a string")

    def nstring(self):
        if self.peek(3).upper() == b"NIL":
            self.i += 3
            return None
        return self.string()

    def astring(self):
        c = self.peek()
        if c in (b'"', b"{"):
            return self.string()
        j = self.i
        while j < len(self.d) and (self.d[j] not in ATOM_SPECIALS or self.d[j] == 0x5D):
            j += 1
        if j == self.i:
            self.fail("expected an astring")
        w = self.d[self.i:j]
        self.i = j
        return w

    def nil(self):
        if self.peek(3).upper() != b"NIL":
            return False
        self.i += 3
        return True

    def list_of(self, item, allow_empty=True):
        """'(' item *(SP item) ')'."""
        self.eat(b"(")
        out = []
        if self.peek() == b")":
            if not allow_empty:
                self.fail("empty list")
            self.i += 1
            return out
        while True:
            out.append(item())
            if self.peek() == b")":
                self.i += 1
                return out
            self.sp()

    # -- pieces --------------------------------------------------------------------------

    def flag(self, perm=False, fetch=False):
        if self.peek() == b"\\":
            self.i += 1
            if perm and self.peek() == b"*":
                self.i += 1
                return b"\\*"
            return b"\\" + self.word()
        return self.word()

    def mailbox(self):
        return self.astring()

    def resp_text(self):
        """["[" resp-text-code "]" SP] text (text may be empty, RFC 9051)."""
        code = None
        if self.peek() == b"[":
            self.i += 1
            code = self.word().upper()
            if self.peek() == b" ":
                self.i += 1
                j = self.d.find(b"]", self.i)
                if j < 0 or b"\r" in self.d[self.i:j]:
                    self.fail("unterminated response code")
                arg = self.d[self.i:j]
                self.check_code(code, arg)
                self.i = j
            self.eat(b"]")
            if self.at_end():
                return code
            self.sp()
        text = self.d[self.i:-2]
        if any(c in (0x0D, 0x0A, 0x00) for c in text):
            self.fail("CR, LF or NUL in response text")
        self.i = len(self.d) - 2
        return code

    def check_code(self, code, arg):
        sub = P(arg + b"\r\n", self.utf8)
        if code in (b"UIDVALIDITY", b"UIDNEXT", b"UNSEEN"):
            sub.number(nz=True)
        elif code in (b"HIGHESTMODSEQ",):
            # RFC 7162 7: mod-sequence-value, 1 <= n < 2^63 (STATUS's
            # mod-sequence-valzer may be 0: "no persistent MODSEQs")
            sub.number(nz=True, bits=63)
        elif code == b"PERMANENTFLAGS":
            sub.list_of(lambda: sub.flag(perm=True))
        elif code == b"CAPABILITY":
            while True:
                sub.word()
                if sub.at_end():
                    break
                sub.sp()
        elif code == b"APPENDUID":
            sub.number(nz=True)
            sub.sp()
            sub.seqset(uid=True)
        elif code == b"COPYUID":
            sub.number(nz=True)
            sub.sp()
            sub.seqset(uid=True)
            sub.sp()
            sub.seqset(uid=True)
        elif code == b"BADCHARSET":
            sub.list_of(sub.astring, allow_empty=False)
        else:
            return  # other codes carry free text
        sub.end()

    def seqset(self, uid=False):
        def one():
            if self.peek() == b"*":
                self.i += 1
            else:
                self.number(nz=True)
        while True:
            one()
            if self.peek() == b":":
                self.i += 1
                one()
            if self.peek() != b",":
                return
            self.i += 1

    def date_time(self):
        s = self.quoted().decode()
        m = re.fullmatch(r"([ \d]\d)-([A-Z][a-z]{2})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-]\d{4})", s)
        if not m or m.group(2) not in MONTHS:
            self.fail(f"bad date-time {s!r}")
        return s

    # -- envelope and body structure (RFC 9051 9) -----------------------------------------

    def address(self):
        self.eat(b"(")
        self.nstring()
        self.sp()
        self.nstring()
        self.sp()
        self.nstring()
        self.sp()
        self.nstring()
        self.eat(b")")

    def addresses(self):
        if self.nil():
            return None
        self.eat(b"(")
        n = 0
        while self.peek() == b"(":
            self.address()  # addresses follow each other without SP
            n += 1
        self.eat(b")")
        if n == 0:
            self.fail("empty address list (must be NIL)")
        return n

    def envelope(self):
        self.eat(b"(")
        self.nstring()  # date
        self.sp()
        self.nstring()  # subject
        for _ in range(6):  # from sender reply-to to cc bcc
            self.sp()
            self.addresses()
        self.sp()
        self.nstring()  # in-reply-to
        self.sp()
        self.nstring()  # message-id
        self.eat(b")")

    def body_fld_param(self):
        if self.nil():
            return
        self.eat(b"(")
        while True:
            self.string()
            self.sp()
            self.string()
            if self.peek() == b")":
                self.i += 1
                return
            self.sp()

    def body_fld_dsp(self):
        if self.nil():
            return
        self.eat(b"(")
        self.string()
        self.sp()
        self.body_fld_param()
        self.eat(b")")

    def body_fld_lang(self):
        if self.peek() == b"(":
            self.list_of(self.string, allow_empty=False)
        else:
            self.nstring()

    def body_extension(self):
        c = self.peek()
        if c == b"(":
            self.list_of(self.body_extension, allow_empty=False)
        elif c.isdigit():
            self.number(bits=63)
        else:
            self.nstring()

    def body_ext_tail(self):
        """[SP body-fld-dsp [SP body-fld-lang [SP body-fld-loc *(SP body-extension)]]]"""
        if self.peek() != b" ":
            return
        self.sp()
        self.body_fld_dsp()
        if self.peek() != b" ":
            return
        self.sp()
        self.body_fld_lang()
        if self.peek() != b" ":
            return
        self.sp()
        self.nstring()  # location
        while self.peek() == b" ":
            self.sp()
            self.body_extension()

    def body(self, extensible):
        self.eat(b"(")
        if self.peek() == b"(":
            parts = 0
            while self.peek() == b"(":
                self.body(extensible)  # 1*body: no SP between parts
                parts += 1
            self.sp()
            self.string()  # media-subtype
            if self.peek() == b" ":
                if not extensible:
                    self.fail("extension data in BODY (only BODYSTRUCTURE has it)")
                self.sp()
                self.body_fld_param()
                self.body_ext_tail()
            self.eat(b")")
            return
        mtype = self.string().upper()
        self.sp()
        subtype = self.string().upper()
        self.sp()
        self.body_fld_param()
        self.sp()
        self.nstring()  # id
        self.sp()
        self.nstring()  # description
        self.sp()
        self.string()   # encoding
        self.sp()
        self.number()   # octets
        if mtype == b"MESSAGE" and subtype in (b"RFC822", b"GLOBAL"):
            self.sp()
            self.envelope()
            self.sp()
            self.body(extensible)
            self.sp()
            self.number()  # lines
        elif mtype == b"TEXT":
            self.sp()
            self.number()  # lines
        if self.peek() == b" ":
            if not extensible:
                self.fail("extension data in BODY (only BODYSTRUCTURE has it)")
            self.sp()
            self.nstring()  # md5
            self.body_ext_tail()
        self.eat(b")")

    # -- FETCH -----------------------------------------------------------------------------

    def section(self, binary=False):
        """What follows "BODY" / "BINARY": "[" ... "]" ["<" number ">"]."""
        self.eat(b"[")
        if binary:
            if self.peek() != b"]":
                self.section_part()
            self.eat(b"]")
            return
        if self.peek() != b"]":
            if self.peek().isdigit():
                self.section_part()
                if self.peek() == b".":
                    self.i += 1
                    self.section_text(mime=True)
            else:
                self.section_text(mime=False)
        self.eat(b"]")

    def section_part(self):
        self.number(nz=True)
        while self.peek(2)[:1] == b"." and self.peek(2)[1:].isdigit():
            self.i += 1
            self.number(nz=True)

    def section_text(self, mime):
        w = self.word().upper()
        ok = (b"HEADER", b"TEXT") + ((b"MIME",) if mime else ())
        if w in (b"HEADER.FIELDS", b"HEADER.FIELDS.NOT"):
            self.sp()
            self.list_of(self.astring, allow_empty=False)
        elif w not in ok:
            self.fail(f"bad section text {w!r}")

    def msg_att(self, seen):
        m = re.compile(rb"[A-Za-z0-9.]+").match(self.d, self.i)
        if not m:
            self.fail("expected a FETCH item name")
        name = m.group().upper()
        self.i = m.end()
        if name in (b"BODY", b"BINARY") and self.peek() == b"[":
            self.section(binary=name == b"BINARY")
            key = name + b"[]"
            if self.peek() == b"<":
                self.i += 1
                self.number()
                self.eat(b">")
            self.sp()
            if name == b"BINARY":
                if self.nil():
                    return key
                if self.peek() == b'"':
                    self.quoted()
                else:
                    self.literal(binary=True)
            else:
                self.nstring()
            return key
        if name == b"BINARY.SIZE":
            self.section(binary=True)
            self.sp()
            self.number()
            return name
        self.sp()
        if name == b"FLAGS":
            self.list_of(self.flag)
        elif name == b"UID":
            self.number(nz=True)
        elif name == b"RFC822.SIZE":
            self.number(bits=63)
        elif name == b"INTERNALDATE":
            self.date_time()
        elif name == b"ENVELOPE":
            self.envelope()
        elif name == b"BODYSTRUCTURE":
            self.body(extensible=True)
        elif name == b"BODY":
            self.body(extensible=False)
        elif name in (b"RFC822", b"RFC822.HEADER", b"RFC822.TEXT"):
            self.nstring()
        elif name == b"MODSEQ":
            self.eat(b"(")
            self.number(nz=True, bits=63)
            self.eat(b")")
        else:
            self.fail(f"unknown FETCH item {name!r}")
        return name

    def fetch(self):
        self.eat(b"(")
        seen = []
        while True:
            key = self.msg_att(seen)
            if key in seen and not key.endswith(b"[]"):
                self.fail(f"{key!r} twice in one FETCH response")
            seen.append(key)
            if self.peek() == b")":
                self.i += 1
                return seen
            self.sp()

    # -- mailbox data --------------------------------------------------------------------

    def mailbox_list(self):
        flags = self.list_of(self.flag)
        self.sp()
        if self.nil():
            delim = None
        else:
            delim = self.quoted()
            if len(delim) != 1:
                self.fail("delimiter is one character")
        self.sp()
        name = self.mailbox()
        if self.peek() == b" ":  # mbox-list-extended
            self.sp()
            self.eat(b"(")
            while self.peek() != b")":
                self.astring()
                self.sp()
                self.body_extension()
                if self.peek() == b" ":
                    self.sp()
            self.eat(b")")
        return flags, name

    def status_att_list(self):
        atts = {}
        def one():
            a = self.kw(b"MESSAGES", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN", b"DELETED",
                        b"SIZE", b"RECENT", b"HIGHESTMODSEQ", b"APPENDLIMIT")
            self.sp()
            atts[a] = self.number(bits=63)
        self.list_of(one)
        return atts

    def namespace(self):
        if self.nil():
            return
        self.eat(b"(")
        while self.peek() == b"(":
            self.eat(b"(")
            self.string()
            self.sp()
            if not self.nil():
                self.quoted()
            self.eat(b")")
        self.eat(b")")


def check(resp, utf8=False):
    """Parses one whole response (bytes through its final CRLF); returns
    (kind, tag, keyword, value) or raises GrammarError."""
    p = P(resp, utf8)
    if not resp.endswith(b"\r\n"):
        p.fail("response does not end in CRLF")
    if resp.startswith(b"+"):
        p.i = 1
        if not p.at_end():
            p.sp()
            p.resp_text()
        p.end()
        return ("cont", None, None, None)
    if resp.startswith(b"* "):
        p.i = 2
        if p.peek().isdigit():
            n = p.number()
            p.sp()
            kw = p.kw(b"EXISTS", b"RECENT", b"EXPUNGE", b"FETCH")
            val = n
            if kw == b"FETCH":
                if n == 0:
                    p.fail("FETCH of message 0")
                p.sp()
                val = (n, p.fetch())
            elif kw == b"EXPUNGE" and n == 0:
                p.fail("EXPUNGE of message 0")
            p.end()
            return ("untagged", None, kw, val)
        kw = p.kw(b"OK", b"NO", b"BAD", b"BYE", b"PREAUTH", b"CAPABILITY", b"FLAGS",
                  b"LIST", b"LSUB", b"STATUS", b"SEARCH", b"ESEARCH", b"ENABLED", b"ID",
                  b"NAMESPACE", b"QUOTAROOT", b"QUOTA", b"VANISHED")
        val = None
        if kw in (b"OK", b"NO", b"BAD", b"BYE", b"PREAUTH"):
            p.sp()
            val = p.resp_text()
        elif kw == b"CAPABILITY":
            caps = []
            while not p.at_end():
                p.sp()
                caps.append(p.word().upper())
            if b"IMAP4REV1" not in caps and b"IMAP4REV2" not in caps:
                p.fail("CAPABILITY without IMAP4rev1 or IMAP4rev2")
            val = caps
        elif kw == b"FLAGS":
            p.sp()
            val = p.list_of(p.flag)
        elif kw in (b"LIST", b"LSUB"):
            p.sp()
            val = p.mailbox_list()
        elif kw == b"STATUS":
            p.sp()
            name = p.mailbox()
            p.sp()
            val = (name, p.status_att_list())
        elif kw == b"SEARCH":
            val = []
            while p.peek() == b" ":
                p.sp()
                if p.peek() == b"(":
                    p.eat(b"(")
                    p.kw(b"MODSEQ")
                    p.sp()
                    p.number(bits=63)
                    p.eat(b")")
                    break
                val.append(p.number(nz=True))
        elif kw == b"ESEARCH":
            if p.peek(2) == b" (":
                p.sp()
                p.eat(b"(")
                p.kw(b"TAG")
                p.sp()
                p.string()
                p.eat(b")")
            val = {}
            while p.peek() == b" ":
                p.sp()
                w = p.kw(b"UID", b"MIN", b"MAX", b"COUNT", b"ALL", b"MODSEQ")
                if w == b"UID":
                    continue
                p.sp()
                if w == b"ALL":
                    p.seqset()
                    val[w] = True
                else:
                    val[w] = p.number(bits=63)
        elif kw == b"ENABLED":
            val = []
            while p.peek() == b" ":
                p.sp()
                val.append(p.word().upper())
        elif kw == b"ID":
            p.sp()
            if not p.nil():
                items = p.list_of(p.nstring)
                if len(items) % 2:
                    p.fail("ID list of odd length")
        elif kw == b"NAMESPACE":
            for i in range(3):
                p.sp()
                p.namespace()
        elif kw == b"QUOTAROOT":
            p.sp()
            p.mailbox()
            while p.peek() == b" ":
                p.sp()
                p.astring()
        elif kw == b"QUOTA":
            p.sp()
            p.astring()
            p.sp()
            def res():
                p.word()
                p.sp()
                p.number(bits=63)
                p.sp()
                p.number(bits=63)
            p.list_of(res, allow_empty=False)
        elif kw == b"VANISHED":
            p.sp()
            if p.peek() == b"(":
                p.eat(b"(EARLIER)")
                p.sp()
            p.seqset(uid=True)
        p.end()
        return ("untagged", None, kw, val)
    # tagged
    tag = p.word()
    if b"+" in tag:
        p.fail("'+' in a tag")
    p.sp()
    kw = p.kw(b"OK", b"NO", b"BAD")
    p.sp()
    code = p.resp_text()
    p.end()
    return ("tagged", tag, kw, code)
