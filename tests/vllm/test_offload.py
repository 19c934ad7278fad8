"""KvxOffloadingSpec inside vLLM 0.34.0's offloading framework (CPU only).

Run with the venv tests/vllm/setup_venv.sh makes:
    build/venv-sglang/bin/python tests/vllm/test_offload.py

The spec comes from vLLM's own OffloadingSpecFactory (spec_name
"KvxOffloadingSpec", spec_module_path "kvx.vllm") over a real
OffloadingConfig; the KV caches are CPU tensors split as vLLM's
OffloadingConnector splits FlashAttention's (2, num_blocks, ...) layer
tensors into canonical (num_blocks, ...) tensors; device pointers come from
vLLM's resolve_device_pointers; keys are vLLM's block hashes (sha256, from
vLLM's request block hasher) packed by make_offload_key. Each step is the
call the OffloadingConnector makes (lookup under the manager's lock,
prepare_store, submit_store, get_finished, complete_store, prepare_load,
submit_load, wait).

  store     five blocks stored; looked up as hits; a second prepare_store
            skips them; loaded into other blocks, byte-verified against
            content generated independently from (request, layer, K/V, block)
  corrupt   a block file with a flipped byte: its load reports failure
            (vLLM then fails the request's load: recompute), never bytes
  capacity  a store with room for three blocks keeps the newest three of
            six: the others are misses and their load reports failure
  restart   a new process (a restarted engine): a new spec, new empty
            caches, the five blocks are hits and load byte-identical;
            a block never stored is a miss
"""
import os
import subprocess
import sys
import tempfile
import time

LAYERS, HEADS, HEAD_DIM, BS, NBLOCKS = 2, 4, 8, 16, 32
PAGE = BS * HEADS * HEAD_DIM * 2  # bytes of one block of one K or V tensor

passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok {what}", flush=True)
    else:
        failed += 1
        print(f"FAIL {what}", flush=True)
    return cond


def gen(torch, req, layer, kv, blk):
    g = torch.Generator().manual_seed((sum(map(ord, req)) * 7919 + layer * 131 + kv * 17 + blk)
                                      & 0x7FFFFFFF)
    return torch.randn((BS, HEADS, HEAD_DIM), generator=g).to(torch.float16)


class Rig:
    """One engine's worth of the offloading pieces."""

    def __init__(self, root, capacity=0):
        import torch
        from vllm.v1.kv_offload.base import (CanonicalKVCacheRef, CanonicalKVCaches,
                                             CanonicalKVCacheTensor, OffloadingSpec)
        from vllm.v1.kv_offload.config import (OffloadingCacheConfig, OffloadingConfig,
                                               OffloadingGroupConfig, OffloadingModelConfig,
                                               OffloadingParallelConfig)
        from vllm.v1.kv_offload.factory import OffloadingSpecFactory
        self.torch = torch
        names = tuple(f"model.layers.{i}.self_attn.attn" for i in range(LAYERS))
        extra = {"spec_name": "KvxOffloadingSpec", "spec_module_path": "kvx.vllm",
                 "kvx_dir": root}
        if capacity:
            extra["kvx_capacity_bytes"] = capacity
        cfg = OffloadingConfig(
            groups=(OffloadingGroupConfig(tokens_per_block=BS, layer_names=names, group_id=0),),
            worker_kv_bytes_per_block=2 * LAYERS * PAGE, enable_kv_cache_events=False,
            extra_config=extra, engine_id="e0",
            model=OffloadingModelConfig(name="test/tiny-llama", dtype="float16"),
            cache=OffloadingCacheConfig(tokens_per_hash=BS, blocks_per_chunk=1),
            parallel=OffloadingParallelConfig(rank=0, world_size=1, tp_size=1, pp_size=1,
                                              pcp_size=1, dcp_size=1, data_parallel_index=0,
                                              data_parallel_size=1,
                                              data_parallel_rank_local=None,
                                              is_parallelism_agnostic=False))
        self.spec = OffloadingSpecFactory.create_spec(cfg)
        check(isinstance(self.spec, OffloadingSpec) and
              type(self.spec).__name__ == "KvxOffloadingSpec",
              "vLLM's OffloadingSpecFactory made KvxOffloadingSpec from spec_module_path")
        # FlashAttention layer tensors, split into canonical (num_blocks, ...) ones
        self.raw = [torch.zeros((2, NBLOCKS, BS, HEADS, HEAD_DIM), dtype=torch.float16)
                    for _ in range(LAYERS)]
        # (int8 rows of a block's bytes, as the OffloadingConnector makes them)
        tensors = [CanonicalKVCacheTensor(r[kv].view(NBLOCKS, -1).view(torch.int8), PAGE)
                   for r in self.raw for kv in (0, 1)]
        self.kv = CanonicalKVCaches(tensors, [[CanonicalKVCacheRef(i, PAGE)
                                               for i in range(len(tensors))]])
        self.worker = self.spec.get_worker(self.kv)
        self.manager = self.spec.get_manager()
        self.job = 0

    def keys(self, req, nblocks):
        """vLLM's block hashes of a request of nblocks full blocks."""
        from vllm.sampling_params import SamplingParams
        from vllm.utils.hashing import sha256
        from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
        from vllm.v1.kv_offload.base import make_offload_key
        from vllm.v1.request import Request
        init_none_hash(sha256)
        toks = [(sum(map(ord, req)) * 31 + i) % 32000 for i in range(nblocks * BS + 3)]
        r = Request(req, toks, SamplingParams(max_tokens=1), None,
                    block_hasher=get_request_block_hasher(BS, sha256))
        check(len(r.block_hashes) == nblocks, f"{req}: vLLM hashed {len(r.block_hashes)} blocks")
        return [make_offload_key(bytes(h), 0) for h in r.block_hashes]

    def ctx(self, req):
        from vllm.v1.kv_offload.base import ReqContext
        return ReqContext(req_id=req)

    def ptrs(self, blocks):
        from vllm.v1.kv_offload.base import GPULoadStoreSpec
        from vllm.v1.kv_offload.pointer_utils import resolve_device_pointers
        return resolve_device_pointers(GPULoadStoreSpec(blocks, [len(blocks)], [0]), self.kv)

    def fill(self, req, blocks):
        for layer, r in enumerate(self.raw):
            for j, b in enumerate(blocks):
                for kv in (0, 1):
                    r[kv][b] = gen(self.torch, req, layer, kv, j)

    def wrong(self, req, blocks, first=0):
        n = 0
        for layer, r in enumerate(self.raw):
            for j, b in enumerate(blocks):
                for kv in (0, 1):
                    n += not self.torch.equal(r[kv][b], gen(self.torch, req, layer, kv, first + j))
        return n

    def lookup(self, keys, req):
        from vllm.v1.kv_offload.base import LookupResult
        with self.manager.lock:
            return [self.manager.lookup(k, self.ctx(req)) == LookupResult.HIT for k in keys]

    def run(self, submit):
        """Submits one job, waits for it, returns its TransferResult."""
        self.job += 1
        submit(self.job)
        self.worker.wait({self.job})
        res = [r for r in self.worker.get_finished() if r.job_id == self.job]
        return res[0] if res else None

    def store(self, req, keys, blocks):
        with self.manager.lock:
            out = self.manager.prepare_store(keys, self.ctx(req))
        idx = [keys.index(k) for k in out.keys_to_store]
        res = None
        if idx:
            p = self.ptrs([blocks[i] for i in idx])
            res = self.run(lambda j: self.worker.submit_store(j, p, out.store_spec))
        with self.manager.lock:
            self.manager.complete_store(out.keys_to_store, self.ctx(req),
                                        success=bool(res and res.success))
        return out, res

    def load(self, req, keys, blocks):
        with self.manager.lock:
            spec = self.manager.prepare_load(keys, self.ctx(req))
        p = self.ptrs(blocks)
        res = self.run(lambda j: self.worker.submit_load(j, spec, p))
        with self.manager.lock:
            self.manager.complete_load(keys, self.ctx(req))
        return res


def block_file(rig, key):
    from kvx.vllm.offload import store_key
    h = store_key(key).hex()
    return os.path.join(rig.worker.stores[0].dir, h[:2], h + ".kvb")


def first_run(root, tmp):
    rig = Rig(root)
    keys = rig.keys("reqA", 5)
    src = [3, 9, 4, 17, 11]
    rig.fill("reqA", src)
    check(not any(rig.lookup(keys, "reqA")), "store: the five blocks are misses before")
    out, res = rig.store("reqA", keys, src)
    check(len(out.keys_to_store) == 5 and res and res.success and res.transfer_size == 5 * 2 *
          LAYERS * PAGE, f"store: five blocks stored ({res})")
    check(all(rig.lookup(keys, "reqA")), "store: the five blocks are hits after")
    out2, _ = rig.store("reqA", keys, src)
    check(out2.keys_to_store == [], "store: a second prepare_store skips stored blocks")
    dst = [20, 1, 30, 7, 25]
    res = rig.load("reqA", keys, dst)
    check(res and res.success, f"store: loaded into other blocks ({res})")
    check(rig.wrong("reqA", dst) == 0, "store: the loaded blocks are byte-identical")

    # corrupt: a flipped byte in the data of a stored block
    ck = rig.keys("reqC", 2)
    rig.fill("reqC", [5, 6])
    rig.store("reqC", ck, [5, 6])
    path = block_file(rig, ck[1])
    check(os.path.exists(path), "corrupt: the block file is where kvx_store puts it")
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) - 100)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x40]))
    res = rig.load("reqC", ck, [12, 13])
    check(res is not None and not res.success,
          "corrupt: loading a block with a flipped byte reports failure")
    rig.worker.shutdown()

    # capacity: room for three blocks (data plus header) of six
    crig = Rig(os.path.join(tmp, "small"), capacity=int(3.5 * (2 * LAYERS * PAGE + 256)))
    ek = crig.keys("reqE", 6)
    eblocks = [0, 1, 2, 3, 4, 5]
    crig.fill("reqE", eblocks)
    for i in range(6):  # one block per step, oldest first
        crig.store("reqE", ek[i:i + 1], eblocks[i:i + 1])
    hits = crig.lookup(ek, "reqE")
    check(sum(hits) == 3 and hits[3:] == [True, True, True],
          f"capacity: the newest three of six blocks are kept ({hits})")
    st = crig.worker.stores[0].stats()
    check(0 < st["bytes_used"] <= int(3.5 * (2 * LAYERS * PAGE + 256)),
          f"capacity: {st['bytes_used']} bytes used within capacity")
    res = crig.load("reqE", ek[:1], [9])
    check(res is not None and not res.success, "capacity: loading an evicted block reports failure")
    crig.worker.shutdown()


def second_run(root):
    rig = Rig(root)
    keys = rig.keys("reqA", 5)
    check(all(rig.lookup(keys, "reqA")), "restart: the five blocks are hits in a new process")
    other = rig.keys("reqZ", 1)
    check(not any(rig.lookup(other, "reqZ")), "restart: a block never stored is a miss")
    dst = [31, 0, 15, 2, 8]
    res = rig.load("reqA", keys, dst)
    check(res and res.success, f"restart: loaded ({res})")
    check(rig.wrong("reqA", dst) == 0, "restart: the loaded blocks are byte-identical")
    rig.worker.shutdown()


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--restart":
        second_run(sys.argv[2])
        print(f"DONE {passed} {failed}", flush=True)
        return 0 if failed == 0 else 1
    start = time.time()
    tmp = tempfile.mkdtemp(prefix="kvx-vllm-offload-")
    root = os.path.join(tmp, "store")
    first_run(root, tmp)
    env = dict(os.environ, PYTHONWARNINGS="ignore", VLLM_LOGGING_LEVEL="WARNING")
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--restart", root],
                       stdout=subprocess.PIPE, text=True, env=env, timeout=300)
    for ln in p.stdout.splitlines():
        if ln.startswith("ok ") or ln.startswith("FAIL "):
            check(ln.startswith("ok "), ln.split(" ", 1)[1])
    check(p.returncode == 0 and "DONE" in p.stdout, f"restart: the new process exited cleanly "
          f"(rc {p.returncode})")
    print(f"vllm-offload: {passed} passed, {failed} failed ({time.time() - start:.0f} s)",
          flush=True)
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
