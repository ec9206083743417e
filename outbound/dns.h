/* dns.h - DNS lookups for outbound delivery: c-ares driven from the loop's
 * ring (its sockets polled with IORING_OP_POLL_ADD through loop_sqe(); no
 * blocking resolver call on a loop). One struct dns per loop, used only on
 * that loop's thread. */
#ifndef RINGMAIL_OUTBOUND_DNS_H
#define RINGMAIL_OUTBOUND_DNS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct loop;
struct dns;

enum dns_status {
	DNS_OK = 0,
	DNS_NODATA = 1,    /* the name exists, no record of that type */
	DNS_NXDOMAIN = 2,  /* the name does not exist (permanent) */
	DNS_TEMPFAIL = 3,  /* timeout, SERVFAIL, ...: try again later */
};

#define DNS_MX_MAX 16
#define DNS_ADDR_MAX 16
#define DNS_NAME_MAX 256

struct dns_mx {
	char host[DNS_NAME_MAX]; /* "" for the null MX "." (RFC 7505) */
	unsigned pref;
};

/* ares_library_init(); once, main thread, before any dns_new(). 0 or -EIO. */
int dns_global_init(void);
void dns_global_cleanup(void);

/* servers: "" for /etc/resolv.conf (read once, here), else
 * "HOST:PORT[,HOST:PORT...]". Returns 0 or a negative errno. */
int dns_new(struct loop *loop, const char *servers, struct dns **dns_r);
void dns_free(struct dns **dns_r);
/* Handles resolver timeouts; call about once a second. */
void dns_tick(struct dns *dns);

/* MX records of domain, sorted by preference. cb may run inside the call
 * (on an immediate failure). */
typedef void dns_mx_cb(void *arg, enum dns_status st, const struct dns_mx *mx, size_t n);
void dns_mx(struct dns *dns, const char *domain, dns_mx_cb *cb, void *arg);

/* A then AAAA addresses of host, with port set. */
typedef void dns_addr_cb(void *arg, enum dns_status st, const struct sockaddr_storage *addrs,
			 size_t n);
void dns_addr(struct dns *dns, const char *host, uint16_t port, dns_addr_cb *cb, void *arg);

#endif
