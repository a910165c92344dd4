/* cwd: each rank prints "CWD rank=R [getcwd()]". */
#include "common.h"

int main(int argc, char **argv)
{
	int rank;
	char buf[4096];

	MPICHECK(MPI_Init(&argc, &argv));
	MPICHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
	CHECK(getcwd(buf, sizeof buf) != NULL, "getcwd failed");
	printf("CWD rank=%d [%s]\n", rank, buf);
	fflush(stdout);
	MPICHECK(MPI_Finalize());
	return 0;
}
