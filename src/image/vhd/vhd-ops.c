/*
 * vhd-ops: info, block status and resize: control-thread operations on an
 * open image (resize: not being served).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "image/vhd/vhd.h"

static int64_t wr(struct vhd_state *s, const void *buf, uint64_t len, uint64_t off)
{
	return vd_file_rw_sync(s->file, VD_IO_WRITE, (void *)buf, len, off);
}

static const char *subformat_name(uint32_t type)
{
	switch (type) {
	case VHD_TYPE_FIXED:
		return "fixed";
	case VHD_TYPE_DYNAMIC:
		return "dynamic";
	default:
		return "differencing";
	}
}

int vhd_get_info(struct vd_image *img, struct vd_image_info *info)
{
	struct vhd_state *s = vhd_st(img);
	struct stat st;

	info->size_bytes = s->size_bytes;
	info->sector_bytes = VHD_SECTOR;
	info->physical_sector_bytes = VD_PAGE_SIZE;
	info->readonly = s->file->info.readonly;
	info->discard = !img->readonly;
	info->discard_granularity_bytes = VD_PAGE_SIZE;
	info->discard_alignment_bytes = 0;
	info->flush = true;
	if (s->file->fd >= 0 && fstat(s->file->fd, &st) == 0) {
		info->allocated_bytes = (uint64_t)st.st_blocks * 512u;
	}
	info->cluster_bytes = vhd_is_dynamic(s) ? s->block_size : 0;
	info->subformat = subformat_name(s->type);
	info->backing_file = s->parent_path;
	info->backing_format = img->backing ? img->backing->driver->name : NULL;
	info->corrupt = img->corrupt;
	return 0;
}

/* ---- block status (this layer only) ---- */

int vhd_block_status(struct vd_image *img, uint64_t offset_bytes, uint64_t max_bytes,
		     struct vd_block_status *out)
{
	struct vhd_state *s = vhd_st(img);
	uint64_t bs = s->block_size;
	uint32_t blk;
	uint64_t in, len, e;

	if (s->type == VHD_TYPE_FIXED) {
		out->flags = VD_BLOCK_DATA | VD_BLOCK_ALLOCATED;
		out->len_bytes = max_bytes;
		out->host_offset_bytes = offset_bytes;
		return 0;
	}
	blk = (uint32_t)(offset_bytes / bs);
	in = offset_bytes % bs;
	len = VD_MIN(max_bytes, bs - in);
	e = vhd_bat_get(s, blk);
	out->host_offset_bytes = UINT64_MAX;
	if (e == VHD_BAT_UNUSED) {
		/* extend over following unallocated blocks */
		while (len < max_bytes && blk + 1 < s->nr_blocks &&
		       vhd_bat_get(s, blk + 1) == VHD_BAT_UNUSED) {
			blk++;
			len = VD_MIN(max_bytes, len + bs);
		}
		/*
		 * A dynamic disk has no parent: its empty blocks are zeroes this
		 * layer decides (qemu's vpc reports them present and zero too).
		 * A differencing disk's empty blocks fall through to the parent.
		 */
		out->flags = s->type == VHD_TYPE_DIFF ? 0 : VD_BLOCK_ZERO | VD_BLOCK_ALLOCATED;
		out->len_bytes = len;
		return 0;
	}
	if (s->bitmaps[blk] != s->full_bitmap) {
		const uint8_t *map = s->bitmaps[blk];
		uint64_t sec = in / VHD_SECTOR, n = len / VHD_SECTOR, k;
		bool set = vhd_bit_test(map, sec);

		for (k = 1; k < n && vhd_bit_test(map, sec + k) == set; k++) {
		}
		len = k * VHD_SECTOR;
		if (!set) {
			/* clear bits: the parent's data, or zeroes in a dynamic disk */
			out->flags =
				s->type == VHD_TYPE_DIFF ? 0 : VD_BLOCK_ZERO | VD_BLOCK_ALLOCATED;
			out->len_bytes = len;
			return 0;
		}
	}
	out->flags = VD_BLOCK_DATA | VD_BLOCK_ALLOCATED;
	out->len_bytes = len;
	out->host_offset_bytes = e * VHD_SECTOR + s->bitmap_bytes + in;
	return 0;
}

/* ---- resize ---- */

int vhd_resize(struct vd_image *img, uint64_t size_bytes, struct vd_err *err)
{
	struct vhd_state *s = vhd_st(img);
	struct vhd_footer old = s->footer;
	uint8_t **nb;
	uint8_t *buf;
	uint32_t i;
	int ret = 0;

	if (size_bytes / VHD_SECTOR > VHD_MAX_SECTORS) {
		return vd_err_set(err, EFBIG, "%s: VHD images are limited to 2040 GiB", img->path);
	}
	if (size_bytes < s->size_bytes) {
		return vd_err_set(err, EOPNOTSUPP, "%s: shrinking a VHD is not supported",
				  img->path);
	}
	if (vhd_is_dynamic(s) &&
	    size_bytes > (uint64_t)s->header.max_table_entries * s->block_size) {
		return vd_err_set(err, ENOSPC,
				  "%s: the BAT has room for %u blocks of %u bytes (%" PRIu64
				  " bytes); a larger disk needs a new image",
				  img->path, s->header.max_table_entries, s->block_size,
				  (uint64_t)s->header.max_table_entries * s->block_size);
	}
	buf = aligned_alloc(VD_PAGE_SIZE, VD_PAGE_SIZE);
	if (!buf) {
		return vd_err_set(err, ENOMEM, "out of memory");
	}
	s->footer.current_size = size_bytes;
	vhd_chs(size_bytes, &s->footer.cyls, &s->footer.heads, &s->footer.secs);
	if (vhd_virtual_size(&s->footer) != size_bytes) {
		/* a creator whose size qemu takes from CHS: the max geometry forces current_size */
		s->footer.cyls = 65535;
		s->footer.heads = 16;
		s->footer.secs = 255;
	}
	if (s->type == VHD_TYPE_FIXED) {
		/* new footer first (the file grows), then the old one becomes zeroed data */
		if (vhd_write_footer_at(s, buf, size_bytes) < 0 ||
		    vd_file_rw_sync(s->file, VD_IO_FLUSH, NULL, 0, 0) < 0) {
			ret = vd_err_set(err, EIO, "%s: writing the new footer", img->path);
			goto err_restore;
		}
		memset(buf, 0, 512);
		if (size_bytes != s->data_end && wr(s, buf, 512, s->data_end) != 512) {
			ret = vd_err_set(err, EIO, "%s: clearing the old footer", img->path);
			goto out;
		}
		if (s->file_bytes > size_bytes + 512 &&
		    vd_file_resize(s->file, size_bytes + 512) < 0) {
			/* a size below the old data area (CHS rounding): the footer ends the file */
			ret = vd_err_set(err, EIO, "%s: truncating after the new footer",
					 img->path);
			goto out;
		}
		s->file_bytes = size_bytes + 512;
		s->data_end = size_bytes;
		s->footer_bytes = 512;
	} else {
		uint32_t old_blocks = s->nr_blocks;
		uint32_t new_blocks =
			(uint32_t)VD_DIV_ROUND_UP(size_bytes, (uint64_t)s->block_size);

		nb = realloc(s->bitmaps, sizeof(*nb) * new_blocks);
		if (!nb) {
			ret = vd_err_set(err, ENOMEM, "out of memory");
			goto err_restore;
		}
		s->bitmaps = nb;
		for (i = old_blocks; i < new_blocks; i++) {
			/* reserved BAT entries are unused; a used one gets its bitmap */
			nb[i] = NULL;
			if (s->bat[i] != VHD_BAT_UNUSED && vhd_load_bitmap(s, i) < 0) {
				ret = vd_err_set(err, EIO, "%s: reading the sector bitmaps",
						 img->path);
				goto err_restore;
			}
		}
		if (vhd_write_footer_at(s, buf, 0) < 0 ||
		    vd_file_rw_sync(s->file, VD_IO_FLUSH, NULL, 0, 0) < 0 ||
		    vhd_write_footer_at(s, buf, s->data_end) < 0) {
			ret = vd_err_set(err, EIO, "%s: writing the footer", img->path);
			goto out;
		}
		s->nr_blocks = new_blocks;
	}
	vd_file_rw_sync(s->file, VD_IO_FLUSH, NULL, 0, 0);
	s->size_bytes = size_bytes;
out:
	free(buf);
	return ret;
err_restore:
	s->footer = old;
	free(buf);
	return ret;
}
