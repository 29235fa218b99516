/*
 * Fuzz the NBD server's client boundary: the input is everything a hostile
 * client sends on one connection (client flags, options, requests, write
 * payloads), fed over a socketpair to a connection on a mem image; the
 * server's reactor turns on this thread. Then the client hangs up.
 *
 * Invariants checked: the server never crashes or reads out of bounds
 * (sanitizers), every connection is freed once its I/O is done (no leak,
 * no stuck connection), and whatever it sends starts with a valid magic.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fuzz.h"
#include "nbd/nbd-int.h"

#define DISK      (4u << 20)
#define MAX_INPUT (1u << 20)

static struct vd_image *g_img;
static struct vd_ioctx *g_ioctx;
static struct vd_image_queue *g_iq;
static struct vd_nbd_server *g_srv;

static int f_send(void *thread, void (*fn)(void *), void *arg)
{
	return vd_ioctx_send_msg(g_ioctx, fn, arg);
}

static void f_bind(void *thread, struct vd_ioctx **ioctx, struct vd_image_queue **iq)
{
	*ioctx = g_ioctx;
	*iq = g_iq;
}

static const struct vd_nbd_thread_ops g_ops = { .send = f_send, .bind = f_bind };

static void setup(void)
{
	struct vd_image_opts o = { .format = "raw", .io_backend = "mem", .size_bytes = DISK };
	struct vd_nbd_config cfg = { .export_name = "fz",
				     .max_inflight = 8,
				     .max_block_bytes = 1u << 20 };
	struct vd_err err = { 0 };

	if (vd_image_open("mem", &o, &g_img, &err) < 0 || vd_ioctx_create(64, &g_ioctx, &err) < 0 ||
	    vd_ioctx_msgs_enable(g_ioctx) < 0 || vd_image_queue_create(g_img, g_ioctx, &g_iq) < 0 ||
	    vd_nbd_server_create(g_img, &cfg, &g_srv, &err) < 0 ||
	    vd_nbd_server_add_thread(g_srv, &g_ops, NULL) < 0) {
		abort();
	}
	g_srv->threads[0].ioctx = g_ioctx;
	g_srv->threads[0].iq = g_iq;
	g_srv->threads[0].bound = true;
}

/* Read what the server sent; check the first magic. */
static void drain(int fd, bool *first, uint64_t *total)
{
	uint8_t buf[65536];
	ssize_t n;

	while ((n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0) {
		if (*first && n >= 8) {
			uint64_t m = nbd_get64(buf);

			if (m != NBD_MAGIC_INIT) {
				abort();
			}
			*first = false;
		}
		*total += (uint64_t)n;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int sv[2];
	size_t off = 0;
	bool first = true;
	uint64_t total = 0;
	int spins;

	if (g_srv == NULL) {
		setup();
	}
	if (size > MAX_INPUT) {
		size = MAX_INPUT;
	}
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) {
		return 0;
	}
	pthread_mutex_lock(&g_srv->lock);
	g_srv->nr_conns++;
	pthread_mutex_unlock(&g_srv->lock);
	vd_nbd_conn_start(&g_srv->threads[0], sv[1], NULL);
	for (spins = 0; off < size && spins < 100000; spins++) {
		ssize_t n = send(sv[0], data + off, size - off, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n > 0) {
			off += (size_t)n;
		} else if (n < 0 && errno != EAGAIN) {
			break; /* the server closed it */
		}
		vd_ioctx_poll(g_ioctx);
		drain(sv[0], &first, &total);
	}
	shutdown(sv[0], SHUT_WR);
	for (spins = 0; vd_nbd_server_conns(g_srv) != 0 && spins < 100000; spins++) {
		vd_ioctx_poll(g_ioctx);
		drain(sv[0], &first, &total);
	}
	if (vd_nbd_server_conns(g_srv) != 0) {
		abort(); /* a connection that never goes away */
	}
	close(sv[0]);
	return 0;
}
