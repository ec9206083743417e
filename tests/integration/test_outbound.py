"""Outbound delivery (issue 8): the durable queue, MX lookup through a real
DNS server (dnsmasq on a loopback port), delivery to a second ringmail
instance acting as remote.example's MX, retries across restarts, bounces,
null MX and kill -9 during delivery.

Run one: meson test -C build integration-outbound --test-args '-k null_mx'
"""
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import time
from pathlib import Path

import pytest

import conftest
from dkim_helpers import dkim_record, strip_sig, tags, verify
from smtp_helpers import Server, find, message, token

ALICE, ALICE_PW = "alice@example.com", "alice-Secret-1"
BOB, BOB_PW = "bob@remote.example", "bob-Remote-2"
# What a final delivery puts first: Return-Path (the envelope sender, RFC
# 5321 4.4), then the Received fields (group 2) of every hop.
RX_RECEIVED = re.compile(rb"\AReturn-Path: <([^\r\n<>]*)>\r\n"
                         rb"((?:Received: [^\r\n]*(?:\r\n[ \t][^\r\n]*)*\r\n)+)")

pytestmark = pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq not installed")


def free_udp_port():
    for _ in range(100):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if 1024 < port < 65000:
            return port
    raise RuntimeError("no free UDP port")


class DNS(str):
    """The resolver's "127.0.0.1:PORT" (what --dns and [outbound] dns take),
    with the path of dnsmasq's log (--log-queries: one line per query, in
    the order they came)."""

    def queries(self, since=0):
        """[(type, name)] of the queries logged after offset since."""
        text = Path(self.log).read_text(errors="replace")[since:]
        return re.findall(r"query\[(\w+)\] (\S+) from", text)

    def mark(self):
        return len(Path(self.log).read_text(errors="replace"))


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    """dnsmasq serving remote.example (MX -> 127.0.0.1), nullmx.example
    (RFC 7505 null MX), nomx.example (only an A record), pref.example (MX 3
    -> a host without address, MX 5 -> 127.0.0.2 where nothing listens,
    MX 10 -> 127.0.0.1; listed out of order) and v6.example (MX -> a host
    with only an AAAA record, ::1). A port taken between free_udp_port()
    and dnsmasq's bind makes it exit: another port is tried."""
    d = tmp_path_factory.mktemp("dns")
    for attempt in range(5):
        port = free_udp_port()
        log_path = d / f"dnsmasq-{attempt}.log"
        log = open(log_path, "w")
        proc = subprocess.Popen(
            ["dnsmasq", "--no-daemon", f"--port={port}", "--listen-address=127.0.0.1",
             "--bind-interfaces", "--no-resolv", "--no-hosts", "--user=root",
             f"--pid-file={d}/dnsmasq.pid",
             "--mx-host=remote.example,mx.remote.example,10",
             "--host-record=mx.remote.example,127.0.0.1",
             "--mx-host=nullmx.example,.,0",
             "--host-record=nullmx.example,127.0.0.1",
             "--host-record=nomx.example,127.0.0.1",
             "--mx-host=pref.example,mx10.pref.example,10",
             "--mx-host=pref.example,mx3.pref.example,3",
             "--mx-host=pref.example,mx5.pref.example,5",
             "--host-record=mx10.pref.example,127.0.0.1",
             "--host-record=mx5.pref.example,127.0.0.2",
             "--mx-host=v6.example,mx6.v6.example,10",
             "--host-record=mx6.v6.example,::1",
             "--local=/remote.example/", "--local=/nullmx.example/", "--local=/nomx.example/",
             "--local=/pref.example/", "--local=/v6.example/",
             "--log-queries"],
            stdout=log, stderr=subprocess.STDOUT)
        time.sleep(0.5)
        if proc.poll() is None:
            break
    else:
        pytest.fail("dnsmasq did not start: " + (d / "dnsmasq-4.log").read_text())
    server = DNS(f"127.0.0.1:{port}")
    server.log = str(log_path)
    yield server
    proc.terminate()
    proc.wait(5)


def stop_any_exit(server):
    """Stops a server whatever its exit status (kill -9 tests, a start
    that failed on purpose); its log is still checked for sanitizer
    reports."""
    server.expect_exit = None
    server.stop()


def make_remote(base, offset=None, users=None):
    """A second ringmail: remote.example's MX (plain SMTP on 25 + offset)."""
    s = Server(base, users=users or {BOB: BOB_PW}, aliases="")
    cfg = Path(s.config_path).read_text().replace("domains = example.com",
                                                  "domains = remote.example")
    cfg = cfg.replace("hostname = mail.example.com", "hostname = mx.remote.example")
    Path(s.config_path).write_text(cfg)
    if offset is not None:
        s.offset = offset
    return s


def make_sender(base, dns, mx_port, extra=""):
    conf = (f"[outbound]\ndns = {dns}\nmx_port = {mx_port}\nretry_min = 1s\nretry_max = 2s\n"
            f"timeout = 10s\n{extra}")
    s = Server(base, users={ALICE: ALICE_PW}, aliases="", extra_config=conf)
    return s


def submit(sender, to, msg, frm=ALICE):
    with smtplib.SMTP_SSL("localhost", sender.port(465), timeout=30,
                          context=sender.ssl_context()) as c:
        c.ehlo("client.example")
        c.login(ALICE, ALICE_PW)
        refused = c.sendmail(frm, to if isinstance(to, list) else [to], msg)
        assert not refused, refused


RX_RECEIVED_ONLY = re.compile(rb"\A(?:Received: [^\r\n]*(?:\r\n[ \t][^\r\n]*)*\r\n)+")


def strip_all_received(m, final=True):
    """m without its trace fields: with final (a message as the MX stored
    it), the Return-Path then the Received fields; else Received only."""
    r = (RX_RECEIVED if final else RX_RECEIVED_ONLY).match(m)
    return m[r.end():] if r else m


def wait_for(pred, timeout, step=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


def queue_files(sender):
    q = Path(sender.data_dir) / "queue"
    return sorted(p.name for p in q.glob("*.msg")) if q.is_dir() else []


@pytest.fixture(scope="module")
def pair(tmp_path_factory, dns):
    """A running remote MX and a sender pointed at it."""
    remote = make_remote(tmp_path_factory.mktemp("remote"))
    remote.start()
    sender = make_sender(tmp_path_factory.mktemp("sender"), dns, remote.port(25))
    sender.start()
    yield sender, remote
    for s in (sender, remote):
        stop_any_exit(s)


def test_remote_rcpt_delivered_byte_exact(pair):
    sender, remote = pair
    tok = token()
    msg = message(tok, body=b"Hello remote.\r\n.leading dot\r\n\xc3\xa9t\xc3\xa9\r\n", frm=ALICE,
                  to=BOB)
    submit(sender, BOB, msg)
    got = wait_for(lambda: find(remote.messages(BOB), tok.encode()), 20)
    assert len(got) == 1, sender.log()[-3000:]
    m = got[0]
    # Two Received: fields (the remote's, then ours), then the bytes as sent.
    assert m.count(b"Received: ") >= 2, m[:600]
    assert m.index(b"by mx.remote.example (ringmail)") < m.index(b"by mail.example.com (ringmail)")
    # Opportunistic STARTTLS to the MX: the remote's Received field (the
    # first one) says the message came in over TLS, unauthenticated.
    head = RX_RECEIVED.match(m)
    assert head, m[:600]
    assert head.group(1) == ALICE.encode(), head.group(0)  # the envelope sender
    theirs = head.group(2).split(b"\r\nReceived: ")[0]
    assert b"by mx.remote.example (ringmail) with ESMTPS\r\n" in theirs, theirs
    assert re.search(rb"\(version=TLSv1\.[23] cipher=\S+\)", theirs), theirs
    assert re.search(r"event=outbound-tls host=mx\.remote\.example version=TLSv1\.[23] ",
                     sender.log()), sender.log()[-3000:]
    body = strip_all_received(m)
    if body.startswith(b"DKIM-Signature:"):
        body = re.sub(rb"\ADKIM-Signature: [^\r\n]*(?:\r\n[ \t][^\r\n]*)*\r\n", b"", body)
    assert body == msg
    assert wait_for(lambda: not queue_files(sender), 10), queue_files(sender)
    assert "outbound-sent" in sender.log()


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_dkim_signed_delivery_verifies(pair, dns, tmp_path, kind):
    """A key made by `ringmail dkim keygen`; the message submitted on 465
    arrives at the remote MX with a DKIM-Signature that dkimpy verifies
    against the printed TXT record, and the bytes as sent behind it."""
    _, remote = pair
    sender = make_sender(tmp_path / "sender", dns, remote.port(25))
    r = conftest.run_cli("dkim", "keygen", "example.com", "--data", str(sender.data),
                         "--type", kind, timeout=60)
    assert r.returncode == 0, r.stderr
    records = dict([dkim_record(r.stdout)])
    sender.start()
    try:
        assert sender.wait_log(r"outbound-ready.*dkim_keys=1", timeout=10), sender.log()[-2000:]
        tok = token()
        msg = message(tok, body=b"Signed  body \t\r\n\r\n.leading dot\r\n\xc3\xa9t\xc3\xa9\r\n\r\n",
                      frm=ALICE, to=BOB,
                      extra_headers=b"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\n"
                                    b"MIME-Version: 1.0\r\n"
                                    b"Content-Type: text/plain; charset=utf-8\r\n")
        submit(sender, BOB, msg)
        got = wait_for(lambda: find(remote.messages(BOB), tok.encode()), 30)
        assert len(got) == 1, sender.log()[-3000:]
        m = got[0]
        assert verify(m, records), m[:1500]
        # The remote's Received, our signature, our Received, then the bytes as sent.
        rest = strip_all_received(m)
        t = tags(rest)
        assert t["d"] == "example.com" and t["s"] == "ringmail"
        assert t["a"] == ("rsa-sha256" if kind == "rsa" else "ed25519-sha256")
        assert t["h"].lower().split(":")[:1] == ["from"]
        assert rest.startswith(b"DKIM-Signature: ")
        assert strip_all_received(strip_sig(rest), final=False) == msg
        # A changed byte in the body no longer verifies.
        assert not verify(m.replace(b"Signed  body", b"Signed body!"), records)
    finally:
        sender.stop()


def test_dkim_key_taken_at_sighup(pair, dns, tmp_path):
    """No key at start: unsigned. `ringmail dkim keygen` while serving, then
    SIGHUP: the next message is signed and verifies."""
    _, remote = pair
    sender = make_sender(tmp_path / "sender", dns, remote.port(25))
    sender.start()
    try:
        assert sender.wait_log(r"outbound-ready.*dkim_keys=0", timeout=10)
        tok = token()
        submit(sender, BOB, message(tok, frm=ALICE, to=BOB))
        got = wait_for(lambda: find(remote.messages(BOB), tok.encode()), 30)
        assert len(got) == 1 and b"DKIM-Signature:" not in got[0]
        r = conftest.run_cli("dkim", "keygen", "example.com", "--data", str(sender.data),
                             "--type", "ed25519", timeout=60)
        assert r.returncode == 0, r.stderr
        assert "SIGHUP" in r.stdout
        records = dict([dkim_record(r.stdout)])
        mark = sender.log_mark()
        sender.proc.send_signal(signal.SIGHUP)
        assert sender.wait_log(r"dkim-reloaded.*dkim_keys=1", mark, timeout=10), \
            sender.log()[mark:]
        tok = token()
        submit(sender, BOB, message(tok, frm=ALICE, to=BOB))
        got = wait_for(lambda: find(remote.messages(BOB), tok.encode()), 30)
        assert len(got) == 1
        assert verify(got[0], records), got[0][:1200]
    finally:
        sender.stop()


def test_command_line_dns_and_mx_port_survive_sighup(pair, dns, tmp_path):
    """--dns and --mx-port on the command line, not in the file: after
    SIGHUP they are still in force (mx_port is read per delivery), so mail
    for remote.example still reaches its MX on the shifted port."""
    _, remote = pair
    sender = Server(tmp_path / "sender", users={ALICE: ALICE_PW}, aliases="",
                    extra_config="[outbound]\nretry_min = 1s\nretry_max = 2s\ntimeout = 10s\n")
    sender.args = ["--dns", dns, "--mx-port", str(remote.port(25))]
    sender.start()
    try:
        mark = sender.log_mark()
        sender.proc.send_signal(signal.SIGHUP)
        assert sender.wait_log(r"loop=0 event=reloaded ", mark, timeout=10), sender.log()[mark:]
        tok = token()
        submit(sender, BOB, message(tok, frm=ALICE, to=BOB))
        got = wait_for(lambda: find(remote.messages(BOB), tok.encode()), 30)
        assert len(got) == 1, sender.log()[mark:][-3000:]
        assert wait_for(lambda: not queue_files(sender), 10), queue_files(sender)
    finally:
        sender.stop()


def test_local_and_remote_in_one_message(pair):
    sender, remote = pair
    tok = token()
    msg = message(tok, frm=ALICE, to=BOB)
    submit(sender, [BOB, ALICE], msg)
    assert len(find(sender.messages(ALICE), tok.encode())) == 1
    got = wait_for(lambda: find(remote.messages(BOB), tok.encode()), 20)
    assert len(got) == 1


def test_several_recipients_one_transaction(pair):
    sender, remote = pair
    remote.user_add("carol@remote.example", "carol-Remote-3")
    time.sleep(1.5)  # the passwd file is re-read when it changes
    tok = token()
    msg = message(tok, frm=ALICE, to=BOB)
    mark = len(sender.log())
    submit(sender, [BOB, "carol@remote.example"], msg)
    assert wait_for(lambda: find(remote.messages(BOB), tok.encode()), 20)
    assert wait_for(lambda: find(remote.messages("carol@remote.example"), tok.encode()), 20)
    attempts = [l for l in sender.log()[mark:].splitlines() if "event=outbound-attempt" in l]
    assert len(attempts) == 1 and "rcpts=2" in attempts[0], attempts


def test_550_unknown_user_bounces_once(pair):
    sender, remote = pair
    tok = token()
    nobody = "nobody@remote.example"
    msg = message(tok, frm=ALICE, to=nobody)
    submit(sender, nobody, msg)

    def bounces():
        return [m for m in sender.messages(ALICE) if tok.encode() in m and
                b"multipart/report" in m]
    got = wait_for(bounces, 20)
    assert len(got) == 1, sender.log()[-3000:]
    b = got[0]
    # delivered to the local sender: the null sender's Return-Path, once,
    # first, then the bounce's own header
    assert b.startswith(b"Return-Path: <>\r\nFrom: Mail Delivery System <MAILER-DAEMON@"), b[:300]
    assert b.count(b"Return-Path:") == 1, b[:300]
    assert b"report-type=delivery-status" in b
    assert b"Final-Recipient: rfc822; " + nobody.encode() in b
    assert b"Action: failed" in b
    assert b"Status: 5.1.1" in b
    assert b"Diagnostic-Code: smtp; 550" in b
    time.sleep(3)  # retries would have happened by now: still one bounce
    assert len(bounces()) == 1
    assert not queue_files(sender)


def test_null_mx_bounces(pair):
    sender, _ = pair
    tok = token()
    to = "someone@nullmx.example"
    submit(sender, to, message(tok, frm=ALICE, to=to))
    got = wait_for(lambda: [m for m in sender.messages(ALICE)
                            if tok.encode() in m and b"multipart/report" in m], 20)
    assert len(got) == 1, sender.log()[-3000:]
    assert b"null MX" in got[0]
    assert b"Status: 5.1.10" in got[0]


def test_no_mx_falls_back_to_a(pair):
    sender, remote = pair
    # nomx.example has only an A record (127.0.0.1): the remote instance
    # answers there, but does not serve nomx.example: 550 relay denied,
    # which proves the connection went to the A record.
    tok = token()
    to = "x@nomx.example"
    submit(sender, to, message(tok, frm=ALICE, to=to))
    got = wait_for(lambda: [m for m in sender.messages(ALICE)
                            if tok.encode() in m and b"multipart/report" in m], 20)
    assert len(got) == 1, sender.log()[-3000:]
    assert b"relay access denied" in got[0]


def test_bounce_of_a_null_sender_is_dropped(pair):
    """MAIL FROM:<> to an unknown remote user: failed, never bounced."""
    sender, remote = pair
    tok = token()
    nobody = "nobody2@remote.example"
    with smtplib.SMTP_SSL("localhost", sender.port(465), timeout=30,
                          context=sender.ssl_context()) as c:
        c.login(ALICE, ALICE_PW)
        c.sendmail("<>", [nobody], message(tok, frm=ALICE, to=nobody))
    assert wait_for(lambda: f"to={nobody}" in sender.log() and
                    "outbound-failed" in sender.log(), 20)
    time.sleep(1)
    assert not [m for m in sender.messages(ALICE) if tok.encode() in m]


def test_queue_list_cli(pair, tmp_path):
    sender, _ = pair
    r = conftest.run_cli("queue", "list", "--data", sender.data_dir)
    assert r.returncode == 0, r.stderr
    assert "queued" in r.stdout


def test_down_mx_retried_across_restart(tmp_path, dns):
    remote_offset = conftest.free_port_offset()
    sender = make_sender(tmp_path / "sender", dns, 25 + remote_offset)
    sender.start()
    tok = token()
    msg = message(tok, frm=ALICE, to=BOB)
    submit(sender, BOB, msg)
    assert wait_for(lambda: "event=outbound-deferred" in sender.log(), 15), sender.log()[-2000:]
    assert len(queue_files(sender)) == 1
    r = conftest.run_cli("queue", "list", "--data", sender.data_dir)
    assert BOB in r.stdout and "pending" in r.stdout, r.stdout
    # Kill the sender (SIGKILL: no goodbye), bring the MX up, restart the
    # sender. The MX may have had to take other ports (another test took
    # one of remote_offset's meanwhile): the restarted sender is pointed at
    # where it really listens.
    sender.proc.kill()
    sender.proc.wait()
    remote = make_remote(tmp_path / "remote", offset=remote_offset)
    remote.start()
    cfg = Path(sender.config_path).read_text()
    Path(sender.config_path).write_text(
        cfg.replace(f"mx_port = {25 + remote_offset}\n", f"mx_port = {remote.port(25)}\n"))
    conftest.Server.start(sender)  # same data dir, users already there
    try:
        got = wait_for(lambda: find(remote.messages(BOB), tok.encode()), 30)
        assert len(got) == 1, sender.log()[-3000:]
        assert strip_all_received(got[0]).endswith(msg)
        assert wait_for(lambda: not queue_files(sender), 10)
    finally:
        stop_any_exit(remote)
        stop_any_exit(sender)


def test_kill9_during_delivery_loses_nothing(tmp_path, dns):
    """Ten messages of 256 KB are delivered; the remote MX is then frozen
    (SIGSTOP: its kernel still takes connections and bytes, it answers
    nothing) and ten more are submitted: the sender's deliveries of those
    are on the wire, unanswered, when it is killed with SIGKILL. Their
    queue files are all there, and only theirs. The remote thaws, the
    sender restarts: every message arrives at least once, counted by
    Message-ID (at-least-once: the remote may still take a copy sent
    before the kill), and each of the first ten exactly once."""
    remote = make_remote(tmp_path / "remote")
    remote.start()
    sender = make_sender(tmp_path / "sender", dns, remote.port(25))
    sender.start()
    first, second = [token() for _ in range(10)], [token() for _ in range(10)]
    body = (b"x" * 70 + b"\r\n") * 3600

    def copies():
        msgs = remote.messages(BOB, strict=False)
        ids = [re.search(rb"^Message-ID: <(tok[0-9a-f]+)@test\.example>\r$", m, re.M)
               for m in msgs]
        return [i.group(1).decode() for i in ids if i]

    def submit_all(toks):
        with smtplib.SMTP_SSL("localhost", sender.port(465), timeout=30,
                              context=sender.ssl_context()) as c:
            c.login(ALICE, ALICE_PW)
            for tok in toks:
                assert not c.sendmail(ALICE, [BOB], message(tok, body=body, frm=ALICE, to=BOB))
    try:
        submit_all(first)
        assert wait_for(lambda: set(first) <= set(copies()), 30), sender.log()[-3000:]
        assert wait_for(lambda: not queue_files(sender), 10)
        mark = sender.log_mark()
        remote.proc.send_signal(signal.SIGSTOP)
        try:
            submit_all(second)
            # Deliveries started (MX lookup, connect or data sent), none done.
            assert wait_for(lambda: len(re.findall(r"event=outbound-attempt ",
                                                   sender.log()[mark:])) >= 3, 15), \
                sender.log()[mark:]
            time.sleep(0.5)
            sender.proc.kill()
            sender.proc.wait()
        finally:
            remote.proc.send_signal(signal.SIGCONT)
        log = sender.log()[mark:]
        qdir = Path(sender.data_dir) / "queue"
        left = {t for f in qdir.glob("*.msg") for t in first + second if t.encode() in f.read_bytes()}
        left_ids = {f.name[:-4] for f in qdir.glob("*.msg")}
        on_the_wire = set(re.findall(r"event=outbound-attempt id=(\w+) ", log))
        assert "event=outbound-done" not in log and "event=outbound-sent" not in log, log
        assert left == set(second), (len(left), log)
        assert len(on_the_wire) >= 3 and on_the_wire <= left_ids, (on_the_wire, left_ids)
        conftest.Server.start(sender)
        assert wait_for(lambda: set(first + second) <= set(copies()), 60), sender.log()[-3000:]
        assert wait_for(lambda: not queue_files(sender), 20)
        time.sleep(1)  # a late copy would be in by now
        got = copies()
        for t in first:
            assert got.count(t) == 1, (t, got.count(t))  # done before the kill: never again
        for t in second:
            assert 1 <= got.count(t) <= 2, (t, got.count(t))
    finally:
        stop_any_exit(remote)
        stop_any_exit(sender)


def test_large_message_streams_byte_exact(pair):
    """A message (2.6 MB) far larger than the spool buffer and the read chunk
    (64 KiB each), with dots at line starts on both sides of chunk
    boundaries, arrives byte-exact: it was streamed to the queue file and
    read back in pieces, never held whole."""
    sender, remote = pair
    tok = token()
    lines = []
    for i in range(60000):
        lines.append((b"." if i % 7 == 0 else b"") + b"line %06d " % i + b"y" * (i % 61))
    body = b"\r\n".join(lines) + b"\r\n"
    msg = message(tok, body=body, frm=ALICE, to=BOB)
    assert len(msg) > 2 * 1024 * 1024
    submit(sender, BOB, msg)
    got = wait_for(lambda: find(remote.messages(BOB), tok.encode()), 60)
    assert len(got) == 1, (sender.log()[-3000:], remote.log()[-3000:])
    assert strip_all_received(got[0]) == msg
    assert wait_for(lambda: not queue_files(sender), 10), queue_files(sender)


def submit_dsn(sender, to, msg, mail_options=(), rcpt_options=()):
    with smtplib.SMTP_SSL("localhost", sender.port(465), timeout=30,
                          context=sender.ssl_context()) as c:
        c.ehlo("client.example")
        assert c.has_extn("dsn")
        c.login(ALICE, ALICE_PW)
        refused = c.sendmail(ALICE, [to], msg, mail_options=list(mail_options),
                             rcpt_options=list(rcpt_options))
        assert not refused, refused


def bounces_of(sender, tok):
    return [m for m in sender.messages(ALICE) if tok.encode() in m and b"multipart/report" in m]


def test_dsn_notify_never_no_bounce(pair):
    sender, _ = pair
    tok = token()
    nobody = "nobody3@remote.example"
    mark = len(sender.log())
    submit_dsn(sender, nobody, message(tok, frm=ALICE, to=nobody), rcpt_options=["NOTIFY=NEVER"])
    assert wait_for(lambda: "event=outbound-dsn-skipped" in sender.log()[mark:], 20), \
        sender.log()[-3000:]
    assert "reason=notify" in sender.log()[mark:]
    assert wait_for(lambda: not queue_files(sender), 10), queue_files(sender)
    time.sleep(1)
    assert not bounces_of(sender, tok)


def test_dsn_ret_hdrs_envid_orcpt(pair):
    """RET=HDRS: the bounce carries the header only; ENVID and ORCPT come
    back as Original-Envelope-Id and Original-Recipient. RET=FULL, the
    contrast: the whole message comes back."""
    sender, _ = pair
    nobody = "nobody4@remote.example"
    tok_h, tok_f = token(), token()
    body_h = b"body-marker-" + tok_h.encode()[::-1] + b"\r\n"
    body_f = b"body-marker-" + tok_f.encode()[::-1] + b"\r\n"
    submit_dsn(sender, nobody, message(tok_h, body=body_h, frm=ALICE, to=nobody),
               mail_options=["RET=HDRS", "ENVID=env-" + tok_h],
               rcpt_options=["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;orig-" + nobody])
    submit_dsn(sender, nobody, message(tok_f, body=body_f, frm=ALICE, to=nobody),
               mail_options=["RET=FULL"])
    got_h = wait_for(lambda: bounces_of(sender, tok_h), 20)
    got_f = wait_for(lambda: bounces_of(sender, tok_f), 20)
    assert len(got_h) == 1 and len(got_f) == 1, sender.log()[-3000:]
    h, f = got_h[0], got_f[0]
    assert b"Original-Envelope-Id: env-" + tok_h.encode() + b"\r\n" in h
    assert b"Original-Recipient: rfc822; orig-" + nobody.encode() + b"\r\n" in h
    assert b"Final-Recipient: rfc822; " + nobody.encode() in h
    assert b"Content-Type: text/rfc822-headers" in h
    assert body_h not in h
    assert b"Content-Type: message/rfc822" in f
    assert body_f in f
    assert b"Original-Envelope-Id" not in f


@pytest.mark.parametrize("port,tls,listener", [(587, "starttls", "submission"),
                                               (465, "implicit", "smtps")])
def test_smart_host_relays_with_auth(tmp_path, dns, port, tls, listener):
    """smart_host: everything goes to one host:port (here a second ringmail's
    587 with STARTTLS, or its 465 with implicit TLS; then AUTH PLAIN as
    smart_user), not to the MX. The MX lookup would find remote.example's
    port 25; the remote's log shows the submission listener and the AUTH
    instead."""
    relay_user, relay_pw = ALICE, "relay-Secret-9"
    remote = make_remote(tmp_path / "remote", users={BOB: BOB_PW, relay_user: relay_pw})
    remote.start()
    mark = len(remote.log())
    extra = (f"smart_host = 127.0.0.1:{remote.port(port)}\nsmart_tls = {tls}\n"
             f"smart_user = {relay_user}\nsmart_password = {relay_pw}\n")
    # mx_port points nowhere: only the smart host can deliver.
    sender = make_sender(tmp_path / "sender", dns, conftest.free_port_offset() + 25, extra)
    sender.start()
    try:
        tok = token()
        msg = message(tok, frm=ALICE, to=BOB)
        submit(sender, BOB, msg)
        got = wait_for(lambda: find(remote.messages(BOB), tok.encode()), 30)
        assert len(got) == 1, sender.log()[-3000:]
        assert strip_all_received(got[0]) == msg
        rlog = remote.log()[mark:]
        conns = [l for l in rlog.splitlines() if "event=connect" in l]
        assert conns and all(f"listener={listener} " in l + " " for l in conns), conns
        assert f"event=smtp-auth result=ok user={relay_user}" in rlog
        assert f"(authenticated as {relay_user})".encode() in got[0]
        assert relay_pw not in sender.log() and relay_pw not in rlog
        assert wait_for(lambda: not queue_files(sender), 10), queue_files(sender)
    finally:
        stop_any_exit(remote)
        stop_any_exit(sender)


def test_connection_reused_for_messages_to_one_destination(tmp_path, dns):
    """Five messages wait for a down MX; with max_per_domain = 1 and every
    message due at once (queue flush, which also shows the flush command
    works), one connection carries all five transactions: the remote sees
    one SMTP connection."""
    remote_offset = conftest.free_port_offset()
    conf = (f"[outbound]\ndns = {dns}\nmx_port = {25 + remote_offset}\nretry_min = 1h\n"
            f"retry_max = 2h\ntimeout = 10s\nmax_per_domain = 1\n")
    sender = Server(tmp_path / "sender", users={ALICE: ALICE_PW}, aliases="", extra_config=conf)
    sender.start()
    remote = make_remote(tmp_path / "remote", offset=remote_offset)
    try:
        toks = [token() for _ in range(5)]
        for tok in toks:
            submit(sender, BOB, message(tok, frm=ALICE, to=BOB))
        assert wait_for(lambda: sender.log().count("event=outbound-deferred") >= 5, 20), \
            sender.log()[-2000:]
        remote.start()
        mark = len(remote.log())
        r = conftest.run_cli("queue", "flush", "--data", sender.data_dir)
        assert r.returncode == 0, r.stderr

        def all_there():
            msgs = remote.messages(BOB)
            return all(find(msgs, t.encode()) for t in toks)
        assert wait_for(all_there, 30), sender.log()[-3000:]
        assert wait_for(lambda: not queue_files(sender), 10)
        connects = [l for l in remote.log()[mark:].splitlines()
                    if "event=connect" in l and "listener=smtp " in l + " "]
        assert len(connects) == 1, connects
        assert sender.log().count("reuse=") == 4
    finally:
        stop_any_exit(remote)
        stop_any_exit(sender)


def smtp_connects(log):
    return [l for l in log.splitlines() if "event=connect" in l and "listener=smtp " in l + " "]


def test_idle_connection_reused_then_closed(tmp_path, dns):
    """After a transaction the connection stays open (connection_idle): a
    message submitted a moment later goes over it without a new connect;
    once idle longer than connection_idle the sender says QUIT."""
    remote = make_remote(tmp_path / "remote")
    remote.start()
    sender = make_sender(tmp_path / "sender", dns, remote.port(25), "connection_idle = 4s\n")
    sender.start()
    try:
        mark = len(remote.log())
        tok1, tok2 = token(), token()
        submit(sender, BOB, message(tok1, frm=ALICE, to=BOB))
        assert wait_for(lambda: find(remote.messages(BOB), tok1.encode()), 20), sender.log()[-3000:]
        submit(sender, BOB, message(tok2, frm=ALICE, to=BOB))
        assert wait_for(lambda: find(remote.messages(BOB), tok2.encode()), 20), sender.log()[-3000:]
        assert len(smtp_connects(remote.log()[mark:])) == 1, remote.log()[mark:]
        assert "reuse=1" in sender.log()
        sid = smtp_connects(remote.log()[mark:])[0].split("sid=")[1].split()[0]
        # Idle for connection_idle (4 s): QUIT, and the remote closes the session.
        assert wait_for(lambda: f"sid={sid} event=close" in remote.log(), 20), remote.log()[-2000:]
    finally:
        stop_any_exit(remote)
        stop_any_exit(sender)


class BrokenMX:
    """A fake MX on loopback that accepts MAIL, RCPT and DATA, reads part
    of the message, then drops the connection without a final reply; with
    drop=False it takes the whole message and answers 250. It records the
    command lines it got."""

    def __init__(self, drop=True, ehlo=b"8BITMIME"):
        import threading
        self.drop, self.ehlo, self.lines = drop, ehlo, []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.dropped = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with c:
                c.settimeout(10)
                f = c.makefile("rb")
                c.sendall(b"220 broken.example ESMTP\r\n")
                try:
                    while True:
                        line = f.readline()
                        if not line:
                            break
                        self.lines.append(line.rstrip(b"\r\n"))
                        verb = line[:4].upper()
                        if verb in (b"EHLO", b"HELO"):
                            c.sendall(b"250-broken.example\r\n250 " + self.ehlo + b"\r\n")
                        elif verb == b"DATA" and not self.drop:
                            c.sendall(b"354 go on\r\n")
                            while f.readline() not in (b".\r\n", b""):
                                pass
                            c.sendall(b"250 2.0.0 taken\r\n")
                        elif verb == b"DATA":
                            c.sendall(b"354 go on\r\n")
                            f.read(1000)
                            self.dropped += 1
                            break
                        elif verb == b"QUIT":
                            c.sendall(b"221 bye\r\n")
                            break
                        else:
                            c.sendall(b"250 ok\r\n")
                except OSError:
                    pass

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept(): see FakeMX.close
        except OSError:
            pass
        self.thread.join(5)
        self.sock.close()


def test_connection_lost_mid_data_is_not_sent(tmp_path, dns):
    """RCPT got 250, the MX drops the connection in the middle of the
    message: the recipient is deferred, not counted as sent; the message
    stays queued and reaches the real MX later."""
    mx = BrokenMX()
    sender = make_sender(tmp_path / "sender", dns, mx.port)
    sender.start()
    remote = None
    try:
        tok = token()
        msg = message(tok, body=(b"z" * 70 + b"\r\n") * 500, frm=ALICE, to=BOB)
        submit(sender, BOB, msg)
        assert wait_for(lambda: "event=outbound-deferred" in sender.log(), 20), sender.log()[-3000:]
        assert mx.dropped >= 1
        assert "event=outbound-sent" not in sender.log()
        assert len(queue_files(sender)) == 1
        # The real MX takes its port over; the retry delivers the message.
        mx.close()
        sender.proc.kill()
        sender.proc.wait()
        remote = make_remote(tmp_path / "remote")
        remote.start()
        cfg = Path(sender.config_path).read_text().replace(f"mx_port = {mx.port}",
                                                           f"mx_port = {remote.port(25)}")
        Path(sender.config_path).write_text(cfg)
        conftest.Server.start(sender)
        got = wait_for(lambda: find(remote.messages(BOB), tok.encode()), 30)
        assert len(got) == 1, sender.log()[-3000:]
        assert strip_all_received(got[0]) == msg
    finally:
        mx.close()
        if remote:
            stop_any_exit(remote)
        stop_any_exit(sender)


def test_dsn_notify_delay_warns_once(tmp_path, dns):
    """NOTIFY=DELAY: once a recipient has waited delay_warning, the sender
    gets one delay DSN (Action: delayed, Status 4.x.x, Will-Retry-Until),
    not one per retry; the message stays queued."""
    dead = conftest.free_port_offset() + 25  # nothing listens there
    sender = make_sender(tmp_path / "sender", dns, dead, "delay_warning = 1s\n")
    sender.start()
    try:
        tok = token()
        submit_dsn(sender, BOB, message(tok, frm=ALICE, to=BOB),
                   rcpt_options=["NOTIFY=DELAY,FAILURE"])

        def delays():
            return [m for m in sender.messages(ALICE) if tok.encode() in m and
                    b"Action: delayed" in m]
        got = wait_for(delays, 30)
        assert len(got) == 1, sender.log()[-3000:]
        d = got[0]
        assert b"Subject: Delayed Mail" in d
        assert b"Status: 4." in d
        assert b"Will-Retry-Until: " in d
        assert b"Final-Recipient: rfc822; " + BOB.encode() in d
        # More retries happen (retry_max 2s); still one warning.
        mark = sender.log().count("event=outbound-deferred")
        assert wait_for(lambda: sender.log().count("event=outbound-deferred") >= mark + 2, 20)
        assert len(delays()) == 1
        assert len(queue_files(sender)) == 1
        # The "sent" mark is in the state file: a restart does not warn again.
        sender.stop()
        conftest.Server.start(sender)  # same data dir, users already there
        mark = sender.log().count("event=outbound-deferred")
        assert wait_for(lambda: sender.log().count("event=outbound-deferred") >= mark + 2, 20), \
            sender.log()[-2000:]
        assert len(delays()) == 1
    finally:
        stop_any_exit(sender)


def write_queued(qdir, qid, frm, rcpt, body, state=None):
    """A queue entry as the server writes it (RMQ2, docs/queue.md)."""
    env = (f"id {qid}\ncreated {int(time.time() * 1000)}\nfrom {frm}\nrcpt {rcpt}\n\n").encode()
    first = b"RMQ2 %020d %010d\n" % (len(body), 0)
    (qdir / f"{qid}.msg").write_bytes(first + env + body)
    if state is not None:
        (qdir / f"{qid}.st").write_text(state)


def test_bounce_made_once_across_a_crash(tmp_path, dns):
    """The two states a crash can leave while a bounce is made, written by
    hand: (a) the recipient failed (state 2) and its bounce already queued
    beside it as <id>d0 — the restart delivers that bounce and makes no
    second one; (b) failed with no bounce yet — the restart makes one.
    Either way exactly one DSN reaches the sender."""
    sender = make_sender(tmp_path / "sender", dns, conftest.free_port_offset() + 25)
    sender.start()
    sender.proc.kill()
    sender.proc.wait()
    qdir = Path(sender.data_dir) / "queue"
    tok_a, tok_b = token(), token()
    ida, idb = "1a2000000000000000a", "1a2000000000000000b"
    last = "550 5.1.1 no such user"
    for qid, tok in ((ida, tok_a), (idb, tok_b)):
        write_queued(qdir, qid, ALICE, "gone@remote.example", message(tok, frm=ALICE, to=BOB),
                     state=f"0 2 1 0 {last}\n")
    dsn_a = (f"From: Mail Delivery System <MAILER-DAEMON@mail.example.com>\r\nTo: <{ALICE}>\r\n"
             f"Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <{ida}.0.dsn@x>\r\n"
             f"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
             f"--b\r\n\r\n{tok_a} {last}\r\n--b--\r\n").encode()
    write_queued(qdir, ida + "d0", "", ALICE, dsn_a)
    conftest.Server.start(sender)
    try:
        def dsns(tok):
            return [m for m in sender.messages(ALICE) if tok.encode() in m and
                    b"multipart/report" in m]
        assert wait_for(lambda: dsns(tok_a) and dsns(tok_b), 20), sender.log()[-3000:]
        assert wait_for(lambda: not queue_files(sender), 20), queue_files(sender)
        time.sleep(1)
        log = sender.log()
        # (a): the bounce on disk is the bounce; none is made again.
        assert f"event=outbound-dsn id={ida} " not in log, log[-3000:]
        assert log.count(f"event=outbound-dsn id={idb} ") == 1, log[-3000:]
        assert "local delivery failed" not in log, log[-3000:]
        assert len(dsns(tok_a)) == 1, dsns(tok_a)
        assert len(dsns(tok_b)) == 1, dsns(tok_b)
        assert b"Final-Recipient: rfc822; gone@remote.example" in dsns(tok_b)[0]
    finally:
        stop_any_exit(sender)


def test_dsn_parameters_passed_to_a_next_hop_that_offers_dsn(tmp_path, dns):
    """The next hop advertises DSN: MAIL carries RET and ENVID, RCPT carries
    NOTIFY and ORCPT as the client gave them. Without DSN advertised they
    are left out (RFC 3461 4.1 and 5.2)."""
    for ehlo, expect in ((b"DSN", True), (b"8BITMIME", False)):
        mx = BrokenMX(drop=False, ehlo=ehlo)
        sender = make_sender(tmp_path / f"sender-{expect}", dns, mx.port)
        sender.start()
        try:
            tok = token()
            submit_dsn(sender, BOB, message(tok, frm=ALICE, to=BOB),
                       mail_options=["RET=HDRS", "ENVID=env-" + tok],
                       rcpt_options=["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;orig@example.org"])
            assert wait_for(lambda: "event=outbound-sent" in sender.log(), 20), sender.log()[-3000:]
            mail = [l for l in mx.lines if l.upper().startswith(b"MAIL FROM:")]
            rcpt = [l for l in mx.lines if l.upper().startswith(b"RCPT TO:")]
            assert len(mail) == 1 and len(rcpt) == 1, mx.lines
            if expect:
                assert b" RET=HDRS" in mail[0] and b" ENVID=env-" + tok.encode() in mail[0], mail
                assert b" NOTIFY=FAILURE,DELAY" in rcpt[0], rcpt
                assert b" ORCPT=rfc822;orig@example.org" in rcpt[0], rcpt
            else:
                assert b"RET=" not in mail[0] and b"ENVID=" not in mail[0], mail
                assert b"NOTIFY=" not in rcpt[0] and b"ORCPT=" not in rcpt[0], rcpt
        finally:
            mx.close()
            stop_any_exit(sender)


def test_smart_host_without_starttls_gets_no_credentials(tmp_path, dns):
    """With smart_user set, the credentials never travel in plaintext: a
    smart host that offers AUTH but no STARTTLS gets EHLO and QUIT only; the
    message is deferred and stays queued (Postfix's noplaintext default)."""
    mx = BrokenMX(drop=False, ehlo=b"AUTH PLAIN LOGIN")
    extra = ("smart_host = 127.0.0.1:%d\nsmart_user = relay@example.com\n"
             "smart_password = relay-Secret-9\n" % mx.port)
    sender = make_sender(tmp_path / "sender", dns, conftest.free_port_offset() + 25, extra)
    sender.start()
    try:
        submit(sender, BOB, message(token(), frm=ALICE, to=BOB))
        assert wait_for(lambda: "event=outbound-deferred" in sender.log(), 20), \
            sender.log()[-3000:]
        deferred = [l for l in sender.log().splitlines() if "event=outbound-deferred" in l]
        assert "offers no STARTTLS" in deferred[0], deferred
        verbs = {l.split()[0].upper() for l in mx.lines}
        assert verbs <= {b"EHLO", b"QUIT"}, mx.lines
        assert b"EHLO" in verbs
        assert len(queue_files(sender)) == 1
        assert "relay-Secret-9" not in sender.log()
    finally:
        mx.close()
        stop_any_exit(sender)


def self_signed(tmp_path, name):
    """A throwaway self-signed certificate (a CA that signed nothing of ours)."""
    key, crt = tmp_path / f"{name}.key", tmp_path / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                    "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
    return str(crt)


def test_smart_host_certificate_verified(tmp_path, dns):
    """smart_tls_verify = yes: the smart host's certificate must chain to a
    CA of smart_tls_ca and name the host the sender connects to. The remote
    ringmail's self-signed certificate names mx.remote.example (and
    localhost). With it as the CA and the host named so, mail goes through
    with AUTH; with another CA, or reached as 127.0.0.1, the handshake fails
    before any credential is sent and the message waits in the queue."""
    relay_pw = "relay-Secret-9"
    remote = make_remote(tmp_path / "remote", users={BOB: BOB_PW, ALICE: relay_pw})
    remote.start()
    other_ca = self_signed(tmp_path, "other-ca")
    cases = [("mx.remote.example", remote.cafile, None),
             ("mx.remote.example", other_ca, "certificate not trusted"),
             ("127.0.0.1", remote.cafile, "certificate does not name the host")]
    try:
        for i, (host, ca, failure) in enumerate(cases):
            mark = len(remote.log())
            extra = (f"smart_host = {host}:{remote.port(587)}\nsmart_tls_verify = yes\n"
                     f"smart_tls_ca = {ca}\nsmart_user = {ALICE}\nsmart_password = {relay_pw}\n")
            sender = make_sender(tmp_path / f"sender{i}", dns,
                                 conftest.free_port_offset() + 25, extra)
            sender.start()
            try:
                tok = token()
                submit(sender, BOB, message(tok, frm=ALICE, to=BOB))
                if failure is None:
                    got = wait_for(lambda: find(remote.messages(BOB), tok.encode()), 30)
                    assert len(got) == 1, sender.log()[-3000:]
                    assert f"event=smtp-auth result=ok user={ALICE}" in remote.log()[mark:]
                    assert wait_for(lambda: not queue_files(sender), 10)
                    continue
                assert wait_for(lambda: "event=outbound-deferred" in sender.log(), 20), \
                    sender.log()[-3000:]
                deferred = [l for l in sender.log().splitlines()
                            if "event=outbound-deferred" in l]
                assert "TLS handshake failed: " + failure in deferred[0], deferred
                assert "smtp-auth" not in remote.log()[mark:]
                assert not find(remote.messages(BOB), tok.encode())
                assert len(queue_files(sender)) == 1
            finally:
                stop_any_exit(sender)
    finally:
        stop_any_exit(remote)


def test_smart_host_ca_file_checked_at_start(tmp_path, dns):
    """A smart_tls_ca that does not exist, or holds no certificate, stops
    the start with a message naming the file."""
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    for ca, why in ((tmp_path / "missing.pem", "No such file"), (junk, "no CA certificate")):
        extra = f"smart_host = 127.0.0.1:2\nsmart_tls_verify = yes\nsmart_tls_ca = {ca}\n"
        sender = make_sender(tmp_path / f"s-{ca.name}", dns, 25, extra)
        with pytest.raises(Exception):
            sender.start(timeout=5)
        stop_any_exit(sender)
        assert f"smart_tls_ca {ca}: {why}" in sender.log(), sender.log()[-2000:]


def test_bounce_to_a_remote_sender_is_dkim_signed(tmp_path, dns):
    """A DSN leaves From MAILER-DAEMON@mail.example.com; with a key for
    example.com (the hostname's parent: DMARC relaxed alignment) it is
    signed, and the signature verifies where it lands. Here a message from
    bob@remote.example reaches our alias fwd@example.com on port 25, the
    forward to nobody@remote.example gets 550, and the bounce goes back to
    bob at the remote MX."""
    remote = make_remote(tmp_path / "remote")
    remote.start()
    sender = make_sender(tmp_path / "sender", dns, remote.port(25))
    sender.aliases = "fwd@example.com: nobody@remote.example\n"
    r = conftest.run_cli("dkim", "keygen", "example.com", "--data", str(sender.data),
                         "--type", "ed25519", timeout=60)
    assert r.returncode == 0, r.stderr
    records = dict([dkim_record(r.stdout)])
    sender.start()
    try:
        tok = token()
        with smtplib.SMTP("localhost", sender.port(25), timeout=30) as c:
            c.ehlo("mx.remote.example")
            refused = c.sendmail(BOB, ["fwd@example.com"], message(tok, frm=BOB, to="fwd@example.com"))
            assert not refused, refused

        def bounce():
            return [m for m in remote.messages(BOB) if tok.encode() in m and
                    b"Content-Type: multipart/report" in m]
        got = wait_for(bounce, 30)
        assert len(got) == 1, sender.log()[-3000:]
        m = got[0]
        assert b"From: Mail Delivery System <MAILER-DAEMON@mail.example.com>" in m
        assert b"Final-Recipient: rfc822; nobody@remote.example" in m
        t = tags(strip_all_received(m))
        assert t["d"] == "example.com" and t["a"] == "ed25519-sha256"
        assert verify(m, records), m[:1500]
        assert not verify(m.replace(b"nobody@remote.example", b"n0body@remote.example"), records)
    finally:
        stop_any_exit(remote)
        stop_any_exit(sender)


def dsn_fields(m):
    """The per-recipient field groups of a DSN's message/delivery-status
    part, as {Final-Recipient address: {field: value}}."""
    part = m.split(b"Content-Type: message/delivery-status\r\n\r\n", 1)[1].split(b"\r\n--", 1)[0]
    out = {}
    for group in part.split(b"\r\n\r\n")[1:]:
        f = dict(l.split(b": ", 1) for l in group.split(b"\r\n") if b": " in l)
        out[f[b"Final-Recipient"].split(b"; ", 1)[1].decode()] = f
    return out


def test_dsn_success_for_local_recipients(tmp_path):
    """NOTIFY=SUCCESS on local recipients (RFC 3461 5.2.2): once the message
    is accepted, one success notice goes to the sender: "delivered" for a
    mailbox, "expanded" for an alias of several, with ORCPT and ENVID back
    and only the header section quoted. A recipient without SUCCESS is not
    in it; a message without SUCCESS gets no notice."""
    carol = "carol@example.com"
    s = Server(tmp_path / "s", users={ALICE: ALICE_PW, carol: "carol-Secret-3"},
               aliases="team@example.com: alice@example.com, carol@example.com\n")
    s.start()
    try:
        tok = token()
        body_marker = b"body-" + tok.encode()[::-1]
        with smtplib.SMTP_SSL("localhost", s.port(465), timeout=30,
                              context=s.ssl_context()) as c:
            c.ehlo("client.example")
            c.login(ALICE, ALICE_PW)
            c.mail(ALICE, ["ENVID=env-" + tok, "RET=FULL"])
            assert c.rcpt(ALICE, ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;me@example.org"])[0] == 250
            assert c.rcpt("team@example.com", ["NOTIFY=SUCCESS"])[0] == 250
            assert c.rcpt(carol, ["NOTIFY=FAILURE"])[0] == 250
            assert c.data(message(tok, body=body_marker + b"\r\n", frm=ALICE, to=carol))[0] == 250
            tok2 = token()
            c.sendmail(ALICE, [carol], message(tok2, frm=ALICE, to=carol),
                       rcpt_options=["NOTIFY=FAILURE,DELAY"])

        def notices():
            return [m for m in s.messages(ALICE) if b"multipart/report" in m]
        got = wait_for(notices, 20)
        assert len(got) == 1, s.log()[-3000:]
        m = got[0]
        assert b"Subject: Successful Mail Delivery Report" in m
        assert b"Original-Envelope-Id: env-" + tok.encode() + b"\r\n" in m
        f = dsn_fields(m)
        assert set(f) == {ALICE, "team@example.com"}, f
        assert f[ALICE][b"Action"] == b"delivered" and f[ALICE][b"Status"] == b"2.0.0"
        assert f[ALICE][b"Original-Recipient"] == b"rfc822; me@example.org"
        assert f["team@example.com"][b"Action"] == b"expanded"
        assert b"Content-Type: text/rfc822-headers" in m
        assert tok.encode() in m.split(b"Content-Type: text/rfc822-headers")[1]
        assert body_marker not in m  # headers only, even with RET=FULL
        assert "event=smtp-dsn kind=success" in s.log()
        # The second message (no SUCCESS) made none.
        # carol: the first message once (direct and via team), the second
        assert wait_for(lambda: len(s.messages(carol)) == 2, 10)
        time.sleep(1)
        assert len(notices()) == 1
        assert not [n for n in notices() if tok2.encode() in n]
    finally:
        stop_any_exit(s)


def test_dsn_success_relayed_to_a_host_without_dsn(tmp_path, dns):
    """NOTIFY=SUCCESS to a remote recipient: a next hop that offers DSN gets
    the NOTIFY and the notice is its business; one that does not gets the
    message, and we send the "relayed" notice (RFC 3461 5.2.2)."""
    for ehlo, expect in ((b"8BITMIME", True), (b"DSN", False)):
        mx = BrokenMX(drop=False, ehlo=ehlo)
        sender = make_sender(tmp_path / f"sender-{expect}", dns, mx.port)
        sender.start()
        try:
            tok = token()
            submit_dsn(sender, BOB, message(tok, frm=ALICE, to=BOB),
                       mail_options=["RET=HDRS"], rcpt_options=["NOTIFY=SUCCESS"])
            assert wait_for(lambda: "event=outbound-done" in sender.log(), 20), \
                sender.log()[-3000:]
            if expect:
                got = wait_for(lambda: bounces_of(sender, tok), 10)
                assert len(got) == 1, sender.log()[-3000:]
                f = dsn_fields(got[0])
                assert f[BOB][b"Action"] == b"relayed" and f[BOB][b"Status"] == b"2.0.0"
                assert f[BOB][b"Diagnostic-Code"].startswith(b"smtp; 250"), f
                assert "kind=success" in sender.log()
            else:
                rcpt = [l for l in mx.lines if l.upper().startswith(b"RCPT TO:")]
                assert b" NOTIFY=SUCCESS" in rcpt[0], rcpt
                time.sleep(1)
                assert not bounces_of(sender, tok)
                assert "event=outbound-dsn " not in sender.log()
        finally:
            mx.close()
            stop_any_exit(sender)


# ---- flags, queue commands, backoff and expiry ------------------------------

def outbound_log(sender, event, qid=None):
    """The sender's log lines of event (for queue id qid)."""
    return [l for l in sender.log().splitlines() if f"event={event} " in l + " " and
            (qid is None or f" id={qid} " in l + " ")]


def log_time(line):
    """Seconds since the epoch of a log line (2026-11-27T00:46:20.101Z ...)."""
    import datetime
    t = datetime.datetime.strptime(line.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ")
    return t.replace(tzinfo=datetime.timezone.utc).timestamp()


def queued_id(sender, timeout=15):
    """The queue id of the one message the sender attempted."""
    got = wait_for(lambda: outbound_log(sender, "outbound-attempt"), timeout)
    assert got, sender.log()[-3000:]
    return re.search(r" id=(\w+) ", got[0]).group(1)


def test_serve_dns_and_mx_port_flags(tmp_path, dns):
    """`serve --dns HOST:PORT --mx-port N` and no dns/mx_port in [outbound]:
    the lookups go to dnsmasq and the connection to port N (the defaults,
    resolv.conf and 25, would reach neither)."""
    remote = make_remote(tmp_path / "remote")
    remote.start()
    conf = "[outbound]\nretry_min = 1s\nretry_max = 2s\ntimeout = 10s\n"
    sender = Server(tmp_path / "sender", users={ALICE: ALICE_PW}, aliases="", extra_config=conf)
    assert "dns =" not in Path(sender.config_path).read_text()
    assert "mx_port" not in Path(sender.config_path).read_text()
    sender.args = ["--dns", str(dns), "--mx-port", str(remote.port(25))]
    mark = dns.mark()
    sender.start()
    try:
        assert sender.wait_log(rf'outbound-ready .*dns="{re.escape(str(dns))}" '
                               rf"mx_port={remote.port(25)} ", timeout=10), sender.log()[-2000:]
        tok = token()
        msg = message(tok, frm=ALICE, to=BOB)
        submit(sender, BOB, msg)
        got = wait_for(lambda: find(remote.messages(BOB), tok.encode()), 20)
        assert len(got) == 1, sender.log()[-3000:]
        assert strip_all_received(got[0]) == msg
        assert ("MX", "remote.example") in dns.queries(mark)
        assert wait_for(lambda: not queue_files(sender), 10), queue_files(sender)
    finally:
        stop_any_exit(remote)
        stop_any_exit(sender)


QUEUE_LINE = re.compile(r"^(?P<id>[0-9a-f]+) <(?P<from>[^>]*)> -> <(?P<to>[^>]*)> size=(?P<size>\d+) "
                        r"state=(?P<state>\w+) attempts=(?P<attempts>\d+) "
                        r"next=(?P<next>\S+) last=\"(?P<last>[^\"]*)\"$")


def queue_list(sender):
    r = conftest.run_cli("queue", "list", "--data", sender.data_dir)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    return [QUEUE_LINE.match(l).groupdict() for l in lines[:-1]], lines[-1]


def test_queue_list_cli(tmp_path, dns):
    """One line per recipient: the id the log names, the sender, the
    recipient, the size of the queued message, its state, the attempts so
    far, the next attempt and the last reply; then the count."""
    dead = conftest.free_port_offset() + 25  # nothing listens there
    conf = (f"[outbound]\ndns = {dns}\nmx_port = {dead}\nretry_min = 1h\nretry_max = 2h\n"
            f"timeout = 10s\n")
    sender = Server(tmp_path / "sender", users={ALICE: ALICE_PW}, aliases="", extra_config=conf)
    sender.start()
    try:
        carol = "carol@remote.example"
        tok = token()
        msg = message(tok, frm=ALICE, to=BOB)
        submit(sender, [BOB, carol], msg)
        qid = queued_id(sender)
        assert wait_for(lambda: len(outbound_log(sender, "outbound-deferred", qid)) == 2, 15), \
            sender.log()[-3000:]
        rows, total = queue_list(sender)
        assert total == "1 message queued", total
        assert [r["to"] for r in rows] == [BOB, carol], rows
        size = (Path(sender.data_dir) / "queue" / f"{qid}.msg").stat().st_size
        for r in rows:
            assert r["id"] == qid and r["from"] == ALICE, r
            assert r["state"] == "pending" and r["attempts"] == "1", r
            # our Received field, then the message: the queued size
            assert len(msg) < int(r["size"]) < size, (r, len(msg), size)
            assert "cannot connect to mx.remote.example: Connection refused" in r["last"], r
            nxt = time.mktime(time.strptime(r["next"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
            assert 3500 < nxt - time.time() <= 3600, r  # retry_min = 1h
    finally:
        stop_any_exit(sender)


def test_queue_delete(tmp_path, dns):
    """`ringmail queue delete ID` with a down MX: the message's files go,
    the server logs outbound-deleted and retries it no more; an id that is
    not queued, or not an id, exits non-zero and says so."""
    dead = conftest.free_port_offset() + 25
    sender = make_sender(tmp_path / "sender", dns, dead)  # retries every 1-2 s
    sender.start()
    try:
        tok_keep, tok_del = token(), token()
        submit(sender, BOB, message(tok_del, frm=ALICE, to=BOB))
        qid = queued_id(sender)
        submit(sender, BOB, message(tok_keep, frm=ALICE, to=BOB))
        assert wait_for(lambda: len(outbound_log(sender, "outbound-deferred", qid)) >= 2, 15), \
            sender.log()[-3000:]
        assert len(queue_files(sender)) == 2
        r = conftest.run_cli("queue", "delete", qid, "--data", sender.data_dir)
        assert r.returncode == 0, r.stderr
        assert f"{qid}.msg" not in queue_files(sender)
        assert not list((Path(sender.data_dir) / "queue").glob(f"{qid}.*"))
        assert sender.wait_log(rf"event=outbound-deleted id={qid}\n", timeout=5), \
            sender.log()[-2000:]
        deleted_at = sender.log_mark()
        n_other = len(outbound_log(sender, "outbound-deferred"))
        # Retries go on for the other message (retry_max 2 s), never for it.
        assert wait_for(lambda: len(outbound_log(sender, "outbound-deferred")) >= n_other + 2, 15)
        after = sender.log()[deleted_at:]
        assert f"id={qid} " not in after, after
        assert not list((Path(sender.data_dir) / "queue").glob(f"{qid}.*"))
        rows, total = queue_list(sender)
        assert total == "1 message queued" and qid not in {r["id"] for r in rows}, rows
        # Errors: not queued (any more), not an id.
        r = conftest.run_cli("queue", "delete", qid, "--data", sender.data_dir)
        assert r.returncode == 1, r
        assert r.stderr == (f"ringmail: queue delete: no queued message with id {qid} in "
                            f"{sender.data_dir}/queue (see ringmail queue list)\n"), r.stderr
        for bad in ("../passwd", "ABC", ""):
            r = conftest.run_cli("queue", "delete", bad, "--data", sender.data_dir)
            assert r.returncode != 0, (bad, r)
            assert "not a queue id" in r.stderr or "usage:" in r.stderr, (bad, r.stderr)
        assert (Path(sender.data_dir) / "passwd").exists()
    finally:
        stop_any_exit(sender)


def test_queue_delete_while_on_the_wire(tmp_path, dns):
    """`queue delete` while a delivery of the message is in progress (an MX
    that accepts and says nothing): when that connection then fails, the
    outcome is dropped: no outbound-deferred, no state file written back."""
    mx = FakeMX(hold=True)
    sender = make_sender(tmp_path / "sender", dns, mx.port)
    sender.start()
    try:
        submit(sender, BOB, message(token(), frm=ALICE, to=BOB))
        qid = queued_id(sender)
        assert wait_for(lambda: mx.accepted >= 1, 10)
        r = conftest.run_cli("queue", "delete", qid, "--data", sender.data_dir)
        assert r.returncode == 0, r.stderr
        assert sender.wait_log(rf"event=outbound-deleted id={qid}\n", timeout=5)
        mark = sender.log_mark()
        mx.release.set()  # the MX closes without a greeting
        assert wait_for(lambda: mx.closed >= 1, 10)
        time.sleep(2.5)  # retry_min 1 s: a retry would have happened
        after = sender.log()[mark:]
        assert f"id={qid} " not in after, after
        assert mx.accepted == 1
        assert not list((Path(sender.data_dir) / "queue").glob(f"{qid}.*"))
    finally:
        mx.close()
        stop_any_exit(sender)


def test_backoff_doubles_up_to_retry_max(tmp_path, dns):
    """A down MX: the waits logged are retry_min, then doubled each attempt
    up to retry_max, and the attempts really are that far apart."""
    dead = conftest.free_port_offset() + 25
    conf = (f"[outbound]\ndns = {dns}\nmx_port = {dead}\nretry_min = 500ms\nretry_max = 2s\n"
            f"timeout = 10s\n")
    sender = Server(tmp_path / "sender", users={ALICE: ALICE_PW}, aliases="", extra_config=conf)
    sender.start()
    try:
        submit(sender, BOB, message(token(), frm=ALICE, to=BOB))
        qid = queued_id(sender)
        assert wait_for(lambda: len(outbound_log(sender, "outbound-deferred", qid)) >= 5, 20), \
            sender.log()[-3000:]
        deferred = outbound_log(sender, "outbound-deferred", qid)[:5]
        waits = [int(re.search(r" retry_in=(\d+)ms ", l).group(1)) for l in deferred]
        assert waits == [500, 1000, 2000, 2000, 2000], deferred
        assert [re.search(r" attempts=(\d+) ", l).group(1) for l in deferred] == \
            ["1", "2", "3", "4", "5"], deferred
        attempts = outbound_log(sender, "outbound-attempt", qid)
        for k in range(4):
            gap = log_time(attempts[k + 1]) - log_time(deferred[k])
            # the runner's tick is 250 ms: never early, at most a tick or so late
            assert waits[k] / 1000 <= gap + 0.002 < waits[k] / 1000 + 0.6, (k, gap, waits)
    finally:
        stop_any_exit(sender)


def test_expired_message_bounces_once(tmp_path, dns):
    """expire = 3s and a down MX: after the attempt that finds the message
    older than that, the recipient fails with "expired after N attempts"
    (N as logged), exactly one DSN reaches the sender's INBOX, and the
    queue is empty."""
    dead = conftest.free_port_offset() + 25
    sender = make_sender(tmp_path / "sender", dns, dead, "expire = 3s\n")
    sender.start()
    try:
        tok = token()
        submit(sender, BOB, message(tok, frm=ALICE, to=BOB))
        qid = queued_id(sender)
        got = wait_for(lambda: bounces_of(sender, tok), 20)
        assert len(got) == 1, sender.log()[-3000:]
        n = len(outbound_log(sender, "outbound-attempt", qid))
        assert n >= 2 and len(outbound_log(sender, "outbound-deferred", qid)) == n - 1
        failed = outbound_log(sender, "outbound-failed", qid)
        assert len(failed) == 1 and f'reply="expired after {n} attempts; last: cannot connect' \
            in failed[0], failed
        b = got[0]
        assert f"expired after {n} attempts".encode() in b, b
        f = dsn_fields(b)[BOB]
        assert f[b"Action"] == b"failed", f
        assert f[b"Status"] == b"4.4.7", f  # RFC 3463: delivery time expired
        assert wait_for(lambda: not queue_files(sender), 10), queue_files(sender)
        time.sleep(2)
        assert len(bounces_of(sender, tok)) == 1
        assert len(outbound_log(sender, "outbound-attempt", qid)) == n
    finally:
        stop_any_exit(sender)


# ---- a scriptable fake MX ----------------------------------------------------

class FakeMX:
    """An MX on 127.0.0.1 that serves each connection in its own thread
    and records what it got and when.

    ehlo: the EHLO keywords it offers. greet_delay: seconds before the
    220 (a slow MX holding connections). mail_delay: seconds before the
    reply to MAIL; what the client sent meanwhile is recorded in
    conn["before_mail_reply"] (read without blocking once the delay is
    over). hold: accept, say nothing, and close once `release` is set.
    Counters: accepted, closed, active and max_active (simultaneous
    connections); messages: the data of every transaction answered 250."""

    def __init__(self, ehlo=(b"8BITMIME",), greet_delay=0.0, mail_delay=0.0, hold=False):
        import threading
        self.ehlo, self.greet_delay, self.mail_delay, self.hold = \
            list(ehlo), greet_delay, mail_delay, hold
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.accepted = self.closed = self.active = self.max_active = 0
        self.conns, self.messages = [], []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self):
        import threading
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                self.active += 1
                self.max_active = max(self.max_active, self.active)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        conn = {"events": [], "before_mail_reply": None}
        self.conns.append(conn)
        buf = bytearray()

        def readline():
            while b"\n" not in buf:
                chunk = c.recv(65536)
                if not chunk:
                    return b""
                conn["events"].append((time.monotonic(), "recv", chunk))
                buf.extend(chunk)
            i = buf.index(b"\n") + 1
            line = bytes(buf[:i])
            del buf[:i]
            return line

        def reply(b):
            conn["events"].append((time.monotonic(), "send", b))
            c.sendall(b)
        try:
            c.settimeout(30)
            if self.hold:
                self.release.wait(30)
                return
            time.sleep(self.greet_delay)
            reply(b"220 fake.example ESMTP\r\n")
            while True:
                line = readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    ext = b"".join(b"250-" + e + b"\r\n" for e in self.ehlo)
                    reply(b"250-fake.example\r\n" + ext + b"250 HELP\r\n")
                elif verb == b"MAIL":
                    if self.mail_delay:
                        time.sleep(self.mail_delay)
                        c.setblocking(False)
                        try:
                            while True:
                                chunk = c.recv(65536)
                                if not chunk:
                                    break
                                conn["events"].append((time.monotonic(), "recv", chunk))
                                buf.extend(chunk)
                        except BlockingIOError:
                            pass
                        c.settimeout(30)
                        conn["before_mail_reply"] = bytes(buf)
                    reply(b"250 2.1.0 ok\r\n")
                elif verb == b"RCPT":
                    reply(b"250 2.1.5 ok\r\n")
                elif verb == b"DATA":
                    reply(b"354 go on\r\n")
                    data = bytearray()
                    while True:
                        l = readline()
                        if l in (b".\r\n", b""):
                            break
                        data.extend(l[1:] if l.startswith(b".") else l)
                    self.messages.append(bytes(data))
                    reply(b"250 2.0.0 taken\r\n")
                elif verb == b"QUIT":
                    reply(b"221 bye\r\n")
                    return
                elif verb == b"RSET" or verb == b"NOOP":
                    reply(b"250 ok\r\n")
                else:
                    reply(b"502 5.5.2 no\r\n")
        except OSError:
            pass
        finally:
            c.close()
            with self.lock:
                self.active -= 1
                self.closed += 1

    def close(self):
        """Stops listening. A close() alone would not: the thread blocked
        in accept() keeps the socket listening (Linux), and the next
        FakeMX could get the same port and share its connections."""
        self.release.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept()
        except OSError:
            pass
        self.acceptor.join(5)
        self.sock.close()


def first_recv_time(conn, needle):
    """When the first chunk holding needle arrived on conn (monotonic)."""
    seen = b""
    for t, kind, data in conn["events"]:
        if kind == "recv":
            seen += data
            if needle in seen:
                return t
    return None


def reply_time(conn, prefix):
    return next(t for t, kind, data in conn["events"] if kind == "send" and data.startswith(prefix))


@pytest.mark.parametrize("pipelining", [True, False])
def test_pipelining(tmp_path, dns, pipelining):
    """An MX that takes a second to answer MAIL. With PIPELINING offered,
    both RCPTs and DATA were already there before that reply (RFC 2920: the
    client does not wait); without it, nothing came before the reply, and
    each RCPT came only after the reply to the command before it."""
    ehlo = (b"8BITMIME", b"PIPELINING") if pipelining else (b"8BITMIME",)
    mx = FakeMX(ehlo=ehlo, mail_delay=1.0)
    sender = make_sender(tmp_path / "sender", dns, mx.port)
    sender.start()
    try:
        carol = "carol@remote.example"
        tok = token()
        submit(sender, [BOB, carol], message(tok, frm=ALICE, to=BOB))
        assert wait_for(lambda: len(outbound_log(sender, "outbound-sent")) == 2, 20), \
            sender.log()[-3000:]
        assert len(mx.messages) == 1 and tok.encode() in mx.messages[0]
        conn = mx.conns[0]
        early = conn["before_mail_reply"]
        if pipelining:
            assert early == (f"RCPT TO:<{BOB}>\r\nRCPT TO:<{carol}>\r\nDATA\r\n").encode(), early
            # MAIL, the RCPTs and DATA in one send: one chunk on loopback
            chunk = next(d for _, k, d in conn["events"] if k == "recv" and b"MAIL FROM" in d)
            assert chunk.startswith(b"MAIL FROM:") and chunk.endswith(b"DATA\r\n"), chunk
        else:
            assert early == b"", early
            mail_ok = reply_time(conn, b"250 2.1.0")
            rcpt1 = first_recv_time(conn, f"RCPT TO:<{BOB}>".encode())
            rcpt2 = first_recv_time(conn, f"RCPT TO:<{carol}>".encode())
            data = first_recv_time(conn, b"DATA\r\n")
            rcpt1_ok = [t for t, k, d in conn["events"] if k == "send" and
                        d.startswith(b"250 2.1.5")][0]
            assert mail_ok < rcpt1 < rcpt1_ok < rcpt2 < data, conn["events"]
    finally:
        mx.close()
        stop_any_exit(sender)


def test_max_per_domain_limits_simultaneous_connections(tmp_path, dns):
    """max_per_domain = 2 and an MX that takes 1.5 s to greet: five
    messages submitted at once never have more than two connections open
    at the MX at the same time (and do use two), and all five arrive."""
    mx = FakeMX(greet_delay=1.5)
    sender = make_sender(tmp_path / "sender", dns, mx.port, "max_per_domain = 2\n")
    sender.start()
    try:
        toks = [token() for _ in range(5)]
        for tok in toks:
            submit(sender, BOB, message(tok, frm=ALICE, to=BOB))

        def all_there():
            return all(any(t.encode() in m for m in mx.messages) for t in toks)
        assert wait_for(all_there, 40), (mx.messages, sender.log()[-3000:])
        assert mx.max_active == 2, mx.max_active
        assert all(sum(t.encode() in m for m in mx.messages) == 1 for t in toks)
        assert wait_for(lambda: not queue_files(sender), 10), queue_files(sender)
    finally:
        mx.close()
        stop_any_exit(sender)


def test_plaintext_mx_quit_after_idle(tmp_path, dns):
    """A plaintext MX (no STARTTLS): after the transaction the connection
    idles for connection_idle, then QUIT, 221 and the close are handled (a
    221 used to free the job while its reply was still being parsed)."""
    mx = FakeMX()
    sender = make_sender(tmp_path / "sender", dns, mx.port, "connection_idle = 1s\n")
    sender.start()
    try:
        tok = token()
        submit(sender, BOB, message(tok, frm=ALICE, to=BOB))
        assert wait_for(lambda: mx.closed == 1, 15), sender.log()[-3000:]
        conn = mx.conns[0]
        assert conn["events"][-1][2] == b"221 bye\r\n", conn["events"][-3:]
        assert len(mx.messages) == 1 and tok.encode() in mx.messages[0]
        assert sender.alive()
        # The runner still works: the next message opens a new connection.
        tok2 = token()
        submit(sender, BOB, message(tok2, frm=ALICE, to=BOB))
        assert wait_for(lambda: len(mx.messages) == 2, 15), sender.log()[-3000:]
        assert mx.accepted == 2
    finally:
        mx.close()
        stop_any_exit(sender)


# ---- MX preference and IPv6 ---------------------------------------------------

def has_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def make_remote_on_loopback(base, domains, users, v6):
    """A ringmail MX for domains listening on 127.0.0.1 (and ::1 when v6)
    only: 127.0.0.2 at the same port refuses."""
    s = Server(base, users=users, aliases="")
    rows = "[listener smtp4]\naddress = 127.0.0.1\nport = 25\nprotocol = smtp\n" \
           "security = plain\nrole = mx\n"
    if v6:
        rows += "[listener smtp6]\naddress = ::1\nport = 25\nprotocol = smtp\n" \
                "security = plain\nrole = mx\n"
    cfg = Path(s.config_path).read_text()
    cfg = cfg.replace("domains = example.com", "domains = " + ", ".join(domains))
    cfg = cfg.replace("hostname = mail.example.com", "hostname = mx.elsewhere.example")
    Path(s.config_path).write_text(cfg + "\n" + rows)
    s.ports = s._configured_ports()
    assert s.ports == ((25, 25) if v6 else (25,)), s.ports
    return s


def test_mx_preference_order(tmp_path, dns):
    """pref.example has MX 3 (no address), MX 5 (127.0.0.2: refused) and
    MX 10 (127.0.0.1: the live MX), listed out of order: they are tried
    3, 5, 10, and the message arrives through MX 10."""
    rcpt = "bob@pref.example"
    remote = make_remote_on_loopback(tmp_path / "remote", ["pref.example"], {rcpt: BOB_PW},
                                     v6=False)
    remote.start()
    sender = make_sender(tmp_path / "sender", dns, remote.port(25))
    sender.start()
    try:
        mark = dns.mark()
        tok = token()
        submit(sender, rcpt, message(tok, frm=ALICE, to=rcpt))
        got = wait_for(lambda: find(remote.messages(rcpt), tok.encode()), 20)
        assert len(got) == 1, sender.log()[-3000:]
        failed = outbound_log(sender, "outbound-host-failed")
        assert len(failed) == 2, failed
        assert "host=mx3.pref.example addr= " in failed[0] and "no such host" in failed[0]
        assert "host=mx5.pref.example addr=127.0.0.2 " in failed[1], failed
        assert "Connection refused" in failed[1], failed
        sent = outbound_log(sender, "outbound-sent")
        assert len(sent) == 1 and "host=mx10.pref.example " in sent[0], sent
        # The resolver saw the same order: the MX, then each host's address.
        order = []
        for typ, name in dns.queries(mark):
            if name not in order:
                order.append(name)
        assert order == ["pref.example", "mx3.pref.example", "mx5.pref.example",
                         "mx10.pref.example"], dns.queries(mark)
    finally:
        stop_any_exit(remote)
        stop_any_exit(sender)


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback (::1)")
def test_aaaa_only_mx_over_ipv6(tmp_path, dns):
    """v6.example's MX host has only an AAAA record (::1): the message goes
    over IPv6; the remote, listening on ::1 too, logs the peer ::1."""
    rcpt = "bob@v6.example"
    remote = make_remote_on_loopback(tmp_path / "remote", ["v6.example"], {rcpt: BOB_PW},
                                     v6=True)
    remote.start()
    sender = make_sender(tmp_path / "sender", dns, remote.port(25))
    sender.start()
    try:
        mark = remote.log_mark()
        tok = token()
        msg = message(tok, frm=ALICE, to=rcpt)
        submit(sender, rcpt, msg)
        got = wait_for(lambda: find(remote.messages(rcpt), tok.encode()), 20)
        assert len(got) == 1, sender.log()[-3000:]
        assert strip_all_received(got[0]) == msg
        conns = [l for l in remote.log()[mark:].splitlines() if "event=connect " in l]
        assert len(conns) == 1 and conns[0].endswith("listener=smtp6 peer=::1"), conns
        assert b"from mail.example.com ([::1])" in got[0], got[0][:400]
        assert not outbound_log(sender, "outbound-host-failed")
    finally:
        stop_any_exit(remote)
        stop_any_exit(sender)
