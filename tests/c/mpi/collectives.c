/* collectives COUNT [REPS]: barrier, bcast, reduce, allreduce, alltoall
 * and allgather over COUNT ints (alltoall: COUNT ints per process, split
 * into equal blocks), every element verified, REPS times (default 1).
 * Rank 0 prints "COLL op count=N OK" per operation on the first round, then
 * "COLL OK np=P secs=T"; a wrong element prints FAIL and aborts with 3. */
#include "common.h"

int main(int argc, char **argv)
{
	int rank, p, n, reps, rep, i, k, root, blk;
	int *a, *b;

	MPICHECK(MPI_Init(&argc, &argv));
	MPICHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
	MPICHECK(MPI_Comm_size(MPI_COMM_WORLD, &p));
	CHECK(argc >= 2, "usage: collectives COUNT [REPS]");
	n = atoi(argv[1]);
	reps = argc > 2 ? atoi(argv[2]) : 1;
	CHECK(n >= p && reps >= 1, "bad COUNT/REPS");
	blk = n / p;
	a = malloc(sizeof(int) * (size_t) n);
	b = malloc(sizeof(int) * (size_t) n * p);
	CHECK(a && b, "out of memory");
	double t0 = MPI_Wtime();

	for (rep = 0; rep < reps; rep++) {
#define SAY(op) do { if (rank == 0 && rep == 0) { \
	printf("COLL %s count=%d OK\n", op, n); fflush(stdout); } } while (0)
		MPICHECK(MPI_Barrier(MPI_COMM_WORLD));
		SAY("barrier");

		root = (p - 1 + rep) % p;
		for (i = 0; i < n; i++)
			a[i] = rank == root ? i * 3 + root + rep : -1;
		MPICHECK(MPI_Bcast(a, n, MPI_INT, root, MPI_COMM_WORLD));
		for (i = 0; i < n; i++)
			CHECK(a[i] == i * 3 + root + rep, "bcast [%d] = %d", i, a[i]);
		SAY("bcast");

		for (i = 0; i < n; i++)
			a[i] = (i & 0xffff) + rank + rep;
		for (i = 0; i < n; i++)
			b[i] = -1;
		MPICHECK(MPI_Reduce(a, b, n, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD));
		if (rank == 0)
			for (i = 0; i < n; i++)
				CHECK(b[i] == p * ((i & 0xffff) + rep) + p * (p - 1) / 2,
				      "reduce [%d] = %d", i, b[i]);
		SAY("reduce");

		for (i = 0; i < n; i++)
			a[i] = (i * 7 + rank * 13 + rep) % 1000;
		MPICHECK(MPI_Allreduce(a, b, n, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
		for (i = 0; i < n; i++) {
			int m = -1;
			for (k = 0; k < p; k++)
				if ((i * 7 + k * 13 + rep) % 1000 > m)
					m = (i * 7 + k * 13 + rep) % 1000;
			CHECK(b[i] == m, "allreduce [%d] = %d, not %d", i, b[i], m);
		}
		SAY("allreduce");

		/* alltoall: block k of rank r's send buffer goes to rank k */
		for (k = 0; k < p; k++)
			for (i = 0; i < blk; i++)
				a[k * blk + i] = ((rank * 64 + k) << 20) + ((i + rep) & 0xfffff);
		for (i = 0; i < blk * p; i++)
			b[i] = -1;
		MPICHECK(MPI_Alltoall(a, blk, MPI_INT, b, blk, MPI_INT, MPI_COMM_WORLD));
		for (k = 0; k < p; k++)
			for (i = 0; i < blk; i++)
				CHECK(b[k * blk + i] == ((k * 64 + rank) << 20) + ((i + rep) & 0xfffff),
				      "alltoall from %d [%d] = %d", k, i, b[k * blk + i]);
		SAY("alltoall");

		for (i = 0; i < n; i++)
			a[i] = rank * 100000 + (i ^ rep);
		MPICHECK(MPI_Allgather(a, n, MPI_INT, b, n, MPI_INT, MPI_COMM_WORLD));
		for (k = 0; k < p; k++)
			for (i = 0; i < n; i++)
				CHECK(b[(size_t) k * n + i] == k * 100000 + (i ^ rep),
				      "allgather from %d [%d] = %d", k, i, b[(size_t) k * n + i]);
		SAY("allgather");
	}
	MPICHECK(MPI_Barrier(MPI_COMM_WORLD));
	if (rank == 0) {
		printf("COLL OK np=%d secs=%.3f\n", p, MPI_Wtime() - t0);
		fflush(stdout);
	}
	MPICHECK(MPI_Finalize());
	return 0;
}
