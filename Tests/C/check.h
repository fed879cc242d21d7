/* A minimal check harness for the C tests: CHECK counts failures, main returns their number. */
#ifndef DNA_TEST_CHECK_H
#define DNA_TEST_CHECK_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_failures = 0;
static int check_count = 0;

#define CHECK(cond) do { \
    check_count++; \
    if (!(cond)) { check_failures++; fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); } \
} while (0)

#define CHECK_EQ_INT(a, b) do { \
    long long check_a_ = (long long)(a), check_b_ = (long long)(b); \
    check_count++; \
    if (check_a_ != check_b_) { check_failures++; \
        fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%lld != %lld)\n", __FILE__, __LINE__, #a, #b, check_a_, check_b_); } \
} while (0)

static inline int check_report(const char *name) {
    printf("%s: %d checks, %d failed\n", name, check_count, check_failures);
    return check_failures == 0 ? 0 : 1;
}

/* Hex to bytes; returns the byte count. */
static inline size_t from_hex(const char *hex, unsigned char *out, size_t cap) {
    size_t n = 0;
    while (hex[0] && hex[1] && n < cap) {
        unsigned int byte;
        if (sscanf(hex, "%2x", &byte) != 1) break;
        out[n++] = (unsigned char)byte;
        hex += 2;
    }
    return n;
}
#endif
