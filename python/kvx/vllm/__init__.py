"""kvx inside vLLM.

* ``KvxConnector`` (kvx.vllm.connector): a KV connector for prefill/decode
  disaggregation, loaded out of tree::

      --kv-transfer-config '{"kv_connector": "KvxConnector",
                             "kv_connector_module_path": "kvx.vllm",
                             "kv_role": "kv_both"}'

* ``KvxOffloadingSpec`` (kvx.vllm.offload): a backend of vLLM's
  OffloadingConnector that keeps blocks in a kvx_store directory::

      --kv-transfer-config '{"kv_connector": "OffloadingConnector",
          "kv_role": "kv_both",
          "kv_connector_extra_config": {"spec_name": "KvxOffloadingSpec",
              "spec_module_path": "kvx.vllm", "kvx_dir": "/mnt/kv"}}'

Both import vLLM lazily (on first use of the name), so ``import kvx.vllm``
works where vLLM is absent until a class is asked for.
"""
from typing import Any

__all__ = ["KvxConnector", "KvxConnectorMetadata", "KvxOffloadingSpec"]


def __getattr__(name: str) -> Any:
    if name in ("KvxConnector", "KvxConnectorMetadata"):
        from . import connector
        return getattr(connector, name)
    if name == "KvxOffloadingSpec":
        from . import offload
        return offload.KvxOffloadingSpec
    raise AttributeError(f"module 'kvx.vllm' has no attribute {name!r}")
