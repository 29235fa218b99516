/* libFuzzer entry point, shared by the fuzz targets and the replay runner. */
#ifndef VD_TESTS_FUZZ_H
#define VD_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
