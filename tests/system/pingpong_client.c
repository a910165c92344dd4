/* A stock liblam ping-pong pair in one program (the system tests build it
 * with hcc): pingpong_client EVENT ITERS SIZE DELAY_US
 * forks; the parent (ping) sends SIZE bytes on EVENT and receives them back
 * on EVENT+1, the child (pong) the reverse, ITERS round trips, DELAY_US
 * between them. Every body's length and every byte are checked (a pattern
 * of the iteration and the side). Prints "running PID" after 10 round
 * trips, "OK ITERS" and exits 0 when both sides completed; "FAIL ..." and
 * exits 2 on the first error. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <lam.h>
#include <kreq.h>
#include <priority.h>

static void fail(const char *side, const char *what, long it)
{
	printf("FAIL %s %s at %ld: errno %d (%s)\n", side, what, it, errno, strerror(errno));
	fflush(stdout);
	exit(2);
}

static unsigned char pattern(long it, long i, int side)
{
	return (unsigned char) (it * 31 + i * 7 + side * 101);
}

static int run(int ping, int event, long iters, long size, long delay)
{
	const char *side = ping ? "ping" : "pong";
	unsigned char *sbuf = malloc(size + 1), *rbuf = malloc(size + 1);
	struct kmsg m;
	long it, i;
	int n;

	if (!sbuf || !rbuf) fail(side, "malloc", 0);
	if (kinit(PRCMD)) fail(side, "kinit", 0);
	for (it = 0; it < iters; ++it) {
		for (n = 0; n < 2; ++n) {
			memset(&m, 0, sizeof m);
			m.k_type = 1;
			if ((n == 0) == ping) {
				for (i = 0; i < size; ++i) sbuf[i] = pattern(it, i, ping);
				m.k_event = ping ? event : event + 1;
				m.k_length = (int) size;
				m.k_msg = (char *) sbuf;
				if (ksend(&m)) fail(side, "ksend", it);
			} else {
				memset(rbuf, 0xEE, size + 1);
				m.k_event = ping ? event + 1 : event;
				m.k_length = (int) size + 1;
				m.k_msg = (char *) rbuf;
				if (krecv(&m)) fail(side, "krecv", it);
				if (m.k_length != size) {
					printf("FAIL %s length %d != %ld at %ld\n", side, m.k_length, size, it);
					exit(2);
				}
				for (i = 0; i < size; ++i)
					if (rbuf[i] != pattern(it, i, !ping)) {
						printf("FAIL %s byte %ld at %ld\n", side, i, it);
						exit(2);
					}
			}
		}
		if (ping && it == 9) {
			printf("running %d\n", (int) getpid());
			fflush(stdout);
		}
		if (delay > 0) usleep(delay);
	}
	return 0;
}

int main(int argc, char **argv)
{
	int event, status;
	long iters, size, delay;
	pid_t pong;

	if (argc != 5) {
		fprintf(stderr, "usage: pingpong_client EVENT ITERS SIZE DELAY_US\n");
		return 64;
	}
	event = atoi(argv[1]);
	iters = atol(argv[2]);
	size = atol(argv[3]);
	delay = atol(argv[4]);
	fflush(stdout);
	pong = fork();
	if (pong < 0) fail("ping", "fork", 0);
	if (pong == 0) return run(0, event, iters, size, 0);
	run(1, event, iters, size, delay);
	if (waitpid(pong, &status, 0) != pong) fail("ping", "waitpid", iters);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		printf("FAIL pong status %d\n", status);
		return 2;
	}
	printf("OK %ld\n", iters);
	return 0;
}
