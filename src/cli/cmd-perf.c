/*
 * vdisk stats: the run-time counters of one VBD, from its worker's stats
 * socket ($VDISK_RUN_DIR/vbd-DOMID-DEVID.sock; see src/ctl/worker.c for the
 * reply format). Two snapshots --interval seconds apart give rates.
 *
 * vdisk bench: points at bench/run.sh (the benchmark is a script: it drives
 * fio, the simulated hypervisor, vdiskd and simguests).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "ctl/ctl.h"
#include "queue/queue.h"

#define REPLY_MAX (1u << 20)

struct snap {
	uint64_t cpu_user_us, cpu_sys_us;
	uint64_t poll_us, poll_idle_pct;
	unsigned int nr_queues;
	struct vd_queue_stats q[VD_BLKIF_MAX_QUEUES];
	bool complete; /* saw "end" */
};

static int connect_path(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		return -ENAMETOOLONG;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		return -errno;
	}
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;

		close(fd);
		return -e;
	}
	return fd;
}

/* The worker's socket: $VDISK_RUN_DIR, else /run/vdisk, else the sim's run dir. */
static int connect_worker(uint16_t domid, uint32_t devid, char *path, size_t len)
{
	const char *env = getenv("VDISK_RUN_DIR");
	const char *sim = getenv("VDISK_SIM_DIR");
	char simrun[256];
	const char *dirs[3];
	unsigned int n = 0;
	int fd = -ENOENT;

	if (env != NULL && env[0] != '\0') {
		dirs[n++] = env;
	} else {
		dirs[n++] = "/run/vdisk";
		snprintf(simrun, sizeof(simrun), "%s/run",
			 sim != NULL && sim[0] != '\0' ? sim : "/run/vdisk-sim");
		dirs[n++] = simrun;
	}
	for (unsigned int i = 0; i < n; i++) {
		snprintf(path, len, "%s/vbd-%u-%u.sock", dirs[i], domid, devid);
		fd = connect_path(path);
		if (fd >= 0) {
			return fd;
		}
	}
	return fd;
}

static int parse_reply(char *buf, struct snap *s)
{
	int cur = -1;
	char *next;

	memset(s, 0, sizeof(*s));
	for (char *line = buf; line != NULL && *line != '\0'; line = next) {
		uint64_t v;
		char *nl = strchr(line, '\n');
		char *sp;
		const char *val;

		next = nl != NULL ? nl + 1 : NULL;
		if (nl != NULL) {
			*nl = '\0';
		}
		sp = strchr(line, ' ');
		val = sp != NULL ? sp + 1 : "";

		if (strcmp(line, "end") == 0) {
			s->complete = true;
			break;
		}
		if (sp == NULL) {
			continue;
		}
		*sp = '\0';
		if (strcmp(line, "queue") == 0) {
			if (vd_ctl_parse_u64(val, VD_BLKIF_MAX_QUEUES - 1, &v) < 0) {
				return -EINVAL;
			}
			cur = (int)v;
			s->nr_queues = VD_MAX(s->nr_queues, (unsigned int)v + 1);
			continue;
		}
		if (cur >= 0) {
			*sp = ' ';
			(void)vd_queue_stats_parse_line(&s->q[cur], line); /* unknown: skip */
			continue;
		}
		if (vd_ctl_parse_u64(val, UINT64_MAX, &v) < 0) {
			continue;
		}
		if (strcmp(line, "cpu_user_us") == 0) {
			s->cpu_user_us = v;
		} else if (strcmp(line, "cpu_sys_us") == 0) {
			s->cpu_sys_us = v;
		} else if (strcmp(line, "polling_duration_us") == 0) {
			s->poll_us = v;
		} else if (strcmp(line, "polling_idle_threshold") == 0) {
			s->poll_idle_pct = v;
		}
	}
	return s->complete ? 0 : -EPROTO;
}

static int fetch(uint16_t domid, uint32_t devid, struct snap *s)
{
	char path[300];
	char *buf;
	size_t len = 0;
	int fd = connect_worker(domid, devid, path, sizeof(path));
	int rc;

	if (fd < 0) {
		fprintf(stderr,
			"vdisk stats: no worker socket for d%u/%u (%s: %s); is the VBD "
			"served, and VDISK_RUN_DIR the daemon's?\n",
			domid, devid, path, strerror(-fd));
		return fd;
	}
	buf = malloc(REPLY_MAX + 1);
	if (buf == NULL) {
		close(fd);
		return -ENOMEM;
	}
	for (;;) {
		ssize_t n = read(fd, buf + len, REPLY_MAX - len);

		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n <= 0) {
			break;
		}
		len += (size_t)n;
		if (len == REPLY_MAX) {
			break;
		}
	}
	close(fd);
	buf[len] = '\0';
	rc = parse_reply(buf, s);
	free(buf);
	if (rc < 0) {
		fprintf(stderr, "vdisk stats: incomplete reply from %s\n", path);
	}
	return rc;
}

static uint64_t d(uint64_t a, uint64_t b)
{
	return a >= b ? a - b : 0;
}

/* Rates over the interval between a and b (b later); a NULL: cumulative. */
static void show_queue(const struct vd_queue_stats *b, const struct vd_queue_stats *a, double secs,
		       unsigned int idx, bool json, bool first)
{
	struct vd_queue_stats z;
	uint64_t lat[VD_QUEUE_LAT_BUCKETS];
	uint64_t reqs, batches, breqs, bmax = 0;
	uint64_t pg_hits, pg_lookups;

	if (a == NULL) {
		memset(&z, 0, sizeof(z));
		a = &z;
	}
	for (unsigned int i = 0; i < VD_QUEUE_LAT_BUCKETS; i++) {
		lat[i] = d(b->lat_hist[i], a->lat_hist[i]);
	}
	for (unsigned int i = 0; i < VD_QUEUE_BATCH_BUCKETS; i++) {
		if (d(b->batch_hist[i], a->batch_hist[i]) != 0) {
			bmax = 1ull << i;
		}
	}
	reqs = d(b->reqs, a->reqs);
	batches = d(b->batches, a->batches);
	breqs = d(b->batch_reqs, a->batch_reqs);
	/* Every persistent-grant lookup ends in one of these four. */
	pg_hits = d(b->pgrant_hits, a->pgrant_hits);
	pg_lookups = pg_hits + d(b->pgrant_maps, a->pgrant_maps) +
		     d(b->pgrant_map_fails, a->pgrant_map_fails) +
		     d(b->pgrant_full, a->pgrant_full);
	if (json) {
		printf("%s{\"queue\": %u, \"iops\": %.0f, \"read_mbps\": %.2f, \"write_mbps\": %.2f, "
		       "\"reqs\": %" PRIu64 ", \"errors\": %" PRIu64 ", \"invalid\": %" PRIu64
		       ", \"polls_found\": %" PRIu64 ", \"polls_empty\": %" PRIu64
		       ", \"poll_windows\": %" PRIu64 ", \"poll_idle_stops\": %" PRIu64
		       ", \"sleeps\": %" PRIu64 ", \"evtchn_kicks\": %" PRIu64
		       ", \"notifies\": %" PRIu64 ", \"batches\": %" PRIu64
		       ", \"batch_avg\": %.2f, \"batch_max_bucket\": %" PRIu64
		       ", \"grant_copy_calls\": %" PRIu64 ", \"grant_copy_segs\": %" PRIu64
		       ", \"pool_stalls\": %" PRIu64 ", \"lat_p50_us\": %" PRIu64
		       ", \"lat_p90_us\": %" PRIu64 ", \"lat_p99_us\": %" PRIu64
		       ", \"lat_p999_us\": %" PRIu64 ", \"pgrant_hits\": %" PRIu64
		       ", \"pgrant_maps\": %" PRIu64 ", \"pgrant_map_fails\": %" PRIu64
		       ", \"pgrant_full\": %" PRIu64 ", \"pgrant_evictions\": %" PRIu64
		       ", \"zero_copy_reqs\": %" PRIu64 "}",
		       first ? "" : ", ", idx, (double)reqs / secs,
		       (double)d(b->bytes_read, a->bytes_read) / secs / 1e6,
		       (double)d(b->bytes_written, a->bytes_written) / secs / 1e6, reqs,
		       d(b->errors, a->errors), d(b->invalid, a->invalid),
		       d(b->wakeups, a->wakeups), d(b->polls_empty, a->polls_empty),
		       d(b->poll_windows, a->poll_windows),
		       d(b->poll_idle_stops, a->poll_idle_stops), d(b->sleeps, a->sleeps),
		       d(b->evtchn_kicks, a->evtchn_kicks), d(b->notifies, a->notifies), batches,
		       batches ? (double)breqs / (double)batches : 0.0, bmax,
		       d(b->grant_copy_calls, a->grant_copy_calls),
		       d(b->grant_copy_segs, a->grant_copy_segs), d(b->pool_stalls, a->pool_stalls),
		       vd_queue_lat_percentile(lat, 50), vd_queue_lat_percentile(lat, 90),
		       vd_queue_lat_percentile(lat, 99), vd_queue_lat_percentile(lat, 99.9),
		       pg_hits, d(b->pgrant_maps, a->pgrant_maps),
		       d(b->pgrant_map_fails, a->pgrant_map_fails),
		       d(b->pgrant_full, a->pgrant_full),
		       d(b->pgrant_evictions, a->pgrant_evictions),
		       d(b->zero_copy_reqs, a->zero_copy_reqs));
		return;
	}
	printf("%5u %9.0f %8.2f %8.2f %10" PRIu64 " %10" PRIu64 " %10" PRIu64 " %8" PRIu64
	       " %8" PRIu64 " %6.1f %5" PRIu64 " %6.1f %10" PRIu64 "  %" PRIu64 "/%" PRIu64
	       "/%" PRIu64 "/%" PRIu64 "\n",
	       idx, (double)reqs / secs, (double)d(b->bytes_read, a->bytes_read) / secs / 1e6,
	       (double)d(b->bytes_written, a->bytes_written) / secs / 1e6, reqs,
	       d(b->wakeups, a->wakeups), d(b->polls_empty, a->polls_empty),
	       d(b->sleeps, a->sleeps), d(b->evtchn_kicks, a->evtchn_kicks),
	       batches ? (double)breqs / (double)batches : 0.0, bmax,
	       pg_lookups ? 100.0 * (double)pg_hits / (double)pg_lookups : 0.0,
	       d(b->zero_copy_reqs, a->zero_copy_reqs), vd_queue_lat_percentile(lat, 50),
	       vd_queue_lat_percentile(lat, 90), vd_queue_lat_percentile(lat, 99),
	       vd_queue_lat_percentile(lat, 99.9));
}

static void stats_usage(FILE *f)
{
	fprintf(f, "usage: vdisk stats DOMID VDEV [--interval SECONDS] [--json]\n"
		   "  per-queue IOPS, MB/s, requests, polls that found work / empty polls,\n"
		   "  sleeps, event channel kicks, batch sizes, persistent-grant hit rate,\n"
		   "  zero-copy requests and latency percentiles (us),\n"
		   "  over SECONDS (default 1; 0: since the queues started).\n");
}

int vd_cli_stats(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "interval", required_argument, NULL, 'i' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct snap *s = calloc(2, sizeof(*s));
	uint64_t interval = 1;
	bool json = false;
	uint16_t domid;
	uint32_t devid;
	double secs = 1.0;
	uint64_t t0, t1;
	struct timespec ts;
	int c, rc = 1;

	if (s == NULL) {
		return 1;
	}
	optind = 0;
	while ((c = getopt_long(argc, argv, "i:jh", lo, NULL)) != -1) {
		switch (c) {
		case 'i':
			if (vd_ctl_parse_u64(optarg, 3600, &interval) < 0) {
				fprintf(stderr, "vdisk stats: bad --interval '%s' (0..3600)\n",
					optarg);
				rc = 2;
				goto out;
			}
			break;
		case 'j':
			json = true;
			break;
		case 'h':
			stats_usage(stdout);
			rc = 0;
			goto out;
		default:
			stats_usage(stderr);
			rc = 2;
			goto out;
		}
	}
	if (argc - optind != 2 || vd_ctl_parse_domid(argv[optind], &domid) < 0 ||
	    vd_ctl_parse_vdev(argv[optind + 1], &devid) < 0) {
		stats_usage(stderr);
		rc = 2;
		goto out;
	}
	clock_gettime(CLOCK_MONOTONIC, &ts);
	t0 = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	if (fetch(domid, devid, &s[0]) < 0) {
		goto out;
	}
	if (interval > 0) {
		sleep((unsigned int)interval);
		if (fetch(domid, devid, &s[1]) < 0) {
			goto out;
		}
		clock_gettime(CLOCK_MONOTONIC, &ts);
		t1 = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
		secs = (double)(t1 - t0) / 1e9;
	}
	{
		const struct snap *b = interval > 0 ? &s[1] : &s[0];
		const struct snap *a = interval > 0 ? &s[0] : NULL;
		/* A reconnect in between resets the queues: then show cumulative. */
		bool rates = a != NULL && a->nr_queues == b->nr_queues;
		uint64_t cpu = b->cpu_user_us + b->cpu_sys_us;
		uint64_t cpu_a = a != NULL ? a->cpu_user_us + a->cpu_sys_us : 0;

		if (json) {
			printf("{\"domid\": %u, \"vdev\": %u, \"interval_s\": %.3f, "
			       "\"polling_duration_us\": %" PRIu64
			       ", \"polling_idle_threshold\": %" PRIu64
			       ", \"worker_cpu_us\": %" PRIu64 ", \"queues\": [",
			       domid, devid, rates ? secs : 0.0, b->poll_us, b->poll_idle_pct,
			       rates ? d(cpu, cpu_a) : cpu);
		} else {
			printf("d%u/%u: %u queue(s), polling %" PRIu64
			       " us while host idle >= %" PRIu64 "%%, worker CPU %.3f s %s\n",
			       domid, devid, b->nr_queues, b->poll_us, b->poll_idle_pct,
			       (double)(rates ? d(cpu, cpu_a) : cpu) / 1e6,
			       rates ? "over the interval" : "since start");
			printf("%5s %9s %8s %8s %10s %10s %10s %8s %8s %6s %5s %6s %10s  %s\n",
			       "queue", "IOPS", "rd MB/s", "wr MB/s", "reqs", "polls+", "polls-",
			       "sleeps", "kicks", "batch", "max", "pgrnt%", "zerocopy",
			       "lat p50/p90/p99/p99.9 us");
		}
		for (unsigned int i = 0; i < b->nr_queues; i++) {
			show_queue(&b->q[i], rates ? &a->q[i] : NULL, rates ? secs : 1.0, i, json,
				   i == 0);
		}
		if (json) {
			printf("]}\n");
		} else if (!rates) {
			printf("(IOPS and MB/s above are totals: no interval)\n");
		}
	}
	rc = 0;
out:
	free(s);
	return rc;
}

int vd_cli_bench(int argc, char **argv)
{
	fprintf(stderr, "vdisk bench: run bench/run.sh from the source tree (BENCH_QUICK=1 for a "
			"short run); see bench/README.md\n");
	return 1;
}
