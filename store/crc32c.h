/* crc32c.h - CRC32C (Castagnoli), the checksum of every store record.
 *
 * Uses the SSE4.2 crc32 instruction when the CPU has it (checked once, at the
 * first call) and a slicing table otherwise. Thread-safe. */
#ifndef RINGMAIL_STORE_CRC32C_H
#define RINGMAIL_STORE_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Returns the CRC32C of p[0..len) continuing from crc (0 to start): the
 * result of crc32c(crc32c(0, a), b) equals crc32c(0, a||b). */
uint32_t crc32c(uint32_t crc, const void *p, size_t len);

/* The portable table implementation, exposed so tests can compare both. */
uint32_t crc32c_sw(uint32_t crc, const void *p, size_t len);
/* The SSE4.2 implementation; only call it when crc32c_hw_available(). */
uint32_t crc32c_hw(uint32_t crc, const void *p, size_t len);
int crc32c_hw_available(void);

#endif
