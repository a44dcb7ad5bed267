"""The enclave.v1 Review service: reviewers' feedback on answers (reviewer tokens only)."""

from __future__ import annotations

from enclave.v1 import inference_pb2 as pb
from enclave.v1 import inference_pb2_grpc as rpc
from serve.admission import Admission
from serve.feedback.capture import given

NAMES = {
    "request_id": "request_id",
    "rating": "rating (verdict or score)",
    "score": "score",
    "correction": "correction",
    "reason": "reason",
}


class ReviewService(rpc.ReviewServicer):
    """Feedback: a rating of one answer, tied to the model, version and adapter that gave it."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission

    async def Feedback(self, request, context):
        caller = self.admission.reviewer(context)
        rating = request.WhichOneof("rating")
        good = (
            None
            if rating != "verdict" or request.verdict == pb.VERDICT_UNSPECIFIED
            else (request.verdict == pb.VERDICT_GOOD)
        )
        score = request.score if rating == "score" else None
        checked = given(request.request_id, good, score, request.correction, request.reason, NAMES)
        answer, fid, kept = await self.admission.feedback.rate(caller, checked)
        return pb.FeedbackResponse(
            feedback_id=fid, model=answer.model, model_version=answer.version, adapter=answer.adapter, text_kept=kept
        )
