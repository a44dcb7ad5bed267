"""Chunked and batched prefill on the onnxruntime engine.

A prompt prefilled in chunks, or beside other fresh prompts in one run, gives the logits of the
whole prompt run alone; the engine interleaves a long prompt's chunks with the running streams'
decode steps (they keep getting tokens), and prompts admitted together share one run."""

from __future__ import annotations

import numpy as np
import pytest

from serve.config import PrefixCacheSettings, SchedulerSettings
from serve.engine.batching import MIN_CHUNK, StepEngine
from serve.job import Event, Job, Sampling

PROMPTS = ([5, 9, 14, 7, 3, 3, 8, 21, 4, 11, 30, 2, 17], [40, 41], [7, 3, 3, 8, 21, 4, 11, 5, 5])


@pytest.fixture(scope="module")
def artifact(serve_repo):
    from enclave.repository import Repository

    return Repository(serve_repo).active("tiny-onnx").path


@pytest.fixture(scope="module")
def tokenizer(artifact):
    from serve.tokenizer import ServeTokenizer

    return ServeTokenizer(artifact)


def chunked(model, prompts, tokens):
    """Each prompt's (logits, row), prefilled ``tokens`` at a time, all prompts in each call."""
    states, done = [model.begin(p, None) for p in prompts], {}
    while len(done) < len(prompts):
        todo = [i for i in range(len(prompts)) if i not in done]
        for i, result in zip(todo, model.prefill_chunk([states[i] for i in todo], tokens)):
            if result is not None:
                done[i] = result
    return [done[i] for i in range(len(prompts))]


def decode(model, prefilled, steps=8):
    batch, seqs = model.new_batch(), []
    for logits, row in prefilled:
        batch.add(row)
        seqs.append([int(logits.argmax())])
    for _ in range(steps):
        for seq, logits in zip(seqs, batch.step([s[-1] for s in seqs])):
            seq.append(int(logits.argmax()))
    return seqs


@pytest.mark.parametrize("tokens", [1, 3, 5, 64])
def test_chunks_and_side_by_side_prompts_equal_each_prompt_whole(artifact, tokens):
    from serve.backends.ort import Backend

    model = Backend(artifact, threads=1, prefix_cache=PrefixCacheSettings(enabled=False))
    whole = [model.prefill(p, None) for p in PROMPTS]
    pieces = chunked(model, PROMPTS, tokens)
    for (want, _), (got, _) in zip(whole, pieces):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert decode(model, pieces) == decode(model, whole)


def test_a_cached_prefix_then_chunks(artifact):
    from serve.backends.ort import Backend

    plain = Backend(artifact, threads=1, prefix_cache=PrefixCacheSettings(enabled=False))
    cached = Backend(artifact, threads=1, prefix_cache=PrefixCacheSettings(block_tokens=4))
    chunked(cached, [PROMPTS[0]], 5)  # caches its first three blocks
    prompt = PROMPTS[0] + [60, 61, 62, 63, 64, 65, 66]
    state = cached.begin(prompt, None)
    assert state.done == 12
    [(got, row)] = chunked(cached, [prompt], 2)
    want, _ = plain.prefill(prompt, None)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


class Recorded(Job):
    """A job that keeps its events (the engine runs on the test's thread here)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)
        super().emit(event)

    @property
    def tokens(self) -> list[int]:
        return [t for e in self.events for t in e.token_ids]


def run(engine: StepEngine, jobs: list[Job], log: list[str]) -> None:
    """Iterate the engine on this thread until every job finished; ``log`` gets its calls in order."""
    model, batch_step = engine.model, None

    def chunk(states, tokens):
        log.append(f"chunk {len(states)}")
        return type(model).prefill_chunk(model, states, tokens)

    model.prefill_chunk = chunk
    while any(j.finished is None for j in jobs):
        if engine.batch is not batch_step:  # wrap the batch's step (a new batch after an idle spell)
            inner, batch_step = engine.batch.step, engine.batch

            def step(tokens, inner=inner):
                log.append(f"step {len(tokens)}")
                return inner(tokens)

            engine.batch.step = step
        with engine.cv:
            admitted = engine._admit()
        engine._iteration(admitted)
        engine.outbox.flush()
    del model.prefill_chunk


def test_a_long_prompt_arrives_in_chunks_between_decode_steps(artifact, tokenizer):
    from serve.backends.ort import Backend

    model = Backend(artifact, threads=1, prefix_cache=PrefixCacheSettings(enabled=False))
    sampling = Sampling(max_tokens=20, min_tokens=20)  # the tiny model holds 128 tokens
    long_prompt = [int(t) for t in np.random.default_rng(0).integers(5, 60, 100)]

    def serve(chunk_tokens: int) -> tuple[Recorded, Recorded, list[str]]:
        settings = SchedulerSettings(max_batched_tokens=chunk_tokens, prefill_stall=0)  # fixed-size chunks
        engine = StepEngine(model, tokenizer, settings, "tiny-onnx")
        running, arriving, log = Recorded("running", PROMPTS[1], sampling), Recorded("long", long_prompt, sampling), []
        engine.submit(running)
        with engine.cv:
            admitted = engine._admit()
        engine._iteration(admitted)  # the short prompt is decoding
        engine.submit(arriving)
        run(engine, [running, arriving], log)
        return running, arriving, log

    running, arriving, log = serve(16)
    # ceil(100 / 16) = 7 chunks, each followed by a decode step of the running stream
    assert log[:14] == ["chunk 1", "step 1"] * 6 + ["chunk 1", "step 2"]
    whole_running, whole_arriving, whole_log = serve(4096)
    assert whole_log[:2] == ["chunk 1", "step 2"]  # the whole prompt in one go: the stream waited
    assert (running.tokens, arriving.tokens) == (whole_running.tokens, whole_arriving.tokens)
    assert len(arriving.tokens) == 20 and arriving.events[-1].finish == "length"


def test_prompts_admitted_together_share_one_run(artifact, tokenizer):
    from serve.backends.ort import Backend

    model = Backend(artifact, threads=1, prefix_cache=PrefixCacheSettings(enabled=False))
    runs = []
    inner = model._run
    model._run = lambda tokens, *a, **k: runs.append(tokens.shape) or inner(tokens, *a, **k)
    engine = StepEngine(model, tokenizer, SchedulerSettings(max_batched_tokens=64), "tiny-onnx")
    jobs = [Recorded(f"j{i}", p, Sampling(max_tokens=6)) for i, p in enumerate(PROMPTS)]
    for job in jobs:
        engine.submit(job)
    run(engine, jobs, [])
    assert runs == [(3, 13)]  # one prefill run, three rows padded to the longest prompt
    alone = []
    for p in PROMPTS:
        job = Recorded("alone", p, Sampling(max_tokens=6))
        engine.submit(job)
        run(engine, [job], [])
        alone.append(job.tokens)
    assert [j.tokens for j in jobs] == alone


def test_chunks_are_sized_to_stall_decoding_streams_a_set_number_of_steps(artifact, tokenizer):
    from serve.backends.ort import Backend

    model = Backend(artifact, threads=1)
    engine = StepEngine(model, tokenizer, SchedulerSettings(max_batched_tokens=2048, prefill_stall=1.5), "tiny")
    assert engine.chunk_tokens() == 2048  # nothing decoding: the whole budget
    engine.running = [object()]
    assert engine.chunk_tokens() == MIN_CHUNK  # not measured yet: the smallest chunk, grown from there
    engine.step_seconds = 0.030  # 30 ms a decode step: a chunk should take 45 ms
    engine._resize_chunk(MIN_CHUNK, 0.005)
    assert engine.chunk_tokens() == 2 * MIN_CHUNK  # too fast: doubled at most
    engine._resize_chunk(64, 0.020)
    assert engine.chunk_tokens() == 128
    engine._resize_chunk(128, 0.060)
    assert engine.chunk_tokens() == 96  # too slow: scaled by 45 / 60
    engine._resize_chunk(96, 1.0)
    assert engine.chunk_tokens() == 48  # far too slow: halved at most
    engine.chunk = MIN_CHUNK
    engine._resize_chunk(MIN_CHUNK, 0.1)
    assert engine.chunk_tokens() == MIN_CHUNK  # never below it
    engine.settings = SchedulerSettings(max_batched_tokens=8, prefill_stall=1.5)
    assert engine.chunk_tokens() == 8
    engine.settings = SchedulerSettings(max_batched_tokens=2048, prefill_stall=0)
    assert engine.chunk_tokens() == 2048


def test_the_chunk_size_settles_where_a_chunk_takes_the_stall(artifact, tokenizer):
    """A long prompt arriving beside a decoding stream on the real model: the sizes the engine
    chose make each chunk's time approach ``prefill_stall`` decode steps."""
    from serve.backends.ort import Backend

    model = Backend(artifact, threads=1, prefix_cache=PrefixCacheSettings(enabled=False))
    engine = StepEngine(model, tokenizer, SchedulerSettings(prefill_stall=1.0), "tiny-onnx")
    sizes = []
    inner = engine._resize_chunk
    engine._resize_chunk = lambda tokens, seconds: sizes.append((tokens, seconds)) or inner(tokens, seconds)
    running = Recorded("running", PROMPTS[1], Sampling(max_tokens=100, min_tokens=100))
    engine.submit(running)
    with engine.cv:
        admitted = engine._admit()
    engine._iteration(admitted)
    long_prompt = Recorded(
        "long", [int(t) for t in np.random.default_rng(1).integers(5, 60, 120)], Sampling(max_tokens=1)
    )
    engine.submit(long_prompt)
    run(engine, [running, long_prompt], [])
    assert len(sizes) >= 2 and sizes[0][0] == MIN_CHUNK  # the first chunk, then sized ones
    assert all(MIN_CHUNK <= t <= 2048 for t, _ in sizes)
