/* Shared by the MPI test programs of tests/test_jobs.py (one .c each). */
#ifndef LAMD_MPI_COMMON_H
#define LAMD_MPI_COMMON_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <mpi.h>

/* A failed check: one FAIL line on stdout, then the whole job ends with 3. */
#define CHECK(cond, ...) do { \
	if (!(cond)) { \
		printf("FAIL %s:%d: ", __FILE__, __LINE__); \
		printf(__VA_ARGS__); \
		printf("\n"); \
		fflush(stdout); \
		MPI_Abort(MPI_COMM_WORLD, 3); \
		exit(3); \
	} \
} while (0)

#define MPICHECK(call) do { \
	int rc_ = (call); \
	CHECK(rc_ == MPI_SUCCESS, "%s returned %d", #call, rc_); \
} while (0)

/* FNV-1a, 32 bits: the checksum the tests recompute in Python. */
static inline unsigned int fnv1a(const unsigned char *p, size_t n, unsigned int h)
{
	size_t i;
	for (i = 0; i < n; i++) {
		h ^= p[i];
		h *= 16777619u;
	}
	return h;
}
#define FNV_INIT 2166136261u

#endif
