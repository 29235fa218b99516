/*
 * Fuzz the frontend's xenstore values as the backend reads them at connect
 * (vd_blkif_read_fe_conf): a hostile guest owns its frontend directory and
 * may write anything there.
 *
 * Input layout:
 *   [0]  backend caps: bits 0-3 max queues - 1, bits 4-6 max ring page
 *        order (capped at 4), bit 7 feature-persistent offered
 *   [1]  unused (kept for the corpus layout)
 *   [2..] "key=value" lines (NUL or newline separated): the frontend
 *        directory's nodes, relative to it ("ring-ref", "queue-1/ring-ref3").
 *
 * xs_read is replaced by a lookup in those lines (the executable's
 * definition wins over libxenstore's), so no xenstored is needed.
 *
 * Invariants checked on success: everything lies within the caps and the
 * protocol's maxima; on failure: a message was given.
 */
#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "blkif/xenbus.h"
#include "common/compiler.h"
#include "fuzz.h"

#define FE_PATH   "/local/domain/7/device/vbd/51712"
#define MAX_NODES 256

struct node {
	const char *key;
	size_t key_len;
	const char *val;
	size_t val_len;
};

static struct node g_nodes[MAX_NODES];
static unsigned int g_nr_nodes;

static void parse_nodes(const uint8_t *data, size_t size)
{
	const char *p = (const char *)data, *end = p + size;

	g_nr_nodes = 0;
	while (p < end && g_nr_nodes < MAX_NODES) {
		const char *line_end = p, *eq;

		while (line_end < end && *line_end != '\n' && *line_end != '\0') {
			line_end++;
		}
		eq = memchr(p, '=', (size_t)(line_end - p));
		if (eq != NULL) {
			struct node *n = &g_nodes[g_nr_nodes++];

			n->key = p;
			n->key_len = (size_t)(eq - p);
			n->val = eq + 1;
			n->val_len = (size_t)(line_end - eq - 1);
		}
		p = line_end + 1;
	}
}

/* libxenstore's contract: a malloc'd, NUL-terminated copy, or NULL + errno. */
void *xs_read(struct xs_handle *h, xs_transaction_t t, const char *path, unsigned int *len)
{
	size_t plen = strlen(FE_PATH);
	const char *rel;
	unsigned int i;

	(void)h;
	(void)t;
	if (strncmp(path, FE_PATH, plen) != 0 || path[plen] != '/') {
		errno = ENOENT;
		return NULL;
	}
	rel = path + plen + 1;
	/* the last node written wins, as in a real store */
	for (i = g_nr_nodes; i-- > 0;) {
		const struct node *n = &g_nodes[i];

		if (n->key_len == strlen(rel) && memcmp(n->key, rel, n->key_len) == 0) {
			char *v = malloc(n->val_len + 1);

			if (v == NULL) {
				errno = ENOMEM;
				return NULL;
			}
			memcpy(v, n->val, n->val_len);
			v[n->val_len] = '\0';
			if (len != NULL) {
				*len = (unsigned int)n->val_len;
			}
			return v;
		}
	}
	errno = ENOENT;
	return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct vd_blkif_caps caps = { 0 };
	struct vd_blkif_fe_conf conf;
	struct vd_err err = { 0 };
	int rc;

	if (size < 2) {
		return 0;
	}
	caps.size_bytes = 1ull << 30;
	caps.sector_bytes = 512;
	caps.physical_sector_bytes = 4096;
	caps.max_queues = (data[0] & 0xf) + 1u;
	caps.max_ring_page_order = VD_MIN((data[0] >> 4) & 7u, 4u);
	caps.persistent = (data[0] & 0x80) != 0;
	caps.max_indirect_segs = 256;
	parse_nodes(data + 2, size - 2);

	memset(&conf, 0xa5, sizeof(conf));
	rc = vd_blkif_read_fe_conf(NULL, FE_PATH, &caps, &conf, &err);
	if (rc < 0) {
		/* every refusal says why */
		assert(err.msg[0] != '\0');
		return 0;
	}
	assert(rc == 0);
	assert(conf.nr_queues >= 1 && conf.nr_queues <= caps.max_queues);
	assert(conf.nr_queues <= VD_BLKIF_MAX_QUEUES);
	assert(conf.ring_page_order <= caps.max_ring_page_order);
	assert(conf.nr_ring_pages == 1u << conf.ring_page_order);
	assert(conf.nr_ring_pages <= VD_BLKIF_MAX_RING_PAGES);
	assert(conf.abi == VD_BLKIF_ABI_NATIVE || conf.abi == VD_BLKIF_ABI_X86_32 ||
	       conf.abi == VD_BLKIF_ABI_X86_64);
	assert(!conf.persistent || caps.persistent);
	return 0;
}
