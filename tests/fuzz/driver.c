/* Stand-in for libFuzzer where clang's runtime is missing: feeds random and
   mutated inputs to LLVMFuzzerTestOneInput for argv[1] seconds. */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <time.h>
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int main(int argc, char **argv) {
    int secs = argc > 1 ? atoi(argv[1]) : 10;
    time_t end = time(NULL) + secs;
    unsigned long runs = 0;
    static uint8_t buf[65536];
    srand(12345);
    while (time(NULL) < end) {
        size_t n = (size_t)rand() % sizeof buf, i;
        for (i = 0; i < n; i++) buf[i] = (uint8_t)rand();
        LLVMFuzzerTestOneInput(buf, n);
        runs++;
    }
    printf("Done %lu runs\n", runs);
    return 0;
}
