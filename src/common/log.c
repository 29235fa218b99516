#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char g_ident[64] = "vdisk";
static enum vd_log_level g_max_level = VD_LOG_INFO;
static const char *g_debug;
static int g_debug_loaded;

static const char *const g_level_names[] = { "error", "warning", "notice", "info", "debug" };

void vd_log_set_ident(const char *ident)
{
	snprintf(g_ident, sizeof(g_ident), "%s", ident);
}

void vd_log_set_level(enum vd_log_level max_level)
{
	g_max_level = max_level;
}

bool vd_debug_enabled(const char *component)
{
	if (!__atomic_load_n(&g_debug_loaded, __ATOMIC_ACQUIRE)) {
		g_debug = getenv("VDISK_DEBUG");
		__atomic_store_n(&g_debug_loaded, 1, __ATOMIC_RELEASE);
	}
	if (g_debug == NULL) {
		return false;
	}
	if (strcmp(g_debug, "all") == 0) {
		return true;
	}
	size_t n = strlen(component);
	for (const char *p = g_debug; (p = strstr(p, component)) != NULL; p += n) {
		bool start = p == g_debug || p[-1] == ',';
		bool end = p[n] == '\0' || p[n] == ',';
		if (start && end) {
			return true;
		}
	}
	return false;
}

uint64_t vd_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void vd_log(enum vd_log_level level, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	int n;

	if (level > g_max_level && level != VD_LOG_DEBUG) {
		return;
	}
	n = snprintf(buf, sizeof(buf), "%s[%d]: %s: ", g_ident, (int)getpid(),
		     g_level_names[level]);
	if (n < 0 || (size_t)n >= sizeof(buf)) {
		return;
	}
	va_start(ap, fmt);
	int m = vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (m < 0) {
		return;
	}
	size_t len = strlen(buf);
	buf[len++] = '\n';
	/* One write per line so lines from several threads do not interleave. */
	ssize_t w = write(STDERR_FILENO, buf, len);
	(void)w;
}

bool vd_ratelimit_ok(struct vd_ratelimit *rl)
{
	uint64_t now = vd_now_ns();

	if (now - rl->window_start_ns > 1000000000ull) {
		if (rl->suppressed) {
			vd_log(VD_LOG_WARN, "%u similar messages suppressed", rl->suppressed);
		}
		rl->window_start_ns = now;
		rl->count = 0;
		rl->suppressed = 0;
	}
	if (rl->count < 10) {
		rl->count++;
		return true;
	}
	rl->suppressed++;
	return false;
}
