/*
 * fault: an io backend ("fault") that wraps another one and models a power
 * cut and I/O errors, for crash-consistency tests.
 *
 * Path syntax: "[INNER:]PATH". INNER is an io backend name ("sync",
 * "uring", "mem", ...); without it the inner backend is $VD_FAULT_INNER, or
 * "sync". The inner file is always opened with the page cache (O_DIRECT
 * does not matter for fault injection). Backing files that a driver opens
 * through the same backend get the default inner backend.
 *
 * Design: writes go through to the inner file, and before the first write
 * to a 512-byte sector since the last completed FLUSH the backend saves
 * that sector's old content (undo data). A completed FLUSH makes everything
 * durable and drops the undo data. vd_fault_cut_power() then restores, per
 * sector, the old content of all (VD_FAULT_CUT_ALL) or a random subset
 * (VD_FAULT_CUT_RANDOM) of the sectors written since the last flush, and
 * kills the file: every later request fails with -EIO and reaches nothing,
 * so closing the image cannot write anything either. Reopen the image to
 * see what survived.
 *
 * The power cut is modelled, not real: FLUSH is the durability point of the
 * model and does not fdatasync the inner file unless $VD_FAULT_SYNC=1
 * (the page cache holds what a reopen reads; tests stay fast).
 *
 * A full disk is modelled by a size cap (vd_fault_set_full): writes and
 * preallocation past it fail with -ENOSPC, as on a full filesystem.
 *
 * Memory is bounded: a write that would need more undo data than the limit
 * (vd_fault_set_limit, $VD_FAULT_LIMIT bytes, default 64 MiB) fails with
 * -ENOSPC and changes nothing.
 *
 * Thread-safe (one mutex per file); requests run synchronously on the
 * submitting thread and complete through the ioctx as usual.
 */
#ifndef VD_IO_FAULT_H
#define VD_IO_FAULT_H

#include <stdbool.h>
#include <stdint.h>
#include "io/io.h"

enum vd_fault_cut_mode {
	VD_FAULT_CUT_ALL,    /* every unflushed write is lost */
	VD_FAULT_CUT_RANDOM, /* each unflushed sector survives with probability 1/2 */
};

enum vd_fault_op {
	VD_FAULT_READ,
	VD_FAULT_WRITE, /* WRITE, DISCARD and WRITE_ZEROES */
	VD_FAULT_FLUSH,
};

#define VD_FAULT_DEFAULT_LIMIT_BYTES (64ull << 20)

/* The backend (registered in file.c as "fault"). */
extern const struct vd_io_backend vd_fault_backend;

/* True if f was opened with the fault backend. */
bool vd_fault_is_fault(const struct vd_file *f);

/*
 * The open fault file whose inner path is path (as given after any
 * "INNER:" prefix), or NULL. Borrowed: valid until that file is closed.
 */
struct vd_file *vd_fault_lookup(const char *path);

/*
 * Cut the power of f: restore undo data per mode (seed picks the subset),
 * then fail everything afterwards. Returns the number of sectors reverted,
 * or -errno (-EINVAL if f is not a fault file, -EIO if restoring failed).
 */
int64_t vd_fault_cut_power(struct vd_file *f, uint64_t seed, enum vd_fault_cut_mode mode);

/* vd_fault_cut_power() on every open fault file; returns the sum of sectors reverted. */
int64_t vd_fault_cut_power_all(uint64_t seed, enum vd_fault_cut_mode mode);

/*
 * Make the nth request of kind op from now on fail with -EIO (1: the next
 * one); 0 disarms. Each kind has one counter; it fires once.
 */
int vd_fault_inject_eio(struct vd_file *f, enum vd_fault_op op, uint64_t nth);

/*
 * Disk full: the filesystem holds f's inner file up to size_bytes. A
 * WRITE or WRITE_ZEROES ending past it, or a prealloc (fallocate) that
 * would, fails with -ENOSPC and changes nothing; inside it everything
 * works (overwrites, reads, FLUSH). 0: no limit (space returned).
 */
int vd_fault_set_full(struct vd_file *f, uint64_t size_bytes);

/* Maximum bytes of undo data (0: the default). */
int vd_fault_set_limit(struct vd_file *f, uint64_t limit_bytes);

/* Sectors written since the last completed flush (what a cut may lose). */
uint64_t vd_fault_unflushed_sectors(struct vd_file *f);

#endif
