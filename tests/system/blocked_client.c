#include <stdio.h>
#include <string.h>
#include <lam.h>
#include <kreq.h>
#include <priority.h>
#include <unistd.h>
int main(void) {
    struct kmsg m; char buf[64];
    if (kinit(PRCMD)) { perror("kinit"); return 1; }
    printf("attached %d\n", getpid()); fflush(stdout);
    memset(&m, 0, sizeof m);
    m.k_event = 424242; m.k_type = 0; m.k_length = sizeof buf; m.k_msg = buf; m.k_flags = 0;
    krecv(&m);      /* nobody sends: blocks in the daemon */
    printf("received?\n");
    return 0;
}
