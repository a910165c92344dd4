/* args ARG...: each rank prints "ARGC rank=R n" then "ARG rank=R i [argv[i]]"
 * for i >= 1, so that spaces and empty arguments are visible. */
#include "common.h"

int main(int argc, char **argv)
{
	int rank, i;

	MPICHECK(MPI_Init(&argc, &argv));
	MPICHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
	printf("ARGC rank=%d %d\n", rank, argc);
	for (i = 1; i < argc; i++)
		printf("ARG rank=%d %d [%s]\n", rank, i, argv[i]);
	fflush(stdout);
	MPICHECK(MPI_Finalize());
	return 0;
}
