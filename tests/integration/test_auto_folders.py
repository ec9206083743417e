"""The folders every account has ([server] auto_folders, docs/imap.md
"Auto folders"): a new account's first login sees Sent, Drafts, Trash, Junk
and Archive, subscribed and with their RFC 6154 attributes, so Thunderbird,
Apple Mail and Outlook use them instead of making "Sent Messages" or
"Deleted Items" of their own. Like Dovecot's auto = subscribe: made once,
kept across restarts without a write, back after a DELETE or RENAME,
UNSUBSCRIBE changes nothing.
"""
import os
import poplib
import re
import time

from conftest import HOST
from test_imap import AUTO, AUTO_LIST, AUTO_LSUB, USERS, Raw, deliver, imapsrv  # noqa: F401

ALICE = "alice@example.com"
INBOX_LIST = b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n'


def in_order(lines):
    """LIST lines in the server's order: by mailbox name."""
    return sorted(lines, key=lambda l: re.search(rb'"/" "([^"]*)"', l).group(1))


# LIST "" "*" of a new account
NEW_LIST = in_order(AUTO_LIST + [INBOX_LIST])


def lines_ok(r, cmd):
    lines, t = r.cmd(cmd)
    assert b" OK " in t, (cmd, t, lines)
    return lines


def user_dir(srv, user=ALICE):
    return os.path.join(srv.data_dir, "mail", user)


def snapshot(srv, user=ALICE):
    """The user's folder list file and folder directories, byte for byte."""
    d = user_dir(srv, user)
    with open(os.path.join(d, "folders.log"), "rb") as f:
        log = f.read()
    return log, sorted(n for n in os.listdir(d) if re.fullmatch(r"f\d+", n))


def uidvalidities(r, names):
    out = {}
    for n in names:
        (line,) = lines_ok(r, f'STATUS "{n}" (UIDVALIDITY MESSAGES)')
        m = re.search(rb"UIDVALIDITY (\d+) MESSAGES (\d+)", line)
        out[n] = (int(m.group(1)), int(m.group(2)))
    return out


def made_events(srv, want=None):
    """The store-auto-folders log lines; with want, waits (up to 5 s) for
    that many: the log is written behind the replies."""
    deadline = time.monotonic() + 5
    while True:
        ev = srv.log_lines(event="store-auto-folders")
        if want is None or len(ev) >= want or time.monotonic() > deadline:
            return ev
        time.sleep(0.02)


def test_new_account_sees_them_everywhere(imapsrv):
    """The first login of a new account: LIST, LSUB, LIST (SUBSCRIBED),
    RETURN (SPECIAL-USE), the SPECIAL-USE selection, STATUS and SELECT, all
    exactly; made once (one log line), before the LOGIN's OK."""
    srv = imapsrv()
    r = Raw(srv).login()
    assert lines_ok(r, 'LIST "" "*"') == NEW_LIST
    assert lines_ok(r, 'LIST "" "*" RETURN (SPECIAL-USE)') == NEW_LIST
    assert lines_ok(r, 'LIST "" "%"') == NEW_LIST
    assert sorted(lines_ok(r, 'LSUB "" "*"')) == sorted(AUTO_LSUB)
    sub = [b'* LIST (\\HasNoChildren \\Subscribed %s) "/" "%s"\r\n' % (a.encode(), n.encode())
           for n, a in sorted(AUTO.items())]
    assert lines_ok(r, 'LIST (SUBSCRIBED) "" "*"') == sub
    assert lines_ok(r, 'LIST "" "*" RETURN (SUBSCRIBED)') == in_order(sub + [INBOX_LIST])
    assert lines_ok(r, 'LIST (SPECIAL-USE) "" "*"') == in_order(AUTO_LIST)
    for n in AUTO:
        assert lines_ok(r, f"STATUS {n} (MESSAGES UNSEEN UIDNEXT)") == [
            b'* STATUS "%s" (MESSAGES 0 UNSEEN 0 UIDNEXT 1)\r\n' % n.encode()]
        lines, t = r.cmd(f"SELECT {n}")
        assert b"* 0 EXISTS\r\n" in lines and b"[READ-WRITE]" in t, (n, lines, t)
    # an APPEND to Sent, as a client files what it sent
    msg = b"From: alice@example.com\r\nSubject: sent\r\n\r\nhi\r\n"
    _, t = r.cmd(b"APPEND Sent (\\Seen) {%d+}\r\n" % len(msg) + msg)
    assert b" OK [APPENDUID " in t, t
    ev = made_events(srv, 1)
    assert len(ev) == 1 and "created=5 subscribed=5" in ev[0], ev
    # bob's first login makes his own
    b = Raw(srv).login("bob@example.com")
    assert lines_ok(b, 'LIST "" "*"') == NEW_LIST
    ev = made_events(srv, 2)
    assert len(ev) == 2 and "bob@example.com created=5 subscribed=5" in ev[1], ev


def test_restart_keeps_them_without_a_write(imapsrv, ringmail):
    """After a restart the same folders (same UIDVALIDITY, same messages)
    are there once: the folder list file is byte-identical after logins on
    the restarted server, no folder directory was added, nothing was made."""
    srv = imapsrv()
    r = Raw(srv).login()
    msg = b"Subject: kept\r\n\r\nx\r\n"
    _, t = r.cmd(b"APPEND Drafts (\\Draft) {%d+}\r\n" % len(msg) + msg)
    assert b" OK " in t, t
    before = uidvalidities(r, AUTO)
    assert before["Drafts"][1] == 1
    r.cmd("LOGOUT")
    snap = snapshot(srv)
    assert snap[1] == ["f0", "f1", "f2", "f3", "f4", "f5"], snap[1]  # INBOX is f0
    assert srv.stop() == 0
    for i in range(2):
        srv2 = ringmail(data_dir=srv.data_dir)
        for _ in range(3):
            r = Raw(srv2).login()
            assert lines_ok(r, 'LIST "" "*"') == NEW_LIST
            assert sorted(lines_ok(r, 'LSUB "" "*"')) == sorted(AUTO_LSUB)
            assert uidvalidities(r, AUTO) == before
            r.cmd("LOGOUT")
        # POP3 and SMTP load the same user: nothing to do either
        deliver(srv2, ALICE, subject="after restart")
        p = poplib.POP3(HOST, srv2.port(110), timeout=10)
        p.user(ALICE)
        p.pass_(USERS[ALICE])
        assert p.stat()[0] == i + 1
        p.quit()
        assert snapshot(srv2) == snap
        assert srv2.stop() == 0
        assert made_events(srv2) == []  # the log is complete once it exited


def test_setting_off_gives_inbox_only(imapsrv):
    srv = imapsrv(config="[server]\nauto_folders =\n")
    r = Raw(srv).login()
    assert lines_ok(r, 'LIST "" "*"') == [INBOX_LIST]
    assert lines_ok(r, 'LSUB "" "*"') == []
    assert lines_ok(r, 'LIST (SPECIAL-USE) "" "*"') == []
    assert snapshot(srv) == (b"", ["f0"])  # INBOX only, nothing in the folder list
    assert srv.stop() == 0
    assert made_events(srv) == []


def test_custom_list(imapsrv):
    """A provider's own list: only those, the special-use attribute where
    the name has one, and a hierarchy name with its parent derived."""
    srv = imapsrv(config="[server]\nauto_folders = Trash, Sent Lists/Work\n")
    r = Raw(srv).login()
    assert lines_ok(r, 'LIST "" "*"') == [
        INBOX_LIST,
        b'* LIST (\\Noselect \\HasChildren) "/" "Lists"\r\n',
        b'* LIST (\\HasNoChildren) "/" "Lists/Work"\r\n',
        b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"\r\n',
        b'* LIST (\\HasNoChildren \\Trash) "/" "Trash"\r\n',
    ]
    assert lines_ok(r, 'LSUB "" "*"') == [b'* LSUB () "/" "Lists/Work"\r\n',
                                          b'* LSUB () "/" "Sent"\r\n',
                                          b'* LSUB () "/" "Trash"\r\n']
    ev = made_events(srv, 1)
    assert len(ev) == 1 and "created=3 subscribed=3" in ev[0], ev


def test_existing_account_gets_the_missing_ones(imapsrv, ringmail):
    """An account made before the setting (auto_folders off), with a Drafts
    of its own holding a message and unsubscribed: the next start makes the
    four it lacks and subscribes Drafts, whose message and UIDVALIDITY stay."""
    srv = imapsrv(config="[server]\nauto_folders =\n")
    r = Raw(srv).login()
    _, t = r.cmd("CREATE Drafts")
    assert b" OK " in t, t
    msg = b"Subject: mine\r\n\r\nx\r\n"
    _, t = r.cmd(b"APPEND Drafts {%d+}\r\n" % len(msg) + msg)
    assert b" OK " in t, t
    drafts = uidvalidities(r, ["Drafts"])["Drafts"]
    assert lines_ok(r, 'LSUB "" "*"') == []
    assert srv.stop() == 0
    srv2 = ringmail(data_dir=srv.data_dir)
    r = Raw(srv2).login()
    assert lines_ok(r, 'LIST "" "*"') == NEW_LIST
    assert sorted(lines_ok(r, 'LSUB "" "*"')) == sorted(AUTO_LSUB)
    assert uidvalidities(r, ["Drafts"])["Drafts"] == drafts
    ev = made_events(srv2, 1)
    assert len(ev) == 1 and "created=4 subscribed=5" in ev[0], ev


def test_delete_rename_unsubscribe(imapsrv):
    """Dovecot's auto = subscribe shows the folder whatever the user does:
    DELETE removes the messages and the folder is back, empty, with a new
    UIDVALIDITY, before the OK; RENAME keeps the messages under the new
    name and makes the folder again; UNSUBSCRIBE is OK and it stays
    subscribed. Another session sees the same."""
    srv = imapsrv()
    r, other = Raw(srv).login(), Raw(srv).login()
    msg = b"Subject: junk\r\n\r\nx\r\n"
    for box in ("Trash", "Sent"):
        _, t = r.cmd(b"APPEND %s {%d+}\r\n" % (box.encode(), len(msg)) + msg)
        assert b" OK " in t, t
    before = uidvalidities(r, AUTO)
    _, t = r.cmd("DELETE Trash")
    assert b" OK " in t, t
    assert lines_ok(r, 'LIST "" "*"') == NEW_LIST
    trash = uidvalidities(other, ["Trash"])["Trash"]
    assert trash[1] == 0 and trash[0] > before["Trash"][0], (trash, before)
    _, t = r.cmd('RENAME Sent "Sent 2025"')
    assert b" OK " in t, t
    assert lines_ok(other, 'LIST "" "*"') == in_order(
        NEW_LIST + [b'* LIST (\\HasNoChildren) "/" "Sent 2025"\r\n'])
    assert uidvalidities(r, ["Sent 2025"])["Sent 2025"] == before["Sent"]
    assert uidvalidities(r, ["Sent"])["Sent"][1] == 0
    _, t = r.cmd("UNSUBSCRIBE Junk")
    assert b" OK " in t, t
    assert sorted(lines_ok(other, 'LSUB "" "*"')) == sorted(AUTO_LSUB)
    # a name that is not an auto folder goes as always
    _, t = r.cmd('DELETE "Sent 2025"')
    assert b" OK " in t, t
    assert lines_ok(r, 'LIST "" "*"') == NEW_LIST
    # a DELETE of the selected one: the session is back in the authenticated state
    r.cmd("SELECT Junk")
    _, t = r.cmd("DELETE Junk")
    assert b" OK " in t, t
    _, t = r.cmd("FETCH 1 FLAGS")
    assert b" BAD " in t, t
    lines, t = r.cmd("SELECT Junk")
    assert b"* 0 EXISTS\r\n" in lines and b" OK " in t, (lines, t)


def test_they_do_not_count_toward_folders_max(imapsrv):
    srv = imapsrv(config="[limits]\nfolders_max = 2\n")
    r = Raw(srv).login()
    for box, want in (("a", b" OK "), ("b", b" OK "), ("c", b" NO [LIMIT] ")):
        _, t = r.cmd(f"CREATE {box}")
        assert want in t, (box, t)
    assert lines_ok(r, 'LIST "" "*"') == in_order(
        NEW_LIST + [b'* LIST (\\HasNoChildren) "/" "a"\r\n',
                    b'* LIST (\\HasNoChildren) "/" "b"\r\n'])


def test_smtp_delivery_to_a_new_account_makes_them(imapsrv):
    """The store makes them when it loads the user, whichever protocol
    asks first: an SMTP delivery to an account that never logged in."""
    srv = imapsrv()
    deliver(srv, "bob@example.com", subject="first")
    ev = made_events(srv, 1)
    assert len(ev) == 1 and "bob@example.com created=5 subscribed=5" in ev[0], ev
    b = Raw(srv).login("bob@example.com")
    assert lines_ok(b, 'LIST "" "*"') == NEW_LIST
    assert srv.stop() == 0
    assert len(made_events(srv)) == 1


def test_simultaneous_first_logins_make_them_once(imapsrv):
    """Eight first logins of one new account at once, spread over the
    server's two loops: one load makes the folders, the others wait for it;
    every session sees the same list, nothing is made twice."""
    srv = imapsrv()
    conns = [Raw(srv) for _ in range(8)]
    for i, c in enumerate(conns):
        c.send(f'l{i} LOGIN {ALICE} "{USERS[ALICE]}"\r\n'.encode())
    for i, c in enumerate(conns):
        _, t = c.until(f"l{i}")
        assert b" OK " in t, t
    for c in conns:
        assert lines_ok(c, 'LIST "" "*"') == NEW_LIST
    assert snapshot(srv)[1] == ["f0", "f1", "f2", "f3", "f4", "f5"]
    assert srv.stop() == 0
    ev = made_events(srv)
    assert len(ev) == 1 and "created=5 subscribed=5" in ev[0], ev
