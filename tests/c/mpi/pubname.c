/* pubname MODE SERVICE [GOFILE]: MPI_Publish_name, MPI_Lookup_name and
 * MPI_Unpublish_name (LAM keeps the names in traced, list TRNAMELIST, on
 * node 0).  Errors are returned (MPI_ERRORS_RETURN) and printed as
 * "class=C" with MPI_Error_class's C; a port is printed as "port=P".
 *
 *   pair   two ranks: 0 publishes SERVICE, 1 looks it up, 0 publishes it
 *          again (refused), 1 unpublishes it, 0 looks it up and unpublishes
 *          it (both refused).  Output in that order (rank 0 and 1 take
 *          turns, each line written before the next barrier).
 *   pub    rank 0 publishes SERVICE, prints PUBLISHED, then waits for GOFILE
 *          to exist (at most 60 s, then exit 9) and finalizes
 *          (MPI_Finalize sweeps the names it published).
 *   get    rank 0 looks SERVICE up.
 *   unpub  rank 0 unpublishes SERVICE.
 */
#include "common.h"

static char port_of[MPI_MAX_PORT_NAME];

static int err_class(int rc)
{
	int cls = rc;

	if (rc != MPI_SUCCESS)
		MPI_Error_class(rc, &cls);
	return cls;
}

static void publish(const char *what, char *svc)
{
	int rc = MPI_Publish_name(svc, MPI_INFO_NULL, port_of);

	printf("%s %s class=%d\n", what, svc, err_class(rc));
	fflush(stdout);
}

static void lookup(const char *what, char *svc)
{
	char port[MPI_MAX_PORT_NAME];
	int rc;

	memset(port, 0, sizeof(port));
	rc = MPI_Lookup_name(svc, MPI_INFO_NULL, port);
	if (rc == MPI_SUCCESS)
		printf("%s %s class=0 port=%s\n", what, svc, port);
	else
		printf("%s %s class=%d\n", what, svc, err_class(rc));
	fflush(stdout);
}

static void unpublish(const char *what, char *svc)
{
	int rc = MPI_Unpublish_name(svc, MPI_INFO_NULL, port_of);

	printf("%s %s class=%d\n", what, svc, err_class(rc));
	fflush(stdout);
}

int main(int argc, char **argv)
{
	int rank, size, i;
	char *mode, *svc;

	setvbuf(stdout, NULL, _IOLBF, 0);
	MPICHECK(MPI_Init(&argc, &argv));
	MPICHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
	MPICHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
	MPICHECK(MPI_Errhandler_set(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
	CHECK(argc >= 3, "usage: pubname MODE SERVICE [GOFILE]");
	mode = argv[1];
	svc = argv[2];
	snprintf(port_of, sizeof(port_of), "port-of-%s", svc);

	if (strcmp(mode, "pair") == 0) {
		CHECK(size == 2, "pair needs 2 ranks, not %d", size);
		if (rank == 0)
			publish("PUBLISH", svc);
		MPI_Barrier(MPI_COMM_WORLD);
		if (rank == 1)
			lookup("LOOKUP", svc);
		MPI_Barrier(MPI_COMM_WORLD);
		if (rank == 0)
			publish("PUBLISH-AGAIN", svc);
		MPI_Barrier(MPI_COMM_WORLD);
		if (rank == 1)
			unpublish("UNPUBLISH", svc);
		MPI_Barrier(MPI_COMM_WORLD);
		if (rank == 0) {
			lookup("LOOKUP-GONE", svc);
			unpublish("UNPUBLISH-GONE", svc);
		}
	} else if (rank == 0 && strcmp(mode, "pub") == 0) {
		CHECK(argc >= 4, "pub needs a GOFILE");
		publish("PUBLISHED", svc);
		for (i = 0; access(argv[3], F_OK) != 0; i++) {
			if (i == 6000) {  /* 60 s: a broken test leaves nothing */
				printf("GAVEUP\n");
				exit(9);
			}
			usleep(10000);
		}
	} else if (rank == 0 && strcmp(mode, "get") == 0) {
		lookup("LOOKUP", svc);
	} else if (rank == 0 && strcmp(mode, "unpub") == 0) {
		unpublish("UNPUBLISH", svc);
	}
	MPICHECK(MPI_Finalize());
	return 0;
}
