"""Per-request overhead of KvxConnector: the fake transport through the
connector against the fake transport from C, in the same run.

    make build/bench_file
    build/venv-sglang/bin/python tests/vllm/bench_overhead.py [requests]

Prints three figures for one 4096-token Llama-3.1-8B request (256 blocks of
16 tokens, 32 layers, 8 KV heads of 128, bfloat16: 64 kvx buffers), each a
prefill sender plus a decode receiver that move nothing (transport "fake"):
  C        build/bench_file's "fake transport" line (kvx's own cost)
  Python   the same sequence through the kvx package (ctypes)
  vLLM     everything both KvxConnectors do for the request, the calls in the
           order vLLM makes them: prefill get_num_new_matched_tokens,
           update_state_after_alloc, request_finished, then steps
           (build_connector_meta, bind, per-layer hooks, start_load_kv,
           wait_for_save, get_transfer_results, update_connector_output)
           until finished sending;
           decode get_num_new_matched_tokens, update_state_after_alloc, steps
           until finished receiving; vLLM's Request objects are made outside
           the timed part
and the ratios to C. Nothing is asserted: a benchmark, not a test.
"""
import os
import re
import subprocess
import sys
import time

LAYERS, HEADS, HEAD_DIM, BS, NPAGES = 32, 8, 128, 16, 256
NBLOCKS = NPAGES + 4


def c_fake(repo):
    exe = os.path.join(repo, "build", "bench_file")
    if not os.path.exists(exe):
        subprocess.run(["make", "-s", "-C", repo, "build/bench_file"], check=True)
    out = subprocess.run([exe], stdout=subprocess.PIPE, text=True, check=True).stdout
    m = re.search(r"fake transport: ([0-9.]+) us per request \(sender \+ receiver, (\d+) pages", out)
    if not m:
        raise SystemExit("bench_file printed no fake transport line")
    return float(m.group(1)), int(m.group(2))


def caches(torch):
    # untouched memory: the fake transport reads none of it
    return {f"model.layers.{i}.self_attn.attn":
            torch.empty((2, NBLOCKS, BS, HEADS, HEAD_DIM), dtype=torch.bfloat16)
            for i in range(LAYERS)}


def py_fake(n):
    import torch
    import kvx
    from kvx.vllm.connector import layout_from_kv_caches
    lp, _ = layout_from_kv_caches(caches(torch), NBLOCKS)
    ld, _ = layout_from_kv_caches(caches(torch), NBLOCKS)
    pages = list(range(NPAGES))
    with kvx.Engine("prefill", lp, transport="fake") as ep, \
            kvx.Engine("decode", ld, transport="fake") as ed:
        t0 = time.perf_counter()
        for k in range(n):
            r = ed.receiver(k + 1)
            r.init(pages)
            s = ep.sender(k + 1)
            s.init(NPAGES)
            s.send(pages)
            if s.poll() != kvx.Poll.Success or r.poll() != kvx.Poll.Success:
                raise SystemExit("kvx fake: a room did not succeed")
            s.close()
            r.close()
        return (time.perf_counter() - t0) / n * 1e6


def vllm_fake(n):
    import torch
    from vllm.config import CacheConfig, DeviceConfig, KVTransferConfig, VllmConfig
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
    from vllm.sampling_params import SamplingParams
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.kv_cache_utils import KVCacheBlock
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.outputs import KVConnectorOutput
    from vllm.v1.request import Request, RequestStatus

    def side(role):
        ktc = KVTransferConfig(kv_connector="KvxConnector", kv_connector_module_path="kvx.vllm",
                               kv_role=role, kv_connector_extra_config={"transport": "fake",
                                                          "bootstrap_host": "127.0.0.1"})
        cfg = VllmConfig(kv_transfer_config=ktc, cache_config=CacheConfig(block_size=BS),
                         device_config=DeviceConfig(device="cpu"))
        kvcc = KVCacheConfig(num_blocks=NBLOCKS, kv_cache_tensors=[], kv_cache_groups=[])
        s = KVConnectorFactory.create_connector(cfg, KVConnectorRole.SCHEDULER, kvcc)
        w = KVConnectorFactory.create_connector(cfg, KVConnectorRole.WORKER, kvcc)
        kv = caches(torch)
        w.register_kv_caches(kv)
        return s, w, list(kv)

    def step(s, w, names):
        so = SchedulerOutput.make_empty()
        meta = s.build_connector_meta(so)
        w.handle_preemptions(meta)
        w.bind_connector_metadata(meta)
        for name in names:
            w.wait_for_layer_load(name)
            w.save_kv_layer(name, None, None)
        w.finish_forward()
        w.start_load_kv(None)
        w.wait_for_save()
        res = w.get_transfer_results(so.finished_req_ids)
        errs = w.get_block_ids_with_load_errors()
        w.clear_connector_metadata()
        s.update_connector_output(KVConnectorOutput(finished_sending=res.finished_sending,
                                                    finished_recving=res.finished_recving,
                                                    failed_recving=res.failed_recving,
                                                    invalid_block_ids=errs))
        return res.finished_sending, res.finished_recving

    ps, pw, names = side("kv_producer")
    ds, dw, _ = side("kv_consumer")
    ntok = NPAGES * BS
    toks = list(range(ntok))
    blocks = KVCacheBlocks((tuple(KVCacheBlock(b) for b in range(NPAGES)),))
    ids = list(range(NPAGES))
    preqs = [Request(f"p{k}", toks, SamplingParams(max_tokens=1, extra_args={
        "kv_transfer_params": {"do_remote_decode": True}}), None) for k in range(n)]
    steps = 0
    t0 = time.perf_counter()
    for k in range(n):
        pr = preqs[k]
        ps.get_num_new_matched_tokens(pr, 0)
        ps.update_state_after_alloc(pr, blocks, 0)
        pr.status = RequestStatus.FINISHED_LENGTH_CAPPED
        pr.num_computed_tokens = ntok
        _, params = ps.request_finished(pr, ids)
        dr = Request(f"d{k}", toks, SamplingParams(max_tokens=1, extra_args={
            "kv_transfer_params": params}), None)
        got, _ = ds.get_num_new_matched_tokens(dr, 0)
        ds.update_state_after_alloc(dr, blocks, got)
        recvd: set = set()
        sent: set = set()
        while pr.request_id not in sent or dr.request_id not in recvd:
            # the decode's receiver first: the fake sender succeeds at send
            recvd |= step(ds, dw, names)[1]
            sent |= step(ps, pw, names)[0]
            steps += 1
        if dw.get_block_ids_with_load_errors() or dw.failures or pw.failures:
            raise SystemExit(f"connector fake: failures {dw.failures} {pw.failures}")
    t = (time.perf_counter() - t0) / n * 1e6
    pw.shutdown()
    dw.shutdown()
    return t, steps / n


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    c_us, pages = c_fake(repo)
    py_us = py_fake(max(n, 1000))
    v_us, steps = vllm_fake(n)
    print(f"fake transport, one {pages}-page request (sender + receiver), same run:")
    print(f"  C (build/bench_file)       {c_us:9.2f} us per request")
    print(f"  Python kvx package         {py_us:9.2f} us per request   ratio {py_us / c_us:.2f}x C")
    print(f"  vLLM KvxConnector, both    {v_us:9.2f} us per request   ratio {v_us / c_us:.2f}x C "
          f"({steps:.1f} engine steps per side, {LAYERS} layers each)")


if __name__ == "__main__":
    main()
