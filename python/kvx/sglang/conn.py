"""kvx as an SGLang PD transfer backend ("--disaggregation-transfer-backend kvx").

The classes subclass SGLang's own CommonKVManager, CommonKVSender,
CommonKVReceiver and CommonKVBootstrapServer, so the scheduler's isinstance
checks, its decode-side bootstrap code (try_ensure_parallel_info and the rank
mapping, which run unchanged) and its bootstrap HTTP server all stay
SGLang's. The bytes move in kvx: each manager owns one kvx engine (C, through
the kvx package's ctypes binding) built from SGLang's KVArgs, and each sender
and receiver is one kvx room.

  * The bootstrap server is SGLang's (KvxKVBootstrapServer adds nothing):
    every kvx prefill rank registers its control listener with it
    (KVX_BOOTSTRAP_SERVER), and kvx's decode client asks it where each rank
    listens; heartbeats are GET /health, as SGLang's.
  * The transport is KVX_TRANSPORT: tcp (default), rdma, file (KVX_FILE_DIR,
    a directory both sides see) or cuda. Every other KVX_* variable of the C
    library applies (README, Settings).
  * Timeouts and heartbeats follow SGLang's variables:
    SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT, ..._WAITING_TIMEOUT,
    ..._HEARTBEAT_INTERVAL, ..._HEARTBEAT_MAX_FAILURE.
  * Heterogeneous TP, MLA (dummy ranks), PP and DP attention are kvx's
    (LAYOUTS BETWEEN RANKS in kvx.h). Hybrid models with one state type
    (mamba or SWA) move their state with the last chunk.

Refused with a sentence (the manager raises, or the room fails at once):
several state types in one model, host (CPU) KV destinations on decode, a
decode-side prefix (decode_prefix_len > 0), decode-allocation policy
"prefill_complete", staging buffers (SGLANG_DISAGG_STAGING_BUFFER), context
parallelism on decode.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Any, List, Optional, Sequence

import numpy as np

from sglang.srt.disaggregation.base.conn import (KVArgs, KVPoll, KVTransferDestination,
                                                  KVTransferMetric, StateType)
from sglang.srt.disaggregation.common.conn import (CommonKVBootstrapServer, CommonKVManager,
                                                    CommonKVReceiver, CommonKVSender,
                                                    KVTransferError)
from sglang.srt.disaggregation.utils import DisaggregationMode
from sglang.srt.environ import envs

import kvx

logger = logging.getLogger(__name__)

__all__ = ["KvxKVManager", "KvxKVSender", "KvxKVReceiver", "KvxKVBootstrapServer",
           "layout_from_kv_args"]

_DTYPE_BYTES = {"auto": 2, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "half": 2,
                "float32": 4, "fp32": 4, "float": 4, "fp8_e4m3": 1, "fp8_e5m2": 1, "fp8": 1,
                "fp4_e2m1": 1, "int8": 1}


def _state_kind(t: Any) -> int:
    v = getattr(t, "value", t)
    if v == StateType.MAMBA.value:
        return kvx.StateType.MAMBA
    if v == StateType.SWA.value:
        return kvx.StateType.SWA
    return kvx.StateType.OTHER


def _attr(obj: Any, name: str, default: Any) -> Any:
    v = getattr(obj, name, default)
    return default if v is None else v


def layout_from_kv_args(args: KVArgs, is_mla: bool, head_begin: int, on_gpu: bool) -> kvx.Layout:
    """The kvx.Layout of SGLang's KVArgs: KV buffers (MHA: K of every layer,
    then V; MLA: one per layer), aux rows, and the state buffers of a hybrid
    model with one state type. on_gpu: the KV and state pointers are CUDA
    memory of device args.gpu_id (aux rows are host memory in SGLang)."""
    ptrs, lens, items = (list(_attr(args, "kv_data_ptrs", [])), list(_attr(args, "kv_data_lens", [])),
                         list(_attr(args, "kv_item_lens", [])))
    if not ptrs or not (len(ptrs) == len(lens) == len(items)):
        raise ValueError(f"kvx: KVArgs has {len(ptrs)} kv_data_ptrs, {len(lens)} kv_data_lens and "
                         f"{len(items)} kv_item_lens; it needs as many of each, at least one")
    mem = (1, int(_attr(args, "gpu_id", 0))) if on_gpu else (0, 0)
    kv = [(p, n, it) + mem for p, n, it in zip(ptrs, lens, items)]
    aux = list(zip(_attr(args, "aux_data_ptrs", []), _attr(args, "aux_data_lens", []),
                   _attr(args, "aux_item_lens", [])))
    state_types = list(_attr(args, "state_types", []))
    state: List[tuple] = []
    state_type = kvx.StateType.NONE
    if state_types:
        if len(state_types) > 1:
            names = ", ".join(str(getattr(t, "value", t)) for t in state_types)
            raise NotImplementedError(
                f"kvx: this model has {len(state_types)} kinds of state ({names}); the kvx "
                "transfer backend moves one kind (mamba, swa or another) per model")
        sp, sl, si = (args.state_data_ptrs[0], args.state_data_lens[0], args.state_item_lens[0])
        state = [(p, n, it) + mem for p, n, it in zip(sp, sl, si)]
        state_type = _state_kind(state_types[0])
    dtype = str(_attr(args, "kv_cache_dtype_str", "auto"))
    heads = 1 if is_mla else int(_attr(args, "kv_head_num", 1))
    return kvx.Layout(kv, aux, page_size=int(args.page_size), num_kv_heads=heads, dtype=dtype,
                      dtype_size=_DTYPE_BYTES.get(dtype, 2), mla=is_mla,
                      head_begin=0 if is_mla else head_begin,
                      layer_begin=int(_attr(args, "prefill_start_layer", 0)), state=state,
                      state_type=state_type)


def _parallel(server_args: Any) -> dict:
    """This rank's place, from SGLang's runtime context (published by the
    scheduler process before it builds the manager)."""
    from sglang.srt.runtime_context import get_disagg, get_parallel, get_serving
    p = get_parallel()
    return {
        "attn_tp_size": p.attn_tp_size, "attn_tp_rank": p.attn_tp_rank,
        "attn_cp_size": p.attn_cp_size, "attn_cp_rank": p.attn_cp_rank,
        "attn_dp_size": p.attn_dp_size, "attn_dp_rank": p.attn_dp_rank,
        "dcp_size": p.attn_dcp_size, "dcp_rank": p.attn_dcp_rank,
        "pp_size": p.pp_size, "system_dp_size": p.dp_size,
        "num_dp_ranks": p.num_dp_ranks,
        "load_balance_method": str(p.load_balance_method or ""),
        "dist_init_addr": p.dist_init_addr,
        "bootstrap_host": get_serving().host,
        "bootstrap_port": get_disagg().disaggregation_bootstrap_port,
        "allocation_policy": get_disagg().disaggregation_decode_allocation_policy,
    }


class KvxKVManager(CommonKVManager):
    """One kvx engine per scheduler rank (prefill: a sender engine registered
    with SGLang's bootstrap server; decode: a receiver engine)."""

    supports_role_switch = False
    supports_deferred_decode_kv_release = False
    enable_deferred_decode_kv_release = False

    def __init__(self, args: KVArgs, disaggregation_mode: DisaggregationMode, server_args: Any,
                 is_mla_backend: Optional[bool] = False, **_: Any):
        # CommonKVManager.__init__ binds ZMQ sockets and registers a ZMQ
        # endpoint; kvx has its own control channel, so only the attributes
        # SGLang's decode-side code reads are set here.
        self.kv_args = args
        self.disaggregation_mode = disaggregation_mode
        self.server_args = server_args
        self.is_mla_backend = bool(is_mla_backend)
        self.is_hybrid_mla_backend = bool(getattr(args, "is_hybrid_mla_backend", False))
        self.kv_cache_dtype_str = getattr(args, "kv_cache_dtype_str", None)
        self.kv_layout = getattr(args, "kv_layout", None)
        self.dsv41_spec_layout = None
        self._kv_replica_factor = None if self.is_mla_backend else 1
        self.enable_all_cp_ranks_for_transfer = False
        self.is_dummy_cp_rank = False
        self.deferred_bootstrap = None
        self.defer_decode_allocation = False
        self.failure_records = {}
        self.request_status = {}
        self.prefill_info_table = {}
        self.enable_staging = False
        self._staging_handler = None
        # the decode scheduler runs its DP-rank queries (and SGLang's retract
        # rebootstrap) on CommonKVManager's lazily made executor
        self._prefill_recompute_executor = None
        self._prefill_recompute_executor_lock = threading.Lock()
        self._prefill_recompute_sessions = threading.local()
        par = _parallel(server_args)
        for k in ("attn_tp_size", "attn_tp_rank", "attn_cp_size", "attn_cp_rank", "attn_dp_size",
                  "attn_dp_rank", "dcp_size", "dcp_rank", "pp_size", "system_dp_size"):
            setattr(self, k, int(par[k]))
        self.pp_rank = int(_attr(args, "pp_rank", 0))
        self.system_dp_rank = int(_attr(args, "system_dp_rank", 0))
        self.bootstrap_host, self.bootstrap_port = par["bootstrap_host"], int(par["bootstrap_port"])
        self.dist_init_addr = par["dist_init_addr"]
        self.kv_item_lens_sum = sum(_attr(args, "kv_item_lens", []))
        if par["allocation_policy"] == "prefill_complete":
            raise NotImplementedError("kvx: --disaggregation-decode-allocation-policy "
                                      "prefill_complete is not supported by the kvx backend")
        if envs.SGLANG_DISAGG_STAGING_BUFFER.get():
            raise NotImplementedError("kvx: SGLANG_DISAGG_STAGING_BUFFER is not supported by the "
                                      "kvx backend (kvx gathers head slices itself)")
        if disaggregation_mode == DisaggregationMode.DECODE and self.attn_cp_size > 1:
            raise NotImplementedError("kvx: context parallelism on decode is not supported")

        # this rank's first KV head among the model's (heterogeneous TP)
        total = int(_attr(args, "total_kv_head_num", 0)) or 1
        heads = int(_attr(args, "kv_head_num", 0)) or 1
        if total >= self.attn_tp_size:
            head_begin = self.attn_tp_rank * heads
        else:  # fewer KV heads than ranks: each head is replicated
            head_begin = self.attn_tp_rank * total // self.attn_tp_size
        on_gpu = str(getattr(server_args, "device", "cuda") or "cuda").startswith("cuda")
        self.layout = layout_from_kv_args(args, self.is_mla_backend, head_begin, on_gpu)

        transport = os.environ.get("KVX_TRANSPORT") or "tcp"
        self.waiting_timeout = float(envs.SGLANG_DISAGGREGATION_WAITING_TIMEOUT.get())
        self.bootstrap_timeout = float(envs.SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT.get())
        boot = {
            "tp_size": self.attn_tp_size, "tp_rank": self.attn_tp_rank,
            "pp_size": self.pp_size, "pp_rank": self.pp_rank,
            "cp_size": self.attn_cp_size, "cp_rank": self.attn_cp_rank,
            "heartbeat_interval_s": max(float(envs.SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL.get()), 0.1),
            "heartbeat_max_failure": max(int(envs.SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE.get()), 1),
        }
        if self.system_dp_size > 1:
            boot.update(dp_size=self.system_dp_size, dp_rank=self.system_dp_rank)
        else:
            boot.update(dp_size=self.attn_dp_size, dp_rank=self.attn_dp_rank)
        if disaggregation_mode == DisaggregationMode.PREFILL:
            lbm = par["load_balance_method"]
            if boot["dp_size"] > 1 and lbm and lbm != "auto":
                boot["load_balance_method"] = lbm
            # register with SGLang's bootstrap server, as register_to_bootstrap does
            if not os.environ.get("KVX_BOOTSTRAP_SERVER"):
                if self.dist_init_addr:
                    host = self.dist_init_addr.rsplit(":", 1)[0].strip("[]")
                else:
                    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.bootstrap_host,
                                                                     self.bootstrap_host)
                boot["server"] = (f"[{host}]" if ":" in host else host) + f":{self.bootstrap_port}"
            role = "prefill"
        elif disaggregation_mode == DisaggregationMode.DECODE:
            role = "decode"
        else:
            raise ValueError(f"kvx: unsupported disaggregation mode {disaggregation_mode}")
        self.engine = kvx.Engine(role, self.layout, transport=transport,
                                 rank=int(_attr(args, "engine_rank", 0)),
                                 waiting_timeout_s=self.waiting_timeout,
                                 bootstrap_timeout_s=self.bootstrap_timeout, boot=boot)
        logger.info("kvx %s engine: transport %s, attn tp %d/%d, dp %d/%d, pp %d/%d, %d KV "
                    "buffers, page %d bytes", role, self.engine.transport, self.attn_tp_rank,
                    self.attn_tp_size, boot["dp_rank"], boot["dp_size"], self.pp_rank,
                    self.pp_size, len(args.kv_data_ptrs), self.layout.page_bytes)

    # -- what the scheduler calls on the manager --
    def register_to_bootstrap(self) -> None:
        """Nothing to do: the kvx engine registered this rank when it was created."""

    def check_status(self, bootstrap_room: int) -> KVPoll:  # pragma: no cover - unused by kvx rooms
        return self.request_status.get(bootstrap_room, KVPoll.Bootstrapping)

    def get_kv_replica_factor(self) -> int:
        return 1

    def teardown(self) -> None:
        self.close()

    def close(self) -> None:
        """Destroys the kvx engine (its open rooms fail) and SGLang's executor."""
        eng = getattr(self, "engine", None)
        if eng is not None:
            eng.close()
        ex = getattr(self, "_prefill_recompute_executor", None)
        if ex is not None:
            ex.shutdown(wait=False)
            self._prefill_recompute_executor = None


def _reason(e: BaseException) -> str:
    return e.sentence if isinstance(e, kvx.KvxError) else str(e)


class _KvxRoom:
    """What the sender and receiver share: a kvx room, a failure sentence
    kept when a call is refused, SGLang's poll and failure_exception."""

    kv_mgr: KvxKVManager
    bootstrap_room: int
    _room: Any
    _failure: Optional[str]
    conclude_state: Optional[int]

    def _fail(self, sentence: str) -> None:
        """A refused call: the room fails with the sentence and the peer is told."""
        if self._failure is None:
            self._failure = sentence
        if self._room is not None:
            try:
                self._room.abort(sentence)
            except kvx.KvxError:
                pass
        self.conclude_state = KVPoll.Failed

    def poll(self) -> int:
        if self._failure is not None:
            return KVPoll.Failed
        if self._room is None:
            return self.conclude_state if self.conclude_state is not None else KVPoll.Failed
        state = self._room.poll()
        if state in (KVPoll.Success, KVPoll.Failed):
            self.conclude_state = state
        return state

    def poll_pp_consensus(self) -> int:
        return self.poll()

    def failure_exception(self) -> None:
        why = self._failure
        if why is None and self._room is not None:
            e = self._room.failure_exception()
            why = f"{kvx.result_str(e.code)}: {e.sentence}" if e else None
        raise KVTransferError(self.bootstrap_room, why or "kvx: the transfer failed")

    def abort(self) -> None:
        if self._room is not None and self.conclude_state is None:
            self._room.abort(f"aborted by the {self._side} scheduler")
        self.conclude_state = KVPoll.Failed

    def clear(self) -> None:
        if self._room is not None:
            self._room.close()
            self._room = None

    def get_transfer_metric(self) -> KVTransferMetric:
        return KVTransferMetric()

    def _state_rows(self, state_indices: Optional[List]) -> Any:
        """(ok, rows): SGLang's per-state-type index lists (None where a type
        moves nothing) as kvx's one list of rows, None when there are none;
        ok False after failing the room when there are several kinds."""
        parts = [s for s in (state_indices or []) if s is not None]
        if len(parts) > 1:
            self._fail(f"kvx: {len(parts)} kinds of state indices; kvx moves one kind")
            return False, None
        rows = np.asarray(parts[0]).reshape(-1) if parts else None
        return True, rows if rows is not None and len(rows) else None


class KvxKVSender(_KvxRoom, CommonKVSender):
    """The prefill side of one request: a kvx sender room."""

    _side = "prefill"

    def __init__(self, mgr: KvxKVManager, bootstrap_addr: str, bootstrap_room: int,
                 req_has_disagg_prefill_dp_rank: bool = False, **_: Any):
        self.kv_mgr = mgr
        self.bootstrap_room = int(bootstrap_room)
        self.bootstrap_server_url = bootstrap_addr
        self.aux_index: Optional[int] = None
        self.num_kv_indices: Optional[int] = None
        self.conclude_state = None
        self._failure = None
        self._early_send_wait_event = None
        self._room = None
        try:
            self._room = mgr.engine.sender(self.bootstrap_room)
        except kvx.KvxError as e:
            self._failure = f"kvx: cannot open room {self.bootstrap_room}: {e.sentence}"

    def init(self, num_kv_indices: int, aux_index: Optional[int] = None) -> None:
        self.num_kv_indices, self.aux_index = int(num_kv_indices), aux_index
        if self._room is None or self._failure is not None:
            return
        try:
            self._room.init(self.num_kv_indices, -1 if aux_index is None else int(aux_index))
        except kvx.KvxError as e:
            self._fail(_reason(e))

    def mark_prefill_complete(self) -> None:
        pass

    def pop_decode_prefix_len(self) -> int:
        return 0

    def get_max_transfer_tokens(self) -> Optional[int]:
        return None

    def should_send_kv_chunk(self, num_pages: int, last_chunk: bool) -> bool:
        # a zero-page last chunk still completes the room (it carries aux and state)
        return num_pages > 0 or last_chunk

    def send(self, kv_indices: Any, state_indices: Optional[List] = None,
             num_kv_tokens: Optional[int] = None, **_: Any) -> None:
        if self._room is None or self._failure is not None:
            return
        pages = np.asarray(kv_indices).reshape(-1)
        ok, state = self._state_rows(state_indices)
        if not ok:
            return
        try:
            self._room.send(pages, state)
        except kvx.KvxError as e:
            self._fail(_reason(e))


class KvxKVReceiver(_KvxRoom, CommonKVReceiver):
    """The decode side of one request: a kvx receiver room. kvx's decode client
    asks the prefill's bootstrap server where its ranks listen."""

    _side = "decode"

    def __init__(self, mgr: KvxKVManager, bootstrap_addr: str,
                 bootstrap_room: Optional[int] = None, **_: Any):
        self.kv_mgr = mgr
        self.bootstrap_addr = bootstrap_addr
        self.bootstrap_room = int(bootstrap_room or 0)
        self.conclude_state = None
        self._failure = None
        self.abort_notified = False
        self.require_staging = False
        self.bootstrap_infos: list = []
        self.prefill_dp_rank: Optional[int] = None
        self._room = None
        try:
            self._room = mgr.engine.receiver(self.bootstrap_room, bootstrap_addr)
        except kvx.KvxError as e:
            self._failure = f"kvx: cannot open room {self.bootstrap_room}: {e.sentence}"

    @property
    def supports_host_destination(self) -> bool:
        return False

    def init(self, prefill_dp_rank: int) -> None:
        # kvx's decode client resolves the prefill rank itself, by SGLang's rules
        # (follow_bootstrap_room, else POST /query_dp_ranks)
        self.prefill_dp_rank = prefill_dp_rank

    def send_metadata(self, kv_indices: Any, aux_index: Optional[int] = None,
                      state_indices: Optional[List] = None, decode_prefix_len: Optional[int] = None,
                      destination: Any = KVTransferDestination.DEVICE, **_: Any) -> None:
        if self._room is None or self._failure is not None:
            return
        if destination != KVTransferDestination.DEVICE:
            self._fail("kvx: host (CPU) KV destinations are not supported by the kvx backend")
            return
        if decode_prefix_len:
            self._fail(f"kvx: a decode-side prefix of {decode_prefix_len} tokens is not "
                       "supported by the kvx backend")
            return
        ok, state = self._state_rows(state_indices)
        if not ok:
            return
        try:
            self._room.init(np.asarray(kv_indices).reshape(-1),
                            -1 if aux_index is None else int(aux_index), state)
        except kvx.KvxError as e:
            self._fail(_reason(e))

    def is_abort_release_safe(self) -> bool:
        # kvx writes into decode pages only inside a live room; a failed or
        # destroyed room writes nothing more
        return self._room is None or self.conclude_state is not None

    def ensure_abort_notified(self, *, force_arm: bool = False) -> None:
        if not self.abort_notified:
            self.abort_notified = True
            self.abort()


class KvxKVBootstrapServer(CommonKVBootstrapServer):
    """SGLang's own bootstrap HTTP server, unchanged: kvx prefill ranks register
    with it (PUT /route) and kvx decodes read it (GET /route)."""
