/* exitcode RANK CODE after|before: rank RANK ends with exit status CODE,
 * after MPI_Finalize ("after") or straight after MPI_Init without
 * finalising ("before"; the other ranks then wait in MPI_Finalize, or
 * sleep, until the job is ended).  Every rank first prints
 * "EXIT rank=R pid=P", and no rank goes on before all have printed (else a
 * fast exit may get the job ended before a slow rank's line is out). */
#include "common.h"

int main(int argc, char **argv)
{
	int rank, who, code, after;

	MPICHECK(MPI_Init(&argc, &argv));
	MPICHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
	CHECK(argc == 4, "usage: exitcode RANK CODE after|before");
	who = atoi(argv[1]);
	code = atoi(argv[2]);
	after = strcmp(argv[3], "after") == 0;
	printf("EXIT rank=%d pid=%d\n", rank, (int) getpid());
	fflush(stdout);
	MPICHECK(MPI_Barrier(MPI_COMM_WORLD));
	if (!after && rank == who)
		exit(code);
	MPICHECK(MPI_Finalize());
	return rank == who ? code : 0;
}
