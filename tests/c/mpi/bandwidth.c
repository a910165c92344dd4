/* bandwidth WINDOW ITERS SIZE...: bandwidth-style traffic from rank 0 to
 * rank 1 (other ranks only initialise and finalise).  Per size and
 * iteration, rank 1 posts WINDOW MPI_Irecv, rank 0 posts WINDOW MPI_Isend of
 * SIZE bytes each, both MPI_Waitall, and rank 1 answers with a 0-byte
 * message.  Every byte of every message is verified (the pattern depends on
 * size, iteration and slot); rank 0 prints
 * "BW size=S window=W iters=I MBps=B" per size, then "BW OK". */
#include "common.h"

#define MAXWIN 64

static unsigned char pat(size_t j, int it, int k, int size)
{
	return (unsigned char) (j * 251u + (unsigned) it * 17u + (unsigned) k * 29u +
				(unsigned) size);
}

int main(int argc, char **argv)
{
	int rank, nprocs, win, iters, a, it, k, s, cnt;
	size_t j;
	unsigned char *buf;
	MPI_Request rq[MAXWIN];
	MPI_Status st[MAXWIN];
	double t0, secs;

	MPICHECK(MPI_Init(&argc, &argv));
	MPICHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
	MPICHECK(MPI_Comm_size(MPI_COMM_WORLD, &nprocs));
	CHECK(argc >= 4, "usage: bandwidth WINDOW ITERS SIZE...");
	CHECK(nprocs >= 2, "needs 2 processes");
	win = atoi(argv[1]);
	iters = atoi(argv[2]);
	CHECK(win >= 1 && win <= MAXWIN && iters >= 1, "bad WINDOW/ITERS");
	for (a = 3; a < argc && rank < 2; a++) {
		s = atoi(argv[a]);
		buf = malloc((size_t) s * win + 1);
		CHECK(buf != NULL, "out of memory");
		MPICHECK(MPI_Barrier(MPI_COMM_WORLD));
		t0 = MPI_Wtime();
		for (it = 0; it < iters; it++) {
			if (rank == 0) {
				for (k = 0; k < win; k++)
					for (j = 0; j < (size_t) s; j++)
						buf[(size_t) k * s + j] = pat(j, it, k, s);
				for (k = 0; k < win; k++)
					MPICHECK(MPI_Isend(buf + (size_t) k * s, s, MPI_BYTE, 1, k,
							   MPI_COMM_WORLD, &rq[k]));
				MPICHECK(MPI_Waitall(win, rq, st));
				MPICHECK(MPI_Recv(buf, 0, MPI_BYTE, 1, MAXWIN, MPI_COMM_WORLD, st));
			} else {
				memset(buf, 0, (size_t) s * win);
				for (k = 0; k < win; k++)
					MPICHECK(MPI_Irecv(buf + (size_t) k * s, s, MPI_BYTE, 0, k,
							   MPI_COMM_WORLD, &rq[k]));
				MPICHECK(MPI_Waitall(win, rq, st));
				for (k = 0; k < win; k++) {
					MPICHECK(MPI_Get_count(&st[k], MPI_BYTE, &cnt));
					CHECK(cnt == s, "size %d it %d slot %d: %d bytes", s, it, k, cnt);
					for (j = 0; j < (size_t) s; j++)
						CHECK(buf[(size_t) k * s + j] == pat(j, it, k, s),
						      "size %d it %d slot %d: byte %lu", s, it, k,
						      (unsigned long) j);
				}
				MPICHECK(MPI_Send(buf, 0, MPI_BYTE, 0, MAXWIN, MPI_COMM_WORLD));
			}
		}
		secs = MPI_Wtime() - t0;
		if (rank == 0) {
			printf("BW size=%d window=%d iters=%d MBps=%.2f\n", s, win, iters,
			       secs > 0 ? (double) s * win * iters / secs / 1e6 : 0.0);
			fflush(stdout);
		}
		free(buf);
	}
	MPICHECK(MPI_Barrier(MPI_COMM_WORLD));
	if (rank == 0) {
		printf("BW OK\n");
		fflush(stdout);
	}
	MPICHECK(MPI_Finalize());
	return 0;
}
