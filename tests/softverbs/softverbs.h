/*
 * softverbs.h - test-only extras exported by libsoftverbs.so
 *
 * libsoftverbs.so is a userspace emulation of a subset of libibverbs used to
 * test RDMA transports between processes on a machine without an RDMA NIC.
 * The verbs themselves are declared by <infiniband/verbs.h>; this header only
 * declares the emulator's statistics interface.  A transport that dlopen()s
 * the library can look the function up with dlsym(h, "softverbs_stats").
 */
#ifndef SOFTVERBS_H
#define SOFTVERBS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Slots of wr_posted_by_opcode are indexed by enum ibv_wr_opcode:
 * 0 RDMA_WRITE, 1 RDMA_WRITE_WITH_IMM, 2 SEND, 3 SEND_WITH_IMM, 4 RDMA_READ. */
#define SOFTVERBS_STATS_NUM_OPCODES 16

/* Process-wide counters (all contexts, all QPs).  Every field is a uint64_t. */
struct softverbs_stats {
	uint64_t post_send_calls;      /* calls of ops.post_send (ibv_post_send) */
	uint64_t post_recv_calls;      /* calls of ops.post_recv (ibv_post_recv) */
	uint64_t wr_posted;            /* send WRs accepted by post_send */
	uint64_t wr_posted_by_opcode[SOFTVERBS_STATS_NUM_OPCODES];
	uint64_t recv_wr_posted;       /* receive WRs accepted by post_recv */
	uint64_t sges_posted;          /* SGEs carried by accepted send WRs */
	uint64_t signaled_completions; /* successful send CQEs generated */
	uint64_t recv_completions;     /* successful receive CQEs generated */
	uint64_t error_completions;    /* CQEs with status != IBV_WC_SUCCESS */
	uint64_t bytes_written;        /* RDMA WRITE(+IMM) payload bytes transmitted */
	uint64_t bytes_sent;           /* SEND(+IMM) payload bytes transmitted */
	uint64_t bytes_read;           /* RDMA READ payload bytes received */
	uint64_t payload_bytes_tx;     /* all payload bytes transmitted (incl. READ responses) */
	uint64_t cq_overflows;         /* CQEs dropped because a CQ was full */
	uint64_t async_events;         /* async events queued */
	uint64_t dmabuf_mrs;           /* MRs registered by ibv_reg_dmabuf_mr */
};

/* Copy the counters into *out.  Returns 0 (or -1 with errno EINVAL for NULL). */
int softverbs_stats(struct softverbs_stats *out);
/* Zero all counters (does not reset the fault-injection byte counter). */
void softverbs_stats_reset(void);

typedef int (*softverbs_stats_fn)(struct softverbs_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* SOFTVERBS_H */
