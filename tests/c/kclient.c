/*
 * kclient: a stock-liblam kernel client for the lamd differential tests.
 *
 * It talks to the kernel with the kernel calls only (ksend, krecv, ksr,
 * kstate, kdoom, kdetach): no router, no versiond, so it works against a
 * kernel that serves nothing but the kernel socket.  Every line it prints
 * on stdout is "KEY value ..." for tests/test_cclient.py to parse.
 *
 *   kclient layout
 *   kclient dump                             (hex of filled kreq/kreply/nmsg)
 *   kclient pingpong ping|pong EVENT ITERS SIZE...
 *                                            (ping prints RTT: mean, median,
 *                                             90th percentile and worst round
 *                                             trip per size, in microseconds)
 *   kclient ksr server|client EVENT ITERS
 *   kclient ktry EVENT
 *   kclient probe server|client EVENT
 *   kclient block EVENT TYPE LENGTH          (krecv, then report)
 *   kclient send EVENT TYPE LENGTH           (ksend LENGTH pattern bytes)
 *   kclient state PID [WAITSECS [STATE]]     (poll until PID is in STATE,
 *                                             default KSRECV)
 *   kclient doom PID SIGNAL
 *   kclient doomwait EVENT retry|noretry     (blocked krecv, LAM_SIGA handler)
 *   kclient doomready SECS                   (idle, LAM_SIGA handler)
 *   kclient kdump                            (what LAM's otb/kdump tool does:
 *                                             KQDUMP, unattached)
 *   kclient pstate ITERS                     (kinit, then ITERS rpstate calls:
 *                                             kenyad's table of application
 *                                             processes, empty; the one mode
 *                                             that needs versiond and kenyad)
 */
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lam_config.h>
#include <kio.h>
#include <kreq.h>
#include <ksignal.h>
#include <net.h>
#include <preq.h>
#include <priority.h>
#include <terror.h>
#include <typical.h>
#include <etc_misc.h>

extern struct kio_t _kio;
extern int _cipc_init(void);
extern int _cio_kreq(struct kreq *req, struct kreply *reply);
extern void _ksig_init(void);

static void die(const char *what)
{
	int e = errno;
	printf("FAIL %s errno=%d (%s)\n", what, e, strerror(e));
	fflush(stdout);
	exit(2);
}

/*
 * The minimal client init: what kinit(PRCMD) does minus the version check
 * (rversion needs versiond behind the router) and minus the remote-file
 * table and trace setup.
 */
static void attach(void)
{
	lam_register_pid(getpid());
	memset(&_kio, 0, sizeof(_kio));
	_ksig_init();
	_kio.ki_nodeid = NOTNODEID;
	_kio.ki_origin = NOTNODEID;
	_kio.ki_index = -1;
	if (_cipc_init()) die("_cipc_init");
	if (kattach(PRCMD)) die("kattach");
	printf("ATTACHED index=%d pid=%d\n", _kio.ki_index, (int) getpid());
	fflush(stdout);
}

static void detach(void)
{
	if (kdetach(0)) die("kdetach");
}

static unsigned char pat(long size, long iter, int salt, long i)
{
	return (unsigned char) ((i * 131 + size * 7 + iter * 13 + salt * 29 + (i >> 8)) & 0xff);
}

static void fill(char *buf, long size, long iter, int salt)
{
	long i;
	for (i = 0; i < size; ++i) buf[i] = (char) pat(size, iter, salt, i);
}

static void verify(const char *what, const char *buf, long got, long size,
		   long iter, int salt)
{
	long i;
	if (got != size) {
		printf("FAIL %s length size=%ld iter=%ld got=%ld\n", what, size, iter, got);
		fflush(stdout);
		exit(3);
	}
	for (i = 0; i < size; ++i) {
		if ((unsigned char) buf[i] != pat(size, iter, salt, i)) {
			printf("FAIL %s byte size=%ld iter=%ld offset=%ld got=%d want=%d\n",
			       what, size, iter, i, (unsigned char) buf[i],
			       pat(size, iter, salt, i));
			fflush(stdout);
			exit(3);
		}
	}
}

static void kset(struct kmsg *m, int event, int type, int len, int flags, char *buf)
{
	memset(m, 0, sizeof(*m));
	m->k_event = event;
	m->k_type = type;
	m->k_length = len;
	m->k_flags = flags;
	m->k_msg = buf;
}

#define OFF(s, f) printf("OFFSET %s %s %d\n", #s, #f, (int) offsetof(struct s, f))

static int do_layout(void)
{
	printf("SIZE kmsg %d\n", (int) sizeof(struct kmsg));
	printf("SIZE kreq %d\n", (int) sizeof(struct kreq));
	printf("SIZE kreply %d\n", (int) sizeof(struct kreply));
	printf("SIZE nmsg %d\n", (int) sizeof(struct nmsg));
	OFF(kmsg, k_event); OFF(kmsg, k_type); OFF(kmsg, k_length);
	OFF(kmsg, k_flags); OFF(kmsg, k_msg);
	OFF(kreq, kq_req); OFF(kreq, kq_index); OFF(kreq, kq_pid);
	OFF(kreq, kq_priority); OFF(kreq, kq_signal); OFF(kreq, kq_fyi);
	OFF(kreq, kq_msg); OFF(kreq, kq_msg2);
	OFF(kreply, kr_reply); OFF(kreply, kr_signal); OFF(kreply, kr_length);
	OFF(kreply, kr_event); OFF(kreply, kr_type); OFF(kreply, kr_state);
	OFF(kreply, kr_priority); OFF(kreply, kr_index); OFF(kreply, kr_sigs);
	OFF(kreply, kr_fyi); OFF(kreply, kr_blktime);
	OFF(nmsg, nh_dl_event); OFF(nmsg, nh_dl_link); OFF(nmsg, nh_node);
	OFF(nmsg, nh_event); OFF(nmsg, nh_type); OFF(nmsg, nh_length);
	OFF(nmsg, nh_flags); OFF(nmsg, nh_data); OFF(nmsg, nh_msg);
	printf("CONST KPMAX %d\n", (int) KPMAX);
	printf("CONST KPKTLEN %d\n", (int) KPKTLEN);
	printf("CONST KNFYI %d\n", (int) KNFYI);
	printf("CONST NHDSIZE %d\n", (int) NHDSIZE);
	printf("CONST PRCMD %d\n", (int) PRCMD);
	printf("CONST LAM_SIGUSR %d\n", (int) LAM_SIGUSR);
	printf("CONST ENOTPROCESS %d\n", (int) ENOTPROCESS);
	printf("CONST EWOULDBLOCK %d\n", (int) EWOULDBLOCK);
	return 0;
}

static void hex(const char *name, const void *p, size_t n)
{
	size_t i;
	printf("HEX %s ", name);
	for (i = 0; i < n; ++i) printf("%02x", ((const unsigned char *) p)[i]);
	printf("\n");
}

/* Structs filled with distinct values (padding zeroed) for the codec test. */
static int do_dump(void)
{
	struct kreq q;
	struct kreply r;
	struct nmsg n;
	int i;

	memset(&q, 0, sizeof(q));
	q.kq_req = 1; q.kq_index = 2; q.kq_pid = 3; q.kq_priority = 4;
	q.kq_signal = 5;
	for (i = 0; i < KNFYI; ++i) q.kq_fyi[i] = 10 + i;
	kset(&q.kq_msg, 20, 21, 22, 23, (char *) 0x1122334455667788UL);
	kset(&q.kq_msg2, -30, 31, 32, 33, (char *) 0x99aabbccddeeff00UL);
	hex("kreq", &q, sizeof(q));

	memset(&r, 0, sizeof(r));
	r.kr_reply = 1; r.kr_signal = 2; r.kr_length = 3; r.kr_event = -4;
	r.kr_type = 5; r.kr_state = 6; r.kr_priority = 7; r.kr_index = 8;
	r.kr_sigs = 9;
	for (i = 0; i < KNFYI; ++i) r.kr_fyi[i] = 10 + i;
	r.kr_blktime = 1.5;
	hex("kreply", &r, sizeof(r));

	memset(&n, 0, sizeof(n));
	n.nh_dl_event = 1; n.nh_dl_link = 2; n.nh_node = -3; n.nh_event = 4;
	n.nh_type = 5; n.nh_length = 6; n.nh_flags = 7;
	for (i = 0; i < NHDSIZE; ++i) n.nh_data[i] = 10 + i;
	n.nh_msg = (char *) 0x0102030405060708UL;
	hex("nmsg", &n, sizeof(n));
	return 0;
}

static double now(void);

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *) a, y = *(const double *) b;
	return (x > y) - (x < y);
}

/* ping sends on EVENT and receives on EVENT+1; pong the reverse. */
static int do_pingpong(int argc, char **argv)
{
	int ping, event, iters, n, a;
	long size, maxsize = 0, it;
	char *sbuf, *rbuf;
	double *rtt, t0, sum;
	struct kmsg m;

	if (argc < 6) return 64;
	ping = !strcmp(argv[2], "ping");
	event = atoi(argv[3]);
	iters = atoi(argv[4]);
	for (a = 5; a < argc; ++a)
		if (atol(argv[a]) > maxsize) maxsize = atol(argv[a]);
	sbuf = malloc(maxsize + 1);
	rbuf = malloc(maxsize + 1);
	rtt = malloc((iters + 1) * sizeof(double));
	if (!sbuf || !rbuf || !rtt) die("malloc");
	attach();
	for (a = 5; a < argc; ++a) {
		size = atol(argv[a]);
		for (it = 0; it < iters; ++it) {
			t0 = now();
			for (n = 0; n < 2; ++n) {
				if ((n == 0) == ping) {
					fill(sbuf, size, it, ping ? 1 : 2);
					kset(&m, ping ? event : event + 1, 1, (int) size, 0, sbuf);
					if (ksend(&m)) die("ksend");
					if (m.k_length != size) {
						printf("FAIL ksend length %d != %ld\n", m.k_length, size);
						return 3;
					}
				} else {
					memset(rbuf, 0xEE, size);
					kset(&m, ping ? event + 1 : event, 1, (int) maxsize, 0, rbuf);
					if (krecv(&m)) die("krecv");
					verify(ping ? "ping-recv" : "pong-recv", rbuf, m.k_length,
					       size, it, ping ? 2 : 1);
				}
			}
			rtt[it] = now() - t0;
		}
		if (ping && iters > 0) {
			for (sum = 0, it = 0; it < iters; ++it) sum += rtt[it];
			qsort(rtt, iters, sizeof(double), cmp_double);
			printf("RTT size=%ld mean=%ld p50=%ld p90=%ld max=%ld\n", size,
			       (long) (sum / iters * 1e6), (long) (rtt[iters / 2] * 1e6),
			       (long) (rtt[iters * 9 / 10] * 1e6), (long) (rtt[iters - 1] * 1e6));
		}
		printf("SIZEOK %ld iters=%d\n", size, iters);
		fflush(stdout);
	}
	detach();
	printf("OK\n");
	return 0;
}

/* client: ksr(send EVENT, recv EVENT+1); server: krecv EVENT, ksend EVENT+1 */
static int do_ksr(int argc, char **argv)
{
	int server, event, iters, it;
	char sbuf[256], rbuf[256];
	struct kmsg m, m2;

	if (argc < 5) return 64;
	server = !strcmp(argv[2], "server");
	event = atoi(argv[3]);
	iters = atoi(argv[4]);
	attach();
	for (it = 0; it < iters; ++it) {
		long len = 1 + (it * 37) % 200;
		if (server) {
			kset(&m, event, 0, sizeof(rbuf), 0, rbuf);
			if (krecv(&m)) die("krecv");
			verify("server-recv", rbuf, m.k_length, len, it, 3);
			if (m.k_type != 5) {
				printf("FAIL server type %d\n", m.k_type);
				return 3;
			}
			fill(sbuf, len + 1, it, 4);
			kset(&m, event + 1, 6, (int) len + 1, 0, sbuf);
			if (ksend(&m)) die("ksend");
		} else {
			fill(sbuf, len, it, 3);
			memset(rbuf, 0, sizeof(rbuf));
			kset(&m, event, 5, (int) len, 0, sbuf);
			kset(&m2, event + 1, 6, sizeof(rbuf), 0, rbuf);
			if (ksr(&m, &m2)) die("ksr");
			verify("client-reply", rbuf, m2.k_length, len + 1, it, 4);
			if (m.k_length != len) {
				printf("FAIL ksr send length %d != %ld\n", m.k_length, len);
				return 3;
			}
		}
	}
	detach();
	printf("OK\n");
	return 0;
}

static int do_ktry(int argc, char **argv)
{
	int event, r;
	char buf[16] = "0123456789abcde";
	struct kmsg m;

	if (argc < 3) return 64;
	event = atoi(argv[2]);
	attach();
	kset(&m, event, 1, 16, KTRY, buf);
	errno = 0;
	r = ksend(&m);
	printf("KTRY send rc=%d errno=%d\n", r, r ? errno : 0);
	kset(&m, event, 1, 16, KTRY, buf);
	errno = 0;
	r = krecv(&m);
	printf("KTRY recv rc=%d errno=%d\n", r, r ? errno : 0);
	detach();
	printf("OK\n");
	return 0;
}

/*
 * client: ksr(send EVENT, probe EVENT+1) -> reports what the probe saw,
 *         then a real krecv(EVENT+1) -> verifies the bytes.
 * server: krecv(EVENT), ksend(EVENT+1, type 7, 1000 bytes).
 */
static int do_probe(int argc, char **argv)
{
	int server, event;
	char sbuf[2000], rbuf[2000];
	struct kmsg m, m2;

	if (argc < 4) return 64;
	server = !strcmp(argv[2], "server");
	event = atoi(argv[3]);
	attach();
	if (server) {
		kset(&m, event, 0, sizeof(rbuf), 0, rbuf);
		if (krecv(&m)) die("krecv");
		verify("server-recv", rbuf, m.k_length, 10, 0, 5);
		fill(sbuf, 1000, 1, 6);
		kset(&m, event + 1, 7, 1000, 0, sbuf);
		if (ksend(&m)) die("ksend");
		printf("SENT length=%d\n", m.k_length);
	} else {
		fill(sbuf, 10, 0, 5);
		kset(&m, event, 0, 10, 0, sbuf);
		kset(&m2, event + 1, 0, sizeof(rbuf), KPROBE, rbuf);
		memset(rbuf, 0, sizeof(rbuf));
		if (ksr(&m, &m2)) die("ksr-probe");
		printf("PROBE event=%d type=%d length=%d untouched=%d\n",
		       m2.k_event - event, m2.k_type, m2.k_length,
		       rbuf[0] == 0 && rbuf[999] == 0);
		fflush(stdout);
		kset(&m, event + 1, 7, sizeof(rbuf), 0, rbuf);
		if (krecv(&m)) die("krecv");
		verify("client-recv", rbuf, m.k_length, 1000, 1, 6);
		printf("RECV type=%d length=%d\n", m.k_type, m.k_length);
	}
	detach();
	printf("OK\n");
	return 0;
}

static int do_block(int argc, char **argv)
{
	char *buf;
	int len;
	struct kmsg m;

	if (argc < 5) return 64;
	len = atoi(argv[4]);
	buf = malloc(len + 1);
	attach();
	kset(&m, atoi(argv[2]), atoi(argv[3]), len, 0, buf);
	if (krecv(&m)) die("krecv");
	verify("block-recv", buf, m.k_length, m.k_length, 0, 7);
	printf("RECV type=%d length=%d\n", m.k_type, m.k_length);
	detach();
	printf("OK\n");
	return 0;
}

static int do_send(int argc, char **argv)
{
	char *buf;
	int len;
	struct kmsg m;

	if (argc < 5) return 64;
	len = atoi(argv[4]);
	buf = malloc(len + 1);
	fill(buf, len, 0, 7);
	attach();
	kset(&m, atoi(argv[2]), atoi(argv[3]), len, 0, buf);
	if (ksend(&m)) die("ksend");
	printf("SENT length=%d\n", m.k_length);
	detach();
	printf("OK\n");
	return 0;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int do_state(int argc, char **argv)
{
	struct kstatus ks;
	int pid, r, want;
	double wait, t0;

	if (argc < 3) return 64;
	pid = atoi(argv[2]);
	wait = argc > 3 ? atof(argv[3]) : 0;
	want = argc > 4 ? atoi(argv[4]) : KSRECV;
	attach();
	t0 = now();
	for (;;) {
		memset(&ks, 0, sizeof(ks));
		errno = 0;
		r = kstate(pid, &ks);
		if ((r == 0 && ks.ks_state == want) || now() - t0 >= wait) break;
		usleep(5000);
	}
	if (r) {
		printf("STATE rc=%d errno=%d\n", r, errno);
	} else {
		printf("STATE rc=0 state=%d priority=%d event=%d type=%d length=%d signal=%d\n",
		       ks.ks_state, ks.ks_priority, ks.ks_event, ks.ks_type,
		       ks.ks_length, ks.ks_signal);
	}
	detach();
	printf("OK\n");
	return 0;
}

static int do_doom(int argc, char **argv)
{
	int r;

	if (argc < 4) return 64;
	attach();
	errno = 0;
	r = kdoom(atoi(argv[2]), atoi(argv[3]));
	printf("DOOM rc=%d errno=%d\n", r, r ? errno : 0);
	detach();
	printf("OK\n");
	return 0;
}

static volatile int got_sig = 0;

static void on_ksig(int sig)
{
	got_sig = sig;
	printf("SIG %d\n", sig);
	fflush(stdout);
}

static int do_doomwait(int argc, char **argv)
{
	int r;
	char buf[64];
	struct kmsg m;

	if (argc < 4) return 64;
	attach();
	ksignal(LAM_SIGA, (void (*)()) on_ksig);
	if (!strcmp(argv[3], "noretry")) ksigsetretry(0);
	kset(&m, atoi(argv[2]), 0, sizeof(buf), 0, buf);
	errno = 0;
	r = krecv(&m);
	printf("RECV rc=%d errno=%d length=%d\n", r, r ? errno : 0, r ? -1 : m.k_length);
	detach();
	printf("OK\n");
	return 0;
}

static volatile sig_atomic_t got_usr = 0;

static int do_doomready(int argc, char **argv)
{
	double secs, t0;

	if (argc < 3) return 64;
	secs = atof(argv[2]);
	attach();
	ksignal(LAM_SIGA, (void (*)()) on_ksig);
	t0 = now();
	while (!got_sig && now() - t0 < secs) usleep(2000);
	printf("IDLE got=%d\n", got_sig);
	detach();
	printf("OK\n");
	return 0;
}

/* LAM's kdump tool (otb/kdump): one KQDUMP through liblam, never attached. */
static int do_kdump(void)
{
	struct kreq req;
	struct kreply reply;

	if (_cipc_init()) die("_cipc_init");
	memset(&req, 0, sizeof(req));
	req.kq_req = KQDUMP;
	req.kq_index = -1;
	if (_cio_kreq(&req, &reply)) die("_cio_kreq");
	printf("KDUMP reply=%d\n", reply.kr_reply);
	printf("OK\n");
	return 0;
}

static int do_pstate(int argc, char **argv)
{
	struct pstate tbl[16];
	long i, iters;
	int n;

	if (argc < 3) die("usage: kclient pstate ITERS");
	iters = atol(argv[2]);
	if (kinit(PRCMD)) die("kinit");
	for (i = 0; i < iters; i++) {
		n = rpstate(LOCAL, SELECT_APPL, 0, tbl, 16);
		if (n < 0) die("rpstate");
		if (n != 0) die("rpstate: a process listed with no job running");
	}
	printf("PSTATE iters=%ld\n", iters);
	printf("OK\n");
	kexit(0);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 2) {
		fprintf(stderr, "usage: kclient MODE ...\n");
		return 64;
	}
	if (!strcmp(argv[1], "layout")) return do_layout();
	if (!strcmp(argv[1], "dump")) return do_dump();
	if (!strcmp(argv[1], "pingpong")) return do_pingpong(argc, argv);
	if (!strcmp(argv[1], "ksr")) return do_ksr(argc, argv);
	if (!strcmp(argv[1], "ktry")) return do_ktry(argc, argv);
	if (!strcmp(argv[1], "probe")) return do_probe(argc, argv);
	if (!strcmp(argv[1], "block")) return do_block(argc, argv);
	if (!strcmp(argv[1], "send")) return do_send(argc, argv);
	if (!strcmp(argv[1], "state")) return do_state(argc, argv);
	if (!strcmp(argv[1], "doom")) return do_doom(argc, argv);
	if (!strcmp(argv[1], "doomwait")) return do_doomwait(argc, argv);
	if (!strcmp(argv[1], "doomready")) return do_doomready(argc, argv);
	if (!strcmp(argv[1], "kdump")) return do_kdump();
	if (!strcmp(argv[1], "pstate")) return do_pstate(argc, argv);
	fprintf(stderr, "kclient: unknown mode %s\n", argv[1]);
	return 64;
}
