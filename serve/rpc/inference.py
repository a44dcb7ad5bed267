"""The enclave.v1 Inference service: translate its messages to and from admission and calls.

Each handler only translates: ``serve.admission.Admission`` checks, counts and audits the call,
``serve.call.Call`` runs it on the model's engine and accounts for it.
"""

from __future__ import annotations

from enclave.v1 import inference_pb2 as pb
from enclave.v1 import inference_pb2_grpc as rpc
from serve.admission import Admission
from serve.call import Call
from serve.models import Models

FINISH = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "stop_sequence": pb.FINISH_REASON_STOP_SEQUENCE,
    "context_limit": pb.FINISH_REASON_CONTEXT_LIMIT,
}


def usage(call: Call) -> tuple[pb.Usage, pb.Timings]:
    """A call's token counts and timings as enclave.v1 messages."""
    u = call.usage()
    timings = pb.Timings(
        queue_seconds=u.queue_seconds,
        time_to_first_token_seconds=u.time_to_first_token_seconds,
        total_seconds=u.total_seconds,
        decode_tokens_per_second=u.decode_tokens_per_second,
    )
    return pb.Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens), timings


def token_logprobs(entries, tokenizer) -> list[pb.TokenLogprob]:
    """The engine's log-probabilities as enclave.v1 messages, each token with its text."""
    return [
        pb.TokenLogprob(
            token_id=e.token_id,
            token=tokenizer.pieces([e.token_id])[0],
            logprob=e.logprob,
            top=[
                pb.TokenAlternative(token_id=i, token=piece, logprob=lp)
                for (i, lp), piece in zip(e.top, tokenizer.pieces([i for i, _ in e.top]))
            ],
        )
        for e in entries
    ]


class InferenceService(rpc.InferenceServicer):
    """Generate, GenerateStream, Tokenize, CountTokens and ListModels."""

    def __init__(self, admission: Admission, models: Models) -> None:
        self.admission, self.models = admission, models

    async def Generate(self, request, context):
        call = await self.admission.open(request, context)
        ids, text, logprobs = [], [], []
        async for event in call.accounted(call.events()):
            ids.extend(event.token_ids)
            text.append(event.text)
            logprobs.extend(event.logprobs or ())
        u, timings = usage(call)
        s = call.served
        return pb.GenerateResponse(
            request_id=call.request_id,
            text="".join(text),
            token_ids=ids,
            finish_reason=FINISH[call.finish],
            usage=u,
            timings=timings,
            model=s.name,
            model_version=s.version.version,
            adapter=call.job.adapter or "",  # NAME@VERSION for a versioned adapter
            logprobs=token_logprobs(logprobs, s.tokenizer),
        )

    async def GenerateStream(self, request, context):
        call = await self.admission.open(request, context)
        async for event in call.accounted(call.events()):
            message = pb.GenerateStreamResponse(request_id=call.request_id, token_ids=event.token_ids, text=event.text)
            if event.logprobs:
                message.logprobs.extend(token_logprobs(event.logprobs, call.served.tokenizer))
            if event.finish:
                u, timings = usage(call)
                message.usage.CopyFrom(u)
                message.timings.CopyFrom(timings)
                message.finish_reason = FINISH[event.finish]
                message.model, message.model_version = call.served.name, call.served.version.version
                message.adapter = call.job.adapter or ""
            yield message

    async def Tokenize(self, request, context):
        served, ids = await self.admission.tokenize(request, context)
        return pb.TokenizeResponse(token_ids=ids, tokens=await self.admission.off_loop(served.tokenizer.pieces, ids))

    async def CountTokens(self, request, context):
        served, ids = await self.admission.tokenize(request, context)
        return pb.CountTokensResponse(count=len(ids), context_length=served.context_length)

    async def ListModels(self, request, context):
        caller = self.admission.reader(context)
        out = []
        order = [self.models.default] + [n for n in self.models.active if n != self.models.default]
        for name in order:
            if caller.models is not None and name not in caller.models:
                continue
            s = self.models.active[name]
            versions = [
                pb.ModelVersion(version=v.version, digest=v.manifest.digest, active=v.version == s.version.version)
                for v in self.models.repo.versions(name)
            ]
            adapters = [pb.AdapterInfo(name=a, digest=d) for a, d in sorted(s.adapters.items())]
            out.append(
                pb.ModelInfo(
                    name=name,
                    versions=versions,
                    adapters=adapters,
                    backend=s.backend,
                    context_length=s.context_length,
                    kind=s.version.manifest.kind,
                )
            )
        return pb.ListModelsResponse(models=out)
