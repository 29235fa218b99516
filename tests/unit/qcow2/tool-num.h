/*
 * tool-num.h: the command-line number of the qcow2 test tools (qcow2-tool,
 * qcow2-bench): decimal/hex/octal with an optional K/M/G/T suffix (powers
 * of 1024). A malformed number exits 2 with a message.
 */
#ifndef VD_TESTS_QCOW2_TOOL_NUM_H
#define VD_TESTS_QCOW2_TOOL_NUM_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static inline uint64_t tool_num(const char *s)
{
	char *end;
	uint64_t v;
	unsigned int shift = 0;

	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || end == s) {
		fprintf(stderr, "bad number '%s'\n", s);
		exit(2);
	}
	switch (*end) {
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
		break;
	}
	return v << shift;
}

#endif
