"""kvx inside SGLang: a PD transfer backend (kvx.sglang.conn) and a HiCache
storage backend (kvx.sglang.hicache).

The transfer backend reaches a stock SGLang through SGLang's general plugin
mechanism: this package declares the entry point ``kvx = kvx.sglang:register``
in the group ``sglang.srt.plugins``; with ``SGLANG_PLUGINS=kvx`` (or no
SGLANG_PLUGINS at all) every SGLang process calls register(), which

  * adds "kvx" to the choices of --disaggregation-transfer-backend,
  * adds the member TransferBackend.KVX ("kvx"), and
  * wraps sglang.srt.disaggregation.utils.get_kv_class (an AROUND hook of
    SGLang's HookRegistry, which also patches the modules that imported it)
    so that TransferBackend.KVX maps to the kvx classes.

Importing this package imports nothing of SGLang; register() does.
"""
from typing import Any

__all__ = ["register", "kv_class"]


def _add_enum_member(enum_cls: Any, name: str, value: str) -> Any:
    """Adds a member to an existing Enum (SGLang's TransferBackend is closed)."""
    found = enum_cls._value2member_map_.get(value)
    if found is not None:
        return found
    member = object.__new__(enum_cls)
    member._name_, member._value_ = name, value
    try:
        member.__objclass__ = enum_cls
    except AttributeError:  # pragma: no cover - older Pythons
        pass
    type.__setattr__(enum_cls, name, member)
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[value] = member
    enum_cls._member_names_.append(name)
    return member


def kv_class(class_type: Any) -> Any:
    """The kvx class for one of SGLang's KVClassType members (None for a type
    kvx does not provide)."""
    from sglang.srt.disaggregation.base.conn import KVArgs
    from sglang.srt.disaggregation.utils import KVClassType

    from . import conn
    return {
        KVClassType.KVARGS: KVArgs,
        KVClassType.MANAGER: conn.KvxKVManager,
        KVClassType.SENDER: conn.KvxKVSender,
        KVClassType.RECEIVER: conn.KvxKVReceiver,
        KVClassType.BOOTSTRAP_SERVER: conn.KvxKVBootstrapServer,
    }.get(class_type)


def _get_kv_class(original_fn: Any, transfer_backend: Any, class_type: Any, *a: Any,
                  **kw: Any) -> Any:
    if getattr(transfer_backend, "value", transfer_backend) == "kvx":
        return kv_class(class_type)
    return original_fn(transfer_backend, class_type, *a, **kw)


_registered = False


def register() -> None:
    """SGLang's plugin entry point (group sglang.srt.plugins). Idempotent."""
    global _registered
    if _registered:
        return
    from sglang.srt.arg_groups.choices import DISAGG_TRANSFER_BACKEND_CHOICES
    from sglang.srt.disaggregation import utils
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    if "kvx" not in DISAGG_TRANSFER_BACKEND_CHOICES:
        DISAGG_TRANSFER_BACKEND_CHOICES.append("kvx")
    _add_enum_member(utils.TransferBackend, "KVX", "kvx")
    HookRegistry.register("sglang.srt.disaggregation.utils.get_kv_class", _get_kv_class,
                          HookType.AROUND)
    _registered = True
