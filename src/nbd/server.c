/*
 * nbd server: the control side. Listens, accepts, picks a serving thread
 * round-robin and sends it the new socket; stops by asking every serving
 * thread to close its connections, then waits for the count of live
 * connections (decremented as each is freed, after its last I/O) to reach
 * zero. The per-connection work is in conn.c.
 */
#define _GNU_SOURCE
#include "nbd/nbd-int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include "common/log.h"

static bool is_pow2(uint64_t v)
{
	return v != 0 && (v & (v - 1)) == 0;
}

static uint16_t tx_flags_for(const struct vd_nbd_server *s)
{
	/*
	 * One shared vd_image and vd_file behind every connection, and FLUSH is
	 * fdatasync of that file (after the format's metadata): a flush on any
	 * connection makes every completed write durable, so multi-conn is safe.
	 */
	uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
		     NBD_FLAG_CAN_MULTI_CONN;

	if (s->readonly) {
		return f | NBD_FLAG_READ_ONLY;
	}
	f |= NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
	if (s->info.discard) {
		f |= NBD_FLAG_SEND_TRIM;
	}
	return f;
}

int vd_nbd_server_create(struct vd_image *img, const struct vd_nbd_config *cfg,
			 struct vd_nbd_server **out, struct vd_err *err)
{
	struct vd_nbd_server *s;
	const char *name = cfg->export_name != NULL ? cfg->export_name : "";
	int ret;

	*out = NULL;
	if (strlen(name) > VD_NBD_MAX_NAME ||
	    (cfg->description != NULL && strlen(cfg->description) > VD_NBD_MAX_NAME)) {
		return vd_err_set(err, EINVAL, "export name or description longer than %u bytes",
				  VD_NBD_MAX_NAME);
	}
	if (cfg->max_block_bytes != 0 &&
	    (!is_pow2(cfg->max_block_bytes) || cfg->max_block_bytes < 65536)) {
		return vd_err_set(err, EINVAL, "max block size %u: not a power of two >= 64 KiB",
				  cfg->max_block_bytes);
	}
	if (cfg->tls == VD_NBD_TLS_OFF && cfg->tls_required) {
		return vd_err_set(err, EINVAL, "TLS required but not configured");
	}
	s = calloc(1, sizeof(*s));
	if (s == NULL) {
		return vd_err_set(err, ENOMEM, "nbd server");
	}
	s->listen_fd = -1;
	s->img = img;
	ret = vd_image_get_info(img, &s->info);
	if (ret < 0) {
		ret = vd_err_set(err, -ret, "reading the image geometry");
		goto err_free;
	}
	s->max_conns = cfg->max_conns != 0 ? cfg->max_conns : VD_NBD_DEF_MAX_CONNS;
	s->export_name = strdup(name);
	s->description = cfg->description != NULL ? strdup(cfg->description) : NULL;
	s->peers = calloc(s->max_conns, sizeof(*s->peers));
	if (s->export_name == NULL || (cfg->description != NULL && s->description == NULL) ||
	    s->peers == NULL) {
		ret = vd_err_set(err, ENOMEM, "nbd server");
		goto err_free;
	}
	if (cfg->tls != VD_NBD_TLS_OFF) {
		ret = nbd_tls_create(cfg, &s->tls, err);
		if (ret < 0) {
			goto err_free;
		}
		s->tls_required = cfg->tls_required;
	}
	s->readonly = cfg->readonly || s->info.readonly;
	s->max_inflight = cfg->max_inflight != 0 ? cfg->max_inflight : VD_NBD_DEF_MAX_INFLIGHT;
	s->max_inflight = VD_MIN(s->max_inflight, 1024u);
	s->max_block_bytes =
		cfg->max_block_bytes != 0 ? cfg->max_block_bytes : VD_NBD_DEF_MAX_BLOCK;
	s->min_block_bytes = s->info.sector_bytes >= 512 ? s->info.sector_bytes : 512;
	s->handshake_ns =
		(uint64_t)(cfg->handshake_ms != 0 ? cfg->handshake_ms : VD_NBD_DEF_HANDSHAKE_MS) *
		1000000ull;
	s->idle_ns = cfg->idle_ms == VD_NBD_IDLE_NEVER
			     ? 0
			     : (uint64_t)(cfg->idle_ms != 0 ? cfg->idle_ms : VD_NBD_DEF_IDLE_MS) *
				       1000000ull;
	s->max_per_peer = cfg->max_per_peer != 0 ? cfg->max_per_peer : VD_NBD_DEF_MAX_PER_PEER;
	s->max_per_peer = VD_MIN(s->max_per_peer, s->max_conns);
	s->io_ctx_bytes = vd_image_io_ctx_size(img);
	s->tx_flags = tx_flags_for(s);
	/* raw: fallocate; qcow2: zero clusters (or a write of zeroes within one). */
	s->fast_zero = s->info.format != NULL &&
		       (strcmp(s->info.format, "raw") == 0 || strcmp(s->info.format, "qcow2") == 0);
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	*out = s;
	return 0;

err_free:
	free(s->peers);
	free(s->export_name);
	free(s->description);
	free(s);
	return ret;
}

int vd_nbd_server_add_thread(struct vd_nbd_server *s, const struct vd_nbd_thread_ops *ops,
			     void *thread)
{
	struct nbd_thread *t;

	if (s->nr_threads >= NBD_MAX_THREADS) {
		return -ENOSPC;
	}
	t = &s->threads[s->nr_threads++];
	memset(t, 0, sizeof(*t));
	t->srv = s;
	t->ops = ops;
	t->arg = thread;
	t->tfd = -1;
	return 0;
}

/*
 * Block status reads the format's metadata. raw asks the kernel (lseek) and
 * vhd's BAT is read with atomic loads: any thread will do. qcow2's L2 cache
 * and a differencing VHD's sector bitmaps belong to the metadata owner
 * thread, which is the thread of the image's only queue when there is one
 * serving thread: then it is exact too. Otherwise conn.c answers "data"
 * for every extent (allowed by the protocol: not a hole, not known zero).
 */
static void decide_status(struct vd_nbd_server *s)
{
	const char *f = s->info.format != NULL ? s->info.format : "";
	const char *sub = s->info.subformat != NULL ? s->info.subformat : "";

	if (strcmp(f, "raw") == 0 || (strcmp(f, "vhd") == 0 && strcmp(sub, "differencing") != 0 &&
				      s->info.backing_file == NULL)) {
		s->exact_status = true;
	} else {
		s->exact_status = s->nr_threads == 1;
	}
}

static int listen_fd_common(struct vd_nbd_server *s, int fd, struct vd_err *err, const char *what)
{
	if (listen(fd, 64) < 0) {
		int e = errno;

		close(fd);
		return vd_err_set(err, e, "listen on %s", what);
	}
	s->listen_fd = fd;
	decide_status(s);
	return 0;
}

/*
 * Only a socket nobody listens on is replaced: never a file (a mistyped
 * --socket naming the image would delete it), never a live server's.
 */
static int clear_stale_socket(const struct sockaddr_un *sa, const char *path, struct vd_err *err)
{
	struct stat st;
	int fd, r;

	if (lstat(path, &st) < 0) {
		return errno == ENOENT ? 0 : vd_err_set(err, errno, "%s", path);
	}
	if (!S_ISSOCK(st.st_mode)) {
		return vd_err_set(err, EEXIST, "%s exists and is not a socket", path);
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		return vd_err_set(err, errno, "socket");
	}
	r = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
	close(fd);
	if (r == 0 || errno == EAGAIN) {
		return vd_err_set(err, EADDRINUSE, "a server is listening on %s", path);
	}
	if (unlink(path) < 0 && errno != ENOENT) {
		return vd_err_set(err, errno, "removing the stale socket %s", path);
	}
	return 0;
}

int vd_nbd_server_listen_unix(struct vd_nbd_server *s, const char *path, struct vd_err *err)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t len = strlen(path);
	int fd, ret;

	if (s->listen_fd >= 0 || s->nr_threads == 0) {
		return vd_err_set(err, EINVAL, "already listening, or no serving thread");
	}
	if (len == 0 || len >= sizeof(sa.sun_path)) {
		return vd_err_set(err, ENAMETOOLONG, "socket path %s is too long", path);
	}
	memcpy(sa.sun_path, path, len + 1);
	ret = clear_stale_socket(&sa, path, err);
	if (ret < 0) {
		return ret;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		return vd_err_set(err, errno, "socket");
	}
	/*
	 * bind() creates the node with the umask's mode; nobody can connect
	 * before listen() (ECONNREFUSED), and chmod comes first: no window.
	 */
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || chmod(path, 0600) < 0) {
		int e = errno;

		close(fd);
		return vd_err_set(err, e, "bind %s", path);
	}
	memcpy(s->unix_path, path, len + 1);
	return listen_fd_common(s, fd, err, path);
}

int vd_nbd_server_listen_tcp(struct vd_nbd_server *s, const char *addr, uint16_t port,
			     struct vd_err *err)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC,
				  .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
	struct addrinfo *res = NULL;
	char portstr[8];
	int fd, one = 1, r;

	if (s->listen_fd >= 0 || s->nr_threads == 0) {
		return vd_err_set(err, EINVAL, "already listening, or no serving thread");
	}
	snprintf(portstr, sizeof(portstr), "%u", port);
	r = getaddrinfo(addr, portstr, &hints, &res);
	if (r != 0 || res == NULL) {
		return vd_err_set(err, EINVAL, "address %s: %s", addr != NULL ? addr : "*",
				  gai_strerror(r));
	}
	fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		freeaddrinfo(res);
		return vd_err_set(err, errno, "socket");
	}
	(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, res->ai_addr, res->ai_addrlen) < 0) {
		int e = errno;

		close(fd);
		freeaddrinfo(res);
		return vd_err_set(err, e, "bind %s port %u", addr != NULL ? addr : "*", port);
	}
	freeaddrinfo(res);
	return listen_fd_common(s, fd, err, "tcp");
}

int vd_nbd_server_fd(const struct vd_nbd_server *s)
{
	return s->listen_fd;
}

unsigned int vd_nbd_server_conns(struct vd_nbd_server *s)
{
	unsigned int n;

	pthread_mutex_lock(&s->lock);
	n = s->nr_conns;
	pthread_mutex_unlock(&s->lock);
	return n;
}

/* Under s->lock: the entry counting peer, or a free one (NULL if none). */
static struct nbd_peer_count *peer_find(struct vd_nbd_server *s, const struct nbd_peer *p)
{
	struct nbd_peer_count *free_entry = NULL;

	for (unsigned int i = 0; i < s->max_conns; i++) {
		struct nbd_peer_count *e = &s->peers[i];

		if (e->conns == 0) {
			free_entry = free_entry != NULL ? free_entry : e;
		} else if (e->peer.len == p->len && memcmp(e->peer.key, p->key, p->len) == 0) {
			return e;
		}
	}
	return free_entry;
}

void vd_nbd_server_conn_freed(struct vd_nbd_server *s, const struct nbd_peer *peer)
{
	pthread_mutex_lock(&s->lock);
	if (peer != NULL && peer->len != 0) {
		struct nbd_peer_count *e = peer_find(s, peer);

		if (e != NULL && e->conns != 0) {
			e->conns--;
		}
	}
	s->nr_conns--;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
}

/* Retry a full message ring for a while (the serving thread drains it). */
static int send_retry(struct nbd_thread *t, void (*fn)(void *), void *arg)
{
	for (int i = 0; i < 20000; i++) {
		int r = t->ops->send(t->arg, fn, arg);

		if (r != -EAGAIN) {
			return r;
		}
		nanosleep(&(struct timespec){ .tv_nsec = 100000 }, NULL);
	}
	return -EAGAIN;
}

struct start_msg {
	struct nbd_thread *t;
	int fd;
	struct nbd_peer peer;
};

static void bind_thread(struct nbd_thread *t)
{
	if (!t->bound) {
		t->ops->bind(t->arg, &t->ioctx, &t->iq);
		t->bound = true;
	}
}

static void start_on_thread(void *arg)
{
	struct start_msg *m = arg;
	struct nbd_thread *t = m->t;
	int fd = m->fd;
	struct nbd_peer peer = m->peer;

	free(m);
	bind_thread(t);
	if (__atomic_load_n(&t->srv->stopping, __ATOMIC_ACQUIRE) || t->ioctx == NULL ||
	    t->iq == NULL) {
		close(fd);
		vd_nbd_server_conn_freed(t->srv, &peer);
		return;
	}
	vd_nbd_conn_start(t, fd, &peer);
}

/* The peer of an accepted socket: uid on UNIX sockets, else the IP address. */
static void peer_of(int fd, const struct sockaddr_storage *ss, struct nbd_peer *p)
{
	memset(p, 0, sizeof(*p));
	if (ss->ss_family == AF_UNIX) {
		struct ucred uc;
		socklen_t len = sizeof(uc);

		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) == 0) {
			p->key[0] = 'u';
			memcpy(p->key + 1, &uc.uid, sizeof(uc.uid));
			p->len = 1 + sizeof(uc.uid);
		}
	} else if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)ss;

		p->key[0] = '4';
		memcpy(p->key + 1, &in->sin_addr, 4);
		p->len = 5;
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;

		if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
			p->key[0] = '4';
			memcpy(p->key + 1, in6->sin6_addr.s6_addr + 12, 4);
			p->len = 5;
		} else {
			p->key[0] = '6';
			memcpy(p->key + 1, &in6->sin6_addr, 16);
			p->len = 17;
		}
	}
}

/* Under s->lock: count a new connection of peer, or say why not. */
static const char *conn_admit(struct vd_nbd_server *s, const struct nbd_peer *peer)
{
	struct nbd_peer_count *e = NULL;

	if (s->stopping) {
		return "stopping";
	}
	if (s->nr_conns >= s->max_conns) {
		return "too many connections";
	}
	if (peer->len != 0) {
		e = peer_find(s, peer);
		if (e == NULL || e->conns >= s->max_per_peer) {
			return "too many connections from one peer";
		}
		if (e->conns == 0) {
			e->peer = *peer;
		}
		e->conns++;
	}
	s->nr_conns++;
	return NULL;
}

void vd_nbd_server_accept(struct vd_nbd_server *s)
{
	for (;;) {
		struct sockaddr_storage ss = { 0 };
		socklen_t sslen = sizeof(ss);
		struct nbd_peer peer;
		struct start_msg *m;
		struct nbd_thread *t;
		const char *why;
		int fd, one = 1;

		if (s->listen_fd < 0) {
			return;
		}
		fd = accept4(s->listen_fd, (struct sockaddr *)&ss, &sslen,
			     SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
				vd_log_ratelimited(VD_LOG_WARN, "nbd: accept: %s", strerror(errno));
			}
			return;
		}
		if (ss.ss_family != AF_UNIX) {
			(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		}
		peer_of(fd, &ss, &peer);
		pthread_mutex_lock(&s->lock);
		why = conn_admit(s, &peer);
		pthread_mutex_unlock(&s->lock);
		if (why != NULL) {
			vd_log_ratelimited(VD_LOG_WARN,
					   "nbd: connection refused: %s (at most %u, %u "
					   "per peer)",
					   why, s->max_conns, s->max_per_peer);
			close(fd);
			continue;
		}
		m = malloc(sizeof(*m));
		t = &s->threads[s->next_thread++ % s->nr_threads];
		if (m == NULL) {
			close(fd);
			vd_nbd_server_conn_freed(s, &peer);
			continue;
		}
		m->t = t;
		m->fd = fd;
		m->peer = peer;
		if (send_retry(t, start_on_thread, m) < 0) {
			free(m);
			close(fd);
			vd_nbd_server_conn_freed(s, &peer);
		}
	}
}

static void kill_on_thread(void *arg)
{
	struct nbd_thread *t = arg;

	bind_thread(t);
	vd_nbd_thread_kill_all(t);
	vd_nbd_server_conn_freed(t->srv, NULL); /* the message's own count */
}

void vd_nbd_server_stop(struct vd_nbd_server *s)
{
	if (s->stopped) {
		return;
	}
	s->stopped = true;
	if (s->listen_fd >= 0) {
		close(s->listen_fd);
		s->listen_fd = -1;
		if (s->unix_path[0] != '\0') {
			(void)unlink(s->unix_path);
		}
	}
	pthread_mutex_lock(&s->lock);
	__atomic_store_n(&s->stopping, true, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&s->lock);
	for (unsigned int i = 0; i < s->nr_threads; i++) {
		/* Counted like a connection, so that the wait below covers it. */
		pthread_mutex_lock(&s->lock);
		s->nr_conns++;
		pthread_mutex_unlock(&s->lock);
		if (send_retry(&s->threads[i], kill_on_thread, &s->threads[i]) < 0) {
			vd_log(VD_LOG_ERR, "nbd: serving thread %u does not answer", i);
			vd_nbd_server_conn_freed(s, NULL);
		}
	}
	pthread_mutex_lock(&s->lock);
	while (s->nr_conns > 0) {
		pthread_cond_wait(&s->cond, &s->lock);
	}
	pthread_mutex_unlock(&s->lock);
}

void vd_nbd_server_destroy(struct vd_nbd_server *s)
{
	if (s == NULL) {
		return;
	}
	vd_nbd_server_stop(s);
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->lock);
	nbd_tls_destroy(s->tls);
	free(s->peers);
	free(s->export_name);
	free(s->description);
	free(s);
}
