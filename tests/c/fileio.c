/*
 * fileio: a stock-liblam client of filed and iod for tests/test_fileio.py.
 *
 *   fileio openfd      lam_lfopenfd (what mpirun's set_stdio does), print
 *                      "TFDS in out err" on stdout; lam_rfwrite a line to
 *                      the LAM stdout; lam_rfincr it (as asc_run counts a
 *                      remote process); liosattach our stdout to iod for
 *                      that tfd (what kcreatev does for a remote process)
 *                      and print a line through it; lam_rfstate, one
 *                      "FSTATE tfd count flags name" line per descriptor on
 *                      stderr; exit (lam_rfatexit closes the tfds).
 *   fileio hold SECS   lam_lfopenfd, print TFDS, then sleep (killed by the test)
 *   fileio rmfd        lam_rfrmfd(LOCAL, NOTFD), what lamclean sends
 *   fileio state       lam_rfstate only
 *
 * Every failure prints "FAIL what errno=N (text)" and exits 2.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lam_config.h>
#include <freq.h>
#include <kio.h>
#include <laminternal.h>
#include <net.h>
#include <priority.h>
#include <terror.h>
#include <typical.h>
#include <etc_misc.h>

extern struct fclient _ufd[];
extern int liosattach(FILE *stream, int4 node, int4 tfd, int mode);

static void die(const char *what)
{
	int e = errno;
	fprintf(stderr, "FAIL %s errno=%d (%s)\n", what, e, strerror(e));
	exit(2);
}

static void openfd(void)
{
	char server[4096];

	if (lam_mktmpid((int) getpid(), server, sizeof(server)))
		die("lam_mktmpid");
	if (lam_lfopenfd(server))
		die("lam_lfopenfd");
	printf("TFDS %d %d %d\n", (int) _ufd[0].fu_tfd, (int) _ufd[1].fu_tfd,
	       (int) _ufd[2].fu_tfd);
	fflush(stdout);
}

static void state(void)
{
	struct fstate tbl[64];
	int i, n;

	n = lam_rfstate(LOCAL, tbl, 64);
	if (n < 0)
		die("lam_rfstate");
	for (i = 0; i < n && i < 64; i++)
		fprintf(stderr, "FSTATE %d %d %x %s\n", (int) tbl[i].fs_tfd,
			(int) tbl[i].fs_count, (unsigned) tbl[i].fs_tflags, tbl[i].fs_name);
}

int main(int argc, char **argv)
{
	static const char direct[] = "written by filed for lam_rfwrite\n";

	if (argc < 2) {
		fprintf(stderr, "usage: fileio openfd|hold SECS|rmfd|state\n");
		return 1;
	}
	if (kinit(PRCMD))
		die("kinit");
	if (!strcmp(argv[1], "openfd")) {
		openfd();
		if (lam_rfwrite(1, direct, (int4) strlen(direct)) != (int4) strlen(direct))
			die("lam_rfwrite");
		if (lam_rfincr(1, 1))
			die("lam_rfincr");
		if (liosattach(stdout, getnodeid(), _ufd[1].fu_tfd, _IONBF))
			die("liosattach");
		printf("forwarded by iod to filed\n");
		state();
	} else if (!strcmp(argv[1], "hold") && argc > 2) {
		openfd();
		sleep((unsigned) atoi(argv[2]));
	} else if (!strcmp(argv[1], "rmfd")) {
		if (lam_rfrmfd(LOCAL, NOTFD))
			die("lam_rfrmfd");
		printf("RMFD ok\n");
	} else if (!strcmp(argv[1], "state")) {
		state();
	} else {
		fprintf(stderr, "unknown mode %s\n", argv[1]);
		return 1;
	}
	kexit(0);
	return 0;
}
