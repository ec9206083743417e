# Scenarios for tests/tools/imap_diff.py: the RFC corners compared with
# Dovecot when this tool was written (docs/imap.md records the outcome).
# Known, deliberate differences: no \Recent / RECENT n (ringmail has none),
# ringmail lists \HasChildren/\HasNoChildren always, FETCH/STORE of "*" in
# an empty mailbox is OK, Dovecot's own deviations (UID 7:* on 6 UIDs
# empty, BODY[2] of a nested multipart with the outer delimiter's CRLF).
cs = session()
mp = (b"From: a@b.c\r\nSubject: mp\r\nDate: Wed, 02 Jul 2003 10:00:00 +0000\r\n"
      b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
      b"--XX\r\nContent-Type: text/plain\r\n\r\npart one\r\n--XX\r\n"
      b"Content-Type: multipart/alternative; boundary=YY\r\n\r\n--YY\r\n"
      b"Content-Type: text/plain\r\n\r\nalt1\r\n--YY--\r\n--XX--\r\n")
for m in (msg("one"), msg("two", date="garbage"), mp, msg("four", extra="X-A: 1\r\nx-a: 2\r\n")):
    for c in cs:
        append(c, "INBOX", m)
run(cs, ["ENABLE CONDSTORE", "SELECT INBOX"], quiet=True)
run(cs, [
    "SEARCH 5:2", "SEARCH *:3", "SEARCH 10:*", "UID SEARCH 7:*", "SEARCH RETURN (MIN MAX COUNT ALL) 2:4",
    "SEARCH RETURN (MIN) NOT ALL", "SEARCH NOT (OR 1 2)", "SEARCH SENTBEFORE 2-Jul-2003",
    "SEARCH SINCE 31-Feb-2020", "SEARCH LARGER 4294967296", "SEARCH CHARSET ISO-8859-1 ALL",
    "FETCH 1 BODY.PEEK[]<140.10>", "FETCH 3 BODY.PEEK[1.2.MIME]", "FETCH 1 BODY.PEEK[2]",
    "FETCH 4 BODY.PEEK[HEADER.FIELDS (x-a)]<2.6>", "FETCH 1 BODY.PEEK[MIME]", "FETCH 1 ()",
    "FETCH 1 (FLAGS) (CHANGEDSINCE 0)", "STORE 1:2 (UNCHANGEDSINCE 100) +FLAGS.SILENT (\\Flagged)",
    "STORE 1 +FLAGS (\\Recent)", "STORE 1 +FLAGS (a%b)", "COPY 1 nosuch", "CREATE Dst", "UID COPY 1:3 Dst",
    "MOVE 2 Dst", 'LIST "" "*" RETURN (CHILDREN SPECIAL-USE STATUS (MESSAGES UNSEEN SIZE))',
    'LIST (SUBSCRIBED) "" "*"', 'LIST "" ""', 'LIST "" "inbox"', "CREATE INBOX", "CREATE x/",
    "RENAME Dst Dst", "DELETE INBOX", "DELETE a b", "STATUS INBOX (MESSAGES APPENDLIMIT)",
    "NAMESPACE", "ID NIL", "GETQUOTAROOT INBOX", 'SETQUOTA "" (STORAGE 1)', "UNSELECT", "CLOSE",
])
