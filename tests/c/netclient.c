/*
 * netclient: a stock-liblam client that starts like every LAM tool does,
 * with the real kinit(PRCMD) (kattach, then rversion: a request to versiond
 * routed through the router), and then moves messages with a partner:
 *
 *   netclient info
 *       kinit, then print "NODE id=<getnodeid()> origin=<getorigin()>"
 *       (both answered by the router).
 *   netclient send|recv PATH EVENT SIZE...
 *       one message per SIZE, in order, on EVENT; the sender uses type
 *       i+1 for the i-th message, the receiver asks for type 0 (any), with
 *       a buffer 100 bytes larger than SIZE, and checks the type, the
 *       length and every byte (pattern from size and index); PATH is
 *         k      ksend/krecv (kernel rendezvous)
 *         n      nsend/nrecv, nh_node = getnodeid()  (through bufferd)
 *         l      nsend/nrecv, nh_node = LOCAL        (through bufferd)
 *         nobuf  nsend/nrecv with NOBUF, nh_node = getnodeid(): nsend asks
 *                the router for the route (getroute), nrecv uses frecv
 *       For the n/l/nobuf paths nh_data[] is filled by the sender and must
 *       arrive unchanged (nsend puts the total length in nh_data[0] of the
 *       first packet of a long message and restores it for the others).
 *       Messages longer than MAXNMSGLEN (8 KiB) go as several packets
 *       (NMORE), which nrecv reassembles.
 *       With NETCLIENT_NODE=N in the environment the sender of the n and
 *       nobuf paths sends to node N instead of its own (multi-node tests).
 *
 * Every line on stdout is "KEY a=1 b=2 ..."; "OK" last on success, "FAIL ..."
 * and a non-zero exit status otherwise.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lam_config.h>
#include <kio.h>
#include <kreq.h>
#include <net.h>
#include <priority.h>
#include <terror.h>
#include <typical.h>

static void die(const char *what)
{
	int e = errno;
	printf("FAIL %s errno=%d (%s)\n", what, e, strerror(e));
	fflush(stdout);
	exit(2);
}

static unsigned char pat(long size, long idx, long i)
{
	return (unsigned char) ((i * 151 + size * 3 + idx * 17 + (i >> 9) + (i >> 13)) & 0xff);
}

static void init(void)
{
	if (kinit(PRCMD)) die("kinit");
	printf("INIT pid=%d\n", (int) getpid());
}

static int do_info(void)
{
	init();
	printf("NODE id=%d origin=%d\n", (int) getnodeid(), (int) getorigin());
	printf("OK\n");
	kexit(0);
	return 0;
}

static void nset(struct nmsg *n, const char *path, int event, int type, long len,
		 char *buf)
{
	int i;
	memset(n, 0, sizeof(*n));
	n->nh_node = strcmp(path, "l") ? getnodeid() : LOCAL;
	n->nh_event = event;
	n->nh_type = type;
	n->nh_length = (int4) len;
	n->nh_flags = strcmp(path, "nobuf") ? 0 : NOBUF;
	for (i = 0; i < NHDSIZE; ++i) n->nh_data[i] = 1000 * type + i;
	n->nh_msg = buf;
}

static int do_xfer(int argc, char **argv)
{
	int sender, event, idx, i, nsizes;
	const char *path;
	long size;
	char *buf;
	struct kmsg k;
	struct nmsg n;

	if (argc < 5) return 64;
	sender = !strcmp(argv[1], "send");
	path = argv[2];
	event = atoi(argv[3]);
	nsizes = argc - 4;
	if (strcmp(path, "k") && strcmp(path, "n") && strcmp(path, "l") &&
	    strcmp(path, "nobuf")) return 64;
	init();
	if (strcmp(path, "k")) printf("NODE id=%d\n", (int) getnodeid());
	for (idx = 0; idx < nsizes; ++idx) {
		size = atol(argv[4 + idx]);
		buf = malloc(size + 101);
		if (!buf) die("malloc");
		if (sender) {
			for (i = 0; i < size; ++i) buf[i] = (char) pat(size, idx, i);
			if (!strcmp(path, "k")) {
				memset(&k, 0, sizeof(k));
				k.k_event = event; k.k_type = idx + 1;
				k.k_length = (int4) size; k.k_msg = buf;
				if (ksend(&k)) die("ksend");
			} else {
				nset(&n, path, event, idx + 1, size, buf);
				if (getenv("NETCLIENT_NODE") && strcmp(path, "l"))
					n.nh_node = atoi(getenv("NETCLIENT_NODE"));
				if (nsend(&n)) die("nsend");
			}
			printf("SENT idx=%d size=%ld\n", idx, size);
		} else {
			long got;
			int type;
			memset(buf, 0xee, size + 101);
			if (!strcmp(path, "k")) {
				memset(&k, 0, sizeof(k));
				k.k_event = event; k.k_type = 0;
				k.k_length = (int4) (size + 100); k.k_msg = buf;
				if (krecv(&k)) die("krecv");
				got = k.k_length; type = k.k_type;
			} else {
				nset(&n, path, event, 0, size + 100, buf);
				memset(n.nh_data, 0, sizeof(n.nh_data));
				if (nrecv(&n)) die("nrecv");
				got = n.nh_length; type = n.nh_type;
				for (i = 0; i < NHDSIZE; ++i) {
					if (n.nh_data[i] != 1000 * (idx + 1) + i) {
						printf("FAIL data idx=%d word=%d got=%d want=%d\n",
						       idx, i, (int) n.nh_data[i],
						       1000 * (idx + 1) + i);
						exit(3);
					}
				}
			}
			if (got != size || type != idx + 1) {
				printf("FAIL header idx=%d size=%ld got=%ld type=%d\n",
				       idx, size, got, type);
				exit(3);
			}
			for (i = 0; i < size; ++i) {
				if ((unsigned char) buf[i] != pat(size, idx, i)) {
					printf("FAIL byte idx=%d size=%ld offset=%d got=%d want=%d\n",
					       idx, size, i, (unsigned char) buf[i],
					       pat(size, idx, i));
					exit(3);
				}
			}
			if ((unsigned char) buf[size] != 0xee) {
				printf("FAIL overrun idx=%d size=%ld\n", idx, size);
				exit(3);
			}
			printf("RECV idx=%d size=%ld type=%d\n", idx, got, type);
		}
		free(buf);
	}
	printf("OK\n");
	kexit(0);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 2) {
		fprintf(stderr, "usage: netclient info | send|recv PATH EVENT SIZE...\n");
		return 64;
	}
	if (!strcmp(argv[1], "info")) return do_info();
	if (!strcmp(argv[1], "send") || !strcmp(argv[1], "recv"))
		return do_xfer(argc, argv);
	fprintf(stderr, "netclient: unknown mode %s\n", argv[1]);
	return 64;
}
