"""kvx.sglang.hicache - an SGLang HiCache storage backend over kvx_store.

Load it in a stock SGLang with::

    --enable-hierarchical-cache --hicache-storage-backend dynamic
    --hicache-storage-backend-extra-config '{"backend_name": "kvx",
        "module_path": "kvx.sglang.hicache", "class_name": "KvxHiCacheStorage",
        "interface_v1": 1, "dir": "/mnt/nvme/kvx", "capacity": "512G"}'

SGLang's factory builds it as ``KvxHiCacheStorage(storage_config, kwargs)``
and then calls ``register_mem_pool_host(host_pool)``; the kvx store is opened
there, over the host pool's memory (kvx_store reads and writes pool pages
with preadv/pwritev, no copy). ``"interface_v1": 1`` makes SGLang call
batch_get_v1 / batch_set_v1 with host indices (zero copy); without it SGLang
uses the deprecated get/set with flat page tensors, which go through a small
staging pool (a copy per page).

Settings in extra_config (each optional; the KVX_STORE_* environment
variables of kvx_store.h override them as documented there):
  dir         root directory of the store (default KVX_STORE_DIR or
              /tmp/kvx_store-<uid>)
  capacity    most bytes of block files: an int or "64G"/"512M"/"unlimited"
              (default 64 GiB)
  fsync       true: a block a put reported is on stable storage (default false:
              rename only; crash safe, a power loss may drop recent blocks)
  io_threads  threads doing one batch's I/O (default 4)
  shared      true: the directory is shared with the group (default false)

Keys: SGLang's keys are the hex of a chained SHA-256 (64 hex digits); such a
key is decoded to the 32-byte kvx key, so kvx.page_keys() and C engines using
kvx_store_page_keys find the same blocks. Any other string (e.g. a suffixed
"<hash>.mamba" key) is mapped to SHA-256(utf-8 of the string). 32-byte bytes
objects are used as they are. Anything else is refused with TypeError /
ValueError.

Namespaces: kvx_store separates model, page layout (buffers, page size,
heads, dtype) and tp rank/size into their own directories. The model id given
to kvx_store is SGLang's model_name, plus "@pp<rank>of<size>" with pipeline
parallelism and "@cp<rank>of<size>" with attention context parallelism. MLA
(pages identical on every TP rank): one shared namespace (tp 0 of 1) for all
ranks, and only the storage writer (tp rank 0) writes; the other ranks skip
the write and report success, and every rank reads the shared copy.

Crash safety, CRC checks, capacity and LRU eviction are kvx_store's: a block
that is torn, truncated, corrupt or of another layout is a miss, never bytes.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from sglang.srt.mem_cache.hicache_storage import (
    HiCacheStorage,
    HiCacheStorageConfig,
    HiCacheStorageExtraInfo,
)

import kvx
from kvx import _ffi
from kvx._ffi import lib

logger = logging.getLogger(__name__)

__all__ = ["KvxHiCacheStorage", "to_kvx_key", "pool_layout"]

# Pages the staging pool of the deprecated get/set path holds (it copies
# through them in chunks of this many).
_STAGING_PAGES = 8

# Token (or page) axis of kv_buffer per SGLang host layout, for MHA pools
# (leading K/V axis); MLA pools have no K/V axis: one less.
_PAGE_AXIS = {"layer_first": (2, "token"), "page_first": (1, "token"),
              "page_first_direct": (1, "page")}


def to_kvx_key(key: Any) -> bytes:
    """The 32-byte kvx key of an SGLang HiCache key: a 64-hex-digit string is
    decoded, any other non-empty string is hashed (SHA-256 of its UTF-8),
    32 bytes are used as they are. Raises TypeError / ValueError otherwise."""
    if isinstance(key, str):
        if not key:
            raise ValueError("kvx hicache: an empty key")
        if len(key) == 64:
            try:
                return bytes.fromhex(key)
            except ValueError:
                pass
        return hashlib.sha256(key.encode("utf-8")).digest()
    if isinstance(key, (bytes, bytearray)):
        if len(key) != 32:
            raise ValueError(f"kvx hicache: a bytes key must be 32 bytes, got {len(key)}")
        return bytes(key)
    raise TypeError(f"kvx hicache: a key is a str (or 32 bytes), got {type(key).__name__}")


def _key_array(keys: Sequence[Any]) -> Any:
    arr = (_ffi.kvx_store_key * max(len(keys), 1))()
    for i, k in enumerate(keys):
        ctypes.memmove(arr[i].bytes, to_kvx_key(k), 32)
    return arr


def _parse_bytes(v: Any) -> int:
    """capacity from extra_config: int bytes, or "512M", "64G", "1T", "unlimited"."""
    if v is None:
        return 0
    if isinstance(v, bool):
        raise ValueError(f"kvx hicache: capacity {v!r} is not a size")
    if isinstance(v, (int, float)):
        if v < 0:
            raise ValueError(f"kvx hicache: capacity {v!r} is negative")
        return int(v)
    s = str(v).strip().upper().removesuffix("IB").removesuffix("B")
    if s == "UNLIMITED":
        return (1 << 64) - 1  # KVX_STORE_UNLIMITED
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(s[-1:], 1)
    num = s[:-1] if s[-1:] in "KMGT" else s
    try:
        return int(float(num) * mult)
    except ValueError:
        raise ValueError(f"kvx hicache: capacity {v!r} is not a size (e.g. 64G)") from None


def _bool(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


def pool_layout(pool: Any, is_mla: bool) -> Tuple[List[Tuple[int, int, int]], int, int]:
    """kvx buffers (pointer, length, item_len) over an SGLang host pool's
    kv_buffer, in the order of the pool's flat data page (get_data_page), and
    the page size and head count. Raises ValueError for a pool kvx cannot
    address (another layout, a non-contiguous or missing buffer)."""
    layout = getattr(pool, "layout", None)
    buf = getattr(pool, "kv_buffer", None)
    if layout not in _PAGE_AXIS:
        raise ValueError(f"kvx hicache: host pool layout {layout!r} is not supported "
                         f"(supported: {', '.join(_PAGE_AXIS)})")
    if not isinstance(buf, torch.Tensor):
        raise ValueError(f"kvx hicache: {type(pool).__name__} has no single kv_buffer tensor")
    if buf.device.type != "cpu" or not buf.is_contiguous():
        raise ValueError("kvx hicache: the host kv_buffer must be a contiguous CPU tensor")
    axis, unit = _PAGE_AXIS[layout]
    if is_mla:
        axis -= 1
    ps = int(pool.page_size)
    shape = tuple(buf.shape)
    want = pool.size if unit == "token" else pool.page_num
    if axis >= len(shape) or shape[axis] != want:
        raise ValueError(f"kvx hicache: kv_buffer shape {shape} of layout {layout!r} has no "
                         f"{unit} axis {axis} of length {want} (is_mla_model={is_mla}?)")
    isz = buf.element_size()
    nbuf = 1
    for d in shape[:axis]:
        nbuf *= d
    per_unit = isz
    for d in shape[axis + 1:]:
        per_unit *= d
    item_len = per_unit * (ps if unit == "token" else 1)
    length = per_unit * shape[axis]
    base = buf.data_ptr()
    specs = [(base + j * length, length, item_len) for j in range(nbuf)]
    heads = 1 if is_mla else int(getattr(pool, "head_num", 1))
    return specs, ps, heads


class KvxHiCacheStorage(HiCacheStorage):
    """SGLang HiCache storage over kvx_store (see the module doc)."""

    def __init__(self, storage_config: HiCacheStorageConfig, kwargs: Optional[dict] = None):
        if not isinstance(storage_config, HiCacheStorageConfig):
            raise TypeError("kvx hicache: storage_config must be SGLang's HiCacheStorageConfig")
        self.config = storage_config
        self.kwargs = dict(kwargs or {})
        extra = dict(storage_config.extra_config or {})
        if getattr(storage_config, "dcp_size", 1) > 1:
            raise ValueError("kvx hicache: decode context parallelism (dcp_size > 1) is not "
                             "supported; use the file or mooncake backend")
        self.is_mla = bool(storage_config.is_mla_model)
        self.dir: Optional[str] = extra.get("dir")
        self.capacity = _parse_bytes(extra.get("capacity"))
        self.fsync = _bool(extra.get("fsync", False))
        self.io_threads = int(extra.get("io_threads", 0))
        self.shared = _bool(extra.get("shared", False))
        if self.io_threads < 0:
            raise ValueError(f"kvx hicache: io_threads {self.io_threads} is negative")
        model = storage_config.model_name or ""
        if storage_config.pp_size > 1:
            model += f"@pp{storage_config.pp_rank}of{storage_config.pp_size}"
        if storage_config.attn_cp_size > 1:
            model += f"@cp{storage_config.attn_cp_rank}of{storage_config.attn_cp_size}"
        self.model = model
        if self.is_mla:  # one shared copy; rank 0 writes it
            self.tp_rank, self.tp_size = 0, 1
            self.writer = storage_config.tp_rank == 0
        else:
            self.tp_rank, self.tp_size = storage_config.tp_rank, storage_config.tp_size
            self.writer = True
        self.store: Optional[kvx.Store] = None
        self.mem_pool_host: Any = None
        self._specs: List[Tuple[int, int, int]] = []
        self._layout_kw: Dict[str, Any] = {}
        self._staging: Optional[kvx.Store] = None
        self._staging_mem: Optional[torch.Tensor] = None
        self._staging_lock = threading.Lock()

    # ---- setup -----------------------------------------------------------

    def _open(self, layout: kvx.Layout) -> kvx.Store:
        return kvx.Store(layout, self.dir, self.model, tp_rank=self.tp_rank,
                         tp_size=self.tp_size, capacity_bytes=self.capacity,
                         io_threads=self.io_threads, fsync=self.fsync, shared=self.shared)

    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        """Opens the kvx store over the host pool's memory (SGLang calls this
        right after building the backend). Raises ValueError for a pool kvx
        cannot address, kvx.KvxError when kvx_store refuses to open."""
        super().register_mem_pool_host(mem_pool_host)
        specs, ps, heads = pool_layout(mem_pool_host, self.is_mla)
        dtype = str(mem_pool_host.dtype).removeprefix("torch.")
        self._layout_kw = dict(page_size=ps, num_kv_heads=heads, dtype=dtype,
                               dtype_size=mem_pool_host.dtype.itemsize, mla=self.is_mla)
        layout = kvx.Layout(specs, keep=[mem_pool_host.kv_buffer], **self._layout_kw)
        self._specs = specs
        self.page_bytes = sum(s[2] for s in specs)
        self.page_size = ps
        if self.store is not None:
            self.store.close()
        self.store = self._open(layout)
        logger.info("kvx hicache: store %s (model %r, tp %d/%d, %d buffers, %d bytes/page%s)",
                    self.store.dir, self.model, self.tp_rank, self.tp_size, len(specs),
                    self.page_bytes, "" if not self.is_mla else
                    ", MLA: shared copy, " + ("this rank writes" if self.writer
                                              else "tp rank 0 writes"))

    def _need(self) -> kvx.Store:
        if self.store is None:
            raise RuntimeError("kvx hicache: register_mem_pool_host was not called")
        return self.store

    def _pages(self, n: int, host_indices: Any) -> List[int]:
        """Pool page of each key from SGLang's token-level host indices
        (page_size per key, page-aligned). Raises ValueError otherwise."""
        idx = host_indices.tolist() if hasattr(host_indices, "tolist") else list(host_indices)
        ps = self.page_size
        if len(idx) != n * ps:
            raise ValueError(f"kvx hicache: {n} keys need {n * ps} host indices, got {len(idx)}")
        pages = []
        for i in range(n):
            first = int(idx[i * ps])
            if first % ps or idx[i * ps:(i + 1) * ps] != list(range(first, first + ps)):
                raise ValueError(f"kvx hicache: host indices of key {i} are not one "
                                 f"page-aligned run of {ps} (start {first})")
            pages.append(first // ps)
        return pages

    # ---- zero-copy v1 calls ----------------------------------------------

    def _put(self, store: kvx.Store, keys: Sequence[Any], pages: Sequence[int]) -> List[bool]:
        n = len(keys)
        if n == 0:
            return []
        arr = (ctypes.c_int32 * n)(*pages)
        res = (ctypes.c_int * n)()
        rc = lib.kvx_store_batch_put(store._handle(), _key_array(keys), arr, n, res)
        if rc != 0 and all(r == 0 for r in res):  # refused before any I/O
            logger.error("kvx hicache: put of %d pages refused: %s", n, kvx.result_str(rc))
            return [False] * n
        return [r == 0 for r in res]

    def _get(self, store: kvx.Store, keys: Sequence[Any], pages: Sequence[int]) -> List[bool]:
        n = len(keys)
        if n == 0:
            return []
        arr = (ctypes.c_int32 * n)(*pages)
        loaded = ctypes.c_size_t(0)
        rc = lib.kvx_store_batch_get(store._handle(), _key_array(keys), arr, n,
                                     ctypes.byref(loaded))
        if rc != 0:
            logger.warning("kvx hicache: get of %d pages stopped after %d: %s", n,
                           loaded.value, kvx.result_str(rc))
        return [i < loaded.value for i in range(n)]

    def batch_get_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> List[bool]:
        """Loads keys[i] into the host pool page at host_indices[i*page_size];
        True for the longest prefix of present, intact blocks, False after."""
        return self._get(self._need(), keys, self._pages(len(keys), host_indices))

    def batch_set_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> List[bool]:
        """Stores the host pool page at host_indices[i*page_size] under
        keys[i]; per-key success. MLA ranks other than 0 write nothing and
        report success (rank 0 writes the shared copy)."""
        pages = self._pages(len(keys), host_indices)
        if not self.writer:
            return [True] * len(keys)
        return self._put(self._need(), keys, pages)

    def exists(self, key: str) -> bool:
        """True when key's block is present."""
        return lib.kvx_store_batch_exists(self._need()._handle(), _key_array([key]), 1) == 1

    def batch_exists(self, keys: List[str],
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> int:
        """How many keys from the first are present (stops at the first miss)."""
        if not keys:
            return 0
        return int(lib.kvx_store_batch_exists(self._need()._handle(), _key_array(keys),
                                              len(keys)))

    # ---- deprecated tensor calls (through a staging pool) ---------------

    def _stage(self) -> Tuple[kvx.Store, torch.Tensor]:
        """A second store over a small staging pool of the same layout (so the
        same namespace and blocks), for get/set with flat page tensors."""
        if self._staging is None:
            self._need()
            total = sum(item for _, _, item in self._specs) * _STAGING_PAGES
            mem = torch.zeros(total, dtype=torch.uint8)
            base, off, specs = mem.data_ptr(), 0, []
            for _, _, item in self._specs:
                specs.append((base + off, item * _STAGING_PAGES, item))
                off += item * _STAGING_PAGES
            self._staging_mem = mem
            self._staging = self._open(kvx.Layout(specs, keep=[mem], **self._layout_kw))
            self._staging_specs = specs
        return self._staging, self._staging_mem

    def _flat(self, t: Any) -> Optional[torch.Tensor]:
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
            logger.error("kvx hicache: a page must be a CPU tensor, got %s", type(t).__name__)
            return None
        nbytes = t.numel() * t.element_size()
        if nbytes != self.page_bytes:
            logger.error("kvx hicache: a page tensor of %d bytes, the pool's pages are %d",
                         nbytes, self.page_bytes)
            return None
        return t

    def _copy(self, flat_ptr: int, slot: int, to_staging: bool) -> None:
        off = 0
        for base, _, item in self._staging_specs:
            st = base + slot * item
            if to_staging:
                ctypes.memmove(st, flat_ptr + off, item)
            else:
                ctypes.memmove(flat_ptr + off, st, item)
            off += item

    def batch_get(self, keys: List[str], target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> List[Optional[torch.Tensor]]:
        """Fills target_locations[i] (a flat page tensor, as
        get_dummy_flat_data_page) from keys[i]; the tensor, or None for a
        miss and every key after it."""
        n = len(keys)
        targets = list(target_locations) if target_locations is not None else [None] * n
        if len(targets) != n:
            raise ValueError(f"kvx hicache: {n} keys, {len(targets)} target locations")
        out: List[Optional[torch.Tensor]] = [None] * n
        with self._staging_lock:
            store, _ = self._stage()
            for c in range(0, n, _STAGING_PAGES):
                chunk = keys[c:c + _STAGING_PAGES]
                tgt = [self._flat(t) for t in targets[c:c + len(chunk)]]
                for t in tgt:
                    if t is None:
                        return out
                    if not t.is_contiguous():
                        logger.error("kvx hicache: a target page tensor is not contiguous")
                        return out
                ok = self._get(store, chunk, list(range(len(chunk))))
                for i, hit in enumerate(ok):
                    if not hit:
                        return out
                    self._copy(tgt[i].data_ptr(), i, to_staging=False)
                    out[c + i] = tgt[i]
        return out

    def get(self, key: str, target_location: Optional[Any] = None,
            target_sizes: Optional[Any] = None) -> Optional[torch.Tensor]:
        """Fills target_location (a flat page tensor; a new one when None)
        from key; None when missing or not intact."""
        if target_location is None:
            target_location = torch.empty(self.page_bytes, dtype=torch.uint8)
        return self.batch_get([key], [target_location])[0]

    def batch_set(self, keys: List[str], values: Optional[Any] = None,
                  target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> bool:
        """Stores values[i] (flat page tensors, as get_data_page) under
        keys[i]; True when every one was stored."""
        n = len(keys)
        vals = list(values) if values is not None else []
        if len(vals) != n:
            raise ValueError(f"kvx hicache: {n} keys, {len(vals)} values")
        if not self.writer:
            return True
        with self._staging_lock:
            store, _ = self._stage()
            for c in range(0, n, _STAGING_PAGES):
                chunk = keys[c:c + _STAGING_PAGES]
                for i, v in enumerate(vals[c:c + len(chunk)]):
                    v = self._flat(v)
                    if v is None:
                        return False
                    v = v.contiguous()
                    self._copy(v.data_ptr(), i, to_staging=True)
                if not all(self._put(store, chunk, list(range(len(chunk))))):
                    return False
        return True

    def set(self, key: str, value: Optional[Any] = None, target_location: Optional[Any] = None,
            target_sizes: Optional[Any] = None) -> bool:
        """Stores value (a flat page tensor) under key."""
        return self.batch_set([key], [value])

    # ---- misc --------------------------------------------------------------

    def get_stats(self) -> Optional[dict]:
        """kvx_store's counters (hits, misses, puts, corrupt, bytes_used...)."""
        return self.store.stats() if self.store is not None else None

    def clear(self) -> None:
        """Not supported: kvx_store keeps blocks until evicted; logs a warning."""
        logger.warning("kvx hicache: clear() is not supported (blocks stay until evicted; "
                       "remove the store directory to drop them)")

    def close(self) -> None:
        """Closes the stores (files stay). Idempotent."""
        for s in (self._staging, self.store):
            if s is not None:
                s.close()
        self._staging = None
        self.store = None
