/*
 * The simulated xenstored: the node tree, permissions, transactions and
 * watches of C xenstored (tools/xenstored), spoken over UNIX stream sockets
 * with the xs_wire.h framing, so that the unmodified libxenstore and
 * xenstore-utils talk to it through XENSTORED_PATH.
 *
 * The tree is a hash table of self-contained node records keyed by the
 * absolute path, each carrying its value, ACL and child-name list (as C
 * xenstored's tdb records do). A transaction is a second table of private
 * copies of every node it touched (or tombstones for nodes it found absent
 * or removed), each remembering the generation the node had in the tree at
 * first touch; commit fails with EAGAIN when any of them changed meanwhile,
 * else copies the modified records into the tree and fires the watch events
 * the transaction queued.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <xen/io/xs_wire.h>

#include "common/compiler.h"
#include "common/log.h"
#include "sim/xs/xs.h"
#include "sim/xs/xs-int.h"

#define HDR_BYTES    ((uint32_t)sizeof(struct xsd_sockmsg))
#define PERM_READ    1u
#define PERM_WRITE   2u
#define PERM_OWNER   4u
#define NDOMIDS      65536u
#define TAG_LISTENER 1
#define TAG_CONN     2

static_assert(sizeof(struct xsd_sockmsg) == 16, "xs_wire header");

struct perm {
	uint16_t domid;
	uint8_t perm; /* PERM_READ | PERM_WRITE */
};

struct node {
	struct node *hnext;
	char *path;
	uint8_t *value;
	uint32_t value_len;
	uint32_t nperms;
	struct perm *perms; /* [0] is the owner and the default for others */
	char *children;     /* child names, each NUL-terminated, back to back */
	uint32_t children_len;
	uint64_t gen; /* s->gen at last change of value, perms or children */
	/* In a transaction's table only: */
	uint64_t orig_gen; /* gen in the tree at first touch, 0 = was absent */
	bool deleted;      /* tombstone: absent in this transaction's view */
	bool modified;
};

struct table {
	struct node **b;
	size_t nb; /* power of two */
	size_t count;
};

struct event {
	struct event *next;
	bool exact;
	uint32_t nperms, nold;
	struct perm *perms; /* who may read the node now (NULL for @ paths) */
	struct perm *old;   /* ... or before the change (set_perms), else NULL */
	const char *path;
	char buf[]; /* path of a queued event */
};

struct tx {
	struct tx *next;
	uint32_t id;
	struct table nodes;
	struct event *ev_head, *ev_tail;
	unsigned int nevents;
	unsigned int created; /* nodes created, for the owner's quota */
};

struct watch {
	struct watch *next;
	char *path; /* absolute or @special */
	char *token;
	size_t rel_len; /* relative watch: strlen("/local/domain/N"), else 0 */
};

struct outbuf {
	struct outbuf *next;
	size_t len, off;
	uint8_t data[];
};

struct listener {
	int tag;
	struct listener *next;
	int fd;
	uint16_t domid;
	char *path;
};

struct conn {
	int tag;
	struct conn *prev, *next;
	struct vd_xs_server *s;
	struct listener *l; /* NULL when adopted with vd_xs_server_add_conn */
	int fd;
	uint16_t domid;
	bool dead;
	uint32_t ep_events;
	struct xsd_sockmsg hdr;
	uint32_t in_used;
	uint8_t in[HDR_BYTES + XENSTORE_PAYLOAD_MAX + 1];
	struct outbuf *out_head, *out_tail;
	size_t out_bytes;
	struct watch *watches;
	unsigned int nwatches;
	struct tx *txs;
	unsigned int ntxs;
};

struct vd_xs_server {
	int epfd;
	struct table tree;
	uint64_t gen;
	uint32_t next_txid;
	uint32_t *owned;     /* [NDOMIDS] nodes owned per domain */
	uint8_t *introduced; /* [NDOMIDS / 8] bitmap */
	struct listener *listeners;
	struct conn *conns;
	struct conn *dead;
	unsigned int nconns;
	bool in_run;
};

/* One request being executed. */
struct req {
	struct conn *c;
	struct tx *tx;
	uint32_t type;
	const char *data; /* NUL-terminated at data[len] by the reader */
	uint32_t len;
};

/* ------------------------------------------------------------------ */
/* Node records and the hash table                                     */

static uint32_t hash_str(const char *str)
{
	uint32_t h = 2166136261u;

	for (; *str; str++) {
		h = (h ^ (uint8_t)*str) * 16777619u;
	}
	return h;
}

static void node_free(struct node *n)
{
	if (n == NULL) {
		return;
	}
	free(n->path);
	free(n->value);
	free(n->perms);
	free(n->children);
	free(n);
}

static struct node *node_new(const char *path)
{
	struct node *n = calloc(1, sizeof(*n));

	if (n == NULL) {
		return NULL;
	}
	n->path = strdup(path);
	if (n->path == NULL) {
		free(n);
		return NULL;
	}
	return n;
}

static void *memdup(const void *p, size_t len)
{
	void *q;

	if (len == 0) {
		return NULL;
	}
	q = malloc(len);
	if (q != NULL) {
		memcpy(q, p, len);
	}
	return q;
}

/* Deep copy of the data of a (non-tombstone) node. */
static struct node *node_dup(const struct node *src)
{
	struct node *n = node_new(src->path);

	if (n == NULL) {
		return NULL;
	}
	n->value = memdup(src->value, src->value_len);
	n->perms = memdup(src->perms, src->nperms * sizeof(*src->perms));
	n->children = memdup(src->children, src->children_len);
	if ((src->value_len && !n->value) || (src->nperms && !n->perms) ||
	    (src->children_len && !n->children)) {
		node_free(n);
		return NULL;
	}
	n->value_len = src->value_len;
	n->nperms = src->nperms;
	n->children_len = src->children_len;
	n->gen = src->gen;
	return n;
}

static void node_clear(struct node *n)
{
	free(n->value);
	free(n->perms);
	free(n->children);
	n->value = NULL;
	n->perms = NULL;
	n->children = NULL;
	n->value_len = n->nperms = n->children_len = 0;
}

static int table_init(struct table *t, size_t nb)
{
	t->b = calloc(nb, sizeof(struct node *));
	t->nb = nb;
	t->count = 0;
	return t->b ? 0 : -ENOMEM;
}

static void table_fini(struct table *t)
{
	for (size_t i = 0; i < t->nb; i++) {
		struct node *n = t->b[i], *next;

		for (; n; n = next) {
			next = n->hnext;
			node_free(n);
		}
	}
	free(t->b);
	t->b = NULL;
	t->nb = t->count = 0;
}

static struct node *table_find(const struct table *t, const char *path)
{
	struct node *n = t->b[hash_str(path) & (t->nb - 1)];

	for (; n; n = n->hnext) {
		if (strcmp(n->path, path) == 0) {
			return n;
		}
	}
	return NULL;
}

/* Never fails: a failed grow only makes the chains longer. */
static void table_insert(struct table *t, struct node *n)
{
	size_t i;

	if (t->count >= t->nb) {
		size_t nb = t->nb * 2;
		struct node **b = calloc(nb, sizeof(struct node *));

		if (b != NULL) {
			for (i = 0; i < t->nb; i++) {
				struct node *m = t->b[i], *next;

				for (; m; m = next) {
					size_t j = hash_str(m->path) & (nb - 1);

					next = m->hnext;
					m->hnext = b[j];
					b[j] = m;
				}
			}
			free(t->b);
			t->b = b;
			t->nb = nb;
		}
	}
	i = hash_str(n->path) & (t->nb - 1);
	n->hnext = t->b[i];
	t->b[i] = n;
	t->count++;
}

static void table_remove(struct table *t, struct node *n)
{
	struct node **pp = &t->b[hash_str(n->path) & (t->nb - 1)];

	for (; *pp; pp = &(*pp)->hnext) {
		if (*pp == n) {
			*pp = n->hnext;
			t->count--;
			return;
		}
	}
	assert(0 && "node not in table");
}

static bool children_has(const struct node *n, const char *name)
{
	for (uint32_t off = 0; off < n->children_len; off += strlen(n->children + off) + 1) {
		if (strcmp(n->children + off, name) == 0) {
			return true;
		}
	}
	return false;
}

static int children_add(struct node *n, const char *name)
{
	size_t len = strlen(name) + 1;
	char *c;

	if (children_has(n, name)) {
		return 0;
	}
	c = realloc(n->children, n->children_len + len);
	if (c == NULL) {
		return -ENOMEM;
	}
	memcpy(c + n->children_len, name, len);
	n->children = c;
	n->children_len += (uint32_t)len;
	return 0;
}

static void children_del(struct node *n, const char *name)
{
	for (uint32_t off = 0; off < n->children_len;) {
		size_t len = strlen(n->children + off) + 1;

		if (strcmp(n->children + off, name) == 0) {
			memmove(n->children + off, n->children + off + len,
				n->children_len - off - len);
			n->children_len -= (uint32_t)len;
			return;
		}
		off += (uint32_t)len;
	}
}

/* ------------------------------------------------------------------ */
/* Paths and permissions                                               */

static bool valid_chars(const char *p)
{
	static const char ok[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-/_@";

	return p[strspn(p, ok)] == '\0';
}

/*
 * The absolute form of a client's path into out (XENSTORE_ABS_PATH_MAX + 1
 * bytes), as C xenstored's canonicalize() + is_valid_nodename(). Relative
 * paths are below /local/domain/<domid>. @names only if allow_special.
 */
static int canonicalize(uint16_t domid, const char *in, char *out, bool allow_special,
			size_t *rel_len)
{
	size_t len = strlen(in);
	int n;

	if (rel_len != NULL) {
		*rel_len = 0;
	}
	if (in[0] == '@') {
		if (!allow_special || len > XENSTORE_REL_PATH_MAX || !valid_chars(in + 1) ||
		    strchr(in, '/') != NULL) {
			return -EINVAL;
		}
		memcpy(out, in, len + 1);
		return 0;
	}
	if (in[0] == '/') {
		if (len > XENSTORE_ABS_PATH_MAX) {
			return -EINVAL;
		}
		memcpy(out, in, len + 1);
	} else {
		if (len > XENSTORE_REL_PATH_MAX) {
			return -EINVAL;
		}
		n = snprintf(out, XENSTORE_ABS_PATH_MAX + 1, "/local/domain/%u/%s", domid, in);
		if (n < 0 || n > XENSTORE_ABS_PATH_MAX) {
			return -EINVAL;
		}
		if (rel_len != NULL) {
			*rel_len = (size_t)n - len - 1;
		}
		len = (size_t)n;
	}
	if (len > 1 && out[len - 1] == '/') {
		return -EINVAL;
	}
	if (strstr(out, "//") != NULL || !valid_chars(out)) {
		return -EINVAL;
	}
	return 0;
}

/* Parent of an absolute path other than "/", into out. */
static void parent_of(const char *path, char *out)
{
	const char *slash = strrchr(path, '/');
	size_t len = (size_t)(slash - path);

	if (len == 0) {
		len = 1;
	}
	memcpy(out, path, len);
	out[len] = '\0';
}

static const char *basename_of(const char *path)
{
	return strrchr(path, '/') + 1;
}

static char *child_path(const char *parent, const char *name)
{
	size_t pl = strlen(parent), nl = strlen(name);
	char *p = malloc(pl + nl + 2);

	if (p == NULL) {
		return NULL;
	}
	snprintf(p, pl + nl + 2, "%s%s%s", parent, pl > 1 ? "/" : "", name);
	return p;
}

/* As C xenstored perm_for_conn(): dom0 and the owner may do anything. */
static unsigned int perm_for(uint16_t domid, const struct perm *p, uint32_t n)
{
	if (n == 0) {
		return domid == 0 ? PERM_READ | PERM_WRITE | PERM_OWNER : 0;
	}
	if (domid == 0 || p[0].domid == domid) {
		return PERM_READ | PERM_WRITE | PERM_OWNER;
	}
	for (uint32_t i = 1; i < n; i++) {
		if (p[i].domid == domid) {
			return p[i].perm;
		}
	}
	return p[0].perm;
}

static int perm_parse(const char *str, struct perm *p)
{
	unsigned long v;
	char *end;

	switch (str[0]) {
	case 'n':
		p->perm = 0;
		break;
	case 'r':
		p->perm = PERM_READ;
		break;
	case 'w':
		p->perm = PERM_WRITE;
		break;
	case 'b':
		p->perm = PERM_READ | PERM_WRITE;
		break;
	default:
		return -EINVAL;
	}
	if (str[1] < '0' || str[1] > '9') {
		return -EINVAL;
	}
	errno = 0;
	v = strtoul(str + 1, &end, 10);
	if (errno || *end != '\0' || v >= NDOMIDS) {
		return -EINVAL;
	}
	p->domid = (uint16_t)v;
	return 0;
}

static int parse_domid(const char *str, uint16_t *out)
{
	unsigned long v;
	char *end;

	if (str[0] < '0' || str[0] > '9') {
		return -EINVAL;
	}
	errno = 0;
	v = strtoul(str, &end, 10);
	if (errno || *end != '\0' || v >= NDOMIDS) {
		return -EINVAL;
	}
	*out = (uint16_t)v;
	return 0;
}

/* ------------------------------------------------------------------ */
/* Output and connections                                              */

static void update_events(struct conn *c)
{
	uint32_t want =
		(c->out_bytes > VD_XS_OUT_SOFT_BYTES ? 0 : EPOLLIN) | (c->out_head ? EPOLLOUT : 0);
	struct epoll_event ev = { .events = want, .data.ptr = c };

	if (c->dead || want == c->ep_events) {
		return;
	}
	if (epoll_ctl(c->s->epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0) {
		c->ep_events = want;
	}
}

static void watch_free(struct watch *w)
{
	free(w->path);
	free(w->token);
	free(w);
}

static void events_free(struct event *e)
{
	while (e != NULL) {
		struct event *next = e->next;

		free(e->perms);
		free(e->old);
		free(e);
		e = next;
	}
}

static void tx_free(struct tx *tx)
{
	table_fini(&tx->nodes);
	events_free(tx->ev_head);
	free(tx);
}

static void conn_drop_state(struct conn *c)
{
	while (c->watches != NULL) {
		struct watch *w = c->watches;

		c->watches = w->next;
		watch_free(w);
	}
	c->nwatches = 0;
	while (c->txs != NULL) {
		struct tx *tx = c->txs;

		c->txs = tx->next;
		tx_free(tx);
	}
	c->ntxs = 0;
}

/*
 * Disconnect now; the struct stays (dead) until reap() so that pointers
 * held by the current epoll batch or by callers up the stack stay valid.
 */
static void conn_kill(struct conn *c)
{
	struct vd_xs_server *s = c->s;

	if (c->dead) {
		return;
	}
	c->dead = true;
	epoll_ctl(s->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
	while (c->out_head != NULL) {
		struct outbuf *o = c->out_head;

		c->out_head = o->next;
		free(o);
	}
	c->out_tail = NULL;
	c->out_bytes = 0;
	conn_drop_state(c);
	if (c->prev) {
		c->prev->next = c->next;
	} else {
		s->conns = c->next;
	}
	if (c->next) {
		c->next->prev = c->prev;
	}
	c->prev = NULL;
	c->next = s->dead;
	s->dead = c;
	s->nconns--;
}

static void reap(struct vd_xs_server *s)
{
	while (s->dead != NULL) {
		struct conn *c = s->dead;

		s->dead = c->next;
		free(c);
	}
}

static void conn_flush(struct conn *c)
{
	while (!c->dead && c->out_head != NULL) {
		struct outbuf *o = c->out_head;
		ssize_t n =
			send(c->fd, o->data + o->off, o->len - o->off, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0) {
			if (errno == EINTR) {
				continue;
			}
			if (errno != EAGAIN && errno != EWOULDBLOCK) {
				conn_kill(c);
			}
			break;
		}
		o->off += (size_t)n;
		c->out_bytes -= (size_t)n;
		if (o->off == o->len) {
			c->out_head = o->next;
			if (c->out_head == NULL) {
				c->out_tail = NULL;
			}
			free(o);
		}
	}
	update_events(c);
}

/*
 * Queue one message (a then b as payload). A reader that lets its queue
 * pass VD_XS_OUT_MAX_BYTES is disconnected rather than buffered for.
 */
static void send_msg(struct conn *c, uint32_t type, uint32_t req_id, uint32_t tx_id, const void *a,
		     size_t alen, const void *b, size_t blen)
{
	struct xsd_sockmsg h;
	struct outbuf *o;
	size_t len = alen + blen;

	if (c->dead) {
		return;
	}
	assert(len <= XENSTORE_PAYLOAD_MAX);
	if (c->out_bytes + HDR_BYTES + len > VD_XS_OUT_MAX_BYTES) {
		vd_log_ratelimited(VD_LOG_WARN, "xenstored: d%u reads too slowly, disconnecting",
				   c->domid);
		conn_kill(c);
		return;
	}
	o = malloc(sizeof(*o) + HDR_BYTES + len);
	if (o == NULL) {
		conn_kill(c);
		return;
	}
	h.type = type;
	h.req_id = req_id;
	h.tx_id = tx_id;
	h.len = (uint32_t)len;
	memcpy(o->data, &h, HDR_BYTES);
	if (alen) {
		memcpy(o->data + HDR_BYTES, a, alen);
	}
	if (blen) {
		memcpy(o->data + HDR_BYTES + alen, b, blen);
	}
	o->len = HDR_BYTES + len;
	o->off = 0;
	o->next = NULL;
	if (c->out_tail) {
		c->out_tail->next = o;
	} else {
		c->out_head = o;
	}
	c->out_tail = o;
	c->out_bytes += o->len;
	if (!(c->ep_events & EPOLLOUT)) {
		update_events(c);
	}
}

static void reply(struct req *r, const void *data, size_t len)
{
	send_msg(r->c, r->type, r->c->hdr.req_id, r->c->hdr.tx_id, data, len, NULL, 0);
}

static void reply_str(struct req *r, const char *str)
{
	reply(r, str, strlen(str) + 1);
}

static void reply_err(struct req *r, int err)
{
	const char *name = "EINVAL";

	if (err < 0) {
		err = -err;
	}
	for (size_t i = 0; i < VD_ARRAY_SIZE(xsd_errors); i++) {
		if (xsd_errors[i].errnum == err) {
			name = xsd_errors[i].errstring;
			break;
		}
	}
	send_msg(r->c, XS_ERROR, r->c->hdr.req_id, r->c->hdr.tx_id, name, strlen(name) + 1, NULL,
		 0);
}

/* ------------------------------------------------------------------ */
/* Watches                                                             */

static void send_event(struct conn *c, const struct watch *w, const char *path)
{
	size_t plen, tlen = strlen(w->token) + 1;

	if (w->rel_len && strncmp(path, w->path, w->rel_len) == 0) {
		path += w->rel_len;
		if (*path == '/') {
			path++;
		}
	}
	plen = strlen(path) + 1;
	if (plen + tlen > XENSTORE_PAYLOAD_MAX) {
		return;
	}
	send_msg(c, XS_WATCH_EVENT, 0, 0, path, plen, w->token, tlen);
}

/* Is child the node parent or below it? */
static bool is_child(const char *child, const char *parent)
{
	size_t len = strlen(parent);

	if (strcmp(parent, "/") == 0) {
		return child[0] == '/';
	}
	return strncmp(child, parent, len) == 0 && (child[len] == '/' || child[len] == '\0');
}

/*
 * As C xenstored watch_permitted(): a domain sees events on nodes it may
 * read (before or after the change) or whose parent it may read.
 */
static bool watch_permitted(struct vd_xs_server *s, uint16_t domid, const struct event *e)
{
	char parent[XENSTORE_ABS_PATH_MAX + 1];
	const struct node *p;

	if (e->path[0] == '@' || domid == 0) {
		return true;
	}
	if (perm_for(domid, e->perms, e->nperms) & PERM_READ) {
		return true;
	}
	if (e->old && (perm_for(domid, e->old, e->nold) & PERM_READ)) {
		return true;
	}
	if (strcmp(e->path, "/") == 0) {
		return false;
	}
	parent_of(e->path, parent);
	p = table_find(&s->tree, parent);
	return p && (perm_for(domid, p->perms, p->nperms) & PERM_READ);
}

static void deliver(struct vd_xs_server *s, const struct event *e)
{
	struct conn *c, *next;

	for (c = s->conns; c; c = next) {
		next = c->next;
		if (!watch_permitted(s, c->domid, e)) {
			continue;
		}
		for (struct watch *w = c->watches; w; w = w->next) {
			bool match = e->exact ? strcmp(e->path, w->path) == 0
					      : is_child(e->path, w->path);

			if (match) {
				send_event(c, w, e->path);
				if (c->dead) {
					break; /* its watches are gone */
				}
			}
		}
	}
}

static struct event *event_new(const char *path, bool exact, const struct perm *p, uint32_t np,
			       const struct perm *old, uint32_t nold)
{
	size_t len = strlen(path) + 1;
	struct event *e = calloc(1, sizeof(*e) + len);

	if (e == NULL) {
		return NULL;
	}
	memcpy(e->buf, path, len);
	e->path = e->buf;
	e->exact = exact;
	e->perms = memdup(p, np * sizeof(*p));
	e->nperms = e->perms ? np : 0;
	e->old = memdup(old, nold * sizeof(*old));
	e->nold = e->old ? nold : 0;
	return e;
}

/*
 * exact: only watches on path itself (children of a removed subtree);
 * else watches on path and its ancestors. Queued while in a transaction.
 */
static void fire(struct vd_xs_server *s, struct tx *tx, const char *path, bool exact,
		 const struct perm *p, uint32_t np, const struct perm *old, uint32_t nold)
{
	struct event *e;

	if (tx == NULL) {
		struct event ev = { .exact = exact,
				    .perms = (struct perm *)p,
				    .nperms = np,
				    .old = (struct perm *)old,
				    .nold = nold,
				    .path = path };

		deliver(s, &ev);
		return;
	}
	if (tx->nevents >= 2 * VD_XS_MAX_TX_NODES) {
		return;
	}
	e = event_new(path, exact, p, np, old, nold);
	if (e == NULL) {
		return;
	}
	if (tx->ev_tail) {
		tx->ev_tail->next = e;
	} else {
		tx->ev_head = e;
	}
	tx->ev_tail = e;
	tx->nevents++;
}

/* ------------------------------------------------------------------ */
/* The view of the tree a request sees: the tree, or a transaction     */

static void owned_add(struct vd_xs_server *s, const struct node *n, int delta)
{
	if (n->nperms) {
		s->owned[n->perms[0].domid] += (uint32_t)delta;
	}
}

static int view_get(struct vd_xs_server *s, struct tx *tx, const char *path, struct node **out)
{
	struct node *m = table_find(&s->tree, path), *t;

	if (tx == NULL) {
		*out = m;
		return 0;
	}
	t = table_find(&tx->nodes, path);
	if (t == NULL) {
		if (tx->nodes.count >= VD_XS_MAX_TX_NODES) {
			return -ENOSPC;
		}
		t = m ? node_dup(m) : node_new(path);
		if (t == NULL) {
			return -ENOMEM;
		}
		t->orig_gen = m ? m->gen : 0;
		t->deleted = m == NULL;
		table_insert(&tx->nodes, t);
	}
	*out = t->deleted ? NULL : t;
	return 0;
}

static void touch(struct vd_xs_server *s, struct tx *tx, struct node *n)
{
	n->gen = ++s->gen;
	if (tx) {
		n->modified = true;
	}
}

/*
 * A node the request may access with perm, or -ENOENT, or -EACCES also
 * when it is absent but its nearest existing ancestor is unreadable (as
 * C xenstored's errno_from_parents(): do not leak existence).
 */
static int lookup(struct vd_xs_server *s, struct tx *tx, uint16_t domid, const char *path,
		  unsigned int perm, struct node **out)
{
	char anc[XENSTORE_ABS_PATH_MAX + 1];
	struct node *n;
	int rc = view_get(s, tx, path, &n);

	*out = NULL;
	if (rc < 0) {
		return rc;
	}
	if (n != NULL) {
		if ((perm_for(domid, n->perms, n->nperms) & perm) != perm) {
			return -EACCES;
		}
		*out = n;
		return 0;
	}
	snprintf(anc, sizeof(anc), "%s", path);
	while (strcmp(anc, "/") != 0) {
		char up[XENSTORE_ABS_PATH_MAX + 1];

		parent_of(anc, up);
		memcpy(anc, up, strlen(up) + 1);
		rc = view_get(s, tx, anc, &n);
		if (rc < 0) {
			return rc;
		}
		if (n != NULL) {
			return (perm_for(domid, n->perms, n->nperms) & PERM_READ) ? -ENOENT
										  : -EACCES;
		}
	}
	return -ENOENT;
}

/*
 * Create path and its missing ancestors, as C xenstored create_node():
 * the nearest existing ancestor must be writable; new nodes inherit their
 * parent's ACL, and a guest owns what it creates.
 */
static int create_path(struct vd_xs_server *s, struct tx *tx, uint16_t domid, const char *path,
		       struct node **out)
{
	char anc[XENSTORE_ABS_PATH_MAX + 1];
	struct node *n, *parent = NULL;
	unsigned int missing = 0;
	size_t len;
	int rc;

	/* Walk up to the nearest existing ancestor. */
	snprintf(anc, sizeof(anc), "%s", path);
	for (;;) {
		char up[XENSTORE_ABS_PATH_MAX + 1];

		if (strcmp(anc, "/") == 0) {
			return -ENOENT; /* the root always exists */
		}
		missing++;
		parent_of(anc, up);
		memcpy(anc, up, strlen(up) + 1);
		rc = view_get(s, tx, anc, &parent);
		if (rc < 0) {
			return rc;
		}
		if (parent != NULL) {
			break;
		}
	}
	if (!(perm_for(domid, parent->perms, parent->nperms) & PERM_WRITE)) {
		return -EACCES;
	}
	if (domid != 0 && s->owned[domid] + (tx ? tx->created : 0) + missing > VD_XS_NODE_QUOTA) {
		return -ENOSPC;
	}

	/* Create top down: each new node below the previous one. */
	len = strlen(anc);
	while (missing-- > 0) {
		const char *slash = strchr(path + len + 1, '/');
		char cur[XENSTORE_ABS_PATH_MAX + 1];
		uint32_t j = 1;

		len = slash ? (size_t)(slash - path) : strlen(path);
		memcpy(cur, path, len);
		cur[len] = '\0';
		if (tx) {
			rc = view_get(s, tx, cur, &n); /* the tombstone left by the walk */
			if (rc < 0) {
				return rc;
			}
			assert(n == NULL);
			n = table_find(&tx->nodes, cur);
			assert(n != NULL && n->deleted);
			n->deleted = false;
			tx->created++;
		} else {
			n = node_new(cur);
			if (n == NULL) {
				return -ENOMEM;
			}
		}
		n->perms = memdup(parent->perms, parent->nperms * sizeof(*parent->perms));
		if (n->perms == NULL) {
			if (tx) {
				n->deleted = true;
			} else {
				node_free(n);
			}
			return -ENOMEM;
		}
		n->nperms = parent->nperms;
		if (domid != 0 && n->perms[0].domid != domid) {
			/* A guest owns what it creates; drop its now redundant ACL entry. */
			n->perms[0].domid = domid;
			for (uint32_t i = 1; i < n->nperms; i++) {
				if (n->perms[i].domid != domid) {
					n->perms[j++] = n->perms[i];
				}
			}
			n->nperms = j;
		}
		rc = children_add(parent, basename_of(cur));
		if (rc < 0) {
			if (tx) {
				node_clear(n);
				n->deleted = true;
			} else {
				node_free(n);
			}
			return rc;
		}
		touch(s, tx, parent);
		touch(s, tx, n);
		if (!tx) {
			table_insert(&s->tree, n);
			owned_add(s, n, 1);
		}
		parent = n;
	}
	*out = parent;
	return 0;
}

static void view_unlink(struct vd_xs_server *s, struct tx *tx, struct node *n)
{
	if (tx) {
		node_clear(n);
		n->deleted = true;
		n->modified = true;
		return;
	}
	owned_add(s, n, -1);
	table_remove(&s->tree, n);
	node_free(n);
}

/* Remove n and everything below it, children first, firing as C xenstored. */
static int rm_tree(struct vd_xs_server *s, struct tx *tx, struct node *n, bool root)
{
	for (uint32_t off = 0; off < n->children_len; off += strlen(n->children + off) + 1) {
		char *cp = child_path(n->path, n->children + off);
		struct node *child;
		int rc;

		if (cp == NULL) {
			return -ENOMEM;
		}
		rc = view_get(s, tx, cp, &child);
		free(cp);
		if (rc < 0) {
			return rc;
		}
		if (child != NULL) {
			rc = rm_tree(s, tx, child, false);
			if (rc < 0) {
				return rc;
			}
		}
	}
	fire(s, tx, n->path, !root, n->perms, n->nperms, NULL, 0);
	view_unlink(s, tx, n);
	return 0;
}

static int rm_path(struct vd_xs_server *s, struct tx *tx, struct node *n)
{
	char parent_path[XENSTORE_ABS_PATH_MAX + 1];
	char name[XENSTORE_ABS_PATH_MAX + 1];
	struct node *parent;
	int rc;

	parent_of(n->path, parent_path);
	snprintf(name, sizeof(name), "%s", basename_of(n->path));
	rc = rm_tree(s, tx, n, true);
	if (rc < 0) {
		return rc;
	}
	rc = view_get(s, tx, parent_path, &parent);
	if (rc < 0) {
		return rc;
	}
	if (parent != NULL) {
		children_del(parent, name);
		touch(s, tx, parent);
	}
	return 0;
}

static int set_value(struct vd_xs_server *s, struct tx *tx, struct node *n, const void *val,
		     size_t len)
{
	uint8_t *v = memdup(val, len);

	if (len && v == NULL) {
		return -ENOMEM;
	}
	free(n->value);
	n->value = v;
	n->value_len = (uint32_t)len;
	touch(s, tx, n);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Transactions                                                        */

static struct tx *tx_find(struct conn *c, uint32_t id)
{
	for (struct tx *tx = c->txs; tx; tx = tx->next) {
		if (tx->id == id) {
			return tx;
		}
	}
	return NULL;
}

static void tx_unlink(struct conn *c, struct tx *tx)
{
	for (struct tx **pp = &c->txs; *pp; pp = &(*pp)->next) {
		if (*pp == tx) {
			*pp = tx->next;
			c->ntxs--;
			return;
		}
	}
}

static int tx_commit(struct vd_xs_server *s, struct tx *tx)
{
	struct table *t = &tx->nodes;
	size_t i;

	for (i = 0; i < t->nb; i++) {
		for (struct node *e = t->b[i]; e; e = e->hnext) {
			struct node *m = table_find(&s->tree, e->path);

			if ((m ? m->gen : 0) != e->orig_gen) {
				return -EAGAIN;
			}
		}
	}
	for (i = 0; i < t->nb; i++) {
		for (struct node *e = t->b[i]; e; e = e->hnext) {
			struct node *m;

			if (!e->modified) {
				continue;
			}
			m = table_find(&s->tree, e->path);
			if (e->deleted) {
				if (m != NULL) {
					owned_add(s, m, -1);
					table_remove(&s->tree, m);
					node_free(m);
				}
				continue;
			}
			if (m == NULL) {
				m = node_new(e->path);
				if (m == NULL) {
					return -ENOMEM;
				}
				table_insert(&s->tree, m);
			} else {
				owned_add(s, m, -1);
			}
			/* Move the data: the transaction is freed after commit. */
			node_clear(m);
			m->value = e->value;
			m->value_len = e->value_len;
			m->perms = e->perms;
			m->nperms = e->nperms;
			m->children = e->children;
			m->children_len = e->children_len;
			e->value = NULL;
			e->perms = NULL;
			e->children = NULL;
			e->value_len = e->nperms = e->children_len = 0;
			m->gen = ++s->gen;
			owned_add(s, m, 1);
		}
	}
	for (struct event *e = tx->ev_head; e; e = e->next) {
		deliver(s, e);
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Requests                                                            */

/* Split the payload into NUL-terminated strings; the last must end it. */
static int get_strings(const struct req *r, const char **vec, unsigned int max)
{
	unsigned int n = 0;
	uint32_t off = 0;

	if (r->len == 0 || r->data[r->len - 1] != '\0') {
		return -EINVAL;
	}
	while (off < r->len) {
		if (n == max) {
			return -EINVAL;
		}
		vec[n++] = r->data + off;
		off += (uint32_t)strlen(r->data + off) + 1;
	}
	return (int)n;
}

static int one_arg(const struct req *r, const char **arg)
{
	return get_strings(r, arg, 1) == 1 ? 0 : -EINVAL;
}

static int path_arg(const struct req *r, char *path)
{
	const char *arg;

	if (one_arg(r, &arg) < 0) {
		return -EINVAL;
	}
	return canonicalize(r->c->domid, arg, path, false, NULL);
}

static int op_read(struct req *r, char *path)
{
	struct node *n;
	int rc = path_arg(r, path);

	if (rc == 0) {
		rc = lookup(r->c->s, r->tx, r->c->domid, path, PERM_READ, &n);
	}
	if (rc < 0) {
		return rc;
	}
	reply(r, n->value, n->value_len);
	return 0;
}

static int op_get_perms(struct req *r, char *path)
{
	char buf[VD_XS_MAX_PERMS * 8];
	size_t len = 0;
	struct node *n;
	int rc = path_arg(r, path);

	if (rc == 0) {
		rc = lookup(r->c->s, r->tx, r->c->domid, path, PERM_READ, &n);
	}
	if (rc < 0) {
		return rc;
	}
	for (uint32_t i = 0; i < n->nperms && i < VD_XS_MAX_PERMS; i++) {
		static const char letters[] = "nrwb";

		len += (size_t)snprintf(buf + len, sizeof(buf) - len, "%c%u",
					letters[n->perms[i].perm & 3], n->perms[i].domid) +
		       1;
	}
	reply(r, buf, len);
	return 0;
}

static int op_directory(struct req *r, char *path)
{
	struct node *n;
	int rc = path_arg(r, path);

	if (rc == 0) {
		rc = lookup(r->c->s, r->tx, r->c->domid, path, PERM_READ, &n);
	}
	if (rc < 0) {
		return rc;
	}
	if (n->children_len > XENSTORE_PAYLOAD_MAX) {
		return -E2BIG;
	}
	reply(r, n->children, n->children_len);
	return 0;
}

/* "path\0offset\0" -> "gen\0" + the children that fit + "\0" at the end. */
static int op_directory_part(struct req *r, char *path)
{
	char buf[XENSTORE_PAYLOAD_MAX];
	const char *vec[2];
	unsigned long off;
	size_t genlen, len = 0;
	struct node *n;
	char *end;
	int rc;

	if (get_strings(r, vec, 2) != 2 || vec[1][0] < '0' || vec[1][0] > '9') {
		return -EINVAL;
	}
	errno = 0;
	off = strtoul(vec[1], &end, 10);
	if (errno || *end != '\0') {
		return -EINVAL;
	}
	rc = canonicalize(r->c->domid, vec[0], path, false, NULL);
	if (rc == 0) {
		rc = lookup(r->c->s, r->tx, r->c->domid, path, PERM_READ, &n);
	}
	if (rc < 0) {
		return rc;
	}
	genlen = (size_t)snprintf(buf, sizeof(buf), "%" PRIu64, n->gen) + 1;
	if (off >= n->children_len) {
		buf[genlen] = '\0';
		reply(r, buf, genlen + 1);
		return 0;
	}
	if (off > 0 && n->children[off - 1] != '\0') {
		return -EINVAL; /* not at the start of a name */
	}
	while (off + len < n->children_len) {
		size_t l = strlen(n->children + off + len) + 1;

		if (genlen + len + l + 1 > sizeof(buf)) {
			break;
		}
		len += l;
	}
	memcpy(buf + genlen, n->children + off, len);
	if (off + len == n->children_len) {
		buf[genlen + len++] = '\0';
	}
	reply(r, buf, genlen + len);
	return 0;
}

static int op_write(struct req *r, char *path)
{
	struct vd_xs_server *s = r->c->s;
	const char *val;
	size_t plen;
	struct node *n;
	int rc;

	plen = strnlen(r->data, r->len);
	if (plen == r->len) {
		return -EINVAL;
	}
	val = r->data + plen + 1;
	rc = canonicalize(r->c->domid, r->data, path, false, NULL);
	if (rc < 0) {
		return rc;
	}
	rc = lookup(s, r->tx, r->c->domid, path, PERM_WRITE, &n);
	if (rc == -ENOENT) {
		rc = create_path(s, r->tx, r->c->domid, path, &n);
	}
	if (rc == 0) {
		rc = set_value(s, r->tx, n, val, r->len - plen - 1);
	}
	if (rc < 0) {
		return rc;
	}
	fire(s, r->tx, path, false, n->perms, n->nperms, NULL, 0);
	reply_str(r, "OK");
	return 0;
}

static int op_mkdir(struct req *r, char *path)
{
	struct vd_xs_server *s = r->c->s;
	struct node *n;
	int rc = path_arg(r, path);

	if (rc == 0) {
		rc = lookup(s, r->tx, r->c->domid, path, PERM_WRITE, &n);
	}
	if (rc == -ENOENT) {
		rc = create_path(s, r->tx, r->c->domid, path, &n);
		if (rc == 0) {
			fire(s, r->tx, path, false, n->perms, n->nperms, NULL, 0);
		}
	}
	if (rc < 0) {
		return rc;
	}
	reply_str(r, "OK");
	return 0;
}

static int op_rm(struct req *r, char *path)
{
	struct vd_xs_server *s = r->c->s;
	struct node *n = NULL;
	int rc = path_arg(r, path);

	if (rc == 0) {
		rc = lookup(s, r->tx, r->c->domid, path, PERM_WRITE, &n);
	}
	if (rc == -ENOENT) {
		char parent[XENSTORE_ABS_PATH_MAX + 1];
		struct node *p;

		/* Removing an absent node is fine if its parent exists. */
		parent_of(path, parent);
		rc = view_get(s, r->tx, parent, &p);
		if (rc < 0) {
			return rc;
		}
		if (p == NULL) {
			return -ENOENT;
		}
		reply_str(r, "OK");
		return 0;
	}
	if (rc < 0) {
		return rc;
	}
	if (strcmp(path, "/") == 0) {
		return -EINVAL;
	}
	if (n == NULL) {
		return -ENOENT; /* lookup() returns 0 only with a node; say so to the analyzer */
	}
	rc = rm_path(s, r->tx, n);
	if (rc < 0) {
		return rc;
	}
	reply_str(r, "OK");
	return 0;
}

static int op_set_perms(struct req *r, char *path)
{
	struct vd_xs_server *s = r->c->s;
	const char *vec[VD_XS_MAX_PERMS + 2];
	struct perm perms[VD_XS_MAX_PERMS + 1], *np, *old;
	uint32_t nold;
	struct node *n;
	int nargs, rc;

	nargs = get_strings(r, vec, VD_ARRAY_SIZE(vec));
	if (nargs == -EINVAL && r->len > 0 && r->data[r->len - 1] == '\0') {
		return -ENOSPC; /* too many entries */
	}
	if (nargs < 2) {
		return -EINVAL;
	}
	if (nargs - 1 > VD_XS_MAX_PERMS) {
		return -ENOSPC;
	}
	for (int i = 1; i < nargs; i++) {
		if (perm_parse(vec[i], &perms[i - 1]) < 0) {
			return -EINVAL;
		}
	}
	rc = canonicalize(r->c->domid, vec[0], path, false, NULL);
	if (rc == 0) {
		rc = lookup(s, r->tx, r->c->domid, path, PERM_WRITE | PERM_OWNER, &n);
	}
	if (rc < 0) {
		return rc;
	}
	if (r->c->domid != 0 && perms[0].domid != n->perms[0].domid) {
		return -EPERM; /* guests may not give nodes away */
	}
	np = memdup(perms, (size_t)(nargs - 1) * sizeof(*np));
	if (np == NULL) {
		return -ENOMEM;
	}
	if (!r->tx) {
		owned_add(s, n, -1);
	}
	old = n->perms;
	nold = n->nperms;
	n->perms = np;
	n->nperms = (uint32_t)(nargs - 1);
	if (!r->tx) {
		owned_add(s, n, 1);
	}
	touch(s, r->tx, n);
	fire(s, r->tx, path, false, n->perms, n->nperms, old, nold);
	free(old);
	reply_str(r, "OK");
	return 0;
}

static int op_watch(struct req *r, char *path)
{
	struct conn *c = r->c;
	const char *vec[2];
	struct watch *w;
	size_t rel_len;
	int rc;

	if (get_strings(r, vec, 2) != 2) {
		return -EINVAL;
	}
	rc = canonicalize(c->domid, vec[0], path, true, &rel_len);
	if (rc < 0) {
		return rc;
	}
	for (w = c->watches; w; w = w->next) {
		if (strcmp(w->path, path) == 0 && strcmp(w->token, vec[1]) == 0) {
			return -EEXIST;
		}
	}
	if (c->nwatches >= VD_XS_MAX_WATCHES) {
		return -E2BIG;
	}
	w = calloc(1, sizeof(*w));
	if (w == NULL) {
		return -ENOMEM;
	}
	w->path = strdup(path);
	w->token = strdup(vec[1]);
	if (w->path == NULL || w->token == NULL) {
		watch_free(w);
		return -ENOMEM;
	}
	w->rel_len = rel_len;
	w->next = c->watches;
	c->watches = w;
	c->nwatches++;
	reply_str(r, "OK");
	/* The initial event, which libxenstore users rely on. */
	send_event(c, w, path);
	return 0;
}

static int op_unwatch(struct req *r, char *path)
{
	struct conn *c = r->c;
	const char *vec[2];
	int rc;

	if (get_strings(r, vec, 2) != 2) {
		return -EINVAL;
	}
	rc = canonicalize(c->domid, vec[0], path, true, NULL);
	if (rc < 0) {
		return rc;
	}
	for (struct watch **pp = &c->watches; *pp; pp = &(*pp)->next) {
		struct watch *w = *pp;

		if (strcmp(w->path, path) == 0 && strcmp(w->token, vec[1]) == 0) {
			*pp = w->next;
			watch_free(w);
			c->nwatches--;
			reply_str(r, "OK");
			return 0;
		}
	}
	return -ENOENT;
}

static int op_transaction_start(struct req *r)
{
	struct vd_xs_server *s = r->c->s;
	struct conn *c = r->c;
	char buf[16];
	struct tx *tx;
	int rc;

	if (c->hdr.tx_id != 0) {
		return -EBUSY;
	}
	if (c->ntxs >= VD_XS_MAX_TRANSACTIONS) {
		return -ENOSPC;
	}
	tx = calloc(1, sizeof(*tx));
	if (tx == NULL) {
		return -ENOMEM;
	}
	rc = table_init(&tx->nodes, 64);
	if (rc < 0) {
		free(tx);
		return rc;
	}
	do {
		tx->id = ++s->next_txid;
	} while (tx->id == 0 || tx_find(c, tx->id) != NULL);
	tx->next = c->txs;
	c->txs = tx;
	c->ntxs++;
	snprintf(buf, sizeof(buf), "%u", tx->id);
	reply_str(r, buf);
	return 0;
}

static int op_transaction_end(struct req *r)
{
	struct conn *c = r->c;
	struct tx *tx = r->tx;
	const char *arg;
	int rc = 0;

	if (tx == NULL) {
		return -ENOENT;
	}
	if (one_arg(r, &arg) < 0 || (strcmp(arg, "T") != 0 && strcmp(arg, "F") != 0)) {
		return -EINVAL;
	}
	tx_unlink(c, tx);
	if (arg[0] == 'T') {
		rc = tx_commit(c->s, tx);
	}
	tx_free(tx);
	if (rc < 0) {
		return rc;
	}
	reply_str(r, "OK");
	return 0;
}

static int domid_arg(const struct req *r, uint16_t *domid)
{
	const char *vec[4];
	int n = get_strings(r, vec, VD_ARRAY_SIZE(vec));

	if (n < 1) {
		return -EINVAL;
	}
	return parse_domid(vec[0], domid);
}

static int op_domain(struct req *r)
{
	struct vd_xs_server *s = r->c->s;
	char buf[32];
	uint16_t domid;
	int rc;

	if (r->type != XS_GET_DOMAIN_PATH && r->c->domid != 0) {
		return -EACCES;
	}
	rc = domid_arg(r, &domid);
	if (rc < 0) {
		return rc;
	}
	switch (r->type) {
	case XS_GET_DOMAIN_PATH:
		snprintf(buf, sizeof(buf), "/local/domain/%u", domid);
		reply_str(r, buf);
		return 0;
	case XS_IS_DOMAIN_INTRODUCED:
		reply_str(r, (s->introduced[domid / 8] & (1u << (domid % 8))) ? "T" : "F");
		return 0;
	case XS_INTRODUCE:
		rc = vd_xs_server_introduce_domain(s, domid);
		if (rc < 0 && rc != -EEXIST) {
			return rc;
		}
		break;
	case XS_RELEASE:
		if (domid == 0) {
			return -EINVAL;
		}
		if (!(s->introduced[domid / 8] & (1u << (domid % 8)))) {
			return -ENOENT;
		}
		vd_xs_server_release_domain(s, domid);
		break;
	default: /* XS_RESUME */
		break;
	}
	reply_str(r, "OK");
	return 0;
}

static void handle(struct conn *c)
{
	char path[XENSTORE_ABS_PATH_MAX + 1];
	struct req r = { .c = c,
			 .type = c->hdr.type,
			 .data = (const char *)c->in + HDR_BYTES,
			 .len = c->hdr.len };
	int rc;

	switch (r.type) {
	case XS_READ:
	case XS_WRITE:
	case XS_MKDIR:
	case XS_RM:
	case XS_DIRECTORY:
	case XS_DIRECTORY_PART:
	case XS_GET_PERMS:
	case XS_SET_PERMS:
	case XS_TRANSACTION_END:
		if (c->hdr.tx_id != 0) {
			r.tx = tx_find(c, c->hdr.tx_id);
			if (r.tx == NULL) {
				reply_err(&r, ENOENT);
				return;
			}
		}
		break;
	default:
		break;
	}

	switch (r.type) {
	case XS_READ:
		rc = op_read(&r, path);
		break;
	case XS_WRITE:
		rc = op_write(&r, path);
		break;
	case XS_MKDIR:
		rc = op_mkdir(&r, path);
		break;
	case XS_RM:
		rc = op_rm(&r, path);
		break;
	case XS_DIRECTORY:
		rc = op_directory(&r, path);
		break;
	case XS_DIRECTORY_PART:
		rc = op_directory_part(&r, path);
		break;
	case XS_GET_PERMS:
		rc = op_get_perms(&r, path);
		break;
	case XS_SET_PERMS:
		rc = op_set_perms(&r, path);
		break;
	case XS_WATCH:
		rc = op_watch(&r, path);
		break;
	case XS_UNWATCH:
		rc = op_unwatch(&r, path);
		break;
	case XS_TRANSACTION_START:
		rc = op_transaction_start(&r);
		break;
	case XS_TRANSACTION_END:
		rc = op_transaction_end(&r);
		break;
	case XS_GET_DOMAIN_PATH:
	case XS_IS_DOMAIN_INTRODUCED:
	case XS_INTRODUCE:
	case XS_RELEASE:
	case XS_RESUME:
		rc = op_domain(&r);
		break;
	case XS_RESET_WATCHES:
		conn_drop_state(c);
		reply_str(&r, "OK");
		rc = 0;
		break;
	case XS_CONTROL:
		rc = c->domid == 0 ? -ENOSYS : -EACCES;
		break;
	case XS_WATCH_EVENT:
	case XS_ERROR:
		rc = -EINVAL;
		break;
	default:
		rc = -ENOSYS;
		break;
	}
	if (rc < 0) {
		reply_err(&r, rc);
	}
}

/* Read and execute requests until the socket is empty or output backs up. */
static void conn_read(struct conn *c)
{
	for (unsigned int budget = 64; budget > 0 && !c->dead; budget--) {
		size_t want;
		ssize_t n;

		if (c->out_bytes > VD_XS_OUT_SOFT_BYTES) {
			break;
		}
		if (c->in_used < HDR_BYTES) {
			want = HDR_BYTES - c->in_used;
		} else {
			want = HDR_BYTES + c->hdr.len - c->in_used;
		}
		n = recv(c->fd, c->in + c->in_used, want, MSG_DONTWAIT);
		if (n == 0) {
			conn_kill(c);
			return;
		}
		if (n < 0) {
			if (errno == EINTR) {
				continue;
			}
			if (errno != EAGAIN && errno != EWOULDBLOCK) {
				conn_kill(c);
			}
			break;
		}
		c->in_used += (uint32_t)n;
		if (c->in_used == HDR_BYTES) {
			memcpy(&c->hdr, c->in, HDR_BYTES);
			if (c->hdr.len > XENSTORE_PAYLOAD_MAX) {
				vd_log_ratelimited(
					VD_LOG_WARN,
					"xenstored: d%u sent a %u-byte payload, disconnecting",
					c->domid, c->hdr.len);
				conn_kill(c);
				return;
			}
		}
		if (c->in_used >= HDR_BYTES && c->in_used == HDR_BYTES + c->hdr.len) {
			c->in[c->in_used] = '\0';
			handle(c);
			c->in_used = 0;
		}
	}
	if (!c->dead) {
		conn_flush(c);
	}
}

static int conn_add(struct vd_xs_server *s, int fd, uint16_t domid, struct listener *l)
{
	struct epoll_event ev = { .events = EPOLLIN };
	struct conn *c;

	if (s->nconns >= VD_XS_MAX_CONNS) {
		close(fd);
		return -EMFILE;
	}
	c = calloc(1, sizeof(*c));
	if (c == NULL) {
		close(fd);
		return -ENOMEM;
	}
	c->tag = TAG_CONN;
	c->s = s;
	c->l = l;
	c->fd = fd;
	c->domid = domid;
	c->ep_events = EPOLLIN;
	ev.data.ptr = c;
	if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		int rc = -errno;

		close(fd);
		free(c);
		return rc;
	}
	c->next = s->conns;
	if (s->conns) {
		s->conns->prev = c;
	}
	s->conns = c;
	s->nconns++;
	return 0;
}

static void do_accept(struct vd_xs_server *s, struct listener *l)
{
	for (int i = 0; i < 16; i++) {
		int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			return;
		}
		conn_add(s, fd, l->domid, l);
	}
}

/* ------------------------------------------------------------------ */
/* Public interface                                                    */

static int add_root_node(struct vd_xs_server *s, const char *path, uint16_t owner,
			 const char *value)
{
	struct node *n = node_new(path);

	if (n == NULL) {
		return -ENOMEM;
	}
	n->perms = calloc(1, sizeof(*n->perms));
	if (n->perms == NULL) {
		node_free(n);
		return -ENOMEM;
	}
	n->nperms = 1;
	n->perms[0].domid = owner;
	if (value != NULL && set_value(s, NULL, n, value, strlen(value)) < 0) {
		node_free(n);
		return -ENOMEM;
	}
	n->gen = ++s->gen;
	table_insert(&s->tree, n);
	owned_add(s, n, 1);
	return 0;
}

/* Write path=value as dom0 through the ordinary code path. */
static int write_as_dom0(struct vd_xs_server *s, const char *path, const char *value)
{
	struct node *n;
	int rc = lookup(s, NULL, 0, path, PERM_WRITE, &n);

	if (rc == -ENOENT) {
		rc = create_path(s, NULL, 0, path, &n);
	}
	if (rc == 0 && value != NULL) {
		rc = set_value(s, NULL, n, value, strlen(value));
	}
	if (rc == 0) {
		fire(s, NULL, path, false, n->perms, n->nperms, NULL, 0);
	}
	return rc;
}

int vd_xs_server_create(struct vd_xs_server **out)
{
	struct vd_xs_server *s = calloc(1, sizeof(*s));
	int rc = -ENOMEM;

	*out = NULL;
	if (s == NULL) {
		return -ENOMEM;
	}
	s->epfd = -1;
	s->owned = calloc(NDOMIDS, sizeof(*s->owned));
	s->introduced = calloc(NDOMIDS / 8, 1);
	if (s->owned == NULL || s->introduced == NULL || table_init(&s->tree, 256) < 0) {
		goto err;
	}
	s->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (s->epfd < 0) {
		rc = -errno;
		goto err;
	}
	rc = add_root_node(s, "/", 0, NULL);
	if (rc == 0) {
		rc = write_as_dom0(s, "/local/domain/0/name", "Domain-0");
	}
	if (rc == 0) {
		rc = write_as_dom0(s, "/local/domain/0/domid", "0");
	}
	if (rc < 0) {
		goto err;
	}
	s->introduced[0] |= 1;
	*out = s;
	return 0;
err:
	vd_xs_server_destroy(s);
	return rc;
}

void vd_xs_server_destroy(struct vd_xs_server *s)
{
	if (s == NULL) {
		return;
	}
	while (s->conns != NULL) {
		conn_kill(s->conns);
	}
	reap(s);
	while (s->listeners != NULL) {
		struct listener *l = s->listeners;

		s->listeners = l->next;
		close(l->fd);
		unlink(l->path);
		free(l->path);
		free(l);
	}
	if (s->epfd >= 0) {
		close(s->epfd);
	}
	if (s->tree.b != NULL) {
		table_fini(&s->tree);
	}
	free(s->owned);
	free(s->introduced);
	free(s);
}

int vd_xs_server_listen(struct vd_xs_server *s, const char *path, uint16_t domid)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct epoll_event ev = { .events = EPOLLIN };
	struct listener *l;
	int rc;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	l = calloc(1, sizeof(*l));
	if (l == NULL) {
		return -ENOMEM;
	}
	l->tag = TAG_LISTENER;
	l->domid = domid;
	l->path = strdup(path);
	if (l->path == NULL) {
		rc = -ENOMEM;
		goto err_free;
	}
	l->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (l->fd < 0) {
		rc = -errno;
		goto err_free;
	}
	unlink(path);
	if (bind(l->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(l->fd, 64) < 0) {
		rc = -errno;
		goto err_close;
	}
	ev.data.ptr = l;
	if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, l->fd, &ev) < 0) {
		rc = -errno;
		goto err_unlink;
	}
	l->next = s->listeners;
	s->listeners = l;
	return 0;
err_unlink:
	unlink(path);
err_close:
	close(l->fd);
err_free:
	free(l->path);
	free(l);
	return rc;
}

void vd_xs_server_unlisten(struct vd_xs_server *s, const char *path)
{
	for (struct listener **pp = &s->listeners; *pp; pp = &(*pp)->next) {
		struct listener *l = *pp;
		struct conn *c, *next;

		if (strcmp(l->path, path) != 0) {
			continue;
		}
		for (c = s->conns; c; c = next) {
			next = c->next;
			if (c->l == l) {
				conn_kill(c);
			}
		}
		*pp = l->next;
		epoll_ctl(s->epfd, EPOLL_CTL_DEL, l->fd, NULL);
		close(l->fd);
		unlink(l->path);
		free(l->path);
		free(l);
		break;
	}
	if (!s->in_run) {
		reap(s);
	}
}

int vd_xs_server_add_conn(struct vd_xs_server *s, int fd, uint16_t domid)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
		int rc = -errno;

		close(fd);
		return rc;
	}
	return conn_add(s, fd, domid, NULL);
}

unsigned int vd_xs_server_nodes_owned(const struct vd_xs_server *s, uint16_t domid)
{
	return s->owned[domid];
}

unsigned int vd_xs_server_nconns(const struct vd_xs_server *s)
{
	return s->nconns;
}

int vd_xs_server_fd(struct vd_xs_server *s)
{
	return s->epfd;
}

int vd_xs_server_run(struct vd_xs_server *s)
{
	struct epoll_event evs[64];
	int n = epoll_wait(s->epfd, evs, VD_ARRAY_SIZE(evs), 0);

	if (n < 0) {
		return errno == EINTR ? 0 : -errno;
	}
	s->in_run = true;
	for (int i = 0; i < n; i++) {
		int tag = *(int *)evs[i].data.ptr;
		struct conn *c;

		if (tag == TAG_LISTENER) {
			do_accept(s, evs[i].data.ptr);
			continue;
		}
		c = evs[i].data.ptr;
		if (c->dead) {
			continue;
		}
		if (evs[i].events & EPOLLERR) {
			conn_kill(c);
			continue;
		}
		if (evs[i].events & EPOLLOUT) {
			conn_flush(c);
		}
		if (c->dead) {
			continue;
		}
		if (evs[i].events & EPOLLIN) {
			conn_read(c);
		} else if (evs[i].events & EPOLLHUP) {
			conn_kill(c); /* peer gone while we were not reading */
		}
	}
	s->in_run = false;
	reap(s);
	return 0;
}

int vd_xs_server_introduce_domain(struct vd_xs_server *s, uint16_t domid)
{
	char path[64], val[16];
	struct perm owner = { .domid = domid, .perm = 0 };
	struct node *n;
	int rc;

	if (domid == 0 || (s->introduced[domid / 8] & (1u << (domid % 8)))) {
		return -EEXIST;
	}
	snprintf(path, sizeof(path), "/local/domain/%u", domid);
	rc = write_as_dom0(s, path, NULL);
	if (rc < 0) {
		return rc;
	}
	n = table_find(&s->tree, path);
	assert(n != NULL);
	owned_add(s, n, -1);
	n->perms[0] = owner;
	n->nperms = 1;
	owned_add(s, n, 1);
	touch(s, NULL, n);
	snprintf(path, sizeof(path), "/local/domain/%u/name", domid);
	snprintf(val, sizeof(val), "domain-%u", domid);
	rc = write_as_dom0(s, path, val);
	if (rc == 0) {
		snprintf(path, sizeof(path), "/local/domain/%u/domid", domid);
		snprintf(val, sizeof(val), "%u", domid);
		rc = write_as_dom0(s, path, val);
	}
	if (rc < 0) {
		return rc;
	}
	s->introduced[domid / 8] |= (uint8_t)(1u << (domid % 8));
	fire(s, NULL, "@introduceDomain", false, NULL, 0, NULL, 0);
	return 0;
}

void vd_xs_server_release_domain(struct vd_xs_server *s, uint16_t domid)
{
	char path[64];
	struct node *n;

	if (domid == 0) {
		return;
	}
	snprintf(path, sizeof(path), "/local/domain/%u", domid);
	n = table_find(&s->tree, path);
	if (n != NULL) {
		rm_path(s, NULL, n);
	}
	s->introduced[domid / 8] &= (uint8_t) ~(1u << (domid % 8));
	for (struct conn *c = s->conns; c; c = c->next) {
		if (c->domid == domid) {
			conn_drop_state(c);
		}
	}
	fire(s, NULL, "@releaseDomain", false, NULL, 0, NULL, 0);
}
