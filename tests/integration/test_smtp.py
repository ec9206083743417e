"""SMTP against the real binary with real clients (issue 5): every SMTP port
of the table with Python's smtplib, swaks and curl; STARTTLS, submission
policy, implicit TLS, AUTH; byte-exact delivery (dot-stuffing, 8-bit,
SMTPUTF8, 10 MB, pipelining, BDAT, several recipients and an alias);
recipient and relay policy. Adversarial input is in test_smtp_adversarial.py.

Run one: meson test -C build smtp --test-args '-k test_bdat'  (or pytest
directly: RINGMAIL_BIN=build/app/ringmail pytest tests/integration/test_smtp.py -k bdat).
"""
import base64
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from smtp_helpers import (MX_PORTS, PASSWORDS, Raw, Server, dot_stuff, find, message,
                          return_path, strip_received, token)

ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"
DAVE = "dave@example.com"  # the 10 MB messages: a mailbox of their own
SIZE_MAX = 20 * 1024 * 1024
UTF8_USER = "δοκιμή@example.com"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("smtp"),
               limits={"message_size_max": "20m", "recipients_max": 3})
    s.start()
    # A user with a UTF-8 local part, added while the server runs: the
    # passwd file is watched. Optional: skipped by the SMTPUTF8 test when
    # `ringmail user add` refuses it.
    try:
        s.user_add(UTF8_USER, "utf8-Secret-4")
        PASSWORDS[UTF8_USER] = "utf8-Secret-4"  # for RINGMAIL_TEST_READER=pop3
        s.utf8_user = True
    except RuntimeError:
        s.utf8_user = False
    s.expect = {}  # (user, token) -> bytes sent: checked again at the end
    yield s
    assert s.alive(), "the server died:\n" + s.log()[-4000:]
    assert s.stop() == 0, s.log()[-3000:]


def delivered_once(srv, user, tok, original=None):
    """The one message in user's INBOX holding tok; with original, checks
    that it is byte-exact behind our Received: header. Returns (received
    header, rest)."""
    # not strict: a message damaged by another test must not hide this one;
    # the byte comparison below checks this one, the last test checks all
    msgs = find(srv.messages(user, strict=False), tok.encode())
    assert len(msgs) == 1, f"{user}: {len(msgs)} messages with {tok}"
    if original is not None:
        srv.expect[(user, tok)] = original
    hdr, rest = strip_received(msgs[0])
    if original is not None and rest != original:
        i = next((k for k in range(min(len(rest), len(original))) if rest[k] != original[k]),
                 min(len(rest), len(original)))
        raise AssertionError(f"{user}: stored {len(rest)} octets != sent {len(original)}; first "
                             f"difference at {i}: stored {rest[max(0, i - 40):i + 60]!r} "
                             f"sent {original[max(0, i - 40):i + 60]!r}")
    return hdr, rest


def raw_send(r, frm, rcpts, data, mail_params=""):
    """MAIL/RCPT/DATA step by step on a Raw client; data is the message,
    dot-stuffed here. Returns the reply to the end of data."""
    code, text = r.cmd(f"MAIL FROM:<{frm}>{mail_params}")
    assert code == 250, (code, text)
    for rc in rcpts:
        code, text = r.cmd(f"RCPT TO:<{rc}>")
        assert code == 250, (rc, code, text)
    code, text = r.cmd("DATA")
    assert code == 354, (code, text)
    r.send(dot_stuff(data))
    return r.reply(timeout=60)


def smtp(srv, port, **kw):
    return smtplib.SMTP("localhost", srv.port(port), timeout=30, **kw)


def smtps(srv):
    return smtplib.SMTP_SSL("localhost", srv.port(465), timeout=30, context=srv.ssl_context())


# ---- the defaults ------------------------------------------------------------

# Issue 5's limits and RFC 5321 4.5.3's values: what `check-config` prints
# for the embedded default, and what docs/config.md promises.
SMTP_DEFAULTS = {
    "message_size_max": ("52428800", "50m"),       # 50 MiB
    "recipients_max": ("1000", "1000"),            # 4.5.3.1.8 asks for at least 100
    "smtp_timeout": ("300000ms", "5m"),            # 4.5.3.2.7
    "prelogin_timeout": ("60000ms", "60s"),
    "handshake_timeout": ("10000ms", "10s"),
    "smtp_command_line_max": ("512", "512"),       # 4.5.3.1.4
    "smtp_line_max": ("1000", "1000"),             # 4.5.3.1.6
    "smtp_greet_pause": ("0ms", "0"),
    "header_size_max": ("1048576", "1m"),
    "max_hops": ("50", "50"),
    "max_bad_commands": ("10", "10"),
    "max_connections_per_ip": ("200", "200"),
    "smtp_bare_lf": ("reject", "reject"),
}


def test_smtp_defaults_in_check_config_and_docs(tmp_path):
    from conftest import run_cli
    r = run_cli("check-config")
    assert r.returncode == 0, r.stderr
    limits = r.stdout.split("[limits]\n", 1)[1].split("\n\n", 1)[0]
    got = dict(line.split(" = ", 1) for line in limits.splitlines())
    doc = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()
    for key, (printed, documented) in SMTP_DEFAULTS.items():
        assert got.get(key) == printed, (key, got.get(key))
        m = re.search(rf"^\| `{key}` \| `([^`]*)` \|", doc, re.M)
        assert m and m.group(1) == documented, (key, m and m.group(1))
    # and the server says so: SIZE in EHLO is the default message_size_max
    srv = Server(tmp_path / "defaults", limits={})
    srv.start()
    try:
        with Raw(srv, 25) as r:
            assert "SIZE 52428800" in r.ehlo().split("\n")
    finally:
        assert srv.stop() == 0


# ---- EHLO and STARTTLS on the MX ports -----------------------------------

@pytest.mark.parametrize("port", MX_PORTS)
def test_mx_port_ehlo_extensions(srv, port):
    s = smtp(srv, port)
    try:
        code, text = s.ehlo("client.example")
        assert code == 250
        assert text.startswith(b"mail.example.com"), text
        f = s.esmtp_features
        for ext in ("pipelining", "starttls", "enhancedstatuscodes", "8bitmime", "smtputf8",
                    "chunking", "dsn"):
            assert ext in f, (ext, f)
        assert f["size"] == str(SIZE_MAX), f
        assert set(f["auth"].upper().split()) >= {"PLAIN", "LOGIN"}, f
    finally:
        s.quit()


@pytest.mark.parametrize("port", MX_PORTS)
def test_mx_port_starttls_then_ehlo_required(srv, port):
    tok = token()
    s = smtp(srv, port)
    try:
        s.ehlo("client.example")
        code, _ = s.starttls(context=srv.ssl_context())
        assert code == 220
        assert isinstance(s.sock, ssl.SSLSocket)
        # RFC 3207 4.2: the server forgot the EHLO.
        code, text = s.docmd("MAIL", "FROM:<sender@remote.example>")
        assert code == 503, (code, text)
        s.ehlo("client.example")
        assert "starttls" not in s.esmtp_features
        assert "pipelining" in s.esmtp_features
        msg = message(tok)
        assert s.sendmail("sender@remote.example", [ALICE], msg) == {}
    finally:
        s.quit()
    hdr, _ = delivered_once(srv, ALICE, tok, msg)
    assert b"with ESMTPS" in hdr and b"version=TLS" in hdr, hdr


@pytest.mark.parametrize("port", MX_PORTS)
def test_mx_port_plain_delivery(srv, port):
    tok = token()
    msg = message(tok)
    s = smtp(srv, port)
    try:
        assert s.sendmail("sender@remote.example", [ALICE], msg) == {}
    finally:
        s.quit()
    hdr, _ = delivered_once(srv, ALICE, tok, msg)
    assert b"with ESMTP\r\n" in hdr, hdr
    assert b"[127.0.0.1]" in hdr, hdr


def test_starttls_twice_refused(srv):
    s = smtp(srv, 25)
    try:
        s.starttls(context=srv.ssl_context())
        s.ehlo()
        code, _ = s.docmd("STARTTLS")
        assert code == 503
    finally:
        s.quit()


# ---- 587: submission, TLS and AUTH required --------------------------------

def test_587_before_tls(srv):
    with Raw(srv, 587) as r:
        assert r.greeting[0] == 220
        text = r.ehlo()
        exts = [l.split()[0].upper() for l in text.split("\n")[1:]]
        assert "STARTTLS" in exts
        assert "AUTH" not in exts, text
        plain = base64.b64encode(f"\0{ALICE}\0{PASSWORDS[ALICE]}".encode()).decode()
        code, text = r.cmd(f"AUTH PLAIN {plain}")
        assert code == 530, (code, text)
        code, text = r.cmd("AUTH LOGIN")
        assert code == 530, (code, text)
        code, text = r.cmd(f"MAIL FROM:<{ALICE}>")
        assert code == 530, (code, text)
        assert text.startswith("5.7.0"), text


def _587_tls(srv):
    s = smtp(srv, 587)
    s.ehlo("client.example")
    s.starttls(context=srv.ssl_context())
    s.ehlo("client.example")
    return s


@pytest.mark.parametrize("mech,initial", [("PLAIN", True), ("PLAIN", False), ("LOGIN", False),
                                          ("LOGIN", True)])
def test_587_auth_after_starttls(srv, mech, initial):
    tok = token()
    s = _587_tls(srv)
    try:
        assert set(s.esmtp_features["auth"].upper().split()) >= {"PLAIN", "LOGIN"}
        s.user, s.password = ALICE, PASSWORDS[ALICE]
        fn = s.auth_plain if mech == "PLAIN" else s.auth_login
        code, text = s.auth(mech, fn, initial_response_ok=initial)
        assert code == 235, (code, text)
        msg = message(tok, frm=ALICE, to=BOB)
        assert s.sendmail(ALICE, [BOB], msg) == {}
    finally:
        s.quit()
    hdr, _ = delivered_once(srv, BOB, tok, msg)
    assert b"ESMTPSA" in hdr and b"authenticated as alice@example.com" in hdr, hdr


def test_587_mail_without_auth_after_tls(srv):
    s = _587_tls(srv)
    try:
        code, text = s.docmd("MAIL", f"FROM:<{ALICE}>")
        assert code == 530, (code, text)
    finally:
        s.quit()


def test_587_sender_ownership(srv):
    tok1, tok2 = token(), token()
    s = _587_tls(srv)
    try:
        s.login(ALICE, PASSWORDS[ALICE])
        for frm in (BOB, "someone@remote.example", "postmaster@remote.example"):
            code, text = s.docmd("MAIL", f"FROM:<{frm}>")
            assert code == 553, (frm, code, text)
        # own address, any case of it
        m1 = message(tok1, frm=ALICE, to=CAROL)
        assert s.sendmail("Alice@Example.COM", [CAROL], m1) == {}
        # an alias whose expansion holds alice
        m2 = message(tok2, frm="sales@example.com", to=CAROL)
        assert s.sendmail("sales@example.com", [CAROL], m2) == {}
        # an alias that does not hold alice... team holds alice and bob: OK;
        # bob's own address is not alice's.
        code, text = s.docmd("MAIL", f"FROM:<{BOB}>")
        assert code == 553, (code, text)
    finally:
        s.quit()
    delivered_once(srv, CAROL, tok1, m1)
    delivered_once(srv, CAROL, tok2, m2)


# ---- 465: implicit TLS --------------------------------------------------------

@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_465_auth_and_send(srv, mech):
    tok = token()
    s = smtps(srv)
    try:
        s.ehlo("client.example")
        assert "starttls" not in s.esmtp_features
        s.user, s.password = ALICE, PASSWORDS[ALICE]
        code, text = s.auth(mech, s.auth_plain if mech == "PLAIN" else s.auth_login)
        assert code == 235, (code, text)
        msg = message(tok, frm=ALICE, to=BOB)
        assert s.sendmail(ALICE, [BOB], msg) == {}
    finally:
        s.quit()
    hdr, _ = delivered_once(srv, BOB, tok, msg)
    assert b"ESMTPSA" in hdr, hdr


def test_465_mail_without_auth(srv):
    s = smtps(srv)
    try:
        s.ehlo()
        code, text = s.docmd("MAIL", f"FROM:<{ALICE}>")
        assert code == 530, (code, text)
    finally:
        s.quit()


def _auth_plain_reply(srv, user, password):
    s = smtps(srv)
    try:
        s.ehlo()
        t0 = time.monotonic()
        resp = s.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode())
        return resp, time.monotonic() - t0
    finally:
        s.close()


def test_465_wrong_password_and_unknown_user_identical(srv):
    # Separate addresses: the failure delay is per address.
    (c1, t1), d1 = _auth_plain_reply(srv, CAROL, "wrong-password")
    (c2, t2), d2 = _auth_plain_reply(srv, "nobody@example.com", "wrong-password")
    assert c1 == 535 and c2 == 535, (c1, t1, c2, t2)
    assert t1 == t2, (t1, t2)
    # and a good login of another user still works at once afterwards
    s = smtps(srv)
    try:
        s.ehlo()
        code, _ = s.login(BOB, PASSWORDS[BOB])
        assert code == 235
    finally:
        s.quit()


def test_465_second_failure_is_delayed(srv):
    """docs/users.md: failed logins are delayed 2 s+ per address."""
    (c1, _), _ = _auth_plain_reply(srv, "delay-probe@example.com", "x1")
    (c2, _), d2 = _auth_plain_reply(srv, "delay-probe@example.com", "x2")
    assert c1 == 535 and c2 == 535
    assert d2 >= 1.5, f"second failure answered after {d2:.2f}s"


def test_465_login_bad_password_via_login_mech(srv):
    s = smtps(srv)
    try:
        s.ehlo()
        s.user, s.password = "login-probe@example.com", "nope"
        code, text = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
    except smtplib.SMTPAuthenticationError as e:
        code, text = e.smtp_code, e.smtp_error
    finally:
        s.close()
    assert code == 535, (code, text)


# ---- swaks and curl ---------------------------------------------------------

needs_swaks = pytest.mark.skipif(not shutil.which("swaks"), reason="swaks not installed")
needs_curl = pytest.mark.skipif(not shutil.which("curl"), reason="curl not installed")


@needs_swaks
def test_swaks_plain_25(srv):
    tok = token()
    r = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(srv.port(25)),
                        "--from", "sender@remote.example", "--to", ALICE,
                        "--header", f"Subject: {tok}", "--body", f"body {tok}"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stdout.decode()[-2000:]
    assert b"<-  250 2.0.0" in r.stdout, r.stdout.decode()[-1500:]
    _, rest = delivered_once(srv, ALICE, tok)
    assert f"body {tok}".encode() in rest


@needs_swaks
def test_swaks_587_tls_auth_plain(srv):
    tok = token()
    r = subprocess.run(["swaks", "--server", "localhost", "--port", str(srv.port(587)),
                        "--tls", "--tls-verify", "--tls-ca-path", srv.cafile,
                        "--auth", "PLAIN", "--auth-user", ALICE,
                        "--auth-password", PASSWORDS[ALICE],
                        "--from", ALICE, "--to", BOB,
                        "--header", f"Subject: {tok}", "--body", f"body {tok}"],
                       capture_output=True, timeout=60)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out[-2000:]
    assert "<~  235" in out and "<~  250 2.0.0" in out, out[-2000:]
    hdr, rest = delivered_once(srv, BOB, tok)
    assert b"ESMTPSA" in hdr


@needs_swaks
def test_swaks_465_tls_on_connect_login(srv):
    tok = token()
    r = subprocess.run(["swaks", "--server", "localhost", "--port", str(srv.port(465)),
                        "--tls-on-connect", "--tls-verify", "--tls-ca-path", srv.cafile,
                        "--auth", "LOGIN", "--auth-user", BOB, "--auth-password", PASSWORDS[BOB],
                        "--from", BOB, "--to", ALICE, "--header", f"Subject: {tok}"],
                       capture_output=True, timeout=60)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out[-2000:]
    delivered_once(srv, ALICE, tok)


def _curl(args, data, tmp_path):
    f = tmp_path / "msg.eml"
    f.write_bytes(data)
    return subprocess.run(["curl", "-sS", "-v", "--upload-file", str(f)] + args,
                          capture_output=True, timeout=60)


@needs_curl
def test_curl_smtp_25(srv, tmp_path):
    tok = token()
    msg = message(tok, body=b"curl body\r\n.leading dot\r\n")
    r = _curl([f"smtp://127.0.0.1:{srv.port(25)}/client.example",
               "--mail-from", "sender@remote.example", "--mail-rcpt", ALICE,
               "--mail-rcpt", BOB], msg, tmp_path)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    delivered_once(srv, ALICE, tok, msg)
    delivered_once(srv, BOB, tok, msg)


@needs_curl
def test_curl_smtps_465(srv, tmp_path):
    tok = token()
    msg = message(tok, frm=ALICE, to=CAROL)
    r = _curl([f"smtps://localhost:{srv.port(465)}/client.example", "--cacert", srv.cafile,
               "--user", f"{ALICE}:{PASSWORDS[ALICE]}",
               "--mail-from", ALICE, "--mail-rcpt", CAROL], msg, tmp_path)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    hdr, _ = delivered_once(srv, CAROL, tok, msg)
    assert b"ESMTPSA" in hdr


@needs_curl
def test_curl_smtp_587_ssl_reqd(srv, tmp_path):
    tok = token()
    msg = message(tok, frm=ALICE, to=CAROL)
    r = _curl([f"smtp://localhost:{srv.port(587)}/client.example", "--ssl-reqd",
               "--cacert", srv.cafile, "--user", f"{ALICE}:{PASSWORDS[ALICE]}",
               "--mail-from", ALICE, "--mail-rcpt", CAROL], msg, tmp_path)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    delivered_once(srv, CAROL, tok, msg)


@needs_curl
def test_curl_smtps_wrong_password(srv, tmp_path):
    msg = message(token(), frm=ALICE)
    r = _curl([f"smtps://localhost:{srv.port(465)}/client.example", "--cacert", srv.cafile,
               "--user", f"{CAROL}:wrong",
               "--mail-from", CAROL, "--mail-rcpt", ALICE], msg, tmp_path)
    assert r.returncode == 67, r.stderr.decode()[-2000:]  # CURLE_LOGIN_DENIED
    assert b"< 535" in r.stderr


# ---- delivery, byte-exact ----------------------------------------------------

def test_dot_stuffed_lines_roundtrip(srv):
    tok = token()
    body = (b".\r\n..\r\n...three\r\n.leading\r\nmiddle . dot\r\n. \r\n"
            b"line\r\n.\r\nafter lone dot\r\n")
    msg = message(tok, body=body)
    with Raw(srv, 25) as r:
        r.ehlo()
        code, text = raw_send(r, "sender@remote.example", [ALICE], msg)
        assert code == 250, (code, text)
    delivered_once(srv, ALICE, tok, msg)


def test_8bit_body(srv):
    tok = token()
    body = bytes(range(0x80, 0x100)) + b"\r\n" + "grüße, 日本語, ☃\r\n".encode() + b"\x01\x7f\r\n"
    msg = message(tok, body=body, extra_headers=b"Content-Type: text/plain; charset=utf-8\r\n"
                                                b"Content-Transfer-Encoding: 8bit\r\n")
    s = smtp(srv, 2525)
    try:
        s.ehlo()
        assert s.sendmail("sender@remote.example", [ALICE], msg,
                          mail_options=["BODY=8BITMIME"]) == {}
    finally:
        s.quit()
    delivered_once(srv, ALICE, tok, msg)


def test_smtputf8_sender(srv):
    tok = token()
    frm = "jöhn.dœ@rémote.example"
    msg = message(tok, frm=frm).replace(b"test", "tëst".encode(), 1)
    s = smtp(srv, 25)
    try:
        s.ehlo()
        assert "smtputf8" in s.esmtp_features
        assert s.sendmail(frm, [ALICE], msg, mail_options=["SMTPUTF8", "BODY=8BITMIME"]) == {}
    finally:
        s.quit()
    delivered_once(srv, ALICE, tok, msg)


def test_utf8_address_without_smtputf8_refused(srv):
    with Raw(srv, 25) as r:
        r.ehlo()
        code, text = r.cmd("MAIL FROM:<jöhn@rémote.example>".encode())
        assert code == 553, (code, text)
        assert "5.6.7" in text


def test_smtputf8_recipient(srv):
    if not srv.utf8_user:
        pytest.skip("`ringmail user add` refused a UTF-8 local part")
    tok = token()
    msg = message(tok, to=UTF8_USER)
    s = smtp(srv, 25)
    try:
        s.ehlo()
        assert s.sendmail("sender@remote.example", [UTF8_USER], msg,
                          mail_options=["SMTPUTF8", "BODY=8BITMIME"]) == {}
    finally:
        s.quit()
    delivered_once(srv, UTF8_USER, tok, msg)


def test_10mb_message(srv):
    tok = token()
    line = (b"0123456789abcdefghijklmnopqrstuvwxyz" * 2)[:76] + b"\r\n"
    body = line * (10 * 1024 * 1024 // len(line) + 1)
    msg = message(tok, body=body, to=DAVE)
    assert len(msg) > 10 * 1024 * 1024
    s = smtp(srv, 25)
    try:
        s.ehlo()
        assert s.sendmail("sender@remote.example", [DAVE], msg,
                          mail_options=[f"SIZE={len(msg)}"]) == {}
    finally:
        s.quit()
    delivered_once(srv, DAVE, tok, msg)


def test_bdat_10mb_in_chunks_and_in_one(srv):
    line = b"BDAT-large-message-line-0123456789-abcdefghijklmnopqrstuvwxyz-0123456789\r\n"
    for chunked in (True, False):
        tok = token()
        msg = message(tok, to=DAVE, body=line * (10 * 1024 * 1024 // len(line) + 7))
        with Raw(srv, 25) as r:
            r.ehlo()
            assert r.cmd("MAIL FROM:<x@remote.example> BODY=8BITMIME")[0] == 250
            assert r.cmd(f"RCPT TO:<{DAVE}>")[0] == 250
            if chunked:
                step = 1000003
                for off in range(0, len(msg), step):
                    piece = msg[off:off + step]
                    last = " LAST" if off + step >= len(msg) else ""
                    r.send(f"BDAT {len(piece)}{last}\r\n".encode() + piece)
                    code, text = r.reply(timeout=60)
                    assert code == 250, (off, code, text)
            else:
                r.send(f"BDAT {len(msg)} LAST\r\n".encode() + msg)
                code, text = r.reply(timeout=60)
                assert code == 250, (code, text)
        delivered_once(srv, DAVE, tok, msg)


def test_small_messages_after_a_large_one(srv):
    """A large message gets a segment file of its own; the small ones
    after it, each in its own session (the INBOX is closed and reopened in
    between), must not land on top of one another."""
    big = token()
    mbig = message(big, body=(b"L" * 78 + b"\r\n") * 5000)  # 400 kB > the append buffer
    small = [token() for _ in range(4)]
    msgs = [message(t, to=CAROL) for t in small]
    for tok, m in [(big, mbig)] + list(zip(small, msgs)):
        s = smtp(srv, 25)
        try:
            assert s.sendmail("sender@remote.example", [CAROL], m) == {}
        finally:
            s.quit()
        time.sleep(0.3)
    delivered_once(srv, CAROL, big, mbig)
    for tok, m in zip(small, msgs):
        delivered_once(srv, CAROL, tok, m)


def test_several_messages_per_session(srv):
    toks = [token() for _ in range(5)]
    msgs = [message(t, body=f"message {i}\r\n".encode()) for i, t in enumerate(toks)]
    s = smtp(srv, 26)
    try:
        s.ehlo()
        for i, m in enumerate(msgs):
            assert s.sendmail("sender@remote.example", [ALICE if i % 2 else BOB], m) == {}
        code, _ = s.rset()
        assert code == 250
    finally:
        s.quit()
    for i, (t, m) in enumerate(zip(toks, msgs)):
        hdr, _ = delivered_once(srv, ALICE if i % 2 else BOB, t, m)
        assert f".{i + 1}".encode() in hdr  # "id SID.N": the session's Nth message


def test_pipelined_transactions(srv):
    t1, t2 = token(), token()
    m1, m2 = message(t1, to=BOB), message(t2)
    with Raw(srv, 25) as r:
        r.ehlo()
        r.send(f"MAIL FROM:<a@remote.example>\r\nRCPT TO:<{ALICE}>\r\nRCPT TO:<{BOB}>\r\nDATA\r\n")
        assert [r.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
        # end of data, then the whole next transaction, in one write
        r.send(dot_stuff(m1) + f"MAIL FROM:<b@remote.example>\r\nRCPT TO:<{ALICE}>\r\n"
               f"RCPT TO:<nobody@example.com>\r\nDATA\r\n".encode())
        replies = [r.reply(timeout=30) for _ in range(5)]
        assert [c for c, _ in replies] == [250, 250, 250, 550, 354], replies
        r.send(dot_stuff(m2) + b"QUIT\r\n")
        assert r.reply(timeout=30)[0] == 250
        assert r.reply()[0] == 221
    delivered_once(srv, ALICE, t1, m1)
    delivered_once(srv, BOB, t1, m1)
    delivered_once(srv, ALICE, t2, m2)
    assert find(srv.messages(BOB, strict=False), t2.encode()) == []


def test_bdat_chunks(srv):
    tok = token()
    msg = message(tok, body=b".dot at start is not stuffed in BDAT\r\nbare\nLF kept\r\n")
    a, b, c = msg[:10], msg[10:57], msg[57:]
    with Raw(srv, 25) as r:
        r.ehlo()
        r.send(f"MAIL FROM:<x@remote.example>\r\nRCPT TO:<{ALICE}>\r\n"
               f"BDAT {len(a)}\r\n".encode() + a)
        assert [r.reply()[0] for _ in range(3)] == [250, 250, 250]
        r.send(f"BDAT {len(b)}\r\n".encode() + b + f"BDAT {len(c)} LAST\r\n".encode() + c)
        code, text = r.reply()
        assert code == 250, (code, text)
        code, text = r.reply(timeout=30)
        assert code == 250, (code, text)
    delivered_once(srv, ALICE, tok, msg)


def test_bdat_zero_last(srv):
    tok = token()
    msg = message(tok)
    with Raw(srv, 25) as r:
        r.ehlo()
        r.send(f"MAIL FROM:<x@remote.example>\r\nRCPT TO:<{BOB}>\r\nBDAT {len(msg)}\r\n".encode()
               + msg + b"BDAT 0 LAST\r\n")
        replies = [r.reply(timeout=30) for _ in range(4)]
        assert [c for c, _ in replies] == [250, 250, 250, 250], replies
    delivered_once(srv, BOB, tok, msg)


def test_bdat_single_last_chunk_with_binary(srv):
    tok = token()
    msg = message(tok, body=b"\x00\x01\xff no dot-stuffing: \r\n.\r\n and more\r\n")
    with Raw(srv, 25) as r:
        r.ehlo()
        r.cmd("MAIL FROM:<x@remote.example> BODY=8BITMIME")
        r.cmd(f"RCPT TO:<{ALICE}>")
        r.send(f"BDAT {len(msg)} LAST\r\n".encode() + msg)
        code, text = r.reply(timeout=30)
        assert code == 250, (code, text)
        assert r.cmd("NOOP")[0] == 250
    delivered_once(srv, ALICE, tok, msg)


def test_bdat_without_transaction(srv):
    with Raw(srv, 25) as r:
        r.ehlo()
        r.send(b"BDAT 5\r\nhelloNOOP\r\n")
        code, text = r.reply()
        assert code == 503, (code, text)
        assert r.reply()[0] == 250  # the NOOP: the 5 bytes were skipped


def test_multiple_recipients_and_alias(srv):
    tok = token()
    msg = message(tok, to="sales@example.com")
    s = smtp(srv, 25)
    try:
        # sales -> alice: alice must get one copy, not two
        assert s.sendmail("sender@remote.example", [ALICE, "sales@example.com", BOB], msg) == {}
    finally:
        s.quit()
    delivered_once(srv, ALICE, tok, msg)
    delivered_once(srv, BOB, tok, msg)
    assert find(srv.messages(CAROL, strict=False), tok.encode()) == []


def test_alias_with_two_targets_and_case(srv):
    tok = token()
    msg = message(tok, to="team@example.com")
    s = smtp(srv, 25)
    try:
        assert s.sendmail("sender@remote.example", ["TEAM@Example.Com"], msg) == {}
    finally:
        s.quit()
    delivered_once(srv, ALICE, tok, msg)
    delivered_once(srv, BOB, tok, msg)


def test_postmaster_always_accepted(srv):
    with Raw(srv, 25) as r:
        r.ehlo()
        r.cmd("MAIL FROM:<>")
        code, text = r.cmd("RCPT TO:<Postmaster>")
        assert code == 250, (code, text)
        code, text = r.cmd("RCPT TO:<postmaster@example.com>")
        assert code == 250, (code, text)


# ---- recipient policy ----------------------------------------------------------

def test_unknown_local_recipient(srv):
    with Raw(srv, 25) as r:
        r.ehlo()
        assert r.cmd("MAIL FROM:<x@remote.example>")[0] == 250
        code, text = r.cmd("RCPT TO:<nobody@example.com>")
        assert code == 550 and text.startswith("5.1.1"), (code, text)
        code, text = r.cmd("DATA")
        assert code in (503, 554), (code, text)


def test_recipients_max(srv):
    tok = token()
    msg = message(tok)
    with Raw(srv, 25) as r:
        r.ehlo()
        assert r.cmd("MAIL FROM:<x@remote.example>")[0] == 250
        for rc in (ALICE, BOB, CAROL):
            assert r.cmd(f"RCPT TO:<{rc}>")[0] == 250
        code, text = r.cmd("RCPT TO:<sales@example.com>")
        assert code == 452, (code, text)
        assert r.cmd("DATA")[0] == 354
        r.send(dot_stuff(msg))
        assert r.reply(timeout=30)[0] == 250
    for u in (ALICE, BOB, CAROL):
        delivered_once(srv, u, tok, msg)


def test_remote_without_auth_denied(srv):
    with Raw(srv, 25) as r:
        r.ehlo()
        assert r.cmd("MAIL FROM:<x@remote.example>")[0] == 250
        code, text = r.cmd("RCPT TO:<someone@remote.example>")
        assert code == 554 and text.startswith("5.7.1"), (code, text)


@pytest.mark.parametrize("port", [25, 587, 465])
def test_remote_with_auth_is_queued(srv, port):
    """Authenticated relaying goes to the outbound queue (issue 8): RCPT is
    accepted. RSET before DATA: nothing is queued, nothing leaves."""
    if port == 465:
        s = smtps(srv)
    else:
        s = smtp(srv, port)
        s.ehlo()
        s.starttls(context=srv.ssl_context())
    try:
        s.ehlo()
        s.login(ALICE, PASSWORDS[ALICE])
        assert s.docmd("MAIL", f"FROM:<{ALICE}>")[0] == 250
        code, text = s.docmd("RCPT", "TO:<someone@remote.example>")
        assert code == 250, (code, text)
        assert s.docmd("RSET")[0] == 250
    finally:
        s.quit()


RELAY_TRICKS = [
    "user%remote.example@example.com",
    "remote.example!user@example.com",
    "@relay.example:user@remote.example",
    '"user@remote.example"@example.com',
    "user@[127.0.0.1]",
    "user@remote.example.",
    "user@remote.example@example.com",
    "alice%remote.example@example.com",
    "user%remote.example%example.com@example.com",
]


@pytest.mark.parametrize("rcpt", RELAY_TRICKS)
@pytest.mark.parametrize("port", [25, 2525])
def test_open_relay_matrix(srv, rcpt, port):
    tok = token()
    before = srv.total()
    with Raw(srv, port) as r:
        r.ehlo()
        assert r.cmd("MAIL FROM:<x@remote.example>")[0] == 250
        code, text = r.cmd(f"RCPT TO:<{rcpt}>")
        assert 500 <= code < 600, (rcpt, code, text)
        code, text = r.cmd("DATA")
        assert code != 354, (code, text)
        if code == 354:
            r.send(dot_stuff(message(tok)))
            r.reply()
    assert srv.total() == before
    assert find(srv.all_messages(), tok.encode()) == []


# ---- odds and ends ----------------------------------------------------------------

def test_helo_then_send(srv):
    tok = token()
    msg = message(tok)
    with Raw(srv, 25) as r:
        code, text = r.cmd("HELO old.example")
        assert code == 250
        code, text = raw_send(r, "x@remote.example", [ALICE], msg)
        assert code == 250, (code, text)
    hdr, _ = delivered_once(srv, ALICE, tok, msg)
    assert b"with SMTP" in hdr, hdr


def test_rset_and_noop_and_vrfy(srv):
    with Raw(srv, 25) as r:
        r.ehlo()
        assert r.cmd("MAIL FROM:<x@remote.example>")[0] == 250
        assert r.cmd("RSET")[0] == 250
        assert r.cmd(f"RCPT TO:<{ALICE}>")[0] == 503
        assert r.cmd("NOOP")[0] == 250
        code, _ = r.cmd(f"VRFY {ALICE}")
        assert code == 252
        assert r.cmd("QUIT")[0] == 221
        assert r.closed()


def test_help_214(srv):
    with Raw(srv, 25) as r:
        r.ehlo()
        for line in ("HELP", "HELP MAIL"):
            code, text = r.cmd(line)
            assert code == 214 and text.startswith("2.0.0 Commands: HELO EHLO MAIL RCPT DATA"), \
                (line, code, text)
        assert r.cmd("NOOP")[0] == 250


def test_expn_502(srv):
    """No EXPN (issue 5): 502 for a list, a user and an unknown address
    alike, naming nobody; the session goes on."""
    with Raw(srv, 25) as r:
        r.ehlo()
        for arg in ("team@example.com", ALICE, "nobody@example.com", "team"):
            code, text = r.cmd(f"EXPN {arg}")
            assert (code, text) == (502, "5.5.1 Error: EXPN not available"), (arg, code, text)
        assert r.cmd("NOOP")[0] == 250


def test_vrfy_discloses_nothing(srv):
    """VRFY (RFC 5321 3.5.3, issue 5: 252, no address disclosure): the
    same reply for a user, an alias, an unknown local address and a remote
    one, on an MX port and after AUTH on submission."""
    want = (252, "2.5.2 Cannot VRFY user, but will accept message and attempt delivery")
    args = (ALICE, "team@example.com", "nobody@example.com", "alice", "x@remote.example")
    with Raw(srv, 25) as r:
        r.ehlo()
        for arg in args:
            assert r.cmd(f"VRFY {arg}") == want, arg
    s = smtps(srv)
    try:
        s.login(ALICE, PASSWORDS[ALICE])
        for arg in args:
            code, text = s.verify(arg)
            assert (code, text.decode()) == want, arg
    finally:
        s.quit()


def test_25_after_auth_sender_must_be_owned(srv):
    """Port 25 after AUTH is submission as on 587 (issue 5): a MAIL FROM
    that is neither the user nor one of its aliases gets 553 5.7.1."""
    tok = token()
    s = smtp(srv, 25)
    try:
        s.ehlo("client.example")
        s.login(ALICE, PASSWORDS[ALICE])
        for frm in (BOB, "someone@remote.example", "team@remote.example"):
            code, text = s.docmd("MAIL", f"FROM:<{frm}>")
            assert (code, text) == (553, b"5.7.1 Error: sender address not owned by the "
                                         b"authenticated user"), (frm, code, text)
        code, _ = s.docmd("MAIL", "FROM:<sales@example.com>")  # alias of alice
        assert code == 250
        assert s.rset()[0] == 250
        msg = message(tok, frm=ALICE, to=CAROL)
        assert s.sendmail(ALICE, [CAROL], msg) == {}
    finally:
        s.quit()
    hdr, _ = delivered_once(srv, CAROL, tok, msg)
    assert b"with ESMTPA" in hdr and b"(authenticated as alice@example.com)" in hdr, hdr
    # without AUTH port 25 takes any sender (server-to-server)
    with Raw(srv, 25) as r:
        r.ehlo()
        assert r.cmd(f"MAIL FROM:<{BOB}>")[0] == 250


def _cipher_key(name):
    """wolfSSL ("TLS13-AES128-GCM-SHA256") and OpenSSL ("TLS_AES_128_GCM_SHA256",
    "ECDHE-ECDSA-AES128-GCM-SHA256") names of one suite, made comparable."""
    for p in ("TLS13-", "TLS_"):
        if name.startswith(p):
            name = name[len(p):]
    return name.replace("_", "").replace("-", "").upper()


@pytest.mark.parametrize("sender", ["sender@remote.example", "", '"two words"@remote.example'])
def test_return_path_is_the_envelope_sender(srv, sender):
    """Final delivery puts the envelope sender first as Return-Path (RFC
    5321 4.4): "<>" for a bounce, a quoted local part as given; every
    local recipient's copy gets it once, ahead of our Received field."""
    tok = token()
    msg = message(tok, frm="someone-else@remote.example", to=ALICE)
    with Raw(srv, MX_PORTS[0]) as r:
        assert r.greeting[0] == 220
        assert r.cmd("EHLO mta.remote.example")[0] == 250
        assert raw_send(r, sender, [ALICE, BOB], msg)[0] == 250
    for user in (ALICE, BOB):
        m = find(srv.messages(user, strict=False), tok.encode())
        assert len(m) == 1, user
        assert return_path(m[0]) == sender, m[0][:200]
        assert m[0].count(b"\r\nReturn-Path:") == 0, m[0][:400]
        delivered_once(srv, user, tok, msg)  # then Received, then the bytes sent


@pytest.mark.parametrize("version", ["TLSv1.3", "TLSv1.2"])
def test_received_names_helo_and_tls(srv, version):
    """The Received: field of a STARTTLS delivery names the HELO name given
    after the upgrade, the peer, ESMTPS, and the TLS version and cipher the
    client negotiated (RFC 8314 7.4)."""
    tok = token()
    msg = message(tok, to=BOB)
    ctx = srv.ssl_context()
    ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, version.replace(".", "_"))
    s = smtp(srv, 2525)
    try:
        s.ehlo("before-tls.example")
        s.starttls(context=ctx)
        s.ehlo("mta.sender.example")
        got_version, got_cipher = s.sock.version(), s.sock.cipher()[0]
        assert s.sendmail("x@remote.example", [BOB], msg) == {}
    finally:
        s.quit()
    assert got_version == version
    hdr, _ = delivered_once(srv, BOB, tok, msg)
    text = hdr.decode()
    assert text.startswith("Received: from mta.sender.example ([127.0.0.1])\r\n"
                           "\tby mail.example.com (ringmail) with ESMTPS\r\n"), text
    assert "before-tls.example" not in text
    m = re.search(r"\(version=(\S+) cipher=(\S+)\)", text)
    assert m, text
    assert m.group(1) == version, text
    assert _cipher_key(m.group(2)) == _cipher_key(got_cipher), (m.group(2), got_cipher)


def test_parallel_deliveries_to_the_same_mailboxes(srv):
    """Sessions on both loops append to the same INBOXes at once: every
    message lands once, byte-exact (a folder open on two loops)."""
    from concurrent.futures import ThreadPoolExecutor

    def one_client(i):
        sent = []
        s = smtp(srv, MX_PORTS[i % len(MX_PORTS)])
        try:
            for j in range(8):
                tok = token()
                body = (f"client {i} message {j}\r\n".encode()) * (1 + (i * 37 + j * 101) % 400)
                m = message(tok, body=body)
                assert s.sendmail("sender@remote.example", [ALICE, BOB], m) == {}
                sent.append((tok, m))
        finally:
            s.quit()
        return sent

    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(one_client, range(8)))
    for sent in results:
        for tok, m in sent:
            delivered_once(srv, ALICE, tok, m)
            delivered_once(srv, BOB, tok, m)


def test_pop3_reads_back_what_smtp_delivered(srv):
    """The same bytes through the server (POP3 RETR) as in the store."""
    tok = token()
    msg = message(tok, to=BOB, body=b".starts with a dot\r\nline\r\n..two\r\n")
    s = smtp(srv, 25)
    try:
        assert s.sendmail("sender@remote.example", [BOB], msg) == {}
    finally:
        s.quit()
    from smtp_helpers import pop3_read_all
    via_pop = find(pop3_read_all(srv, BOB, PASSWORDS[BOB]), tok.encode())
    via_store = find(srv.messages(BOB), tok.encode())
    assert len(via_pop) == 1 and via_pop == via_store
    assert strip_received(via_pop[0])[1] == msg


def test_zz_everything_delivered_is_still_intact(srv):
    """Last in the module: every message acknowledged earlier is still
    there, once, byte-exact (a later delivery must not overwrite one), and
    the server is alive."""
    assert srv.alive()
    bad = []
    for (user, tok), original in srv.expect.items():
        try:
            msgs = find(srv.messages(user, strict=True), tok.encode())
        except Exception as e:  # a corrupt folder: report it, go on
            bad.append(f"{user} {tok}: {e}")
            continue
        if len(msgs) != 1 or strip_received(msgs[0])[1] != original:
            bad.append(f"{user} {tok}: {len(msgs)} copies"
                       + ("" if len(msgs) != 1 else ", bytes differ"))
    assert not bad, f"{len(bad)} of {len(srv.expect)} acknowledged messages lost or damaged:\n" \
        + "\n".join(bad[:20])
    with Raw(srv, 25) as r:
        r.ehlo()
