/* hello [LINES]: rank and size, LINES numbered lines (default 1) to stdout
 * and, distinctly, to stderr.  Lines: "OUT rank=R size=S pid=P line=I" and
 * "ERR rank=R size=S pid=P line=I"; with LINES > 1 each line carries 100 bytes of
 * padding so that a large output is checked line by line.  Both streams
 * are line buffered: each line is one write(), whole, whatever else writes
 * to the same file. */
#include "common.h"

int main(int argc, char **argv)
{
	int rank, size, i, n = argc > 1 ? atoi(argv[1]) : 1;
	char pad[101];

	setvbuf(stdout, NULL, _IOLBF, 0);
	setvbuf(stderr, NULL, _IOLBF, 0);
	MPICHECK(MPI_Init(&argc, &argv));
	MPICHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
	MPICHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
	memset(pad, 'x', 100);
	pad[100] = 0;
	for (i = 0; i < n; i++) {
		printf("OUT rank=%d size=%d pid=%d line=%d%s%s\n", rank, size,
		       (int) getpid(), i, n > 1 ? " " : "", n > 1 ? pad : "");
		fprintf(stderr, "ERR rank=%d size=%d pid=%d line=%d%s%s\n", rank, size,
			(int) getpid(), i, n > 1 ? " " : "", n > 1 ? pad : "");
	}
	fflush(stdout);
	fflush(stderr);
	MPICHECK(MPI_Finalize());
	return 0;
}
