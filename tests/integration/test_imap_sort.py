"""SORT, THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256, SORT=DISPLAY
of RFC 5957) against the real binary: every criterion on a corpus whose
expected order is worked out by hand from the RFC's rules, UID SORT after
an expunge, the threads' shape, errors, a mailbox larger than one step of
the job, a SORT that runs while another session expunges, threads by
References and In-Reply-To, and a 600-message reply chain.
"""
import re

from test_imap import USERS, Raw, imap, imapsrv, srv  # noqa: F401 (fixtures)

# (subject, from, to, date, padding): sizes grow with the padding
CORPUS = [
    ("Re: banana", "zed@x.org", "Mia <m@x.org>", "Mon, 3 Jan 2022 10:00:00 +0000", 300),
    ("apple", "Bob <bob@x.org>", "kai@x.org", "Sun, 2 Jan 2022 12:00:00 +0200", 100),
    ("Fwd: apple", "alice@x.org", "Al <zz@x.org>", "Tue, 4 Jan 2022 10:00:00 +0000", 200),
    ("cherry", "carol@x.org", None, "not a date", 50),
    ("[list] Re: banana", "Alice Z <yy@x.org>", "bea@x.org", "1 Jan 22 10:00 EST", 400),
    ("=?UTF-8?Q?=C3=A9clair?=", "=?utf-8?q?=C3=89mile?= <e@x.org>", "nia@x.org",
     "Wed, 5 Jan 2022 10:00:00 +0000", 250),
    (None, "dan@x.org", "ann@x.org", "Thu, 6 Jan 2022 10:00:00 +0000", 150),
]


def message(subject, frm, to, date, pad):
    h = f"From: {frm}\r\n"
    if to:
        h += f"To: {to}\r\n"
    if subject is not None:
        h += f"Subject: {subject}\r\n"
    h += f"Date: {date}\r\n\r\n"
    return (h + "x" * pad + "\r\n").encode()


def fill(c, corpus=CORPUS):
    for m in corpus:
        typ, data = c.append("INBOX", None, None, message(*m))
        assert typ == "OK", data


def sort(r, args, verb="SORT"):
    lines, t = r.cmd(f"{verb} {args}")
    assert b" OK " in t, (lines, t)
    got = [l for l in lines if l.startswith(f"* {verb.split()[-1]}".encode())]
    assert len(got) == 1, lines
    return got[0].rstrip(b"\r\n").decode()[len(f"* {verb.split()[-1]}"):].strip()


def test_sort_every_criterion(srv):
    c = imap(srv)
    typ, caps = c.capability()
    assert {b"SORT", b"SORT=DISPLAY", b"THREAD=ORDEREDSUBJECT"} <= set(caps[0].split())
    fill(c)
    c.logout()
    r = Raw(srv).login()
    r.cmd("SELECT INBOX")
    # base subjects: BANANA 1 5, APPLE 2 3, CHERRY 4, ÉCLAIR 6 (UTF-8
    # after A-Z), "" 7 (no Subject: the empty string first)
    assert sort(r, "(SUBJECT) UTF-8 ALL") == "7 2 3 1 5 4 6"
    assert sort(r, "(REVERSE SUBJECT) UTF-8 ALL") == "6 4 1 5 2 3 7"
    # sent dates (UTC): 5 is 1 Jan 15:00 (EST), 2 is 2 Jan 10:00, 1, 3,
    # 6, 7; 4 has no valid Date: its internal date (now) is last
    assert sort(r, "(DATE) UTF-8 ALL") == "5 2 1 3 6 7 4"
    assert sort(r, "(REVERSE DATE) UTF-8 ALL") == "4 7 6 3 1 2 5"
    assert sort(r, "(ARRIVAL) UTF-8 ALL") == "1 2 3 4 5 6 7"
    assert sort(r, "(SIZE) UTF-8 ALL") == "4 2 7 3 6 1 5"
    # FROM: the mailbox: alice bob carol dan e yy zed
    assert sort(r, "(FROM) UTF-8 ALL") == "3 2 4 7 6 5 1"
    # DISPLAYFROM: "ALICE Z" < "ALICE@X.ORG" < BOB < CAROL@ < DAN@ < ZED@ < ÉMILE
    assert sort(r, "(DISPLAYFROM) UTF-8 ALL") == "5 3 2 4 7 1 6"
    # TO: no To (4) first, then ann bea kai m nia zz
    assert sort(r, "(TO) UTF-8 ALL") == "4 7 5 2 1 6 3"
    assert sort(r, "(DISPLAYTO) UTF-8 ALL") == "4 3 7 5 2 1 6"
    assert sort(r, "(CC) UTF-8 ALL") == "1 2 3 4 5 6 7"  # all equal: mailbox order
    assert sort(r, "(SUBJECT REVERSE DATE) UTF-8 ALL") == "7 3 2 1 5 4 6"
    # search keys after the charset; US-ASCII is accepted too
    assert sort(r, "(SUBJECT) US-ASCII LARGER 160 NOT FROM zed") == "7 2 3 5 6"
    assert sort(r, "(SUBJECT) UTF-8 SUBJECT nothing-like-it") == ""
    # rev2 clients get the same SORT response
    r2 = Raw(srv).login()
    r2.cmd("ENABLE IMAP4rev2")
    r2.cmd("SELECT INBOX")
    assert sort(r2, "(SIZE) UTF-8 ALL") == "4 2 7 3 6 1 5"


def test_uid_sort_and_thread_after_expunge(srv):
    c = imap(srv)
    fill(c)
    c.logout()
    r = Raw(srv).login()
    r.cmd("SELECT INBOX")
    r.cmd("STORE 2 +FLAGS.SILENT (\\Deleted)")
    r.cmd("EXPUNGE")
    # sequence numbers moved down by one after 2; UIDs did not
    assert sort(r, "(SUBJECT) UTF-8 ALL") == "6 2 1 4 3 5"
    assert sort(r, "(SUBJECT) UTF-8 ALL", verb="UID SORT") == "7 3 1 5 4 6"
    assert sort(r, "(DATE) UTF-8 UID 1:5", verb="UID SORT") == "5 1 3 4"
    # THREAD=ORDEREDSUBJECT: runs of one base subject, the first the parent
    # of the others, threads by their first message's date
    c = imap(srv)
    fill(c, [("Re: apple", "a@x.org", "b@x.org", "Fri, 7 Jan 2022 10:00:00 +0000", 10),
             ("APPLE (fwd)", "a@x.org", "b@x.org", "Sat, 8 Jan 2022 10:00:00 +0000", 10)])
    c.logout()
    r.cmd("NOOP")
    # UIDs 8 and 9. apple: 3 (4 Jan), 8 (7 Jan), 9 (8 Jan); banana: 5
    # (1 Jan), 1 (3 Jan)
    assert sort(r, "ORDEREDSUBJECT UTF-8 ALL", verb="UID THREAD") == \
        "(5 1)(3 (8)(9))(6)(7)(4)"
    assert sort(r, "ORDEREDSUBJECT UTF-8 ALL", verb="THREAD") == \
        "(4 1)(2 (7)(8))(5)(6)(3)"
    assert sort(r, "ORDEREDSUBJECT UTF-8 SUBJECT nothing", verb="THREAD") == ""


def test_sort_errors(srv):
    c = imap(srv)
    fill(c, CORPUS[:2])
    c.logout()
    r = Raw(srv).login()
    _, t = r.cmd("SORT (SUBJECT) UTF-8 ALL")
    assert b" BAD " in t or b" NO " in t, t          # nothing selected
    for i, bad in enumerate(("SORT SUBJECT UTF-8 ALL", "SORT (FOO) UTF-8 ALL", "SORT () UTF-8 ALL",
                "SORT (SUBJECT REVERSE) UTF-8 ALL", "SORT (REVERSE REVERSE DATE) UTF-8 ALL",
                "SORT (SUBJECT) UTF-8", "SORT (SUBJECT)", "SORT (SUBJECT) UTF-8 NOSUCHKEY",
                "SORT ((SUBJECT)) UTF-8 ALL", "THREAD REFS UTF-8 ALL",
                "THREAD ORDEREDSUBJECT UTF-8", "THREAD")):
        if i % 4 == 0:  # a new session before the bad-command limit
            r = Raw(srv).login()
            r.cmd("SELECT INBOX")
        lines, t = r.cmd(bad)
        assert re.match(rb"t\d+ BAD ", t), (bad, t)
        assert not any(l.startswith((b"* SORT", b"* THREAD")) for l in lines), (bad, lines)
    _, t = r.cmd("SORT (SUBJECT) KOI8-R ALL")
    assert b" NO [BADCHARSET (UTF-8 US-ASCII)]" in t, t
    _, t = r.cmd('SORT (SUBJECT) "utf-8" ALL')
    assert b" OK " in t, t
    # the session goes on
    assert sort(r, "(SIZE) UTF-8 ALL") == "2 1"


def test_sort_condstore_modseq(srv):
    c = imap(srv)
    fill(c, CORPUS[:3])
    c.logout()
    r = Raw(srv).login()
    r.cmd("SELECT INBOX (CONDSTORE)")
    lines, _ = r.cmd("STORE 2 +FLAGS (\\Flagged)")
    modseq = int(re.search(rb"MODSEQ \((\d+)\)", b"".join(lines)).group(1))
    assert sort(r, f"(SIZE) UTF-8 MODSEQ {modseq}") == f"2 (MODSEQ {modseq})"
    assert sort(r, f"(SIZE) UTF-8 MODSEQ {modseq + 1}") == ""


def append_many(r, n):
    """n messages with LITERAL+ in one write; their subjects cycle over 7
    names and their sizes fall as the index grows."""
    out = []
    for i in range(n):
        m = (f"From: u{i % 5}@x.org\r\nSubject: s{i % 7}\r\n"
             f"Date: Mon, 3 Jan 2022 10:00:00 +0000\r\n\r\n" + "y" * (n - i) + "\r\n").encode()
        out.append(f"a{i} APPEND INBOX {{{len(m)}+}}\r\n".encode() + m + b"\r\n")
    r.send(b"".join(out))
    for i in range(n):
        _, t = r.until(f"a{i}", timeout=60)
        assert b" OK " in t, t


def test_sort_many_messages_and_a_concurrent_expunge(imapsrv):
    """More messages than a step makes keys for (256): the job yields and
    resumes on one loop while another session is served; an expunge by
    another session during the SORT is not announced in it."""
    srv = imapsrv(threads=1)
    n = 900
    r = Raw(srv).login()
    append_many(r, n)
    r.cmd("SELECT INBOX")
    assert sort(r, "(SIZE) UTF-8 ALL") == " ".join(str(i) for i in range(n, 0, -1))
    want = sorted(range(1, n + 1), key=lambda s: ((s - 1) % 7, s))
    assert sort(r, "(SUBJECT) UTF-8 ALL") == " ".join(map(str, want))
    threads = sort(r, "ORDEREDSUBJECT UTF-8 ALL", verb="THREAD")
    # seven threads: same dates, so in the order of their first message
    heads = [int(x) for x in re.findall(r"\((\d+) \(", threads)]
    assert heads == [1, 2, 3, 4, 5, 6, 7], threads[:200]
    assert threads.count("(") == 7 + (n - 7)
    other = Raw(srv).login()
    other.cmd("SELECT INBOX")
    other.cmd("STORE 1:100 +FLAGS.SILENT (\\Deleted)")
    r.send(b"s SORT (REVERSE SUBJECT SIZE) UTF-8 ALL\r\n")
    _, t = other.cmd("EXPUNGE", timeout=30)
    assert b" OK " in t, t
    lines, t = r.until("s", timeout=60)
    assert t.startswith(b"s OK"), t
    assert not any(l.endswith(b" EXPUNGE\r\n") for l in lines), lines[:5]
    got = [l for l in lines if l.startswith(b"* SORT")]
    assert len(got) == 1
    nums = [int(x) for x in got[0].split()[2:]]
    # every number the client knows, once (expunged ones may or may not
    # match, RFC 3501 7.4.1; the ones never expunged must)
    assert set(range(101, n + 1)) <= set(nums) <= set(range(1, n + 1)), len(nums)
    assert len(nums) == len(set(nums))
    lines, _ = r.cmd("NOOP")
    assert sum(1 for l in lines if l.endswith(b" EXPUNGE\r\n")) == 100
    assert sort(r, "(SIZE) UTF-8 ALL") == " ".join(str(i) for i in range(n - 100, 0, -1))


def refs_message(mid, subject, date, irt=None, refs=None, pad=0):
    h = f"From: x@y.org\r\nSubject: {subject}\r\nDate: {date}\r\n"
    if mid:
        h += f"Message-ID: {mid}\r\n"
    if irt:
        h += f"In-Reply-To: {irt}\r\n"
    h += "X-Pad: " + "p" * pad + "\r\n" if pad else ""
    if refs:
        h += f"References: {refs}\r\n"
    return (h + "\r\nbody\r\n").encode()


def test_thread_references(srv):
    """THREAD=REFERENCES (RFC 5256 4): References read from the header
    (folded), In-Reply-To when there are none, a missing parent, subject
    merging of a reply without references."""
    c = imap(srv)
    assert b"THREAD=REFERENCES" in c.capability()[1][0].split()
    day = "Mon, 3 Jan 2022 {}:00:00 +0000"
    for m in [
        refs_message("<a@x>", "hello", day.format(10)),
        refs_message("<b@x>", "Re: hello", day.format(11), irt="<a@x>"),
        # References folded over two lines
        refs_message("<c@x>", "Re: hello", day.format(12), refs="<a@x>\r\n <b@x>"),
        refs_message("<d@x>", "other", "Sun, 2 Jan 2022 12:00:00 +0000", irt="<zz@x>"),
        refs_message("<e@x>", "Re: other", "Tue, 4 Jan 2022 12:00:00 +0000"),
        refs_message("<f@x>", "Re: hello", day.format(13), irt="<a@x>"),
        refs_message(None, "lonely", day.format(14), refs="<nobody@x>"),
    ]:
        typ, data = c.append("INBOX", None, None, m)
        assert typ == "OK", data
    c.logout()
    r = Raw(srv).login()
    r.cmd("SELECT INBOX")
    # a: b (In-Reply-To), c (References a b: under b), f; d under a missing
    # parent takes its place, e joins d by subject; 7 is alone
    assert sort(r, "REFERENCES UTF-8 ALL", verb="THREAD") == "(4 5)(1 (2 3)(6))(7)"
    assert sort(r, "REFERENCES UTF-8 NOT SUBJECT other", verb="UID THREAD") == \
        "(1 (2 3)(6))(7)"
    assert sort(r, "REFERENCES UTF-8 SUBJECT nothing", verb="THREAD") == ""
    lines, t = r.cmd("THREAD REFERENCES UTF-8 SUBJECT nothing")
    assert lines == [b"* THREAD\r\n"], lines


def test_thread_references_long_header_and_many(imapsrv):
    srv = imapsrv(threads=1)
    c = imap(srv)
    day = "Mon, 3 Jan 2022 10:{:02d}:00 +0000"
    # References beyond the first 64 KiB of the header are not read: the
    # reply falls back to its In-Reply-To
    c.append("INBOX", None, None, refs_message("<r@x>", "root", day.format(0)))
    c.append("INBOX", None, None, refs_message("<s@x>", "side", day.format(1)))
    c.append("INBOX", None, None, refs_message("<t@x>", "Re: side", day.format(2),
                                               irt="<r@x>", refs="<s@x>", pad=70000))
    c.logout()
    r = Raw(srv).login()
    r.cmd("SELECT INBOX")
    assert sort(r, "REFERENCES UTF-8 ALL", verb="THREAD") == "(1 3)(2)"
    # 600 messages, each a reply to the one before: one chain, read one
    # header per message across many turns of the loop
    r2 = Raw(srv).login()
    r2.cmd("CREATE Chain")
    out = []
    for i in range(600):
        m = refs_message(f"<{i}@chain>", "Re: chain" if i else "chain", day.format(i % 60),
                         refs=" ".join(f"<{j}@chain>" for j in range(max(0, i - 3), i)) or None)
        out.append(f"a{i} APPEND Chain {{{len(m)}+}}\r\n".encode() + m + b"\r\n")
    r2.send(b"".join(out))
    for i in range(600):
        _, t = r2.until(f"a{i}", timeout=60)
        assert b" OK " in t, t
    r2.cmd("SELECT Chain")
    got = sort(r2, "REFERENCES UTF-8 ALL", verb="THREAD")
    assert got == "(" + " ".join(str(i) for i in range(1, 601)) + ")", got[:200]
