"""KvxConnector: vLLM prefill/decode disaggregation over kvx.

A subclass of vLLM's KVConnectorBase_V1, on both sides of both roles.
The transfer is a push: when a prefill request finishes, the prefill worker
opens a kvx sender room and, once the decode side has named its
destination blocks, sends the request's whole blocks (not layer by layer:
save_kv_layer and wait_for_layer_load do nothing; the blocks go after the
last layer, from get_finished/wait_for_save of a later step).

Flow (the proxy or Ray Serve's PD app passes kv_transfer_params along):

  prefill  request {"do_remote_decode": true}
           request_finished -> delays freeing the blocks, returns
           {"do_remote_prefill": true, "kvx_room", "kvx_addr",
            "kvx_num_blocks", "kvx_num_tokens"}
           worker: sender(room) -> WaitingForInput -> init + send(blocks)
           -> Success/Failed -> get_finished reports it as sent (blocks freed)
  decode   request with those params
           get_num_new_matched_tokens -> (prompt tokens, async)
           update_state_after_alloc -> the blocks to fill
           worker: receiver(room, kvx_addr).init(blocks) -> Success ->
           finished receiving; Failed -> finished receiving AND every block
           of the request in get_block_ids_with_load_errors, the request
           in get_transfer_results' failed_recving (vLLM then recomputes or
           fails the request by its kv_load_failure_policy: never wrong
           tokens)

Settings (kv_connector_extra_config, then the environment, then defaults):
  transport       KVX_TRANSPORT: tcp (default), file, rdma, cuda (GPU to GPU
                  on one node), fake (moves nothing: benchmarks)
  bootstrap_host  KVX_VLLM_HOST: the prefill's address the decode reaches and
                  where its bootstrap listens (kv_ip when not 127.0.0.1,
                  else VLLM_HOST_IP, else this node's outbound address)
  bootstrap_port  KVX_VLLM_PORT: the prefill's kvx bootstrap port (kv_port +
                  dp rank; one prefill instance per host and port);
                  rank 0 of the prefill TP group serves it
  file_dir        KVX_FILE_DIR for the file transport (both sides see it)
  file_handshake  true (default): the file transport also connects the two
                  sides (kvx_boot), so a failure or abort on either side
                  reaches the other at once; false: only the directory is
                  shared (a decode learns of a prefill failure from the
                  room's transfer_failed file, or at KVX_FILE_TIMEOUT)
  waiting_timeout_s, bootstrap_timeout_s  kvx's room timeouts (300 s)
Every other KVX_* variable of the C library applies (README, Settings).

Block layouts (register_kv_caches): per layer (2, num_blocks, ...) tensors
(FlashAttention, also when the physical order is HND), (num_blocks, 2, ...)
(FlashInfer: K and V of a block in one page; equal TP only) and MLA's
(num_blocks, block_size, dim) (one buffer per layer). The HND layout keeps a
head's rows of a block contiguous; kvx sees such a block as one row of
heads, so heterogeneous TP slices it by head. Heterogeneous TP needs the
(2, num_blocks, ...) layout; both sides must use the same one (a mismatch
fails the room naming the field).
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set, Tuple

import torch

from vllm.distributed.kv_transfer.kv_connector.v1.base import (KVConnectorBase_V1,
                                                               KVConnectorMetadata,
                                                               KVConnectorRole)
try:  # vLLM >= 0.3x: request-level receive failures next to the block-level ones
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorTransferResults
except ImportError:  # pragma: no cover - older vLLM
    KVConnectorTransferResults = None

import kvx

if TYPE_CHECKING:  # pragma: no cover
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.request import Request

logger = logging.getLogger("kvx.vllm")

__all__ = ["KvxConnector", "KvxConnectorMetadata", "room_of", "layout_from_kv_caches"]

INT64_MAX = (1 << 63) - 1


def room_of(request_id: str, engine_id: str = "") -> int:
    """The kvx room of a prefill request: 63 bits of a hash of its id and the
    prefill engine's id (nonzero), so rooms are stable and need no router."""
    h = hashlib.blake2b(f"{engine_id}/{request_id}".encode(), digest_size=8).digest()
    return (int.from_bytes(h, "little") & INT64_MAX) or 1


@dataclass
class _Send:
    room: int
    block_ids: List[int]


@dataclass
class _Recv:
    room: int
    addr: Optional[str]
    block_ids: List[int]


@dataclass
class KvxConnectorMetadata(KVConnectorMetadata):
    """What the scheduler tells the workers in one step: rooms to send (prefill)
    and rooms to receive into which blocks (decode), by request id."""
    sends: Dict[str, _Send] = field(default_factory=dict)
    recvs: Dict[str, _Recv] = field(default_factory=dict)
    aborts: Set[str] = field(default_factory=set)


def _setting(extra: Dict[str, Any], key: str, env: str, default: Any) -> Any:
    v = extra.get(key)
    if v is None or v == "":
        v = os.environ.get(env) if env else None
    return default if v is None or v == "" else v


def _default_host(kv_ip: Optional[str]) -> str:
    """kv_ip when set to something else than its default, else this node's
    address as vLLM finds it (VLLM_HOST_IP, else the outbound interface):
    the decode, often on another node, must reach it."""
    if kv_ip and kv_ip not in ("127.0.0.1", "localhost"):
        return kv_ip
    try:
        from vllm.utils.network_utils import get_ip
        return str(get_ip())
    except Exception:
        return "127.0.0.1"


def _first_group(block_ids: Any) -> List[int]:
    """vLLM passes block ids as a list (one KV cache group) or a tuple of
    lists (one per group); kvx moves the first group (full attention)."""
    if block_ids and isinstance(block_ids[0], (list, tuple)):
        if len(block_ids) > 1 and any(len(g) for g in block_ids[1:]):
            raise NotImplementedError("kvx: KvxConnector moves one KV cache group; this model "
                                      f"has {len(block_ids)} groups with blocks")
        return [int(b) for b in block_ids[0]]
    return [int(b) for b in (block_ids or [])]


def _tensor_buffers(t: torch.Tensor, num_blocks: int) -> Tuple[List[tuple], str, int, int]:
    """The kvx buffers of one layer's KV cache tensor: ([(ptr, length,
    item_len)], kind, tokens per kvx row group, heads). kind is "kv" (K then
    V buffers), "joint" (K and V in one page) or "mla"."""
    es = t.element_size()
    if t.device.type != "cpu" and t.device.type != "cuda":
        raise NotImplementedError(f"kvx: KV cache on {t.device.type} is not supported")

    def span(x: torch.Tensor) -> tuple:
        page = x.stride(0) * es
        mem = (1, t.device.index or 0) if t.device.type == "cuda" else (0, 0)
        return (x.data_ptr(), page * num_blocks, page) + mem

    if t.dim() >= 4 and t.shape[0] == 2 and t.shape[1] == num_blocks:
        k, v = t[0], t[1]
        if t.stride(0) < t.stride(1) * num_blocks:
            raise NotImplementedError("kvx: K and V of a layer interleave inside a block "
                                      f"(shape {tuple(t.shape)}, strides {t.stride()})")
        # logical (2, N, block_size, heads, head_size); HND when the heads'
        # stride is the larger one (a head's rows of a block are contiguous)
        if t.dim() == 5:
            bs, heads = t.shape[2], t.shape[3]
            hnd = t.stride(3) > t.stride(2)
            return [span(k), span(v)], "kv", 1 if hnd else bs, heads
        return [span(k), span(v)], "kv", t.shape[2], 1
    if t.dim() >= 3 and t.shape[0] == num_blocks:
        if t.dim() >= 4 and t.shape[1] == 2:
            return [span(t)], "joint", t.shape[2], 1
        return [span(t)], "mla", t.shape[1], 1
    raise NotImplementedError(f"kvx: a KV cache tensor of shape {tuple(t.shape)} has no "
                              f"num_blocks ({num_blocks}) dimension kvx knows")


def layout_from_kv_caches(kv_caches: Dict[str, torch.Tensor], num_blocks: int,
                          head_begin_rank: int = 0) -> Tuple[kvx.Layout, Dict[str, Any]]:
    """A kvx.Layout over vLLM's per-layer KV caches (K of every layer, then V;
    MLA: one buffer per layer) and a description of it. head_begin_rank:
    this rank's TP rank, to place its heads among the model's."""
    ks: List[tuple] = []
    vs: List[tuple] = []
    kinds, rows, heads_set, dtypes = set(), set(), set(), set()
    for name, t in kv_caches.items():
        bufs, kind, row_tokens, heads = _tensor_buffers(t, num_blocks)
        kinds.add(kind)
        rows.add(row_tokens)
        heads_set.add(heads)
        dtypes.add((str(t.dtype).replace("torch.", ""), t.element_size()))
        ks.append(bufs[0])
        if len(bufs) > 1:
            vs.append(bufs[1])
    if len(kinds) != 1 or len(rows) != 1 or len(heads_set) != 1 or len(dtypes) != 1:
        raise NotImplementedError("kvx: every layer's KV cache must have one shape and dtype "
                                  f"(kinds {kinds}, tokens per row {rows}, heads {heads_set}, "
                                  f"dtypes {dtypes})")
    kind, row_tokens, heads = kinds.pop(), rows.pop(), heads_set.pop()
    dtype, dsize = dtypes.pop()
    mla = kind == "mla"
    layout = kvx.Layout(ks + vs, page_size=row_tokens, num_kv_heads=heads, dtype=dtype,
                        dtype_size=dsize, mla=mla,
                        head_begin=0 if mla else head_begin_rank * heads,
                        keep=list(kv_caches.values()))
    return layout, {"kind": kind, "heads": heads, "layers": len(kv_caches), "dtype": dtype}


class KvxConnector(KVConnectorBase_V1):
    """vLLM KV connector over kvx (see the module's doc)."""

    def __init__(self, vllm_config: "VllmConfig", role: KVConnectorRole,
                 kv_cache_config: Any = None):
        super().__init__(vllm_config, role, kv_cache_config)
        ktc = vllm_config.kv_transfer_config
        extra = dict(getattr(ktc, "kv_connector_extra_config", None) or {})
        self._extra = extra
        self._engine_id = str(getattr(ktc, "engine_id", "") or "")
        par = getattr(vllm_config, "parallel_config", None)
        dp_rank = int(getattr(par, "data_parallel_rank", 0) or 0)
        self.transport = str(_setting(extra, "transport", "KVX_TRANSPORT", "tcp"))
        self.host = str(_setting(extra, "bootstrap_host", "KVX_VLLM_HOST", "") or
                        _default_host(getattr(ktc, "kv_ip", None)))
        self.port = int(_setting(extra, "bootstrap_port", "KVX_VLLM_PORT",
                                 int(getattr(ktc, "kv_port", 14579)) + dp_rank))
        self.file_dir = _setting(extra, "file_dir", "KVX_FILE_DIR", None)
        # file transport: with the handshake (default) failures travel both
        # ways over kvx's control channel; without it only files are shared
        self.handshake = self.transport != "file" or \
            str(extra.get("file_handshake", True)).lower() not in ("0", "false", "no")
        self.waiting_timeout_s = float(_setting(extra, "waiting_timeout_s", "", 0.0))
        self.bootstrap_timeout_s = float(_setting(extra, "bootstrap_timeout_s", "", 0.0))
        self.block_size = int(vllm_config.cache_config.block_size)
        self.tp_size = int(getattr(par, "tensor_parallel_size", 1) or 1)
        self.tp_rank = int(extra.get("tp_rank", -1))
        if self._role == KVConnectorRole.SCHEDULER:
            self._init_scheduler()
        else:
            self._init_worker()

    @property
    def addr(self) -> str:
        """The prefill's kvx bootstrap address ("host:port")."""
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{h}:{self.port}"

    # ------------------------------------------------------------------
    # scheduler side
    # ------------------------------------------------------------------
    def _init_scheduler(self) -> None:
        self._to_send: Dict[str, _Send] = {}
        self._to_recv: Dict[str, _Recv] = {}
        self._sending: Set[str] = set()
        self._receiving: Set[str] = set()
        self._aborts: Set[str] = set()

    def get_num_new_matched_tokens(self, request: "Request",
                                   num_computed_tokens: int) -> Tuple[Optional[int], bool]:
        """Decode: a request carrying a kvx room loads every prompt token the
        prefill computed, asynchronously. A local prefix hit on decode
        (num_computed_tokens > 0) loads nothing: kvx moves a room's blocks
        all or none, so the decode computes the rest itself."""
        p = request.kv_transfer_params
        if not p or not p.get("do_remote_prefill") or "kvx_room" not in p:
            return 0, False
        if num_computed_tokens > 0:
            return 0, False
        n = min(int(p.get("kvx_num_tokens", 0)), int(request.num_prompt_tokens))
        return (n, True) if n > 0 else (0, False)

    def update_state_after_alloc(self, request: "Request", blocks: "KVCacheBlocks",
                                 num_external_tokens: int) -> None:
        p = request.kv_transfer_params
        if not p or not p.get("do_remote_prefill") or "kvx_room" not in p:
            return
        p["do_remote_prefill"] = False  # one transfer per request
        room = int(p["kvx_room"])
        addr = p.get("kvx_addr")
        want = int(p.get("kvx_num_blocks", 0))
        if num_external_tokens <= 0:
            # no load (a local prefix hit): the room is released without bytes
            self._to_recv[request.request_id] = _Recv(room, addr, [])
            return
        ids = _first_group(blocks.get_unhashed_block_ids_all_groups()
                           if hasattr(blocks, "get_unhashed_block_ids_all_groups")
                           else blocks.get_unhashed_block_ids())
        self._to_recv[request.request_id] = _Recv(room, addr, ids[:want] if want else ids)

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> KvxConnectorMetadata:
        meta = KvxConnectorMetadata(sends=self._to_send, recvs=self._to_recv,
                                    aborts=self._aborts)
        self._sending.update(self._to_send)
        self._sending.update(self._aborts)
        self._receiving.update(r for r, v in self._to_recv.items() if v.block_ids)
        self._to_send, self._to_recv, self._aborts = {}, {}, set()
        return meta

    def request_finished(self, request: "Request",
                         block_ids: Any) -> Tuple[bool, Optional[Dict[str, Any]]]:
        """Prefill: a request asked to hand off (do_remote_decode) keeps its
        blocks until the worker reports the room done, and returns the params
        the decode needs."""
        p = request.kv_transfer_params
        rid = request.request_id
        if rid in self._receiving:
            # decode: finished (aborted) while its blocks are being written:
            # the worker aborts the room, waits for writes in flight, and
            # reports the request as sent, which frees the blocks
            self._aborts.add(rid)
            return True, None
        self._to_recv.pop(rid, None)  # not opened yet: nothing writes there
        if not p or not p.get("do_remote_decode"):
            return False, None
        from vllm.v1.request import RequestStatus
        if request.status not in (RequestStatus.FINISHED_LENGTH_CAPPED,
                                  RequestStatus.FINISHED_STOPPED):
            return False, None
        ids = _first_group(block_ids)
        ntok = int(request.num_computed_tokens)
        nblk = min(len(ids), -(-ntok // self.block_size))
        if nblk <= 0:
            return False, None
        room = int(p.get("kvx_room") or room_of(request.request_id, self._engine_id))
        self._to_send[request.request_id] = _Send(room, ids[:nblk])
        return True, {"do_remote_prefill": True, "do_remote_decode": False,
                      "kvx_room": room, "kvx_addr": self.addr, "kvx_num_blocks": nblk,
                      "kvx_num_tokens": nblk * self.block_size if ntok > nblk * self.block_size
                      else ntok,
                      "kvx_transport": self.transport}

    def update_connector_output(self, connector_output: Any) -> None:
        for rid in getattr(connector_output, "finished_sending", None) or ():
            self._sending.discard(rid)
        for rid in getattr(connector_output, "finished_recving", None) or ():
            self._receiving.discard(rid)

    def has_pending_push_work(self) -> bool:
        """Prefill rooms the workers have not finished keep the engine stepping."""
        return bool(self._to_send or self._sending)

    @classmethod
    def kv_cache_access(cls, kv_transfer_config: Any) -> Any:
        """How kvx reaches the KV cache: rdma registers it (one physical
        allocation per segment), cuda shares it by legacy CUDA IPC handles;
        tcp and file copy it in this process (staged for GPU caches)."""
        from vllm.config.kv_transfer import KVCacheAccess
        extra = getattr(kv_transfer_config, "kv_connector_extra_config", None) or {}
        transport = str(_setting(extra, "transport", "KVX_TRANSPORT", "tcp"))
        if transport == "rdma":
            return KVCacheAccess.REGISTERS
        if transport == "cuda":
            return KVCacheAccess.LEGACY_IPC
        return KVCacheAccess.IN_PROCESS

    @classmethod
    def get_required_kvcache_layout(cls, vllm_config: "VllmConfig") -> Optional[str]:
        """None (either), unless kv_connector_extra_config sets "kv_layout"
        ("HND" for heterogeneous TP of dense models, as vLLM's NIXL asks)."""
        ktc = getattr(vllm_config, "kv_transfer_config", None)
        extra = getattr(ktc, "kv_connector_extra_config", None) or {}
        return extra.get("kv_layout")

    # ------------------------------------------------------------------
    # worker side
    # ------------------------------------------------------------------
    def _init_worker(self) -> None:
        self.engines: Dict[str, kvx.Engine] = {}
        self._roles: Tuple[str, ...] = ()
        self._rank = 0
        self.layout: Optional[kvx.Layout] = None
        self._lock = threading.Lock()
        self._senders: Dict[str, Tuple[Any, _Send, bool]] = {}
        self._receivers: Dict[str, Tuple[Any, _Recv, bool]] = {}
        self._done_send: Set[str] = set()
        self._done_recv: Set[str] = set()
        self._load_errors: Set[int] = set()
        self._failed_recv: Set[str] = set()
        self.failures: Dict[str, str] = {}  # request id -> kvx's sentence (observability)

    def _worker_tp_rank(self) -> int:
        if self.tp_rank >= 0:
            return self.tp_rank
        try:
            from vllm.distributed.parallel_state import get_tensor_model_parallel_rank
            return int(get_tensor_model_parallel_rank())
        except Exception:
            return 0

    def register_kv_caches(self, kv_caches: Dict[str, torch.Tensor]) -> None:
        """Builds this worker's kvx engine over vLLM's KV cache tensors."""
        if not kv_caches:
            raise ValueError("kvx: register_kv_caches got no KV cache tensors")
        num_blocks = int(getattr(self._kv_cache_config, "num_blocks", 0) or 0)
        if num_blocks <= 0:
            t = next(iter(kv_caches.values()))
            num_blocks = t.shape[1] if t.shape[0] == 2 else t.shape[0]
        rank = self._worker_tp_rank()
        self.layout, desc = layout_from_kv_caches(kv_caches, num_blocks, rank)
        self._rank = rank
        ktc = self._kv_transfer_config
        producer = bool(getattr(ktc, "is_kv_producer", True))
        consumer = bool(getattr(ktc, "is_kv_consumer", False))
        role = str(self._extra.get("kvx_role") or os.environ.get("KVX_VLLM_ROLE") or "")
        if not role and producer != consumer:
            role = "prefill" if producer else "decode"
        if role and role not in ("prefill", "decode", "both"):
            raise ValueError(f"kvx: kvx_role is 'prefill', 'decode' or 'both', not {role!r}")
        # kv_both: each side's engine is made when this instance first sends
        # (the prefill engine binds the bootstrap port) or first receives
        self._roles = ("prefill", "decode") if role in ("", "both") else (role,)
        logger.info("kvx worker: transport %s, tp %d/%d, %d layers (%s), %d blocks of %d "
                    "bytes, sides %s", self.transport, rank, self.tp_size, desc["layers"],
                    desc["kind"], self.layout.num_pages, self.layout.page_bytes,
                    "/".join(self._roles))
        if len(self._roles) == 1:
            self._engine(self._roles[0])

    def _engine(self, role: str) -> kvx.Engine:
        """This worker's kvx engine of one side, made on first use."""
        eng = self.engines.get(role)
        if eng is not None:
            return eng
        if self.layout is None:
            raise RuntimeError("kvx: a transfer before register_kv_caches")
        if role not in self._roles:
            raise RuntimeError(f"kvx: this instance is kvx_role {self._roles[0]!r}; it cannot "
                               f"act as {role}")
        boot: Dict[str, Any] = {"tp_size": self.tp_size, "tp_rank": self._rank}
        if role == "prefill" and self.handshake:
            boot.update(host=self.host, port=self.port)
        file = {"dir": str(self.file_dir)} if self.file_dir else None
        eng = kvx.Engine(role, self.layout, transport=self.transport,
                         bootstrap_addr=self.addr if role == "decode" and self.handshake else None,
                         rank=self._rank, waiting_timeout_s=self.waiting_timeout_s,
                         bootstrap_timeout_s=self.bootstrap_timeout_s, boot=boot, file=file)
        self.engines[role] = eng
        logger.info("kvx %s engine: transport %s%s", role, eng.transport,
                    f", bootstrap {self.addr}" if role == "prefill" and self.handshake else "")
        return eng

    def start_load_kv(self, forward_context: "ForwardContext", **kwargs: Any) -> None:
        """Opens the rooms of this step (decode: receivers, given their blocks;
        prefill: senders) and moves every room along. Does not block."""
        if not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        assert isinstance(meta, KvxConnectorMetadata)
        with self._lock:
            for rid, r in meta.recvs.items():
                self._open_recv(rid, r)
            for rid, s in meta.sends.items():
                self._open_send(rid, s)
            for rid in meta.aborts:
                self._abort_recv(rid)
            self._progress()

    def wait_for_layer_load(self, layer_name: str) -> None:
        """Nothing: kvx loads whole blocks before the request is scheduled."""

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any,
                      **kwargs: Any) -> None:
        """Nothing: whole blocks go when the request finishes (no layer-wise sends yet)."""

    def wait_for_save(self) -> None:
        """Moves the rooms along (sends start once the decode named its blocks).
        Every send is asynchronous; its blocks stay held until get_finished
        reports it."""
        with self._lock:
            self._progress()

    def _fail_note(self, rid: str, why: str) -> None:
        self.failures[rid] = why
        logger.warning("kvx: request %s: %s", rid, why)

    def _open_recv(self, rid: str, r: _Recv) -> None:
        try:
            room = self._engine("decode").receiver(r.room, r.addr if self.handshake else None)
        except kvx.KvxError as e:
            self._fail_note(rid, e.sentence)
            self._load_errors.update(r.block_ids)
            self._failed_recv.add(rid)
            self._done_recv.add(rid)
            return
        if not r.block_ids:  # nothing to load: let the prefill free its blocks
            room.abort("the decode loads nothing for this request (local prefix hit)")
            room.close()
            self._done_recv.add(rid)
            return
        self._receivers[rid] = (room, r, False)

    def _abort_recv(self, rid: str) -> None:
        """The decode request ended while receiving: abort its room (kvx's
        destroy waits for writes in flight), then its blocks may be freed."""
        ent = self._receivers.pop(rid, None)
        if ent is not None:
            ent[0].abort("the decode request was aborted")
            ent[0].close()
        self._done_recv.discard(rid)
        self._failed_recv.discard(rid)
        self._done_send.add(rid)

    def _open_send(self, rid: str, s: _Send) -> None:
        try:
            room = self._engine("prefill").sender(s.room)
        except kvx.KvxError as e:
            self._fail_note(rid, e.sentence)
            self._done_send.add(rid)
            return
        self._senders[rid] = (room, s, False)

    def _progress(self) -> None:
        for rid, (room, r, started) in list(self._receivers.items()):
            st = room.poll()
            if not started and st == kvx.Poll.WaitingForInput:
                try:
                    room.init(r.block_ids)
                    started = True
                    self._receivers[rid] = (room, r, True)
                except kvx.KvxError as e:
                    room.abort(e.sentence)
                st = room.poll()
            if st == kvx.Poll.Success:
                room.close()
                del self._receivers[rid]
                self._done_recv.add(rid)
            elif st == kvx.Poll.Failed:
                self._fail_note(rid, room.error)
                room.close()
                del self._receivers[rid]
                self._load_errors.update(r.block_ids)
                self._failed_recv.add(rid)
                self._done_recv.add(rid)
        for rid, (room, s, started) in list(self._senders.items()):
            st = room.poll()
            if not started and st == kvx.Poll.WaitingForInput:
                try:
                    room.init(len(s.block_ids))
                    room.send(s.block_ids)
                    self._senders[rid] = (room, s, True)
                except kvx.KvxError as e:
                    room.abort(e.sentence)
                st = room.poll()
            if st in (kvx.Poll.Success, kvx.Poll.Failed):
                if st == kvx.Poll.Failed:
                    self._fail_note(rid, room.error)
                room.close()
                del self._senders[rid]
                self._done_send.add(rid)

    def get_finished(self, finished_req_ids: Set[str]) -> Tuple[Optional[Set[str]],
                                                                 Optional[Set[str]]]:
        """(requests whose blocks were sent or whose send failed: their blocks
        may be freed; requests whose blocks arrived or failed to)."""
        with self._lock:
            self._progress()
            sent, recvd = self._done_send, self._done_recv
            self._done_send, self._done_recv = set(), set()
        return (sent or None), (recvd or None)

    def get_transfer_results(self, finished_req_ids: Set[str]) -> Any:
        """get_finished's two sets and the requests whose room failed
        (failed_recving: vLLM's request-level load-error path, which also
        serves models with several KV cache groups)."""
        sent, recvd = self.get_finished(finished_req_ids)
        with self._lock:
            failed, self._failed_recv = self._failed_recv, set()
        if KVConnectorTransferResults is None:  # pragma: no cover - older vLLM
            return sent, recvd
        return KVConnectorTransferResults(finished_sending=set(sent or ()),
                                          finished_recving=set(recvd or ()),
                                          failed_recving=failed & set(recvd or ()))

    def get_block_ids_with_load_errors(self) -> Set[int]:
        """Blocks of rooms that failed (reported once, by the time the request
        is reported finished receiving)."""
        with self._lock:
            out, self._load_errors = self._load_errors, set()
        return out

    def wait_progress(self, timeout_ms: int) -> bool:
        """Blocks (without the GIL) until one open room moves to its next
        state, or timeout_ms pass; False when no room is open. For drivers
        that have nothing else to do between steps (tests, benchmarks):
        vLLM's engine loop calls get_finished every step instead."""
        with self._lock:
            rooms = list(self._receivers.values()) + list(self._senders.values())
            if not rooms:
                return False
            for room, _, started in rooms:  # one a step can move now: no wait
                state = room.poll()
                if state in (kvx.Poll.Success, kvx.Poll.Failed) or \
                        (not started and state == kvx.Poll.WaitingForInput):
                    return True
            room, _, started = rooms[0]
            room.wait(kvx.Poll.Success if started else kvx.Poll.WaitingForInput, timeout_ms)
        return True

    def pending(self) -> int:
        """Rooms still open on this worker."""
        with self._lock:
            return len(self._senders) + len(self._receivers)

    def shutdown(self) -> None:
        """Fails the open rooms and destroys the engine."""
        with self._lock:
            for room, _, _ in list(self._senders.values()) + list(self._receivers.values()):
                room.close()
            self._senders.clear()
            self._receivers.clear()
            for eng in self.engines.values():
                eng.close()
            self.engines.clear()
