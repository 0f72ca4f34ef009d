/*
 * The entrypoint of critest's look-alike nonewprivs image: installed setuid root, it prints the
 * effective uid it runs with. Started as uid 1000, it prints "Effective uid: 0" when the
 * setuid bit took effect and "Effective uid: 1000" under no_new_privs, which is what critest's
 * NoNewPrivs tests read from the container's log.
 *
 * Built static (`cc -static`), so the image needs no libc.
 */
#include <stdio.h>
#include <unistd.h>

int main(void) {
	printf("Effective uid: %d\n", (int)geteuid());
	return fflush(stdout) == 0 ? 0 : 1;
}
