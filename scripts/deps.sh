#!/bin/sh
# deps.sh - install what ringmail needs from Debian's packages, then the
# fast static wolfSSL (scripts/build-wolfssl.sh). Idempotent: packages that
# are already installed are not touched, and apt-get update runs only when
# something is missing.
#
#   scripts/deps.sh          what building and running need
#   scripts/deps.sh test     plus what the test suite talks to the server with
#   scripts/deps.sh bench    the same as test (bench/peers/setup.sh installs the peers)
set -eu

here=$(cd "$(dirname "$0")" && pwd)

BUILD="build-essential meson ninja-build pkg-config liburing-dev libjemalloc-dev
libcrypt-dev libcriterion-dev libwolfssl-dev libc-ares-dev zlib1g-dev"
# Real clients for the integration tests: Python's smtplib/imaplib/poplib
# (python3), pytest, curl, openssl s_client, swaks, fetchmail (POP3 and IMAP),
# the IMAP clients users run (mbsync from isync, offlineimap3, getmail6,
# imapfilter, neomutt; tests/integration/test_imap_clients.py), xmllint (auto-discovery
# documents); clang for the fuzzers; dkimpy (python3-dkim, with python3-nacl
# for ed25519-sha256) as the independent DKIM verifier; gnuplot for the plots
# that bench/compare's smoke test (compare-smoke) checks it makes. swaks's
# --tls needs Net::SSLeay, only a Recommends of swaks, which
# --no-install-recommends leaves out: named here.
TEST="python3 dnsmasq-base python3-pytest curl openssl clang libclang-rt-14-dev util-linux
procps iproute2 libxml2-utils swaks libnet-ssleay-perl fetchmail isync offlineimap3 getmail6 imapfilter neomutt
python3-dkim python3-nacl gnuplot-nox"
# The peers (Postfix, Dovecot) come with bench/peers/setup.sh.
BENCH=""

want="$BUILD"
case "${1:-}" in
test) want="$want $TEST" ;;
bench) want="$want $TEST $BENCH" ;;
"") ;;
*) echo "usage: $0 [test|bench]" >&2; exit 2 ;;
esac

missing=""
for p in $want; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $p"
	fi
done
if [ -n "$missing" ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "deps.sh: missing packages:$missing (run as root to install them)" >&2
		exit 1
	fi
	echo "deps.sh: installing$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

sh "$here/build-wolfssl.sh"
