/* nofinalize [CODE]: MPI_Init, prints "NOFIN rank=R pid=P", exits with CODE
 * (default 0) without MPI_Finalize. */
#include "common.h"

int main(int argc, char **argv)
{
	int rank;

	MPICHECK(MPI_Init(&argc, &argv));
	MPICHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
	printf("NOFIN rank=%d pid=%d\n", rank, (int) getpid());
	fflush(stdout);
	return argc > 1 ? atoi(argv[1]) : 0;
}
