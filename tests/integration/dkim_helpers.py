"""DKIM helpers for the tests: the TXT record that `ringmail dkim keygen`
or `ringmail dns-records` printed, and verification by an independent
verifier, dkimpy (Debian's python3-dkim; ed25519-sha256 through
python3-nacl), with that record served by a dnsfunc instead of real DNS."""
import re

import dkim

RX_TXT = re.compile(r'^(\S+)\. IN TXT ((?:"[^"]*"\s*)+)$', re.M)
RX_SIG = re.compile(rb"\ADKIM-Signature: [^\r\n]*(?:\r\n[ \t][^\r\n]*)*\r\n")


def txt_records(out):
    """{name: record} from zone lines, the character-strings joined."""
    recs = {}
    for m in RX_TXT.finditer(out):
        recs[m.group(1) + "."] = "".join(re.findall(r'"([^"]*)"', m.group(2)))
    return recs


def dkim_record(out):
    """(name, record) of the one DKIM TXT line in out."""
    recs = {k: v for k, v in txt_records(out).items() if "._domainkey." in k}
    assert len(recs) == 1, out
    return next(iter(recs.items()))


def verify(msg, records):
    """True when dkimpy verifies the first DKIM-Signature of msg (bytes)
    against records ({name: TXT text}); any other name has no record."""
    def dnsfunc(name, timeout=5):
        n = name.decode() if isinstance(name, bytes) else name
        if not n.endswith("."):
            n += "."
        r = records.get(n.lower())
        return r.encode() if r is not None else None
    return dkim.verify(msg, dnsfunc=dnsfunc)


def tags(msg):
    """The tags of msg's leading DKIM-Signature field, whitespace removed."""
    m = RX_SIG.match(msg)
    assert m, msg[:300]
    field = m.group(0)[len(b"DKIM-Signature:"):].decode()
    out = {}
    for part in field.split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = re.sub(r"\s+", "", v)
    return out


def strip_sig(msg):
    """msg without its leading DKIM-Signature field."""
    return RX_SIG.sub(b"", msg, count=1)
