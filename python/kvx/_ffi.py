"""ctypes mirror of the kvx C API (kvx.h, kvx_store.h): structures with the
C field order and types, and the loaded library with its prototypes.

Every Structure here must match the C definition byte for byte;
tests/python/test_kvx.py compiles a C program printing sizeof and offsetof
of each and compares them with these."""
import ctypes
import glob
import os
from ctypes import (POINTER, Structure, c_char_p, c_double, c_int, c_int32,
                    c_size_t, c_uint8, c_uint32, c_uint64, c_void_p)

c_enum = c_int  # C enums of kvx (all values fit an int)

KVX_ERROR_MAX = 320


class kvx_buffer(Structure):
    _fields_ = [("base", c_void_p), ("length", c_uint64), ("item_len", c_uint64),
                ("mem", c_enum), ("device", c_int)]


class kvx_aux_buffer(Structure):
    _fields_ = [("base", c_void_p), ("length", c_uint64), ("item_len", c_uint64)]


class kvx_layout(Structure):
    _fields_ = [("buffers", POINTER(kvx_buffer)), ("num_buffers", c_uint32),
                ("aux", POINTER(kvx_aux_buffer)), ("num_aux", c_uint32),
                ("page_size", c_uint32), ("num_kv_heads", c_uint32), ("dtype_size", c_uint32),
                ("dtype", c_char_p), ("mla", c_int), ("head_begin", c_uint32),
                ("layer_begin", c_uint32), ("state", POINTER(kvx_buffer)),
                ("num_state", c_uint32), ("state_type", c_uint32)]


class kvx_allocator(Structure):
    _fields_ = [("alloc_fn", c_void_p), ("free_fn", c_void_p), ("user_data", c_void_p)]


class kvx_logger(Structure):
    _fields_ = [("func", c_void_p), ("user_data", c_void_p), ("level", c_enum)]


class kvx_mem_ops(Structure):
    _fields_ = [("copy", c_void_p), ("host_alloc", c_void_p), ("host_free", c_void_p),
                ("dmabuf_fd", c_void_p), ("ctx", c_void_p)]


class kvx_cuda_desc(Structure):
    _fields_ = [("library", c_char_p), ("staging_bytes", c_uint64), ("batch", c_int),
                ("allocator", kvx_allocator), ("logger", kvx_logger),
                ("fence_timeout_s", c_double), ("node_id", c_char_p)]


class kvx_file_desc(Structure):
    _fields_ = [("dir", c_char_p), ("timeout_s", c_double), ("fsync", c_int), ("keep", c_int),
                ("io_threads", c_int), ("ttl_s", c_double), ("stripe_bytes", c_uint32),
                ("shared", c_int), ("settle_s", c_double), ("prefill_tp", c_int),
                ("prefill_pp", c_int), ("decode_tp", c_int)]


class kvx_boot_desc(Structure):
    _fields_ = [("host", c_char_p), ("port", c_int), ("heartbeat_interval_s", c_double),
                ("heartbeat_max_failure", c_int), ("rank_ip", c_char_p),
                ("tp_size", c_int), ("tp_rank", c_int), ("dp_size", c_int), ("dp_rank", c_int),
                ("pp_size", c_int), ("pp_rank", c_int), ("cp_size", c_int), ("cp_rank", c_int),
                ("load_balance_method", c_char_p), ("server", c_char_p)]


class kvx_tcp_desc(Structure):
    _fields_ = [("streams", c_int), ("host", c_char_p), ("segment", c_int), ("sockbuf", c_int),
                ("timeout_s", c_double)]


class kvx_rdma_desc(Structure):
    _fields_ = [("devices", c_char_p), ("gid_index", c_int), ("qps", c_int),
                ("library", c_char_p), ("max_msg", c_int), ("signal_every", c_int),
                ("send_depth", c_int), ("recv_depth", c_int), ("timeout", c_int),
                ("retry_cnt", c_int), ("rnr_retry", c_int), ("sl", c_int),
                ("traffic_class", c_int), ("relaxed_ordering", c_int),
                ("connect_timeout_s", c_double), ("fence_timeout_s", c_double)]


class kvx_engine_desc(Structure):
    _fields_ = [("role", c_enum), ("transport", c_char_p), ("backend", c_void_p),
                ("layout", kvx_layout), ("allocator", kvx_allocator), ("logger", kvx_logger),
                ("waiting_timeout_s", c_double), ("bootstrap_timeout_s", c_double),
                ("poll_interval_us", c_uint32), ("rank", c_int), ("bootstrap_addr", c_char_p),
                ("mem", kvx_mem_ops), ("auth_key", c_char_p), ("auth_key_file", c_char_p),
                ("file", kvx_file_desc), ("boot", kvx_boot_desc), ("tcp", kvx_tcp_desc),
                ("rdma", kvx_rdma_desc)]


class kvx_room_desc(Structure):
    _fields_ = [("room", c_uint64), ("bootstrap_addr", c_char_p)]


class kvx_engine_stats(Structure):
    _fields_ = [("rooms_created", c_uint64), ("rooms_succeeded", c_uint64),
                ("rooms_failed", c_uint64), ("bytes", c_uint64)]


class kvx_store_key(Structure):
    _fields_ = [("bytes", c_uint8 * 32)]


class kvx_store_desc(Structure):
    _fields_ = [("dir", c_char_p), ("model", c_char_p), ("layout", kvx_layout),
                ("tp_rank", c_int), ("tp_size", c_int), ("capacity_bytes", c_uint64),
                ("io_threads", c_int), ("fsync", c_int), ("allocator", kvx_allocator),
                ("logger", kvx_logger), ("shared", c_int), ("scan_interval", c_double)]


class kvx_store_stats(Structure):
    _fields_ = [(n, c_uint64) for n in (
        "hits", "misses", "corrupt", "evictions", "puts", "put_present", "errors",
        "bytes_written", "bytes_read", "blocks", "bytes_used", "capacity", "scans",
        "last_scan_ns", "scan_found", "scan_gone")]


# Every structure above, by its C name (the layout test walks this).
STRUCTS = {cls.__name__: cls for cls in (
    kvx_buffer, kvx_aux_buffer, kvx_layout, kvx_allocator, kvx_logger, kvx_mem_ops, kvx_cuda_desc,
    kvx_file_desc, kvx_boot_desc, kvx_tcp_desc, kvx_rdma_desc, kvx_engine_desc, kvx_room_desc,
    kvx_engine_stats, kvx_store_key, kvx_store_desc, kvx_store_stats)}

_P32 = POINTER(c_int32)
_PROTOS = {
    # name: (restype, argtypes)
    "kvx_result_str": (c_char_p, [c_int]),
    "kvx_poll_str": (c_char_p, [c_int]),
    "kvx_layout_validate": (c_int, [POINTER(kvx_layout), c_char_p, c_size_t]),
    "kvx_layout_num_pages": (c_uint64, [POINTER(kvx_layout)]),
    "kvx_layout_page_bytes": (c_uint64, [POINTER(kvx_layout)]),
    "kvx_layout_fingerprint": (c_uint64, [POINTER(kvx_layout)]),
    "kvx_file_register": (c_int, []),
    "kvx_tcp_register": (c_int, []),
    "kvx_rdma_register": (c_int, []),
    "kvx_cuda_register": (c_int, []),
    "kvx_cuda_mem_ops": (c_int, [POINTER(kvx_mem_ops), POINTER(kvx_cuda_desc), c_char_p,
                                 c_size_t]),
    "kvx_cuda_mem_ops_release": (None, [POINTER(kvx_mem_ops)]),
    "kvx_boot_register": (c_int, []),
    "kvx_engine_create": (c_int, [POINTER(kvx_engine_desc), POINTER(c_void_p), c_char_p,
                                  c_size_t]),
    "kvx_engine_destroy": (None, [c_void_p]),
    "kvx_engine_transport": (c_char_p, [c_void_p]),
    "kvx_engine_stats_get": (None, [c_void_p, POINTER(kvx_engine_stats)]),
    "kvx_sender_create": (c_int, [c_void_p, POINTER(kvx_room_desc), POINTER(c_void_p)]),
    "kvx_sender_init": (c_int, [c_void_p, c_uint32, c_int32]),
    "kvx_sender_send": (c_int, [c_void_p, _P32, c_uint32]),
    "kvx_sender_send_layers": (c_int, [c_void_p, _P32, c_uint32, c_uint32, c_uint32]),
    "kvx_sender_send_state": (c_int, [c_void_p, _P32, c_uint32, _P32, c_uint32]),
    "kvx_receiver_create": (c_int, [c_void_p, POINTER(kvx_room_desc), POINTER(c_void_p)]),
    "kvx_receiver_init": (c_int, [c_void_p, _P32, c_uint32, c_int32]),
    "kvx_receiver_init_state": (c_int, [c_void_p, _P32, c_uint32, c_int32, _P32, c_uint32]),
    "kvx_store_open": (c_int, [POINTER(kvx_store_desc), POINTER(c_void_p), c_char_p, c_size_t]),
    "kvx_store_close": (None, [c_void_p]),
    "kvx_store_batch_put": (c_int, [c_void_p, POINTER(kvx_store_key), _P32, c_size_t,
                                    POINTER(c_int)]),
    "kvx_store_batch_get": (c_int, [c_void_p, POINTER(kvx_store_key), _P32, c_size_t,
                                    POINTER(c_size_t)]),
    "kvx_store_batch_exists": (c_size_t, [c_void_p, POINTER(kvx_store_key), c_size_t]),
    "kvx_store_remove": (c_int, [c_void_p, POINTER(kvx_store_key)]),
    "kvx_store_stats_get": (None, [c_void_p, POINTER(kvx_store_stats)]),
    "kvx_store_dir": (c_char_p, [c_void_p]),
    "kvx_store_load_begin": (c_int, [c_void_p, POINTER(kvx_store_key), _P32, c_size_t,
                                     POINTER(c_void_p)]),
    "kvx_store_load_num_layers": (c_uint32, [c_void_p]),
    "kvx_store_load_wait_layer": (c_int, [c_void_p, c_uint32, c_int]),
    "kvx_store_load_layers_done": (c_uint32, [c_void_p]),
    "kvx_store_load_error": (c_char_p, [c_void_p]),
    "kvx_store_load_call_error": (c_char_p, [c_void_p]),
    "kvx_store_load_end": (c_int, [c_void_p, POINTER(c_size_t)]),
    "kvx_store_page_keys": (c_size_t, [POINTER(c_uint32), c_size_t, c_uint32,
                                       POINTER(kvx_store_key), POINTER(kvx_store_key),
                                       c_size_t]),
}
# the calls sender and receiver share, by name
_PROTOS.update({f"kvx_{side}_{name}": proto for side in ("sender", "receiver")
                for name, proto in (("poll", (c_int, [c_void_p])),
                                    ("wait", (c_int, [c_void_p, c_int, c_int])),
                                    ("result", (c_int, [c_void_p])),
                                    ("error", (c_char_p, [c_void_p])),
                                    ("call_error", (c_char_p, [c_void_p])),
                                    ("abort", (None, [c_void_p, c_char_p])),
                                    ("destroy", (None, [c_void_p])))})


def _find() -> str:
    env = os.environ.get("KVX_PY_LIBRARY")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    found = sorted(glob.glob(os.path.join(here, "_libkvx*.so")))
    if not found:
        raise ImportError("kvx: the compiled library (kvx/_libkvx*.so) is missing next to "
                          f"{here}; install the package with `pip install ./python`")
    return found[0]


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL(_find())
    for name, (res, args) in _PROTOS.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args
    for reg in ("kvx_file_register", "kvx_tcp_register", "kvx_rdma_register",
                "kvx_cuda_register"):
        getattr(lib, reg)()
    return lib


lib = _load()
__all__ = ["lib", "STRUCTS", "KVX_ERROR_MAX"] + list(STRUCTS)
