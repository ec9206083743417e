#!/bin/bash
# setup.sh - the peers of the SMTP delivery bench: Postfix delivering over
# LMTP to Dovecot, from Debian's packages, as a private instance on loopback
# high ports (it never touches the system's ports 25/143/110... nor
# /etc/postfix/main.cf or /etc/dovecot). Every tuning choice and the
# document it comes from: bench/peers/README.md.
#
#   bench/peers/setup.sh [--dir DIR] [--port PORT] [--users N] [--format mdbox|maildir]
#                        [--no-install]
#
# DIR (/var/lib/ringmail-peers) gets:
#   postfix/        config_directory (main.cf, master.cf, vmailbox, senders)
#   postfix-spool/  queue_directory (private/auth: Dovecot's SASL socket for
#                   Postfix's smtpd);   postfix-data/ data_directory
#   dovecot/        dovecot.conf, passwd, run/ (base_dir: the lmtp socket)
#   tls/            cert.pem, key.pem: a self-signed ECDSA P-256 certificate
#                   (ringmail's own type) for Dovecot's 993/995 and Postfix's 465
#   mail/USER/      mailboxes (owned by the rmbench user)
#   postfix.log, dovecot.log
#   env             PORT, FORMAT, USERS for start.sh, stop.sh, count.sh
# The ports follow ringmail's table shifted by PORT - 25 (24000 by default):
# Postfix 24025, 24026, 26025, 26525 (MX: mail for example.com from
# anyone), 24465 (implicit TLS) and 24587 (STARTTLS required), the last two
# submission ports with AUTH required (SASL through Dovecot's auth service)
# and the sender bound to the login; Dovecot IMAP 24143 and 24993, POP3
# 24110 and 24995, for the greet, TLS, IMAP, POP3 and SMTP benches. (The
# benches start ringmail at offsets from 27000, above all of these.)
# Users r1@example.com .. rN@example.com (N = --users, 64) exist in both
# Postfix's virtual mailbox map and Dovecot's passwd-file, so every bench run
# can deliver into mailboxes of its own.
#
# Needs root (apt, the rmbench system user, Postfix's set-permissions).
# Run start.sh afterwards; running setup.sh again rewrites the configuration
# and empties the mailboxes and the queue (stop the instance first).
set -eu

dir=/var/lib/ringmail-peers
port=24025
users=64
format=mdbox
install=1
while [ $# -gt 0 ]; do
	case $1 in
	--dir) dir=$2; shift ;;
	--port) port=$2; shift ;;
	--users) users=$2; shift ;;
	--format) format=$2; shift ;;
	--no-install) install=0 ;;
	-h|--help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "setup.sh: unknown option $1" >&2; exit 1 ;;
	esac
	shift
done
case $format in mdbox|maildir) ;; *) echo "setup.sh: --format mdbox or maildir" >&2; exit 1 ;; esac
[ "$(id -u)" = 0 ] || { echo "setup.sh: run as root" >&2; exit 1; }

# ---- packages ----------------------------------------------------------------
# "No configuration": Debian's postinst writes no /etc/postfix/main.cf and
# starts no system instance; ours lives in $dir with its own config_directory.
if [ $install = 1 ]; then
	need=
	for p in postfix dovecot-core dovecot-lmtpd dovecot-imapd dovecot-pop3d; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
			need="$need $p"
	done
	if [ -n "$need" ]; then
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y \
			--no-install-recommends $need
	fi
fi
command -v postfix >/dev/null && command -v dovecot >/dev/null ||
	{ echo "setup.sh: postfix or dovecot missing" >&2; exit 1; }

if [ -f "$dir/postfix-spool/pid/master.pid" ] &&
   kill -0 "$(cat "$dir/postfix-spool/pid/master.pid" 2>/dev/null)" 2>/dev/null; then
	echo "setup.sh: the instance in $dir is running: bench/peers/stop.sh --dir $dir first" >&2
	exit 1
fi

id rmbench >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin rmbench
uid=$(id -u rmbench)
gid=$(id -g rmbench)

rm -rf "$dir/postfix-spool" "$dir/postfix-data" "$dir/mail" "$dir/dovecot" "$dir/postfix.log" "$dir/dovecot.log"
mkdir -p "$dir/postfix" "$dir/postfix-spool" "$dir/postfix-data" "$dir/dovecot/run" \
	"$dir/dovecot/state" "$dir/mail"
chmod 755 "$dir"
chown rmbench:rmbench "$dir/mail"
off=$((port - 25))

# ---- certificate ----------------------------------------------------------------
# The type ringmail generates: ECDSA P-256, self-signed, SAN localhost.
mkdir -p "$dir/tls"
if [ ! -s "$dir/tls/cert.pem" ]; then
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
		-subj "/CN=mx.peer.example" -addext "subjectAltName=DNS:localhost,DNS:mx.peer.example" \
		-keyout "$dir/tls/key.pem" -out "$dir/tls/cert.pem" 2>/dev/null
fi
chmod 600 "$dir/tls/key.pem"

# ---- Dovecot ---------------------------------------------------------------------
for i in $(seq 1 "$users"); do
	echo "r$i@example.com:{PLAIN}bench-Secret-1:$uid:$gid::$dir/mail/r$i@example.com::"
done >"$dir/dovecot/passwd"
if [ "$format" = mdbox ]; then
	location="mdbox:~/mdbox"
else
	location="maildir:~/Maildir"
fi
cat >"$dir/dovecot/dovecot.conf" <<EOF
# ringmail bench peer (bench/peers/README.md): LMTP delivery from Postfix,
# IMAP and POP3 on loopback high ports for the IMAP/POP3/TLS benches.
protocols = lmtp imap pop3
listen = 127.0.0.1
base_dir = $dir/dovecot/run
state_dir = $dir/dovecot/state
log_path = $dir/dovecot.log
info_log_path = $dir/dovecot.log
ssl = yes
ssl_cert = <$dir/tls/cert.pem
ssl_key = <$dir/tls/key.pem
ssl_min_protocol = TLSv1.2
# Plaintext LOGIN on 143/110 as ringmail allows it (the table's "unencrypted").
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = $uid
mail_location = $location
# fsync on: the default, spelled out (a 250 over LMTP means on disk).
mail_fsync = optimized
# Passdb/userdb lookups cached (doc: Performance tuning, auth_cache_size).
auth_cache_size = 10M
auth_cache_ttl = 1 hour
passdb {
  driver = passwd-file
  args = scheme=PLAIN $dir/dovecot/passwd
}
userdb {
  driver = passwd-file
  args = $dir/dovecot/passwd
}
default_process_limit = 200
default_client_limit = 20000
service lmtp {
  unix_listener lmtp {
    mode = 0600
    user = postfix
    group = postfix
  }
  # Pre-forked LMTP processes (doc: Performance tuning / Service
  # configuration): process_min_avail = CPU cores; service_count = 0
  # (the default) lets each process serve any number of connections.
  process_min_avail = 2
  process_limit = 100
}
service auth {
  unix_listener auth-userdb {
    mode = 0600
  }
  # Postfix's SMTP AUTH on 465/587 asks Dovecot (Dovecot's "Postfix SASL"
  # howto: a listener in Postfix's queue directory, smtpd_sasl_type =
  # dovecot); the same passdb and auth cache as IMAP and POP3 logins.
  unix_listener $dir/postfix-spool/private/auth {
    mode = 0660
    user = postfix
    group = postfix
  }
}
# Logins in "high-performance mode" (doc: Login processes): each login
# process serves many clients (service_count = 0), one per CPU core
# pre-forked (process_min_avail), and proxies TLS for them.
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $((off + 143))
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = $((off + 993))
    ssl = yes
  }
  service_count = 0
  process_min_avail = 2
  client_limit = 10000
  vsz_limit = 1G
}
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $((off + 110))
  }
  inet_listener pop3s {
    address = 127.0.0.1
    port = $((off + 995))
    ssl = yes
  }
  service_count = 0
  process_min_avail = 2
  client_limit = 10000
  vsz_limit = 1G
}
# Mail processes reused across sessions (doc: service_count, "for better
# performance this can be set higher"; every user has the same uid here),
# pre-forked, and enough of them for the idle bench's thousands of sessions.
service imap {
  service_count = 1000
  process_min_avail = 2
  process_limit = 5000
}
service pop3 {
  service_count = 1000
  process_min_avail = 2
  process_limit = 1000
}
protocol imap {
  # The idle bench holds many sessions of one user from 16 addresses.
  mail_max_userip_connections = 10000
  mail_plugins =
}
protocol pop3 {
  mail_max_userip_connections = 10000
  mail_plugins =
}
protocol lmtp {
  # No Sieve, no quota, no plugins: the plain store path.
  mail_plugins =
}
EOF

# ---- Postfix -----------------------------------------------------------------------
for i in $(seq 1 "$users"); do
	echo "r$i@example.com OK"
done >"$dir/postfix/vmailbox"
# Who may send as whom after AUTH: each user as itself (ringmail's rule).
for i in $(seq 1 "$users"); do
	echo "r$i@example.com r$i@example.com"
done >"$dir/postfix/senders"
# Dovecot (started first) puts its SASL socket for Postfix here.
mkdir -p "$dir/postfix-spool/private"
chown postfix "$dir/postfix-spool/private"
chmod 700 "$dir/postfix-spool/private"
cat >"$dir/postfix/main.cf" <<EOF
# ringmail bench peer (bench/peers/README.md): an MX for example.com on
# 127.0.0.1:$port, delivering every message over LMTP to Dovecot.
compatibility_level = 3.6
queue_directory = $dir/postfix-spool
data_directory = $dir/postfix-data
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.peer.example
mydomain = peer.example
myorigin = \$myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions =
alias_maps =
alias_database =
local_recipient_maps =
local_transport = error:no local delivery
biff = no
maillog_file = $dir/postfix.log

virtual_mailbox_domains = example.com
virtual_mailbox_maps = texthash:$dir/postfix/vmailbox
virtual_transport = lmtp:unix:$dir/dovecot/run/lmtp
# The body FETCH bench delivers a 10 MiB message (default limit 10,240,000).
message_size_limit = 67108864
virtual_mailbox_limit = 0

# ---- load tuning (TUNING_README, STRESS_README, postconf(5)) ----
# No flow control delay for the SMTP server (in_flow_delay).
in_flow_delay = 0
# Enough smtpd processes for every concurrent session, and to spare.
default_process_limit = 200
# No per-client connection count/rate limits (anvil) for the load client.
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_recipient_rate_limit = 0
# No DNS: no reverse lookup of the client, no DNS for the LMTP/SMTP clients.
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtp_host_lookup = native
lmtp_host_lookup = native
# LMTP to Dovecot: enough parallel deliveries, connections reused.
lmtp_destination_concurrency_limit = 50
lmtp_connection_cache_on_demand = yes
# No header/body checks, no milters, no STARTTLS, no postscreen (master.cf).
smtpd_tls_security_level = none
smtp_tls_security_level = none
# TLS on the submission ports only (master.cf: $((off + 465)) implicit,
# $((off + 587)) STARTTLS), with the peer certificate; session tickets on
# (smtpd_tls_session_cache_timeout > 0, the default).
smtpd_tls_chain_files = $dir/tls/key.pem, $dir/tls/cert.pem
smtputf8_enable = no

# ---- SMTP AUTH on the submission ports (SASL_README "Dovecot SASL") ----
# Dovecot's auth service over private/auth (a socket Dovecot's master puts
# in this queue directory); enabled per listener in master.cf, off on the
# MX ports as they were measured before.
smtpd_sasl_type = dovecot
smtpd_sasl_path = private/auth
smtpd_sasl_auth_enable = no
# reject_sender_login_mismatch (master.cf): MAIL FROM must be the login.
smtpd_sender_login_maps = texthash:$dir/postfix/senders
EOF
# Debian's master.cf, chroot off (our paths are outside a chroot), the
# public smtp listener replaced by 127.0.0.1:$port; no postscreen.
awk -v port="$port" '
	/^#/ || /^[ \t]/ || NF == 0 { print; next }
	$1 == "smtp" && $2 == "inet" { $1 = "127.0.0.1:" port; $5 = "n"; print; next }
	NF >= 8 { $5 = "n"; print; next }
	{ print }
' /etc/postfix/master.cf >"$dir/postfix/master.cf"
# The rest of the ports table: 26, 2025, 2525 as 25 (MX); 465 (implicit
# TLS, "submissions") and 587 (STARTTLS required, "submission") as Debian's
# master.cf templates have them: AUTH required (smtpd_tls_auth_only: only
# over TLS), the sender bound to the login, nothing relayed without AUTH.
submission_opts='
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_tls_auth_only=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_sender_restrictions=reject_sender_login_mismatch
  -o smtpd_recipient_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject'
cat >>"$dir/postfix/master.cf" <<EOF
127.0.0.1:$((off + 26)) inet n - n - - smtpd
127.0.0.1:$((off + 2025)) inet n - n - - smtpd
127.0.0.1:$((off + 2525)) inet n - n - - smtpd
127.0.0.1:$((off + 465)) inet n - n - - smtpd
  -o syslog_name=postfix/submissions
  -o smtpd_tls_wrappermode=yes
  -o smtpd_tls_security_level=encrypt$submission_opts
127.0.0.1:$((off + 587)) inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt$submission_opts
EOF
postfix -c "$dir/postfix" set-permissions >/dev/null 2>&1 || true
postfix -c "$dir/postfix" check

cat >"$dir/env" <<EOF
PORT=$port
FORMAT=$format
USERS=$users
EOF
echo "peers set up in $dir: Postfix on 127.0.0.1:$port, $((off + 26)), $((off + 2025)), $((off + 2525)) (MX), $((off + 465)) (TLS) and $((off + 587)) (STARTTLS) with AUTH -> LMTP -> Dovecot ($format), IMAP $((off + 143))/$((off + 993)), POP3 $((off + 110))/$((off + 995)), users r1..r$users@example.com"
