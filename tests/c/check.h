/*
 * check.h: the assertion macros the C tests share. CHECK fails the program
 * when a condition is false; EXPECT when a call returns another status than
 * the one wanted, naming both.
 */
#ifndef HREG_TESTS_CHECK_H
#define HREG_TESTS_CHECK_H

#include <hreg.h>
#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond)                                                                \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            exit(1);                                                               \
        }                                                                          \
    } while (0)

#define EXPECT(call, want)                                                         \
    do {                                                                           \
        int s_ = (call);                                                           \
        if (s_ != (want)) {                                                        \
            fprintf(stderr, "%s:%d: %s returned %d (%s), expected %s\n", __FILE__, \
                    __LINE__, #call, s_, hreg_strerror(s_), #want);                \
            exit(1);                                                               \
        }                                                                          \
    } while (0)

#endif
