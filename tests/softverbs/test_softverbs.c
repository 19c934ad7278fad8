/*
 * test_softverbs.c - tests for libsoftverbs.so
 *
 * Usage: test_softverbs PATH/TO/libsoftverbs.so
 *
 * Like the transport that will use it, this program is compiled against the
 * real <infiniband/verbs.h> but is NOT linked with libibverbs: it dlopen()s the
 * library given on the command line and resolves every verb with dlsym().  The
 * data path uses the inline functions of verbs.h (ibv_post_send, ibv_post_recv,
 * ibv_poll_cq, ibv_req_notify_cq) which call through ctx->ops.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <infiniband/verbs.h>

#include "softverbs.h"

/* ------------------------------------------------------------------------ */
/* resolved verbs                                                           */

static struct {
	struct ibv_device **(*get_device_list)(int *);
	void (*free_device_list)(struct ibv_device **);
	const char *(*get_device_name)(struct ibv_device *);
	__be64 (*get_device_guid)(struct ibv_device *);
	struct ibv_context *(*open_device)(struct ibv_device *);
	int (*close_device)(struct ibv_context *);
	int (*query_device)(struct ibv_context *, struct ibv_device_attr *);
	int (*query_port)(struct ibv_context *, uint8_t, struct ibv_port_attr *);
	int (*query_gid)(struct ibv_context *, uint8_t, int, union ibv_gid *);
	struct ibv_pd *(*alloc_pd)(struct ibv_context *);
	int (*dealloc_pd)(struct ibv_pd *);
	struct ibv_mr *(*reg_mr)(struct ibv_pd *, void *, size_t, int);
	struct ibv_mr *(*reg_mr_iova2)(struct ibv_pd *, void *, size_t, uint64_t, unsigned int);
	struct ibv_mr *(*reg_dmabuf_mr)(struct ibv_pd *, uint64_t, size_t, uint64_t, int, int);
	int (*dereg_mr)(struct ibv_mr *);
	struct ibv_comp_channel *(*create_comp_channel)(struct ibv_context *);
	int (*destroy_comp_channel)(struct ibv_comp_channel *);
	struct ibv_cq *(*create_cq)(struct ibv_context *, int, void *, struct ibv_comp_channel *,
				    int);
	int (*destroy_cq)(struct ibv_cq *);
	int (*get_cq_event)(struct ibv_comp_channel *, struct ibv_cq **, void **);
	void (*ack_cq_events)(struct ibv_cq *, unsigned int);
	struct ibv_qp *(*create_qp)(struct ibv_pd *, struct ibv_qp_init_attr *);
	int (*modify_qp)(struct ibv_qp *, struct ibv_qp_attr *, int);
	int (*query_qp)(struct ibv_qp *, struct ibv_qp_attr *, int, struct ibv_qp_init_attr *);
	int (*destroy_qp)(struct ibv_qp *);
	int (*get_async_event)(struct ibv_context *, struct ibv_async_event *);
	void (*ack_async_event)(struct ibv_async_event *);
	const char *(*wc_status_str)(enum ibv_wc_status);
	const char *(*port_state_str)(enum ibv_port_state);
	int (*stats)(struct softverbs_stats *);
} V;

static const struct {
	const char *name;
	void *slot;
} g_syms[] = {
	{"ibv_get_device_list", &V.get_device_list},
	{"ibv_free_device_list", &V.free_device_list},
	{"ibv_get_device_name", &V.get_device_name},
	{"ibv_get_device_guid", &V.get_device_guid},
	{"ibv_open_device", &V.open_device},
	{"ibv_close_device", &V.close_device},
	{"ibv_query_device", &V.query_device},
	{"ibv_query_port", &V.query_port},
	{"ibv_query_gid", &V.query_gid},
	{"ibv_alloc_pd", &V.alloc_pd},
	{"ibv_dealloc_pd", &V.dealloc_pd},
	{"ibv_reg_mr", &V.reg_mr},
	{"ibv_reg_mr_iova2", &V.reg_mr_iova2},
	{"ibv_reg_dmabuf_mr", &V.reg_dmabuf_mr},
	{"ibv_dereg_mr", &V.dereg_mr},
	{"ibv_create_comp_channel", &V.create_comp_channel},
	{"ibv_destroy_comp_channel", &V.destroy_comp_channel},
	{"ibv_create_cq", &V.create_cq},
	{"ibv_destroy_cq", &V.destroy_cq},
	{"ibv_get_cq_event", &V.get_cq_event},
	{"ibv_ack_cq_events", &V.ack_cq_events},
	{"ibv_create_qp", &V.create_qp},
	{"ibv_modify_qp", &V.modify_qp},
	{"ibv_query_qp", &V.query_qp},
	{"ibv_destroy_qp", &V.destroy_qp},
	{"ibv_get_async_event", &V.get_async_event},
	{"ibv_ack_async_event", &V.ack_async_event},
	{"ibv_wc_status_str", &V.wc_status_str},
	{"ibv_port_state_str", &V.port_state_str},
	{"softverbs_stats", &V.stats},
};

/* ------------------------------------------------------------------------ */
/* test harness                                                             */

static int g_checks_failed;
static const char *g_lib_path;

#define CHECK(cond, ...)                                                          \
	do {                                                                      \
		if (!(cond)) {                                                    \
			g_checks_failed++;                                        \
			fprintf(stderr, "    FAIL [%d] %s:%d: %s: ", (int)getpid(), \
				__FILE__, __LINE__, #cond);                       \
			fprintf(stderr, __VA_ARGS__);                             \
			fputc('\n', stderr);                                      \
		}                                                                 \
	} while (0)

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(unsigned int ms)
{
	struct timespec ts = {(time_t)(ms / 1000u), (long)(ms % 1000u) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static uint8_t pat(uint64_t i, unsigned int k)
{
	return (uint8_t)(i * 131u + k * 7u + (i >> 11));
}

static void fill(uint8_t *p, size_t n, uint64_t start, unsigned int k)
{
	for (size_t i = 0; i < n; i++)
		p[i] = pat(start + i, k);
}

/* index of the first mismatch or -1 */
static long verify(const uint8_t *p, size_t n, uint64_t start, unsigned int k)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != pat(start + i, k))
			return (long)i;
	return -1;
}

/* blocking helpers for the parent/child control socket (with a timeout) */
static int xsend(int fd, const void *b, size_t n)
{
	const uint8_t *p = b;
	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int xrecv(int fd, void *b, size_t n, int timeout_ms)
{
	uint8_t *p = b;
	uint64_t dl = now_ms() + (uint64_t)timeout_ms;
	while (n) {
		struct pollfd pf = {fd, POLLIN, 0};
		int64_t left = (int64_t)(dl - now_ms());
		if ((int64_t)dl - (int64_t)now_ms() <= 0)
			return -1;
		int r = poll(&pf, 1, (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		ssize_t g = recv(fd, p, n, 0);
		if (g < 0 && errno == EINTR)
			continue;
		if (g <= 0)
			return -1;
		p += g;
		n -= (size_t)g;
	}
	return 0;
}

/* ------------------------------------------------------------------------ */
/* endpoints                                                                */

struct nopts {
	size_t len;        /* size of the main buffer / MR */
	int mr_access;     /* access of the main MR */
	int qp_access;     /* qp_access_flags */
	int sig_all;
	uint32_t max_send_wr, max_recv_wr, max_send_sge, max_recv_sge;
	int cqe;
	bool chan;
	int dev;
};

struct node {
	struct ibv_context *ctx;
	struct ibv_pd *pd;
	struct ibv_comp_channel *ch;
	struct ibv_cq *cq;
	struct ibv_qp *qp;
	uint8_t *buf;
	size_t len;
	struct ibv_mr *mr;
};

struct copts {
	enum ibv_mtu mtu;
	uint8_t rnr_retry;
	uint8_t min_rnr_timer;
	uint8_t timeout;
	uint8_t retry_cnt;
};

struct ep_info {
	uint32_t qpn;
	uint32_t rkey;
	uint64_t addr;
	uint64_t len;
	union ibv_gid gid;
	uint32_t rkey2; /* optional second region */
	uint64_t addr2;
	uint64_t len2;
};

static struct nopts nopts_default(void)
{
	struct nopts o;
	memset(&o, 0, sizeof(o));
	o.len = 1 << 20;
	o.mr_access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;
	o.qp_access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;
	o.max_send_wr = 256;
	o.max_recv_wr = 256;
	o.max_send_sge = 4;
	o.max_recv_sge = 4;
	o.cqe = 1024;
	return o;
}

static struct copts copts_default(void)
{
	struct copts c = {IBV_MTU_4096, 7, 12, 14, 7};
	return c;
}

static int node_open(struct node *n, const struct nopts *o)
{
	memset(n, 0, sizeof(*n));
	int num = 0;
	struct ibv_device **devs = V.get_device_list(&num);
	if (!devs || num <= o->dev) {
		if (devs)
			V.free_device_list(devs);
		return -1;
	}
	n->ctx = V.open_device(devs[o->dev]);
	V.free_device_list(devs);
	if (!n->ctx)
		return -1;
	n->pd = V.alloc_pd(n->ctx);
	if (o->chan)
		n->ch = V.create_comp_channel(n->ctx);
	n->cq = V.create_cq(n->ctx, o->cqe, n, n->ch, 0);
	struct ibv_qp_init_attr ia;
	memset(&ia, 0, sizeof(ia));
	ia.send_cq = n->cq;
	ia.recv_cq = n->cq;
	ia.qp_type = IBV_QPT_RC;
	ia.sq_sig_all = o->sig_all;
	ia.cap.max_send_wr = o->max_send_wr;
	ia.cap.max_recv_wr = o->max_recv_wr;
	ia.cap.max_send_sge = o->max_send_sge;
	ia.cap.max_recv_sge = o->max_recv_sge;
	ia.cap.max_inline_data = 64;
	if (n->pd && n->cq)
		n->qp = V.create_qp(n->pd, &ia);
	n->len = o->len;
	n->buf = calloc(1, o->len ? o->len : 1);
	if (n->pd && n->buf)
		n->mr = V.reg_mr(n->pd, n->buf, n->len, o->mr_access);
	if (!n->pd || !n->cq || !n->qp || !n->buf || !n->mr || (o->chan && !n->ch))
		return -1;
	return 0;
}

static void node_close(struct node *n)
{
	if (n->qp)
		CHECK(V.destroy_qp(n->qp) == 0, "destroy_qp");
	if (n->mr)
		CHECK(V.dereg_mr(n->mr) == 0, "dereg_mr");
	if (n->cq)
		CHECK(V.destroy_cq(n->cq) == 0, "destroy_cq");
	if (n->ch)
		CHECK(V.destroy_comp_channel(n->ch) == 0, "destroy_comp_channel");
	if (n->pd)
		CHECK(V.dealloc_pd(n->pd) == 0, "dealloc_pd");
	if (n->ctx)
		CHECK(V.close_device(n->ctx) == 0, "close_device");
	free(n->buf);
	memset(n, 0, sizeof(*n));
}

static void node_info(const struct node *n, struct ep_info *e)
{
	memset(e, 0, sizeof(*e));
	e->qpn = n->qp->qp_num;
	e->rkey = n->mr->rkey;
	e->addr = (uint64_t)(uintptr_t)n->buf;
	e->len = n->len;
	V.query_gid(n->ctx, 1, 2, &e->gid);
}

static int qp_to_init(struct ibv_qp *qp, int access)
{
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_INIT;
	a.pkey_index = 0;
	a.port_num = 1;
	a.qp_access_flags = (unsigned int)access;
	return V.modify_qp(qp, &a,
			   IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
}

static void rtr_attr(struct ibv_qp_attr *a, uint32_t dqpn, const union ibv_gid *dgid,
		     const struct copts *c)
{
	memset(a, 0, sizeof(*a));
	a->qp_state = IBV_QPS_RTR;
	a->path_mtu = c->mtu;
	a->dest_qp_num = dqpn;
	a->rq_psn = 0;
	a->max_dest_rd_atomic = 4;
	a->min_rnr_timer = c->min_rnr_timer;
	a->ah_attr.is_global = 1;
	a->ah_attr.grh.dgid = *dgid;
	a->ah_attr.grh.sgid_index = 2;
	a->ah_attr.grh.hop_limit = 1;
	a->ah_attr.port_num = 1;
}

#define RTR_MASK                                                                     \
	(IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN | \
	 IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER)
#define RTS_MASK                                                                     \
	(IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |        \
	 IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC)

static void rts_attr(struct ibv_qp_attr *a, const struct copts *c)
{
	memset(a, 0, sizeof(*a));
	a->qp_state = IBV_QPS_RTS;
	a->timeout = c->timeout;
	a->retry_cnt = c->retry_cnt;
	a->rnr_retry = c->rnr_retry;
	a->sq_psn = 0;
	a->max_rd_atomic = 4;
}

static int node_connect(struct node *n, int access, const struct ep_info *peer,
			const struct copts *c)
{
	struct ibv_qp_attr a;
	if (qp_to_init(n->qp, access)) /* RESET->INIT or INIT->INIT */
		return -1;
	rtr_attr(&a, peer->qpn, &peer->gid, c);
	if (V.modify_qp(n->qp, &a, RTR_MASK))
		return -2;
	rts_attr(&a, c);
	if (V.modify_qp(n->qp, &a, RTS_MASK))
		return -3;
	return 0;
}

/* collect up to max completions within timeout_ms (stop early once max) */
static int poll_wc(struct ibv_cq *cq, struct ibv_wc *wc, int max, int timeout_ms)
{
	int got = 0;
	uint64_t dl = now_ms() + (uint64_t)timeout_ms;
	while (got < max) {
		int r = ibv_poll_cq(cq, max - got, wc + got);
		if (r < 0)
			return -1;
		got += r;
		if (got >= max || now_ms() >= dl)
			break;
		if (!r)
			sleep_ms(1);
	}
	return got;
}

static enum ibv_qp_state qp_state(struct ibv_qp *qp)
{
	struct ibv_qp_attr a;
	struct ibv_qp_init_attr ia;
	if (V.query_qp(qp, &a, IBV_QP_STATE, &ia))
		return (enum ibv_qp_state)-1;
	return a.qp_state;
}

/* wait (poll() on the non-blocking async fd) for an async event of a type */
static bool wait_async(struct ibv_context *ctx, enum ibv_event_type type, void *obj,
		       int timeout_ms)
{
	int fl = fcntl(ctx->async_fd, F_GETFL);
	fcntl(ctx->async_fd, F_SETFL, fl | O_NONBLOCK);
	uint64_t dl = now_ms() + (uint64_t)timeout_ms;
	for (;;) {
		struct ibv_async_event ev;
		if (V.get_async_event(ctx, &ev) == 0) {
			bool match = ev.event_type == type &&
				     (!obj || (type == IBV_EVENT_CQ_ERR ? (void *)ev.element.cq == obj
								     : (void *)ev.element.qp == obj));
			V.ack_async_event(&ev);
			if (match)
				return true;
			continue;
		}
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return false;
		int64_t left = (int64_t)dl - (int64_t)now_ms();
		if (left <= 0)
			return false;
		struct pollfd pf = {ctx->async_fd, POLLIN, 0};
		poll(&pf, 1, (int)left);
	}
}

static bool async_pending(struct ibv_context *ctx)
{
	struct pollfd pf = {ctx->async_fd, POLLIN, 0};
	return poll(&pf, 1, 0) == 1;
}

/* two endpoints (separate contexts) connected in this process */
struct pair {
	struct node a, b;
};

static int pair_open(struct pair *p, const struct nopts *oa, const struct nopts *ob,
		     const struct copts *ca, const struct copts *cb)
{
	if (node_open(&p->a, oa) || node_open(&p->b, ob))
		return -1;
	struct ep_info ia, ib;
	node_info(&p->a, &ia);
	node_info(&p->b, &ib);
	if (node_connect(&p->a, oa->qp_access, &ib, ca))
		return -2;
	if (node_connect(&p->b, ob->qp_access, &ia, cb))
		return -3;
	return 0;
}

static void pair_close(struct pair *p)
{
	node_close(&p->a);
	node_close(&p->b);
}

static int post_write(struct ibv_qp *qp, uint64_t wr_id, enum ibv_wr_opcode op, void *laddr,
		      uint32_t len, uint32_t lkey, uint64_t raddr, uint32_t rkey,
		      unsigned int flags, uint32_t imm)
{
	struct ibv_sge sge = {(uint64_t)(uintptr_t)laddr, len, lkey};
	struct ibv_send_wr wr, *bad = NULL;
	memset(&wr, 0, sizeof(wr));
	wr.wr_id = wr_id;
	wr.opcode = op;
	wr.sg_list = &sge;
	wr.num_sge = 1;
	wr.send_flags = flags;
	wr.imm_data = imm;
	wr.wr.rdma.remote_addr = raddr;
	wr.wr.rdma.rkey = rkey;
	return ibv_post_send(qp, &wr, &bad);
}

static int post_recv(struct ibv_qp *qp, uint64_t wr_id, void *addr, uint32_t len, uint32_t lkey)
{
	struct ibv_sge sge = {(uint64_t)(uintptr_t)addr, len, lkey};
	struct ibv_recv_wr wr, *bad = NULL;
	memset(&wr, 0, sizeof(wr));
	wr.wr_id = wr_id;
	wr.sg_list = &sge;
	wr.num_sge = 1;
	return ibv_post_recv(qp, &wr, &bad);
}

/* ------------------------------------------------------------------------ */
/* tests                                                                    */

static void test_device_query(void)
{
	int num = -1;
	struct ibv_device **devs = V.get_device_list(&num);
	CHECK(devs && num == 1, "num=%d", num);
	if (!devs || num < 1)
		return;
	CHECK(devs[num] == NULL, "list not NULL terminated");
	CHECK(strcmp(V.get_device_name(devs[0]), "softverbs0") == 0, "name %s",
	      V.get_device_name(devs[0]));
	CHECK(V.get_device_guid(devs[0]) != 0, "guid");
	struct ibv_context *ctx = V.open_device(devs[0]);
	V.free_device_list(devs);
	CHECK(ctx != NULL, "open");
	if (!ctx)
		return;
	struct ibv_device_attr da;
	CHECK(V.query_device(ctx, &da) == 0, "query_device");
	CHECK(da.max_qp_wr == 16384 && da.max_sge == 30 && da.max_cqe == (1 << 20),
	      "caps %d %d %d", da.max_qp_wr, da.max_sge, da.max_cqe);
	CHECK(da.max_mr_size == (1ull << 40), "max_mr_size %llu",
	      (unsigned long long)da.max_mr_size);
	CHECK(da.phys_port_cnt == 1, "ports");
	struct ibv_port_attr pa;
	memset(&pa, 0xab, sizeof(pa));
	memset(&pa, 0, sizeof(pa));
	CHECK(V.query_port(ctx, 1, &pa) == 0, "query_port");
	CHECK(pa.state == IBV_PORT_ACTIVE, "state %d", pa.state);
	CHECK(pa.link_layer == IBV_LINK_LAYER_ETHERNET, "link layer %d", pa.link_layer);
	CHECK(pa.active_mtu == IBV_MTU_4096 && pa.max_mtu == IBV_MTU_4096, "mtu %d",
	      pa.active_mtu);
	CHECK(pa.lid == 0 && pa.gid_tbl_len == 4, "lid %d gids %d", pa.lid, pa.gid_tbl_len);
	CHECK(V.query_port(ctx, 2, &pa) != 0, "port 2 must not exist");
	CHECK(strcmp(V.port_state_str(IBV_PORT_ACTIVE), "PORT_ACTIVE") == 0, "port str");
	CHECK(strcmp(V.wc_status_str(IBV_WC_REM_ACCESS_ERR), "remote access error") == 0,
	      "wc str");
	/* GID table and "auto-selection" of the RoCE v2 IPv4-mapped entry */
	union ibv_gid g[4];
	int pick = -1;
	for (int i = 0; i < 4; i++) {
		CHECK(V.query_gid(ctx, 1, i, &g[i]) == 0, "query_gid %d", i);
		static const uint8_t v4pfx[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
		if (pick < 0 && memcmp(g[i].raw, v4pfx, 12) == 0)
			pick = i;
	}
	static const uint8_t zero[16];
	CHECK(memcmp(g[0].raw, zero, 16) == 0, "gid0 not zero");
	CHECK(g[1].raw[0] == 0xfe && g[1].raw[1] == 0x80, "gid1 not link local");
	CHECK(g[2].raw[12] == 127 && g[2].raw[15] == 1, "gid2 not 127.0.0.1");
	CHECK(pick == 2, "auto-selected gid index %d", pick);
	CHECK(V.query_gid(ctx, 1, 4, &g[0]) != 0, "gid index 4 must fail");
	struct ibv_pd *pd = V.alloc_pd(ctx);
	errno = 0;
	CHECK(V.reg_dmabuf_mr(pd, 0, 4096, 0, -1, IBV_ACCESS_LOCAL_WRITE) == NULL &&
		      errno == EOPNOTSUPP,
	      "dmabuf errno %d", errno);
	char b[64];
	errno = 0;
	CHECK(V.reg_mr(pd, b, sizeof(b), IBV_ACCESS_REMOTE_WRITE) == NULL && errno == EINVAL,
	      "REMOTE_WRITE without LOCAL_WRITE must fail");
	struct ibv_mr *mr = V.reg_mr(pd, b, sizeof(b), IBV_ACCESS_LOCAL_WRITE);
	CHECK(mr && mr->lkey == mr->rkey && mr->addr == b && mr->length == sizeof(b), "reg_mr");
	CHECK(V.dealloc_pd(pd) == EBUSY, "dealloc_pd with MR must be EBUSY");
	V.dereg_mr(mr);
	CHECK(V.dealloc_pd(pd) == 0, "dealloc_pd");
	CHECK(V.close_device(ctx) == 0, "close");
}

static void test_state_machine(void)
{
	struct nopts o = nopts_default();
	struct copts c = copts_default();
	struct node n;
	CHECK(node_open(&n, &o) == 0, "open");
	struct ibv_qp *qp = n.qp;
	CHECK(qp->state == IBV_QPS_RESET && qp_state(qp) == IBV_QPS_RESET, "initial state");
	CHECK(qp->qp_num > 1 && qp->qp_num < (1u << 24), "qpn %u", qp->qp_num);
	union ibv_gid dgid;
	V.query_gid(n.ctx, 1, 2, &dgid);
	struct ibv_qp_attr a;
	rtr_attr(&a, 0x1234, &dgid, &c);
	CHECK(V.modify_qp(qp, &a, RTR_MASK) == EINVAL, "RESET->RTR");
	/* post in RESET */
	char buf[16];
	struct ibv_sge sge = {(uintptr_t)buf, sizeof(buf), n.mr->lkey};
	struct ibv_recv_wr rwr = {0}, *rbad = NULL;
	rwr.sg_list = &sge;
	rwr.num_sge = 1;
	CHECK(ibv_post_recv(qp, &rwr, &rbad) == EINVAL && rbad == &rwr, "post_recv in RESET");
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_INIT;
	a.port_num = 1;
	CHECK(V.modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT) == EINVAL,
	      "INIT without ACCESS_FLAGS");
	a.port_num = 2;
	a.qp_access_flags = IBV_ACCESS_REMOTE_WRITE;
	CHECK(V.modify_qp(qp, &a,
			  IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS) ==
		      EINVAL,
	      "INIT with port 2");
	CHECK(qp_to_init(qp, o.qp_access) == 0, "RESET->INIT");
	CHECK(qp_state(qp) == IBV_QPS_INIT, "INIT");
	CHECK(ibv_post_recv(qp, &rwr, &rbad) == 0, "post_recv in INIT");
	rts_attr(&a, &c);
	CHECK(V.modify_qp(qp, &a, RTS_MASK) == EINVAL, "INIT->RTS");
	rtr_attr(&a, 0x1234, &dgid, &c);
	CHECK(V.modify_qp(qp, &a, RTR_MASK & ~IBV_QP_MIN_RNR_TIMER) == EINVAL,
	      "RTR without MIN_RNR_TIMER");
	CHECK(V.modify_qp(qp, &a, RTR_MASK | IBV_QP_TIMEOUT) == EINVAL,
	      "RTR with an RTS attribute");
	a.ah_attr.is_global = 0;
	CHECK(V.modify_qp(qp, &a, RTR_MASK) == EINVAL, "RTR without GRH on RoCE");
	a.ah_attr.is_global = 1;
	a.dest_qp_num = qp->qp_num;
	CHECK(V.modify_qp(qp, &a, RTR_MASK) == EINVAL, "RTR to itself");
	a.dest_qp_num = 0x1234;
	CHECK(V.modify_qp(qp, &a, RTR_MASK) == 0, "INIT->RTR");
	CHECK(qp_state(qp) == IBV_QPS_RTR, "RTR");
	struct ibv_send_wr swr, *sbad = NULL;
	memset(&swr, 0, sizeof(swr));
	swr.opcode = IBV_WR_SEND;
	swr.sg_list = &sge;
	swr.num_sge = 1;
	CHECK(ibv_post_send(qp, &swr, &sbad) == EINVAL && sbad == &swr, "post_send in RTR");
	rts_attr(&a, &c);
	CHECK(V.modify_qp(qp, &a, RTS_MASK & ~IBV_QP_SQ_PSN) == EINVAL, "RTS without SQ_PSN");
	a.rnr_retry = 8;
	CHECK(V.modify_qp(qp, &a, RTS_MASK) == EINVAL, "rnr_retry 8");
	a.rnr_retry = 7;
	CHECK(V.modify_qp(qp, &a, RTS_MASK) == 0, "RTR->RTS");
	struct ibv_qp_init_attr ia;
	CHECK(V.query_qp(qp, &a, IBV_QP_STATE | IBV_QP_DEST_QPN, &ia) == 0 &&
		      a.qp_state == IBV_QPS_RTS && a.dest_qp_num == 0x1234 &&
		      ia.qp_type == IBV_QPT_RC,
	      "query_qp");
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_INIT;
	CHECK(V.modify_qp(qp, &a, IBV_QP_STATE) == EINVAL, "RTS->INIT");
	a.qp_state = IBV_QPS_RTS;
	a.min_rnr_timer = 14;
	CHECK(V.modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_MIN_RNR_TIMER) == 0, "RTS->RTS");
	a.qp_state = IBV_QPS_ERR;
	CHECK(V.modify_qp(qp, &a, IBV_QP_STATE) == 0, "RTS->ERR");
	CHECK(qp->state == IBV_QPS_ERR, "ERR");
	struct ibv_wc wc;
	CHECK(poll_wc(n.cq, &wc, 1, 1000) == 1 && wc.status == IBV_WC_WR_FLUSH_ERR,
	      "recv posted in INIT flushed");
	a.qp_state = IBV_QPS_RTS;
	CHECK(V.modify_qp(qp, &a, IBV_QP_STATE) == EINVAL, "ERR->RTS");
	a.qp_state = IBV_QPS_RESET;
	CHECK(V.modify_qp(qp, &a, IBV_QP_STATE) == 0, "ERR->RESET");
	CHECK(qp_to_init(qp, o.qp_access) == 0, "RESET->INIT again");
	node_close(&n);
}

/* RDMA WRITE with a bad rkey: REM_ACCESS_ERR, later WRs flushed, both QPs in
 * ERR, QP_ACCESS_ERR async event at the target; then an out of bounds write
 * and a write into an MR without REMOTE_WRITE */
static void test_remote_access_errors(void)
{
	for (int variant = 0; variant < 3; variant++) {
		struct nopts oa = nopts_default(), ob = nopts_default();
		if (variant == 2)
			ob.mr_access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ;
		struct copts c = copts_default();
		struct pair p;
		memset(&p, 0, sizeof(p));
		CHECK(pair_open(&p, &oa, &ob, &c, &c) == 0, "pair");
		uint64_t raddr = (uint64_t)(uintptr_t)p.b.buf;
		uint32_t rkey = p.b.mr->rkey;
		uint32_t len = 4096;
		if (variant == 0)
			rkey ^= 0x100;
		if (variant == 1)
			raddr += p.b.len - 100;
		fill(p.a.buf, len, 0, 1);
		CHECK(post_write(p.a.qp, 1, IBV_WR_RDMA_WRITE, p.a.buf, len, p.a.mr->lkey, raddr,
				 rkey, IBV_SEND_SIGNALED, 0) == 0,
		      "post");
		CHECK(post_write(p.a.qp, 2, IBV_WR_RDMA_WRITE, p.a.buf, len, p.a.mr->lkey,
				 (uint64_t)(uintptr_t)p.b.buf, p.b.mr->rkey, 0, 0) == 0,
		      "post 2");
		struct ibv_wc wc[4];
		int n = poll_wc(p.a.cq, wc, 2, 3000);
		CHECK(n == 2, "variant %d: %d completions", variant, n);
		if (n == 2) {
			CHECK(wc[0].wr_id == 1 && wc[0].status == IBV_WC_REM_ACCESS_ERR,
			      "variant %d: wr %llu status %s", variant,
			      (unsigned long long)wc[0].wr_id, V.wc_status_str(wc[0].status));
			CHECK(wc[1].wr_id == 2 && wc[1].status == IBV_WC_WR_FLUSH_ERR,
			      "unsignaled WR after error must be flushed: %s",
			      V.wc_status_str(wc[1].status));
		}
		CHECK(qp_state(p.a.qp) == IBV_QPS_ERR, "requester in ERR");
		CHECK(wait_async(p.b.ctx, IBV_EVENT_QP_ACCESS_ERR, p.b.qp, 2000),
		      "QP_ACCESS_ERR at target");
		CHECK(qp_state(p.b.qp) == IBV_QPS_ERR, "target in ERR");
		CHECK(verify(p.b.buf, len, 0, 1) >= 0, "data must not have landed");
		/* posting on an ERR QP completes with FLUSH_ERR */
		CHECK(post_write(p.a.qp, 3, IBV_WR_RDMA_WRITE, p.a.buf, 8, p.a.mr->lkey,
				 (uint64_t)(uintptr_t)p.b.buf, p.b.mr->rkey, 0, 0) == 0,
		      "post in ERR");
		CHECK(poll_wc(p.a.cq, wc, 1, 1000) == 1 && wc[0].wr_id == 3 &&
			      wc[0].status == IBV_WC_WR_FLUSH_ERR,
		      "flush after ERR");
		CHECK(!async_pending(p.a.ctx), "no async event at requester");
		pair_close(&p);
	}
}

static void test_local_protection(void)
{
	struct nopts o = nopts_default();
	struct copts c = copts_default();
	struct pair p;
	memset(&p, 0, sizeof(p));
	CHECK(pair_open(&p, &o, &o, &c, &c) == 0, "pair");
	/* lkey valid but range outside the MR */
	CHECK(post_write(p.a.qp, 7, IBV_WR_RDMA_WRITE, p.a.buf + p.a.len - 10, 20, p.a.mr->lkey,
			 (uint64_t)(uintptr_t)p.b.buf, p.b.mr->rkey, 0, 0) == 0,
	      "post");
	struct ibv_wc wc;
	CHECK(poll_wc(p.a.cq, &wc, 1, 2000) == 1 && wc.wr_id == 7 &&
		      wc.status == IBV_WC_LOC_PROT_ERR,
	      "LOC_PROT_ERR expected: %s", V.wc_status_str(wc.status));
	CHECK(qp_state(p.a.qp) == IBV_QPS_ERR, "ERR");
	pair_close(&p);

	/* lkey of another PD */
	memset(&p, 0, sizeof(p));
	CHECK(pair_open(&p, &o, &o, &c, &c) == 0, "pair");
	struct ibv_pd *pd2 = V.alloc_pd(p.a.ctx);
	char other[64];
	struct ibv_mr *mr2 = V.reg_mr(pd2, other, sizeof(other), IBV_ACCESS_LOCAL_WRITE);
	CHECK(post_write(p.a.qp, 8, IBV_WR_SEND, other, 16, mr2->lkey, 0, 0, 0, 0) == 0, "post");
	CHECK(poll_wc(p.a.cq, &wc, 1, 2000) == 1 && wc.wr_id == 8 &&
		      wc.status == IBV_WC_LOC_PROT_ERR,
	      "LOC_PROT_ERR (foreign PD) expected: %s", V.wc_status_str(wc.status));
	V.dereg_mr(mr2);
	V.dealloc_pd(pd2);
	pair_close(&p);
}

static void test_rnr(void)
{
	struct nopts o = nopts_default();
	struct copts c = copts_default();
	c.rnr_retry = 1; /* -> about 10 ms */
	struct pair p;
	memset(&p, 0, sizeof(p));
	CHECK(pair_open(&p, &o, &o, &c, &c) == 0, "pair");
	uint64_t t0 = now_ms();
	CHECK(post_write(p.a.qp, 1, IBV_WR_SEND, p.a.buf, 100, p.a.mr->lkey, 0, 0,
			 IBV_SEND_SIGNALED, 0) == 0,
	      "post");
	struct ibv_wc wc;
	CHECK(poll_wc(p.a.cq, &wc, 1, 3000) == 1 && wc.status == IBV_WC_RNR_RETRY_EXC_ERR,
	      "RNR expected: %s", V.wc_status_str(wc.status));
	CHECK(now_ms() - t0 < 1500, "RNR took %llu ms", (unsigned long long)(now_ms() - t0));
	CHECK(qp_state(p.a.qp) == IBV_QPS_ERR, "requester ERR");
	pair_close(&p);

	/* WRITE_WITH_IMM also consumes a receive: RNR as well */
	memset(&p, 0, sizeof(p));
	CHECK(pair_open(&p, &o, &o, &c, &c) == 0, "pair");
	CHECK(post_write(p.a.qp, 2, IBV_WR_RDMA_WRITE_WITH_IMM, p.a.buf, 100, p.a.mr->lkey,
			 (uint64_t)(uintptr_t)p.b.buf, p.b.mr->rkey, IBV_SEND_SIGNALED,
			 htonl(5)) == 0,
	      "post");
	CHECK(poll_wc(p.a.cq, &wc, 1, 3000) == 1 && wc.status == IBV_WC_RNR_RETRY_EXC_ERR,
	      "RNR (imm) expected: %s", V.wc_status_str(wc.status));
	pair_close(&p);

	/* a receive posted during the RNR window (rnr_retry=7) rescues the send */
	c.rnr_retry = 7;
	memset(&p, 0, sizeof(p));
	CHECK(pair_open(&p, &o, &o, &c, &c) == 0, "pair");
	fill(p.a.buf, 100, 0, 3);
	CHECK(post_write(p.a.qp, 3, IBV_WR_SEND, p.a.buf, 100, p.a.mr->lkey, 0, 0,
			 IBV_SEND_SIGNALED, 0) == 0,
	      "post");
	sleep_ms(50);
	CHECK(post_recv(p.b.qp, 33, p.b.buf, 4096, p.b.mr->lkey) == 0, "post_recv");
	CHECK(poll_wc(p.a.cq, &wc, 1, 3000) == 1 && wc.status == IBV_WC_SUCCESS,
	      "late receive: %s", V.wc_status_str(wc.status));
	CHECK(poll_wc(p.b.cq, &wc, 1, 3000) == 1 && wc.wr_id == 33 && wc.byte_len == 100 &&
		      wc.opcode == IBV_WC_RECV,
	      "recv completion");
	CHECK(verify(p.b.buf, 100, 0, 3) < 0, "data");
	pair_close(&p);
}

static void test_flush_and_peer_err(void)
{
	struct nopts o = nopts_default();
	struct copts c = copts_default();
	struct pair p;
	memset(&p, 0, sizeof(p));
	CHECK(pair_open(&p, &o, &o, &c, &c) == 0, "pair");
	/* make sure the connection is established */
	struct ibv_wc wc[4];
	CHECK(post_write(p.a.qp, 4, IBV_WR_RDMA_WRITE, p.a.buf, 64, p.a.mr->lkey,
			 (uint64_t)(uintptr_t)p.b.buf, p.b.mr->rkey, IBV_SEND_SIGNALED, 0) == 0,
	      "post");
	CHECK(poll_wc(p.a.cq, wc, 1, 3000) == 1 && wc[0].status == IBV_WC_SUCCESS, "warm up");
	for (int i = 0; i < 3; i++)
		CHECK(post_recv(p.b.qp, 100 + (uint64_t)i, p.b.buf + i * 64, 64, p.b.mr->lkey) == 0,
		      "post_recv");
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_ERR;
	CHECK(V.modify_qp(p.b.qp, &a, IBV_QP_STATE) == 0, "->ERR");
	CHECK(poll_wc(p.b.cq, wc, 3, 2000) == 3, "3 flushes");
	for (int i = 0; i < 3; i++)
		CHECK(wc[i].wr_id == 100 + (uint64_t)i && wc[i].status == IBV_WC_WR_FLUSH_ERR,
		      "flush %d", i);
	CHECK(post_recv(p.b.qp, 200, p.b.buf, 64, p.b.mr->lkey) == 0, "post_recv in ERR");
	CHECK(poll_wc(p.b.cq, wc, 1, 1000) == 1 && wc[0].wr_id == 200 &&
		      wc[0].status == IBV_WC_WR_FLUSH_ERR,
	      "immediate flush");
	/* the peer of an ERR QP fails its next send with RETRY_EXC_ERR */
	sleep_ms(20);
	CHECK(post_write(p.a.qp, 5, IBV_WR_RDMA_WRITE, p.a.buf, 64, p.a.mr->lkey,
			 (uint64_t)(uintptr_t)p.b.buf, p.b.mr->rkey, 0, 0) == 0,
	      "post");
	CHECK(poll_wc(p.a.cq, wc, 1, 3000) == 1 && wc[0].wr_id == 5 &&
		      wc[0].status == IBV_WC_RETRY_EXC_ERR,
	      "retry exceeded expected: %s", V.wc_status_str(wc[0].status));
	CHECK(!async_pending(p.a.ctx), "no async event for an orderly peer error");
	pair_close(&p);
}

static void test_selective_signaling_and_stats(void)
{
	for (int sig_all = 0; sig_all < 2; sig_all++) {
		struct nopts o = nopts_default();
		o.sig_all = sig_all;
		struct copts c = copts_default();
		struct pair p;
		memset(&p, 0, sizeof(p));
		CHECK(pair_open(&p, &o, &o, &c, &c) == 0, "pair");
		struct softverbs_stats s0, s1;
		V.stats(&s0);
		fill(p.a.buf, 64 * 1024, 0, 9);
		/* 64 writes of 1 KiB with 2 SGEs each, every 8th signaled, one call */
		struct ibv_send_wr wr[64], *bad = NULL;
		struct ibv_sge sge[64][2];
		for (int i = 0; i < 64; i++) {
			memset(&wr[i], 0, sizeof(wr[i]));
			sge[i][0].addr = (uintptr_t)(p.a.buf + i * 1024);
			sge[i][0].length = 300;
			sge[i][0].lkey = p.a.mr->lkey;
			sge[i][1].addr = (uintptr_t)(p.a.buf + i * 1024 + 300);
			sge[i][1].length = 724;
			sge[i][1].lkey = p.a.mr->lkey;
			wr[i].wr_id = (uint64_t)i;
			wr[i].opcode = IBV_WR_RDMA_WRITE;
			wr[i].sg_list = sge[i];
			wr[i].num_sge = 2;
			wr[i].send_flags = (i % 8 == 7) ? IBV_SEND_SIGNALED : 0;
			wr[i].wr.rdma.remote_addr = (uintptr_t)(p.b.buf + i * 1024);
			wr[i].wr.rdma.rkey = p.b.mr->rkey;
			wr[i].next = i < 63 ? &wr[i + 1] : NULL;
		}
		CHECK(ibv_post_send(p.a.qp, wr, &bad) == 0, "post chain");
		struct ibv_wc wc[80];
		int want = sig_all ? 64 : 8;
		int n = poll_wc(p.a.cq, wc, want, 5000);
		n += poll_wc(p.a.cq, wc + n, 80 - n, 100);
		CHECK(n == want, "sig_all=%d: %d completions, want %d", sig_all, n, want);
		for (int i = 0; i < n && i < want; i++) {
			uint64_t exp = sig_all ? (uint64_t)i : (uint64_t)(i * 8 + 7);
			CHECK(wc[i].status == IBV_WC_SUCCESS && wc[i].wr_id == exp &&
				      wc[i].opcode == IBV_WC_RDMA_WRITE,
			      "wc %d: id %llu status %s", i, (unsigned long long)wc[i].wr_id,
			      V.wc_status_str(wc[i].status));
		}
		CHECK(verify(p.b.buf, 64 * 1024, 0, 9) < 0, "data");
		V.stats(&s1);
		CHECK(s1.post_send_calls - s0.post_send_calls == 1, "post_send_calls %llu",
		      (unsigned long long)(s1.post_send_calls - s0.post_send_calls));
		CHECK(s1.wr_posted_by_opcode[IBV_WR_RDMA_WRITE] -
				      s0.wr_posted_by_opcode[IBV_WR_RDMA_WRITE] ==
			      64,
		      "write WRs");
		CHECK(s1.sges_posted - s0.sges_posted == 128, "sges");
		CHECK(s1.signaled_completions - s0.signaled_completions == (uint64_t)want,
		      "signaled completions %llu",
		      (unsigned long long)(s1.signaled_completions - s0.signaled_completions));
		CHECK(s1.bytes_written - s0.bytes_written == 64 * 1024, "bytes written %llu",
		      (unsigned long long)(s1.bytes_written - s0.bytes_written));
		pair_close(&p);
	}
}

static void test_post_send_refusals(void)
{
	struct nopts o = nopts_default();
	o.max_send_wr = 4;
	o.max_send_sge = 2;
	struct copts c = copts_default(); /* rnr_retry 7: up to 2 s of RNR waiting */
	struct pair p;
	memset(&p, 0, sizeof(p));
	CHECK(pair_open(&p, &o, &o, &c, &c) == 0, "pair");
	struct ibv_sge sge[3];
	for (int i = 0; i < 3; i++) {
		sge[i].addr = (uintptr_t)(p.a.buf + i * 8);
		sge[i].length = 8;
		sge[i].lkey = p.a.mr->lkey;
	}
	struct ibv_send_wr wr[6], *bad = NULL;
	memset(wr, 0, sizeof(wr));
	for (int i = 0; i < 6; i++) {
		wr[i].wr_id = (uint64_t)i;
		wr[i].opcode = IBV_WR_SEND;
		wr[i].sg_list = sge;
		wr[i].num_sge = 1;
		wr[i].send_flags = IBV_SEND_SIGNALED;
	}
	wr[0].next = &wr[1];
	wr[1].num_sge = 3; /* > max_send_sge */
	CHECK(ibv_post_send(p.a.qp, &wr[0], &bad) == EINVAL && bad == &wr[1],
	      "too many SGEs must be refused with bad_wr");
	wr[0].next = NULL;
	/* wr[0] was posted and waits for a receive (RNR); fill the SQ */
	for (int i = 2; i < 5; i++)
		CHECK(ibv_post_send(p.a.qp, &wr[i], &bad) == 0, "post %d", i);
	bad = NULL;
	CHECK(ibv_post_send(p.a.qp, &wr[5], &bad) == ENOMEM && bad == &wr[5],
	      "SQ overflow must be refused");
	wr[2].opcode = IBV_WR_ATOMIC_FETCH_AND_ADD;
	CHECK(ibv_post_send(p.a.qp, &wr[2], &bad) != 0, "atomics unsupported");
	for (int i = 0; i < 4; i++)
		CHECK(post_recv(p.b.qp, 50 + (uint64_t)i, p.b.buf + i * 64, 64, p.b.mr->lkey) == 0,
		      "post_recv");
	struct ibv_wc wc[4];
	CHECK(poll_wc(p.a.cq, wc, 4, 3000) == 4, "4 sends complete");
	for (int i = 0; i < 4; i++)
		CHECK(wc[i].status == IBV_WC_SUCCESS && wc[i].opcode == IBV_WC_SEND, "send %d: %s",
		      i, V.wc_status_str(wc[i].status));
	/* inline send: data copied at post time */
	char tmp[40];
	memset(tmp, 'x', sizeof(tmp));
	struct ibv_sge isge = {(uintptr_t)tmp, sizeof(tmp), 0xdeadbeef};
	struct ibv_send_wr iwr;
	memset(&iwr, 0, sizeof(iwr));
	iwr.wr_id = 77;
	iwr.opcode = IBV_WR_SEND;
	iwr.sg_list = &isge;
	iwr.num_sge = 1;
	iwr.send_flags = IBV_SEND_SIGNALED | IBV_SEND_INLINE;
	CHECK(post_recv(p.b.qp, 60, p.b.buf + 4096, 64, p.b.mr->lkey) == 0, "post_recv");
	CHECK(ibv_post_send(p.a.qp, &iwr, &bad) == 0, "inline post");
	memset(tmp, 'y', sizeof(tmp));
	CHECK(poll_wc(p.a.cq, wc, 1, 3000) == 1 && wc[0].wr_id == 77 &&
		      wc[0].status == IBV_WC_SUCCESS,
	      "inline send");
	struct ibv_wc rwc[8];
	int n = poll_wc(p.b.cq, rwc, 5, 3000);
	CHECK(n == 5 && rwc[4].wr_id == 60 && rwc[4].byte_len == 40, "inline recv");
	CHECK(p.b.buf[4096] == 'x' && p.b.buf[4096 + 39] == 'x', "inline payload");
	pair_close(&p);
}

static void test_completion_channel(void)
{
	struct nopts o = nopts_default();
	o.chan = true;
	struct copts c = copts_default();
	struct pair p;
	memset(&p, 0, sizeof(p));
	CHECK(pair_open(&p, &o, &o, &c, &c) == 0, "pair");
	CHECK(ibv_req_notify_cq(p.b.cq, 0) == 0, "arm");
	int fl = fcntl(p.b.ch->fd, F_GETFL);
	fcntl(p.b.ch->fd, F_SETFL, fl | O_NONBLOCK);
	struct ibv_cq *ecq = NULL;
	void *ectx = NULL;
	CHECK(V.get_cq_event(p.b.ch, &ecq, &ectx) == -1 && errno == EAGAIN, "no event yet");
	CHECK(post_recv(p.b.qp, 9, p.b.buf, 256, p.b.mr->lkey) == 0, "post_recv");
	CHECK(post_write(p.a.qp, 1, IBV_WR_SEND_WITH_IMM, p.a.buf, 10, p.a.mr->lkey, 0, 0, 0,
			 htonl(0xabcdef)) == 0,
	      "send");
	struct pollfd pf = {p.b.ch->fd, POLLIN, 0};
	CHECK(poll(&pf, 1, 3000) == 1, "channel fd readable");
	CHECK(V.get_cq_event(p.b.ch, &ecq, &ectx) == 0 && ecq == p.b.cq && ectx == &p.b,
	      "get_cq_event");
	V.ack_cq_events(ecq, 1);
	struct ibv_wc wc;
	CHECK(ibv_poll_cq(p.b.cq, 1, &wc) == 1 && wc.opcode == IBV_WC_RECV &&
		      (wc.wc_flags & IBV_WC_WITH_IMM) && ntohl(wc.imm_data) == 0xabcdef &&
		      wc.byte_len == 10 && wc.src_qp == p.a.qp->qp_num,
	      "recv with imm");
	/* not re-armed: no second event */
	CHECK(post_recv(p.b.qp, 10, p.b.buf, 256, p.b.mr->lkey) == 0, "post_recv");
	CHECK(post_write(p.a.qp, 2, IBV_WR_SEND, p.a.buf, 10, p.a.mr->lkey, 0, 0, 0, 0) == 0,
	      "send");
	CHECK(poll_wc(p.b.cq, &wc, 1, 3000) == 1, "second recv");
	CHECK(poll(&pf, 1, 50) == 0, "no event without re-arm");
	pair_close(&p);
}

static void test_cq_overflow(void)
{
	struct nopts oa = nopts_default(), ob = nopts_default();
	oa.cqe = 4;
	struct copts c = copts_default();
	struct pair p;
	memset(&p, 0, sizeof(p));
	CHECK(pair_open(&p, &oa, &ob, &c, &c) == 0, "pair");
	struct softverbs_stats s0, s1;
	V.stats(&s0);
	for (int i = 0; i < 8; i++)
		CHECK(post_write(p.a.qp, (uint64_t)i, IBV_WR_RDMA_WRITE, p.a.buf, 16, p.a.mr->lkey,
				 (uintptr_t)p.b.buf, p.b.mr->rkey, IBV_SEND_SIGNALED, 0) == 0,
		      "post");
	CHECK(wait_async(p.a.ctx, IBV_EVENT_CQ_ERR, p.a.cq, 3000), "CQ_ERR event");
	/* wait until all 8 completions were generated (4 of them dropped) */
	uint64_t dl = now_ms() + 3000;
	do {
		V.stats(&s1);
	} while (s1.signaled_completions - s0.signaled_completions < 8 && now_ms() < dl &&
		 (sleep_ms(1), 1));
	CHECK(s1.cq_overflows - s0.cq_overflows == 4, "overflows %llu",
	      (unsigned long long)(s1.cq_overflows - s0.cq_overflows));
	struct ibv_wc wc[8];
	int n = poll_wc(p.a.cq, wc, 8, 200);
	CHECK(n == 4, "ring holds 4, got %d", n);
	pair_close(&p);
}

static void test_read_and_iova(void)
{
	struct nopts o = nopts_default();
	struct copts c = copts_default();
	struct pair p;
	memset(&p, 0, sizeof(p));
	CHECK(pair_open(&p, &o, &o, &c, &c) == 0, "pair");
	/* target region registered with an iova different from its address */
	size_t len = 600 * 1024;
	uint8_t *region = malloc(len);
	fill(region, len, 0, 5);
	struct ibv_mr *mr = V.reg_mr_iova2(p.b.pd, region, len, 0x100000000ull,
					   IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ |
						   IBV_ACCESS_REMOTE_WRITE);
	CHECK(mr != NULL, "reg_mr_iova2");
	CHECK(post_write(p.a.qp, 1, IBV_WR_RDMA_READ, p.a.buf, (uint32_t)(len - 1000),
			 p.a.mr->lkey, 0x100000000ull + 1000, mr->rkey, IBV_SEND_SIGNALED,
			 0) == 0,
	      "post read");
	struct ibv_wc wc;
	CHECK(poll_wc(p.a.cq, &wc, 1, 3000) == 1 && wc.status == IBV_WC_SUCCESS &&
		      wc.opcode == IBV_WC_RDMA_READ && wc.byte_len == len - 1000,
	      "read completion %s", V.wc_status_str(wc.status));
	CHECK(verify(p.a.buf, len - 1000, 1000, 5) < 0, "read data");
	/* write through the iova */
	fill(p.a.buf, 5000, 0, 6);
	CHECK(post_write(p.a.qp, 2, IBV_WR_RDMA_WRITE, p.a.buf, 5000, p.a.mr->lkey,
			 0x100000000ull + 7, mr->rkey, IBV_SEND_SIGNALED, 0) == 0,
	      "post write");
	CHECK(poll_wc(p.a.cq, &wc, 1, 3000) == 1 && wc.status == IBV_WC_SUCCESS, "write");
	CHECK(verify(region + 7, 5000, 0, 6) < 0, "iova write data");
	V.dereg_mr(mr);
	free(region);
	pair_close(&p);
}

static void test_mtu_mismatch(void)
{
	struct nopts o = nopts_default();
	struct copts c = copts_default();
	struct pair p;
	memset(&p, 0, sizeof(p));
	CHECK(node_open(&p.a, &o) == 0, "open a");
	setenv("SOFTVERBS_MTU", "1024", 1);
	CHECK(node_open(&p.b, &o) == 0, "open b");
	unsetenv("SOFTVERBS_MTU");
	struct ibv_port_attr pa;
	memset(&pa, 0, sizeof(pa));
	V.query_port(p.b.ctx, 1, &pa);
	CHECK(pa.active_mtu == IBV_MTU_1024, "SOFTVERBS_MTU=1024 -> %d", pa.active_mtu);
	struct ep_info ia, ib;
	node_info(&p.a, &ia);
	node_info(&p.b, &ib);
	struct copts cb = c;
	cb.mtu = IBV_MTU_1024;
	CHECK(node_connect(&p.b, o.qp_access, &ia, &c) == -2, "path_mtu above active_mtu");
	/* a uses 4096 towards a 1024 port: the connection is refused */
	CHECK(node_connect(&p.a, o.qp_access, &ib, &c) == 0, "connect a");
	struct ibv_qp_attr a;
	rtr_attr(&a, ia.qpn, &ia.gid, &cb);
	CHECK(V.modify_qp(p.b.qp, &a, RTR_MASK) == 0, "b RTR");
	rts_attr(&a, &cb);
	CHECK(V.modify_qp(p.b.qp, &a, RTS_MASK) == 0, "b RTS");
	CHECK(post_write(p.a.qp, 1, IBV_WR_RDMA_WRITE, p.a.buf, 16, p.a.mr->lkey,
			 (uintptr_t)p.b.buf, p.b.mr->rkey, IBV_SEND_SIGNALED, 0) == 0,
	      "post");
	struct ibv_wc wc;
	CHECK(poll_wc(p.a.cq, &wc, 1, 5000) == 1 && wc.status == IBV_WC_RETRY_EXC_ERR,
	      "mtu mismatch -> %s", V.wc_status_str(wc.status));
	pair_close(&p);

	/* both at 1024 works */
	memset(&p, 0, sizeof(p));
	CHECK(node_open(&p.a, &o) == 0, "open a");
	setenv("SOFTVERBS_MTU", "1024", 1);
	CHECK(node_open(&p.b, &o) == 0, "open b");
	unsetenv("SOFTVERBS_MTU");
	node_info(&p.a, &ia);
	node_info(&p.b, &ib);
	CHECK(node_connect(&p.a, o.qp_access, &ib, &cb) == 0, "connect a");
	CHECK(node_connect(&p.b, o.qp_access, &ia, &cb) == 0, "connect b");
	CHECK(post_write(p.a.qp, 1, IBV_WR_RDMA_WRITE, p.a.buf, 16, p.a.mr->lkey,
			 (uintptr_t)p.b.buf, p.b.mr->rkey, IBV_SEND_SIGNALED, 0) == 0,
	      "post");
	CHECK(poll_wc(p.a.cq, &wc, 1, 3000) == 1 && wc.status == IBV_WC_SUCCESS,
	      "matching mtu -> %s", V.wc_status_str(wc.status));
	pair_close(&p);

	/* wrong dgid (link-local instead of the peer's IPv4 GID) is refused */
	memset(&p, 0, sizeof(p));
	CHECK(node_open(&p.a, &o) == 0 && node_open(&p.b, &o) == 0, "open");
	node_info(&p.a, &ia);
	node_info(&p.b, &ib);
	V.query_gid(p.b.ctx, 1, 1, &ib.gid);
	CHECK(node_connect(&p.a, o.qp_access, &ib, &c) == 0, "connect a");
	CHECK(node_connect(&p.b, o.qp_access, &ia, &c) == 0, "connect b");
	CHECK(post_write(p.a.qp, 1, IBV_WR_RDMA_WRITE, p.a.buf, 16, p.a.mr->lkey,
			 (uintptr_t)p.b.buf, p.b.mr->rkey, IBV_SEND_SIGNALED, 0) == 0,
	      "post");
	CHECK(poll_wc(p.a.cq, &wc, 1, 5000) == 1 && wc.status == IBV_WC_RETRY_EXC_ERR,
	      "gid mismatch -> %s", V.wc_status_str(wc.status));
	pair_close(&p);
}

static void test_fault_corrupt_rkey_and_delay(void)
{
	struct nopts o = nopts_default();
	struct copts c = copts_default();
	struct pair p;
	memset(&p, 0, sizeof(p));
	setenv("SOFTVERBS_FAULT_CORRUPT_RKEY", "1", 1);
	CHECK(node_open(&p.a, &o) == 0, "open a");
	unsetenv("SOFTVERBS_FAULT_CORRUPT_RKEY");
	CHECK(node_open(&p.b, &o) == 0, "open b");
	struct ep_info ia, ib;
	node_info(&p.a, &ia);
	node_info(&p.b, &ib);
	CHECK(node_connect(&p.a, o.qp_access, &ib, &c) == 0 &&
		      node_connect(&p.b, o.qp_access, &ia, &c) == 0,
	      "connect");
	CHECK(post_write(p.a.qp, 1, IBV_WR_RDMA_WRITE, p.a.buf, 16, p.a.mr->lkey,
			 (uintptr_t)p.b.buf, p.b.mr->rkey, IBV_SEND_SIGNALED, 0) == 0,
	      "post");
	struct ibv_wc wc;
	CHECK(poll_wc(p.a.cq, &wc, 1, 3000) == 1 && wc.status == IBV_WC_REM_ACCESS_ERR,
	      "corrupted rkey -> %s", V.wc_status_str(wc.status));
	pair_close(&p);

	memset(&p, 0, sizeof(p));
	setenv("SOFTVERBS_FAULT_DELAY_US", "30000", 1);
	CHECK(node_open(&p.a, &o) == 0, "open a");
	unsetenv("SOFTVERBS_FAULT_DELAY_US");
	CHECK(node_open(&p.b, &o) == 0, "open b");
	node_info(&p.a, &ia);
	node_info(&p.b, &ib);
	CHECK(node_connect(&p.a, o.qp_access, &ib, &c) == 0 &&
		      node_connect(&p.b, o.qp_access, &ia, &c) == 0,
	      "connect");
	/* warm up the connection, then time one write */
	CHECK(post_write(p.a.qp, 1, IBV_WR_RDMA_WRITE, p.a.buf, 16, p.a.mr->lkey,
			 (uintptr_t)p.b.buf, p.b.mr->rkey, IBV_SEND_SIGNALED, 0) == 0,
	      "post");
	CHECK(poll_wc(p.a.cq, &wc, 1, 3000) == 1 && wc.status == IBV_WC_SUCCESS, "warm up");
	uint64_t t0 = now_ms();
	CHECK(post_write(p.a.qp, 2, IBV_WR_RDMA_WRITE, p.a.buf, 16, p.a.mr->lkey,
			 (uintptr_t)p.b.buf, p.b.mr->rkey, IBV_SEND_SIGNALED, 0) == 0,
	      "post");
	CHECK(poll_wc(p.a.cq, &wc, 1, 3000) == 1 && wc.status == IBV_WC_SUCCESS, "delayed");
	uint64_t dt = now_ms() - t0;
	CHECK(dt >= 29, "delay fault: completion after %llu ms", (unsigned long long)dt);
	pair_close(&p);
}

static void test_fault_port_down(void)
{
	struct nopts o = nopts_default();
	struct copts c = copts_default();
	struct pair p;
	memset(&p, 0, sizeof(p));
	setenv("SOFTVERBS_FAULT_PORT_DOWN_AFTER_MS", "150", 1);
	CHECK(node_open(&p.a, &o) == 0, "open a");
	unsetenv("SOFTVERBS_FAULT_PORT_DOWN_AFTER_MS");
	CHECK(node_open(&p.b, &o) == 0, "open b");
	struct ep_info ia, ib;
	node_info(&p.a, &ia);
	node_info(&p.b, &ib);
	CHECK(node_connect(&p.a, o.qp_access, &ib, &c) == 0 &&
		      node_connect(&p.b, o.qp_access, &ia, &c) == 0,
	      "connect");
	CHECK(post_recv(p.a.qp, 11, p.a.buf, 64, p.a.mr->lkey) == 0, "post_recv");
	CHECK(wait_async(p.a.ctx, IBV_EVENT_PORT_ERR, NULL, 3000), "PORT_ERR");
	struct ibv_port_attr pa;
	memset(&pa, 0, sizeof(pa));
	V.query_port(p.a.ctx, 1, &pa);
	CHECK(pa.state == IBV_PORT_DOWN, "port state %s", V.port_state_str(pa.state));
	CHECK(qp_state(p.a.qp) == IBV_QPS_ERR, "QP in ERR after port down");
	struct ibv_wc wc;
	CHECK(poll_wc(p.a.cq, &wc, 1, 1000) == 1 && wc.wr_id == 11 &&
		      wc.status == IBV_WC_WR_FLUSH_ERR,
	      "recv flushed");
	CHECK(post_write(p.b.qp, 3, IBV_WR_RDMA_WRITE, p.b.buf, 16, p.b.mr->lkey,
			 (uintptr_t)p.a.buf, p.a.mr->rkey, IBV_SEND_SIGNALED, 0) == 0,
	      "post");
	CHECK(poll_wc(p.b.cq, &wc, 1, 3000) == 1 && wc.status == IBV_WC_RETRY_EXC_ERR,
	      "peer of a dead port -> %s", V.wc_status_str(wc.status));
	pair_close(&p);
}

/* ------------------------------------------------------------------------ */
/* two-process tests                                                        */

static pid_t spawn(int *ctl, void (*child)(int))
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
		return -1;
	fflush(NULL);
	pid_t pid = fork();
	if (pid == 0) {
		close(sv[0]);
		alarm(30);
		g_checks_failed = 0;
		child(sv[1]);
		close(sv[1]);
		exit(g_checks_failed > 100 ? 100 : g_checks_failed);
	}
	close(sv[1]);
	*ctl = sv[0];
	return pid;
}

static void reap(pid_t pid, bool expect_ok)
{
	int st = 0;
	CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
	if (expect_ok)
		CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x", st);
}

static void child_env_devices(int ctl)
{
	(void)ctl;
	setenv("SOFTVERBS_DEVICES", "3", 1);
	setenv("SOFTVERBS_MTU", "2048", 1);
	setenv("SOFTVERBS_MAX_MR_SIZE", "1048576", 1);
	int num = 0;
	struct ibv_device **devs = V.get_device_list(&num);
	CHECK(devs && num == 3, "num %d", num);
	if (!devs || num != 3)
		return;
	CHECK(strcmp(V.get_device_name(devs[2]), "softverbs2") == 0, "name");
	struct ibv_context *c0 = V.open_device(devs[0]);
	struct ibv_context *c2 = V.open_device(devs[2]);
	V.free_device_list(devs);
	CHECK(c0 && c2, "open");
	struct ibv_port_attr pa;
	memset(&pa, 0, sizeof(pa));
	V.query_port(c2, 1, &pa);
	CHECK(pa.active_mtu == IBV_MTU_2048, "mtu %d", pa.active_mtu);
	struct ibv_device_attr da;
	V.query_device(c2, &da);
	CHECK(da.max_mr_size == 1048576, "max_mr_size");
	union ibv_gid g0, g2;
	V.query_gid(c0, 1, 3, &g0);
	V.query_gid(c2, 1, 3, &g2);
	CHECK(memcmp(&g0, &g2, 16) != 0, "gid 3 differs per device");
	struct ibv_pd *pd = V.alloc_pd(c2);
	uint8_t *b = malloc(2 << 20);
	errno = 0;
	CHECK(V.reg_mr(pd, b, 2 << 20, IBV_ACCESS_LOCAL_WRITE) == NULL && errno == EINVAL,
	      "MR above max_mr_size");
	struct ibv_mr *mr = V.reg_mr(pd, b, 1 << 20, IBV_ACCESS_LOCAL_WRITE);
	CHECK(mr != NULL, "MR at max_mr_size");
	V.dereg_mr(mr);
	V.dealloc_pd(pd);
	free(b);
	V.close_device(c0);
	V.close_device(c2);
}

static void test_env_devices(void)
{
	int ctl;
	pid_t pid = spawn(&ctl, child_env_devices);
	CHECK(pid > 0, "fork");
	close(ctl);
	reap(pid, true);
}

/* -- cross-process data path ------------------------------------------------ */

#define BIG (8u << 20)
#define RECVBUF (64u << 10)
#define BACK (1u << 20)

struct result {
	int32_t failures;
	int32_t step;
};

static void child_data_target(int ctl)
{
	char stats_path[128];
	snprintf(stats_path, sizeof(stats_path), "/tmp/softverbs-test-stats-%d.json",
		 (int)getpid());
	setenv("SOFTVERBS_STATS_FILE", stats_path, 1);
	struct nopts o = nopts_default();
	o.len = BIG;
	struct copts c = copts_default();
	struct node n;
	CHECK(node_open(&n, &o) == 0, "open");
	uint8_t *rbuf = calloc(1, RECVBUF);
	struct ibv_mr *rmr = V.reg_mr(n.pd, rbuf, RECVBUF, IBV_ACCESS_LOCAL_WRITE);
	CHECK(rmr != NULL, "recv mr");
	CHECK(qp_to_init(n.qp, o.qp_access) == 0, "init");
	/* receives: one for WRITE_WITH_IMM, two (multi-SGE) for the sends */
	CHECK(post_recv(n.qp, 1000, rbuf, 16, rmr->lkey) == 0, "post_recv");
	struct ibv_sge s2[2] = {{(uintptr_t)rbuf + 1024, 4000, rmr->lkey},
				{(uintptr_t)rbuf + 8192, 16384, rmr->lkey}};
	struct ibv_recv_wr r2 = {0}, *bad = NULL;
	r2.wr_id = 1001;
	r2.sg_list = s2;
	r2.num_sge = 2;
	CHECK(ibv_post_recv(n.qp, &r2, &bad) == 0, "post_recv 2");
	CHECK(post_recv(n.qp, 1002, rbuf + 32768, 1024, rmr->lkey) == 0, "post_recv 3");
	struct ep_info me, peer;
	node_info(&n, &me);
	CHECK(xsend(ctl, &me, sizeof(me)) == 0, "send info");
	CHECK(xrecv(ctl, &peer, sizeof(peer), 10000) == 0, "recv info");
	CHECK(node_connect(&n, o.qp_access, &peer, &c) == 0, "connect");

	struct ibv_wc wc[4];
	int got = poll_wc(n.cq, wc, 3, 10000);
	CHECK(got == 3, "child got %d receive completions", got);
	if (got >= 1) {
		CHECK(wc[0].wr_id == 1000 && wc[0].status == IBV_WC_SUCCESS &&
			      wc[0].opcode == IBV_WC_RECV_RDMA_WITH_IMM &&
			      (wc[0].wc_flags & IBV_WC_WITH_IMM) &&
			      ntohl(wc[0].imm_data) == 0xC0FFEE && wc[0].byte_len == 4096 &&
			      wc[0].src_qp == peer.qpn && wc[0].qp_num == n.qp->qp_num,
		      "write-with-imm completion: id %llu op %d imm %#x len %u",
		      (unsigned long long)wc[0].wr_id, wc[0].opcode, ntohl(wc[0].imm_data),
		      wc[0].byte_len);
	}
	if (got >= 2)
		CHECK(wc[1].wr_id == 1001 && wc[1].status == IBV_WC_SUCCESS &&
			      wc[1].opcode == IBV_WC_RECV && (wc[1].wc_flags & IBV_WC_WITH_IMM) &&
			      ntohl(wc[1].imm_data) == 0x1234 && wc[1].byte_len == 10000,
		      "send-with-imm completion");
	if (got >= 3)
		CHECK(wc[2].wr_id == 1002 && wc[2].status == IBV_WC_SUCCESS &&
			      !(wc[2].wc_flags & IBV_WC_WITH_IMM) && wc[2].byte_len == 40,
		      "inline send completion");
	/* the big multi-SGE write (5.5 MiB + 12345 at offset 1000) and the imm write
	 * (4096 at offset BIG - 4096) landed before their completions */
	size_t wlen = (3u << 19) + (2u << 20) + (2u << 20) + 12345u;
	long bad_at = verify(n.buf + 1000, wlen, 0, 11);
	CHECK(bad_at < 0, "big write mismatch at %ld", bad_at);
	CHECK(n.buf[999] == 0 && n.buf[1000 + wlen] == 0, "write overran");
	CHECK(verify(n.buf + BIG - 4096, 4096, 0, 12) < 0, "imm write data");
	CHECK(verify(rbuf + 1024, 4000, 0, 13) < 0 && verify(rbuf + 8192, 6000, 4000, 13) < 0,
	      "scattered send data");
	CHECK(rbuf[8192 + 6000] == 0, "send overran");
	CHECK(verify(rbuf + 32768, 40, 0, 14) < 0, "inline send data");

	/* write back to the parent */
	uint8_t *src = malloc(BACK);
	fill(src, BACK, 0, 15);
	struct ibv_mr *smr = V.reg_mr(n.pd, src, BACK, 0);
	CHECK(post_write(n.qp, 1, IBV_WR_RDMA_WRITE_WITH_IMM, src, BACK, smr->lkey, peer.addr2,
			 peer.rkey2, IBV_SEND_SIGNALED, htonl(77)) == 0,
	      "write back");
	CHECK(poll_wc(n.cq, wc, 1, 10000) == 1 && wc[0].status == IBV_WC_SUCCESS &&
		      wc[0].wr_id == 1,
	      "write back completion");

	struct result res = {g_checks_failed, 1};
	xsend(ctl, &res, sizeof(res));
	char done;
	CHECK(xrecv(ctl, &done, 1, 10000) == 0, "done");
	V.dereg_mr(smr);
	V.dereg_mr(rmr);
	free(src);
	free(rbuf);
	node_close(&n);
}

static uint64_t json_get(const char *json, const char *key)
{
	char pat_[96];
	snprintf(pat_, sizeof(pat_), "\"%s\":", key);
	const char *p = strstr(json, pat_);
	if (!p)
		return UINT64_MAX;
	return strtoull(p + strlen(pat_), NULL, 10);
}

static void test_cross_process_data(void)
{
	int ctl;
	pid_t pid = spawn(&ctl, child_data_target);
	CHECK(pid > 0, "fork");
	struct nopts o = nopts_default();
	o.len = 4u << 20;
	struct copts c = copts_default();
	struct node n;
	CHECK(node_open(&n, &o) == 0, "open");
	uint8_t *src2 = malloc((2u << 20) + 4096);
	struct ibv_mr *mr2 = V.reg_mr(n.pd, src2, (2u << 20) + 4096, IBV_ACCESS_LOCAL_WRITE);
	uint8_t *rd = calloc(1, 1u << 20);
	struct ibv_mr *rdmr = V.reg_mr(n.pd, rd, 1u << 20, IBV_ACCESS_LOCAL_WRITE);
	uint8_t *back = calloc(1, BACK);
	struct ibv_mr *backmr =
		V.reg_mr(n.pd, back, BACK, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
	CHECK(mr2 && rdmr && backmr, "mrs");

	/* the stream written remotely is pattern 11 over three SGEs */
	size_t l0 = 3u << 19, l1 = 2u << 20, l2 = (2u << 20) + 12345u;
	uint8_t *p0 = n.buf, *p1 = src2 + 100, *p2 = n.buf + (2u << 20) - 20000u;
	fill(p0, l0, 0, 11);
	fill(p1, l1, l0, 11);
	fill(p2, l2, l0 + l1, 11);

	struct ep_info me, peer;
	node_info(&n, &me);
	me.addr2 = (uintptr_t)back;
	me.rkey2 = backmr->rkey;
	me.len2 = BACK;
	CHECK(xrecv(ctl, &peer, sizeof(peer), 10000) == 0, "recv info");
	/* a receive without SGEs for the child's WRITE_WITH_IMM */
	CHECK(qp_to_init(n.qp, o.qp_access) == 0, "init");
	struct ibv_recv_wr r0, *rbad = NULL;
	memset(&r0, 0, sizeof(r0));
	r0.wr_id = 500;
	CHECK(ibv_post_recv(n.qp, &r0, &rbad) == 0, "post_recv");
	CHECK(xsend(ctl, &me, sizeof(me)) == 0, "send info");
	CHECK(node_connect(&n, o.qp_access, &peer, &c) == 0, "connect");

	uint8_t *immsrc = rd; /* reuse the read buffer for small sources */
	fill(immsrc, 4096, 0, 12);
	fill(immsrc + 4096, 10000, 0, 13);
	uint8_t inl[40];
	fill(inl, sizeof(inl), 0, 14);

	struct ibv_sge sg_big[3] = {{(uintptr_t)p0, (uint32_t)l0, n.mr->lkey},
				    {(uintptr_t)p1, (uint32_t)l1, mr2->lkey},
				    {(uintptr_t)p2, (uint32_t)l2, n.mr->lkey}};
	struct ibv_sge sg_imm = {(uintptr_t)immsrc, 4096, rdmr->lkey};
	struct ibv_sge sg_send = {(uintptr_t)immsrc + 4096, 10000, rdmr->lkey};
	struct ibv_sge sg_inl = {(uintptr_t)inl, sizeof(inl), 0};
	struct ibv_sge sg_read = {(uintptr_t)rd, 1u << 20, rdmr->lkey};
	struct ibv_send_wr w[5], *bad = NULL;
	memset(w, 0, sizeof(w));
	w[0].wr_id = 10;
	w[0].opcode = IBV_WR_RDMA_WRITE;
	w[0].sg_list = sg_big;
	w[0].num_sge = 3;
	w[0].wr.rdma.remote_addr = peer.addr + 1000;
	w[0].wr.rdma.rkey = peer.rkey;
	w[1].wr_id = 11;
	w[1].opcode = IBV_WR_RDMA_WRITE_WITH_IMM;
	w[1].sg_list = &sg_imm;
	w[1].num_sge = 1;
	w[1].imm_data = htonl(0xC0FFEE);
	w[1].send_flags = IBV_SEND_SIGNALED;
	w[1].wr.rdma.remote_addr = peer.addr + BIG - 4096;
	w[1].wr.rdma.rkey = peer.rkey;
	w[2].wr_id = 12;
	w[2].opcode = IBV_WR_SEND_WITH_IMM;
	w[2].sg_list = &sg_send;
	w[2].num_sge = 1;
	w[2].imm_data = htonl(0x1234);
	w[2].send_flags = IBV_SEND_SIGNALED;
	w[3].wr_id = 13;
	w[3].opcode = IBV_WR_SEND;
	w[3].sg_list = &sg_inl;
	w[3].num_sge = 1;
	w[3].send_flags = IBV_SEND_SIGNALED | IBV_SEND_INLINE;
	w[4].wr_id = 14;
	w[4].opcode = IBV_WR_RDMA_READ;
	w[4].sg_list = &sg_read;
	w[4].num_sge = 1;
	w[4].send_flags = IBV_SEND_SIGNALED;
	w[4].wr.rdma.remote_addr = peer.addr + 1000;
	w[4].wr.rdma.rkey = peer.rkey;
	for (int i = 0; i < 4; i++)
		w[i].next = &w[i + 1];
	CHECK(ibv_post_send(n.qp, w, &bad) == 0, "post chain");
	/* 4 send completions (the big write is unsignaled) and, once the child
	 * has checked everything, the receive for its WRITE_WITH_IMM */
	struct ibv_wc all[8], wc[8], rwc;
	int n_all = poll_wc(n.cq, all, 5, 15000);
	n_all += poll_wc(n.cq, all + n_all, 8 - n_all, 100);
	int got = 0, nrecv = 0;
	for (int i = 0; i < n_all; i++) {
		if (all[i].opcode & IBV_WC_RECV) {
			rwc = all[i];
			nrecv++;
		} else {
			wc[got++] = all[i];
		}
	}
	CHECK(got == 4, "parent got %d send completions (want 4: write unsignaled)", got);
	CHECK(nrecv == 1, "parent got %d receive completions", nrecv);
	if (nrecv == 1)
		CHECK(rwc.wr_id == 500 && rwc.status == IBV_WC_SUCCESS &&
			      rwc.opcode == IBV_WC_RECV_RDMA_WITH_IMM && rwc.byte_len == BACK &&
			      ntohl(rwc.imm_data) == 77,
		      "write-back completion");
	static const enum ibv_wc_opcode ops[4] = {IBV_WC_RDMA_WRITE, IBV_WC_SEND, IBV_WC_SEND,
						  IBV_WC_RDMA_READ};
	for (int i = 0; i < got && i < 4; i++)
		CHECK(wc[i].wr_id == 11 + (uint64_t)i && wc[i].status == IBV_WC_SUCCESS &&
			      wc[i].opcode == ops[i],
		      "completion %d: id %llu status %s op %d", i, (unsigned long long)wc[i].wr_id,
		      V.wc_status_str(wc[i].status), wc[i].opcode);
	CHECK(got < 4 || wc[3].byte_len == (1u << 20), "read byte_len");
	CHECK(verify(rd, 1u << 20, 0, 11) < 0, "RDMA READ returned the written bytes");

	struct result res = {-1, 0};
	CHECK(xrecv(ctl, &res, sizeof(res), 15000) == 0, "child result");
	CHECK(res.failures == 0 && res.step == 1, "child reported %d failures", res.failures);
	CHECK(verify(back, BACK, 0, 15) < 0, "write from child landed");
	char done = 'd';
	xsend(ctl, &done, 1);
	close(ctl);
	reap(pid, true);

	char path[128];
	snprintf(path, sizeof(path), "/tmp/softverbs-test-stats-%d.json", (int)pid);
	FILE *f = fopen(path, "r");
	CHECK(f != NULL, "child stats file %s", path);
	if (f) {
		char json[4096];
		size_t k = fread(json, 1, sizeof(json) - 1, f);
		json[k] = 0;
		fclose(f);
		unlink(path);
		CHECK(json_get(json, "pid") == (uint64_t)pid, "stats pid");
		CHECK(json_get(json, "wr_rdma_write_with_imm") == 1, "child rdma writes %llu",
		      (unsigned long long)json_get(json, "wr_rdma_write_with_imm"));
		CHECK(json_get(json, "wr_rdma_write") == 0, "child plain writes");
		CHECK(json_get(json, "post_recv_calls") == 3, "child post_recv_calls");
		CHECK(json_get(json, "recv_completions") == 3, "child recv completions");
		CHECK(json_get(json, "bytes_written") == BACK, "child bytes_written");
	}
	V.dereg_mr(mr2);
	V.dereg_mr(rdmr);
	V.dereg_mr(backmr);
	free(src2);
	free(rd);
	free(back);
	node_close(&n);
}

/* -- peer killed ------------------------------------------------------------ */

static void child_sleeper(int ctl)
{
	struct nopts o = nopts_default();
	struct copts c = copts_default();
	struct node n;
	CHECK(node_open(&n, &o) == 0, "open");
	struct ep_info me, peer;
	node_info(&n, &me);
	xsend(ctl, &me, sizeof(me));
	CHECK(xrecv(ctl, &peer, sizeof(peer), 10000) == 0, "peer");
	CHECK(node_connect(&n, o.qp_access, &peer, &c) == 0, "connect");
	char r = 'r';
	xsend(ctl, &r, 1);
	for (;;)
		pause();
}

static void test_peer_killed(void)
{
	int ctl;
	pid_t pid = spawn(&ctl, child_sleeper);
	CHECK(pid > 0, "fork");
	struct nopts o = nopts_default();
	struct copts c = copts_default(); /* rnr_retry 7 */
	struct node n;
	CHECK(node_open(&n, &o) == 0, "open");
	struct ep_info me, peer;
	node_info(&n, &me);
	CHECK(xrecv(ctl, &peer, sizeof(peer), 10000) == 0, "peer");
	xsend(ctl, &me, sizeof(me));
	CHECK(node_connect(&n, o.qp_access, &peer, &c) == 0, "connect");
	char r;
	CHECK(xrecv(ctl, &r, 1, 10000) == 0, "ready");
	CHECK(post_recv(n.qp, 21, n.buf, 64, n.mr->lkey) == 0, "recv 1");
	CHECK(post_recv(n.qp, 22, n.buf + 64, 64, n.mr->lkey) == 0, "recv 2");
	/* the child has no receive posted: this send stays outstanding (RNR) */
	CHECK(post_write(n.qp, 20, IBV_WR_SEND, n.buf + 4096, 128, n.mr->lkey, 0, 0, 0, 0) == 0,
	      "send");
	sleep_ms(100);
	kill(pid, SIGKILL);
	reap(pid, false);
	close(ctl);
	CHECK(wait_async(n.ctx, IBV_EVENT_QP_FATAL, n.qp, 3000), "QP_FATAL after SIGKILL");
	CHECK(qp_state(n.qp) == IBV_QPS_ERR, "QP in ERR");
	struct ibv_wc wc[4];
	int got = poll_wc(n.cq, wc, 3, 2000);
	CHECK(got == 3, "%d completions", got);
	for (int i = 0; i < got; i++) {
		if (wc[i].wr_id == 20)
			CHECK(wc[i].status == IBV_WC_RETRY_EXC_ERR, "outstanding send: %s",
			      V.wc_status_str(wc[i].status));
		else
			CHECK((wc[i].wr_id == 21 || wc[i].wr_id == 22) &&
				      wc[i].status == IBV_WC_WR_FLUSH_ERR,
			      "recv flush: id %llu %s", (unsigned long long)wc[i].wr_id,
			      V.wc_status_str(wc[i].status));
	}
	node_close(&n);
}

/* -- fault: drop after bytes ----------------------------------------------- */

static void child_dropper(int ctl)
{
	char stats_path[128];
	snprintf(stats_path, sizeof(stats_path), "/tmp/softverbs-test-stats-%d.json",
		 (int)getpid());
	setenv("SOFTVERBS_STATS_FILE", stats_path, 1);
	setenv("SOFTVERBS_FAULT_DROP_AFTER_BYTES", "300000", 1);
	struct nopts o = nopts_default();
	struct copts c = copts_default();
	struct node n;
	CHECK(node_open(&n, &o) == 0, "open");
	struct ep_info me, peer;
	node_info(&n, &me);
	xsend(ctl, &me, sizeof(me));
	CHECK(xrecv(ctl, &peer, sizeof(peer), 10000) == 0, "peer");
	CHECK(node_connect(&n, o.qp_access, &peer, &c) == 0, "connect");
	fill(n.buf, n.len, 0, 17);
	CHECK(post_write(n.qp, 1, IBV_WR_RDMA_WRITE, n.buf, (uint32_t)n.len, n.mr->lkey, peer.addr,
			 peer.rkey, 0, 0) == 0,
	      "write 1 MiB");
	CHECK(post_write(n.qp, 2, IBV_WR_RDMA_WRITE, n.buf, 16, n.mr->lkey, peer.addr, peer.rkey,
			 IBV_SEND_SIGNALED, 0) == 0,
	      "write 2");
	struct ibv_wc wc[2];
	CHECK(poll_wc(n.cq, wc, 2, 5000) == 2, "2 completions");
	CHECK(wc[0].wr_id == 1 && wc[0].status == IBV_WC_RETRY_EXC_ERR, "dropped: %s",
	      V.wc_status_str(wc[0].status));
	CHECK(wc[1].wr_id == 2 && wc[1].status == IBV_WC_WR_FLUSH_ERR, "flushed: %s",
	      V.wc_status_str(wc[1].status));
	CHECK(wait_async(n.ctx, IBV_EVENT_QP_FATAL, n.qp, 3000), "QP_FATAL at the dropper");
	struct result res = {g_checks_failed, 2};
	xsend(ctl, &res, sizeof(res));
	node_close(&n);
}

static void test_fault_drop(void)
{
	int ctl;
	pid_t pid = spawn(&ctl, child_dropper);
	CHECK(pid > 0, "fork");
	struct nopts o = nopts_default();
	struct copts c = copts_default();
	struct node n;
	CHECK(node_open(&n, &o) == 0, "open");
	struct ep_info me, peer;
	node_info(&n, &me);
	CHECK(xrecv(ctl, &peer, sizeof(peer), 10000) == 0, "peer");
	CHECK(qp_to_init(n.qp, o.qp_access) == 0, "init");
	CHECK(post_recv(n.qp, 31, n.buf, 64, n.mr->lkey) == 0, "recv");
	xsend(ctl, &me, sizeof(me));
	CHECK(node_connect(&n, o.qp_access, &peer, &c) == 0, "connect");
	CHECK(wait_async(n.ctx, IBV_EVENT_QP_FATAL, n.qp, 5000), "QP_FATAL at the target");
	CHECK(qp_state(n.qp) == IBV_QPS_ERR, "target QP in ERR");
	struct ibv_wc wc;
	CHECK(poll_wc(n.cq, &wc, 1, 1000) == 1 && wc.wr_id == 31 &&
		      wc.status == IBV_WC_WR_FLUSH_ERR,
	      "recv flushed");
	struct result res = {-1, 0};
	CHECK(xrecv(ctl, &res, sizeof(res), 10000) == 0 && res.failures == 0 && res.step == 2,
	      "child result %d", res.failures);
	close(ctl);
	reap(pid, true);
	char path[128];
	snprintf(path, sizeof(path), "/tmp/softverbs-test-stats-%d.json", (int)pid);
	FILE *f = fopen(path, "r");
	CHECK(f != NULL, "stats file");
	if (f) {
		char json[4096];
		size_t k = fread(json, 1, sizeof(json) - 1, f);
		json[k] = 0;
		fclose(f);
		unlink(path);
		CHECK(json_get(json, "bytes_written") == 300000, "dropper wrote %llu bytes",
		      (unsigned long long)json_get(json, "bytes_written"));
		CHECK(json_get(json, "wr_rdma_write") == 2, "dropper WRs");
	}
	node_close(&n);
}

/* ------------------------------------------------------------------------ */

struct test {
	const char *name;
	void (*fn)(void);
};

static const struct test g_tests[] = {
	{"env_devices (fork)", test_env_devices},
	{"device_query", test_device_query},
	{"state_machine", test_state_machine},
	{"cross_process_data (fork)", test_cross_process_data},
	{"peer_killed (fork)", test_peer_killed},
	{"fault_drop (fork)", test_fault_drop},
	{"remote_access_errors", test_remote_access_errors},
	{"local_protection", test_local_protection},
	{"rnr", test_rnr},
	{"flush_and_peer_err", test_flush_and_peer_err},
	{"selective_signaling_and_stats", test_selective_signaling_and_stats},
	{"post_send_refusals", test_post_send_refusals},
	{"completion_channel", test_completion_channel},
	{"cq_overflow", test_cq_overflow},
	{"read_and_iova", test_read_and_iova},
	{"mtu_and_gid_mismatch", test_mtu_mismatch},
	{"fault_corrupt_rkey_and_delay", test_fault_corrupt_rkey_and_delay},
	{"fault_port_down", test_fault_port_down},
};

/* Without an argument: $SOFTVERBS_LIB, libsoftverbs.so next to this binary
 * (sanitizer builds), then tests/softverbs/libsoftverbs.so from the current
 * directory or relative to the binary.  NULL if none exists. */
static const char *find_lib(void)
{
	static char buf[4200];
	const char *e = getenv("SOFTVERBS_LIB");
	if (e && *e)
		return e;
	char exe[4096];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n > 0) {
		exe[n] = 0;
		char *slash = strrchr(exe, '/');
		if (slash)
			*slash = 0;
	} else {
		snprintf(exe, sizeof(exe), ".");
	}
	const char *cand[] = {"%s/libsoftverbs.so", "./tests/softverbs/libsoftverbs.so",
			      "%s/../tests/softverbs/libsoftverbs.so",
			      "%s/../../tests/softverbs/libsoftverbs.so"};
	for (size_t i = 0; i < sizeof(cand) / sizeof(cand[0]); i++) {
		if (strstr(cand[i], "%s"))
			snprintf(buf, sizeof(buf), cand[i], exe);
		else
			snprintf(buf, sizeof(buf), "%s", cand[i]);
		if (access(buf, R_OK) == 0)
			return buf;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	g_lib_path = argc > 1 ? argv[1] : find_lib();
	const char *only = argc > 2 ? argv[2] : NULL;
	if (!g_lib_path) {
		printf("SKIP libsoftverbs.so not found (build it with: make softverbs)\n");
		return 77;
	}
	signal(SIGPIPE, SIG_IGN);
	alarm(120);
	/* keep the test's QPNs away from other users of the default namespace */
	char ns[64];
	snprintf(ns, sizeof(ns), "/tmp/softverbs-test-%d", (int)getpid());
	setenv("SOFTVERBS_DIR", ns, 1);
	void *h = dlopen(g_lib_path, RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		fprintf(stderr, "dlopen %s: %s\n", g_lib_path, dlerror());
		printf("softverbs: 0 passed, 1 failed\n");
		return 1;
	}
	for (size_t i = 0; i < sizeof(g_syms) / sizeof(g_syms[0]); i++) {
		void *p = dlsym(h, g_syms[i].name);
		if (!p) {
			fprintf(stderr, "dlsym %s: %s\n", g_syms[i].name, dlerror());
			printf("softverbs: 0 passed, 1 failed\n");
			return 1;
		}
		memcpy(g_syms[i].slot, &p, sizeof(p));
	}
	int passed = 0, failed = 0;
	for (size_t i = 0; i < sizeof(g_tests) / sizeof(g_tests[0]); i++) {
		if (only && !strstr(g_tests[i].name, only))
			continue;
		int before = g_checks_failed;
		uint64_t t0 = now_ms();
		g_tests[i].fn();
		uint64_t dt = now_ms() - t0;
		if (g_checks_failed == before) {
			passed++;
			printf("  ok   %-32s %5llu ms\n", g_tests[i].name, (unsigned long long)dt);
		} else {
			failed++;
			printf("  FAIL %-32s %5llu ms\n", g_tests[i].name, (unsigned long long)dt);
		}
		fflush(stdout);
	}
	dlclose(h);
	/* first line for tests/run_tests.sh, last line as documented */
	printf("test_softverbs: %d passed, %d failed\n", passed, failed);
	printf("softverbs: %d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
