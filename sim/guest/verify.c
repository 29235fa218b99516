/*
 * The model of the disk: a generation number per unit (512 B or 4 KiB).
 * Every 512-byte sector written carries a header (magic, its own offset,
 * the seed, the generation) and a pattern derived from all three, so a
 * misplaced, stale or torn sector is detected.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "sim/guest/guest-int.h"

#define MAX_REPORTED 10

_Static_assert(sizeof(struct vd_sector_hdr) == 32, "sector header layout");

int vd_model_create(uint64_t size_bytes, uint32_t unit_bytes, uint64_t seed, bool verify_initial,
		    struct vd_model **out)
{
	struct vd_model *m;
	uint64_t units;

	if ((unit_bytes != 512 && unit_bytes != 4096) || size_bytes == 0) {
		return -EINVAL;
	}
	units = VD_DIV_ROUND_UP(size_bytes, unit_bytes);
	if (units > VD_MODEL_MAX_UNITS) {
		return -E2BIG;
	}
	m = calloc(1, sizeof(*m));
	if (m == NULL) {
		return -ENOMEM;
	}
	m->gen = calloc(units, sizeof(uint32_t));
	if (m->gen == NULL) {
		free(m);
		return -ENOMEM;
	}
	m->size_bytes = size_bytes;
	m->unit_bytes = unit_bytes;
	m->nr_units = units;
	m->seed = seed;
	m->verify_initial = verify_initial;
	*out = m;
	return 0;
}

void vd_model_destroy(struct vd_model *m)
{
	if (m == NULL) {
		return;
	}
	free(m->gen);
	free(m);
}

void vd_model_set(struct vd_model *m, uint64_t off_bytes, uint64_t len_bytes, uint32_t gen)
{
	uint64_t first = off_bytes / m->unit_bytes;
	uint64_t end = VD_DIV_ROUND_UP(off_bytes + len_bytes, m->unit_bytes);

	assert(end <= m->nr_units);
	for (uint64_t u = first; u < end; u++) {
		__atomic_store_n(&m->gen[u], gen, __ATOMIC_RELAXED);
	}
}

uint32_t vd_model_get(const struct vd_model *m, uint64_t off_bytes)
{
	assert(off_bytes / m->unit_bytes < m->nr_units);
	return __atomic_load_n(&m->gen[off_bytes / m->unit_bytes], __ATOMIC_RELAXED);
}

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

void vd_sector_fill(void *buf, uint64_t off_bytes, uint32_t gen, uint64_t seed)
{
	struct vd_sector_hdr hdr = {
		.magic = VD_SECTOR_MAGIC,
		.offset_bytes = off_bytes,
		.seed = seed,
		.gen = gen,
		.crc_pad = 0,
	};
	uint64_t x = seed ^ (off_bytes * 0x100000001b3ull) ^ ((uint64_t)gen << 32);
	uint8_t *p = buf;

	memcpy(p, &hdr, sizeof(hdr));
	for (size_t i = sizeof(hdr); i < VD_SECTOR_SIZE; i += 8) {
		uint64_t w = splitmix64(&x);

		memcpy(p + i, &w, 8);
	}
}

void vd_model_fill(const struct vd_model *m, void *buf, uint64_t off_bytes, uint64_t len_bytes,
		   uint32_t gen)
{
	for (uint64_t i = 0; i < len_bytes; i += VD_SECTOR_SIZE) {
		vd_sector_fill((uint8_t *)buf + i, off_bytes + i, gen, m->seed);
	}
}

static bool is_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (p[i] != 0) {
			return false;
		}
	}
	return true;
}

bool vd_sector_matches(const struct vd_model *m, const void *buf, uint64_t off_bytes, uint32_t gen)
{
	uint8_t expect[VD_SECTOR_SIZE];

	switch (gen) {
	case VD_GEN_UNKNOWN:
		return true;
	case VD_GEN_NEVER:
		return !m->verify_initial || is_zero(buf, VD_SECTOR_SIZE);
	case VD_GEN_DISCARDED:
		return is_zero(buf, VD_SECTOR_SIZE);
	default:
		vd_sector_fill(expect, off_bytes, gen, m->seed);
		return memcmp(buf, expect, VD_SECTOR_SIZE) == 0;
	}
}

static void report(struct vd_model *m, const void *buf, uint64_t off_bytes, uint32_t gen)
{
	struct vd_sector_hdr got;

	if (__atomic_fetch_add(&m->reported, 1, __ATOMIC_RELAXED) >= MAX_REPORTED) {
		return;
	}
	memcpy(&got, buf, sizeof(got));
	vd_log(VD_LOG_ERR,
	       "verify: sector at byte 0x%" PRIx64 ": expected gen %" PRIu32 ", found "
	       "magic 0x%" PRIx64 " offset 0x%" PRIx64 " gen %" PRIu32 " seed %" PRIu64,
	       off_bytes, gen, got.magic, got.offset_bytes, got.gen, got.seed);
}

uint64_t vd_model_verify(struct vd_model *m, const void *buf, uint64_t off_bytes,
			 uint64_t len_bytes)
{
	uint64_t bad = 0;

	for (uint64_t i = 0; i < len_bytes; i += VD_SECTOR_SIZE) {
		const uint8_t *s = (const uint8_t *)buf + i;
		uint32_t gen = vd_model_get(m, off_bytes + i);

		if (!vd_sector_matches(m, s, off_bytes + i, gen)) {
			report(m, s, off_bytes + i, gen);
			bad++;
		}
	}
	return bad;
}
