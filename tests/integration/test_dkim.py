"""DKIM (issue 8, point 4): `ringmail dkim keygen`, the TXT record in
`ringmail dns-records`, and ringmail's signer checked by an independent
verifier (dkimpy) against the published record, for rsa-sha256 and
ed25519-sha256, whole and fed in chunks. Delivery with a signature is in
test_outbound.py.

The signer is driven through tests/tools/dkim_sign (the same streaming
signer the server uses): RINGMAIL_DKIM_SIGN, else found beside RINGMAIL_BIN.
"""
import base64
import os
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import ringmail_bin, run_cli
from dkim_helpers import dkim_record, strip_sig, tags, txt_records, verify


def signer_bin():
    p = os.environ.get("RINGMAIL_DKIM_SIGN")
    if not p:
        p = str(Path(ringmail_bin()).resolve().parent.parent / "tests" / "tools" / "dkim_sign")
    if not os.access(p, os.X_OK):
        pytest.skip(f"dkim_sign not built ({p})")
    return p


def keygen(data, domain, *args):
    return run_cli("dkim", "keygen", domain, "--data", str(data), *args, timeout=60)


def sign(data, domain, msg, chunk=0):
    r = subprocess.run([signer_bin(), str(data), domain, str(chunk)], input=msg,
                       capture_output=True, timeout=30)
    return r


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """One data dir with an RSA key (example.com) and an Ed25519 key
    (ed.example, selector s2026); {domain: {name: record}}."""
    data = tmp_path_factory.mktemp("dkim") / "data"
    out = {}
    for domain, args in (("example.com", ()), ("ed.example", ("--type", "ed25519",
                                                             "--selector", "s2026"))):
        r = keygen(data, domain, *args)
        assert r.returncode == 0, r.stderr
        out[domain] = txt_records(r.stdout)
    return data, out


# ---- keygen and the record ---------------------------------------------------------------

def openssl_public_der(key_path):
    return subprocess.run(["openssl", "pkey", "-in", str(key_path), "-pubout", "-outform",
                           "DER"], capture_output=True, check=True).stdout


def test_keygen_rsa_files_modes_and_record(tmp_path):
    data = tmp_path / "data"
    r = keygen(data, "Example.COM.")
    assert r.returncode == 0, r.stderr
    d = data / "dkim"
    key = d / "example.com.key"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (d / "example.com.selector").read_text() == "ringmail\n"
    assert key.read_text().startswith("-----BEGIN RSA PRIVATE KEY-----")
    # openssl reads the key: 2048 bits.
    t = subprocess.run(["openssl", "pkey", "-in", str(key), "-noout", "-text"],
                       capture_output=True, text=True, check=True).stdout
    assert "2048 bit" in t
    name, rec = dkim_record(r.stdout)
    assert name == "ringmail._domainkey.example.com."
    assert rec.startswith("v=DKIM1; k=rsa; p=")
    # p= is the SubjectPublicKeyInfo that openssl derives from the key.
    assert base64.b64decode(rec.split("p=", 1)[1]) == openssl_public_der(key)
    # Character-strings of at most 255 bytes (RFC 1035): this one needs two.
    line = next(l for l in r.stdout.splitlines() if "._domainkey." in l)
    strings = line.split(" IN TXT ", 1)[1].split('" "')
    assert len(strings) == 2 and all(len(s.strip('"')) <= 255 for s in strings)
    assert "selector ringmail" in r.stdout


def test_keygen_ed25519_selector(tmp_path):
    data = tmp_path / "data"
    r = keygen(data, "ed.example", "--type", "ed25519", "--selector", "may2026")
    assert r.returncode == 0, r.stderr
    key = data / "dkim" / "ed.example.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    name, rec = dkim_record(r.stdout)
    assert name == "may2026._domainkey.ed.example."
    assert rec.startswith("v=DKIM1; k=ed25519; p=")
    raw = base64.b64decode(rec.split("p=", 1)[1])
    # RFC 8463: the raw 32-byte key, the tail of openssl's SPKI.
    assert len(raw) == 32 and openssl_public_der(key).endswith(raw)


def test_keygen_refuses_to_replace_without_force(tmp_path):
    data = tmp_path / "data"
    assert keygen(data, "example.com", "--type", "ed25519").returncode == 0
    key = data / "dkim" / "example.com.key"
    before = key.read_bytes()
    r = keygen(data, "example.com", "--type", "ed25519")
    assert r.returncode == 1 and "exists" in r.stderr and "--force" in r.stderr
    assert key.read_bytes() == before
    r = keygen(data, "example.com", "--type", "ed25519", "--selector", "new", "--force")
    assert r.returncode == 0, r.stderr
    assert key.read_bytes() != before
    assert dkim_record(r.stdout)[0] == "new._domainkey.example.com."
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not list((data / "dkim").glob("*.tmp"))


@pytest.mark.parametrize("args", [
    ("not a domain!",), ("example.com", "--type", "dsa"), ("example.com", "--selector", "a b"),
    ("example.com", "--selector", ".x"), ("example.com", "--bogus"), (),
])
def test_keygen_bad_arguments(tmp_path, args):
    r = run_cli("dkim", "keygen", *args, "--data", str(tmp_path / "data"))
    assert r.returncode != 0
    assert r.stderr.strip()
    assert not list(tmp_path.glob("data/dkim/*.key"))


def test_dns_records_prints_the_dkim_record(keys, tmp_path):
    data, recs = keys
    for domain in ("example.com", "ed.example"):
        r = run_cli("dns-records", domain, "--data", str(data))
        assert r.returncode == 0, r.stderr
        name, rec = dkim_record(r.stdout)
        assert recs[domain] == {name: rec}
    r = run_cli("dns-records", "nokey.example", "--data", str(data))
    assert r.returncode == 0
    assert "; DKIM: no key" in r.stdout and "ringmail dkim keygen nokey.example" in r.stdout
    # A key that does not parse is an error, not a silent omission.
    (data / "dkim" / "broken.example.key").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n"
                                                      "-----END PRIVATE KEY-----\n")
    r = run_cli("dns-records", "broken.example", "--data", str(data))
    assert r.returncode == 1 and "broken.example.key" in r.stderr
    (data / "dkim" / "broken.example.key").unlink()


# ---- signatures verified by dkimpy ---------------------------------------------------------

MESSAGES = {
    "plain": b"From: Alice <alice@example.com>\r\nTo: bob@remote.example\r\n"
             b"Subject: hello\r\nDate: Thu, 26 Nov 2026 12:00:00 +0000\r\n"
             b"Message-ID: <1@example.com>\r\n\r\nHello.\r\n",
    # RFC 6376 3.4.6's whitespace, folded headers, trailing empty lines.
    "whitespace": b"From: alice@example.com\r\nTo:  bob@remote.example \t\r\n"
                  b"Subject:  a  \t b\r\n\t  folded   \r\n  again\r\n"
                  b"\r\n C \r\nD \t E\r\n\t\r\n  \r\n\r\n\r\n",
    "empty-body": b"From: alice@example.com\r\nSubject: nothing\r\n\r\n",
    "no-body-separator": b"From: alice@example.com\r\nSubject: headers only\r\n",
    # (Not "last line  ": verifiers differ on whitespace before the CRLF that
    # canonicalization adds; SMTP DATA always ends in CRLF.)
    "no-final-crlf": b"From: alice@example.com\r\n\r\nfirst  \r\nlast \tline",
    "repeated": b"Received: x\r\nFrom: alice@example.com\r\nTo: a@remote.example\r\n"
                b"To: b@remote.example\r\nCc: c@remote.example\r\nReply-To: r@example.com\r\n"
                b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Transfer-Encoding: 8bit\r\nIn-Reply-To: <0@x>\r\n"
                b"References: <0@x>\r\n <1@x>\r\nX-Other: not signed\r\n\r\n"
                b"\xc3\xa9t\xc3\xa9\r\n\r\n\r\nend\r\n",
    "long-header": b"From: alice@example.com\r\nSubject: " + b"x" * 3000 + b"\r\n\r\nbody\r\n",
    "dots": b"From: alice@example.com\r\n\r\n.\r\n..leading\r\n.\r\n",
    # Thousands of signed instances: each is in h=, picked bottom-up.
    "many-fields": b"From: alice@example.com\r\n" + b"".join(
        b"To: r%d@remote.example\r\n" % i for i in range(2000)) + b"\r\nbody\r\n",
}


@pytest.mark.parametrize("domain", ["example.com", "ed.example"])
@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_signature_verifies(keys, domain, name):
    data, recs = keys
    msg = MESSAGES[name]
    r = sign(data, domain, msg)
    assert r.returncode == 0, r.stderr
    signed = r.stdout
    assert strip_sig(signed) == msg
    assert verify(signed, recs[domain]), signed[:1200]
    t = tags(signed)
    assert t["v"] == "1" and t["c"] == "relaxed/relaxed" and t["d"] == domain
    assert t["a"] == ("rsa-sha256" if domain == "example.com" else "ed25519-sha256")
    assert t["s"] == ("ringmail" if domain == "example.com" else "s2026")
    # From is signed, and once more than it occurs (oversigned).
    h = t["h"].lower().split(":")
    assert h.count("from") == 2 and h[-1] == "from"
    assert "x-other" not in h and "received" not in h
    # Folded: no line of the field over 78 columns.
    field = signed[:len(signed) - len(msg)]
    assert all(len(l) <= 78 for l in field.split(b"\r\n")), field


@pytest.mark.parametrize("domain", ["example.com", "ed.example"])
def test_chunked_feed_same_signature(keys, domain):
    """Fed in chunks of any size (splits inside CRLF, whitespace runs and
    runs of empty lines), the body hash is the same and verifies."""
    data, recs = keys
    msg = MESSAGES["whitespace"] + b"x \r\n\r\n \t\r\ny\r\n\r\n\r\n"
    whole = tags(sign(data, domain, msg).stdout)["bh"]
    for chunk in (1, 2, 3, 5, 7, 64):
        signed = sign(data, domain, msg, chunk).stdout
        assert tags(signed)["bh"] == whole, chunk
        assert verify(signed, recs[domain]), chunk


@pytest.mark.parametrize("domain", ["example.com", "ed.example"])
def test_tampering_fails_verification(keys, domain, tmp_path):
    data, recs = keys
    signed = sign(data, domain, MESSAGES["plain"]).stdout
    assert verify(signed, recs[domain])
    assert not verify(signed.replace(b"Hello.", b"Hullo."), recs[domain])
    assert not verify(signed.replace(b"Subject: hello", b"Subject: hellO"), recs[domain])
    # A From added above the signed one: oversigning makes that fail too.
    sig_end = len(signed) - len(MESSAGES["plain"])
    forged = signed[:sig_end] + b"From: mallory@evil.example\r\n" + signed[sig_end:]
    assert not verify(forged, recs[domain])
    # Against another key of the same type published under the same name.
    r = keygen(tmp_path / "other", domain, "--type",
               "rsa" if domain == "example.com" else "ed25519", "--selector",
               tags(signed)["s"])
    assert r.returncode == 0, r.stderr
    assert set(txt_records(r.stdout)) == set(recs[domain])
    assert not verify(signed, txt_records(r.stdout))


def test_not_signed_without_from_or_with_huge_header(keys):
    data, _ = keys
    r = sign(data, "example.com", b"To: bob@remote.example\r\nSubject: x\r\n\r\nbody\r\n")
    assert r.returncode == 1 and b"no From" in r.stderr
    big = b"From: alice@example.com\r\n" + b"X-Pad: " + b"y" * 70000 + b"\r\n\r\nbody\r\n"
    r = sign(data, "example.com", big, 4096)
    assert r.returncode == 1 and b"DKIM_HEADER_MAX" in r.stderr
    r = sign(data, "nokey.example", MESSAGES["plain"])
    assert r.returncode == 1 and b"no key" in r.stderr
