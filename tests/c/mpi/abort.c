/* abort RANK CODE: rank RANK prints "ABORT rank=R pid=P" and calls
 * MPI_Abort(MPI_COMM_WORLD, CODE); the others print "WAIT rank=R pid=P" and
 * block in MPI_Recv for a message that never comes.  (LAM reads CODE as
 * class | function << 8 | status << 17: a non-zero low byte makes the exit
 * status CODE >> 17, so 5 exits 0 and (5 << 17) + 1 exits 5.) */
#include "common.h"

int main(int argc, char **argv)
{
	int rank, size, who, code, x;
	MPI_Status st;

	MPICHECK(MPI_Init(&argc, &argv));
	MPICHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
	MPICHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
	CHECK(argc == 3, "usage: abort RANK CODE");
	who = atoi(argv[1]);
	code = atoi(argv[2]);
	if (rank == who) {
		if (size > 1)
			sleep(1); /* let the others reach MPI_Recv */
		printf("ABORT rank=%d pid=%d\n", rank, (int) getpid());
		fflush(stdout);
		MPI_Abort(MPI_COMM_WORLD, code);
		printf("FAIL MPI_Abort returned\n");
		return 99;
	}
	printf("WAIT rank=%d pid=%d\n", rank, (int) getpid());
	fflush(stdout);
	MPI_Recv(&x, 1, MPI_INT, who, 77, MPI_COMM_WORLD, &st);
	printf("FAIL rank=%d: received\n", rank);
	MPI_Finalize();
	return 98;
}
