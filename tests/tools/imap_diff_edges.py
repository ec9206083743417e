# Scenarios for tests/tools/imap_diff.py (run with --diff): the edge cases
# real clients hit, compared with Dovecot 2.3 by tagged result (OK/NO/BAD
# and response code) and untagged response kinds. docs/imap.md, "Differential
# testing against Dovecot", records what differs and why.
#
#   sudo /usr/bin/python3 tests/tools/imap_diff.py --diff tests/tools/imap_diff_edges.py

# ---- before login --------------------------------------------------------
cs = session(login=False)
run(cs, ["NOOP", "SELECT INBOX", "ENABLE CONDSTORE", "ID NIL", "NAMESPACE"])
cs = session()

# ---- mailboxes ---------------------------------------------------------------
for c in cs:
    for i in range(3):
        append(c, "INBOX", msg(f"m{i}"))
run(cs, [
    "STATUS nosuch (MESSAGES)", 'STATUS "" (MESSAGES)', "STATUS INBOX (FOO)", "STATUS INBOX ()",
    "STATUS INBOX MESSAGES", "SELECT nosuch", "EXAMINE nosuch",
    "CREATE par/child", "SELECT par", "EXAMINE par", "STATUS par (MESSAGES)", "STATUS par/child (MESSAGES)",
    'LIST "" %', 'LIST "" *', 'LIST "" ""', 'LIST "" "par/%"', 'LIST "par" "%"', 'LIST "par/" "%"',
    'LIST "" "%/%"', 'LIST "" "*child"', 'LIST "" "INBOX*"', 'LIST "" "inbox"', 'LIST "nosuch/" "*"',
    'LIST "" "/"', 'LIST "" "par/"', 'LIST "" "**"', 'LIST "" "%%"', 'LIST "" "p%r"', 'LIST "" ""',
    'LIST "" nosuch', 'LIST "" "*" RETURN (CHILDREN)', 'LIST (SUBSCRIBED) "" "*"', 'LIST "" "*" RETURN (FOO)',
    'LSUB "" "*"', "SUBSCRIBE nosuch", 'LSUB "" "*"', "UNSUBSCRIBE nosuch", "UNSUBSCRIBE never",
    "DELETE par", 'LIST "" "par*"', "CREATE box", "CREATE box/sub", "DELETE box", 'LIST "" "box*"',
    "DELETE nosuch", "DELETE INBOX", "CREATE INBOX", "CREATE inbox", "CREATE INBOX/x", 'LIST "" "INBOX*"',
    "RENAME nosuch x", "RENAME box INBOX", "RENAME box box/sub/x", "RENAME box/sub box/sub",
    "CREATE box/", "CREATE /lead", "CREATE a//b",
])

# ---- APPEND --------------------------------------------------------------------
m = msg("appended")
for head in ['APPEND INBOX (\\Seen $Work) "01-Jan-2020 10:00:00 +0000" ',
             'APPEND INBOX () ', 'APPEND INBOX (\\Recent) ', 'APPEND INBOX (\\Foo) ',
             'APPEND INBOX "32-Jan-2020 10:00:00 +0000" ', 'APPEND INBOX "1-Jan-2020 10:00:00" ',
             'APPEND INBOX " 1-Jan-2020 10:00:00 +0000" ', 'APPEND INBOX (\\Deleted \\Seen) ',
             'APPEND nosuch ', 'APPEND par ', 'APPEND INBOX (\\Seen']:
    run(cs, [head.encode() + b"{%d+}\r\n" % len(m) + m])
run(cs, [b"APPEND INBOX {0+}\r\n", b"APPEND INBOX {3}\r\nabc", b"APPEND INBOX ~{3+}\r\nabc",
         b"APPEND INBOX (\\Seen) {3+}\r\nabc {3+}\r\ndef"])

# ---- the selected mailbox -------------------------------------------------------
run(cs, ["SELECT INBOX"], quiet=True)
run(cs, [
    "FETCH 0 FLAGS", "FETCH *:1 FLAGS", "FETCH 5:3 FLAGS", "FETCH 99 FLAGS", "FETCH 1:99 FLAGS",
    "FETCH 99:* FLAGS", "FETCH 1,0 FLAGS", "FETCH -1 FLAGS", "FETCH 1: FLAGS", "FETCH 1 (FLAGS",
    "FETCH 1 BODY[", "FETCH 1 NOSUCH", "FETCH 1 BODY[HEADER.FIELDS ()]", "FETCH 1 BODY[0]",
    "FETCH 1 BODY[1.0]", "FETCH 1 BINARY[1]", "FETCH 1 BODY.PEEK[]<5.0>", "FETCH 1",
    "UID FETCH 0 FLAGS", "UID FETCH 99 FLAGS", "UID FETCH 99:* FLAGS", "UID FETCH 4294967295 FLAGS",
    "UID FETCH 4294967296 FLAGS", "UID FETCH 1:4294967295 UID",
    "UID STORE 99 +FLAGS (\\Seen)", "UID COPY 99 INBOX", "UID MOVE 99 INBOX", "UID EXPUNGE 99",
    "UID SEARCH UID 99", "UID SEARCH UID 99:*", "STORE 99 +FLAGS (\\Seen)", "COPY 99 INBOX",
    "STORE 1 +FLAGS (\\Seen)", "STORE 1 +FLAGS (\\Seen)", "STORE 1 -FLAGS (\\Draft)", "STORE 1 FOO (\\Seen)",
    "STORE 1 +FLAGS", "STORE 1 +FLAGS ()", "STORE 1 +FLAGS \\Flagged", "COPY 1 nosuch", "COPY 1 par",
    "COPY 1 INBOX", "MOVE 1 INBOX",
    "SEARCH NOSUCH", "SEARCH FROM", "SEARCH BEFORE 1-Foo-2020", "SEARCH LARGER x", "SEARCH UID x",
    "SEARCH CHARSET FOO ALL", "SEARCH CHARSET UTF-8 ALL", "SEARCH (ALL", "SEARCH OR ALL", "SEARCH 0",
    "SEARCH 99", "SEARCH HEADER Subject", "SEARCH KEYWORD \\Seen", "SEARCH NOT", 'SEARCH ""', "SEARCH",
    "SEARCH RETURN (FOO) ALL", "SEARCH MODSEQ x", "SEARCH SMALLER -1", "SEARCH ON 1-Jan-2020x",
    "ENABLE CONDSTORE", "ENABLE FOO", "ENABLE", "CHECK", "EXPUNGE",
])
run(cs, ["EXAMINE INBOX"], quiet=True)
run(cs, ["STORE 1 +FLAGS (\\Deleted)", "EXPUNGE", "UID EXPUNGE 1", "COPY 1 INBOX", "MOVE 1 INBOX",
         "CLOSE", "CLOSE", "UNSELECT", "FETCH 1 FLAGS", "EXPUNGE"])

# ---- literals (each in a session of its own: Dovecot closes on some) -------------
run(cs, [b"SELECT {5}\r\nINBOX", b"STATUS {5+}\r\nINBOX (MESSAGES)", b"SELECT {3}\r\nINB",
         b"CREATE {0}\r\n", b"SELECT {5+}\r\nINBOX"])
for cmd in ["SELECT {4294967296}", "SELECT {x}", b"NOOP {3+}\r\nabc", b'STATUS "INBOX" {10+}\r\n(MESSAGES)',
            "SELECT ~{5}", b"SELECT {5+}\r\nINBOX extra", b"SELECT {6+}\r\nINBOX\r", "SELECT {05}",
            b"STATUS INBOX ({8+}\r\nMESSAGES)"]:
    run(session(), [cmd, "NOOP"])

# ---- ID, NAMESPACE, ENABLE --------------------------------------------------------------
run(cs, ["UNSELECT"], quiet=True)
run(cs, ['ID ("name" "test" "version" "1")', 'ID ("name")', "ID ()", "ID foo", "ID", "NAMESPACE",
         "NAMESPACE x", "ENABLE FOO", "ENABLE", "ENABLE CONDSTORE FOO", "ENABLE UTF8=ACCEPT",
         "ENABLE QRESYNC", "LOGIN a b", "AUTHENTICATE PLAIN", "STARTTLS", "CHECK", "CLOSE", "UNSELECT",
         "FETCH 1 FLAGS", "GETQUOTAROOT nosuch", "SELECT INBOX (FOO)", "SELECT INBOX (CONDSTORE)",
         "ENABLE QRESYNC", "NOOP foo"])


# ---- IDLE, and DONE with junk ----------------------------------------------------------------
def idle(cs, done):
    outs = []
    for c in cs:
        c.n += 1
        tag = f"a{c.n}".encode()
        c.send(tag + b" IDLE\r\n")
        out = [c.line()]
        c.send(done + b"\r\n")
        outs.append(out + c.until(tag))
    show(f"IDLE then {done!r}", *outs)
    run(cs, ["NOOP"])


for done in (b"DONE", b"done", b"DONE junk", b"NOOP", b"DONE\tx"):
    idle(cs, done)

# ---- what mail clients send every day ------------------------------------------------
run(cs, ["UNSELECT"], quiet=True)
run(cs, ['SELECT "INBOX"', "SELECT inbox", "STATUS inbox (MESSAGES UIDNEXT)", "STATUS INBOX (MESSAGES UIDNEXT)",
         "CREATE par", "CREATE par/child", "FETCH 1:* (UID FLAGS) (CHANGEDSINCE 1)",
         "UID FETCH 1:* (FLAGS) (VANISHED)", "SEARCH UNSEEN", "SEARCH RETURN () ALL",
         "UID SEARCH RETURN (SAVE) UNSEEN", "FETCH $ FLAGS", "UID FETCH $ FLAGS",
         "FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject)])", "FETCH 1 RFC822.HEADER", "FETCH 1 BODYSTRUCTURE",
         "FETCH 1 ENVELOPE", "FETCH 1 ALL", "FETCH 1 FAST", "FETCH 1 FULL", "FETCH 1 (UID RFC822.SIZE FLAGS)",
         "FETCH 1:2 (FLAGS) (CHANGEDSINCE 0)", "UID SEARCH UID 1:*", "CHECK", 'XLIST "" "*"',
         'LIST "" "*" RETURN (STATUS (MESSAGES UNSEEN))', 'LIST "" "INBOX/%"', 'LSUB "" "%"',
         'GETQUOTA ""', 'ID ("name" NIL)', "COPY 1:* INBOX", "STORE 1:* +FLAGS.SILENT (\\Deleted)",
         "EXAMINE INBOX", "FETCH 1 BODY[]", "FETCH 1 FLAGS", "UNSELECT", "UNSELECT",
         "SELECT INBOX", "UID EXPUNGE 1:2", "EXPUNGE", "SEARCH ALL", "FETCH 1:* FLAGS", "CLOSE"])

# ---- RENAME INBOX (moves its messages) and after LOGOUT ---------------------------------
run(cs, ["UNSELECT"], quiet=True)
run(cs, ["RENAME INBOX inbox-old", 'LIST "" "inbox*"', "STATUS inbox-old (MESSAGES)",
         "STATUS INBOX (MESSAGES)", "RENAME INBOX inbox-old", "LOGOUT", "NOOP"])
