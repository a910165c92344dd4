/* sleeper GOFILE [recv]: a job that stays up until the test lets it go.
 *
 * Every rank calls MPI_Init and prints "SLEEPER rank=R pid=P".  Without
 * "recv", every rank then waits outside MPI (polling every 10 ms) for GOFILE
 * to exist, and all meet in MPI_Barrier.  With "recv", only rank 0 waits for
 * GOFILE and then sends one int (tag 42) to every other rank, which block in
 * MPI_Recv meanwhile (under -ssi rpi lamd: inside the LAM kernel, where
 * mpitask sees them).  Then MPI_Finalize and "WOKE rank=R".  A rank that has
 * waited 60 s gives up with exit status 9, so nothing outlives a broken
 * test for long. */
#include "common.h"

static void wait_go(const char *path)
{
	int i;
	for (i = 0; i < 6000; i++) {
		if (access(path, F_OK) == 0)
			return;
		usleep(10000);
	}
	printf("GAVEUP pid=%d\n", (int) getpid());
	fflush(stdout);
	exit(9);
}

int main(int argc, char **argv)
{
	int rank, size, i, x = 0, recv;
	MPI_Status st;

	MPICHECK(MPI_Init(&argc, &argv));
	MPICHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
	MPICHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
	CHECK(argc >= 2, "usage: sleeper GOFILE [recv]");
	recv = argc > 2 && strcmp(argv[2], "recv") == 0;
	printf("SLEEPER rank=%d pid=%d\n", rank, (int) getpid());
	fflush(stdout);
	if (!recv) {
		wait_go(argv[1]);
		MPICHECK(MPI_Barrier(MPI_COMM_WORLD));
	} else if (rank == 0) {
		wait_go(argv[1]);
		for (i = 1; i < size; i++)
			MPICHECK(MPI_Send(&i, 1, MPI_INT, i, 42, MPI_COMM_WORLD));
	} else {
		MPICHECK(MPI_Recv(&x, 1, MPI_INT, 0, 42, MPI_COMM_WORLD, &st));
		CHECK(x == rank, "rank %d received %d", rank, x);
	}
	MPICHECK(MPI_Finalize());
	printf("WOKE rank=%d\n", rank);
	fflush(stdout);
	return 0;
}
