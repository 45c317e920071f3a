/*
 * The checks of remora's unit tests: each prints one line, "ok   <what>" or
 * "FAIL file:line: <what>", and the counts end the run ("N checks, M failed").
 */
#ifndef REMORA_TEST_CHECK_H
#define REMORA_TEST_CHECK_H

#include <stdio.h>
#include <string.h>

static int failures, checks;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        checks++;                                                                                  \
        if (cond) {                                                                                \
            printf("ok   %s\n", #cond);                                                            \
        } else {                                                                                   \
            printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                                 \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

#define CHECK_INT(a, b)                                                                            \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        checks++;                                                                                  \
        if (a_ == b_) {                                                                            \
            printf("ok   %s == %lld\n", #a, b_);                                                   \
        } else {                                                                                   \
            printf("FAIL %s:%d: %s: got %lld, want %lld\n", __FILE__, __LINE__, #a, a_, b_);       \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *a_ = (a), *b_ = (b);                                                           \
        checks++;                                                                                  \
        if ((!a_ && !b_) || (a_ && b_ && !strcmp(a_, b_))) {                                       \
            printf("ok   %s == \"%s\"\n", #a, b_ ? b_ : "(null)");                                 \
        } else {                                                                                   \
            printf("FAIL %s:%d: %s: got \"%s\", want \"%s\"\n", __FILE__, __LINE__, #a,            \
                   a_ ? a_ : "(null)", b_ ? b_ : "(null)");                                        \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

/* Prints the counts; the exit status of the test. */
static inline int check_summary(void)
{
    printf("%d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}

#endif
