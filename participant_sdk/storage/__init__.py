"""The SDK's storage layer: one key-value transaction interface (``kv``) with three
implementations (``MemoryKv``, ``LmdbKv``, ``LoggedLmdbKv``), and the table layouts
over it: the participant store's records (``records``, ``writer``), agent checkpoints
(``checkpoint_format``, ``checkpoint_cache``) and effect records (``effect_records``).
``offline`` reads a participant's data dir from outside it (``concord audit``)."""

from participant_sdk.storage.kv import KvStore, Names, StorageError, Tx
from participant_sdk.storage.lmdbkv import LmdbKv, lock_data_dir
from participant_sdk.storage.logged import LoggedLmdbKv
from participant_sdk.storage.memory import MemoryKv

__all__ = [
    "KvStore",
    "LmdbKv",
    "LoggedLmdbKv",
    "MemoryKv",
    "Names",
    "StorageError",
    "Tx",
    "lock_data_dir",
]
