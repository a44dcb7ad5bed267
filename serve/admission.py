"""Admission: everything between an rpc handler and an engine.

Identify the caller (``serve.gate.Gate``), check the request against the model table and the
server's limits (``serve.requests``), count it against the caller's share, tokenize it off the
event loop, and make the ``Job`` an engine runs. A refused call is still counted and audited; an
admitted one is a ``serve.call.Call`` that accounts for itself when it ends. The API layer
(``serve.rpc``) only translates messages: no auth, limit, metric or audit logic lives there.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from serve import requests
from serve.audit import Audit
from serve.auth import Caller
from serve.call import Call
from serve.config import ServeConfig
from serve.errors import InvalidArgument, OutOfRange, ServeError
from serve.feedback.capture import Capture
from serve.gate import Gate
from serve.job import Job
from serve.metrics import Metrics
from serve.models import Models, Served


class Admission:
    """The one place for auth, limits, audit and metrics of every call."""

    def __init__(
        self, cfg: ServeConfig, models: Models, gate: Gate, metrics: Metrics, audit: Audit, feedback: Capture
    ) -> None:
        self.cfg, self.models, self.gate, self.metrics, self.audit = cfg, models, gate, metrics, audit
        self.feedback = feedback
        # Tokenizing and chat templating run here, never on the event loop: a long prompt must not
        # stall other calls or the health checks. One worker: the engines own the other cores.
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")

    async def off_loop(self, fn, *args):
        """Run ``fn(*args)`` on the tokenizer thread."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def close(self) -> None:
        """Stop the tokenizer thread (calls waiting on it are cancelled)."""
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def open(self, request, context, api: str = "grpc") -> Call:
        """Admit a GenerateRequest, or raise the ServeError that refuses it (counted and audited).

        Args:
            request: the ``enclave.v1.GenerateRequest``.
            context: the call's context (metadata for the caller, its deadline, its peer).
            api: which API the call came through, "grpc" or "http" (a metrics label).

        Returns:
            A ``Call`` holding one of the caller's slots and its ``Job``, not yet submitted.
        """
        caller = None
        try:
            caller = self.gate.caller(context)
            return await self._open(request, context, caller, api)
        except ServeError as exc:
            self.refused(request, caller, exc, api)
            raise

    async def _open(self, request, context, caller: Caller, api: str) -> Call:
        # A caller without a token does not choose the id its call is audited under.
        request_id = requests.request_id(request.request_id if caller.authenticated else "")
        served: Served = self.models.get(request.model, request.model_version)
        caller.check_model(served.name)
        self.models.check_adapter(served, request.adapter)
        limits = self.cfg.limits
        sampling = requests.sampling(request.sampling, limits)
        requests.check_bytes(request, served.tokenizer, limits.max_prompt_tokens)
        if len(request.user) > 256:
            raise InvalidArgument(f"user: {len(request.user)} characters; at most 256")
        call = Call(self, served, caller, request_id, api)
        call.user = request.user
        if self.feedback.captures(served.name):  # kept for reviewers, sealed (serve.feedback)
            call.prompt = (
                [{"role": m.role, "content": m.content} for m in request.chat.messages]
                if request.HasField("chat")
                else request.prompt
            )
        self.gate.enter(caller)
        call.entered = True
        try:
            ids = await self.off_loop(requests.prompt_ids, request, served.tokenizer)
            requests.check_prompt(ids, served.context_length, limits)
        except BaseException:
            call.release()
            raise
        remaining = context.time_remaining()
        call.job = Job(
            request_id,
            ids,
            sampling,
            adapter=self.models.route(served, request.adapter, request_id),  # a version of a versioned one
            deadline=time.monotonic() + remaining if remaining is not None else None,
            loop=asyncio.get_running_loop(),
            queue=asyncio.Queue(),
        )
        return call

    def refused(self, request, caller: Caller | None, exc: ServeError, api: str = "grpc") -> None:
        """Count and audit a refused call (also one refused before admission: a bad OpenAI body)."""
        model = request.model or self.models.default or ""
        served = self.models.active.get(model)
        # Only names the server holds become labels: a caller's unknown name is neither exported
        # (metrics cardinality, and it may be text the caller meant to keep) nor audited.
        adapter = (
            request.adapter
            if served is not None and (not request.adapter or request.adapter in served.adapters)
            else "unknown"
        )
        labels = (model if served is not None else "unknown", adapter if served is not None else "")
        self.metrics.requests.labels(*labels, exc.code.name, "", api).inc()
        trusted = caller is not None and caller.authenticated
        self.gate.audit_refusal(
            self.audit,
            trusted,
            request_id=request.request_id[:128] if trusted else requests.request_id(""),
            token=caller.id if caller is not None else "",
            model=labels[0],
            adapter=labels[1],
            status=exc.code.name,
        )

    async def tokenize(self, request, context) -> tuple[Served, list[int]]:
        """Token ids of a TokenizeRequest's text, counted against the caller's share like any call."""
        caller = self.gate.caller(context)
        served = self.models.get(request.model, request.model_version)
        caller.check_model(served.name)
        most = self.cfg.limits.max_prompt_tokens * 4
        requests.check_bytes(request, served.tokenizer, most, text_field="text")
        self.gate.enter(caller)  # a flood of Tokenize calls has the same limit
        try:
            ids = await self.off_loop(requests.prompt_ids, request, served.tokenizer, "text")
        finally:
            self.gate.leave(caller)
        if len(ids) > most:
            raise OutOfRange(f"text: {len(ids)} tokens; this server tokenizes at most {most}")
        return served, ids

    def reader(self, context) -> Caller:
        """The caller of a read-only call (ListModels)."""
        return self.gate.caller(context)

    def admin(self, context, rpc_name: str) -> Caller:
        """The caller, if it holds an admin token; a refusal is audited (without the names the caller sent)."""
        return self._privileged(context, Caller.check_admin, admin=rpc_name)

    def reviewer(self, context) -> Caller:
        """The caller, if it holds a reviewer token; a refusal is audited as the admin ones are."""
        return self._privileged(context, Caller.check_reviewer, feedback="refused")

    def _privileged(self, context, check, **what) -> Caller:
        caller = None
        try:
            caller = self.gate.caller(context)
            check(caller)
            return caller
        except ServeError as exc:
            trusted = caller is not None and caller.authenticated
            self.gate.audit_refusal(
                self.audit, trusted, **what, token=caller.id if caller is not None else "", status=exc.code.name
            )
            raise
