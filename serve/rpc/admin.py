"""The enclave.v1 Admin service: load and unload adapters on a running server (admin tokens only)."""

from __future__ import annotations

from enclave.v1 import inference_pb2 as pb
from enclave.v1 import inference_pb2_grpc as rpc
from serve.admission import Admission
from serve.models import Models


class AdminService(rpc.AdminServicer):
    """LoadAdapter and UnloadAdapter; each change is one audit line."""

    def __init__(self, admission: Admission, models: Models) -> None:
        self.admission, self.models, self.audit = admission, models, admission.audit

    async def LoadAdapter(self, request, context):
        caller = self.admission.admin(context, "LoadAdapter")
        digest, seconds = await self.models.load_adapter(request.model, request.adapter)
        self.audit.record(
            admin="LoadAdapter",
            token=caller.id,
            model=request.model or self.models.default,
            adapter=request.adapter,
            digest=digest,
        )
        return pb.LoadAdapterResponse(adapter=pb.AdapterInfo(name=request.adapter, digest=digest), load_seconds=seconds)

    async def UnloadAdapter(self, request, context):
        caller = self.admission.admin(context, "UnloadAdapter")
        await self.models.unload_adapter(request.model, request.adapter)
        self.audit.record(
            admin="UnloadAdapter", token=caller.id, model=request.model or self.models.default, adapter=request.adapter
        )
        return pb.UnloadAdapterResponse()
