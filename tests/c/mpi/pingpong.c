/* pingpong [-s] REPS [SIZE...]: ranks 0 and 1 bounce messages (other ranks
 * only initialise and finalise).  Default sizes: 0 B and the powers of 4 from 1 B
 * to 4 MiB.  Every byte is verified in both directions: rank 0 sends a
 * pattern that depends on size and repetition, rank 1 echoes what it got and
 * then checks it, rank 0 checks the echo; the received length too.  The
 * timed part is the send and the receive only.  Per size rank 0 prints
 *   PP size=S reps=R rtt_med_us=M rtt_min_us=m MBps=B
 * (B: 2*S*R bytes over the summed round trips), then "PP OK".
 * With -s (stream) rank 0 instead sends REPS messages of each size back to
 * back, rank 1 receives and verifies each, then answers with one 0-byte
 * message; rank 0 prints "ST size=S reps=R secs=T MBps=B" (B: S*R bytes
 * from the first send to the answer), then "PP OK". */
#include "common.h"

static unsigned char pat(size_t j, int rep, int size)
{
	return (unsigned char) (j * 131u + (unsigned) rep * 7u + (unsigned) size);
}

static int cmpd(const void *a, const void *b)
{
	double x = *(const double *) a, y = *(const double *) b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	int rank, nprocs, reps, nsizes, i, r, cnt, stream = 0;
	int defsizes[13], *sizes;
	size_t j, maxsize = 0;
	unsigned char *sbuf, *rbuf;
	double *rtt, t0, sum;
	MPI_Status st;

	MPICHECK(MPI_Init(&argc, &argv));
	MPICHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
	MPICHECK(MPI_Comm_size(MPI_COMM_WORLD, &nprocs));
	if (argc > 1 && strcmp(argv[1], "-s") == 0) {
		stream = 1;
		argv++;
		argc--;
	}
	CHECK(argc >= 2, "usage: pingpong [-s] REPS [SIZE...]");
	CHECK(nprocs >= 2, "needs 2 processes, got %d", nprocs);
	reps = atoi(argv[1]);
	CHECK(reps >= 1, "REPS must be >= 1");
	if (argc > 2) {
		nsizes = argc - 2;
		sizes = malloc(sizeof(int) * nsizes);
		for (i = 0; i < nsizes; i++)
			sizes[i] = atoi(argv[i + 2]);
	} else {
		defsizes[0] = 0;
		for (i = 1; i < 13; i++)
			defsizes[i] = 1 << (2 * (i - 1));
		nsizes = 13;
		sizes = defsizes;
	}
	for (i = 0; i < nsizes; i++)
		if ((size_t) sizes[i] > maxsize)
			maxsize = (size_t) sizes[i];
	sbuf = malloc(maxsize + 1);
	rbuf = malloc(maxsize + 1);
	rtt = malloc(sizeof(double) * reps);
	CHECK(sbuf && rbuf && rtt, "out of memory");

	for (i = 0; i < nsizes && rank < 2; i++) {
		int s = sizes[i];
		sum = 0;
		if (stream) {
			MPICHECK(MPI_Barrier(MPI_COMM_WORLD));
			if (rank == 0) {
				for (j = 0; j < (size_t) s; j++)
					sbuf[j] = pat(j, 0, s);
				t0 = MPI_Wtime();
				for (r = 0; r < reps; r++) {
					sbuf[0] = (unsigned char) r;
					MPICHECK(MPI_Send(sbuf, s, MPI_BYTE, 1, r, MPI_COMM_WORLD));
				}
				MPICHECK(MPI_Recv(rbuf, 1, MPI_BYTE, 1, reps, MPI_COMM_WORLD, &st));
				sum = MPI_Wtime() - t0;
				MPICHECK(MPI_Get_count(&st, MPI_BYTE, &cnt));
				CHECK(cnt == 0, "stream size %d: answer of %d bytes", s, cnt);
				printf("ST size=%d reps=%d secs=%.6f MBps=%.2f\n", s, reps, sum,
				       sum > 0 ? (double) s * reps / sum / 1e6 : 0.0);
				fflush(stdout);
			} else {
				for (r = 0; r < reps; r++) {
					memset(rbuf, 0, (size_t) s + 1);
					MPICHECK(MPI_Recv(rbuf, s + 1, MPI_BYTE, 0, r, MPI_COMM_WORLD, &st));
					MPICHECK(MPI_Get_count(&st, MPI_BYTE, &cnt));
					CHECK(cnt == s, "stream size %d msg %d: %d bytes", s, r, cnt);
					for (j = 0; j < (size_t) s; j++)
						CHECK(rbuf[j] == (j ? pat(j, 0, s) : (unsigned char) r),
						      "stream size %d msg %d: byte %lu is %d", s, r,
						      (unsigned long) j, rbuf[j]);
				}
				MPICHECK(MPI_Send(rbuf, 0, MPI_BYTE, 0, reps, MPI_COMM_WORLD));
			}
			continue;
		}
		for (r = 0; r < reps; r++) {
			if (rank == 0) {
				for (j = 0; j < (size_t) s; j++)
					sbuf[j] = pat(j, r, s);
				memset(rbuf, 0, (size_t) s + 1);
				t0 = MPI_Wtime();
				MPICHECK(MPI_Send(sbuf, s, MPI_BYTE, 1, r, MPI_COMM_WORLD));
				MPICHECK(MPI_Recv(rbuf, s + 1, MPI_BYTE, 1, r, MPI_COMM_WORLD, &st));
				rtt[r] = MPI_Wtime() - t0;
				sum += rtt[r];
				MPICHECK(MPI_Get_count(&st, MPI_BYTE, &cnt));
				CHECK(cnt == s, "size %d rep %d: echo of %d bytes", s, r, cnt);
				CHECK(memcmp(sbuf, rbuf, (size_t) s) == 0,
				      "size %d rep %d: echo differs", s, r);
			} else {
				MPICHECK(MPI_Recv(rbuf, s + 1, MPI_BYTE, 0, r, MPI_COMM_WORLD, &st));
				MPICHECK(MPI_Get_count(&st, MPI_BYTE, &cnt));
				MPICHECK(MPI_Send(rbuf, cnt, MPI_BYTE, 0, r, MPI_COMM_WORLD));
				CHECK(cnt == s, "size %d rep %d: received %d bytes", s, r, cnt);
				for (j = 0; j < (size_t) s; j++)
					CHECK(rbuf[j] == pat(j, r, s),
					      "size %d rep %d: byte %lu is %d, not %d", s, r,
					      (unsigned long) j, rbuf[j], pat(j, r, s));
				memset(rbuf, 0, (size_t) s + 1);
			}
		}
		if (rank == 0) {
			qsort(rtt, reps, sizeof(double), cmpd);
			printf("PP size=%d reps=%d rtt_med_us=%.1f rtt_min_us=%.1f MBps=%.2f\n",
			       s, reps, rtt[reps / 2] * 1e6, rtt[0] * 1e6,
			       sum > 0 ? 2.0 * s * reps / sum / 1e6 : 0.0);
			fflush(stdout);
		}
	}
	MPICHECK(MPI_Barrier(MPI_COMM_WORLD));
	if (rank == 0) {
		printf("PP OK\n");
		fflush(stdout);
	}
	MPICHECK(MPI_Finalize());
	return 0;
}
