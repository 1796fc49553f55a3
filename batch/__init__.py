"""cpis-batch: nightly CP-IS pre-checks of clinic lists against NHS Spine.

Importing the package sets one process-wide default, before anything imports polars: the allocator polars
brings (jemalloc) returns freed memory to the system at once, where polars' own setting keeps it for up to
1.5 s (still counted as the process's memory). A run builds and drops several frames of every child within
seconds when it writes its reports, and kept, that memory added up to its peak (a 100,000-child report
phase: +172 MiB kept, +127 MiB returned at once; see docs/decisions.md#d27). An operator's own
`_RJEM_MALLOC_CONF` wins; polars' own, inherited from a parent process that imported it, does not.
"""

import os

# What polars writes into the environment when it is imported: a process started by a Python program that
# uses polars inherits it, and it is no operator's choice.
_POLARS_OWN = "dirty_decay_ms:500,muzzy_decay_ms:1000"

if os.environ.get("_RJEM_MALLOC_CONF", _POLARS_OWN) == _POLARS_OWN:
    os.environ["_RJEM_MALLOC_CONF"] = "dirty_decay_ms:0,muzzy_decay_ms:0"
