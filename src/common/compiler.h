/*
 * Compiler helpers shared by every layer. No Xen, no I/O.
 */
#ifndef VD_COMMON_COMPILER_H
#define VD_COMMON_COMPILER_H

#include <assert.h>
#include <stddef.h>
#include <stdint.h>

#define VD_EXPORT       __attribute__((visibility("default")))
#define VD_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define VD_UNUSED       __attribute__((unused))
#define VD_NORETURN     __attribute__((noreturn))
#define vd_likely(x)    __builtin_expect(!!(x), 1)
#define vd_unlikely(x)  __builtin_expect(!!(x), 0)

#define VD_ARRAY_SIZE(a)      (sizeof(a) / sizeof((a)[0]))
#define VD_MIN(a, b)          ((a) < (b) ? (a) : (b))
#define VD_MAX(a, b)          ((a) > (b) ? (a) : (b))
#define VD_DIV_ROUND_UP(n, d) (((n) + (d)-1) / (d))
#define VD_ALIGN_UP(n, a)     (((n) + (a)-1) & ~((__typeof__(n))(a)-1))
#define VD_IS_ALIGNED(n, a)   (((n) & ((__typeof__(n))(a)-1)) == 0)

#define vd_container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/*
 * Accesses to memory shared with another domain: the compiler must read the
 * value exactly once (Linux READ_ONCE), so a hostile peer cannot change it
 * between a check and a use.
 */
#define VD_READ_ONCE(x)     (*(const volatile __typeof__(x) *)&(x))
#define VD_WRITE_ONCE(x, v) (*(volatile __typeof__(x) *)&(x) = (v))
#define vd_barrier()        __asm__ __volatile__("" ::: "memory")
#define vd_smp_mb()         __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define vd_smp_rmb()        __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define vd_smp_wmb()        __atomic_thread_fence(__ATOMIC_RELEASE)

#define VD_PAGE_SIZE    4096u
#define VD_PAGE_SHIFT   12
#define VD_SECTOR_SIZE  512u
#define VD_SECTOR_SHIFT 9

#endif
