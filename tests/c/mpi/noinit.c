/* noinit: prints "NOINIT pid=P" and exits 0 without ever calling MPI_Init. */
#include <stdio.h>
#include <unistd.h>

int main(void)
{
	printf("NOINIT pid=%d\n", (int) getpid());
	return 0;
}
