/* Stand-in for a test or benchmark whose toolkit headers are missing on this
   machine: says which and why, and exits with the skip convention (77). */
#include <stdio.h>
int main(void) {
    printf("SKIP: %s: %s\n", KT_SKIP_NAME, KT_SKIP_WHY);
    return 77;
}
