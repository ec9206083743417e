#!/bin/sh
# build-wolfssl.sh - build the fast, static wolfSSL that ringmail links by
# default (meson option wolfssl=bundled).
#
# Debian's libwolfssl-dev is built without assembly (AES-GCM about 30 times
# slower than with AES-NI). This script rebuilds wolfSSL from Debian's own
# source package (Debian's patches applied), configured for this server only,
# as a static library, and installs it into
#     /var/cache/ringmail/wolfssl-<version>-<hash of the configure flags>
# with the symlink /var/cache/ringmail/wolfssl pointing at it (the default of
# the meson option wolfssl_prefix). When that directory is already complete,
# it does nothing and exits 0.
#
# Environment:
#   RINGMAIL_WOLFSSL_PREFIX  the symlink to create instead of
#                            /var/cache/ringmail/wolfssl; the versioned
#                            directory is created beside it. Pass the same
#                            path to meson: -Dwolfssl_prefix=...
#   RINGMAIL_WOLFSSL_JOBS    parallel make jobs (default: nproc)
#
# Run as root on Debian 12 (it uses apt-get). Idempotent.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
# ringmail's own code compiled into the archive (see below).
RAND_DIR=$HERE/../tls/wolfssl
TLS_DIR=$HERE/../tls
# ringmail's source patch (handshake CPU), for this version only.
WOLFSSL_PATCH=$HERE/wolfssl-5.5.4-ringmail.patch
WOLFSSL_PATCH_VERSION=5.5.4
LINK=${RINGMAIL_WOLFSSL_PREFIX:-/var/cache/ringmail/wolfssl}
LINK=${LINK%/}
CACHE=$(dirname "$LINK")
JOBS=${RINGMAIL_WOLFSSL_JOBS:-$(nproc 2>/dev/null || echo 2)}

say() { printf 'build-wolfssl: %s\n' "$*"; }
die() { printf 'build-wolfssl: error: %s\n' "$*" >&2; exit 1; }

# The configuration of the server's wolfSSL. Changing a flag changes the hash
# and so the directory: a new build next to the old one, never a mixed one.
#   - TLS 1.2 and 1.3 only: --disable-oldtls removes TLS 1.0/1.1 (SSLv3 is
#     off by default), no DTLS, no OpenSSL compatibility layer.
#   - Assembly: AES-NI, AVX/AVX2 (intelasm), single-precision math in asm
#     for P-256/X25519 (sp, sp-asm).
#   - Session tickets, SNI, ALPN; certgen/certreq/keygen to generate the
#     self-signed ECDSA P-256 certificate, and WOLFSSL_ALT_NAMES (no configure
#     switch of its own in 5.5) for its subjectAltName.
#   - crypttests stays on so wolfCrypt's benchmark is built (the bench
#     measures "the crypto bound of one handshake" with it); examples off.
#   - Randomness: no Hash_DRBG per WC_RNG (--disable-hashdrbg); instead
#     CUSTOM_RAND_GENERATE_BLOCK=ringmail_rand_block, a per-thread ChaCha20
#     generator seeded from getrandom(2) (tls/wolfssl/ringmail_rand.c,
#     compiled into the archive; docs/tls.md, "Randomness"). Its header is
#     force-included into every wolfSSL file for the declaration, and the
#     two files are part of the hash, so changing them rebuilds.
#   - pkcallbacks: tls/ runs the TLS 1.3 key schedule's HKDF on its SHA-NI
#     code through wolfSSL_CTX_SetHKDFExtractCb/SetHKDFExpandLabelCb.
#   - wolfssl-5.5.4-ringmail.patch (its header says why): SHA-NI for all
#     of wolfCrypt's SHA-256 (sha256.c's transform selection asks
#     ringmail_sha256_ni_select() in tls/wolfssl/ringmail_sha256.c and
#     compresses with tls/tls_sha256_ni.c, both compiled into the archive,
#     the latter as ringmail_sha256_ni_blocks); and a TLS 1.3 server stops
#     feeding the SHA-384/SHA-512 transcripts once its suite's hash is
#     known; and a TLS 1.3 server may write at 0.5-RTT
#     (wolfSSL_ringmail_half_rtt: the greeting goes in the first flight).
#     For 5.5.4 only: another version stops the build. Patch and sources
#     are part of the hash.
#   - WOLFSSL_TLS13_TICKET_BEFORE_FINISHED: the session ticket goes in the
#     server's first flight too (RFC 8446 4.6.1's note; wolfSSL computes the
#     resumption secret from the client Finished it expects), so nothing is
#     left to send when the client's Finished arrives.
#   - ECC_CACHE_CURVE: the P-256 parameters are parsed from their hex
#     strings once per process, not on every handshake (wc_ecc_sig_size
#     in DecodePrivateKey loads them for each signature).
FLAGS="--enable-static --disable-shared
--enable-tls13 --enable-tlsv12 --disable-oldtls --disable-sslv3 --disable-dtls
--disable-opensslextra --disable-opensslall
--enable-intelasm --enable-aesni --enable-sp --enable-sp-asm
--enable-aesgcm --enable-chacha --enable-poly1305
--enable-ecc --enable-curve25519 --enable-ed25519
--enable-session-ticket --enable-sni --enable-alpn --enable-supportedcurves
--enable-certgen --enable-certreq --enable-keygen
--enable-harden --disable-hashdrbg --enable-pkcallbacks
--disable-examples --enable-crypttests"
FLAGS=$(printf '%s ' $FLAGS)
FLAGS=${FLAGS% }
# -fPIC: the archive is linked into PIE executables.
CFLAGS_EXTRA="-O2 -fPIC -DWOLFSSL_ALT_NAMES -DCUSTOM_RAND_GENERATE_BLOCK=ringmail_rand_block -DECC_CACHE_CURVE -DWOLFSSL_TLS13_TICKET_BEFORE_FINISHED"
OWN_FILES="$RAND_DIR/ringmail_rand.h $RAND_DIR/ringmail_rand.c
$RAND_DIR/ringmail_sha256.h $RAND_DIR/ringmail_sha256.c
$TLS_DIR/tls_sha256.h $TLS_DIR/tls_sha256_ni.c $WOLFSSL_PATCH"
for f in $OWN_FILES; do
	[ -f "$f" ] || die "$f missing"
done
# shellcheck disable=SC2086
OWN_SUM=$(cat $OWN_FILES | sha256sum | cut -c1-16)
HASH=$(printf '%s|%s|%s' "$FLAGS" "$CFLAGS_EXTRA" "$OWN_SUM" | sha256sum | cut -c1-10)

[ "$(id -u)" = 0 ] || die "run as root (it installs packages with apt-get)"
command -v apt-get >/dev/null || die "apt-get not found: this script is for Debian"

# ---- deb-src ------------------------------------------------------------
have_deb_src() {
	grep -rqsE '^[[:space:]]*deb-src[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null && return 0
	grep -rqsiE '^Types:.*deb-src' /etc/apt/sources.list.d/*.sources 2>/dev/null && return 0
	return 1
}

add_deb_src() {
	out=/etc/apt/sources.list.d/ringmail-deb-src.sources
	tmp=$out.tmp
	: >"$tmp"
	if [ -f /etc/apt/sources.list.d/debian.sources ]; then
		# Copy every stanza, with Types: deb-src.
		awk '
			/^[[:space:]]*#/ { next }
			/^[[:space:]]*$/ { if (n) print ""; n = 0; next }
			/^Types:/ { print "Types: deb-src"; n++; next }
			/^(URIs|Suites|Components|Signed-By):/ { print; n++; next }
			END { if (n) print "" }
		' /etc/apt/sources.list.d/debian.sources >>"$tmp"
	fi
	if [ -f /etc/apt/sources.list ]; then
		# One-line form: deb [opts] URI suite components...
		awk '
			$1 == "deb" {
				i = 2
				if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
				printf "Types: deb-src\nURIs: %s\nSuites: %s\nComponents:", $i, $(i + 1)
				for (j = i + 2; j <= NF; j++) printf " %s", $j
				printf "\n\n"
			}
		' /etc/apt/sources.list >>"$tmp"
	fi
	[ -s "$tmp" ] || { rm -f "$tmp"; die "no Debian source found in /etc/apt/sources.list{,.d/debian.sources}"; }
	mv "$tmp" "$out"
	say "added $out:"
	sed 's/^/    /' "$out"
}

if ! have_deb_src; then
	add_deb_src
	say "apt-get update"
	apt-get update -qq
fi

# ---- the version Debian ships -------------------------------------------
VERSION=$(apt-cache showsrc wolfssl 2>/dev/null | sed -n 's/^Version: //p' | sort -V | tail -n 1)
[ -n "$VERSION" ] || die "apt-cache showsrc wolfssl found nothing (is deb-src configured and apt-get update done?)"
UPSTREAM=$(printf '%s' "$VERSION" | sed 's/^[0-9]*://; s/-[^-]*$//')
[ "$UPSTREAM" = "$WOLFSSL_PATCH_VERSION" ] ||
	die "Debian ships wolfSSL $UPSTREAM; $(basename "$WOLFSSL_PATCH") (and tls/tls_x25519.c) are for $WOLFSSL_PATCH_VERSION: port them first"
DEST=$CACHE/wolfssl-$UPSTREAM-$HASH

complete() {
	[ -f "$1/.ringmail-complete" ] && [ -f "$1/lib/libwolfssl.a" ] &&
	[ -f "$1/include/wolfssl/ssl.h" ] && [ -x "$1/bin/wolfcrypt-benchmark" ] &&
	[ -f "$1/include/wolfssl/ringmail_rand.h" ] &&
	[ -f "$1/include/wolfssl/ringmail_sha256.h" ]
}

point_link() {
	if [ "$(readlink "$LINK" 2>/dev/null || true)" != "$(basename "$DEST")" ]; then
		[ -e "$LINK" ] && [ ! -L "$LINK" ] && die "$LINK exists and is not a symlink"
		ln -sfn "$(basename "$DEST")" "$LINK.tmp"
		mv -T "$LINK.tmp" "$LINK"
		say "$LINK -> $(basename "$DEST")"
	fi
}

if complete "$DEST"; then
	point_link
	say "up to date: $DEST (wolfSSL $VERSION, flags $HASH)"
	exit 0
fi

say "building wolfSSL $VERSION into $DEST"
say "configure flags: $FLAGS"

# ---- build tools ----------------------------------------------------------
NEED="build-essential autoconf automake libtool dpkg-dev pkg-config"
MISSING=
for p in $NEED; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || MISSING="$MISSING $p"
done
if [ -n "$MISSING" ]; then
	say "apt-get install$MISSING"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $MISSING
fi

# ---- source, configure, build, install ------------------------------------
mkdir -p "$CACHE"
WORK=$(mktemp -d "$CACHE/.build-wolfssl.XXXXXX")
trap 'rm -rf "$WORK"' EXIT INT TERM
cd "$WORK"
chmod 755 "$WORK"  # apt-get source runs as _apt when it can
say "apt-get source wolfssl=$VERSION in $WORK"
apt-get source -qq "wolfssl=$VERSION" >source.log 2>&1 || { cat source.log >&2; die "apt-get source failed"; }
SRC=$(find . -mindepth 1 -maxdepth 1 -type d -name 'wolfssl-*' | head -n 1)
[ -n "$SRC" ] || die "no unpacked source directory"
cd "$SRC"

if [ ! -x ./configure ]; then
	say "autogen"
	./autogen.sh >../autogen.log 2>&1 || { tail -n 40 ../autogen.log >&2; die "autogen failed"; }
fi

say "patch $(basename "$WOLFSSL_PATCH")"
patch -p1 --forward --no-backup-if-mismatch <"$WOLFSSL_PATCH" >../patch.log 2>&1 ||
	{ cat ../patch.log >&2; die "$(basename "$WOLFSSL_PATCH") does not apply"; }

rm -rf "$DEST"
mkdir -p ../ringmail/tls
cp "$RAND_DIR/ringmail_rand.h" "$RAND_DIR/ringmail_rand.c" \
	"$RAND_DIR/ringmail_sha256.h" "$RAND_DIR/ringmail_sha256.c" ../ringmail/
cp "$TLS_DIR/tls_sha256.h" "$TLS_DIR/tls_sha256_ni.c" ../ringmail/tls/
RM=$(cd ../ringmail && pwd)
say "configure"
# shellcheck disable=SC2086
./configure --prefix="$DEST" $FLAGS CFLAGS="$CFLAGS_EXTRA -include $RM/ringmail_rand.h" >../configure.log 2>&1 ||
	{ tail -n 40 ../configure.log >&2; die "configure failed (log above)"; }
say "make -j$JOBS"
# The library first, then ringmail's objects into its archive, then the
# rest (the benchmark and test programs link against the archive and need
# them).
make -j"$JOBS" src/libwolfssl.la >../make.log 2>&1 || { tail -n 60 ../make.log >&2; die "make failed (log above)"; }
[ -f src/.libs/libwolfssl.a ] || die "src/.libs/libwolfssl.a was not built"
# shellcheck disable=SC2086
${CC:-cc} $CFLAGS_EXTRA -I. -I"$RM" -Wall -Wextra -Werror -c "$RM/ringmail_rand.c" -o "$RM/ringmail_rand.o" >>../make.log 2>&1 ||
	{ tail -n 30 ../make.log >&2; die "cannot compile ringmail_rand.c"; }
# shellcheck disable=SC2086
${CC:-cc} $CFLAGS_EXTRA -I"$RM" -Wall -Wextra -Werror -c "$RM/ringmail_sha256.c" -o "$RM/ringmail_sha256.o" >>../make.log 2>&1 ||
	{ tail -n 30 ../make.log >&2; die "cannot compile ringmail_sha256.c"; }
# The same compression function tls/ uses, under the name the patch calls;
# the only object built with -msha.
# shellcheck disable=SC2086
${CC:-cc} $CFLAGS_EXTRA -msha -mssse3 -msse4.1 -Dtls_sha256_ni_blocks=ringmail_sha256_ni_blocks \
	-I"$RM" -Wall -Wextra -Werror -c "$RM/tls/tls_sha256_ni.c" -o "$RM/ringmail_sha256_ni.o" >>../make.log 2>&1 ||
	{ tail -n 30 ../make.log >&2; die "cannot compile tls_sha256_ni.c"; }
ar rs src/.libs/libwolfssl.a "$RM/ringmail_rand.o" "$RM/ringmail_sha256.o" "$RM/ringmail_sha256_ni.o" \
	>>../make.log 2>&1 || die "ar failed"
make -j"$JOBS" >>../make.log 2>&1 || { tail -n 60 ../make.log >&2; die "make failed (log above)"; }
make install >../install.log 2>&1 || { tail -n 40 ../install.log >&2; die "make install failed"; }
for sym in ringmail_rand_block ringmail_sha256_ni_select ringmail_sha256_ni_blocks; do
	nm "$DEST/lib/libwolfssl.a" 2>/dev/null | grep -q " T $sym\$" ||
		die "$sym is not in the installed archive"
done
install -m 0644 "$RM/ringmail_rand.h" "$DEST/include/wolfssl/ringmail_rand.h"
install -m 0644 "$RM/ringmail_sha256.h" "$DEST/include/wolfssl/ringmail_sha256.h"

# The benchmark binary: libtool may leave a wrapper script; with a static
# build the real program is the file itself or .libs/benchmark.
BENCH=wolfcrypt/benchmark/benchmark
[ -f wolfcrypt/benchmark/.libs/benchmark ] && BENCH=wolfcrypt/benchmark/.libs/benchmark
[ -f "$BENCH" ] || die "wolfcrypt benchmark was not built"
install -D -m 0755 "$BENCH" "$DEST/bin/wolfcrypt-benchmark"

# Keep the flags and Debian version next to the build, for the report and
# for anyone wondering what exactly is linked.
{
	printf 'debian_version=%s\n' "$VERSION"
	printf 'configure_flags=%s\n' "$FLAGS"
	printf 'cflags=%s -include ringmail_rand.h\n' "$CFLAGS_EXTRA"
	printf 'ringmail_sources_sha256=%s\n' "$OWN_SUM"
	printf 'patches=%s\n' "$(basename "$WOLFSSL_PATCH")"
	printf 'flags_hash=%s\n' "$HASH"
} >"$DEST/ringmail-build.txt"
cp ../configure.log "$DEST/configure.log"
grep -h '^#define' "$DEST/include/wolfssl/options.h" >/dev/null ||
	die "installed options.h is empty"
touch "$DEST/.ringmail-complete"

point_link
say "done: $DEST"
say "benchmark: $DEST/bin/wolfcrypt-benchmark"
