"""KvxConnector inside vLLM 0.34.0, tested against vLLM itself (CPU only).

Run with the venv tests/vllm/setup_venv.sh makes:
    build/venv-sglang/bin/python tests/vllm/test_pd.py [tcp file]

For each transport the parent starts two child processes, a prefill
instance and a decode instance. Each builds a real VllmConfig with
KVTransferConfig {"kv_connector": "KvxConnector",
"kv_connector_module_path": "kvx.vllm"} and gets its scheduler-side and
worker-side connectors from vLLM's own KVConnectorFactory (so they are
vLLM's subclasses, loaded the way vLLM loads them), registers KV caches made
as CPU tensors in vLLM's FlashAttention layout ((2, num_blocks, block_size,
heads, head_size) per layer; tcp uses NHD, file the HND physical order), and
drives the connectors in the order vLLM's scheduler and model runner call
them, with vLLM's Request, KVCacheBlocks, SchedulerOutput and
KVConnectorOutput:

  scheduler: get_num_new_matched_tokens, update_state_after_alloc,
             build_connector_meta (each step), request_finished (prefill),
             update_connector_output (each step)
  worker:    handle_preemptions, bind_connector_metadata, wait_for_layer_load
             and save_kv_layer per layer, finish_forward, start_load_kv
             (after the forward, as vLLM 0.34's runner starts async loads),
             wait_for_save, get_transfer_results,
             get_block_ids_with_load_errors, clear_connector_metadata

Requests (prompt lengths chosen to end mid-block and on a block edge):
  r0 r1 r2 r3   moved, byte-verified on decode against content generated
                independently from (request, layer, K/V, block of request)
  badp          the prefill hands kvx a block outside its pool: the prefill
                fails the room (its blocks are released: finished sending)
                and the decode reports the request finished receiving with
                every block in get_block_ids_with_load_errors
  badd          the decode's destination includes a block outside its pool:
                the decode reports a load error for it; the prefill's room
                ends (finished sending)

In the parent: the kvx layout the connector builds for FlashAttention's NHD
and HND tensors, FlashInfer's (num_blocks, 2, ...) and MLA's, and the
sentence for a shape it does not know.

Heterogeneous TP over tcp: "tcp-tp2to1", two prefill rank processes (TP 2,
HND caches: each rank's heads a contiguous span of a block) into one decode
that holds every head; "tcp-tp1to2", one prefill into two decode rank
processes (NHD caches: each decode rank takes its head range of every
token). Every rank runs its copy of the instance's scheduler side (the same
calls give the same rooms); the proxy's part is the parent's.

The tcp case runs both instances with kv_role "kv_both" (each side's kvx
engine is made on first use); the file case kv_producer / kv_consumer and
file_handshake false (the two instances share only the directory).

Children print "ok ..." / "FAIL ..." lines; the decode's stdin carries the
prefill's kv_transfer_params (as a proxy would), and each waits for its
stdin to close before it shuts its connector down.
"""
import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time

LAYERS, HEADS, HEAD_DIM, BS, NBLOCKS = 3, 4, 8, 16, 96
PROMPTS = {"r0": 35, "r1": 16, "r2": 100, "r3": 64, "badp": 40, "badd": 40}
DEADLINE = 120.0

passed = failed = 0
_check_lock = threading.Lock()


def check(cond, what):
    global passed, failed
    with _check_lock:
        if cond:
            passed += 1
            print(f"ok {what}", flush=True)
        else:
            failed += 1
            print(f"FAIL {what}", flush=True)
    return cond


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- content

def gen(torch, rid, layer, kv, blk):
    """Independently generated contents of block blk of request rid (one
    block of one layer's K or V, logical (block_size, heads, head_size))."""
    g = torch.Generator().manual_seed((sum(map(ord, rid)) * 7919 + layer * 131 + kv * 17 + blk)
                                      & 0x7FFFFFFF)
    return torch.randn((BS, HEADS, HEAD_DIM), generator=g).to(torch.float16)


def make_caches(torch, hnd, heads=HEADS):
    """Per-layer KV caches as vLLM's FlashAttention backend shapes them:
    logical (2, num_blocks, block_size, heads, head_size); HND keeps heads
    outside tokens physically (a permuted view, as vLLM makes it)."""
    caches = {}
    for i in range(LAYERS):
        name = f"model.layers.{i}.self_attn.attn"
        if hnd:
            t = torch.zeros((2, NBLOCKS, heads, BS, HEAD_DIM), dtype=torch.float16)
            caches[name] = t.permute(0, 1, 3, 2, 4)
        else:
            caches[name] = torch.zeros((2, NBLOCKS, BS, heads, HEAD_DIM), dtype=torch.float16)
    return caches


# ---------------------------------------------------------------- one instance

class Instance:
    """A vLLM instance's two connector halves, driven as vLLM drives them."""

    def __init__(self, role, transport, port, fdir, hnd, tp=1, rank=0):
        import torch
        from vllm.config import (CacheConfig, DeviceConfig, KVTransferConfig, ParallelConfig,
                                 VllmConfig)
        from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
        from vllm.distributed.kv_transfer.kv_connector.v1.base import (KVConnectorBase_V1,
                                                                       KVConnectorRole)
        from vllm.v1.kv_cache_interface import KVCacheConfig
        self.torch = torch
        kv_role = "kv_both" if transport == "tcp" else \
            ("kv_producer" if role == "prefill" else "kv_consumer")
        # the prefill waits this long for a decode that never names its
        # blocks (badd: the decode refuses them before it sends them)
        extra = {"transport": transport, "bootstrap_host": "127.0.0.1", "bootstrap_port": port,
                 "file_dir": fdir,
                 "file_handshake": False,
                 "bootstrap_timeout_s": 10 if role == "prefill" else 60,
                 "waiting_timeout_s": 60, "tp_rank": rank}
        # one engine_id per instance, shared by its TP ranks (as vLLM has it)
        ktc = KVTransferConfig(kv_connector="KvxConnector", kv_connector_module_path="kvx.vllm",
                               kv_role=kv_role, kv_connector_extra_config=extra,
                               engine_id=f"{role}-{transport}")
        self.cfg = VllmConfig(kv_transfer_config=ktc, cache_config=CacheConfig(block_size=BS),
                              device_config=DeviceConfig(device="cpu"),
                              parallel_config=ParallelConfig(tensor_parallel_size=tp))
        kvcc = KVCacheConfig(num_blocks=NBLOCKS, kv_cache_tensors=[], kv_cache_groups=[])
        self.sched = KVConnectorFactory.create_connector(self.cfg, KVConnectorRole.SCHEDULER, kvcc)
        self.work = KVConnectorFactory.create_connector(self.cfg, KVConnectorRole.WORKER, kvcc)
        check(isinstance(self.sched, KVConnectorBase_V1) and isinstance(self.work, KVConnectorBase_V1)
              and type(self.work).__name__ == "KvxConnector",
              f"{role}: vLLM's KVConnectorFactory made KvxConnector (a KVConnectorBase_V1) "
              f"from kv_connector_module_path, kv_role {kv_role}")
        self.heads = HEADS // tp  # this rank's KV heads
        self.head0 = rank * self.heads
        self.caches = make_caches(torch, hnd, self.heads)
        self.work.register_kv_caches(self.caches)
        self.role = role
        self.sent, self.recvd, self.failed, self.errors = set(), set(), set(), set()

    def request(self, rid, ntok, params):
        from vllm.sampling_params import SamplingParams
        from vllm.v1.request import Request
        sp = SamplingParams(max_tokens=1, extra_args={"kv_transfer_params": params})
        return Request(rid, list(range(1000, 1000 + ntok)), sp, None)

    @staticmethod
    def blocks(ids):
        from vllm.v1.core.kv_cache_manager import KVCacheBlocks
        from vllm.v1.core.kv_cache_utils import KVCacheBlock
        return KVCacheBlocks((tuple(KVCacheBlock(b) for b in ids),))

    def step(self, forward=()):
        """One engine step: scheduler output and connector metadata, the
        worker's connector calls around a forward pass, the output back."""
        from vllm.v1.core.sched.output import SchedulerOutput
        from vllm.v1.outputs import KVConnectorOutput
        so = SchedulerOutput.make_empty()
        so.kv_connector_metadata = self.sched.build_connector_meta(so)
        w = self.work
        w.handle_preemptions(so.kv_connector_metadata)
        w.bind_connector_metadata(so.kv_connector_metadata)
        for name in self.caches:
            w.wait_for_layer_load(name)
            for rid, ids in forward:  # "compute" this request's KV of this layer
                layer = int(name.split(".")[2])
                for j, b in enumerate(ids):
                    for kv in (0, 1):
                        full = gen(self.torch, rid, layer, kv, j)
                        self.caches[name][kv][b] = full[:, self.head0:self.head0 + self.heads]
            w.save_kv_layer(name, self.caches[name], None)
        w.finish_forward()
        w.start_load_kv(None)  # vLLM 0.34 starts async loads after the forward
        w.wait_for_save()
        res = w.get_transfer_results(so.finished_req_ids)
        errs = w.get_block_ids_with_load_errors()
        w.clear_connector_metadata()
        self.sched.update_connector_output(KVConnectorOutput(
            finished_sending=res.finished_sending or None,
            finished_recving=res.finished_recving or None,
            failed_recving=res.failed_recving, invalid_block_ids=errs))
        self.sent |= res.finished_sending
        self.recvd |= res.finished_recving
        self.failed |= res.failed_recving
        self.errors |= errs
        return res.finished_sending, res.finished_recving


# ---------------------------------------------------------------- prefill child

def prefill_main(transport, port, fdir, hnd, tp, rank, names):
    from vllm.v1.request import RequestStatus
    inst = Instance("prefill", transport, port, fdir, hnd, tp, rank)
    prompts = {k: PROMPTS[k] for k in names}
    order = list(range(NBLOCKS))
    order = order[::3] + order[1::3] + order[2::3]  # scattered blocks
    fwd, reqs = [], {}
    for rid, ntok in prompts.items():
        req = inst.request(rid, ntok, {"do_remote_decode": True})
        n, load_async = inst.sched.get_num_new_matched_tokens(req, 0)
        check(n == 0 and not load_async, f"prefill {rid}: no external tokens ({n}, {load_async})")
        ids = [order.pop(0) for _ in range(-(-ntok // BS))]
        inst.sched.update_state_after_alloc(req, inst.blocks(ids), 0)
        fwd.append((rid, ids))
        reqs[rid] = (req, ids)
    inst.step(forward=fwd)  # the prefill forward writes every request's KV
    check(sys.stdin.readline().strip() == "GO", "prefill: the decode instance is up")
    for rid, (req, ids) in reqs.items():
        req.status = RequestStatus.FINISHED_LENGTH_CAPPED
        req.num_computed_tokens = prompts[rid]
        given = list(ids)
        if rid == "badp":
            given[1] = NBLOCKS + 5  # a block the pool does not have
        delay, params = inst.sched.request_finished(req, given)
        check(delay and params and params.get("do_remote_prefill"),
              f"prefill {rid}: request_finished holds the blocks and returns kvx params")
        print("PARAMS " + json.dumps({"rid": rid, "params": params}), flush=True)
    # steps until every room ended (the decode connects, or fails, meanwhile)
    end = time.time() + DEADLINE
    while len(inst.sent) < len(reqs) and time.time() < end:
        inst.step()
        inst.work.wait_progress(200)
    check(inst.sent == set(reqs), f"prefill: every request reported finished sending "
          f"(missing {sorted(set(reqs) - inst.sent)})")
    check(not inst.sched.has_pending_push_work(), "prefill: no push work left once all were sent")
    if "badp" in prompts:
        why = inst.work.failures.get("badp", "")
        check("badp" in inst.work.failures and str(NBLOCKS + 5) in why,
              f"prefill badp: the room failed naming the block: {why!r}")
    if "badd" in prompts:
        why = inst.work.failures.get("badd", "")
        check(transport == "file" or "timed out" in why,
              f"prefill badd: the room ended when no destination came: {why!r}")
    check(set(inst.work.failures) <= {"badp", "badd"},
          f"prefill: no other request failed ({inst.work.failures})")
    print("SENT-ALL", flush=True)
    sys.stdin.read()
    inst.work.shutdown()
    print(f"DONE {passed} {failed}", flush=True)


# ---------------------------------------------------------------- decode child

def decode_main(transport, port, fdir, hnd, tp, rank, names):
    torch = __import__("torch")
    inst = Instance("decode", transport, port, fdir, hnd, tp, rank)
    prompts = {k: PROMPTS[k] for k in names}
    print("READY", flush=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in sys.stdin] and lines.put(None),
                     daemon=True).start()
    order = list(range(NBLOCKS))[::-1]  # other blocks than the prefill's
    want, eof = {}, False
    end = time.time() + DEADLINE
    while time.time() < end and not (len(want) == len(prompts) and inst.recvd >= set(want)):
        try:
            ln = lines.get(timeout=0.0 if inst.work.pending() else 1.0)
        except queue.Empty:
            ln = ""
        if ln is None:
            eof = True
        elif ln:
            msg = json.loads(ln)
            rid, params = msg["rid"], msg["params"]
            req = inst.request("d-" + rid, PROMPTS[rid], dict(params))
            n, load_async = inst.sched.get_num_new_matched_tokens(req, 0)
            check(n == PROMPTS[rid] and load_async,
                  f"decode {rid}: {PROMPTS[rid]} prompt tokens to load asynchronously ({n})")
            ids = [order.pop(0) for _ in range(-(-n // BS))]
            if rid == "badd":
                ids[2] = NBLOCKS + 3
            inst.sched.update_state_after_alloc(req, inst.blocks(ids), n)
            n2, _ = inst.sched.get_num_new_matched_tokens(req, 0)
            check(n2 == 0, f"decode {rid}: one transfer per request (asked again: {n2})")
            want[req.request_id] = (rid, ids)
        inst.step()
        inst.work.wait_progress(200)
    if transport == "file":
        decode_abort(inst, order)
    check(set(want) <= inst.recvd, f"decode: every request reported finished receiving "
          f"(missing {sorted(set(want) - inst.recvd)})")
    for did, (rid, ids) in want.items():
        if rid.startswith("bad"):
            check(set(ids) <= inst.errors and did in inst.failed and did in inst.work.failures,
                  f"decode {rid}: failed through the load-error path, every block of it in "
                  f"get_block_ids_with_load_errors and the request in failed_recving: "
                  f"{inst.work.failures.get(did)!r}")
            continue
        check(not (set(ids) & inst.errors) and did not in inst.failed,
              f"decode {rid}: no load error")
        wrong = 0
        for name, t in inst.caches.items():
            layer = int(name.split(".")[2])
            for j, b in enumerate(ids):
                for kv in (0, 1):
                    exp = gen(torch, rid, layer, kv, j)[:, inst.head0:inst.head0 + inst.heads]
                    if not torch.equal(t[kv][b], exp):
                        wrong += 1
        check(wrong == 0, f"decode {rid}: {len(ids)} blocks x {LAYERS} layers x K,V "
              f"(heads {inst.head0}..{inst.head0 + inst.heads - 1}) byte-identical "
              f"({wrong} wrong)")
    if "badp" in prompts:
        check("d-badp" in inst.work.failures and
              str(NBLOCKS + 5) in inst.work.failures["d-badp"],
              f"decode badp: the prefill's failure reached the decode: "
              f"{inst.work.failures.get('d-badp')!r}")
    while not eof:  # the prefill's rooms all ended: the parent closes stdin
        eof = lines.get() is None
    inst.work.shutdown()
    print(f"DONE {passed} {failed}", flush=True)


def decode_abort(inst, order):
    """A decode request aborted while its room is open (a room no prefill
    writes: it stays Transferring): request_finished keeps its blocks, the
    worker aborts the room and reports the request as sent (blocks freed)."""
    params = {"do_remote_prefill": True, "kvx_room": 0x5EED_0000_0001, "kvx_addr": None,
              "kvx_num_blocks": 2, "kvx_num_tokens": 2 * BS}
    req = inst.request("d-dabort", 2 * BS, params)
    n, _ = inst.sched.get_num_new_matched_tokens(req, 0)
    ids = [order.pop(0) for _ in range(2)]
    inst.sched.update_state_after_alloc(req, inst.blocks(ids), n)
    inst.step()  # the receiver room opens and names its blocks
    check(inst.work.pending() == 1, "decode dabort: its room is open")
    from vllm.v1.request import RequestStatus
    req.status = RequestStatus.FINISHED_ABORTED
    delay, out = inst.sched.request_finished(req, ids)
    check(delay and out is None, "decode dabort: request_finished keeps the blocks being written")
    end = time.time() + DEADLINE
    while "d-dabort" not in inst.sent and time.time() < end:
        inst.step()
    check("d-dabort" in inst.sent and "d-dabort" not in inst.recvd and inst.work.pending() == 0,
          "decode dabort: the room was aborted and the request reported sent (blocks freed)")


# ---------------------------------------------------------------- parent

def layouts():
    """The kvx layout of each KV cache shape the connector knows, and a
    sentence for one it does not (in the parent, no transfer)."""
    import torch
    from kvx.vllm.connector import layout_from_kv_caches
    n, f16 = 8, torch.float16
    nhd = {f"l{i}": torch.zeros((2, n, BS, HEADS, HEAD_DIM), dtype=f16) for i in range(2)}
    lay, d = layout_from_kv_caches(nhd, n)
    row = HEADS * HEAD_DIM * 2
    check(lay.c.num_buffers == 4 and lay.c.page_size == BS and lay.c.num_kv_heads == HEADS and
          lay._kv[0].item_len == BS * row and lay._kv[1].base == nhd["l1"][0].data_ptr() and
          lay._kv[2].base == nhd["l0"][1].data_ptr() and not lay.c.mla,
          "layout NHD (2, N, B, H, D): K of every layer then V, a page per block, "
          "block_size rows of every head")
    hnd = {f"l{i}": torch.zeros((2, n, HEADS, BS, HEAD_DIM), dtype=f16).permute(0, 1, 3, 2, 4)
           for i in range(2)}
    lay, d = layout_from_kv_caches(hnd, n, head_begin_rank=1)
    check(lay.c.num_buffers == 4 and lay.c.page_size == 1 and lay.c.num_kv_heads == HEADS and
          lay.c.head_begin == HEADS and lay._kv[0].item_len == BS * row,
          "layout HND (heads outside tokens): one row of heads per block, rank 1's heads "
          "start after rank 0's")
    fi = {f"l{i}": torch.zeros((n, 2, BS, HEADS, HEAD_DIM), dtype=f16) for i in range(2)}
    lay, d = layout_from_kv_caches(fi, n)
    check(lay.c.num_buffers == 2 and lay._kv[0].item_len == 2 * BS * row and d["kind"] == "joint",
          "layout FlashInfer (N, 2, B, H, D): one buffer per layer, K and V in one page")
    mla = {f"l{i}": torch.zeros((n, BS, 576), dtype=torch.bfloat16) for i in range(3)}
    lay, d = layout_from_kv_caches(mla, n)
    check(lay.c.num_buffers == 3 and lay.c.mla and lay._kv[0].item_len == BS * 576 * 2,
          "layout MLA (N, B, dim): one buffer per layer, kvx's MLA flag")
    from kvx.vllm.connector import KvxConnector
    from vllm.config import KVTransferConfig
    from vllm.config.kv_transfer import KVCacheAccess
    acc = {t: KvxConnector.kv_cache_access(KVTransferConfig(
        kv_connector="KvxConnector", kv_role="kv_both",
        kv_connector_extra_config={"transport": t})) for t in ("tcp", "file", "rdma", "cuda")}
    check(acc == {"tcp": KVCacheAccess.IN_PROCESS, "file": KVCacheAccess.IN_PROCESS,
                  "rdma": KVCacheAccess.REGISTERS, "cuda": KVCacheAccess.LEGACY_IPC},
          f"kv_cache_access by transport: {acc}")
    try:
        layout_from_kv_caches({"l0": torch.zeros((3, 5, 7), dtype=f16)}, n)
        check(False, "an unknown KV cache shape is refused")
    except NotImplementedError as e:
        check("num_blocks (8)" in str(e), f"an unknown KV cache shape is refused: {e}")


CASES = {
    # name: (transport, HND layout, prefill TP, decode TP, requests)
    "tcp": ("tcp", False, 1, 1, list(PROMPTS)),
    "file": ("file", True, 1, 1, list(PROMPTS)),
    "tcp-tp2to1": ("tcp", True, 2, 1, ["r0", "r2", "r3"]),
    "tcp-tp1to2": ("tcp", False, 1, 2, ["r0", "r2"]),
}


def run_case(case):
    transport, hnd, ptp, dtp, names = CASES[case]
    port = free_port()
    fdir = tempfile.mkdtemp(prefix="kvx-vllm-")
    env = dict(os.environ, PYTHONWARNINGS="ignore", VLLM_LOGGING_LEVEL="WARNING",
               KVX_LOG_LEVEL="error")
    common = [transport, str(port), fdir, "1" if hnd else "0"]
    me = os.path.abspath(__file__)
    pres = [subprocess.Popen([sys.executable, me, "--child", "prefill"] + common +
                             [str(ptp), str(r), ",".join(names)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
            for r in range(ptp)]
    decs = [subprocess.Popen([sys.executable, me, "--child", "decode"] + common +
                             [str(dtp), str(r), ",".join(names)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
            for r in range(dtp)]
    out = {f"prefill{r}": [] for r in range(ptp)}
    out.update({f"decode{r}": [] for r in range(dtp)})
    ready = []
    sent_all = []
    lock = threading.Lock()

    def pump_prefill(r):
        # rank 0's params go to every decode rank, as the proxy passes the
        # instance's kv_transfer_params on (every rank computes the same)
        for ln in pres[r].stdout:
            if ln.startswith("PARAMS "):
                if r == 0:
                    for d in decs:
                        d.stdin.write(ln[len("PARAMS "):])
                        d.stdin.flush()
            elif ln.startswith("SENT-ALL"):
                with lock:
                    sent_all.append(r)
                    if len(sent_all) == ptp:
                        for d in decs:
                            d.stdin.close()
            else:
                out[f"prefill{r}"].append(ln)

    def pump_decode(r):
        for ln in decs[r].stdout:
            if ln.startswith("READY"):
                with lock:
                    ready.append(r)
                    if len(ready) == dtp:  # every decode rank is up: the prefill may go
                        for p in pres:
                            p.stdin.write("GO\n")
                            p.stdin.flush()
            out[f"decode{r}"].append(ln)

    pumps = [threading.Thread(target=pump_prefill, args=(r,)) for r in range(ptp)]
    dpumps = [threading.Thread(target=pump_decode, args=(r,)) for r in range(dtp)]
    for t in pumps + dpumps:
        t.start()
    for t in dpumps:
        t.join(timeout=3 * DEADLINE)
    for d in decs:
        d.wait(timeout=DEADLINE)
        with lock:
            if not d.stdin.closed:
                try:
                    d.stdin.close()
                except OSError:
                    pass
    for p in pres:  # the decodes are done: the prefills may shut down
        p.stdin.close()
    for t in pumps:
        t.join(timeout=DEADLINE)
    for p in pres:
        p.wait(timeout=DEADLINE)
    for side, lines in out.items():
        for ln in lines:
            ln = ln.rstrip("\n")
            if ln.startswith("ok ") or ln.startswith("FAIL "):
                check(ln.startswith("ok "), f"[{case}] {side}: {ln.split(' ', 1)[1]}")
        proc = decs[int(side[len("decode"):])] if side.startswith("decode") else \
            pres[int(side[len("prefill"):])]
        check(proc.returncode == 0 and any(x.startswith("DONE ") for x in lines),
              f"[{case}] {side} child exited cleanly (rc {proc.returncode})")


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        role, transport, port, fdir, hnd, tp, rank, names = sys.argv[2:10]
        names = names.split(",")
        if role == "prefill":
            prefill_main(transport, int(port), fdir, hnd == "1", int(tp), int(rank), names)
        else:
            decode_main(transport, int(port), fdir, hnd == "1", int(tp), int(rank), names)
        return 0
    start = time.time()
    # the cases run at once (their waits overlap: process start-up, the
    # prefill's wait for a destination that never comes)
    runs = [threading.Thread(target=run_case, args=(c,)) for c in sys.argv[1:] or list(CASES)]
    for t in runs:
        t.start()
    if not sys.argv[1:]:
        layouts()
    for t in runs:
        t.join()
    print(f"vllm-pd: {passed} passed, {failed} failed ({time.time() - start:.0f} s)", flush=True)
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
