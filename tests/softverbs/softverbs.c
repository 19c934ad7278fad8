/*
 * softverbs.c - test-only userspace emulation of libibverbs (RC QPs only).
 *
 * Stands in for libibverbs.so.1 when a transport dlopen()s the verbs library
 * and resolves the verbs by name.  Two QPs (in one or in different processes
 * of the same machine) are connected by a unix-domain stream socket in the
 * abstract namespace; per QP a tx and an rx engine thread move the bytes.
 *
 * Wire rule that keeps the engine deadlock free: only the tx thread writes to
 * the socket (after the handshake) and the rx thread never blocks on a write,
 * so every peer always drains its socket.
 *
 * See README.md for semantics, environment variables and limitations.
 */
#define _GNU_SOURCE
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <infiniband/verbs.h>

#include "softverbs.h"

/* verbs.h wraps these names in macros; we export the real symbols. */
#undef ibv_get_device_list
#undef ibv_query_port
#undef ibv_reg_mr
#undef ibv_reg_mr_iova

#define SV_EXPORT __attribute__((visibility("default")))

#define SV_MAX_DEVS 16
#define SV_NGID 4
#define SV_CHUNK (256u * 1024u)
#define SV_MAX_QP_WR 16384
#define SV_MAX_SGE 30
#define SV_MAX_CQE (1 << 20)
#define SV_MAX_INLINE 512
#define SV_MAX_RD_ATOM 16
#define SV_RNR_CAP_MS 2000u
#define SV_MAX_MSG (1ull << 31)
#define SV_HELLO_MAGIC 0x53567631u /* "SVv1" */

/* ------------------------------------------------------------------------ */
/* small helpers                                                            */

static int g_debug = -1;

static void sv_dbg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void sv_dbg(const char *fmt, ...)
{
	if (g_debug < 0) {
		const char *e = getenv("SOFTVERBS_DEBUG");
		g_debug = (e && *e && *e != '0') ? 1 : 0;
	}
	if (!g_debug)
		return;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "softverbs[%d]: ", (int)getpid());
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static uint64_t sv_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sv_abs_ts(struct timespec *ts, uint64_t abs_ns)
{
	ts->tv_sec = (time_t)(abs_ns / 1000000000ull);
	ts->tv_nsec = (long)(abs_ns % 1000000000ull);
}

static void sv_cond_init(pthread_cond_t *c)
{
	pthread_condattr_t a;
	pthread_condattr_init(&a);
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	pthread_cond_init(c, &a);
	pthread_condattr_destroy(&a);
}

static void sv_sleep_us(uint64_t us)
{
	struct timespec ts;
	ts.tv_sec = (time_t)(us / 1000000u);
	ts.tv_nsec = (long)(us % 1000000u) * 1000L;
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static uint64_t sv_env_u64(const char *name, uint64_t dflt)
{
	const char *e = getenv(name);
	if (!e || !*e)
		return dflt;
	char *end = NULL;
	errno = 0;
	unsigned long long v = strtoull(e, &end, 0);
	if (errno || end == e)
		return dflt;
	return (uint64_t)v;
}

/* ------------------------------------------------------------------------ */
/* statistics                                                               */

static struct softverbs_stats g_stats;
static uint64_t g_tx_payload_total; /* for SOFTVERBS_FAULT_DROP_AFTER_BYTES */

#define STAT_ADD(field, v) \
	__atomic_fetch_add(&g_stats.field, (uint64_t)(v), __ATOMIC_RELAXED)

static void sv_stats_check_fork(void);

SV_EXPORT int softverbs_stats(struct softverbs_stats *out)
{
	if (!out) {
		errno = EINVAL;
		return -1;
	}
	sv_stats_check_fork();
	const uint64_t *src = (const uint64_t *)(const void *)&g_stats;
	uint64_t *dst = (uint64_t *)(void *)out;
	for (size_t i = 0; i < sizeof(*out) / sizeof(uint64_t); i++)
		dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
	return 0;
}

SV_EXPORT void softverbs_stats_reset(void)
{
	uint64_t *p = (uint64_t *)(void *)&g_stats;
	for (size_t i = 0; i < sizeof(g_stats) / sizeof(uint64_t); i++)
		__atomic_store_n(&p[i], 0, __ATOMIC_RELAXED);
}

static void sv_stats_write_file(void)
{
	const char *path = getenv("SOFTVERBS_STATS_FILE");
	if (!path || !*path)
		return;
	char name[4096], tmp[4200];
	size_t o = 0;
	for (const char *p = path; *p && o + 16 < sizeof(name); p++) {
		if (p[0] == '%' && p[1] == 'p') {
			o += (size_t)snprintf(name + o, sizeof(name) - o, "%d", (int)getpid());
			p++;
		} else {
			name[o++] = *p;
		}
	}
	name[o] = 0;
	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", name, (int)getpid());
	FILE *f = fopen(tmp, "w");
	if (!f)
		return;
	struct softverbs_stats s;
	softverbs_stats(&s);
	fprintf(f, "{\n");
	fprintf(f, "  \"pid\": %d,\n", (int)getpid());
	fprintf(f, "  \"post_send_calls\": %llu,\n", (unsigned long long)s.post_send_calls);
	fprintf(f, "  \"post_recv_calls\": %llu,\n", (unsigned long long)s.post_recv_calls);
	fprintf(f, "  \"wr_posted\": %llu,\n", (unsigned long long)s.wr_posted);
	fprintf(f, "  \"wr_rdma_write\": %llu,\n",
		(unsigned long long)s.wr_posted_by_opcode[IBV_WR_RDMA_WRITE]);
	fprintf(f, "  \"wr_rdma_write_with_imm\": %llu,\n",
		(unsigned long long)s.wr_posted_by_opcode[IBV_WR_RDMA_WRITE_WITH_IMM]);
	fprintf(f, "  \"wr_send\": %llu,\n",
		(unsigned long long)s.wr_posted_by_opcode[IBV_WR_SEND]);
	fprintf(f, "  \"wr_send_with_imm\": %llu,\n",
		(unsigned long long)s.wr_posted_by_opcode[IBV_WR_SEND_WITH_IMM]);
	fprintf(f, "  \"wr_rdma_read\": %llu,\n",
		(unsigned long long)s.wr_posted_by_opcode[IBV_WR_RDMA_READ]);
	fprintf(f, "  \"recv_wr_posted\": %llu,\n", (unsigned long long)s.recv_wr_posted);
	fprintf(f, "  \"sges_posted\": %llu,\n", (unsigned long long)s.sges_posted);
	fprintf(f, "  \"signaled_completions\": %llu,\n",
		(unsigned long long)s.signaled_completions);
	fprintf(f, "  \"recv_completions\": %llu,\n", (unsigned long long)s.recv_completions);
	fprintf(f, "  \"error_completions\": %llu,\n", (unsigned long long)s.error_completions);
	fprintf(f, "  \"bytes_written\": %llu,\n", (unsigned long long)s.bytes_written);
	fprintf(f, "  \"bytes_sent\": %llu,\n", (unsigned long long)s.bytes_sent);
	fprintf(f, "  \"bytes_read\": %llu,\n", (unsigned long long)s.bytes_read);
	fprintf(f, "  \"payload_bytes_tx\": %llu,\n", (unsigned long long)s.payload_bytes_tx);
	fprintf(f, "  \"cq_overflows\": %llu,\n", (unsigned long long)s.cq_overflows);
	fprintf(f, "  \"async_events\": %llu\n", (unsigned long long)s.async_events);
	fprintf(f, "}\n");
	if (fclose(f) == 0)
		rename(tmp, name);
	else
		unlink(tmp);
}

/* A forked child starts with its own (zero) counters.  Detected lazily by pid
 * (no pthread_atfork/atexit: both misbehave with dlclose under some
 * sanitizers); every counting path starts with ibv_open_device(). */
static int g_stats_pid;

static void sv_stats_check_fork(void)
{
	int pid = (int)getpid();
	int old = __atomic_load_n(&g_stats_pid, __ATOMIC_ACQUIRE);
	if (old == pid)
		return;
	if (__atomic_compare_exchange_n(&g_stats_pid, &old, pid, false, __ATOMIC_ACQ_REL,
					__ATOMIC_ACQUIRE) &&
	    old != 0)
		softverbs_stats_reset();
}

__attribute__((constructor)) static void sv_init(void)
{
	sv_stats_check_fork();
}

/* runs at exit() and at dlclose() */
__attribute__((destructor)) static void sv_fini(void)
{
	sv_stats_check_fork();
	sv_stats_write_file();
}

/* ------------------------------------------------------------------------ */
/* objects                                                                  */

struct sv_device {
	struct ibv_device ibv;
	int index;
};

struct sv_async {
	struct sv_async *next;
	struct ibv_async_event ev;
};

struct sv_qp;

struct sv_context {
	struct ibv_context ibv;
	struct sv_device *dev;
	int async_pipe[2];

	pthread_mutex_t ev_lock; /* leaf lock: async event queue */
	struct sv_async *ev_head, *ev_tail;

	pthread_mutex_t qps_lock; /* list of QPs; taken before any qp->lock */
	struct sv_qp *qps;

	pthread_rwlock_t mr_lock; /* MR table */
	struct sv_mr **mrs;
	uint32_t mrs_cap;
	uint32_t mr_tag;

	enum ibv_mtu mtu;
	uint64_t max_mr_size;
	uint32_t max_sge; /* SOFTVERBS_MAX_SGE: reported and enforced, 1..SV_MAX_SGE */
	bool fault_drop;
	uint64_t fault_drop_after; /* absolute value of g_tx_payload_total */
	bool fault_corrupt_rkey;
	uint64_t fault_delay_us;
	uint64_t fault_port_down_ms;
	uint64_t connect_timeout_ms; /* SOFTVERBS_CONNECT_TIMEOUT_MS, 0 = derive */
	int port_state; /* atomic access */

	pthread_mutex_t port_lock;
	pthread_cond_t port_cond;
	bool closing;
	bool port_thread_running;
	pthread_t port_thread;

	char ns[80];
};

struct sv_pd {
	struct ibv_pd ibv;
	int refs; /* atomic */
};

struct sv_mr {
	struct ibv_mr ibv;
	struct sv_pd *pd;
	uint8_t *addr;
	uint64_t iova;
	uint64_t len;
	int access;
	uint32_t key;
	void *map;      /* ibv_reg_dmabuf_mr: the fd's mapping, unmapped at dereg */
	size_t map_len;
};

struct sv_cqev {
	struct sv_cqev *next;
	struct sv_cq *cq;
};

struct sv_chan {
	struct ibv_comp_channel ibv;
	int pipe[2];
	pthread_mutex_t lock;
	struct sv_cqev *head, *tail;
	int refs; /* atomic */
};

struct sv_cq {
	struct ibv_cq ibv;
	struct sv_context *ctx;
	pthread_mutex_t lock;
	struct ibv_wc *ring;
	uint32_t cap, head, count;
	bool armed, solicited_only, overflowed;
	struct sv_chan *chan;
	int refs; /* atomic: QPs using it */
};

enum { SWR_QUEUED, SWR_SENT, SWR_DONE };

struct sv_swr {
	struct sv_swr *next;
	uint64_t wr_id;
	uint64_t seq;
	uint64_t raddr;
	uint64_t post_ns;
	uint64_t len;
	enum ibv_wr_opcode op;
	unsigned int flags;
	uint32_t rkey;
	uint32_t imm;
	int state;
	enum ibv_wc_status status;
	bool signaled;
	int num_sge;
	uint8_t *inl; /* inline copy (IBV_SEND_INLINE) */
	struct ibv_sge sge[];
};

struct sv_rwr {
	struct sv_rwr *next;
	uint64_t wr_id;
	int num_sge;
	struct ibv_sge sge[];
};

/* wire messages (same machine: host byte order) */
enum {
	M_HELLO = 1,
	M_HELLO_ACK,
	M_WRITE,
	M_SEND,
	M_READ_REQ,
	M_READ_RESP,
	M_ACK,
	M_NAK,
	M_BYE,
};
#define MF_IMM 1u
#define MF_SOLICITED 2u

struct sv_msg {
	uint8_t type;
	uint8_t flags;
	uint8_t rnr_retry;
	uint8_t status;
	uint32_t len;
	uint64_t seq;
	uint64_t raddr;
	uint32_t rkey;
	uint32_t imm;
};

struct sv_hello {
	uint32_t magic;
	uint32_t src_qpn;
	uint32_t dst_qpn;
	uint32_t path_mtu;
	uint32_t active_mtu;
	uint8_t sgid[16];
	uint8_t dgid[16];
};

enum { HELLO_OK = 0, HELLO_MTU = 1, HELLO_GID = 2 };

struct sv_resp {
	struct sv_resp *next;
	uint8_t type;
	uint8_t status;
	uint64_t seq;
	uint64_t raddr;
	uint32_t rkey;
	uint32_t len;
};

struct sv_qp {
	struct ibv_qp ibv;
	struct sv_context *ctx;
	struct sv_pd *pd;
	struct sv_cq *scq, *rcq;
	struct sv_qp *ctx_next;

	pthread_mutex_t lock;
	pthread_cond_t cond;

	struct ibv_qp_cap cap;
	int sq_sig_all;
	struct ibv_qp_attr attr;
	enum ibv_qp_state state;
	int listen_fd;
	int conn_timeout_ms;

	/* send queue (in post order); sq_next = first not yet transmitted */
	struct sv_swr *sq_head, *sq_tail, *sq_next;
	uint32_t sq_count;
	uint64_t next_seq;
	bool tx_blocked;

	/* receive queue */
	struct sv_rwr *rq_head, *rq_tail;
	uint32_t rq_count;

	/* connection epoch (RTR .. RESET) */
	bool running;
	pthread_t tx_thr, rx_thr;
	int sock;
	int wakefd;
	bool stop;
	bool connected;
	bool unreachable;
	bool bye_rcvd;
	bool conn_lost;
	bool tx_midmsg;
	struct sv_resp *resp_head, *resp_tail;
};

/* ------------------------------------------------------------------------ */
/* devices                                                                  */

static struct sv_device g_devs[SV_MAX_DEVS];
static int g_ndevs;
static pthread_once_t g_devs_once = PTHREAD_ONCE_INIT;

static void sv_devs_init(void)
{
	uint64_t n = sv_env_u64("SOFTVERBS_DEVICES", 1);
	if (n > SV_MAX_DEVS)
		n = SV_MAX_DEVS;
	g_ndevs = (int)n;
	for (int i = 0; i < g_ndevs; i++) {
		struct sv_device *d = &g_devs[i];
		memset(d, 0, sizeof(*d));
		d->index = i;
		d->ibv.node_type = IBV_NODE_CA;
		d->ibv.transport_type = IBV_TRANSPORT_IB;
		snprintf(d->ibv.name, sizeof(d->ibv.name), "softverbs%d", i % 100);
		snprintf(d->ibv.dev_name, sizeof(d->ibv.dev_name), "uverbs%d", i % 100);
		snprintf(d->ibv.dev_path, sizeof(d->ibv.dev_path),
			 "/sys/class/infiniband_verbs/uverbs%d", i % 100);
		snprintf(d->ibv.ibdev_path, sizeof(d->ibv.ibdev_path),
			 "/sys/class/infiniband/softverbs%d", i % 100);
	}
}

static struct sv_device *sv_dev_of(struct ibv_device *d)
{
	pthread_once(&g_devs_once, sv_devs_init);
	for (int i = 0; i < g_ndevs; i++)
		if (d == &g_devs[i].ibv)
			return &g_devs[i];
	return NULL;
}

static uint64_t sv_dev_guid(int index)
{
	return 0x0253560000000000ull | (uint64_t)(index + 1);
}

/* GID table: 0 empty, 1 link-local (RoCE v1), 2 ::ffff:127.0.0.1 (RoCE v2),
 * 3 fd00:5356::<dev+1> (RoCE v2, IPv6 ULA). */
static bool sv_gid(int dev_index, int idx, union ibv_gid *g, int *type)
{
	memset(g, 0, sizeof(*g));
	switch (idx) {
	case 0:
		if (type)
			*type = IBV_GID_TYPE_ROCE_V2;
		return false; /* empty entry */
	case 1:
		g->raw[0] = 0xfe;
		g->raw[1] = 0x80;
		g->raw[8] = 0x02;
		g->raw[11] = 0xff;
		g->raw[12] = 0xfe;
		g->raw[15] = (uint8_t)(dev_index + 1);
		if (type)
			*type = IBV_GID_TYPE_ROCE_V1;
		return true;
	case 2:
		g->raw[10] = 0xff;
		g->raw[11] = 0xff;
		g->raw[12] = 127;
		g->raw[13] = 0;
		g->raw[14] = 0;
		g->raw[15] = 1;
		if (type)
			*type = IBV_GID_TYPE_ROCE_V2;
		return true;
	case 3:
		g->raw[0] = 0xfd;
		g->raw[1] = 0x00;
		g->raw[2] = 0x53;
		g->raw[3] = 0x56;
		g->raw[15] = (uint8_t)(dev_index + 1);
		if (type)
			*type = IBV_GID_TYPE_ROCE_V2;
		return true;
	default:
		return false;
	}
}

SV_EXPORT struct ibv_device **ibv_get_device_list(int *num_devices)
{
	pthread_once(&g_devs_once, sv_devs_init);
	struct ibv_device **l = calloc((size_t)g_ndevs + 1, sizeof(*l));
	if (!l) {
		errno = ENOMEM;
		return NULL;
	}
	for (int i = 0; i < g_ndevs; i++)
		l[i] = &g_devs[i].ibv;
	if (num_devices)
		*num_devices = g_ndevs;
	return l;
}

SV_EXPORT void ibv_free_device_list(struct ibv_device **list)
{
	free(list);
}

SV_EXPORT const char *ibv_get_device_name(struct ibv_device *device)
{
	return device ? device->name : NULL;
}

SV_EXPORT __be64 ibv_get_device_guid(struct ibv_device *device)
{
	struct sv_device *d = sv_dev_of(device);
	return htobe64(sv_dev_guid(d ? d->index : 0));
}

/* ------------------------------------------------------------------------ */
/* async events                                                             */

static void sv_async_push(struct sv_context *c, enum ibv_event_type type, void *obj,
			  int port)
{
	struct sv_async *e = calloc(1, sizeof(*e));
	if (!e)
		return;
	e->ev.event_type = type;
	switch (type) {
	case IBV_EVENT_CQ_ERR:
		e->ev.element.cq = obj;
		break;
	case IBV_EVENT_PORT_ERR:
	case IBV_EVENT_PORT_ACTIVE:
	case IBV_EVENT_LID_CHANGE:
	case IBV_EVENT_PKEY_CHANGE:
	case IBV_EVENT_SM_CHANGE:
	case IBV_EVENT_CLIENT_REREGISTER:
	case IBV_EVENT_GID_CHANGE:
		e->ev.element.port_num = port;
		break;
	case IBV_EVENT_DEVICE_FATAL:
		break;
	default:
		e->ev.element.qp = obj;
		break;
	}
	pthread_mutex_lock(&c->ev_lock);
	if (c->ev_tail)
		c->ev_tail->next = e;
	else
		c->ev_head = e;
	c->ev_tail = e;
	char b = 'e';
	ssize_t w = write(c->async_pipe[1], &b, 1);
	(void)w;
	pthread_mutex_unlock(&c->ev_lock);
	STAT_ADD(async_events, 1);
	sv_dbg("async event %d queued", (int)type);
}

static void sv_async_purge(struct sv_context *c, void *obj)
{
	pthread_mutex_lock(&c->ev_lock);
	struct sv_async **pp = &c->ev_head, *prev = NULL;
	while (*pp) {
		struct sv_async *e = *pp;
		bool match = false;
		switch (e->ev.event_type) {
		case IBV_EVENT_PORT_ERR:
		case IBV_EVENT_PORT_ACTIVE:
		case IBV_EVENT_LID_CHANGE:
		case IBV_EVENT_PKEY_CHANGE:
		case IBV_EVENT_SM_CHANGE:
		case IBV_EVENT_CLIENT_REREGISTER:
		case IBV_EVENT_GID_CHANGE:
		case IBV_EVENT_DEVICE_FATAL:
			break;
		case IBV_EVENT_CQ_ERR:
			match = (void *)e->ev.element.cq == obj;
			break;
		default:
			match = (void *)e->ev.element.qp == obj;
			break;
		}
		if (match) {
			*pp = e->next;
			free(e);
		} else {
			prev = e;
			pp = &e->next;
		}
	}
	c->ev_tail = prev;
	pthread_mutex_unlock(&c->ev_lock);
}

SV_EXPORT int ibv_get_async_event(struct ibv_context *context, struct ibv_async_event *event)
{
	struct sv_context *c = (struct sv_context *)context;
	if (!c || !event) {
		errno = EINVAL;
		return -1;
	}
	for (;;) {
		char b;
		ssize_t r = read(c->async_pipe[0], &b, 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r != 1) {
			if (r == 0)
				errno = EIO;
			return -1;
		}
		pthread_mutex_lock(&c->ev_lock);
		struct sv_async *e = c->ev_head;
		if (e) {
			c->ev_head = e->next;
			if (!c->ev_head)
				c->ev_tail = NULL;
		}
		pthread_mutex_unlock(&c->ev_lock);
		if (!e)
			continue; /* event was purged (object destroyed) */
		*event = e->ev;
		free(e);
		return 0;
	}
}

SV_EXPORT void ibv_ack_async_event(struct ibv_async_event *event)
{
	(void)event;
}

/* ------------------------------------------------------------------------ */
/* context                                                                  */

static int sv_poll_cq(struct ibv_cq *cq, int num_entries, struct ibv_wc *wc);
static int sv_req_notify_cq(struct ibv_cq *cq, int solicited_only);
static int sv_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad_wr);
static int sv_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad_wr);
static void sv_enter_err(struct sv_qp *qp);

static void *sv_port_thread(void *arg)
{
	struct sv_context *c = arg;
	uint64_t deadline = sv_now_ns() + c->fault_port_down_ms * 1000000ull;
	pthread_mutex_lock(&c->port_lock);
	while (!c->closing && sv_now_ns() < deadline) {
		struct timespec ts;
		sv_abs_ts(&ts, deadline);
		pthread_cond_timedwait(&c->port_cond, &c->port_lock, &ts);
	}
	bool closing = c->closing;
	pthread_mutex_unlock(&c->port_lock);
	if (closing)
		return NULL;
	sv_dbg("fault: port down on %s", c->dev->ibv.name);
	__atomic_store_n(&c->port_state, IBV_PORT_DOWN, __ATOMIC_RELEASE);
	pthread_mutex_lock(&c->qps_lock);
	for (struct sv_qp *qp = c->qps; qp; qp = qp->ctx_next) {
		pthread_mutex_lock(&qp->lock);
		if (qp->state == IBV_QPS_INIT || qp->state == IBV_QPS_RTR ||
		    qp->state == IBV_QPS_RTS)
			sv_enter_err(qp);
		pthread_mutex_unlock(&qp->lock);
	}
	pthread_mutex_unlock(&c->qps_lock);
	/* queued after the QPs are in ERR, so a consumer sees a consistent state */
	sv_async_push(c, IBV_EVENT_PORT_ERR, NULL, 1);
	return NULL;
}

static enum ibv_mtu sv_mtu_from_env(void)
{
	switch (sv_env_u64("SOFTVERBS_MTU", 4096)) {
	case 256:
		return IBV_MTU_256;
	case 512:
		return IBV_MTU_512;
	case 1024:
		return IBV_MTU_1024;
	case 2048:
		return IBV_MTU_2048;
	default:
		return IBV_MTU_4096;
	}
}

SV_EXPORT struct ibv_context *ibv_open_device(struct ibv_device *device)
{
	struct sv_device *d = sv_dev_of(device);
	if (!d) {
		errno = ENODEV;
		return NULL;
	}
	sv_stats_check_fork();
	struct sv_context *c = calloc(1, sizeof(*c));
	if (!c) {
		errno = ENOMEM;
		return NULL;
	}
	if (pipe2(c->async_pipe, O_CLOEXEC) != 0) {
		int e = errno;
		free(c);
		errno = e;
		return NULL;
	}
	fcntl(c->async_pipe[1], F_SETFL, fcntl(c->async_pipe[1], F_GETFL) | O_NONBLOCK);
	c->dev = d;
	c->ibv.device = device;
	c->ibv.ops.poll_cq = sv_poll_cq;
	c->ibv.ops.req_notify_cq = sv_req_notify_cq;
	c->ibv.ops.post_send = sv_post_send;
	c->ibv.ops.post_recv = sv_post_recv;
	c->ibv.cmd_fd = -1;
	c->ibv.async_fd = c->async_pipe[0];
	c->ibv.num_comp_vectors = 1;
	c->ibv.abi_compat = NULL; /* not an extended (verbs_context) context */
	pthread_mutex_init(&c->ibv.mutex, NULL);
	pthread_mutex_init(&c->ev_lock, NULL);
	pthread_mutex_init(&c->qps_lock, NULL);
	pthread_rwlock_init(&c->mr_lock, NULL);
	pthread_mutex_init(&c->port_lock, NULL);
	sv_cond_init(&c->port_cond);
	c->port_state = IBV_PORT_ACTIVE;
	c->mtu = sv_mtu_from_env();
	c->max_mr_size = sv_env_u64("SOFTVERBS_MAX_MR_SIZE", 1ull << 40);
	c->max_sge = (uint32_t)sv_env_u64("SOFTVERBS_MAX_SGE", SV_MAX_SGE);
	if (c->max_sge < 1 || c->max_sge > SV_MAX_SGE)
		c->max_sge = SV_MAX_SGE;
	const char *drop = getenv("SOFTVERBS_FAULT_DROP_AFTER_BYTES");
	if (drop && *drop) {
		c->fault_drop = true;
		c->fault_drop_after = sv_env_u64("SOFTVERBS_FAULT_DROP_AFTER_BYTES", 0) +
				      __atomic_load_n(&g_tx_payload_total, __ATOMIC_RELAXED);
	}
	c->fault_corrupt_rkey = sv_env_u64("SOFTVERBS_FAULT_CORRUPT_RKEY", 0) != 0;
	c->fault_delay_us = sv_env_u64("SOFTVERBS_FAULT_DELAY_US", 0);
	c->fault_port_down_ms = sv_env_u64("SOFTVERBS_FAULT_PORT_DOWN_AFTER_MS", 0);
	c->connect_timeout_ms = sv_env_u64("SOFTVERBS_CONNECT_TIMEOUT_MS", 0);
	if (c->connect_timeout_ms > 600000)
		c->connect_timeout_ms = 600000;
	const char *ns = getenv("SOFTVERBS_DIR");
	snprintf(c->ns, sizeof(c->ns), "%s", (ns && *ns) ? ns : "/tmp/softverbs");
	if (getenv("SOFTVERBS_FAULT_PORT_DOWN_AFTER_MS") &&
	    *getenv("SOFTVERBS_FAULT_PORT_DOWN_AFTER_MS")) {
		if (pthread_create(&c->port_thread, NULL, sv_port_thread, c) == 0)
			c->port_thread_running = true;
	}
	sv_dbg("opened %s mtu=%d", d->ibv.name, 128 << c->mtu);
	return &c->ibv;
}

SV_EXPORT int ibv_close_device(struct ibv_context *context)
{
	struct sv_context *c = (struct sv_context *)context;
	if (!c)
		return EINVAL;
	pthread_mutex_lock(&c->qps_lock);
	bool busy = c->qps != NULL;
	pthread_mutex_unlock(&c->qps_lock);
	if (busy) /* QPs still exist: their engine threads use the context */
		return EBUSY;
	if (c->port_thread_running) {
		pthread_mutex_lock(&c->port_lock);
		c->closing = true;
		pthread_cond_broadcast(&c->port_cond);
		pthread_mutex_unlock(&c->port_lock);
		pthread_join(c->port_thread, NULL);
	}
	while (c->ev_head) {
		struct sv_async *e = c->ev_head;
		c->ev_head = e->next;
		free(e);
	}
	close(c->async_pipe[0]);
	close(c->async_pipe[1]);
	free(c->mrs);
	pthread_mutex_destroy(&c->ibv.mutex);
	pthread_mutex_destroy(&c->ev_lock);
	pthread_mutex_destroy(&c->qps_lock);
	pthread_rwlock_destroy(&c->mr_lock);
	pthread_mutex_destroy(&c->port_lock);
	pthread_cond_destroy(&c->port_cond);
	free(c);
	return 0;
}

SV_EXPORT int ibv_query_device(struct ibv_context *context, struct ibv_device_attr *a)
{
	struct sv_context *c = (struct sv_context *)context;
	if (!c || !a)
		return EINVAL;
	memset(a, 0, sizeof(*a));
	snprintf(a->fw_ver, sizeof(a->fw_ver), "softverbs-1.0");
	a->node_guid = htobe64(sv_dev_guid(c->dev->index));
	a->sys_image_guid = a->node_guid;
	a->max_mr_size = c->max_mr_size;
	a->page_size_cap = 4096;
	a->vendor_id = 0x5356;
	a->vendor_part_id = 1;
	a->hw_ver = 1;
	a->max_qp = 1 << 16;
	a->max_qp_wr = SV_MAX_QP_WR;
	a->device_cap_flags = IBV_DEVICE_RC_RNR_NAK_GEN | IBV_DEVICE_PORT_ACTIVE_EVENT;
	a->max_sge = (int)c->max_sge;
	a->max_sge_rd = (int)c->max_sge;
	a->max_cq = 1 << 16;
	a->max_cqe = SV_MAX_CQE;
	a->max_mr = 1 << 20;
	a->max_pd = 1 << 16;
	a->max_qp_rd_atom = SV_MAX_RD_ATOM;
	a->max_res_rd_atom = SV_MAX_RD_ATOM * (1 << 16);
	a->max_qp_init_rd_atom = SV_MAX_RD_ATOM;
	a->atomic_cap = IBV_ATOMIC_NONE;
	a->max_pkeys = 1;
	a->local_ca_ack_delay = 16;
	a->phys_port_cnt = 1;
	return 0;
}

/* The exported symbol has the classic (compat) signature; verbs.h's inline
 * ___ibv_query_port() zeroes a full struct ibv_port_attr and calls it since
 * our context is not an extended verbs_context.  Like libibverbs, only the
 * fields up to and including 'flags' are written. */
SV_EXPORT int ibv_query_port(struct ibv_context *context, uint8_t port_num,
			     struct _compat_ibv_port_attr *port_attr)
{
	struct sv_context *c = (struct sv_context *)context;
	if (!c || !port_attr)
		return EINVAL;
	if (port_num != 1)
		return EINVAL;
	struct ibv_port_attr a;
	memset(&a, 0, sizeof(a));
	a.state = (enum ibv_port_state)__atomic_load_n(&c->port_state, __ATOMIC_ACQUIRE);
	a.max_mtu = IBV_MTU_4096;
	a.active_mtu = c->mtu;
	a.gid_tbl_len = SV_NGID;
	a.port_cap_flags = 0;
	a.max_msg_sz = (uint32_t)(SV_MAX_MSG);
	a.pkey_tbl_len = 1;
	a.lid = 0;
	a.sm_lid = 0;
	a.max_vl_num = 1;
	a.active_width = 2;  /* 4X */
	a.active_speed = 32; /* EDR */
	a.phys_state = a.state == IBV_PORT_ACTIVE ? 5 : 3; /* LinkUp / Disabled */
	a.link_layer = IBV_LINK_LAYER_ETHERNET;
	memcpy(port_attr, &a, offsetof(struct ibv_port_attr, port_cap_flags2));
	return 0;
}

SV_EXPORT int ibv_query_gid(struct ibv_context *context, uint8_t port_num, int index,
			    union ibv_gid *gid)
{
	struct sv_context *c = (struct sv_context *)context;
	if (!c || !gid || port_num != 1 || index < 0 || index >= SV_NGID) {
		errno = EINVAL;
		return -1;
	}
	sv_gid(c->dev->index, index, gid, NULL);
	return 0;
}

/* backs the inline ibv_query_gid_ex() of verbs.h */
SV_EXPORT int _ibv_query_gid_ex(struct ibv_context *context, uint32_t port_num,
				uint32_t gid_index, struct ibv_gid_entry *entry, uint32_t flags,
				size_t entry_size)
{
	struct sv_context *c = (struct sv_context *)context;
	if (!c || !entry || flags || entry_size < sizeof(*entry) || port_num != 1)
		return EINVAL;
	if (gid_index >= SV_NGID)
		return EINVAL;
	int type = 0;
	memset(entry, 0, sizeof(*entry));
	if (!sv_gid(c->dev->index, (int)gid_index, &entry->gid, &type))
		return ENODATA;
	entry->gid_index = gid_index;
	entry->port_num = port_num;
	entry->gid_type = (uint32_t)type;
	entry->ndev_ifindex = 1;
	return 0;
}

/* ------------------------------------------------------------------------ */
/* PD / MR                                                                  */

SV_EXPORT struct ibv_pd *ibv_alloc_pd(struct ibv_context *context)
{
	if (!context) {
		errno = EINVAL;
		return NULL;
	}
	struct sv_pd *pd = calloc(1, sizeof(*pd));
	if (!pd) {
		errno = ENOMEM;
		return NULL;
	}
	static uint32_t handles;
	pd->ibv.context = context;
	pd->ibv.handle = __atomic_add_fetch(&handles, 1, __ATOMIC_RELAXED);
	return &pd->ibv;
}

SV_EXPORT int ibv_dealloc_pd(struct ibv_pd *ibpd)
{
	struct sv_pd *pd = (struct sv_pd *)ibpd;
	if (!pd)
		return EINVAL;
	if (__atomic_load_n(&pd->refs, __ATOMIC_ACQUIRE) != 0)
		return EBUSY;
	free(pd);
	return 0;
}

/* caller holds c->mr_lock (read or write) */
static uint8_t *sv_mr_resolve(struct sv_context *c, struct sv_pd *pd, uint32_t key,
			      uint64_t addr, uint64_t len, int need)
{
	uint32_t slot = key >> 8;
	if (slot == 0 || slot >= c->mrs_cap)
		return NULL;
	struct sv_mr *mr = c->mrs[slot];
	if (!mr || mr->key != key || mr->pd != pd)
		return NULL;
	if ((mr->access & need) != need)
		return NULL;
	if (addr < mr->iova || len > mr->len || addr - mr->iova > mr->len - len)
		return NULL;
	return mr->addr + (addr - mr->iova);
}

SV_EXPORT struct ibv_mr *ibv_reg_mr_iova2(struct ibv_pd *ibpd, void *addr, size_t length,
					  uint64_t iova, unsigned int access)
{
	struct sv_pd *pd = (struct sv_pd *)ibpd;
	if (!pd) {
		errno = EINVAL;
		return NULL;
	}
	struct sv_context *c = (struct sv_context *)pd->ibv.context;
	access &= ~(unsigned int)IBV_ACCESS_OPTIONAL_RANGE;
	if ((access & (IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC)) &&
	    !(access & IBV_ACCESS_LOCAL_WRITE)) {
		errno = EINVAL;
		return NULL;
	}
	if ((uint64_t)length > c->max_mr_size || (!addr && length)) {
		errno = EINVAL;
		return NULL;
	}
	if (iova + (uint64_t)length < iova) {
		errno = EINVAL;
		return NULL;
	}
	struct sv_mr *mr = calloc(1, sizeof(*mr));
	if (!mr) {
		errno = ENOMEM;
		return NULL;
	}
	mr->pd = pd;
	mr->addr = addr;
	mr->iova = iova;
	mr->len = length;
	mr->access = (int)access;

	pthread_rwlock_wrlock(&c->mr_lock);
	uint32_t slot = 0;
	for (uint32_t i = 1; i < c->mrs_cap; i++)
		if (!c->mrs[i]) {
			slot = i;
			break;
		}
	if (!slot) {
		uint32_t ncap = c->mrs_cap ? c->mrs_cap * 2 : 64;
		if (ncap > (1u << 24)) {
			pthread_rwlock_unlock(&c->mr_lock);
			free(mr);
			errno = ENOMEM;
			return NULL;
		}
		struct sv_mr **n = realloc(c->mrs, ncap * sizeof(*n));
		if (!n) {
			pthread_rwlock_unlock(&c->mr_lock);
			free(mr);
			errno = ENOMEM;
			return NULL;
		}
		memset(n + c->mrs_cap, 0, (ncap - c->mrs_cap) * sizeof(*n));
		slot = c->mrs_cap ? c->mrs_cap : 1;
		c->mrs = n;
		c->mrs_cap = ncap;
	}
	c->mr_tag = (c->mr_tag + 0x5b) & 0xff;
	mr->key = (slot << 8) | c->mr_tag;
	c->mrs[slot] = mr;
	pthread_rwlock_unlock(&c->mr_lock);

	__atomic_add_fetch(&pd->refs, 1, __ATOMIC_ACQ_REL);
	mr->ibv.context = pd->ibv.context;
	mr->ibv.pd = &pd->ibv;
	mr->ibv.addr = addr;
	mr->ibv.length = length;
	mr->ibv.handle = mr->key;
	mr->ibv.lkey = mr->key;
	mr->ibv.rkey = mr->key;
	return &mr->ibv;
}

SV_EXPORT struct ibv_mr *ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length, int access)
{
	return ibv_reg_mr_iova2(pd, addr, length, (uint64_t)(uintptr_t)addr,
				(unsigned int)access);
}

SV_EXPORT struct ibv_mr *ibv_reg_mr_iova(struct ibv_pd *pd, void *addr, size_t length,
					 uint64_t iova, int access)
{
	return ibv_reg_mr_iova2(pd, addr, length, iova, (unsigned int)access);
}

SV_EXPORT struct ibv_mr *ibv_reg_dmabuf_mr(struct ibv_pd *pd, uint64_t offset, size_t length,
					   uint64_t iova, int fd, int access)
{
	/* A dma-buf that mmap can map (tests/fakecuda exports its memfd as
	   one): the MR's bytes are [offset, offset + length) of fd, at iova.
	   Any other fd: NULL, errno EOPNOTSUPP. */
	uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE), skip = offset % page;
	size_t map_len = (size_t)(skip + length);
	void *map = length && fd >= 0 ? mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
					     (off_t)(offset - skip))
				      : MAP_FAILED;
	if (map == MAP_FAILED) {
		errno = EOPNOTSUPP;
		return NULL;
	}
	struct ibv_mr *mr = ibv_reg_mr_iova2(pd, (uint8_t *)map + skip, length, iova,
					     (unsigned int)access);
	if (!mr) {
		int err = errno;
		munmap(map, map_len);
		errno = err;
		return NULL;
	}
	((struct sv_mr *)mr)->map = map;
	((struct sv_mr *)mr)->map_len = map_len;
	STAT_ADD(dmabuf_mrs, 1);
	return mr;
}

SV_EXPORT int ibv_dereg_mr(struct ibv_mr *ibmr)
{
	struct sv_mr *mr = (struct sv_mr *)ibmr;
	if (!mr)
		return EINVAL;
	struct sv_context *c = (struct sv_context *)mr->ibv.context;
	pthread_rwlock_wrlock(&c->mr_lock);
	uint32_t slot = mr->key >> 8;
	if (slot < c->mrs_cap && c->mrs[slot] == mr)
		c->mrs[slot] = NULL;
	pthread_rwlock_unlock(&c->mr_lock);
	__atomic_sub_fetch(&mr->pd->refs, 1, __ATOMIC_ACQ_REL);
	if (mr->map)
		munmap(mr->map, mr->map_len);
	free(mr);
	return 0;
}

/* ------------------------------------------------------------------------ */
/* completion channels and CQs                                              */

SV_EXPORT struct ibv_comp_channel *ibv_create_comp_channel(struct ibv_context *context)
{
	if (!context) {
		errno = EINVAL;
		return NULL;
	}
	struct sv_chan *ch = calloc(1, sizeof(*ch));
	if (!ch) {
		errno = ENOMEM;
		return NULL;
	}
	if (pipe2(ch->pipe, O_CLOEXEC) != 0) {
		int e = errno;
		free(ch);
		errno = e;
		return NULL;
	}
	fcntl(ch->pipe[1], F_SETFL, fcntl(ch->pipe[1], F_GETFL) | O_NONBLOCK);
	pthread_mutex_init(&ch->lock, NULL);
	ch->ibv.context = context;
	ch->ibv.fd = ch->pipe[0];
	ch->ibv.refcnt = 0;
	return &ch->ibv;
}

SV_EXPORT int ibv_destroy_comp_channel(struct ibv_comp_channel *channel)
{
	struct sv_chan *ch = (struct sv_chan *)channel;
	if (!ch)
		return EINVAL;
	if (__atomic_load_n(&ch->refs, __ATOMIC_ACQUIRE) != 0)
		return EBUSY;
	while (ch->head) {
		struct sv_cqev *n = ch->head;
		ch->head = n->next;
		free(n);
	}
	close(ch->pipe[0]);
	close(ch->pipe[1]);
	pthread_mutex_destroy(&ch->lock);
	free(ch);
	return 0;
}

SV_EXPORT struct ibv_cq *ibv_create_cq(struct ibv_context *context, int cqe, void *cq_context,
				       struct ibv_comp_channel *channel, int comp_vector)
{
	if (!context || cqe < 1 || cqe > SV_MAX_CQE || comp_vector < 0 ||
	    comp_vector >= context->num_comp_vectors ||
	    (channel && channel->context != context)) {
		errno = EINVAL;
		return NULL;
	}
	struct sv_cq *cq = calloc(1, sizeof(*cq));
	if (!cq) {
		errno = ENOMEM;
		return NULL;
	}
	cq->ring = calloc((size_t)cqe, sizeof(struct ibv_wc));
	if (!cq->ring) {
		free(cq);
		errno = ENOMEM;
		return NULL;
	}
	cq->cap = (uint32_t)cqe;
	cq->ctx = (struct sv_context *)context;
	pthread_mutex_init(&cq->lock, NULL);
	cq->chan = (struct sv_chan *)channel;
	if (cq->chan)
		__atomic_add_fetch(&cq->chan->refs, 1, __ATOMIC_ACQ_REL);
	cq->ibv.context = context;
	cq->ibv.channel = channel;
	cq->ibv.cq_context = cq_context;
	cq->ibv.cqe = cqe;
	pthread_mutex_init(&cq->ibv.mutex, NULL);
	pthread_cond_init(&cq->ibv.cond, NULL);
	return &cq->ibv;
}

SV_EXPORT int ibv_destroy_cq(struct ibv_cq *ibcq)
{
	struct sv_cq *cq = (struct sv_cq *)ibcq;
	if (!cq)
		return EINVAL;
	if (__atomic_load_n(&cq->refs, __ATOMIC_ACQUIRE) != 0)
		return EBUSY;
	if (cq->chan) {
		struct sv_chan *ch = cq->chan;
		pthread_mutex_lock(&ch->lock);
		struct sv_cqev **pp = &ch->head, *prev = NULL;
		while (*pp) {
			struct sv_cqev *n = *pp;
			if (n->cq == cq) {
				*pp = n->next;
				free(n);
			} else {
				prev = n;
				pp = &n->next;
			}
		}
		ch->tail = prev;
		pthread_mutex_unlock(&ch->lock);
		__atomic_sub_fetch(&ch->refs, 1, __ATOMIC_ACQ_REL);
	}
	sv_async_purge(cq->ctx, cq);
	pthread_mutex_destroy(&cq->lock);
	pthread_mutex_destroy(&cq->ibv.mutex);
	pthread_cond_destroy(&cq->ibv.cond);
	free(cq->ring);
	free(cq);
	return 0;
}

static void sv_cq_push(struct sv_cq *cq, const struct ibv_wc *wc, bool solicited)
{
	pthread_mutex_lock(&cq->lock);
	if (cq->count == cq->cap) {
		STAT_ADD(cq_overflows, 1);
		if (!cq->overflowed) {
			cq->overflowed = true;
			sv_async_push(cq->ctx, IBV_EVENT_CQ_ERR, &cq->ibv, 0);
		}
		pthread_mutex_unlock(&cq->lock);
		return;
	}
	cq->ring[(cq->head + cq->count) % cq->cap] = *wc;
	cq->count++;
	if (cq->armed && cq->chan &&
	    (!cq->solicited_only || solicited || wc->status != IBV_WC_SUCCESS)) {
		cq->armed = false;
		struct sv_cqev *n = calloc(1, sizeof(*n));
		if (n) {
			struct sv_chan *ch = cq->chan;
			n->cq = cq;
			pthread_mutex_lock(&ch->lock);
			if (ch->tail)
				ch->tail->next = n;
			else
				ch->head = n;
			ch->tail = n;
			char b = 'c';
			ssize_t w = write(ch->pipe[1], &b, 1);
			(void)w;
			pthread_mutex_unlock(&ch->lock);
		}
	}
	pthread_mutex_unlock(&cq->lock);
}

static int sv_poll_cq(struct ibv_cq *ibcq, int num_entries, struct ibv_wc *wc)
{
	struct sv_cq *cq = (struct sv_cq *)ibcq;
	if (num_entries < 0)
		return -1;
	pthread_mutex_lock(&cq->lock);
	int n = 0;
	while (n < num_entries && cq->count) {
		wc[n++] = cq->ring[cq->head];
		cq->head = (cq->head + 1) % cq->cap;
		cq->count--;
	}
	if (cq->count < cq->cap)
		cq->overflowed = false;
	pthread_mutex_unlock(&cq->lock);
	return n;
}

static int sv_req_notify_cq(struct ibv_cq *ibcq, int solicited_only)
{
	struct sv_cq *cq = (struct sv_cq *)ibcq;
	pthread_mutex_lock(&cq->lock);
	cq->armed = true;
	cq->solicited_only = solicited_only != 0;
	pthread_mutex_unlock(&cq->lock);
	return 0;
}

SV_EXPORT int ibv_get_cq_event(struct ibv_comp_channel *channel, struct ibv_cq **cq,
			       void **cq_context)
{
	struct sv_chan *ch = (struct sv_chan *)channel;
	if (!ch || !cq || !cq_context) {
		errno = EINVAL;
		return -1;
	}
	for (;;) {
		char b;
		ssize_t r = read(ch->pipe[0], &b, 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r != 1) {
			if (r == 0)
				errno = EIO;
			return -1;
		}
		pthread_mutex_lock(&ch->lock);
		struct sv_cqev *n = ch->head;
		if (n) {
			ch->head = n->next;
			if (!ch->head)
				ch->tail = NULL;
		}
		pthread_mutex_unlock(&ch->lock);
		if (!n)
			continue;
		*cq = &n->cq->ibv;
		*cq_context = n->cq->ibv.cq_context;
		free(n);
		return 0;
	}
}

SV_EXPORT void ibv_ack_cq_events(struct ibv_cq *cq, unsigned int nevents)
{
	if (!cq)
		return;
	pthread_mutex_lock(&cq->mutex);
	cq->comp_events_completed += nevents;
	pthread_mutex_unlock(&cq->mutex);
}

/* ------------------------------------------------------------------------ */
/* QP internals (all sv_* helpers below expect qp->lock held unless noted)  */

static const uint32_t sv_rnr_timer_us[32] = {
	655360, 10,    20,    30,    40,    60,    80,     120,    160,    240,   320,
	480,    640,   960,   1280,  1920,  2560,  3840,   5120,   7680,   10240, 15360,
	20480,  30720, 40960, 61440, 81920, 122880, 163840, 245760, 327680, 491520,
};

/* how long the responder waits for a receive WR before answering RNR NAK */
static uint64_t sv_rnr_budget_ms(unsigned int rnr_retry, unsigned int min_rnr_timer)
{
	if (rnr_retry >= 7)
		return SV_RNR_CAP_MS;
	uint64_t per = sv_rnr_timer_us[min_rnr_timer & 31] / 1000u;
	if (per < 10)
		per = 10;
	uint64_t t = (uint64_t)rnr_retry * per;
	return t > SV_RNR_CAP_MS ? SV_RNR_CAP_MS : t;
}

static int sv_conn_timeout_ms(const struct sv_context *c, const struct ibv_qp_attr *a)
{
	if (c->connect_timeout_ms)
		return (int)c->connect_timeout_ms;
	if (a->timeout == 0 || a->timeout > 31)
		return 10000;
	double us = 4.096 * (double)(1ull << a->timeout) * (double)(a->retry_cnt + 1);
	double ms = us / 1000.0;
	if (ms < 1000.0)
		ms = 1000.0;
	if (ms > 10000.0)
		ms = 10000.0;
	return (int)ms;
}

static void sv_wake(struct sv_qp *qp)
{
	if (qp->wakefd >= 0) {
		uint64_t one = 1;
		ssize_t w = write(qp->wakefd, &one, sizeof(one));
		(void)w;
	}
	pthread_cond_broadcast(&qp->cond);
}

static enum ibv_wc_opcode sv_wc_opcode(enum ibv_wr_opcode op)
{
	switch (op) {
	case IBV_WR_RDMA_WRITE:
	case IBV_WR_RDMA_WRITE_WITH_IMM:
		return IBV_WC_RDMA_WRITE;
	case IBV_WR_RDMA_READ:
		return IBV_WC_RDMA_READ;
	default:
		return IBV_WC_SEND;
	}
}

static void sv_sq_complete(struct sv_qp *qp, struct sv_swr *w, enum ibv_wc_status st)
{
	struct ibv_wc wc;
	memset(&wc, 0, sizeof(wc));
	wc.wr_id = w->wr_id;
	wc.status = st;
	wc.opcode = sv_wc_opcode(w->op);
	wc.qp_num = qp->ibv.qp_num;
	wc.src_qp = qp->attr.dest_qp_num;
	if (st == IBV_WC_SUCCESS && w->op == IBV_WR_RDMA_READ)
		wc.byte_len = (uint32_t)w->len;
	if (st == IBV_WC_SUCCESS)
		STAT_ADD(signaled_completions, 1);
	else
		STAT_ADD(error_completions, 1);
	sv_cq_push(qp->scq, &wc, false);
}

static void sv_rq_complete(struct sv_qp *qp, struct sv_rwr *r, enum ibv_wc_status st,
			   enum ibv_wc_opcode op, uint32_t byte_len, bool imm, uint32_t imm_data,
			   bool solicited)
{
	struct ibv_wc wc;
	memset(&wc, 0, sizeof(wc));
	wc.wr_id = r->wr_id;
	wc.status = st;
	wc.opcode = op;
	wc.qp_num = qp->ibv.qp_num;
	wc.src_qp = qp->attr.dest_qp_num;
	if (st == IBV_WC_SUCCESS) {
		wc.byte_len = byte_len;
		if (imm) {
			wc.wc_flags |= IBV_WC_WITH_IMM;
			wc.imm_data = imm_data;
		}
		STAT_ADD(recv_completions, 1);
	} else {
		STAT_ADD(error_completions, 1);
	}
	sv_cq_push(qp->rcq, &wc, solicited);
}

/* Move to ERR: flush every outstanding send and receive WR. */
static void sv_enter_err(struct sv_qp *qp)
{
	if (qp->state == IBV_QPS_ERR)
		return;
	sv_dbg("qp %06x -> ERR", qp->ibv.qp_num);
	qp->state = IBV_QPS_ERR;
	qp->ibv.state = IBV_QPS_ERR;
	qp->attr.qp_state = IBV_QPS_ERR;
	while (qp->sq_head) {
		struct sv_swr *w = qp->sq_head;
		qp->sq_head = w->next;
		enum ibv_wc_status st = IBV_WC_WR_FLUSH_ERR;
		if (w->state == SWR_DONE && w->status != IBV_WC_SUCCESS)
			st = w->status;
		sv_sq_complete(qp, w, st);
		free(w->inl);
		free(w);
	}
	qp->sq_tail = qp->sq_next = NULL;
	qp->sq_count = 0;
	while (qp->rq_head) {
		struct sv_rwr *r = qp->rq_head;
		qp->rq_head = r->next;
		sv_rq_complete(qp, r, IBV_WC_WR_FLUSH_ERR, IBV_WC_RECV, 0, false, 0, false);
		free(r);
	}
	qp->rq_tail = NULL;
	qp->rq_count = 0;
	sv_wake(qp);
}

/* Complete finished WRs at the head of the send queue, in order. */
static void sv_sq_advance(struct sv_qp *qp)
{
	struct sv_swr *w;
	while ((w = qp->sq_head) && w->state == SWR_DONE) {
		qp->sq_head = w->next;
		if (!qp->sq_head)
			qp->sq_tail = NULL;
		if (qp->sq_next == w)
			qp->sq_next = w->next;
		qp->sq_count--;
		bool err = w->status != IBV_WC_SUCCESS;
		if (err || w->signaled)
			sv_sq_complete(qp, w, w->status);
		free(w->inl);
		free(w);
		if (err) {
			sv_enter_err(qp);
			return;
		}
	}
	pthread_cond_broadcast(&qp->cond);
}

/* Fail the first unfinished send WR with st; returns false if none. */
static bool sv_fail_first_pending(struct sv_qp *qp, enum ibv_wc_status st)
{
	for (struct sv_swr *w = qp->sq_head; w; w = w->next) {
		if (w->state == SWR_DONE)
			continue;
		if (qp->sq_next == w)
			qp->sq_next = w->next;
		w->state = SWR_DONE;
		w->status = st;
		qp->tx_blocked = true;
		sv_sq_advance(qp);
		return true;
	}
	return false;
}

/* Connection lost without a BYE (peer died, fault injection). */
static void sv_peer_lost(struct sv_qp *qp)
{
	if (qp->conn_lost)
		return;
	qp->conn_lost = true;
	if (qp->state != IBV_QPS_RTR && qp->state != IBV_QPS_RTS)
		return;
	sv_dbg("qp %06x: connection to %06x lost", qp->ibv.qp_num, qp->attr.dest_qp_num);
	sv_fail_first_pending(qp, IBV_WC_RETRY_EXC_ERR);
	sv_enter_err(qp);
	sv_async_push(qp->ctx, IBV_EVENT_QP_FATAL, &qp->ibv, 0);
}

static void sv_queue_resp(struct sv_qp *qp, uint8_t type, uint8_t status, uint64_t seq,
			  uint64_t raddr, uint32_t rkey, uint32_t len)
{
	struct sv_resp *r = calloc(1, sizeof(*r));
	if (!r)
		return;
	r->type = type;
	r->status = status;
	r->seq = seq;
	r->raddr = raddr;
	r->rkey = rkey;
	r->len = len;
	if (qp->resp_tail)
		qp->resp_tail->next = r;
	else
		qp->resp_head = r;
	qp->resp_tail = r;
	pthread_cond_broadcast(&qp->cond);
}

static struct sv_resp *sv_pop_resp(struct sv_qp *qp)
{
	struct sv_resp *r = qp->resp_head;
	if (r) {
		qp->resp_head = r->next;
		if (!qp->resp_head)
			qp->resp_tail = NULL;
		r->next = NULL;
	}
	return r;
}

static bool sv_qp_live(struct sv_qp *qp)
{
	return !qp->stop && (qp->state == IBV_QPS_RTR || qp->state == IBV_QPS_RTS);
}

/* ------------------------------------------------------------------------ */
/* socket I/O (called without qp->lock)                                     */

/* 1 ready, 0 timeout, -1 woken */
static int sv_wait_fd(int fd, short ev, int wakefd, int timeout_ms)
{
	struct pollfd p[2];
	int n = 0;
	if (fd >= 0) {
		p[n].fd = fd;
		p[n].events = ev;
		p[n].revents = 0;
		n++;
	}
	int wi = -1;
	if (wakefd >= 0) {
		wi = n;
		p[n].fd = wakefd;
		p[n].events = POLLIN;
		p[n].revents = 0;
		n++;
	}
	for (;;) {
		int r = poll(p, (nfds_t)n, timeout_ms);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (r == 0)
			return 0;
		if (wi >= 0 && (p[wi].revents & POLLIN))
			return -1;
		return 1;
	}
}

enum { IO_OK = 0, IO_EOF = 1, IO_ERR = -1, IO_WOKEN = -2, IO_TIMEOUT = -3 };
/* rx handlers return IO_OK (go on), RX_STOP (QP entered ERR) or an IO_ code */
enum { RX_STOP = 2 };

static int sv_send_all(int fd, const void *buf, size_t len, int wakefd, int timeout_ms)
{
	const uint8_t *p = buf;
	while (len) {
		ssize_t w = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w > 0) {
			p += w;
			len -= (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			int r = sv_wait_fd(fd, POLLOUT, wakefd, timeout_ms);
			if (r == 0)
				return IO_TIMEOUT;
			if (r < 0)
				return IO_WOKEN;
			continue;
		}
		return IO_ERR;
	}
	return IO_OK;
}

static int sv_recv_all(int fd, void *buf, size_t len, int wakefd, int timeout_ms)
{
	uint8_t *p = buf;
	size_t got = 0;
	while (got < len) {
		ssize_t r = recv(fd, p + got, len - got, MSG_DONTWAIT);
		if (r > 0) {
			got += (size_t)r;
			continue;
		}
		if (r == 0)
			return got == 0 ? IO_EOF : IO_ERR;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			int w = sv_wait_fd(fd, POLLIN, wakefd, timeout_ms);
			if (w == 0)
				return IO_TIMEOUT;
			if (w < 0)
				return IO_WOKEN;
			continue;
		}
		return IO_ERR;
	}
	return IO_OK;
}

static socklen_t sv_qp_addr(const struct sv_context *c, uint32_t qpn, struct sockaddr_un *a)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	int n = snprintf(a->sun_path + 1, sizeof(a->sun_path) - 1, "softverbs:%s:%06x", c->ns,
			 qpn);
	if (n < 0)
		n = 0;
	if ((size_t)n > sizeof(a->sun_path) - 2)
		n = (int)sizeof(a->sun_path) - 2;
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

/* ------------------------------------------------------------------------ */
/* SGE helpers (caller holds c->mr_lock for reading)                        */

static bool sv_sge_check(struct sv_context *c, struct sv_pd *pd, const struct ibv_sge *sg,
			 int nsge, uint64_t len, int need)
{
	for (int i = 0; i < nsge && len; i++) {
		uint64_t k = sg[i].length < len ? sg[i].length : len;
		if (k && !sv_mr_resolve(c, pd, sg[i].lkey, sg[i].addr, k, need))
			return false;
		len -= k;
	}
	return len == 0;
}

static bool sv_sge_copy(struct sv_context *c, struct sv_pd *pd, const struct ibv_sge *sg,
			int nsge, uint64_t off, uint8_t *buf, size_t n, bool to_sge)
{
	int need = to_sge ? IBV_ACCESS_LOCAL_WRITE : 0;
	for (int i = 0; i < nsge && n; i++) {
		uint64_t l = sg[i].length;
		if (off >= l) {
			off -= l;
			continue;
		}
		size_t k = (size_t)(l - off) < n ? (size_t)(l - off) : n;
		uint8_t *p = sv_mr_resolve(c, pd, sg[i].lkey, sg[i].addr + off, k, need);
		if (!p)
			return false;
		if (to_sge)
			memcpy(p, buf, k);
		else
			memcpy(buf, p, k);
		buf += k;
		n -= k;
		off = 0;
	}
	return n == 0;
}

/* ------------------------------------------------------------------------ */
/* rx engine                                                                */

static int sv_establish(struct sv_qp *qp)
{
	struct sv_context *c = qp->ctx;
	struct sv_hello h;
	memset(&h, 0, sizeof(h));
	pthread_mutex_lock(&qp->lock);
	uint32_t me = qp->ibv.qp_num, peer = qp->attr.dest_qp_num;
	h.magic = SV_HELLO_MAGIC;
	h.src_qpn = me;
	h.dst_qpn = peer;
	h.path_mtu = (uint32_t)qp->attr.path_mtu;
	h.active_mtu = (uint32_t)c->mtu;
	union ibv_gid g;
	sv_gid(c->dev->index, qp->attr.ah_attr.grh.sgid_index, &g, NULL);
	memcpy(h.sgid, g.raw, 16);
	memcpy(h.dgid, qp->attr.ah_attr.grh.dgid.raw, 16);
	int wake = qp->wakefd;
	pthread_mutex_unlock(&qp->lock);

	struct sv_msg m;
	if (me < peer) {
		/* active side: connect to the peer QP's listener */
		struct sockaddr_un a;
		socklen_t alen = sv_qp_addr(c, peer, &a);
		int s = -1;
		for (;;) {
			s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
			if (s < 0)
				return -1;
			if (connect(s, (struct sockaddr *)&a, alen) == 0)
				break;
			close(s);
			s = -1;
			if (sv_wait_fd(-1, 0, wake, 20) < 0)
				return -1;
		}
		memset(&m, 0, sizeof(m));
		m.type = M_HELLO;
		m.len = sizeof(h);
		int r = sv_send_all(s, &m, sizeof(m), wake, 2000);
		if (r == IO_OK)
			r = sv_send_all(s, &h, sizeof(h), wake, 2000);
		if (r == IO_OK)
			r = sv_recv_all(s, &m, sizeof(m), wake, -1);
		if (r == IO_WOKEN) {
			close(s);
			return -1;
		}
		if (r != IO_OK || m.type != M_HELLO_ACK || m.status != HELLO_OK) {
			sv_dbg("qp %06x: handshake with %06x failed (r=%d status=%d)", me, peer, r,
			       r == IO_OK ? m.status : -1);
			close(s);
			pthread_mutex_lock(&qp->lock);
			qp->unreachable = true;
			pthread_cond_broadcast(&qp->cond);
			pthread_mutex_unlock(&qp->lock);
			return -1;
		}
		return s;
	}
	/* passive side: accept the peer's connection on our listener */
	for (;;) {
		int r = sv_wait_fd(qp->listen_fd, POLLIN, wake, -1);
		if (r < 0)
			return -1;
		int s = accept4(qp->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (s < 0)
			continue;
		struct sv_hello ph;
		r = sv_recv_all(s, &m, sizeof(m), wake, 2000);
		if (r == IO_OK && m.type == M_HELLO && m.len == sizeof(ph))
			r = sv_recv_all(s, &ph, sizeof(ph), wake, 2000);
		else if (r == IO_OK)
			r = IO_ERR;
		if (r == IO_WOKEN) {
			close(s);
			return -1;
		}
		if (r != IO_OK || ph.magic != SV_HELLO_MAGIC || ph.src_qpn != peer ||
		    ph.dst_qpn != me) {
			close(s); /* stale or foreign connection */
			continue;
		}
		uint8_t st = HELLO_OK;
		if (ph.path_mtu > (uint32_t)c->mtu || h.path_mtu > ph.active_mtu)
			st = HELLO_MTU;
		else if (memcmp(ph.sgid, h.dgid, 16) || memcmp(ph.dgid, h.sgid, 16))
			st = HELLO_GID;
		memset(&m, 0, sizeof(m));
		m.type = M_HELLO_ACK;
		m.status = st;
		r = sv_send_all(s, &m, sizeof(m), wake, 2000);
		if (r == IO_OK && st == HELLO_OK)
			return s;
		sv_dbg("qp %06x: rejecting %06x (status %d)", me, peer, st);
		close(s);
		if (r == IO_WOKEN)
			return -1;
		pthread_mutex_lock(&qp->lock);
		qp->unreachable = true;
		pthread_cond_broadcast(&qp->cond);
		pthread_mutex_unlock(&qp->lock);
		return -1;
	}
}

/* read and discard len payload bytes */
static int sv_drain(struct sv_qp *qp, int fd, uint64_t len, uint8_t *buf)
{
	while (len) {
		size_t n = len < SV_CHUNK ? (size_t)len : SV_CHUNK;
		int r = sv_recv_all(fd, buf, n, qp->wakefd, -1);
		if (r != IO_OK)
			return r == IO_EOF ? IO_ERR : r;
		len -= n;
	}
	return IO_OK;
}

/* Wait (lock held) for a posted receive; pops it.  *aborted set if the QP
 * left RTR/RTS while waiting. */
static struct sv_rwr *sv_rq_take(struct sv_qp *qp, unsigned int rnr_retry, bool *aborted)
{
	*aborted = false;
	if (!qp->rq_head) {
		uint64_t deadline =
			sv_now_ns() +
			sv_rnr_budget_ms(rnr_retry, qp->attr.min_rnr_timer) * 1000000ull;
		while (!qp->rq_head) {
			if (!sv_qp_live(qp)) {
				*aborted = true;
				return NULL;
			}
			if (sv_now_ns() >= deadline)
				return NULL;
			struct timespec ts;
			sv_abs_ts(&ts, deadline);
			pthread_cond_timedwait(&qp->cond, &qp->lock, &ts);
		}
	}
	if (!sv_qp_live(qp)) {
		*aborted = true;
		return NULL;
	}
	struct sv_rwr *r = qp->rq_head;
	qp->rq_head = r->next;
	if (!qp->rq_head)
		qp->rq_tail = NULL;
	qp->rq_count--;
	r->next = NULL;
	return r;
}

static void sv_rq_unpop(struct sv_qp *qp, struct sv_rwr *r)
{
	r->next = qp->rq_head;
	qp->rq_head = r;
	if (!qp->rq_tail)
		qp->rq_tail = r;
	qp->rq_count++;
}

/* responder: RDMA WRITE (with or without immediate) */
static int sv_rx_write(struct sv_qp *qp, int fd, const struct sv_msg *m, uint8_t *buf)
{
	struct sv_context *c = qp->ctx;
	bool imm = (m->flags & MF_IMM) != 0;
	pthread_mutex_lock(&qp->lock);
	if (!sv_qp_live(qp)) {
		pthread_mutex_unlock(&qp->lock);
		return IO_WOKEN;
	}
	bool ok = (qp->attr.qp_access_flags & IBV_ACCESS_REMOTE_WRITE) != 0;
	if (ok && m->len) {
		pthread_rwlock_rdlock(&c->mr_lock);
		ok = sv_mr_resolve(c, qp->pd, m->rkey, m->raddr, m->len, IBV_ACCESS_REMOTE_WRITE) !=
		     NULL;
		pthread_rwlock_unlock(&c->mr_lock);
	}
	if (!ok) {
		sv_dbg("qp %06x: remote access error (write rkey %#x addr %#llx len %u)",
		       qp->ibv.qp_num, m->rkey, (unsigned long long)m->raddr, m->len);
		sv_queue_resp(qp, M_NAK, IBV_WC_REM_ACCESS_ERR, m->seq, 0, 0, 0);
		sv_enter_err(qp);
		sv_async_push(c, IBV_EVENT_QP_ACCESS_ERR, &qp->ibv, 0);
		pthread_mutex_unlock(&qp->lock);
		return RX_STOP;
	}
	struct sv_rwr *rwr = NULL;
	if (imm) {
		bool aborted;
		rwr = sv_rq_take(qp, m->rnr_retry, &aborted);
		if (aborted) {
			pthread_mutex_unlock(&qp->lock);
			return IO_WOKEN;
		}
		if (!rwr) {
			pthread_mutex_unlock(&qp->lock);
			int r = sv_drain(qp, fd, m->len, buf);
			if (r != IO_OK)
				return r;
			pthread_mutex_lock(&qp->lock);
			sv_queue_resp(qp, M_NAK, IBV_WC_RNR_RETRY_EXC_ERR, m->seq, 0, 0, 0);
			pthread_mutex_unlock(&qp->lock);
			return 0;
		}
	}
	pthread_mutex_unlock(&qp->lock);

	bool bad = false;
	uint64_t off = 0;
	while (off < m->len) {
		size_t n = (m->len - off) < SV_CHUNK ? (size_t)(m->len - off) : SV_CHUNK;
		int r = sv_recv_all(fd, buf, n, qp->wakefd, -1);
		if (r != IO_OK) {
			if (rwr) {
				pthread_mutex_lock(&qp->lock);
				sv_rq_unpop(qp, rwr);
				pthread_mutex_unlock(&qp->lock);
			}
			return r == IO_EOF ? IO_ERR : r;
		}
		pthread_mutex_lock(&qp->lock);
		pthread_rwlock_rdlock(&c->mr_lock);
		uint8_t *dst = sv_mr_resolve(c, qp->pd, m->rkey, m->raddr + off, n,
					     IBV_ACCESS_REMOTE_WRITE);
		if (dst && sv_qp_live(qp))
			memcpy(dst, buf, n);
		else if (!dst)
			bad = true;
		pthread_rwlock_unlock(&c->mr_lock);
		pthread_mutex_unlock(&qp->lock);
		off += n;
	}
	if (c->fault_delay_us)
		sv_sleep_us(c->fault_delay_us);
	pthread_mutex_lock(&qp->lock);
	if (!sv_qp_live(qp)) {
		if (rwr)
			sv_rq_unpop(qp, rwr);
		pthread_mutex_unlock(&qp->lock);
		return IO_WOKEN;
	}
	if (bad) { /* MR deregistered while the write was landing */
		if (rwr)
			sv_rq_unpop(qp, rwr);
		sv_queue_resp(qp, M_NAK, IBV_WC_REM_ACCESS_ERR, m->seq, 0, 0, 0);
		sv_enter_err(qp);
		sv_async_push(c, IBV_EVENT_QP_ACCESS_ERR, &qp->ibv, 0);
		pthread_mutex_unlock(&qp->lock);
		return RX_STOP;
	}
	if (rwr) {
		sv_rq_complete(qp, rwr, IBV_WC_SUCCESS, IBV_WC_RECV_RDMA_WITH_IMM, m->len, true,
			       m->imm, (m->flags & MF_SOLICITED) != 0);
		free(rwr);
	}
	sv_queue_resp(qp, M_ACK, 0, m->seq, 0, 0, 0);
	pthread_mutex_unlock(&qp->lock);
	return 0;
}

/* responder: SEND (with or without immediate) */
static int sv_rx_send(struct sv_qp *qp, int fd, const struct sv_msg *m, uint8_t *buf)
{
	struct sv_context *c = qp->ctx;
	bool imm = (m->flags & MF_IMM) != 0;
	bool aborted;
	pthread_mutex_lock(&qp->lock);
	struct sv_rwr *rwr = sv_rq_take(qp, m->rnr_retry, &aborted);
	if (aborted) {
		pthread_mutex_unlock(&qp->lock);
		return IO_WOKEN;
	}
	if (!rwr) {
		sv_dbg("qp %06x: RNR for send seq %llu", qp->ibv.qp_num,
		       (unsigned long long)m->seq);
		pthread_mutex_unlock(&qp->lock);
		int r = sv_drain(qp, fd, m->len, buf);
		if (r != IO_OK)
			return r;
		pthread_mutex_lock(&qp->lock);
		sv_queue_resp(qp, M_NAK, IBV_WC_RNR_RETRY_EXC_ERR, m->seq, 0, 0, 0);
		pthread_mutex_unlock(&qp->lock);
		return 0;
	}
	uint64_t total = 0;
	for (int i = 0; i < rwr->num_sge; i++)
		total += rwr->sge[i].length;
	if (m->len > total) {
		sv_rq_complete(qp, rwr, IBV_WC_LOC_LEN_ERR, IBV_WC_RECV, 0, false, 0, false);
		free(rwr);
		sv_queue_resp(qp, M_NAK, IBV_WC_REM_INV_REQ_ERR, m->seq, 0, 0, 0);
		sv_enter_err(qp);
		pthread_mutex_unlock(&qp->lock);
		return RX_STOP;
	}
	pthread_rwlock_rdlock(&c->mr_lock);
	bool ok = sv_sge_check(c, qp->pd, rwr->sge, rwr->num_sge, m->len, IBV_ACCESS_LOCAL_WRITE);
	pthread_rwlock_unlock(&c->mr_lock);
	if (!ok) {
		sv_rq_complete(qp, rwr, IBV_WC_LOC_PROT_ERR, IBV_WC_RECV, 0, false, 0, false);
		free(rwr);
		sv_queue_resp(qp, M_NAK, IBV_WC_REM_OP_ERR, m->seq, 0, 0, 0);
		sv_enter_err(qp);
		pthread_mutex_unlock(&qp->lock);
		return RX_STOP;
	}
	pthread_mutex_unlock(&qp->lock);

	bool bad = false;
	uint64_t off = 0;
	while (off < m->len) {
		size_t n = (m->len - off) < SV_CHUNK ? (size_t)(m->len - off) : SV_CHUNK;
		int r = sv_recv_all(fd, buf, n, qp->wakefd, -1);
		if (r != IO_OK) {
			pthread_mutex_lock(&qp->lock);
			sv_rq_unpop(qp, rwr);
			pthread_mutex_unlock(&qp->lock);
			return r == IO_EOF ? IO_ERR : r;
		}
		pthread_mutex_lock(&qp->lock);
		pthread_rwlock_rdlock(&c->mr_lock);
		if (sv_qp_live(qp) &&
		    !sv_sge_copy(c, qp->pd, rwr->sge, rwr->num_sge, off, buf, n, true))
			bad = true;
		pthread_rwlock_unlock(&c->mr_lock);
		pthread_mutex_unlock(&qp->lock);
		off += n;
	}
	if (c->fault_delay_us)
		sv_sleep_us(c->fault_delay_us);
	pthread_mutex_lock(&qp->lock);
	if (!sv_qp_live(qp)) {
		sv_rq_unpop(qp, rwr);
		pthread_mutex_unlock(&qp->lock);
		return IO_WOKEN;
	}
	if (bad) {
		sv_rq_complete(qp, rwr, IBV_WC_LOC_PROT_ERR, IBV_WC_RECV, 0, false, 0, false);
		free(rwr);
		sv_queue_resp(qp, M_NAK, IBV_WC_REM_OP_ERR, m->seq, 0, 0, 0);
		sv_enter_err(qp);
		pthread_mutex_unlock(&qp->lock);
		return RX_STOP;
	}
	sv_rq_complete(qp, rwr, IBV_WC_SUCCESS, IBV_WC_RECV, m->len, imm, m->imm,
		       (m->flags & MF_SOLICITED) != 0);
	free(rwr);
	sv_queue_resp(qp, M_ACK, 0, m->seq, 0, 0, 0);
	pthread_mutex_unlock(&qp->lock);
	return 0;
}

/* responder: RDMA READ request (the tx thread streams the response) */
static int sv_rx_read_req(struct sv_qp *qp, const struct sv_msg *m)
{
	struct sv_context *c = qp->ctx;
	pthread_mutex_lock(&qp->lock);
	if (!sv_qp_live(qp)) {
		pthread_mutex_unlock(&qp->lock);
		return IO_WOKEN;
	}
	bool ok = (qp->attr.qp_access_flags & IBV_ACCESS_REMOTE_READ) != 0;
	if (ok && m->len) {
		pthread_rwlock_rdlock(&c->mr_lock);
		ok = sv_mr_resolve(c, qp->pd, m->rkey, m->raddr, m->len, IBV_ACCESS_REMOTE_READ) !=
		     NULL;
		pthread_rwlock_unlock(&c->mr_lock);
	}
	if (!ok) {
		sv_queue_resp(qp, M_NAK, IBV_WC_REM_ACCESS_ERR, m->seq, 0, 0, 0);
		sv_enter_err(qp);
		sv_async_push(c, IBV_EVENT_QP_ACCESS_ERR, &qp->ibv, 0);
		pthread_mutex_unlock(&qp->lock);
		return RX_STOP;
	}
	sv_queue_resp(qp, M_READ_RESP, 0, m->seq, m->raddr, m->rkey, m->len);
	pthread_mutex_unlock(&qp->lock);
	return 0;
}

static struct sv_swr *sv_find_sent(struct sv_qp *qp, uint64_t seq)
{
	for (struct sv_swr *w = qp->sq_head; w && w != qp->sq_next; w = w->next)
		if (w->seq == seq)
			return w->state == SWR_SENT ? w : NULL;
	return NULL;
}

/* requester: RDMA READ response data */
static int sv_rx_read_resp(struct sv_qp *qp, int fd, const struct sv_msg *m, uint8_t *buf)
{
	struct sv_context *c = qp->ctx;
	struct ibv_sge sge[SV_MAX_SGE];
	int nsge = 0;
	pthread_mutex_lock(&qp->lock);
	struct sv_swr *w = sv_find_sent(qp, m->seq);
	if (w && w->op == IBV_WR_RDMA_READ) {
		nsge = w->num_sge;
		memcpy(sge, w->sge, (size_t)nsge * sizeof(sge[0]));
	} else {
		w = NULL;
	}
	pthread_mutex_unlock(&qp->lock);
	if (!w)
		return sv_drain(qp, fd, m->len, buf);
	bool bad = false;
	uint64_t off = 0;
	while (off < m->len) {
		size_t n = (m->len - off) < SV_CHUNK ? (size_t)(m->len - off) : SV_CHUNK;
		int r = sv_recv_all(fd, buf, n, qp->wakefd, -1);
		if (r != IO_OK)
			return r == IO_EOF ? IO_ERR : r;
		pthread_mutex_lock(&qp->lock);
		pthread_rwlock_rdlock(&c->mr_lock);
		if (sv_qp_live(qp) && !sv_sge_copy(c, qp->pd, sge, nsge, off, buf, n, true))
			bad = true;
		pthread_rwlock_unlock(&c->mr_lock);
		pthread_mutex_unlock(&qp->lock);
		off += n;
	}
	STAT_ADD(bytes_read, m->len);
	if (c->fault_delay_us)
		sv_sleep_us(c->fault_delay_us);
	pthread_mutex_lock(&qp->lock);
	w = sv_find_sent(qp, m->seq);
	if (w) {
		/* responses arrive in order: everything before the read is acked */
		for (struct sv_swr *p = qp->sq_head; p && p != w; p = p->next)
			if (p->state == SWR_SENT && p->op != IBV_WR_RDMA_READ) {
				p->state = SWR_DONE;
				p->status = IBV_WC_SUCCESS;
			}
		w->state = SWR_DONE;
		w->status = bad ? IBV_WC_LOC_PROT_ERR : IBV_WC_SUCCESS;
		sv_sq_advance(qp);
	}
	pthread_mutex_unlock(&qp->lock);
	return 0;
}

static void sv_rx_ack(struct sv_qp *qp, const struct sv_msg *m)
{
	if (qp->ctx->fault_delay_us)
		sv_sleep_us(qp->ctx->fault_delay_us);
	pthread_mutex_lock(&qp->lock);
	for (struct sv_swr *w = qp->sq_head; w && w != qp->sq_next; w = w->next) {
		if (w->seq > m->seq)
			break;
		if (w->state == SWR_SENT && (w->op != IBV_WR_RDMA_READ || m->type == M_NAK)) {
			if (m->type == M_NAK && w->seq != m->seq)
				continue;
			w->state = SWR_DONE;
			w->status = m->type == M_NAK ? (enum ibv_wc_status)m->status
						     : IBV_WC_SUCCESS;
		}
	}
	if (m->type == M_NAK) {
		/* everything before the NAKed request was acknowledged */
		for (struct sv_swr *w = qp->sq_head; w && w != qp->sq_next; w = w->next) {
			if (w->seq >= m->seq)
				break;
			if (w->state == SWR_SENT && w->op != IBV_WR_RDMA_READ) {
				w->state = SWR_DONE;
				w->status = IBV_WC_SUCCESS;
			}
		}
	}
	sv_sq_advance(qp);
	pthread_mutex_unlock(&qp->lock);
}

static void *sv_rx_thread(void *arg)
{
	struct sv_qp *qp = arg;
	uint8_t *buf = malloc(SV_CHUNK);
	int fd = buf ? sv_establish(qp) : -1;
	pthread_mutex_lock(&qp->lock);
	if (fd >= 0) {
		qp->sock = fd;
		if (sv_qp_live(qp)) {
			qp->connected = true;
			sv_dbg("qp %06x connected to %06x", qp->ibv.qp_num, qp->attr.dest_qp_num);
		} else {
			shutdown(fd, SHUT_RDWR);
			fd = -1;
		}
	}
	pthread_cond_broadcast(&qp->cond);
	pthread_mutex_unlock(&qp->lock);

	while (fd >= 0) {
		struct sv_msg m;
		int r = sv_recv_all(fd, &m, sizeof(m), qp->wakefd, -1);
		if (r == IO_OK) {
			switch (m.type) {
			case M_WRITE:
				r = sv_rx_write(qp, fd, &m, buf);
				break;
			case M_SEND:
				r = sv_rx_send(qp, fd, &m, buf);
				break;
			case M_READ_REQ:
				r = sv_rx_read_req(qp, &m);
				break;
			case M_READ_RESP:
				r = sv_rx_read_resp(qp, fd, &m, buf);
				break;
			case M_ACK:
			case M_NAK:
				sv_rx_ack(qp, &m);
				r = 0;
				break;
			case M_BYE:
				pthread_mutex_lock(&qp->lock);
				qp->bye_rcvd = true;
				sv_dbg("qp %06x: peer said bye", qp->ibv.qp_num);
				if (sv_qp_live(qp))
					sv_fail_first_pending(qp, IBV_WC_RETRY_EXC_ERR);
				pthread_cond_broadcast(&qp->cond);
				pthread_mutex_unlock(&qp->lock);
				r = 0;
				break;
			default:
				r = IO_ERR;
				break;
			}
			if (r == 0)
				continue;
		}
		if (r == IO_EOF || r == IO_ERR) {
			pthread_mutex_lock(&qp->lock);
			if (!qp->bye_rcvd)
				sv_peer_lost(qp);
			pthread_mutex_unlock(&qp->lock);
		}
		break;
	}
	free(buf);
	return NULL;
}

/* ------------------------------------------------------------------------ */
/* tx engine                                                                */

/* check and account the payload for SOFTVERBS_FAULT_DROP_AFTER_BYTES;
 * returns how many of n bytes may still be sent */
static size_t sv_fault_budget(struct sv_context *c, size_t n, bool *drop)
{
	*drop = false;
	uint64_t before = __atomic_fetch_add(&g_tx_payload_total, n, __ATOMIC_RELAXED);
	if (!c->fault_drop)
		return n;
	if (before + n <= c->fault_drop_after)
		return n;
	*drop = true;
	return before >= c->fault_drop_after ? 0 : (size_t)(c->fault_drop_after - before);
}

static void sv_fault_drop(struct sv_qp *qp, int fd)
{
	sv_dbg("fault: dropping connection of qp %06x", qp->ibv.qp_num);
	shutdown(fd, SHUT_RDWR);
	pthread_mutex_lock(&qp->lock);
	sv_peer_lost(qp);
	pthread_mutex_unlock(&qp->lock);
}

static void sv_stat_payload(enum ibv_wr_opcode op, size_t n)
{
	STAT_ADD(payload_bytes_tx, n);
	if (op == IBV_WR_RDMA_WRITE || op == IBV_WR_RDMA_WRITE_WITH_IMM)
		STAT_ADD(bytes_written, n);
	else if (op == IBV_WR_SEND || op == IBV_WR_SEND_WITH_IMM)
		STAT_ADD(bytes_sent, n);
}

/* transmit one send WR; lock held on entry and exit */
static void sv_tx_wr(struct sv_qp *qp, struct sv_swr *w, uint8_t *buf)
{
	struct sv_context *c = qp->ctx;
	bool inl = w->inl != NULL;
	if (!inl) {
		int need = w->op == IBV_WR_RDMA_READ ? IBV_ACCESS_LOCAL_WRITE : 0;
		pthread_rwlock_rdlock(&c->mr_lock);
		bool ok = sv_sge_check(c, qp->pd, w->sge, w->num_sge, w->len, need);
		pthread_rwlock_unlock(&c->mr_lock);
		if (!ok) {
			sv_dbg("qp %06x: local protection error wr %llu", qp->ibv.qp_num,
			       (unsigned long long)w->wr_id);
			qp->sq_next = w->next;
			w->state = SWR_DONE;
			w->status = IBV_WC_LOC_PROT_ERR;
			qp->tx_blocked = true;
			sv_sq_advance(qp);
			return;
		}
	}
	qp->sq_next = w->next;
	w->state = SWR_SENT;

	struct sv_msg m;
	memset(&m, 0, sizeof(m));
	switch (w->op) {
	case IBV_WR_RDMA_WRITE_WITH_IMM:
		m.flags |= MF_IMM;
		/* fallthrough */
	case IBV_WR_RDMA_WRITE:
		m.type = M_WRITE;
		break;
	case IBV_WR_SEND_WITH_IMM:
		m.flags |= MF_IMM;
		/* fallthrough */
	case IBV_WR_SEND:
		m.type = M_SEND;
		break;
	default:
		m.type = M_READ_REQ;
		break;
	}
	if (w->flags & IBV_SEND_SOLICITED)
		m.flags |= MF_SOLICITED;
	m.rnr_retry = qp->attr.rnr_retry;
	m.len = (uint32_t)w->len;
	m.seq = w->seq;
	m.raddr = w->raddr;
	m.rkey = w->rkey;
	m.imm = w->imm;
	if (c->fault_corrupt_rkey && m.type == M_WRITE)
		m.rkey ^= 1u;
	enum ibv_wr_opcode op = w->op;
	uint64_t seq = w->seq;
	uint64_t len = w->len;
	int nsge = w->num_sge;
	struct ibv_sge sge[SV_MAX_SGE];
	memcpy(sge, w->sge, (size_t)nsge * sizeof(sge[0]));
	uint8_t *inl_copy = NULL;
	if (inl && len && m.type != M_READ_REQ) {
		memcpy(buf, w->inl, (size_t)len); /* len <= SV_MAX_INLINE */
		inl_copy = buf;
	}
	int fd = qp->sock, wake = qp->wakefd;
	qp->tx_midmsg = true;
	pthread_mutex_unlock(&qp->lock);

	int r = sv_send_all(fd, &m, sizeof(m), wake, -1);
	uint64_t off = 0;
	while (r == IO_OK && m.type != M_READ_REQ && off < len) {
		size_t n = (len - off) < SV_CHUNK ? (size_t)(len - off) : SV_CHUNK;
		if (!inl_copy) {
			pthread_mutex_lock(&qp->lock);
			if (!sv_qp_live(qp)) {
				pthread_mutex_unlock(&qp->lock);
				r = IO_WOKEN;
				break;
			}
			pthread_rwlock_rdlock(&c->mr_lock);
			if (!sv_sge_copy(c, qp->pd, sge, nsge, off, buf, n, false)) {
				memset(buf, 0, n); /* MR vanished under an in-flight WR */
				struct sv_swr *x = sv_find_sent(qp, seq);
				if (x)
					x->status = IBV_WC_LOC_PROT_ERR;
			}
			pthread_rwlock_unlock(&c->mr_lock);
			pthread_mutex_unlock(&qp->lock);
		}
		bool drop;
		size_t allowed = sv_fault_budget(c, n, &drop);
		if (allowed) {
			r = sv_send_all(fd, inl_copy ? inl_copy : buf, allowed, wake, -1);
			if (r == IO_OK)
				sv_stat_payload(op, allowed);
		}
		if (drop && r == IO_OK) {
			sv_fault_drop(qp, fd);
			r = IO_ERR;
			break;
		}
		off += n;
	}
	pthread_mutex_lock(&qp->lock);
	if (r == IO_OK) {
		qp->tx_midmsg = false;
		struct sv_swr *x = sv_find_sent(qp, seq);
		if (x && x->status == IBV_WC_LOC_PROT_ERR) {
			/* keep the status for the ACK: override to error */
			x->state = SWR_DONE;
			sv_sq_advance(qp);
		}
	} else if (r == IO_ERR) {
		sv_peer_lost(qp);
	}
}

/* transmit one response; lock held on entry and exit */
static int sv_tx_resp(struct sv_qp *qp, struct sv_resp *rp, uint8_t *buf)
{
	struct sv_context *c = qp->ctx;
	/* coalesce runs of positive ACKs: the last one acknowledges all */
	while (rp->type == M_ACK && qp->resp_head && qp->resp_head->type == M_ACK) {
		free(rp);
		rp = sv_pop_resp(qp);
	}
	struct sv_msg m;
	memset(&m, 0, sizeof(m));
	m.type = rp->type;
	m.status = rp->status;
	m.seq = rp->seq;
	m.len = rp->type == M_READ_RESP ? rp->len : 0;
	int fd = qp->sock, wake = qp->wakefd;
	if (rp->type == M_READ_RESP)
		qp->tx_midmsg = true;
	pthread_mutex_unlock(&qp->lock);
	int r = sv_send_all(fd, &m, sizeof(m), wake, -1);
	uint64_t off = 0;
	while (r == IO_OK && rp->type == M_READ_RESP && off < rp->len) {
		size_t n = (rp->len - off) < SV_CHUNK ? (size_t)(rp->len - off) : SV_CHUNK;
		pthread_mutex_lock(&qp->lock);
		if (!sv_qp_live(qp)) {
			pthread_mutex_unlock(&qp->lock);
			r = IO_WOKEN;
			break;
		}
		pthread_rwlock_rdlock(&c->mr_lock);
		uint8_t *src = sv_mr_resolve(c, qp->pd, rp->rkey, rp->raddr + off, n,
					     IBV_ACCESS_REMOTE_READ);
		if (src)
			memcpy(buf, src, n);
		else
			memset(buf, 0, n);
		pthread_rwlock_unlock(&c->mr_lock);
		pthread_mutex_unlock(&qp->lock);
		bool drop;
		size_t allowed = sv_fault_budget(c, n, &drop);
		if (allowed) {
			r = sv_send_all(fd, buf, allowed, wake, -1);
			if (r == IO_OK)
				STAT_ADD(payload_bytes_tx, allowed);
		}
		if (drop && r == IO_OK) {
			sv_fault_drop(qp, fd);
			r = IO_ERR;
			break;
		}
		off += n;
	}
	free(rp);
	pthread_mutex_lock(&qp->lock);
	if (r == IO_OK)
		qp->tx_midmsg = false;
	else if (r == IO_ERR)
		sv_peer_lost(qp);
	return r;
}

static bool sv_port_down(struct sv_qp *qp)
{
	return __atomic_load_n(&qp->ctx->port_state, __ATOMIC_ACQUIRE) != IBV_PORT_ACTIVE;
}

static void *sv_tx_thread(void *arg)
{
	struct sv_qp *qp = arg;
	uint8_t *buf = malloc(SV_CHUNK);
	pthread_mutex_lock(&qp->lock);
	while (buf) {
		if (!sv_qp_live(qp))
			break;
		if (!qp->connected) {
			uint64_t now = sv_now_ns();
			uint64_t wait_until = now + 20000000ull;
			if (qp->sq_next && qp->state == IBV_QPS_RTS) {
				uint64_t dl = qp->sq_next->post_ns +
					      (uint64_t)qp->conn_timeout_ms * 1000000ull;
				if (qp->unreachable || sv_port_down(qp) || now >= dl) {
					sv_dbg("qp %06x: peer %06x unreachable", qp->ibv.qp_num,
					       qp->attr.dest_qp_num);
					sv_fail_first_pending(qp, IBV_WC_RETRY_EXC_ERR);
					continue;
				}
				if (dl < wait_until)
					wait_until = dl;
			}
			struct timespec ts;
			sv_abs_ts(&ts, wait_until);
			pthread_cond_timedwait(&qp->cond, &qp->lock, &ts);
			continue;
		}
		if (qp->resp_head) {
			struct sv_resp *rp = sv_pop_resp(qp);
			sv_tx_resp(qp, rp, buf);
			continue;
		}
		if (qp->sq_next && !qp->tx_blocked && qp->state == IBV_QPS_RTS) {
			if (qp->bye_rcvd || qp->conn_lost || sv_port_down(qp)) {
				sv_fail_first_pending(qp, IBV_WC_RETRY_EXC_ERR);
				continue;
			}
			sv_tx_wr(qp, qp->sq_next, buf);
			continue;
		}
		pthread_cond_wait(&qp->cond, &qp->lock);
	}
	/* leaving: ERR, RESET or destroy.  Flush control responses (so a NAK that
	 * caused our error reaches the peer) and say BYE if the stream is at a
	 * message boundary; otherwise cut the connection. */
	int fd = qp->sock;
	if (fd >= 0 && qp->connected) {
		if (!qp->tx_midmsg && !qp->conn_lost) {
			struct sv_resp *rp;
			while ((rp = sv_pop_resp(qp))) {
				if (rp->type == M_ACK || rp->type == M_NAK) {
					struct sv_msg m;
					memset(&m, 0, sizeof(m));
					m.type = rp->type;
					m.status = rp->status;
					m.seq = rp->seq;
					pthread_mutex_unlock(&qp->lock);
					sv_send_all(fd, &m, sizeof(m), -1, 200);
					pthread_mutex_lock(&qp->lock);
				}
				free(rp);
			}
			struct sv_msg m;
			memset(&m, 0, sizeof(m));
			m.type = M_BYE;
			pthread_mutex_unlock(&qp->lock);
			int r = sv_send_all(fd, &m, sizeof(m), -1, 200);
			shutdown(fd, r == IO_OK ? SHUT_WR : SHUT_RDWR);
			pthread_mutex_lock(&qp->lock);
		} else {
			shutdown(fd, SHUT_RDWR);
		}
	}
	pthread_mutex_unlock(&qp->lock);
	free(buf);
	return NULL;
}

/* ------------------------------------------------------------------------ */
/* QP verbs                                                                 */

static int sv_bind_qpn(struct sv_context *c, uint32_t *qpn, int *fd_out)
{
	static uint32_t counter;
	uint32_t n = __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED);
	uint32_t base = ((uint32_t)(getpid() & 0xffff) << 8) | (n & 0xff);
	for (uint32_t i = 0; i < (1u << 24); i++) {
		uint32_t q = (base + i) & 0xffffff;
		if (q < 2)
			continue;
		int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (s < 0)
			return errno;
		struct sockaddr_un a;
		socklen_t alen = sv_qp_addr(c, q, &a);
		if (bind(s, (struct sockaddr *)&a, alen) == 0) {
			if (listen(s, 16) != 0) {
				int e = errno;
				close(s);
				return e;
			}
			*qpn = q;
			*fd_out = s;
			return 0;
		}
		int e = errno;
		close(s);
		if (e != EADDRINUSE)
			return e;
	}
	return ENOSPC;
}

SV_EXPORT struct ibv_qp *ibv_create_qp(struct ibv_pd *ibpd, struct ibv_qp_init_attr *ia)
{
	struct sv_pd *pd = (struct sv_pd *)ibpd;
	if (!pd || !ia || !ia->send_cq || !ia->recv_cq) {
		errno = EINVAL;
		return NULL;
	}
	if (ia->qp_type != IBV_QPT_RC || ia->srq) {
		errno = EOPNOTSUPP;
		return NULL;
	}
	struct sv_context *c = (struct sv_context *)pd->ibv.context;
	if (ia->send_cq->context != &c->ibv || ia->recv_cq->context != &c->ibv ||
	    ia->cap.max_send_wr > SV_MAX_QP_WR || ia->cap.max_recv_wr > SV_MAX_QP_WR ||
	    ia->cap.max_send_sge > c->max_sge || ia->cap.max_recv_sge > c->max_sge ||
	    ia->cap.max_inline_data > SV_MAX_INLINE) {
		errno = EINVAL;
		return NULL;
	}
	struct sv_qp *qp = calloc(1, sizeof(*qp));
	if (!qp) {
		errno = ENOMEM;
		return NULL;
	}
	uint32_t qpn = 0;
	int e = sv_bind_qpn(c, &qpn, &qp->listen_fd);
	if (e) {
		free(qp);
		errno = e;
		return NULL;
	}
	qp->ctx = c;
	qp->pd = pd;
	qp->scq = (struct sv_cq *)ia->send_cq;
	qp->rcq = (struct sv_cq *)ia->recv_cq;
	pthread_mutex_init(&qp->lock, NULL);
	sv_cond_init(&qp->cond);
	qp->cap = ia->cap;
	qp->sq_sig_all = ia->sq_sig_all;
	qp->state = IBV_QPS_RESET;
	qp->attr.qp_state = IBV_QPS_RESET;
	qp->attr.port_num = 1;
	qp->attr.path_mtu = IBV_MTU_1024;
	qp->attr.cap = ia->cap;
	qp->sock = -1;
	qp->wakefd = -1;
	qp->conn_timeout_ms = 10000;

	qp->ibv.context = &c->ibv;
	qp->ibv.qp_context = ia->qp_context;
	qp->ibv.pd = &pd->ibv;
	qp->ibv.send_cq = ia->send_cq;
	qp->ibv.recv_cq = ia->recv_cq;
	qp->ibv.srq = NULL;
	qp->ibv.handle = qpn;
	qp->ibv.qp_num = qpn;
	qp->ibv.state = IBV_QPS_RESET;
	qp->ibv.qp_type = IBV_QPT_RC;
	pthread_mutex_init(&qp->ibv.mutex, NULL);
	pthread_cond_init(&qp->ibv.cond, NULL);

	__atomic_add_fetch(&pd->refs, 1, __ATOMIC_ACQ_REL);
	__atomic_add_fetch(&qp->scq->refs, 1, __ATOMIC_ACQ_REL);
	__atomic_add_fetch(&qp->rcq->refs, 1, __ATOMIC_ACQ_REL);
	pthread_mutex_lock(&c->qps_lock);
	qp->ctx_next = c->qps;
	c->qps = qp;
	pthread_mutex_unlock(&c->qps_lock);
	sv_dbg("created qp %06x", qpn);
	return &qp->ibv;
}

/* stop the engine threads and forget all queued work (lock held; dropped
 * while joining) */
static void sv_qp_teardown(struct sv_qp *qp)
{
	if (qp->running) {
		qp->stop = true;
		sv_wake(qp);
		pthread_t tx = qp->tx_thr, rx = qp->rx_thr;
		pthread_mutex_unlock(&qp->lock);
		pthread_join(tx, NULL);
		pthread_join(rx, NULL);
		pthread_mutex_lock(&qp->lock);
		qp->running = false;
	}
	if (qp->sock >= 0)
		close(qp->sock);
	if (qp->wakefd >= 0)
		close(qp->wakefd);
	qp->sock = -1;
	qp->wakefd = -1;
	qp->stop = qp->connected = qp->unreachable = qp->bye_rcvd = false;
	qp->conn_lost = qp->tx_midmsg = qp->tx_blocked = false;
	while (qp->sq_head) {
		struct sv_swr *w = qp->sq_head;
		qp->sq_head = w->next;
		free(w->inl);
		free(w);
	}
	qp->sq_tail = qp->sq_next = NULL;
	qp->sq_count = 0;
	while (qp->rq_head) {
		struct sv_rwr *r = qp->rq_head;
		qp->rq_head = r->next;
		free(r);
	}
	qp->rq_tail = NULL;
	qp->rq_count = 0;
	struct sv_resp *rp;
	while ((rp = sv_pop_resp(qp)))
		free(rp);
}

static int sv_qp_start(struct sv_qp *qp)
{
	qp->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (qp->wakefd < 0)
		return errno;
	qp->stop = false;
	if (pthread_create(&qp->tx_thr, NULL, sv_tx_thread, qp) != 0) {
		close(qp->wakefd);
		qp->wakefd = -1;
		return ENOMEM;
	}
	if (pthread_create(&qp->rx_thr, NULL, sv_rx_thread, qp) != 0) {
		qp->stop = true;
		sv_wake(qp);
		pthread_mutex_unlock(&qp->lock);
		pthread_join(qp->tx_thr, NULL);
		pthread_mutex_lock(&qp->lock);
		close(qp->wakefd);
		qp->wakefd = -1;
		qp->stop = false;
		return ENOMEM;
	}
	qp->running = true;
	return 0;
}

#define QPM_RC_INIT (IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS)
#define QPM_RC_RTR                                                                   \
	(IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |             \
	 IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER)
#define QPM_RC_RTS                                                                   \
	(IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |       \
	 IBV_QP_MAX_QP_RD_ATOMIC)

static bool sv_transition(enum ibv_qp_state cur, enum ibv_qp_state nxt, int *req, int *opt)
{
	*req = 0;
	*opt = 0;
	if (nxt == IBV_QPS_RESET || nxt == IBV_QPS_ERR)
		return true;
	switch (cur) {
	case IBV_QPS_RESET:
		if (nxt != IBV_QPS_INIT)
			return false;
		*req = QPM_RC_INIT;
		return true;
	case IBV_QPS_INIT:
		if (nxt == IBV_QPS_INIT) {
			*opt = QPM_RC_INIT;
			return true;
		}
		if (nxt != IBV_QPS_RTR)
			return false;
		*req = QPM_RC_RTR;
		*opt = IBV_QP_ALT_PATH | IBV_QP_ACCESS_FLAGS | IBV_QP_PKEY_INDEX;
		return true;
	case IBV_QPS_RTR:
		if (nxt != IBV_QPS_RTS)
			return false;
		*req = QPM_RC_RTS;
		*opt = IBV_QP_CUR_STATE | IBV_QP_ALT_PATH | IBV_QP_ACCESS_FLAGS |
		       IBV_QP_MIN_RNR_TIMER | IBV_QP_PATH_MIG_STATE;
		return true;
	case IBV_QPS_RTS:
		if (nxt != IBV_QPS_RTS)
			return false;
		*opt = IBV_QP_CUR_STATE | IBV_QP_ALT_PATH | IBV_QP_ACCESS_FLAGS |
		       IBV_QP_MIN_RNR_TIMER | IBV_QP_PATH_MIG_STATE;
		return true;
	default:
		return false;
	}
}

static int sv_check_attr(struct sv_qp *qp, const struct ibv_qp_attr *a, int mask)
{
	struct sv_context *c = qp->ctx;
	if ((mask & IBV_QP_PORT) && a->port_num != 1)
		return EINVAL;
	if ((mask & IBV_QP_PKEY_INDEX) && a->pkey_index != 0)
		return EINVAL;
	if ((mask & IBV_QP_ACCESS_FLAGS) &&
	    (a->qp_access_flags & ~(unsigned int)(IBV_ACCESS_LOCAL_WRITE |
						  IBV_ACCESS_REMOTE_WRITE |
						  IBV_ACCESS_REMOTE_READ |
						  IBV_ACCESS_REMOTE_ATOMIC)))
		return EINVAL;
	if (mask & IBV_QP_AV) {
		union ibv_gid zero, sg;
		memset(&zero, 0, sizeof(zero));
		if (!a->ah_attr.is_global || a->ah_attr.grh.sgid_index >= SV_NGID)
			return EINVAL;
		if (!sv_gid(c->dev->index, a->ah_attr.grh.sgid_index, &sg, NULL))
			return EINVAL;
		if (!memcmp(a->ah_attr.grh.dgid.raw, zero.raw, 16))
			return EINVAL;
	}
	if ((mask & IBV_QP_PATH_MTU) &&
	    (a->path_mtu < IBV_MTU_256 || a->path_mtu > c->mtu))
		return EINVAL;
	if ((mask & IBV_QP_DEST_QPN) &&
	    (a->dest_qp_num == 0 || a->dest_qp_num > 0xffffff || a->dest_qp_num == qp->ibv.qp_num))
		return EINVAL;
	if ((mask & IBV_QP_MAX_DEST_RD_ATOMIC) && a->max_dest_rd_atomic > SV_MAX_RD_ATOM)
		return EINVAL;
	if ((mask & IBV_QP_MAX_QP_RD_ATOMIC) && a->max_rd_atomic > SV_MAX_RD_ATOM)
		return EINVAL;
	if ((mask & IBV_QP_MIN_RNR_TIMER) && a->min_rnr_timer > 31)
		return EINVAL;
	if ((mask & IBV_QP_TIMEOUT) && a->timeout > 31)
		return EINVAL;
	if ((mask & IBV_QP_RETRY_CNT) && a->retry_cnt > 7)
		return EINVAL;
	if ((mask & IBV_QP_RNR_RETRY) && a->rnr_retry > 7)
		return EINVAL;
	if ((mask & IBV_QP_RQ_PSN) && a->rq_psn > 0xffffff)
		return EINVAL;
	if ((mask & IBV_QP_SQ_PSN) && a->sq_psn > 0xffffff)
		return EINVAL;
	return 0;
}

static void sv_apply_attr(struct sv_qp *qp, const struct ibv_qp_attr *a, int mask)
{
	struct ibv_qp_attr *s = &qp->attr;
	if (mask & IBV_QP_PORT)
		s->port_num = a->port_num;
	if (mask & IBV_QP_PKEY_INDEX)
		s->pkey_index = a->pkey_index;
	if (mask & IBV_QP_ACCESS_FLAGS)
		s->qp_access_flags = a->qp_access_flags;
	if (mask & IBV_QP_AV)
		s->ah_attr = a->ah_attr;
	if (mask & IBV_QP_ALT_PATH) {
		s->alt_ah_attr = a->alt_ah_attr;
		s->alt_pkey_index = a->alt_pkey_index;
		s->alt_port_num = a->alt_port_num;
		s->alt_timeout = a->alt_timeout;
	}
	if (mask & IBV_QP_PATH_MTU)
		s->path_mtu = a->path_mtu;
	if (mask & IBV_QP_DEST_QPN)
		s->dest_qp_num = a->dest_qp_num;
	if (mask & IBV_QP_RQ_PSN)
		s->rq_psn = a->rq_psn;
	if (mask & IBV_QP_SQ_PSN)
		s->sq_psn = a->sq_psn;
	if (mask & IBV_QP_MAX_DEST_RD_ATOMIC)
		s->max_dest_rd_atomic = a->max_dest_rd_atomic;
	if (mask & IBV_QP_MAX_QP_RD_ATOMIC)
		s->max_rd_atomic = a->max_rd_atomic;
	if (mask & IBV_QP_MIN_RNR_TIMER)
		s->min_rnr_timer = a->min_rnr_timer;
	if (mask & IBV_QP_TIMEOUT)
		s->timeout = a->timeout;
	if (mask & IBV_QP_RETRY_CNT)
		s->retry_cnt = a->retry_cnt;
	if (mask & IBV_QP_RNR_RETRY)
		s->rnr_retry = a->rnr_retry;
	if (mask & IBV_QP_PATH_MIG_STATE)
		s->path_mig_state = a->path_mig_state;
}

static void sv_set_state(struct sv_qp *qp, enum ibv_qp_state st)
{
	qp->state = st;
	qp->ibv.state = st;
	qp->attr.qp_state = st;
	qp->attr.cur_qp_state = st;
}

SV_EXPORT int ibv_modify_qp(struct ibv_qp *ibqp, struct ibv_qp_attr *attr, int attr_mask)
{
	struct sv_qp *qp = (struct sv_qp *)ibqp;
	if (!qp || !attr)
		return EINVAL;
	pthread_mutex_lock(&qp->lock);
	enum ibv_qp_state cur = qp->state;
	enum ibv_qp_state nxt = (attr_mask & IBV_QP_STATE) ? attr->qp_state : cur;
	int req, opt, err = 0;
	if ((attr_mask & IBV_QP_CUR_STATE) && attr->cur_qp_state != cur)
		err = EINVAL;
	else if (!sv_transition(cur, nxt, &req, &opt))
		err = EINVAL;
	else if ((attr_mask & req) != req ||
		 (attr_mask & ~(req | opt | IBV_QP_STATE)) != 0)
		err = EINVAL;
	else
		err = sv_check_attr(qp, attr, attr_mask);
	if (err) {
		sv_dbg("qp %06x: modify %d -> %d mask %#x rejected", qp->ibv.qp_num, (int)cur,
		       (int)nxt, (unsigned int)attr_mask);
		pthread_mutex_unlock(&qp->lock);
		errno = err;
		return err;
	}
	sv_apply_attr(qp, attr, attr_mask);
	switch (nxt) {
	case IBV_QPS_RESET:
		sv_qp_teardown(qp);
		qp->next_seq = 0;
		sv_set_state(qp, IBV_QPS_RESET);
		break;
	case IBV_QPS_ERR:
		sv_enter_err(qp);
		sv_set_state(qp, IBV_QPS_ERR);
		break;
	case IBV_QPS_RTR:
		if (cur == IBV_QPS_INIT) {
			sv_set_state(qp, IBV_QPS_RTR);
			err = sv_qp_start(qp);
			if (err) {
				sv_set_state(qp, IBV_QPS_INIT);
				pthread_mutex_unlock(&qp->lock);
				errno = err;
				return err;
			}
		}
		break;
	case IBV_QPS_RTS:
		qp->conn_timeout_ms = sv_conn_timeout_ms(qp->ctx, &qp->attr);
		sv_set_state(qp, IBV_QPS_RTS);
		pthread_cond_broadcast(&qp->cond);
		break;
	default:
		sv_set_state(qp, nxt);
		break;
	}
	pthread_mutex_unlock(&qp->lock);
	return 0;
}

SV_EXPORT int ibv_query_qp(struct ibv_qp *ibqp, struct ibv_qp_attr *attr, int attr_mask,
			   struct ibv_qp_init_attr *init_attr)
{
	struct sv_qp *qp = (struct sv_qp *)ibqp;
	(void)attr_mask;
	if (!qp || !attr)
		return EINVAL;
	pthread_mutex_lock(&qp->lock);
	*attr = qp->attr;
	attr->qp_state = qp->state;
	attr->cur_qp_state = qp->state;
	attr->cap = qp->cap;
	if (init_attr) {
		memset(init_attr, 0, sizeof(*init_attr));
		init_attr->qp_context = qp->ibv.qp_context;
		init_attr->send_cq = qp->ibv.send_cq;
		init_attr->recv_cq = qp->ibv.recv_cq;
		init_attr->srq = NULL;
		init_attr->cap = qp->cap;
		init_attr->qp_type = IBV_QPT_RC;
		init_attr->sq_sig_all = qp->sq_sig_all;
	}
	pthread_mutex_unlock(&qp->lock);
	return 0;
}

SV_EXPORT int ibv_destroy_qp(struct ibv_qp *ibqp)
{
	struct sv_qp *qp = (struct sv_qp *)ibqp;
	if (!qp)
		return EINVAL;
	struct sv_context *c = qp->ctx;
	pthread_mutex_lock(&c->qps_lock);
	for (struct sv_qp **pp = &c->qps; *pp; pp = &(*pp)->ctx_next)
		if (*pp == qp) {
			*pp = qp->ctx_next;
			break;
		}
	pthread_mutex_unlock(&c->qps_lock);
	pthread_mutex_lock(&qp->lock);
	sv_qp_teardown(qp);
	pthread_mutex_unlock(&qp->lock);
	close(qp->listen_fd);
	sv_async_purge(c, &qp->ibv);
	__atomic_sub_fetch(&qp->pd->refs, 1, __ATOMIC_ACQ_REL);
	__atomic_sub_fetch(&qp->scq->refs, 1, __ATOMIC_ACQ_REL);
	__atomic_sub_fetch(&qp->rcq->refs, 1, __ATOMIC_ACQ_REL);
	pthread_mutex_destroy(&qp->lock);
	pthread_cond_destroy(&qp->cond);
	pthread_mutex_destroy(&qp->ibv.mutex);
	pthread_cond_destroy(&qp->ibv.cond);
	sv_dbg("destroyed qp %06x", qp->ibv.qp_num);
	free(qp);
	return 0;
}

static int sv_post_send(struct ibv_qp *ibqp, struct ibv_send_wr *wr, struct ibv_send_wr **bad_wr)
{
	struct sv_qp *qp = (struct sv_qp *)ibqp;
	STAT_ADD(post_send_calls, 1);
	pthread_mutex_lock(&qp->lock);
	int err = 0;
	bool posted = false;
	for (; wr; wr = wr->next) {
		uint64_t total = 0;
		if (qp->state != IBV_QPS_RTS && qp->state != IBV_QPS_ERR)
			err = EINVAL;
		else if (wr->num_sge < 0 || (uint32_t)wr->num_sge > qp->cap.max_send_sge ||
			 (wr->num_sge && !wr->sg_list))
			err = EINVAL;
		else if (wr->opcode != IBV_WR_RDMA_WRITE &&
			 wr->opcode != IBV_WR_RDMA_WRITE_WITH_IMM && wr->opcode != IBV_WR_SEND &&
			 wr->opcode != IBV_WR_SEND_WITH_IMM && wr->opcode != IBV_WR_RDMA_READ)
			err = EINVAL;
		if (!err) {
			for (int i = 0; i < wr->num_sge; i++)
				total += wr->sg_list[i].length;
			if (total > SV_MAX_MSG)
				err = EINVAL;
			else if ((wr->send_flags & IBV_SEND_INLINE) &&
				 (wr->opcode == IBV_WR_RDMA_READ || total > qp->cap.max_inline_data))
				err = EINVAL;
			else if (qp->state == IBV_QPS_RTS && qp->sq_count >= qp->cap.max_send_wr)
				err = ENOMEM;
		}
		struct sv_swr *w = NULL;
		if (!err) {
			w = calloc(1, sizeof(*w) + (size_t)wr->num_sge * sizeof(struct ibv_sge));
			if (!w)
				err = ENOMEM;
		}
		if (!err && (wr->send_flags & IBV_SEND_INLINE)) {
			w->inl = malloc(total ? (size_t)total : 1);
			if (!w->inl) {
				free(w);
				err = ENOMEM;
			} else {
				uint64_t o = 0;
				for (int i = 0; i < wr->num_sge; i++) {
					if (wr->sg_list[i].length)
						memcpy(w->inl + o,
						       (const void *)(uintptr_t)wr->sg_list[i].addr,
						       wr->sg_list[i].length);
					o += wr->sg_list[i].length;
				}
			}
		}
		if (err) {
			if (bad_wr)
				*bad_wr = wr;
			break;
		}
		w->wr_id = wr->wr_id;
		w->op = wr->opcode;
		w->flags = wr->send_flags;
		w->signaled = qp->sq_sig_all || (wr->send_flags & IBV_SEND_SIGNALED);
		w->len = total;
		w->imm = wr->imm_data;
		if (wr->opcode != IBV_WR_SEND && wr->opcode != IBV_WR_SEND_WITH_IMM) {
			w->raddr = wr->wr.rdma.remote_addr;
			w->rkey = wr->wr.rdma.rkey;
		}
		w->num_sge = wr->num_sge;
		if (wr->num_sge)
			memcpy(w->sge, wr->sg_list, (size_t)wr->num_sge * sizeof(struct ibv_sge));
		w->post_ns = sv_now_ns();
		w->seq = ++qp->next_seq;
		w->state = SWR_QUEUED;
		STAT_ADD(wr_posted, 1);
		if ((unsigned int)wr->opcode < SOFTVERBS_STATS_NUM_OPCODES)
			STAT_ADD(wr_posted_by_opcode[wr->opcode], 1);
		STAT_ADD(sges_posted, wr->num_sge);
		if (qp->state == IBV_QPS_ERR) {
			sv_sq_complete(qp, w, IBV_WC_WR_FLUSH_ERR);
			free(w->inl);
			free(w);
			continue;
		}
		if (qp->sq_tail)
			qp->sq_tail->next = w;
		else
			qp->sq_head = w;
		qp->sq_tail = w;
		if (!qp->sq_next)
			qp->sq_next = w;
		qp->sq_count++;
		posted = true;
	}
	if (posted)
		pthread_cond_broadcast(&qp->cond);
	pthread_mutex_unlock(&qp->lock);
	return err;
}

static int sv_post_recv(struct ibv_qp *ibqp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad_wr)
{
	struct sv_qp *qp = (struct sv_qp *)ibqp;
	STAT_ADD(post_recv_calls, 1);
	pthread_mutex_lock(&qp->lock);
	int err = 0;
	bool posted = false;
	for (; wr; wr = wr->next) {
		if (qp->state == IBV_QPS_RESET)
			err = EINVAL;
		else if (wr->num_sge < 0 || (uint32_t)wr->num_sge > qp->cap.max_recv_sge ||
			 (wr->num_sge && !wr->sg_list))
			err = EINVAL;
		else if (qp->state != IBV_QPS_ERR && qp->rq_count >= qp->cap.max_recv_wr)
			err = ENOMEM;
		struct sv_rwr *r = NULL;
		if (!err) {
			r = calloc(1, sizeof(*r) + (size_t)wr->num_sge * sizeof(struct ibv_sge));
			if (!r)
				err = ENOMEM;
		}
		if (err) {
			if (bad_wr)
				*bad_wr = wr;
			break;
		}
		r->wr_id = wr->wr_id;
		r->num_sge = wr->num_sge;
		if (wr->num_sge)
			memcpy(r->sge, wr->sg_list, (size_t)wr->num_sge * sizeof(struct ibv_sge));
		STAT_ADD(recv_wr_posted, 1);
		if (qp->state == IBV_QPS_ERR) {
			sv_rq_complete(qp, r, IBV_WC_WR_FLUSH_ERR, IBV_WC_RECV, 0, false, 0, false);
			free(r);
			continue;
		}
		if (qp->rq_tail)
			qp->rq_tail->next = r;
		else
			qp->rq_head = r;
		qp->rq_tail = r;
		qp->rq_count++;
		posted = true;
	}
	if (posted)
		pthread_cond_broadcast(&qp->cond);
	pthread_mutex_unlock(&qp->lock);
	return err;
}

/* ------------------------------------------------------------------------ */
/* strings                                                                  */

SV_EXPORT const char *ibv_wc_status_str(enum ibv_wc_status status)
{
	static const char *const str[] = {
		[IBV_WC_SUCCESS] = "success",
		[IBV_WC_LOC_LEN_ERR] = "local length error",
		[IBV_WC_LOC_QP_OP_ERR] = "local QP operation error",
		[IBV_WC_LOC_EEC_OP_ERR] = "local EE context operation error",
		[IBV_WC_LOC_PROT_ERR] = "local protection error",
		[IBV_WC_WR_FLUSH_ERR] = "Work Request Flushed Error",
		[IBV_WC_MW_BIND_ERR] = "memory management operation error",
		[IBV_WC_BAD_RESP_ERR] = "bad response error",
		[IBV_WC_LOC_ACCESS_ERR] = "local access error",
		[IBV_WC_REM_INV_REQ_ERR] = "remote invalid request error",
		[IBV_WC_REM_ACCESS_ERR] = "remote access error",
		[IBV_WC_REM_OP_ERR] = "remote operation error",
		[IBV_WC_RETRY_EXC_ERR] = "transport retry counter exceeded",
		[IBV_WC_RNR_RETRY_EXC_ERR] = "RNR retry counter exceeded",
		[IBV_WC_LOC_RDD_VIOL_ERR] = "local RDD violation error",
		[IBV_WC_REM_INV_RD_REQ_ERR] = "remote invalid RD request",
		[IBV_WC_REM_ABORT_ERR] = "aborted error",
		[IBV_WC_INV_EECN_ERR] = "invalid EE context number",
		[IBV_WC_INV_EEC_STATE_ERR] = "invalid EE context state",
		[IBV_WC_FATAL_ERR] = "fatal error",
		[IBV_WC_RESP_TIMEOUT_ERR] = "response timeout error",
		[IBV_WC_GENERAL_ERR] = "general error",
		[IBV_WC_TM_ERR] = "TM error",
		[IBV_WC_TM_RNDV_INCOMPLETE] = "TM software rendezvous",
	};
	if ((unsigned int)status < sizeof(str) / sizeof(str[0]) && str[status])
		return str[status];
	return "unknown";
}

SV_EXPORT const char *ibv_port_state_str(enum ibv_port_state port_state)
{
	static const char *const str[] = {
		[IBV_PORT_NOP] = "PORT_NOP",
		[IBV_PORT_DOWN] = "PORT_DOWN",
		[IBV_PORT_INIT] = "PORT_INIT",
		[IBV_PORT_ARMED] = "PORT_ARMED",
		[IBV_PORT_ACTIVE] = "PORT_ACTIVE",
		[IBV_PORT_ACTIVE_DEFER] = "PORT_ACTIVE_DEFER",
	};
	if ((unsigned int)port_state < sizeof(str) / sizeof(str[0]))
		return str[port_state];
	return "unknown";
}

SV_EXPORT const char *ibv_event_type_str(enum ibv_event_type event)
{
	static const char *const str[] = {
		[IBV_EVENT_CQ_ERR] = "CQ error",
		[IBV_EVENT_QP_FATAL] = "local work queue catastrophic error",
		[IBV_EVENT_QP_REQ_ERR] = "invalid request local work queue error",
		[IBV_EVENT_QP_ACCESS_ERR] = "local access violation work queue error",
		[IBV_EVENT_COMM_EST] = "communication established",
		[IBV_EVENT_SQ_DRAINED] = "send queue drained",
		[IBV_EVENT_PATH_MIG] = "path migrated",
		[IBV_EVENT_PATH_MIG_ERR] = "path migration request error",
		[IBV_EVENT_DEVICE_FATAL] = "local catastrophic error",
		[IBV_EVENT_PORT_ACTIVE] = "port active",
		[IBV_EVENT_PORT_ERR] = "port error",
		[IBV_EVENT_LID_CHANGE] = "LID change",
		[IBV_EVENT_PKEY_CHANGE] = "P_Key change",
		[IBV_EVENT_SM_CHANGE] = "SM change",
		[IBV_EVENT_SRQ_ERR] = "SRQ catastrophic error",
		[IBV_EVENT_SRQ_LIMIT_REACHED] = "SRQ limit reached",
		[IBV_EVENT_QP_LAST_WQE_REACHED] = "last WQE reached",
		[IBV_EVENT_CLIENT_REREGISTER] = "client reregistration",
		[IBV_EVENT_GID_CHANGE] = "GID table change",
		[IBV_EVENT_WQ_FATAL] = "WQ fatal",
	};
	if ((unsigned int)event < sizeof(str) / sizeof(str[0]) && str[event])
		return str[event];
	return "unknown";
}
