/*
 * tool-num.h: the command-line number of the qcow2 test tools (qcow2-tool,
 * qcow2-bench): a size as the CLI takes it (vd_ctl_parse_size: decimal
 * with an optional K/M/G/T suffix, powers of 1024), or 0x-prefixed hex for
 * pattern bytes. A malformed number exits 2 with a message.
 */
#ifndef VD_TESTS_QCOW2_TOOL_NUM_H
#define VD_TESTS_QCOW2_TOOL_NUM_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "ctl/ctl.h"

static inline uint64_t tool_num(const char *s)
{
	uint64_t v = 0;
	int r;

	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		char *end;

		errno = 0;
		v = strtoull(s + 2, &end, 16);
		r = errno || end == s + 2 || *end != '\0' ? -EINVAL : 0;
	} else {
		r = vd_ctl_parse_size(s, &v);
	}
	if (r < 0) {
		fprintf(stderr, "bad number '%s'\n", s);
		exit(2);
	}
	return v;
}

#endif
