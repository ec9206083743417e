"""Auto-discovery (issue 9): the HTTP/1.1 listener on 80 and 443 (shifted by
the fixture's port offset), every client family's document checked with a
real parser for exactly the recommended rows, the request errors, keep-alive
and pipelining, and `ringmail dns-records`.

Clients: curl over HTTP and HTTPS (--cacert DATA/tls/cert.pem, --resolve
mail.example.com:PORT:127.0.0.1), xmllint --noout, xml.etree, plistlib, and
raw sockets for what curl will not send."""

import os
import plistlib
import re
import shutil
import socket
import subprocess
import time
import weakref
import xml.etree.ElementTree as ET

import pytest

from conftest import HOST, run_cli

HOSTNAME = "mail.example.com"
TB_PATHS = ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml")
AD_NS = {"a": "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006",
         "o": "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"}
AD_BODY = ("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n"
           "<Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/"
           "outlook/requestschema/2006\"><Request><EMailAddress>{addr}</EMailAddress>"
           "<AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/"
           "outlook/responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>")

# (type, port, socketType) in the order clients must see them.
TB_INCOMING = [("imap", "993", "SSL"), ("pop3", "995", "SSL"),
               ("imap", "143", "STARTTLS"), ("pop3", "110", "STARTTLS")]
TB_OUTGOING = [("smtp", "465", "SSL"), ("smtp", "587", "STARTTLS")]


# ---- helpers ------------------------------------------------------------------

def curl(srv, path, tls=False, method=None, data=None, headers=(), host=None):
    """Runs curl against the server; returns (status, headers dict, body bytes)."""
    port = srv.port(443 if tls else 80)
    name = host or HOSTNAME
    url = f"{'https' if tls else 'http'}://{name}:{port}{path}"
    cmd = ["curl", "-sS", "--max-time", "10", "-D", "-", "-o", "-",
           "--resolve", f"{name}:{port}:127.0.0.1"]
    if tls:
        cmd += ["--cacert", os.path.join(srv.data_dir, "tls", "cert.pem")]
    if method:
        cmd += ["-X", method]
    if method == "HEAD":
        cmd = [c for c in cmd if c != "-X" and c != "HEAD"] + ["-I"]
    if data is not None:
        cmd += ["--data-binary", "@-", "-H", "Content-Type: text/xml"]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(url)
    r = subprocess.run(cmd, input=data.encode() if isinstance(data, str) else data,
                       capture_output=True, timeout=20)
    assert r.returncode == 0, f"curl failed: {r.stderr.decode(errors='replace')}"
    return split_response(r.stdout)


def split_response(raw):
    # Skip interim 1xx responses (100 Continue).
    while True:
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if status >= 200:
            break
        raw = body
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, body


def xmllint_ok(body):
    if not shutil.which("xmllint"):
        pytest.skip("xmllint (libxml2-utils) is not installed")
    r = subprocess.run(["xmllint", "--noout", "-"], input=body, capture_output=True)
    assert r.returncode == 0, r.stderr.decode(errors="replace")


def read_response(sock, timeout=5.0, head_only=False):
    """One HTTP response from a raw socket: (status, headers, body)."""
    sock.settimeout(timeout)
    buf = _bufs.get(sock, b"")
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(f"EOF before a complete response head: {buf!r}")
        buf += chunk
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    assert lines[0].startswith("HTTP/1.1 "), lines[0]
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    n = 0 if head_only or status in (100, 204) else int(hdrs.get("content-length", "0"))
    while len(buf) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("EOF inside a body")
        buf += chunk
    body, buf = buf[:n], buf[n:]
    _bufs[sock] = buf
    return status, hdrs, body


_bufs = weakref.WeakKeyDictionary()  # bytes read past a response, per socket


def raw_request(srv, data, timeout=5.0):
    """Sends data on a fresh plain-HTTP connection; returns the response."""
    s = srv.connect(80, timeout=timeout)
    s.sendall(data)
    return s, read_response(s, timeout, head_only=data.startswith(b"HEAD "))


def assert_closed(sock, timeout=5.0):
    sock.settimeout(timeout)
    rest = _bufs.pop(sock, b"")
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    except ConnectionResetError:
        pass
    assert rest == b"", f"bytes after a Connection: close response: {rest!r}"


def get(path, host=HOSTNAME, extra=""):
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def assert_serving(srv):
    """A normal request right after works."""
    st, _, body = curl(srv, "/mail/config-v1.1.xml?emailaddress=ok@example.com")
    assert st == 200 and b"ok@example.com" in body


def tb_rows(root, tag):
    rows = []
    for el in root.iter(tag):
        rows.append((el.get("type"), el.findtext("port"), el.findtext("socketType"),
                     el.findtext("hostname"), el.findtext("username"),
                     el.findtext("authentication")))
    return rows


def check_thunderbird(body, username, domain="example.com"):
    xmllint_ok(body)
    root = ET.fromstring(body)
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    prov = root.find("emailProvider")
    assert prov.get("id") == domain
    assert prov.findtext("domain") == domain
    want_in = [(t, p, s, HOSTNAME, username, "password-cleartext") for t, p, s in TB_INCOMING]
    want_out = [(t, p, s, HOSTNAME, username, "password-cleartext") for t, p, s in TB_OUTGOING]
    assert tb_rows(prov, "incomingServer") == want_in
    assert tb_rows(prov, "outgoingServer") == want_out


# ---- Thunderbird ----------------------------------------------------------------

@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_thunderbird_with_address(server, tls):
    for path in TB_PATHS:
        st, hdrs, body = curl(server, f"{path}?emailaddress=alice%40example.com", tls=tls)
        assert st == 200, body
        assert hdrs["content-type"].startswith("text/xml")
        assert int(hdrs["content-length"]) == len(body)
        assert "date" in hdrs
        check_thunderbird(body, "alice@example.com")
    # An unencoded @ works too, and the domain is case-insensitive.
    st, _, body = curl(server, "/mail/config-v1.1.xml?emailaddress=Alice@EXAMPLE.com", tls=tls)
    assert st == 200
    check_thunderbird(body, "Alice@example.com")


def test_thunderbird_placeholders_from_host(server):
    for host in ("autoconfig.example.com", HOSTNAME, "example.com"):
        st, _, body = curl(server, "/mail/config-v1.1.xml", host=host)
        assert st == 200, (host, body)
        check_thunderbird(body, "%EMAILADDRESS%")
    # An IP address as Host: the first local domain.
    s, (st, _, body) = raw_request(server, get("/mail/config-v1.1.xml", host="127.0.0.1"))
    assert st == 200
    check_thunderbird(body, "%EMAILADDRESS%")


def test_second_local_domain(ringmail):
    srv = ringmail(args=["--domain", "example.com,example.org"])
    st, _, body = curl(srv, "/mail/config-v1.1.xml", host="autoconfig.example.org")
    assert st == 200
    check_thunderbird(body, "%EMAILADDRESS%", domain="example.org")
    st, _, body = curl(srv, "/mail/config-v1.1.xml?emailaddress=bob%40example.org")
    check_thunderbird(body, "bob@example.org", domain="example.org")


# ---- Microsoft Autodiscover ------------------------------------------------------

@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_autodiscover_post(server, tls):
    for path in ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml",
                 "/AUTODISCOVER/AUTODISCOVER.XML"):
        st, hdrs, body = curl(server, path, tls=tls, method="POST",
                              data=AD_BODY.format(addr="carol@example.com"))
        assert st == 200, body
        assert hdrs["content-type"].startswith("text/xml")
        xmllint_ok(body)
        root = ET.fromstring(body)
        assert root.tag == "{%s}Autodiscover" % AD_NS["a"]
        acct = root.find("o:Response/o:Account", AD_NS)
        assert acct.findtext("o:AccountType", namespaces=AD_NS) == "email"
        assert acct.findtext("o:Action", namespaces=AD_NS) == "settings"
        protos = []
        for p in acct.findall("o:Protocol", AD_NS):
            f = {c.tag.split("}")[1]: c.text for c in p}
            protos.append((f["Type"], f["Server"], f["Port"], f["SSL"], f["LoginName"],
                           f["AuthRequired"], f["SPA"]))
        assert protos == [
            ("IMAP", HOSTNAME, "993", "on", "carol@example.com", "on", "off"),
            ("POP3", HOSTNAME, "995", "on", "carol@example.com", "on", "off"),
            ("SMTP", HOSTNAME, "465", "on", "carol@example.com", "on", "off"),
        ]


def test_autodiscover_expect_continue_and_errors(server):
    # curl waits for 100 Continue when asked to.
    st, _, body = curl(server, "/autodiscover/autodiscover.xml", method="POST",
                       data=AD_BODY.format(addr="dave@example.com"),
                       headers=["Expect: 100-continue"])
    assert st == 200 and b"<LoginName>dave@example.com</LoginName>" in body
    # Not local: 404. No address, or a malformed one: 400.
    assert curl(server, "/autodiscover/autodiscover.xml", method="POST",
                data=AD_BODY.format(addr="dave@example.net"))[0] == 404
    assert curl(server, "/autodiscover/autodiscover.xml", method="POST",
                data="<Autodiscover><Request></Request></Autodiscover>")[0] == 400
    assert curl(server, "/autodiscover/autodiscover.xml", method="POST",
                data=AD_BODY.format(addr="da ve@example.com"))[0] == 400
    # GET is not how Autodiscover is asked: 405 with Allow.
    st, hdrs, _ = curl(server, "/autodiscover/autodiscover.xml")
    assert st == 405 and "POST" in hdrs["allow"]
    # ActiveSync's schema: an Autodiscover error document, not settings.
    body = AD_BODY.format(addr="dave@example.com").replace(
        "outlook/responseschema/2006a", "mobilesync/responseschema/2006")
    st, _, out = curl(server, "/autodiscover/autodiscover.xml", method="POST", data=body)
    assert st == 200
    root = ET.fromstring(out)
    assert root.find("a:Response/a:Error/a:ErrorCode", AD_NS).text == "601"


def test_autodiscover_body_limit(server):
    big = AD_BODY.format(addr="e@example.com") + " " * 70000
    s, (st, hdrs, _) = raw_request(
        server, b"POST /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: a\r\n"
        b"Content-Length: %d\r\n\r\n" % len(big))
    assert st == 413 and hdrs.get("connection") == "close"
    # A body of exactly 64 KiB is taken.
    body = AD_BODY.format(addr="e@example.com")
    body += " " * (65536 - len(body))
    st, _, out = curl(server, "/autodiscover/autodiscover.xml", method="POST", data=body)
    assert st == 200 and b"e@example.com" in out


# ---- Apple -------------------------------------------------------------------------

@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_mobileconfig(server, tls):
    st, hdrs, body = curl(server, "/apple/mobileconfig?emailaddress=erin%40example.com", tls=tls)
    assert st == 200
    assert hdrs["content-type"] == "application/x-apple-aspen-config"
    assert "example.com.mobileconfig" in hdrs["content-disposition"]
    xmllint_ok(body)
    pl = plistlib.loads(body)
    assert pl["PayloadType"] == "Configuration"
    (acct,) = pl["PayloadContent"]
    assert acct["PayloadType"] == "com.apple.mail.managed"
    assert acct["EmailAddress"] == "erin@example.com"
    assert acct["EmailAccountType"] == "EmailTypeIMAP"
    assert acct["IncomingMailServerHostName"] == HOSTNAME
    assert acct["IncomingMailServerPortNumber"] == 993
    assert acct["IncomingMailServerUseSSL"] is True
    assert acct["IncomingMailServerUsername"] == "erin@example.com"
    assert acct["IncomingMailServerAuthentication"] == "EmailAuthPassword"
    assert acct["OutgoingMailServerHostName"] == HOSTNAME
    assert acct["OutgoingMailServerPortNumber"] == 465
    assert acct["OutgoingMailServerUseSSL"] is True
    assert acct["OutgoingMailServerAuthentication"] == "EmailAuthPassword"
    assert acct["OutgoingMailServerUsername"] == "erin@example.com"
    uuids = (pl["PayloadUUID"], acct["PayloadUUID"])
    assert uuids[0] != uuids[1]
    for u in uuids:
        assert re.fullmatch(r"[0-9A-F]{8}-[0-9A-F]{4}-8[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}", u)
    # Deterministic per address; different for another address.
    pl2 = plistlib.loads(curl(server, "/apple/mobileconfig?emailaddress=erin%40example.com",
                              tls=tls)[2])
    assert (pl2["PayloadUUID"], pl2["PayloadContent"][0]["PayloadUUID"]) == uuids
    pl3 = plistlib.loads(curl(server, "/apple/mobileconfig?emailaddress=frank%40example.com",
                              tls=tls)[2])
    assert pl3["PayloadUUID"] not in uuids


# ---- escaping and refusals ---------------------------------------------------------

def test_escaping_of_client_values(server):
    addr = "o'brien&co@example.com"
    q = "o%27brien%26co%40example.com"
    st, _, body = curl(server, f"/mail/config-v1.1.xml?emailaddress={q}")
    assert st == 200
    assert b"o&apos;brien&amp;co@example.com" in body
    check_thunderbird(body, addr)
    st, _, body = curl(server, "/autodiscover/autodiscover.xml", method="POST",
                       data=AD_BODY.format(addr="o&apos;brien&amp;co@example.com"))
    assert st == 200
    root = ET.fromstring(body)
    assert {p.text for p in root.iter("{%s}LoginName" % AD_NS["o"])} == {addr}
    st, _, body = curl(server, f"/apple/mobileconfig?emailaddress={q}")
    assert plistlib.loads(body)["PayloadContent"][0]["EmailAddress"] == addr
    # Characters that are not in an address at all: 400, never echoed.
    for bad in ("%3Cscript%3E%40example.com", "a%22b%40example.com", "a%3Eb%40example.com",
                "nobody", "a%40b%40example.com", "%00%40example.com", "%zz"):
        for path in ("/mail/config-v1.1.xml", "/apple/mobileconfig"):
            st, _, body = curl(server, f"{path}?emailaddress={bad}")
            assert st == 400, (path, bad, st)
            assert b"<script" not in body


def test_unknown_domains_get_404(server):
    for path in TB_PATHS + ("/apple/mobileconfig",):
        assert curl(server, f"{path}?emailaddress=x%40example.net")[0] == 404
        assert curl(server, f"{path}?emailaddress=x%40sub.example.com")[0] == 404
    assert curl(server, "/mail/config-v1.1.xml", host="autoconfig.example.net")[0] == 404
    assert curl(server, "/autodiscover/autodiscover.xml", method="POST",
                data=AD_BODY.format(addr="x@example.net"))[0] == 404
    assert curl(server, "/")[0] == 404
    assert curl(server, "/mail/other.xml")[0] == 404


def test_head_and_options(server):
    st, hdrs, body = curl(server, "/mail/config-v1.1.xml?emailaddress=g%40example.com")
    n = int(hdrs["content-length"])
    s, (st, hdrs, _) = raw_request(
        server, b"HEAD /mail/config-v1.1.xml?emailaddress=g%40example.com HTTP/1.1\r\n"
        b"Host: mail.example.com\r\n\r\n")
    assert st == 200 and int(hdrs["content-length"]) == n
    # No body follows a HEAD response: the next response starts right away.
    s.sendall(get("/nothing-here"))
    st, _, _ = read_response(s)
    assert st == 404
    s.sendall(b"OPTIONS /apple/mobileconfig HTTP/1.1\r\nHost: a\r\n\r\n")
    st, hdrs, _ = read_response(s)
    assert st == 204 and hdrs["allow"] == "GET, HEAD, OPTIONS" and "content-length" not in hdrs


@pytest.mark.parametrize("request_bytes,status", [
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 20000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(70))
     + b"\r\n", 431),
    (b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(256)), 400),
    (b"\x00\xff\xfe garbage\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"POST /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: a\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 411),
    (b"POST /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: a\r\n"
     b"Transfer-Encoding: gzip\r\n\r\n", 501),
    (b"POST /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
], ids=["uri-414", "header-431", "count-431", "method-400", "tls-on-80", "garbage",
        "no-host", "obs-fold", "http2-505", "chunked-411", "te-501", "te-cl-400", "cl-cl-400"])
def test_bad_requests_then_still_serving(server, request_bytes, status):
    s, (st, hdrs, body) = raw_request(server, request_bytes)
    assert st == status, body
    assert hdrs.get("connection") == "close"
    assert int(hdrs["content-length"]) == len(body)
    assert_closed(s)
    assert_serving(server)


def test_methods(server):
    for method, path, status in (("DELETE", "/mail/config-v1.1.xml", 405),
                                 ("PUT", "/apple/mobileconfig", 405),
                                 ("POST", "/mail/config-v1.1.xml", 405),
                                 ("FOO", "/mail/config-v1.1.xml", 501),
                                 ("BREW", "/", 501),
                                 ("DELETE", "/nope", 404)):
        s, (st, hdrs, _) = raw_request(
            server, f"{method} {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n".encode())
        assert st == status, (method, path, st)
        if status == 405:
            assert "GET" in hdrs["allow"] or "POST" in hdrs["allow"]
        # A refused method is a protocol answer: the connection stays usable.
        s.sendall(get("/mail/config-v1.1.xml"))
        assert read_response(s)[0] == 200


# ---- connections ---------------------------------------------------------------------

def test_keep_alive_two_requests_one_connection(server):
    s = server.connect(80)
    for addr in ("k1", "k2"):
        s.sendall(get(f"/mail/config-v1.1.xml?emailaddress={addr}%40example.com"))
        st, hdrs, body = read_response(s)
        assert st == 200 and f"{addr}@example.com".encode() in body
        assert hdrs.get("connection") != "close"
    # And over TLS with curl: two URLs, one connection.
    port = server.port(443)
    r = subprocess.run(
        ["curl", "-sS", "-v", "--max-time", "10", "--cacert",
         os.path.join(server.data_dir, "tls", "cert.pem"),
         "--resolve", f"{HOSTNAME}:{port}:127.0.0.1",
         f"https://{HOSTNAME}:{port}/mail/config-v1.1.xml?emailaddress=a%40example.com",
         f"https://{HOSTNAME}:{port}/mail/config-v1.1.xml?emailaddress=b%40example.com"],
        capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert "a@example.com" in r.stdout and "b@example.com" in r.stdout
    assert "Re-using existing connection" in r.stderr
    assert "ALPN: server accepted http/1.1" in r.stderr


def test_pipelined_requests_answered_in_order(server):
    s = server.connect(80)
    names = [f"p{i}" for i in range(5)]
    s.sendall(b"".join(get(f"/mail/config-v1.1.xml?emailaddress={n}%40example.com")
                       for n in names) + get("/nothing") + b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    for n in names:
        st, _, body = read_response(s)
        assert st == 200 and f"<username>{n}@example.com</username>".encode() in body
    assert read_response(s)[0] == 404
    assert read_response(s, head_only=True)[0] == 404
    # A request split across many small writes still works.
    req = get("/mail/config-v1.1.xml?emailaddress=slow%40example.com")
    for i in range(0, len(req), 7):
        s.sendall(req[i:i + 7])
        time.sleep(0.005)
    st, _, body = read_response(s)
    assert st == 200 and b"slow@example.com" in body


def test_connection_close_and_http10(server):
    s, (st, hdrs, _) = raw_request(server, get("/mail/config-v1.1.xml", extra="Connection: close\r\n"))
    assert st == 200 and hdrs["connection"] == "close"
    assert_closed(s)
    s, (st, hdrs, _) = raw_request(server, b"GET /mail/config-v1.1.xml HTTP/1.0\r\n\r\n")
    assert st == 200 and hdrs["connection"] == "close"
    assert_closed(s)
    s, (st, hdrs, _) = raw_request(
        server, b"GET /mail/config-v1.1.xml HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert st == 200 and hdrs["connection"].lower() == "keep-alive"
    s.sendall(b"GET /mail/config-v1.1.xml HTTP/1.0\r\n\r\n")
    assert read_response(s)[0] == 200
    assert_closed(s)


def test_request_timeout_408(ringmail):
    srv = ringmail(config="[limits]\nprelogin_timeout = 1s\n")
    s = srv.connect(80)
    s.sendall(b"GET /mail/config-v1.1.xml HTTP/1.1\r\nHost: a\r\n")  # never finished
    t0 = time.monotonic()
    st, hdrs, _ = read_response(s, timeout=5)
    assert st == 408 and hdrs["connection"] == "close"
    assert 0.5 < time.monotonic() - t0 < 4
    assert_closed(s)
    # An idle keep-alive connection is closed quietly.
    s = srv.connect(80)
    s.sendall(get("/mail/config-v1.1.xml"))
    assert read_response(s)[0] == 200
    assert_closed(s, timeout=5)
    assert_serving(srv)


def test_alpn_mismatch_refused(server):
    port = server.port(443)
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                        "-servername", HOSTNAME, "-alpn", "imap"],
                       input=b"", capture_output=True, timeout=20)
    assert b"no_application_protocol" in r.stdout + r.stderr or r.returncode != 0
    assert_serving(server)


# ---- DNS ---------------------------------------------------------------------------------

def test_dns_records():
    r = run_cli("dns-records", "example.com")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    srv_re = re.compile(r"^(_[a-z0-9]+)\._tcp\.example\.com\. IN SRV (\d+) (\d+) (\d+) (\S+)$", re.M)
    srvs = {m.group(1): (int(m.group(2)), int(m.group(3)), int(m.group(4)), m.group(5))
            for m in srv_re.finditer(out)}
    assert srvs == {
        "_submissions": (0, 1, 465, "mail.example.com."),
        "_imaps": (0, 1, 993, "mail.example.com."),
        "_pop3s": (0, 1, 995, "mail.example.com."),
        "_submission": (10, 1, 587, "mail.example.com."),
        "_imap": (10, 1, 143, "mail.example.com."),
        "_pop3": (10, 1, 110, "mail.example.com."),
        "_autodiscover": (0, 1, 443, "mail.example.com."),
    }
    assert "_imaps._tcp.example.com. IN SRV 0 1 993 mail.example.com.\n" in out
    # Implicit TLS before STARTTLS, as RFC 8314 recommends.
    assert out.index("_imaps._tcp") < out.index("_imap._tcp")
    assert re.search(r"^example\.com\. IN MX \d+ mail\.example\.com\.$", out, re.M)
    assert re.search(r"^autoconfig\.example\.com\. IN CNAME mail\.example\.com\.$", out, re.M)
    assert re.search(r"^autodiscover\.example\.com\. IN CNAME mail\.example\.com\.$", out, re.M)
    assert re.search(r'^example\.com\. IN TXT "v=spf1 mx -all"$', out, re.M)
    assert re.search(r'^_dmarc\.example\.com\. IN TXT "v=DMARC1; p=quarantine;[^"]*"$', out, re.M)
    assert re.search(r"^; DKIM: no key in .*dkim/ for example\.com", out, re.M)
    # Every non-comment line is a record with a fully qualified owner.
    for line in out.splitlines():
        if line and not line.startswith(";"):
            assert re.match(r"^[a-z0-9_.-]+\. IN (MX|SRV|CNAME|TXT) ", line), line


def test_dns_records_follow_config(tmp_path):
    conf = tmp_path / "r.conf"
    conf.write_text("[server]\nhostname = mx.example.net\ndomains = example.org\n"
                    "[listener imaps]\nport = 993\nprotocol = imap\nsecurity = tls\n"
                    "[listener smtps]\nport = 465\nprotocol = smtp\nsecurity = tls\n"
                    "role = submission\n")
    r = run_cli("dns-records", "Example.ORG.", "--config", str(conf))
    assert r.returncode == 0, r.stderr
    assert "_imaps._tcp.example.org. IN SRV 0 1 993 mx.example.net.\n" in r.stdout
    # No listener row: "service not offered" (RFC 6186 3.4).
    assert "_pop3._tcp.example.org. IN SRV 0 0 0 .\n" in r.stdout
    assert "_autodiscover._tcp.example.org. IN SRV 0 0 0 .\n" in r.stdout
    r = run_cli("dns-records", "other.net", "--config", str(conf))
    assert r.returncode == 0 and "not in domains" in r.stderr
    assert run_cli("dns-records", "bad_name!").returncode == 2
    assert run_cli("dns-records").returncode == 2
