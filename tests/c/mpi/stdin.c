/* stdin: rank 0 reads its standard input to EOF and prints
 * "STDIN rank=0 bytes=N fnv=%08x"; the sum is broadcast, and every other
 * rank prints "GOT rank=R bytes=N fnv=%08x" (they do not read stdin). */
#include "common.h"

int main(int argc, char **argv)
{
	int rank;
	unsigned int v[2] = {0, FNV_INIT};
	unsigned char buf[65536];
	ssize_t n;

	MPICHECK(MPI_Init(&argc, &argv));
	MPICHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
	if (rank == 0) {
		for (;;) {
			n = read(0, buf, sizeof buf);
			CHECK(n >= 0, "read(0) failed");
			if (n == 0)
				break;
			v[0] += (unsigned int) n;
			v[1] = fnv1a(buf, (size_t) n, v[1]);
		}
		printf("STDIN rank=0 bytes=%u fnv=%08x\n", v[0], v[1]);
		fflush(stdout);
	}
	MPICHECK(MPI_Bcast(v, 2, MPI_UNSIGNED, 0, MPI_COMM_WORLD));
	if (rank != 0) {
		printf("GOT rank=%d bytes=%u fnv=%08x\n", rank, v[0], v[1]);
		fflush(stdout);
	}
	MPICHECK(MPI_Finalize());
	return 0;
}
