"""The enclave.v1 Inference and Admin services: check the call, hand it to a model's engine,
send back what it generates, and account for it (metrics, one audit line).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from enclave.v1 import inference_pb2 as pb
from enclave.v1 import inference_pb2_grpc as rpc
from serve import requests
from serve.audit import Audit
from serve.auth import Caller
from serve.backends.base import Event, Job
from serve.config import ServeConfig
from serve.errors import ResourceExhausted, ServeError
from serve.gate import Gate
from serve.metrics import Metrics
from serve.models import Models, Served

FINISH = {"stop": pb.FINISH_REASON_STOP, "length": pb.FINISH_REASON_LENGTH, "stop_sequence": pb.FINISH_REASON_STOP_SEQUENCE,
          "context_limit": pb.FINISH_REASON_CONTEXT_LIMIT}  # fmt: skip


def _merge(a: Event, b: Event) -> Event:
    """Two consecutive events of one request as one."""
    return Event(a.token_ids + b.token_ids, a.text + b.text, finish=b.finish, error=b.error)


class _Call:
    """One generation call: its job, and the accounting when it ends.

    ``await _Call.open(...)`` checks the request, counts it against the caller's limit and
    tokenizes it off the event loop; ``events()`` then runs it and releases the caller's slot.
    """

    def __init__(self, svc: InferenceService, request: pb.GenerateRequest, context, caller: Caller) -> None:
        self.svc, self.context, self.caller = svc, context, caller
        # A caller without a token does not choose the id its call is audited under.
        self.request_id = requests.request_id(request.request_id if caller.authenticated else "")
        self.served: Served = svc.models.get(request.model, request.model_version)
        self.caller.check_model(self.served.name)
        svc.models.check_adapter(self.served, request.adapter)
        self.limits = svc.cfg.limits
        self.sampling = requests.sampling(request.sampling, self.limits)
        requests.check_bytes(request, self.served.tokenizer, self.limits.max_prompt_tokens)
        self.job: Job | None = None
        self.entered = False
        self.finish: str | None = None
        self.last_token: float | None = None

    @classmethod
    async def open(cls, svc: InferenceService, request: pb.GenerateRequest, context, caller: Caller) -> _Call:
        call = cls(svc, request, context, caller)
        svc.gate.enter(caller)
        call.entered = True
        try:
            ids = await svc.off_loop(requests.prompt_ids, request, call.served.tokenizer)
            requests.check_prompt(ids, call.served.context_length, call.limits)
        except BaseException:
            call.release()
            raise
        remaining = context.time_remaining()
        call.job = Job(call.request_id, ids, call.sampling, adapter=request.adapter or None,
                       deadline=time.monotonic() + remaining if remaining is not None else None,
                       loop=asyncio.get_running_loop(), queue=asyncio.Queue())  # fmt: skip
        return call

    def release(self) -> None:
        if self.entered:
            self.entered = False
            self.svc.gate.leave(self.caller)

    async def events(self):
        """Submit the job and yield its events; a cancelled or failed call frees its slot."""
        engine = self.served.engine
        try:
            engine.submit(self.job)
            while True:
                event: Event = await self.job.queue.get()
                while not self.job.queue.empty() and event.finish is None and event.error is None:
                    event = _merge(event, self.job.queue.get_nowait())  # a slow reader gets fewer, larger messages
                if event.error is not None:
                    raise event.error
                self._timing(event)
                yield event
                if event.finish:
                    self.finish = event.finish
                    return
        finally:
            self.release()
            if self.finish is None:
                engine.cancel(self.job)

    def _timing(self, event: Event) -> None:
        if not event.token_ids:
            return
        now = time.monotonic()
        m, labels = self.svc.metrics, (self.served.name, self.job.adapter or "")
        if self.last_token is None:
            m.ttft.labels(*labels).observe(now - self.job.arrived)
            if self.job.started is not None:
                m.queue.labels(*labels).observe(self.job.started - self.job.arrived)
            self.itl = m.itl.labels(*labels)
        else:
            self.itl.observe((now - self.last_token) / len(event.token_ids))
        self.last_token = now

    def usage(self) -> tuple[pb.Usage, pb.Timings]:
        job, end = self.job, self.job.finished or time.monotonic()
        first = job.first_token or end
        decode = end - first
        timings = pb.Timings(queue_seconds=(job.started or end) - job.arrived, time_to_first_token_seconds=first - job.arrived,
                             total_seconds=end - job.arrived, decode_tokens_per_second=job.generated / decode if decode > 0 else 0.0)  # fmt: skip
        return pb.Usage(prompt_tokens=len(job.prompt_ids), completion_tokens=job.generated), timings

    def record(self, code: grpc.StatusCode) -> None:
        job, m = self.job, self.svc.metrics
        labels = (self.served.name, job.adapter or "")
        m.requests.labels(*labels, code.name).inc()
        m.prompt_tokens.labels(*labels).inc(len(job.prompt_ids))
        m.generation_tokens.labels(*labels).inc(job.generated)
        m.prompt_len.labels(*labels).observe(len(job.prompt_ids))
        if self.finish:
            m.output_len.labels(*labels).observe(job.generated)
            if self.finish == "context_limit":
                m.context_limit.labels(*labels).inc()
            m.e2e.labels(*labels).observe((job.finished or time.monotonic()) - job.arrived)
        self.svc.audit.record(request_id=self.request_id, token=self.caller.id, model=self.served.name,
                              version=self.served.version.version, adapter=job.adapter or "", prompt_tokens=len(job.prompt_ids),
                              completion_tokens=job.generated, status=code.name, finish=self.finish or "",
                              latency_seconds=round(time.monotonic() - job.arrived, 4))  # fmt: skip


class InferenceService(rpc.InferenceServicer):
    def __init__(self, cfg: ServeConfig, models: Models, gate: Gate, metrics: Metrics, audit: Audit) -> None:
        self.cfg, self.models, self.gate, self.metrics, self.audit = cfg, models, gate, metrics, audit
        # Tokenizing and chat templating run here, never on the event loop: a long prompt must not
        # stall other calls or the health checks. One worker: the engines own the other cores.
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")

    async def off_loop(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def _accounted(self, call: _Call, body):
        code = grpc.StatusCode.OK
        try:
            async for item in body:
                yield item
        except ServeError as exc:
            code = exc.code
            raise
        except asyncio.CancelledError:  # the caller went away, or its deadline passed
            late = call.job.deadline is not None and time.monotonic() >= call.job.deadline
            code = grpc.StatusCode.DEADLINE_EXCEEDED if late else grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            raise
        finally:
            call.record(code)

    async def _call(self, request, context) -> _Call:
        """Check the request; a refused one is still counted and audited (at a bounded rate without a token)."""
        caller = None
        try:
            caller = self.gate.caller(context)
            return await _Call.open(self, request, context, caller)
        except ServeError as exc:
            model = request.model or self.models.default or ""
            served = self.models.active.get(model)
            # Only names the server holds become labels: a caller's unknown name is neither exported
            # (metrics cardinality, and it may be text the caller meant to keep) nor audited.
            adapter = request.adapter if served is not None and (not request.adapter or request.adapter in served.adapters) else "unknown"
            labels = (model if served is not None else "unknown", adapter if served is not None else "")
            self.metrics.requests.labels(*labels, exc.code.name).inc()
            trusted = caller is not None and caller.authenticated
            self.gate.audit_refusal(self.audit, trusted, request_id=request.request_id[:128] if trusted else requests.request_id(""),
                                    token=caller.id if caller is not None else "", model=labels[0], adapter=labels[1],
                                    status=exc.code.name)  # fmt: skip
            raise

    async def Generate(self, request, context):
        call = await self._call(request, context)
        ids, text = [], []
        async for event in self._accounted(call, call.events()):
            ids.extend(event.token_ids)
            text.append(event.text)
        usage, timings = call.usage()
        s = call.served
        return pb.GenerateResponse(request_id=call.request_id, text="".join(text), token_ids=ids, finish_reason=FINISH[call.finish],
                                   usage=usage, timings=timings, model=s.name, model_version=s.version.version, adapter=request.adapter)  # fmt: skip

    async def GenerateStream(self, request, context):
        call = await self._call(request, context)
        async for event in self._accounted(call, call.events()):
            message = pb.GenerateStreamResponse(request_id=call.request_id, token_ids=event.token_ids, text=event.text)
            if event.finish:
                usage, timings = call.usage()
                message.usage.CopyFrom(usage)
                message.timings.CopyFrom(timings)
                message.finish_reason = FINISH[event.finish]
            yield message

    async def _tokenize(self, request, context) -> tuple[Served, list[int]]:
        caller = self.gate.caller(context)
        served = self.models.get(request.model, request.model_version)
        caller.check_model(served.name)
        most = self.cfg.limits.max_prompt_tokens * 4
        requests.check_bytes(request, served.tokenizer, most, text_field="text")
        self.gate.enter(caller)  # counted like any call: a flood of Tokenize calls has the same limit
        try:
            ids = await self.off_loop(requests.prompt_ids, request, served.tokenizer, "text")
        finally:
            self.gate.leave(caller)
        if len(ids) > most:
            raise ResourceExhausted(f"text: {len(ids)} tokens; this server tokenizes at most {most}")
        return served, ids

    async def Tokenize(self, request, context):
        served, ids = await self._tokenize(request, context)
        return pb.TokenizeResponse(token_ids=ids, tokens=await self.off_loop(served.tokenizer.pieces, ids))

    async def CountTokens(self, request, context):
        served, ids = await self._tokenize(request, context)
        return pb.CountTokensResponse(count=len(ids), context_length=served.context_length)

    async def ListModels(self, request, context):
        caller = self.gate.caller(context)
        out = []
        order = [self.models.default] + [n for n in self.models.active if n != self.models.default]
        for name in order:
            if caller.models is not None and name not in caller.models:
                continue
            s = self.models.active[name]
            versions = [pb.ModelVersion(version=v.version, digest=v.manifest.digest, active=v.version == s.version.version)
                        for v in self.models.repo.versions(name)]  # fmt: skip
            adapters = [pb.AdapterInfo(name=a, digest=d) for a, d in sorted(s.adapters.items())]
            out.append(pb.ModelInfo(name=name, versions=versions, adapters=adapters, backend=s.backend,
                                    context_length=s.context_length, kind=s.version.manifest.kind))  # fmt: skip
        return pb.ListModelsResponse(models=out)


class AdminService(rpc.AdminServicer):
    def __init__(self, models: Models, gate: Gate, audit: Audit) -> None:
        self.models, self.gate, self.audit = models, gate, audit

    def _admin(self, context, rpc_name: str) -> Caller:
        """The caller, if it holds an admin token; a refusal is audited (without the names the caller sent)."""
        caller = None
        try:
            caller = self.gate.caller(context)
            caller.check_admin()
            return caller
        except ServeError as exc:
            trusted = caller is not None and caller.authenticated
            self.gate.audit_refusal(self.audit, trusted, admin=rpc_name, token=caller.id if caller is not None else "", status=exc.code.name)
            raise

    async def LoadAdapter(self, request, context):
        caller = self._admin(context, "LoadAdapter")
        digest, seconds = await self.models.load_adapter(request.model, request.adapter)
        self.audit.record(admin="LoadAdapter", token=caller.id, model=request.model or self.models.default, adapter=request.adapter, digest=digest)
        return pb.LoadAdapterResponse(adapter=pb.AdapterInfo(name=request.adapter, digest=digest), load_seconds=seconds)

    async def UnloadAdapter(self, request, context):
        caller = self._admin(context, "UnloadAdapter")
        await self.models.unload_adapter(request.model, request.adapter)
        self.audit.record(admin="UnloadAdapter", token=caller.id, model=request.model or self.models.default, adapter=request.adapter)
        return pb.UnloadAdapterResponse()
