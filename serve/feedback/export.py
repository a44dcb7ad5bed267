"""Reviewers' feedback as a training file (`enclave feedback export`).

- A correction becomes a chat record (the prompt, then the corrected answer), and a preference
  record with the model's own answer as the rejected one (TRL's form: prompt, chosen, rejected).
- Two answers to the same prompt, one rated good and one bad, become a preference record.
- Each record says where it came from in ``meta``-style keys (``source``, ``model_version``,
  ``adapter``, ``reviewer``: the reviewer's title, never who), and the summary counts records per
  title, version and kind. `enclave tune check-data` reads the file as it reads any data set.

Only answers with their text kept (``feedback.capture_text``) can become records; the others are
counted, not exported. A sealed value that does not open (another key, altered bytes) stops the
export with the ids that failed: nothing is left out silently.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from enclave.errors import EnclaveError
from serve.feedback.crypto import Sealer
from serve.feedback.store import Answer, Rating, Store


@dataclass
class Summary:
    """What an export wrote, and what it could not."""

    records: Counter = field(default_factory=Counter)  # (reviewer title, version, adapter, kind) -> records
    answers: int = 0  # rated answers of the model
    without_text: int = 0  # rated answers whose text was not kept (capture off): not exportable
    ratings_only: int = 0  # ratings with neither a correction nor a counterpart of the other verdict


def _open(sealer: Sealer, blob: bytes, where: str, failed: list[str]):
    try:
        return sealer.open(blob, where)
    except ValueError as exc:
        failed.append(str(exc))
        return None


def _origin(answer: Answer, title: str) -> dict:
    return {"source": "feedback", "model_version": answer.version, "adapter": answer.adapter, "reviewer": title}


def _majority(ratings: list[Rating]) -> str:
    votes = Counter(r.verdict for r in ratings if r.verdict != "neutral")
    if not votes or votes["good"] == votes["bad"]:
        return "neutral"
    return "good" if votes["good"] > votes["bad"] else "bad"


def export(store: Store, sealer: Sealer | None, model: str) -> tuple[list[dict], Summary]:
    """The training records of ``model``'s rated answers, and the summary.

    Raises:
        EnclaveError: sealed text that does not open (all failures listed), or text without a key.
    """
    rated = store.rated(model)
    summary = Summary(answers=len(rated))
    with_text = [(a, rs) for a, rs in rated if a.prompt is not None and a.answer is not None]
    summary.without_text = len(rated) - len(with_text)
    if with_text and sealer is None:
        raise EnclaveError(
            f"the store holds sealed text for {len(with_text)} rated answer(s) of {model} and no key was given",
            fix="pass --key-file (the server's feedback.key_file), or --config with the serve config",
        )
    failed: list[str] = []
    records: list[dict] = []
    # the prompt (as JSON) -> its answers: (answer, text, majority verdict, ratings)
    by_prompt: dict[str, list[tuple[Answer, str, str, list[Rating]]]] = defaultdict(list)
    for answer, ratings in with_text:
        rid = answer.request_id
        prompt = _open(sealer, answer.prompt, f"answers/{rid}/prompt", failed)
        text = _open(sealer, answer.answer, f"answers/{rid}/answer", failed)
        if prompt is None or text is None:
            continue
        loaded = json.loads(prompt)
        messages = [{"role": "user", "content": loaded}] if isinstance(loaded, str) else loaded
        corrected = False
        for r in ratings:
            if r.correction is None:
                continue
            correction = _open(sealer, r.correction, f"feedback/{r.id}/correction", failed)
            if correction is None:
                continue
            corrected = True
            origin = _origin(answer, r.title)
            records.append({"messages": messages + [{"role": "assistant", "content": correction}], **origin})
            summary.records[(r.title, answer.version, answer.adapter, "chat")] += 1
            if correction.strip() != text.strip():
                records.append(
                    {
                        "prompt": messages,
                        "chosen": [{"role": "assistant", "content": correction}],
                        "rejected": [{"role": "assistant", "content": text}],
                        **origin,
                    }
                )
                summary.records[(r.title, answer.version, answer.adapter, "preference")] += 1
        verdict = _majority(ratings)
        by_prompt[json.dumps(messages, sort_keys=True)].append((answer, text, verdict, ratings))
        if not corrected and verdict != "neutral":
            summary.ratings_only += 1
    for key, entries in by_prompt.items():  # the same prompt answered twice: one rated good, one bad
        goods = [e for e in entries if e[2] == "good"]
        bads = [e for e in entries if e[2] == "bad"]
        for (good, good_text, _v, good_ratings), (_bad, bad_text, _w, _r) in zip(goods, bads):
            if good_text.strip() == bad_text.strip():
                continue
            title = good_ratings[0].title
            records.append(
                {
                    "prompt": json.loads(key),
                    "chosen": [{"role": "assistant", "content": good_text}],
                    "rejected": [{"role": "assistant", "content": bad_text}],
                    **_origin(good, title),
                }
            )
            summary.records[(title, good.version, good.adapter, "preference")] += 1
    if failed:
        raise EnclaveError(
            f"{len(failed)} sealed value(s) of {model} do not open; nothing was exported:\n"
            + "\n".join(f"  - {f}" for f in failed[:40]),
            fix="use the key the server sealed them with (feedback.key_file); a value altered on disk cannot be "
            "recovered: `enclave feedback check` lists them",
        )
    return records, summary
