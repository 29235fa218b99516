/*
 * Logging: vd_log(level, fmt, ...) to stderr (and syslog when enabled).
 * VD_DEBUG(component, ...) prints only when the component is switched on
 * at run time with VDISK_DEBUG=comp1,comp2 (or "all").
 * vd_log_ratelimited() is for messages a guest can trigger: at most a burst
 * per second per call site.
 */
#ifndef VD_COMMON_LOG_H
#define VD_COMMON_LOG_H

#include <stdbool.h>
#include "common/compiler.h"

enum vd_log_level { VD_LOG_ERR, VD_LOG_WARN, VD_LOG_NOTICE, VD_LOG_INFO, VD_LOG_DEBUG };

/* Prefix every line with this process's role, e.g. "vdiskd" or "worker d5/51712". */
void vd_log_set_ident(const char *ident);
void vd_log_set_level(enum vd_log_level max_level);
void vd_log(enum vd_log_level level, const char *fmt, ...) VD_PRINTF(2, 3);
bool vd_debug_enabled(const char *component);

struct vd_ratelimit {
	uint64_t window_start_ns;
	unsigned int count;
	unsigned int suppressed;
};
/* True if a message may be printed now (burst of 10 per second). */
bool vd_ratelimit_ok(struct vd_ratelimit *rl);

#define vd_log_ratelimited(level, ...)                   \
	do {                                             \
		static __thread struct vd_ratelimit rl_; \
		if (vd_ratelimit_ok(&rl_)) {             \
			vd_log(level, __VA_ARGS__);      \
		}                                        \
	} while (0)

#define VD_DEBUG(comp, ...)                                \
	do {                                               \
		if (vd_unlikely(vd_debug_enabled(comp))) { \
			vd_log(VD_LOG_DEBUG, __VA_ARGS__); \
		}                                          \
	} while (0)

uint64_t vd_now_ns(void); /* CLOCK_MONOTONIC */

#endif
