/*
 * Strict parsers for the CLI and for names found in xenstore. No strtoul:
 * it accepts spaces, signs and "0x"; we want digits and nothing else.
 */
#include "ctl/ctl.h"

#include <errno.h>
#include <string.h>
#include <xenstore.h>
#include <xen/io/xenbus.h>

int vd_ctl_parse_u64(const char *s, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;

	if (s == NULL || *s == '\0') {
		return -EINVAL;
	}
	for (const char *p = s; *p != '\0'; p++) {
		if (*p < '0' || *p > '9') {
			return -EINVAL;
		}
	}
	for (const char *p = s; *p != '\0'; p++) {
		unsigned int d = (unsigned int)(*p - '0');

		if (v > (UINT64_MAX - d) / 10) {
			return -ERANGE;
		}
		v = v * 10 + d;
	}
	if (v > max) {
		return -ERANGE;
	}
	*out = v;
	return 0;
}

int vd_ctl_parse_canon_u64(const char *s, uint64_t max, uint64_t *out)
{
	if (s == NULL || (s[0] == '0' && s[1] != '\0')) {
		return -EINVAL;
	}
	return vd_ctl_parse_u64(s, max, out);
}

int vd_ctl_parse_size(const char *s, uint64_t *out)
{
	char digits[32];
	size_t n = 0;
	unsigned int shift = 0;
	uint64_t v;
	int r;

	if (s == NULL) {
		return -EINVAL;
	}
	while (s[n] >= '0' && s[n] <= '9') {
		n++;
	}
	if (n == 0) {
		return -EINVAL;
	}
	if (n >= sizeof(digits)) {
		return -ERANGE; /* more than 20 digits cannot fit */
	}
	memcpy(digits, s, n);
	digits[n] = '\0';
	r = vd_ctl_parse_u64(digits, UINT64_MAX, &v);
	if (r < 0) {
		return r;
	}
	const char *suf = s + n;
	if (*suf != '\0') {
		switch (*suf) {
		case 'k':
		case 'K':
			shift = 10;
			break;
		case 'm':
		case 'M':
			shift = 20;
			break;
		case 'g':
		case 'G':
			shift = 30;
			break;
		case 't':
		case 'T':
			shift = 40;
			break;
		default:
			return -EINVAL;
		}
		suf++;
		if (strcmp(suf, "") != 0 && strcmp(suf, "B") != 0 && strcmp(suf, "iB") != 0 &&
		    strcmp(suf, "b") != 0 && strcmp(suf, "ib") != 0) {
			return -EINVAL;
		}
	}
	if (shift != 0 && v > (UINT64_MAX >> shift)) {
		return -ERANGE;
	}
	*out = v << shift;
	return 0;
}

/* Bijective base 26: a=0 .. z=25, aa=26 ... Bounded by max. */
static int parse_disk_letters(const char *s, size_t len, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;

	if (len == 0) {
		return -EINVAL;
	}
	for (size_t i = 0; i < len; i++) {
		if (s[i] < 'a' || s[i] > 'z') {
			return -EINVAL;
		}
		v = v * 26 + (uint64_t)(s[i] - 'a' + 1);
		if (v > max + 1) {
			return -ERANGE;
		}
	}
	*out = v - 1;
	return 0;
}

/* Optional partition number after the disk letters: "" = 0, else 1..max. */
static int parse_part(const char *s, uint64_t max, uint64_t *out)
{
	if (*s == '\0') {
		*out = 0;
		return 0;
	}
	int r = vd_ctl_parse_canon_u64(s, max, out);
	if (r < 0) {
		return r;
	}
	return *out == 0 ? -EINVAL : 0;
}

int vd_ctl_parse_vdev(const char *s, uint32_t *out)
{
	uint64_t disk, part, v;
	size_t nl;
	int r;

	if (s == NULL || *s == '\0') {
		return -EINVAL;
	}
	if (s[0] >= '0' && s[0] <= '9') {
		r = vd_ctl_parse_u64(s, VD_CTL_DEVID_MAX, &v);
		if (r < 0) {
			return r;
		}
		*out = (uint32_t)v;
		return 0;
	}
	if (strncmp(s, "xvd", 3) == 0) {
		s += 3;
		nl = strspn(s, "abcdefghijklmnopqrstuvwxyz");
		r = parse_disk_letters(s, nl, (1u << 20) - 1, &disk);
		if (r < 0) {
			return r;
		}
		r = parse_part(s + nl, 255, &part);
		if (r < 0) {
			return r;
		}
		if (disk < 16 && part < 16) {
			*out = (uint32_t)((202u << 8) | (disk << 4) | part);
		} else {
			*out = (uint32_t)((1u << 28) | (disk << 8) | part);
		}
		return 0;
	}
	if (strncmp(s, "hd", 2) == 0) {
		static const uint32_t base[4] = { 3u << 8, (3u << 8) | 64, 22u << 8,
						  (22u << 8) | 64 };

		s += 2;
		if (*s < 'a' || *s > 'd') {
			return -EINVAL;
		}
		disk = (uint64_t)(*s - 'a');
		r = parse_part(s + 1, 63, &part);
		if (r < 0) {
			return r;
		}
		*out = base[disk] | (uint32_t)part;
		return 0;
	}
	if (strncmp(s, "sd", 2) == 0) {
		s += 2;
		if (*s < 'a' || *s > 'p') {
			return -EINVAL;
		}
		disk = (uint64_t)(*s - 'a');
		r = parse_part(s + 1, 15, &part);
		if (r < 0) {
			return r;
		}
		*out = (uint32_t)((8u << 8) | (disk << 4) | part);
		return 0;
	}
	return -EINVAL;
}

int vd_ctl_parse_domid(const char *s, uint16_t *out)
{
	uint64_t v;
	int r = vd_ctl_parse_u64(s, VD_CTL_DOMID_MAX, &v);

	if (r < 0) {
		return r;
	}
	if (v == 0) {
		return -ERANGE;
	}
	*out = (uint16_t)v;
	return 0;
}

int vd_ctl_parse_vbd_names(const char *domid_name, const char *devid_name, uint16_t *domid,
			   uint32_t *devid)
{
	uint64_t d, v;
	int r;

	r = vd_ctl_parse_canon_u64(domid_name, VD_CTL_DOMID_MAX, &d);
	if (r < 0) {
		return r;
	}
	if (d == 0) {
		return -ERANGE;
	}
	r = vd_ctl_parse_canon_u64(devid_name, VD_CTL_DEVID_MAX, &v);
	if (r < 0) {
		return r;
	}
	*domid = (uint16_t)d;
	*devid = (uint32_t)v;
	return 0;
}

const char *vd_ctl_state_name(int state)
{
	switch (state) {
	case XenbusStateUnknown:
		return "Unknown";
	case XenbusStateInitialising:
		return "Initialising";
	case XenbusStateInitWait:
		return "InitWait";
	case XenbusStateInitialised:
		return "Initialised";
	case XenbusStateConnected:
		return "Connected";
	case XenbusStateClosing:
		return "Closing";
	case XenbusStateClosed:
		return "Closed";
	case XenbusStateReconfiguring:
		return "Reconfiguring";
	case XenbusStateReconfigured:
		return "Reconfigured";
	default:
		return "?";
	}
}

void vd_ctl_json_string(FILE *f, const char *s)
{
	(void)fputc('"', f);
	for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
		switch (*p) {
		case '"':
			(void)fputs("\\\"", f);
			break;
		case '\\':
			(void)fputs("\\\\", f);
			break;
		case '\n':
			(void)fputs("\\n", f);
			break;
		case '\t':
			(void)fputs("\\t", f);
			break;
		case '\r':
			(void)fputs("\\r", f);
			break;
		default:
			if (*p < 0x20 || *p >= 0x7f) {
				/* bytes >= 0x80 as Latin-1: always valid JSON */
				fprintf(f, "\\u%04x", *p);
			} else {
				(void)fputc(*p, f);
			}
			break;
		}
	}
	(void)fputc('"', f);
}
