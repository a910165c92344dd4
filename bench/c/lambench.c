/*
 * lambench: benchmark clients for a LAM 7.1.4 kernel (the C lamd or ours).
 *
 * Built with mpicc.lam against Debian's liblam; speaks only kernel calls
 * (no router, no versiond): _cipc_init, kattach(PRCMD), ksend/krecv, kdetach,
 * except npingpong (kinit, nsend/nrecv: the routed path of LAM's tools and of
 * -ssi rpi lamd).
 * Every payload byte is checked with memcmp against a locally built copy of
 * what the peer must have sent (a per-pair pattern with the sequence number
 * stamped in), and every length is checked, so a fast wrong answer fails.
 *
 *   lambench pingpong SIZE ITERS WARMUP     one pair; prints latency summary
 *   lambench stream SIZE COUNT              one pair; one-way throughput
 *   lambench attach ITERS                   connect+attach+detach+close loop
 *   lambench pairs NPAIRS SECONDS SIZE      NPAIRS pairs at once, all attached
 *                                           before a common start; aggregate
 *                                           msgs/s and round-trip percentiles
 *   lambench idle NIDLE ITERS SIZE          NIDLE processes stay attached while
 *                                           one pair ping-pongs; its p50/p99
 *   lambench capacity MAX                   attach up to MAX processes; prints
 *                                           how many the kernel accepted
 *   lambench npingpong SIZE ITERS WARMUP    one pair of kinit(PRCMD) clients (kattach,
 *                                           then rversion through the router to
 *                                           versiond) ping-pong with nsend/nrecv
 *                                           to this node (router and bufferd; 8 KiB
 *                                           packets, NMORE); latency summary
 *   lambench pstate ITERS WARMUP            one kinit(PRCMD) client asks kenyad for
 *                                           its process table (rpstate, as mpitask
 *                                           does): a service of the jobs process in
 *                                           ours, of the lamd's own process in the
 *                                           C lamd; latency summary
 *   lambench first                          time from connect to the attach reply
 *                                           of one client (start-up workloads)
 *   lambench hostile MODE SECS GRACE SIZE N BIG
 *                                           one pair ping-pongs SIZE bytes for
 *                                           SECS while hostile clients run:
 *                                           MODE baseline (none), flood (N
 *                                           clients loop kstate(getpid())),
 *                                           stall (a receiver posts a BIG-byte
 *                                           krecv and never reads it; a sender
 *                                           ksends BIG bytes to it). The parent
 *                                           stops waiting at SECS+GRACE, kills
 *                                           every child and reports what the
 *                                           pair completed by then.
 *
 * Output: one JSON object on stdout. Exit 0 on success, 1 on any error or
 * verification failure.
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lam_config.h>
#include <kio.h>
#include <kreq.h>
#include <priority.h>
#include <etc_misc.h>
#include <net.h>
#include <preq.h>

extern struct kio_t _kio;
extern int _cipc_init(void);
extern void _cipc_cleanup(void);

#define EV_BASE 1000
#define T_DATA 1
#define T_STOP 2
#define PONG_MARK 0x8000000000000000ULL

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what)
{
    fprintf(stderr, "lambench[%d]: %s: %s\n", (int) getpid(), what, strerror(errno));
    exit(1);
}

static void fail(const char *what)
{
    fprintf(stderr, "lambench[%d]: VERIFY FAILED: %s\n", (int) getpid(), what);
    exit(1);
}

/* Attach this process to the kernel: the minimal part of kinit() that works
 * against both daemons (no versiond round trip). */
static void attach(void)
{
    memset(&_kio, 0, sizeof(_kio));
    _ksig_init();
    _kio.ki_index = -1;
    _kio.ki_nodeid = NOTNODEID;
    _kio.ki_origin = NOTNODEID;
    if (_cipc_init()) die("_cipc_init");
    if (kattach(PRCMD)) die("kattach");
}

static void detach(void)
{
    if (kdetach(0)) die("kdetach");
    _cipc_cleanup();
}

/* The pattern one side of pair `pair` sends for message `seq`. */
static void fill(unsigned char *buf, size_t len, int pair)
{
    uint64_t x = 0x9e3779b97f4a7c15ULL * (uint64_t) (pair + 1);
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        buf[i] = (unsigned char) x;
    }
}

static void stamp(unsigned char *buf, size_t len, uint64_t seq)
{
    if (len >= 8) memcpy(buf, &seq, 8);
    if (len >= 16) memcpy(buf + len - 8, &seq, 8);
}

static void do_send(int event, int type, void *buf, int len)
{
    struct kmsg m;
    memset(&m, 0, sizeof(m));
    m.k_event = event;
    m.k_type = type;
    m.k_length = len;
    m.k_msg = buf;
    if (ksend(&m)) die("ksend");
}

/* Receive into buf (capacity cap); returns the type; checks the length. */
static int do_recv(int event, void *buf, int cap, int want_len)
{
    struct kmsg m;
    memset(&m, 0, sizeof(m));
    m.k_event = event;
    m.k_type = 0;
    m.k_length = cap;
    m.k_msg = buf;
    if (krecv(&m)) die("krecv");
    if (m.k_type == T_STOP) return T_STOP;
    if (m.k_length != want_len) {
        fprintf(stderr, "length %d, want %d\n", m.k_length, want_len);
        fail("message length");
    }
    return m.k_type;
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *) a, y = *(const double *) b;
    return (x > y) - (x < y);
}

static double pct(double *s, long n, double p)
{
    if (n <= 0) return 0;
    long i = (long) (p * (n - 1) + 0.5);
    return s[i];
}

/* ---- one pair: the ponger echoes until T_STOP ---------------------------- */
static void ponger(int pair, int size)
{
    int ev_in = EV_BASE + 2 * pair, ev_out = ev_in + 1;
    unsigned char *rx = malloc(size + 1), *want = malloc(size + 1), *tx = malloc(size + 1);
    if (!rx || !want || !tx) die("malloc");
    fill(want, size, pair);
    fill(tx, size, pair + 100000);
    for (uint64_t seq = 0;; seq++) {
        if (do_recv(ev_in, rx, size, size) == T_STOP) break;
        stamp(want, size, seq);
        if (size && memcmp(rx, want, size)) fail("ping payload");
        stamp(tx, size, seq | PONG_MARK);
        do_send(ev_out, T_DATA, tx, size);
    }
}

/* pinger: returns number of round trips; samples[] gets up to max_samples
 * round-trip times in seconds. Runs `iters` trips, or until `deadline`. */
static long pinger(int pair, int size, long iters, double deadline,
                   double *samples, long max_samples, long *nsamples)
{
    int ev_out = EV_BASE + 2 * pair, ev_in = ev_out + 1;
    unsigned char *rx = malloc(size + 1), *want = malloc(size + 1), *tx = malloc(size + 1);
    if (!rx || !want || !tx) die("malloc");
    fill(tx, size, pair);
    fill(want, size, pair + 100000);
    long n = 0;
    *nsamples = 0;
    for (uint64_t seq = 0;; seq++) {
        if (iters >= 0 && (long) seq >= iters) break;
        if (deadline > 0 && (seq & 7) == 0 && now() >= deadline) break;
        stamp(tx, size, seq);
        double t0 = now();
        do_send(ev_out, T_DATA, tx, size);
        do_recv(ev_in, rx, size, size);
        double dt = now() - t0;
        stamp(want, size, seq | PONG_MARK);
        if (size && memcmp(rx, want, size)) fail("pong payload");
        if (*nsamples < max_samples) samples[(*nsamples)++] = dt;
        n++;
    }
    do_send(ev_out, T_STOP, NULL, 0);
    return n;
}

static int cmd_pingpong(int size, long iters, long warmup)
{
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        alarm(600);
        attach();
        ponger(0, size);
        detach();
        _exit(0);
    }
    alarm(600);
    attach();
    double *s = malloc(sizeof(double) * (iters + warmup + 1));
    long ns;
    /* warm-up and measured runs share one ponger: warmup first */
    long total = warmup + iters;
    pinger(0, size, total, 0, s, total, &ns);
    detach();
    int st;
    if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st)) fail("ponger exit");
    double *m = s + warmup;
    long n = ns - warmup;
    qsort(m, n, sizeof(double), cmp_dbl);
    double sum = 0;
    for (long i = 0; i < n; i++) sum += m[i];
    printf("{\"size\": %d, \"n\": %ld, \"p50_us\": %.3f, \"p99_us\": %.3f, "
           "\"min_us\": %.3f, \"mean_us\": %.3f}\n", size, n, pct(m, n, .5) * 1e6,
           pct(m, n, .99) * 1e6, m[0] * 1e6, sum / n * 1e6);
    return 0;
}

static int cmd_stream(int size, long count)
{
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {               /* receiver */
        alarm(600);
        attach();
        unsigned char *rx = malloc(size), *want = malloc(size);
        fill(want, size, 7);
        for (long seq = 0; seq < count; seq++) {
            do_recv(EV_BASE, rx, size, size);
            stamp(want, size, (uint64_t) seq);
            if (memcmp(rx, want, size)) fail("stream payload");
        }
        do_send(EV_BASE + 1, T_DATA, NULL, 0);  /* ack */
        detach();
        _exit(0);
    }
    alarm(600);
    attach();
    unsigned char *tx = malloc(size);
    fill(tx, size, 7);
    /* one untimed message so that both sides are attached and warm */
    double t0 = 0;
    for (long seq = 0; seq < count; seq++) {
        if (seq == 1) t0 = now();
        stamp(tx, size, (uint64_t) seq);
        do_send(EV_BASE, T_DATA, tx, size);
    }
    char ack;
    do_recv(EV_BASE + 1, &ack, 1, 0);
    double dt = now() - t0;
    detach();
    int st;
    if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st)) fail("receiver exit");
    double bytes = (double) size * (count - 1);
    printf("{\"size\": %d, \"count\": %ld, \"seconds\": %.6f, \"MBps\": %.3f, "
           "\"msgs_per_s\": %.1f}\n", size, count - 1, dt, bytes / dt / 1e6, (count - 1) / dt);
    return 0;
}

static int cmd_attach(long iters)
{
    alarm(600);
    attach(); detach();           /* warm-up */
    double t0 = now();
    for (long i = 0; i < iters; i++) {
        attach();
        detach();
    }
    double dt = now() - t0;
    printf("{\"n\": %ld, \"seconds\": %.6f, \"per_s\": %.1f}\n", iters, dt, iters / dt);
    return 0;
}

/* shared by all pair processes */
struct slot { long trips; long nsamples; int ok; };
#define MAXS 4000

static int cmd_pairs(int npairs, double seconds, int size)
{
    size_t slots_sz = sizeof(struct slot) * npairs;
    size_t samp_sz = sizeof(double) * (size_t) MAXS * npairs;
    struct slot *slots = mmap(NULL, slots_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    double *samp = mmap(NULL, samp_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    volatile double *start = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (slots == MAP_FAILED || samp == MAP_FAILED || start == MAP_FAILED) die("mmap");
    int ready[2], go[2];
    if (pipe(ready) || pipe(go)) die("pipe");
    int nproc = 2 * npairs;
    pid_t *pids = calloc(nproc, sizeof(pid_t));
    double t_fork = now();
    for (int i = 0; i < nproc; i++) {
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) {
            alarm((unsigned) (seconds + 600));
            close(ready[0]); close(go[1]);
            int pair = i / 2;
            attach();
            char c = 'r';
            if (write(ready[1], &c, 1) != 1) die("write ready");
            close(ready[1]);
            if (read(go[0], &c, 1) < 0) die("read go");   /* EOF = go */
            if (i % 2) {
                ponger(pair, size);
            } else {
                long ns;
                slots[pair].trips = pinger(pair, size, -1, *start + seconds,
                                           samp + (size_t) pair * MAXS, MAXS, &ns);
                slots[pair].nsamples = ns;
            }
            detach();
            if (i % 2 == 0) slots[pair].ok = 1;
            _exit(0);
        }
        pids[i] = pid;
    }
    close(ready[1]); close(go[0]);
    for (int got = 0; got < nproc;) {
        char buf[256];
        ssize_t r = read(ready[0], buf, sizeof buf);
        if (r <= 0) { fprintf(stderr, "only %d of %d attached\n", got, nproc); fail("attach all"); }
        got += (int) r;
    }
    double t_attached = now();
    fprintf(stderr, "ALL_ATTACHED %d\n", nproc);
    usleep(500000);               /* let the harness sample the daemon's RSS */
    *start = now();
    close(go[1]);
    int bad = 0;
    for (int i = 0; i < nproc; i++) {
        int st;
        if (waitpid(pids[i], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st)) bad++;
    }
    double t_end = now();
    long trips = 0, ns = 0;
    for (int p = 0; p < npairs; p++) {
        if (!slots[p].ok) bad++;
        trips += slots[p].trips;
        ns += slots[p].nsamples;
    }
    if (bad) { fprintf(stderr, "%d processes failed\n", bad); fail("pair processes"); }
    double *all = malloc(sizeof(double) * (ns + 1));
    long k = 0;
    for (int p = 0; p < npairs; p++)
        for (long j = 0; j < slots[p].nsamples; j++) all[k++] = samp[(size_t) p * MAXS + j];
    qsort(all, k, sizeof(double), cmp_dbl);
    double dt = t_end - *start;
    printf("{\"pairs\": %d, \"size\": %d, \"seconds\": %.4f, \"round_trips\": %ld, "
           "\"messages\": %ld, \"msgs_per_s\": %.1f, \"p50_us\": %.3f, \"p99_us\": %.3f, "
           "\"samples\": %ld, \"attach_seconds\": %.4f}\n",
           npairs, size, dt, trips, 2 * trips, 2 * trips / dt, pct(all, k, .5) * 1e6,
           pct(all, k, .99) * 1e6, k, t_attached - t_fork);
    return 0;
}

/* NIDLE processes attach and stay attached (blocked outside the kernel)
 * while one pair ping-pongs ITERS round trips of SIZE bytes: the cost that
 * merely attached clients put on an active one. */
static int cmd_idle(int nidle, long iters, int size)
{
    int ready[2], done[2];
    if (pipe(ready) || pipe(done)) die("pipe");
    pid_t *pids = calloc(nidle + 1, sizeof(pid_t));
    for (int i = 0; i < nidle; i++) {
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) {
            alarm(900);
            close(ready[0]); close(done[1]);
            attach();
            char c = 'r';
            if (write(ready[1], &c, 1) != 1) die("write ready");
            close(ready[1]);
            if (read(done[0], &c, 1) < 0) die("read done");   /* EOF = done */
            detach();
            _exit(0);
        }
        pids[i] = pid;
    }
    close(ready[1]); close(done[0]);
    for (int got = 0; got < nidle;) {
        char buf[256];
        ssize_t r = read(ready[0], buf, sizeof buf);
        if (r <= 0) { fprintf(stderr, "only %d of %d attached\n", got, nidle); fail("attach idle"); }
        got += (int) r;
    }
    fprintf(stderr, "ALL_ATTACHED %d\n", nidle);
    usleep(300000);
    pid_t pp = fork();
    if (pp < 0) die("fork");
    if (pp == 0) {
        alarm(600);
        attach();
        ponger(0, size);
        detach();
        _exit(0);
    }
    alarm(900);
    attach();
    long warm = iters / 10 + 5, ns;
    double *s = malloc(sizeof(double) * (iters + warm + 1));
    pinger(0, size, iters + warm, 0, s, iters + warm, &ns);
    detach();
    int st, bad = 0;
    if (waitpid(pp, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st)) bad++;
    close(done[1]);
    for (int i = 0; i < nidle; i++)
        if (waitpid(pids[i], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st)) bad++;
    if (bad) { fprintf(stderr, "%d processes failed\n", bad); fail("idle processes"); }
    double *m = s + warm;
    long n = ns - warm;
    qsort(m, n, sizeof(double), cmp_dbl);
    printf("{\"idle\": %d, \"size\": %d, \"n\": %ld, \"p50_us\": %.3f, \"p99_us\": %.3f}\n",
           nidle, size, n, pct(m, n, .5) * 1e6, pct(m, n, .99) * 1e6);
    return 0;
}

static int cmd_capacity(int max)
{
    int ready[2], go[2];
    if (pipe(ready) || pipe(go)) die("pipe");
    for (int i = 0; i < max; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            alarm(120);
            close(ready[0]); close(go[1]);
            memset(&_kio, 0, sizeof(_kio));
            _ksig_init();
            _kio.ki_index = -1;
            char c = 'n';
            if (_cipc_init() == 0 && kattach(PRCMD) == 0) c = 'y';
            if (write(ready[1], &c, 1) != 1) _exit(1);
            if (read(go[0], &c, 1) < 0) _exit(1);
            if (c == 'y') kdetach(0);
            _exit(0);
        }
    }
    close(ready[1]); close(go[0]);
    int yes = 0, got = 0;
    while (got < max) {
        char buf[256];
        ssize_t r = read(ready[0], buf, sizeof buf);
        if (r <= 0) break;
        for (ssize_t j = 0; j < r; j++) yes += buf[j] == 'y';
        got += (int) r;
    }
    close(go[1]);
    while (wait(NULL) > 0) ;
    printf("{\"tried\": %d, \"attached\": %d}\n", max, yes);
    return 0;
}

/* ---- hostile clients beside one measured pair ---------------------------- */
#define HMAXS (1L << 20)
#define EV_STALL 77
#define MAXFLOOD 64
struct hshared {
    volatile long trips;
    volatile int pinger_done, ponger_done, sender_done;
    volatile double start, t_end;
    volatile long flood[MAXFLOOD];
};

static pid_t hfork(int rd, int wr)
{
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);   /* never outlive the harness' client */
        if (getppid() == 1) _exit(1);
        close(rd);
        (void) wr;
    }
    return pid;
}

static void hready(int wr)
{
    char c = 'r';
    if (write(wr, &c, 1) != 1) die("write ready");
}

static void hwait(int fd, int n, const char *what)
{
    for (int got = 0; got < n;) {
        char buf[64];
        ssize_t r = read(fd, buf, sizeof buf < (size_t) (n - got) ? sizeof buf : (size_t) (n - got));
        if (r <= 0) { fprintf(stderr, "only %d of %d %s ready\n", got, n, what); fail(what); }
        got += (int) r;
    }
}

static int cmd_hostile(const char *mode, double seconds, double grace, int size, int nflood,
                       long big)
{
    int flood = !strcmp(mode, "flood"), stall = !strcmp(mode, "stall");
    if (!flood && !stall && strcmp(mode, "baseline")) { fprintf(stderr, "bad mode\n"); return 2; }
    if (nflood > MAXFLOOD) nflood = MAXFLOOD;
    struct hshared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    double *samp = mmap(NULL, sizeof(double) * HMAXS, PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED || samp == MAP_FAILED) die("mmap");
    int ready[2], go[2];
    if (pipe(ready) || pipe(go)) die("pipe");
    pid_t kids[MAXFLOOD + 4];
    int nkids = 0;
    /* 1. the measured pair attaches first (a stuck C kernel takes no attach) */
    for (int i = 0; i < 2; i++) {
        pid_t pid = hfork(ready[0], ready[1]);
        if (pid == 0) {
            close(go[1]);
            attach();
            hready(ready[1]);
            char c;
            if (read(go[0], &c, 1) < 0) die("read go");
            if (i == 1) {
                ponger(0, size);
                sh->ponger_done = 1;
                detach();
                _exit(0);
            }
            int ev_out = EV_BASE, ev_in = EV_BASE + 1;
            unsigned char *rx = malloc(size + 1), *want = malloc(size + 1), *tx = malloc(size + 1);
            if (!rx || !want || !tx) die("malloc");
            fill(tx, size, 0);
            fill(want, size, 100000);
            double deadline = sh->start + seconds;
            for (uint64_t seq = 0; now() < deadline; seq++) {
                stamp(tx, size, seq);
                double t0 = now();
                do_send(ev_out, T_DATA, tx, size);
                do_recv(ev_in, rx, size, size);
                double dt = now() - t0;
                stamp(want, size, seq | PONG_MARK);
                if (size && memcmp(rx, want, size)) fail("pong payload");
                if (sh->trips < HMAXS) samp[sh->trips] = dt;
                sh->trips++;
            }
            sh->t_end = now();
            sh->pinger_done = 1;
            do_send(ev_out, T_STOP, NULL, 0);
            detach();
            _exit(0);
        }
        kids[nkids++] = pid;
    }
    hwait(ready[0], 2, "pair");
    /* 2. the hostile clients */
    int nhostile = 0;
    if (flood) {
        for (int f = 0; f < nflood; f++) {
            pid_t pid = hfork(ready[0], ready[1]);
            if (pid == 0) {
                close(go[1]);
                attach();
                hready(ready[1]);
                struct kstatus ks;
                int me = (int) getpid();
                for (;;) {
                    if (kstate(me, &ks)) die("kstate");
                    sh->flood[f]++;
                }
            }
            kids[nkids++] = pid;
        }
        nhostile = nflood;
    } else if (stall) {
        pid_t pid = hfork(ready[0], ready[1]);
        if (pid == 0) {                       /* receiver: posts, never reads */
            close(go[1]);
            attach();
            static char dummy[64];
            struct kmsg m;
            memset(&m, 0, sizeof m);
            m.k_event = EV_STALL;
            m.k_length = (int) big;
            m.k_msg = dummy;
            if (krecvfront(&m) < 0) die("krecvfront");
            hready(ready[1]);
            for (;;) pause();
        }
        kids[nkids++] = pid;
        hwait(ready[0], 1, "stuck receiver");
        pid = hfork(ready[0], ready[1]);
        if (pid == 0) {                       /* sender: BIG bytes into the jam */
            close(go[1]);
            attach();
            char *buf = malloc(big);
            if (!buf) die("malloc");
            memset(buf, 0x5a, big);
            hready(ready[1]);
            do_send(EV_STALL, T_DATA, buf, (int) big);
            sh->sender_done = 1;
            for (;;) pause();
        }
        kids[nkids++] = pid;
        nhostile = 1;
    }
    hwait(ready[0], nhostile, "hostile");
    double t_hostile = now();
    usleep(stall ? 500000 : 200000);        /* let the flood run / the transfer jam */
    long f0 = 0;
    for (int f = 0; f < nflood; f++) f0 += sh->flood[f];
    /* 3. go: the pair measures for SECS; we wait at most SECS + GRACE */
    sh->start = now();
    close(go[1]);
    double deadline = sh->start + seconds + grace;
    while (now() < deadline && !(sh->pinger_done && sh->ponger_done)) usleep(5000);
    double t_stop = now();
    long f1 = 0;
    for (int f = 0; f < nflood; f++) f1 += sh->flood[f];
    long trips = sh->trips;
    int finished = sh->pinger_done;
    double meas_end = finished ? sh->t_end : t_stop;
    int sender_done = sh->sender_done;
    /* 4. everyone goes: a clean pair exits on its own, the rest are killed */
    if (sh->pinger_done && sh->ponger_done) usleep(20000);
    for (int i = 0; i < nkids; i++) kill(kids[i], SIGKILL);
    for (int i = 0; i < nkids; i++) waitpid(kids[i], NULL, 0);
    close(ready[0]);
    long n = trips < HMAXS ? trips : HMAXS;
    qsort(samp, n, sizeof(double), cmp_dbl);
    double dt = meas_end - sh->start;
    printf("{\"mode\": \"%s\", \"size\": %d, \"seconds\": %.3f, \"deadline_s\": %.3f, "
           "\"round_trips\": %ld, \"stalled\": %s, \"msgs_per_s\": %.1f, ",
           mode, size, dt, seconds + grace, trips, finished ? "false" : "true",
           dt > 0 ? 2 * trips / dt : 0.0);
    if (n > 0)
        printf("\"p50_us\": %.3f, \"p99_us\": %.3f, \"max_us\": %.3f, ",
               pct(samp, n, .5) * 1e6, pct(samp, n, .99) * 1e6, samp[n - 1] * 1e6);
    else
        printf("\"p50_us\": null, \"p99_us\": null, \"max_us\": null, ");
    printf("\"flooders\": %d, \"flood_req_per_s\": %.1f, \"big\": %ld, \"sender_done\": %s, "
           "\"hostile_start_s\": %.3f}\n", flood ? nflood : 0,
           t_stop > sh->start ? (f1 - f0) / (t_stop - sh->start) : 0.0, stall ? big : 0,
           sender_done ? "true" : "false", sh->start - t_hostile);
    return 0;
}

/* ---- routed messages: kinit clients, nsend/nrecv through bufferd ---------- */
static void nset(struct nmsg *n, int node, int event, int type, int len, void *buf)
{
    memset(n, 0, sizeof(*n));
    n->nh_node = node;
    n->nh_event = event;
    n->nh_type = type;
    n->nh_length = len;
    n->nh_msg = buf;
}

/* Receive a routed message on `event` (any type); checks its length unless
 * it is T_STOP; returns the type. */
static int do_nrecv(int node, int event, void *buf, int cap, int want_len)
{
    struct nmsg n;
    nset(&n, node, event, 0, cap, buf);
    if (nrecv(&n)) die("nrecv");
    if (n.nh_type == T_STOP) return T_STOP;
    if (n.nh_type != T_DATA || n.nh_length != want_len) {
        fprintf(stderr, "routed: type %d length %d, want %d %d\n", (int) n.nh_type,
                (int) n.nh_length, T_DATA, want_len);
        fail("routed message header");
    }
    return T_DATA;
}

static void do_nsend(int node, int event, int type, void *buf, int len)
{
    struct nmsg n;
    nset(&n, node, event, type, len, buf);
    if (nsend(&n)) die("nsend");
}

static int cmd_npingpong(int size, long iters, long warmup)
{
    int ev_ping = EV_BASE, ev_pong = EV_BASE + 1;
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        alarm(600);
        if (kinit(PRCMD)) die("kinit");
        int node = getnodeid();
        unsigned char *rx = malloc(size + 1), *want = malloc(size + 1), *tx = malloc(size + 1);
        if (!rx || !want || !tx) die("malloc");
        fill(want, size, 0);
        fill(tx, size, 100000);
        for (uint64_t seq = 0;; seq++) {
            if (do_nrecv(node, ev_ping, rx, size, size) == T_STOP) break;
            stamp(want, size, seq);
            if (size && memcmp(rx, want, size)) fail("routed ping payload");
            stamp(tx, size, seq | PONG_MARK);
            do_nsend(node, ev_pong, T_DATA, tx, size);
        }
        kexit(0);
    }
    alarm(600);
    if (kinit(PRCMD)) die("kinit");
    int node = getnodeid();
    unsigned char *rx = malloc(size + 1), *want = malloc(size + 1), *tx = malloc(size + 1);
    long total = warmup + iters;
    double *s = malloc(sizeof(double) * (total + 1));
    if (!rx || !want || !tx || !s) die("malloc");
    fill(tx, size, 0);
    fill(want, size, 100000);
    for (long seq = 0; seq < total; seq++) {
        stamp(tx, size, (uint64_t) seq);
        double t0 = now();
        do_nsend(node, ev_ping, T_DATA, tx, size);
        do_nrecv(node, ev_pong, rx, size, size);
        s[seq] = now() - t0;
        stamp(want, size, (uint64_t) seq | PONG_MARK);
        if (size && memcmp(rx, want, size)) fail("routed pong payload");
    }
    do_nsend(node, ev_ping, T_STOP, NULL, 0);
    int st;
    if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st)) fail("routed ponger exit");
    double *m = s + warmup;
    long n = iters;
    qsort(m, n, sizeof(double), cmp_dbl);
    double sum = 0;
    for (long i = 0; i < n; i++) sum += m[i];
    printf("{\"size\": %d, \"n\": %ld, \"p50_us\": %.3f, \"p99_us\": %.3f, "
           "\"min_us\": %.3f, \"mean_us\": %.3f}\n", size, n, pct(m, n, .5) * 1e6,
           pct(m, n, .99) * 1e6, m[0] * 1e6, sum / n * 1e6);
    kexit(0);
    return 0;
}

/* kenyad's PQSTATE from a kinit client (what mpitask asks): the request
 * through bufferd to kenyad, the table back to -pid. With no job running the
 * table is empty; the count must say so. */
static int cmd_pstate(long iters, long warmup)
{
    alarm(600);
    if (kinit(PRCMD)) die("kinit");
    struct pstate tbl[16];
    long total = warmup + iters;
    double *s = malloc(sizeof(double) * (total + 1));
    if (!s) die("malloc");
    for (long i = 0; i < total; i++) {
        double t0 = now();
        int n = rpstate(LOCAL, SELECT_APPL, 0, tbl, 16);
        s[i] = now() - t0;
        if (n < 0) die("rpstate");
        if (n != 0) fail("rpstate: a process listed with no job running");
    }
    double *m = s + warmup;
    qsort(m, iters, sizeof(double), cmp_dbl);
    printf("{\"n\": %ld, \"p50_us\": %.3f, \"p99_us\": %.3f, \"min_us\": %.3f}\n",
           iters, pct(m, iters, .5) * 1e6, pct(m, iters, .99) * 1e6, m[0] * 1e6);
    kexit(0);
    return 0;
}

/* One client: connect and attach, timed (the first reply of a daemon that
 * socket activation starts on this very connection). */
static int cmd_first(void)
{
    alarm(60);
    double t0 = now();
    attach();
    double dt = now() - t0;
    detach();
    printf("{\"first_reply_ms\": %.3f}\n", dt * 1e3);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 5 && !strcmp(argv[1], "pingpong"))
        return cmd_pingpong(atoi(argv[2]), atol(argv[3]), atol(argv[4]));
    if (argc >= 4 && !strcmp(argv[1], "stream"))
        return cmd_stream(atoi(argv[2]), atol(argv[3]));
    if (argc >= 3 && !strcmp(argv[1], "attach"))
        return cmd_attach(atol(argv[2]));
    if (argc >= 5 && !strcmp(argv[1], "pairs"))
        return cmd_pairs(atoi(argv[2]), atof(argv[3]), atoi(argv[4]));
    if (argc >= 5 && !strcmp(argv[1], "idle"))
        return cmd_idle(atoi(argv[2]), atol(argv[3]), atoi(argv[4]));
    if (argc >= 5 && !strcmp(argv[1], "npingpong"))
        return cmd_npingpong(atoi(argv[2]), atol(argv[3]), atol(argv[4]));
    if (argc >= 4 && !strcmp(argv[1], "pstate"))
        return cmd_pstate(atol(argv[2]), atol(argv[3]));
    if (argc >= 2 && !strcmp(argv[1], "first"))
        return cmd_first();
    if (argc >= 3 && !strcmp(argv[1], "capacity"))
        return cmd_capacity(atoi(argv[2]));
    if (argc >= 8 && !strcmp(argv[1], "hostile"))
        return cmd_hostile(argv[2], atof(argv[3]), atof(argv[4]), atoi(argv[5]), atoi(argv[6]),
                           atol(argv[7]));
    fprintf(stderr, "usage: lambench pingpong SIZE ITERS WARMUP | stream SIZE COUNT | "
            "attach ITERS | pairs NPAIRS SECONDS SIZE | idle NIDLE ITERS SIZE | capacity MAX | "
            "npingpong SIZE ITERS WARMUP | pstate ITERS WARMUP | first | "
            "hostile baseline|flood|stall SECS GRACE SIZE NFLOOD BIG\n");
    return 2;
}
