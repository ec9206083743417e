/* dns.c - c-ares on the ring (see dns.h). */
#include <ares.h>
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/loop.h"
#include "outbound/dns.h"

/* One socket c-ares asked us to watch. */
struct dns_sock {
	struct loop_cb cb;
	struct dns *dns;
	int fd;
	bool want_r, want_w;
	bool armed;   /* a POLL_ADD is in flight */
	bool dead;    /* c-ares closed it; freed when the poll completes */
	struct dns_sock *next;
};

struct dns {
	struct loop *loop;
	ares_channel ch;
	struct dns_sock *socks;
	struct loop_cb ignore_cb;
};

int dns_global_init(void)
{
	return ares_library_init(ARES_LIB_INIT_ALL) == ARES_SUCCESS ? 0 : -EIO;
}

void dns_global_cleanup(void)
{
	ares_library_cleanup();
}

static void ignore_done(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	(void)loop;
	(void)cb;
	(void)res;
	(void)flags;
}

static void sock_arm(struct dns_sock *s);

static void sock_unlink_free(struct dns_sock *s)
{
	struct dns_sock **pp = &s->dns->socks;
	while (*pp && *pp != s)
		pp = &(*pp)->next;
	if (*pp)
		*pp = s->next;
	free(s);
}

static void sock_polled(struct loop *loop, struct loop_cb *cb, int res, uint32_t flags)
{
	(void)loop;
	(void)flags;
	struct dns_sock *s = (struct dns_sock *)cb;
	s->armed = false;
	if (s->dead) {
		sock_unlink_free(s);
		return;
	}
	if (res > 0) {
		int fd = s->fd;
		struct dns *dns = s->dns;
		/* May call the state callback (even closing this socket) and
		 * the query callbacks. */
		ares_process_fd(dns->ch, (res & (POLLIN | POLLERR | POLLHUP)) ? fd : ARES_SOCKET_BAD,
				(res & POLLOUT) ? fd : ARES_SOCKET_BAD);
		for (struct dns_sock *x = dns->socks; x; x = x->next)
			if (x == s)
				goto still;
		return;
	}
still:
	if (s->dead) {
		sock_unlink_free(s);
		return;
	}
	sock_arm(s);
}

static void sock_arm(struct dns_sock *s)
{
	if (s->armed || s->dead || (!s->want_r && !s->want_w))
		return;
	unsigned mask = (s->want_r ? POLLIN : 0) | (s->want_w ? POLLOUT : 0);
	s->cb.fn = sock_polled;
	io_uring_prep_poll_add(loop_sqe(s->dns->loop, &s->cb), s->fd, mask);
	s->armed = true;
}

static void sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
	struct dns *dns = data;
	struct dns_sock *s = NULL;
	for (struct dns_sock *x = dns->socks; x; x = x->next)
		if (x->fd == fd && !x->dead)
			s = x;
	if (!readable && !writable) {
		if (!s)
			return;
		s->dead = true;
		s->want_r = s->want_w = false;
		if (s->armed) {
			/* The socket is being closed: the poll would wait forever. */
			io_uring_prep_poll_remove(loop_sqe(dns->loop, &dns->ignore_cb),
						  loop_cb_udata(&s->cb));
		} else {
			sock_unlink_free(s);
		}
		return;
	}
	if (!s) {
		if (!(s = calloc(1, sizeof(*s))))
			return; /* the query times out */
		s->dns = dns;
		s->fd = fd;
		s->next = dns->socks;
		dns->socks = s;
	}
	s->want_r = readable;
	s->want_w = writable;
	sock_arm(s);
}

int dns_new(struct loop *loop, const char *servers, struct dns **dns_r)
{
	struct dns *dns = calloc(1, sizeof(*dns));
	if (!dns)
		return -ENOMEM;
	dns->loop = loop;
	dns->ignore_cb.fn = ignore_done;
	struct ares_options o;
	memset(&o, 0, sizeof(o));
	o.sock_state_cb = sock_state;
	o.sock_state_cb_data = dns;
	o.timeout = 2000;
	o.tries = 3;
	int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES;
	if (ares_init_options(&dns->ch, &o, mask) != ARES_SUCCESS) {
		free(dns);
		return -EIO;
	}
	if (servers && *servers && ares_set_servers_ports_csv(dns->ch, servers) != ARES_SUCCESS) {
		ares_destroy(dns->ch);
		free(dns);
		return -EINVAL;
	}
	*dns_r = dns;
	return 0;
}

void dns_free(struct dns **dns_r)
{
	struct dns *dns = *dns_r;
	if (!dns)
		return;
	*dns_r = NULL;
	ares_destroy(dns->ch);
	/* Polls still in flight keep their memory until the ring goes. */
	for (struct dns_sock *s = dns->socks, *n; s; s = n) {
		n = s->next;
		if (!s->armed)
			free(s);
	}
	free(dns);
}

void dns_tick(struct dns *dns)
{
	ares_process_fd(dns->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
}

static enum dns_status map_status(int st)
{
	switch (st) {
	case ARES_SUCCESS: return DNS_OK;
	case ARES_ENODATA: return DNS_NODATA;
	case ARES_ENOTFOUND: return DNS_NXDOMAIN;
	default: return DNS_TEMPFAIL;
	}
}

struct mx_req {
	dns_mx_cb *cb;
	void *arg;
};

static int mx_cmp(const void *a, const void *b)
{
	const struct dns_mx *x = a, *y = b;
	return (int)x->pref - (int)y->pref;
}

static void mx_done(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	(void)timeouts;
	struct mx_req *r = arg;
	struct dns_mx mx[DNS_MX_MAX];
	size_t n = 0;
	enum dns_status st = map_status(status);
	if (st == DNS_OK) {
		struct ares_mx_reply *list = NULL;
		int prc = ares_parse_mx_reply(abuf, alen, &list);
		if (prc == ARES_SUCCESS) {
			for (struct ares_mx_reply *m = list; m && n < DNS_MX_MAX; m = m->next) {
				const char *h = m->host ? m->host : "";
				if (!strcmp(h, "."))
					h = "";
				snprintf(mx[n].host, sizeof(mx[n].host), "%s", h);
				mx[n].pref = m->priority;
				n++;
			}
			ares_free_data(list);
			qsort(mx, n, sizeof(mx[0]), mx_cmp);
		} else {
			st = map_status(prc);
		}
		if (st == DNS_OK && n == 0)
			st = DNS_NODATA;
	}
	dns_mx_cb *cb = r->cb;
	void *cbarg = r->arg;
	free(r);
	cb(cbarg, st, mx, n);
}

void dns_mx(struct dns *dns, const char *domain, dns_mx_cb *cb, void *arg)
{
	struct mx_req *r = malloc(sizeof(*r));
	if (!r) {
		cb(arg, DNS_TEMPFAIL, NULL, 0);
		return;
	}
	r->cb = cb;
	r->arg = arg;
	ares_query(dns->ch, domain, ns_c_in, ns_t_mx, mx_done, r);
}

struct addr_req {
	dns_addr_cb *cb;
	void *arg;
	uint16_t port;
	int left;
	enum dns_status st4, st6;
	struct sockaddr_storage a4[DNS_ADDR_MAX], a6[DNS_ADDR_MAX];
	size_t n4, n6;
};

static void addr_finish(struct addr_req *r)
{
	struct sockaddr_storage all[2 * DNS_ADDR_MAX];
	size_t n = 0;
	for (size_t i = 0; i < r->n4; i++)
		all[n++] = r->a4[i];
	for (size_t i = 0; i < r->n6; i++)
		all[n++] = r->a6[i];
	enum dns_status st = DNS_OK;
	if (n == 0) {
		if (r->st4 == DNS_TEMPFAIL || r->st6 == DNS_TEMPFAIL)
			st = DNS_TEMPFAIL;
		else if (r->st4 == DNS_NXDOMAIN)
			st = DNS_NXDOMAIN;
		else
			st = DNS_NODATA;
	}
	dns_addr_cb *cb = r->cb;
	void *arg = r->arg;
	free(r);
	cb(arg, st, all, n);
}

static void a_done(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	(void)timeouts;
	struct addr_req *r = arg;
	r->st4 = map_status(status);
	if (r->st4 == DNS_OK) {
		struct ares_addrttl t[DNS_ADDR_MAX];
		int nt = DNS_ADDR_MAX;
		if (ares_parse_a_reply(abuf, alen, NULL, t, &nt) == ARES_SUCCESS) {
			for (int i = 0; i < nt; i++) {
				struct sockaddr_in *sin = (struct sockaddr_in *)&r->a4[r->n4++];
				memset(sin, 0, sizeof(*sin));
				sin->sin_family = AF_INET;
				sin->sin_port = htons(r->port);
				sin->sin_addr = t[i].ipaddr;
			}
		}
	}
	if (--r->left == 0)
		addr_finish(r);
}

static void aaaa_done(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	(void)timeouts;
	struct addr_req *r = arg;
	r->st6 = map_status(status);
	if (r->st6 == DNS_OK) {
		struct ares_addr6ttl t[DNS_ADDR_MAX];
		int nt = DNS_ADDR_MAX;
		if (ares_parse_aaaa_reply(abuf, alen, NULL, t, &nt) == ARES_SUCCESS) {
			for (int i = 0; i < nt; i++) {
				struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&r->a6[r->n6++];
				memset(s6, 0, sizeof(*s6));
				s6->sin6_family = AF_INET6;
				s6->sin6_port = htons(r->port);
				memcpy(&s6->sin6_addr, &t[i].ip6addr, sizeof(s6->sin6_addr));
			}
		}
	}
	if (--r->left == 0)
		addr_finish(r);
}

void dns_addr(struct dns *dns, const char *host, uint16_t port, dns_addr_cb *cb, void *arg)
{
	struct addr_req *r = calloc(1, sizeof(*r));
	if (!r) {
		cb(arg, DNS_TEMPFAIL, NULL, 0);
		return;
	}
	r->cb = cb;
	r->arg = arg;
	r->port = port;
	/* An address literal needs no lookup. */
	struct sockaddr_in *sin = (struct sockaddr_in *)&r->a4[0];
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&r->a6[0];
	if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons(port);
		r->n4 = 1;
		addr_finish(r);
		return;
	}
	if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(port);
		r->n6 = 1;
		addr_finish(r);
		return;
	}
	r->left = 2;
	ares_query(dns->ch, host, ns_c_in, ns_t_a, a_done, r);
	ares_query(dns->ch, host, ns_c_in, ns_t_aaaa, aaaa_done, r);
}
