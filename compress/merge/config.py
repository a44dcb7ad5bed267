"""Settings of the merge step; registering them here makes `enclave compress merge` and the
``step: merge`` recipe entry (``compress.registry``)."""

from __future__ import annotations

from typing import Literal

from compress.registry import register
from compress.settings import Step


@register(
    "merge", module="compress.merge.run", order=10, help="fold a LoRA adapter into its base (PEFT merge_and_unload)"
)
class MergeSettings(Step):
    """Fold a LoRA adapter into its base (PEFT merge_and_unload)."""

    step: Literal["merge"] = "merge"
    adapter: str
    """The adapter (from `enclave tune`) to merge: a path, or a name in $ENCLAVE_HOME/adapters."""
