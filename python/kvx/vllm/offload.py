"""KvxOffloadingSpec: a backend of vLLM's OffloadingConnector over kvx_store.

    --kv-transfer-config '{"kv_connector": "OffloadingConnector",
        "kv_role": "kv_both",
        "kv_connector_extra_config": {"spec_name": "KvxOffloadingSpec",
            "spec_module_path": "kvx.vllm", "kvx_dir": "/mnt/nvme/kv",
            "kvx_capacity_bytes": 1099511627776}}'

Blocks go to a kvx block store (kvx_store.h) on a local disk or a shared
filesystem: one file per (block, KV cache group, worker rank), named by a
key derived from vLLM's block hash (SHA-256 over "kvx-vllm-v1", the block
hash and the group index), so the same prefix finds the same files in every
process and after restarts (vLLM's block hashes are reproducible across
processes with the sha256 prefix-cache hash, or with a fixed PYTHONHASHSEED).
kvx_store brings its crash safety (temporary name + rename; CRC32C on every
block; optional fsync), its capacity with LRU eviction that survives
restarts and works across processes, and its namespaces (model, layout,
dtype, tensor-parallel rank and size: another configuration never reads
these blocks).

Settings (kv_connector_extra_config; the KVX_STORE_* variables override):
  kvx_dir             root directory (KVX_STORE_DIR; /tmp/kvx_store-<uid>)
  kvx_capacity_bytes  most bytes of block files kept per worker namespace
                      (KVX_STORE_CAPACITY; 64 GiB)
  kvx_io_threads      threads per batch (KVX_STORE_IO_THREADS; 4)
  kvx_fsync           fsync blocks (KVX_STORE_FSYNC; false)
  kvx_shared          a group-shared directory (KVX_STORE_SHARED; false)

Scheduler side (KvxOffloadingManager): a block is a hit when every worker
rank's namespace holds its file (a stat each, no index to keep in sync; the
workers publish where their namespaces are in <kvx_dir>/vllm-*.ns files).
Eviction is kvx_store's (a put past capacity evicts least recently used
blocks), so the manager reports no evictions of its own; a block evicted
between lookup and load makes the load fail, and vLLM's OffloadingConnector
then reports the request's load as failed (recompute), never wrong bytes.

Worker side (KvxOffloadingWorker): one kvx.Store per KV cache group over the
canonical block tensors vLLM hands it (host memory: CPU tensors; GPU tensors
through kvx's CUDA staging when kvx was built with CUDA); stores and loads
run on two threads of their own, so a load does not queue behind stores.

Limits: the offloaded block is vLLM's block (blocks_per_chunk 1); blocks
are looked up one at a time by stat (a network filesystem pays a round trip
per block on lookup).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Collection, Dict, List, Optional, Sequence, Tuple

from vllm.v1.kv_offload.base import (CanonicalKVCaches, DevicePointers, LoadStoreSpec,
                                     LookupResult, OffloadingManager, OffloadingSpec,
                                     OffloadingWorker, OffloadKey, PrepareStoreOutput,
                                     ReqContext, RequestOffloadingContext, TransferResult,
                                     get_offload_group_idx)
from vllm.v1.kv_offload.config import OffloadingConfig

import kvx

logger = logging.getLogger("kvx.vllm.offload")

__all__ = ["KvxOffloadingSpec", "KvxOffloadingManager", "KvxOffloadingWorker",
           "KvxLoadStoreSpec", "store_key"]


def store_key(key: OffloadKey) -> bytes:
    """The 32-byte kvx_store key of a vLLM offload key (block hash + group)."""
    return hashlib.sha256(b"kvx-vllm-v1\0" + bytes(key)).digest()


class KvxLoadStoreSpec(LoadStoreSpec):
    """What a worker needs to store or load: the offload keys, in the order
    of the blocks (group by group)."""

    def __init__(self, keys: Sequence[OffloadKey]):
        self.keys = list(keys)

    def __repr__(self) -> str:
        return f"KvxLoadStoreSpec({len(self.keys)} keys)"


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-")[:80] or "model"


class _Where:
    """Names the files through which the workers tell the scheduler where
    their namespaces are: <root>/vllm-<model>-<tag>-r<rank>of<n>.ns."""

    def __init__(self, config: OffloadingConfig, root: str):
        self.root = root
        self.world = max(int(config.parallel.world_size), 1)
        tag = hashlib.sha256(repr((config.model.name, config.model.dtype, self.world,
                                   [g.tokens_per_block for g in config.groups],
                                   config.worker_kv_bytes_per_block)).encode()).hexdigest()[:12]
        self.prefix = f"vllm-{_safe(config.model.name)}-{tag}"

    def path(self, rank: int, group: int) -> str:
        return os.path.join(self.root, f"{self.prefix}-g{group}-r{rank}of{self.world}.ns")

    def publish(self, rank: int, group: int, namespace: str) -> None:
        p = self.path(rank, group)
        tmp = f"{p}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(namespace + "\n")
        os.replace(tmp, p)

    def read(self, group: int) -> Optional[List[str]]:
        """Every rank's namespace directory of one group, or None until all published."""
        out = []
        for r in range(self.world):
            try:
                with open(self.path(r, group)) as f:
                    ns = f.read().strip()
            except OSError:
                return None
            if not ns:
                return None
            out.append(ns)
        return out


def _settings(extra: Any) -> Dict[str, Any]:
    def flag(v: Any) -> bool:
        return str(v).lower() in ("1", "true", "yes")
    root = extra.get("kvx_dir") or os.environ.get("KVX_STORE_DIR") or \
        f"/tmp/kvx_store-{os.getuid()}"
    return {"dir": str(root), "capacity_bytes": int(extra.get("kvx_capacity_bytes", 0) or 0),
            "io_threads": int(extra.get("kvx_io_threads", 0) or 0),
            "fsync": flag(extra.get("kvx_fsync", False)),
            "shared": flag(extra.get("kvx_shared", False))}


class KvxOffloadingManager(OffloadingManager):
    """Scheduler side: which blocks the store holds (a stat in every rank's
    namespace), which are being written."""

    def __init__(self, where: _Where, num_groups: int):
        self._where = where
        self._num_groups = num_groups
        self._ns: Dict[int, List[str]] = {}
        self._writing: Dict[OffloadKey, int] = {}
        self._lock = threading.Lock()

    @property
    def lock(self) -> Any:
        return self._lock

    def _namespaces(self, group: int) -> Optional[List[str]]:
        ns = self._ns.get(group)
        if ns is None:
            ns = self._where.read(group)
            if ns is not None:
                self._ns[group] = ns
        return ns

    def _present(self, key: OffloadKey) -> bool:
        if not 0 <= get_offload_group_idx(key) < self._num_groups:
            return False
        ns = self._namespaces(get_offload_group_idx(key))
        if ns is None:
            return False
        h = store_key(key).hex()
        return all(os.path.exists(os.path.join(d, h[:2], h + ".kvb")) for d in ns)

    def lookup(self, key: OffloadKey, req_context: ReqContext) -> LookupResult:
        if key in self._writing:
            return LookupResult.HIT_PENDING
        return LookupResult.HIT if self._present(key) else LookupResult.MISS

    def prepare_load(self, keys: Collection[OffloadKey], req_context: ReqContext) -> LoadStoreSpec:
        return KvxLoadStoreSpec(list(keys))

    def prepare_store(self, keys: Collection[OffloadKey],
                      req_context: ReqContext) -> Optional[PrepareStoreOutput]:
        todo = [k for k in keys if k not in self._writing and not self._present(k)]
        for k in todo:
            self._writing[k] = self._writing.get(k, 0) + 1
        return PrepareStoreOutput(keys_to_store=todo, store_spec=KvxLoadStoreSpec(todo),
                                  evicted_keys=[])

    def complete_store(self, keys: Collection[OffloadKey], req_context: ReqContext,
                       success: bool = True) -> None:
        for k in keys:
            n = self._writing.get(k, 0) - 1
            if n <= 0:
                self._writing.pop(k, None)
            else:
                self._writing[k] = n

    def on_new_request(self, req_context: ReqContext) -> RequestOffloadingContext:
        return RequestOffloadingContext()


class KvxOffloadingWorker(OffloadingWorker):
    """Worker side: a kvx.Store per KV cache group over the canonical block
    tensors; device pointers are turned back into block indices."""

    def __init__(self, spec: "KvxOffloadingSpec", kv_caches: CanonicalKVCaches):
        cfg = spec.config
        st = spec.settings
        self.rank = int(cfg.parallel.rank)
        self.world = max(int(cfg.parallel.world_size), 1)
        self._bases: List[List[Tuple[int, int, int]]] = []  # group -> refs' (base, stride, n)
        self.stores: List[kvx.Store] = []
        for g, refs in enumerate(kv_caches.group_data_refs):
            tidx: List[int] = []
            for ref in refs:
                if ref.tensor_idx not in tidx:
                    tidx.append(ref.tensor_idx)
            bufs, keep = [], []
            for i in tidx:
                t = kv_caches.tensors[i].tensor
                stride = t.stride(0) * t.element_size()
                nb = int(t.shape[0])
                mem = (1, t.device.index or 0) if t.device.type == "cuda" else (0, 0)
                bufs.append((t.data_ptr(), stride * nb, stride) + mem)
                keep.append(t)
            self._bases.append([(kv_caches.tensors[r.tensor_idx].tensor.data_ptr(),
                                 kv_caches.tensors[r.tensor_idx].tensor.stride(0) *
                                 kv_caches.tensors[r.tensor_idx].tensor.element_size(),
                                 int(kv_caches.tensors[r.tensor_idx].tensor.shape[0]))
                                for r in refs])
            tpb = cfg.groups[g].tokens_per_block if g < len(cfg.groups) else 1
            layout = kvx.Layout(bufs, page_size=max(int(tpb), 1), dtype=str(cfg.model.dtype),
                                dtype_size=1, keep=keep)
            store = kvx.Store(layout, dir=st["dir"], model=f"{cfg.model.name}#group{g}",
                              tp_rank=self.rank, tp_size=self.world,
                              capacity_bytes=st["capacity_bytes"], io_threads=st["io_threads"],
                              fsync=st["fsync"], shared=st["shared"])
            self.stores.append(store)
            spec.where.publish(self.rank, g, store.dir)
        self._pool_store = ThreadPoolExecutor(1, thread_name_prefix="kvx-offload-store")
        self._pool_load = ThreadPoolExecutor(1, thread_name_prefix="kvx-offload-load")
        self._jobs: Dict[int, Tuple[Future, float, int]] = {}
        logger.info("kvx offload worker rank %d/%d: %d group(s), namespaces %s", self.rank,
                    self.world, len(self.stores), [s.dir for s in self.stores])

    def _plan(self, ptrs: DevicePointers, keys: Sequence[OffloadKey]) -> List[Tuple[int, list, list]]:
        """[(group, store keys, block indices)] of a transfer; ValueError
        with a sentence when a pointer is not a block of this worker's caches."""
        out = []
        off = 0
        k = 0
        for g, (n, nrefs) in enumerate(zip(ptrs.group_block_counts, ptrs.group_data_ref_counts)):
            if n == 0:
                continue
            if g >= len(self._bases) or nrefs != len(self._bases[g]):
                raise ValueError(f"kvx: group {g} with {nrefs} data refs is not one this worker "
                                 "registered")
            blocks = []
            for b in range(n):
                ids = set()
                for d in range(nrefs):
                    base, stride, nb = self._bases[g][d]
                    p = int(ptrs.ptrs[off + d * n + b])
                    q, rem = divmod(p - base, stride)
                    if rem or not 0 <= q < nb:
                        raise ValueError(f"kvx: pointer {p:#x} of group {g} is not a block of "
                                         f"its tensor (base {base:#x}, {nb} blocks of {stride} B)")
                    ids.add(q)
                if len(ids) != 1:
                    raise ValueError(f"kvx: the data refs of block {b} of group {g} point at "
                                     f"different blocks {sorted(ids)}")
                blocks.append(ids.pop())
            if k + n > len(keys):
                raise ValueError(f"kvx: {len(keys)} keys for more blocks than that")
            gkeys = [store_key(x) for x in keys[k:k + n]]
            k += n
            out.append((g, gkeys, blocks))
            off += n * nrefs
        if k != len(keys):
            raise ValueError(f"kvx: {len(keys)} keys for {k} blocks")
        return out

    def _bytes(self, plan: List[Tuple[int, list, list]]) -> int:
        return sum(len(b) * self.stores[g].layout.page_bytes for g, _, b in plan)

    def submit_store(self, job_id: int, device_ptrs: DevicePointers,
                     dst_spec: LoadStoreSpec) -> bool:
        assert isinstance(dst_spec, KvxLoadStoreSpec)
        plan = self._plan(device_ptrs, dst_spec.keys)

        def run() -> bool:
            for g, keys, blocks in plan:
                self.stores[g].put(keys, blocks)
            return True
        self._jobs[job_id] = (self._pool_store.submit(run), time.perf_counter(), self._bytes(plan))
        return True

    def submit_load(self, job_id: int, src_spec: LoadStoreSpec, device_ptrs: DevicePointers,
                    expedited: bool = False) -> bool:
        assert isinstance(src_spec, KvxLoadStoreSpec)
        plan = self._plan(device_ptrs, src_spec.keys)

        def run() -> bool:
            for g, keys, blocks in plan:
                got = self.stores[g].get(keys, blocks)
                if got != len(keys):
                    raise kvx.KvxError(-304, f"kvx: loaded {got} of {len(keys)} blocks of group "
                                             f"{g} (evicted, corrupt or missing)")
            return True
        self._jobs[job_id] = (self._pool_load.submit(run), time.perf_counter(), self._bytes(plan))
        return True

    def get_finished(self) -> List[TransferResult]:
        out = []
        for job_id, (fut, t0, nbytes) in list(self._jobs.items()):
            if not fut.done():
                continue
            del self._jobs[job_id]
            ok = fut.exception() is None
            if not ok:
                logger.warning("kvx offload job %d failed: %s", job_id, fut.exception())
            out.append(TransferResult(job_id=job_id, success=ok, transfer_size=nbytes,
                                      transfer_time=time.perf_counter() - t0))
        return out

    def wait(self, job_ids: set) -> None:
        for j in job_ids:
            ent = self._jobs.get(j)
            if ent is not None:
                ent[0].exception()  # blocks until done; the failure stays for get_finished

    def shutdown(self) -> None:
        self._pool_store.shutdown(wait=True)
        self._pool_load.shutdown(wait=True)
        for s in self.stores:
            s.close()
        self.stores = []


class KvxOffloadingSpec(OffloadingSpec):
    """vLLM offloading spec (spec_name "KvxOffloadingSpec", spec_module_path
    "kvx.vllm") storing blocks in kvx_store (see the module's doc)."""

    def __init__(self, config: OffloadingConfig):
        super().__init__(config)
        if self.blocks_per_chunk != 1:
            raise NotImplementedError(
                f"kvx: KvxOffloadingSpec stores vLLM's blocks as they are (blocks_per_chunk 1); "
                f"this configuration coalesces {self.blocks_per_chunk} blocks per chunk")
        self.settings = _settings(self.extra_config)
        self.where = _Where(config, self.settings["dir"])
        os.makedirs(self.settings["dir"], mode=0o700, exist_ok=True)
        self._manager: Optional[KvxOffloadingManager] = None
        self._worker: Optional[KvxOffloadingWorker] = None

    def get_manager(self) -> OffloadingManager:
        if self._manager is None:
            self._manager = KvxOffloadingManager(self.where, max(len(self.config.groups), 1))
        return self._manager

    def get_worker(self, kv_caches: CanonicalKVCaches) -> OffloadingWorker:
        if self._worker is None:
            self._worker = KvxOffloadingWorker(self, kv_caches)
        return self._worker
