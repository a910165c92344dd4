/* env NAME...: each rank prints "ENV rank=R NAME=[value]" or
 * "ENV rank=R NAME unset" for every NAME. */
#include "common.h"

int main(int argc, char **argv)
{
	int rank, i;
	const char *v;

	MPICHECK(MPI_Init(&argc, &argv));
	MPICHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
	for (i = 1; i < argc; i++) {
		v = getenv(argv[i]);
		if (v)
			printf("ENV rank=%d %s=[%s]\n", rank, argv[i], v);
		else
			printf("ENV rank=%d %s unset\n", rank, argv[i]);
	}
	fflush(stdout);
	MPICHECK(MPI_Finalize());
	return 0;
}
