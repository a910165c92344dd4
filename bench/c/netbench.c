/*
 * netbench: cross-node message timing with stock liblam (bench/multinode.py).
 * Built with mpicc.lam; starts as every LAM tool does (kinit(PRCMD)).
 *
 *   netbench pong EVENT SIZE COUNT
 *       COUNT times: nrecv SIZE bytes on EVENT, nsend them back to the node
 *       named in the message's nh_data[3], on EVENT+1.
 *   netbench ping NODE EVENT SIZE COUNT
 *       COUNT round trips with the pong on NODE; prints
 *       "RT n=COUNT median_us=... mean_us=..." (the first tenth, a warm-up,
 *       not counted).
 *   netbench sink EVENT SIZE COUNT
 *       COUNT messages of SIZE bytes on EVENT, then one 4-byte ack to the
 *       sender's node on EVENT+1.
 *   netbench stream NODE EVENT SIZE COUNT
 *       COUNT messages to the sink on NODE, then waits for its ack; prints
 *       "STREAM bytes=... seconds=... mb_s=..." (MB = 10^6 bytes).
 *
 * Messages above MAXNMSGLEN go as several packets (liblam's nsend/nrecv);
 * nh_data[0] is liblam's, so the sender's node rides in nh_data[3]. The
 * receiver checks the length and the first and last bytes of each message.
 * "OK" last on success, "FAIL ..." and exit status 2 otherwise.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lam_config.h>
#include <net.h>
#include <priority.h>
#include <typical.h>

static void die(const char *what)
{
	int e = errno;
	printf("FAIL %s errno=%d (%s)\n", what, e, strerror(e));
	fflush(stdout);
	exit(2);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void xsend(int node, int event, char *buf, long size)
{
	struct nmsg n;
	memset(&n, 0, sizeof(n));
	n.nh_node = node;
	n.nh_event = event;
	n.nh_type = 1;
	n.nh_length = (int4) size;
	n.nh_data[3] = getnodeid();
	n.nh_msg = buf;
	if (nsend(&n)) die("nsend");
}

static int xrecv(int event, char *buf, long size)
{
	struct nmsg n;
	memset(&n, 0, sizeof(n));
	n.nh_event = event;
	n.nh_type = 0;
	n.nh_length = (int4) size;
	n.nh_msg = buf;
	if (nrecv(&n)) die("nrecv");
	if (n.nh_length != size) {
		printf("FAIL length got=%d want=%ld\n", (int) n.nh_length, size);
		exit(2);
	}
	if (size && (buf[0] != 'a' || buf[size - 1] != 'z')) {
		printf("FAIL bytes\n");
		exit(2);
	}
	return n.nh_data[3];
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *) a, y = *(const double *) b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	int node = 0, event, count, i, src = 0, warm;
	long size;
	char *buf;
	const char *mode;
	double *t, t0, sum = 0;

	if (argc < 5) return 64;
	mode = argv[1];
	if (!strcmp(mode, "ping") || !strcmp(mode, "stream")) {
		if (argc < 6) return 64;
		node = atoi(argv[2]);
		argv++;
	}
	event = atoi(argv[2]);
	size = atol(argv[3]);
	count = atoi(argv[4]);
	buf = malloc(size + 1);
	t = malloc(sizeof(double) * (count + 1));
	if (!buf || !t) die("malloc");
	memset(buf, 'm', size);
	if (size) { buf[0] = 'a'; buf[size - 1] = 'z'; }
	if (kinit(PRCMD)) die("kinit");

	if (!strcmp(mode, "pong")) {
		for (i = 0; i < count; ++i) {
			src = xrecv(event, buf, size);
			xsend(src, event + 1, buf, size);
		}
	} else if (!strcmp(mode, "ping")) {
		warm = count / 10;
		for (i = 0; i < count; ++i) {
			t0 = now();
			xsend(node, event, buf, size);
			xrecv(event + 1, buf, size);
			t[i] = (now() - t0) * 1e6;
		}
		for (i = warm; i < count; ++i) sum += t[i];
		qsort(t + warm, count - warm, sizeof(double), cmp);
		printf("RT n=%d median_us=%.1f mean_us=%.1f\n", count - warm,
		       t[warm + (count - warm) / 2], sum / (count - warm));
	} else if (!strcmp(mode, "sink")) {
		for (i = 0; i < count; ++i) src = xrecv(event, buf, size);
		memcpy(buf, "azaz", 4);
		buf[0] = 'a'; buf[3] = 'z';
		xsend(src, event + 1, buf, 4);
	} else if (!strcmp(mode, "stream")) {
		char ack[8];
		t0 = now();
		for (i = 0; i < count; ++i) xsend(node, event, buf, size);
		xrecv(event + 1, ack, 4);
		t0 = now() - t0;
		printf("STREAM bytes=%.0f seconds=%.4f mb_s=%.1f\n", (double) size * count, t0,
		       size * (double) count / t0 / 1e6);
	} else {
		return 64;
	}
	printf("OK\n");
	kexit(0);
	return 0;
}
