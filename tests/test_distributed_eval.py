"""Several processes evaluate in lockstep: two CPU ranks over gloo, the model's weights sharded between them.

Under FSDP or DeepSpeed ZeRO-3 every forward gathers the weights from all ranks, so a rank that makes one forward
fewer leaves the others waiting forever. FSDP2's ``fully_shard`` runs on a CPU with gloo, so these tests shard the
tiny model for real: an odd number of questions, one per batch, answers that end at different steps on different
ranks. Each rank counts its forward calls; the counts must be equal and the gathered answers those of one process.
A GPU is needed only for what a CPU cannot show: NCCL, and FSDP1 or ZeRO-3 themselves.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = 7  # odd: one rank answers a question more, and fills its last batch with a repeat
MAX_NEW_TOKENS = 24
SEGMENT = 3  # decode segments of three tokens: rows end in different segments
DEADLINE = 240  # seconds for both ranks together: a hang fails the test instead of stalling the suite


def tiny_generator() -> tuple[Any, Any]:
    """The tokenizer and a tiny model with large random weights: varied answers, not one repeated token."""
    from helpers import embedded_tokenizer, tiny_model

    tokenizer = embedded_tokenizer()
    model = tiny_model(tokenizer, seed=3)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return tokenizer, model.eval()


def evaluator(tokenizer: Any, end_of_turn: str, output_dir: Path | None) -> Any:
    from rqa.data import ExampleEncoder
    from rqa.evaluation import E2EEvaluator
    from rqa.formatting import LAYOUTS, LayoutFormatter
    from rqa.schema import read_examples

    formatter = LayoutFormatter("chatml", LAYOUTS["chatml"])
    formatter.end_of_turn = end_of_turn  # a token the random model says early in some answers only
    examples = read_examples(str(ROOT / "example" / "eval_w_qa.jsonl"))[:QUESTIONS]
    encoder = ExampleEncoder(tokenizer, formatter, max_seq_length=512)
    return E2EEvaluator(
        examples,
        encoder,
        retriever=None,
        metrics={},
        max_new_tokens=MAX_NEW_TOKENS,
        batch_size=1,
        output_dir=output_dir,
    )


def count_forwards(model: Any) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *args: calls.__setitem__(0, calls[0] + 1))
    return calls


def rank_main(rank: int, world: int, port: int, case: dict[str, Any], out: str) -> None:
    """One rank: shard the model, evaluate, record how many forwards it made (or that it stopped)."""
    import torch.distributed as dist

    import rqa.decoding as decoding
    import rqa.generation as generation
    from rqa.signals import StopFlag, StopRequested

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    decoding.DECODE_SEGMENT = SEGMENT
    if case["padded"]:  # the GPU path: one synced ``generate`` call per left-padded batch
        generation.can_assemble_cache = lambda model: False
    tokenizer, model = tiny_generator()
    if case["sharded"]:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    calls = count_forwards(model)
    stop = StopFlag()
    if case["stop_after"] and rank == 0:  # a signal that reaches one rank only, mid-evaluation
        model.register_forward_hook(
            lambda *args: setattr(stop, "received", "SIGTERM") if calls[0] >= case["stop_after"] else None
        )
    result: dict[str, Any] = {"stopped": None}
    try:
        evaluator(tokenizer, case["end_of_turn"], Path(out)).evaluate_model(
            model, name="sharded", is_main=rank == 0, stop=stop
        )
    except StopRequested as stopped:
        result["stopped"] = stopped.received
    result["forwards"] = calls[0]
    (Path(out) / f"rank-{rank}.json").write_text(json.dumps(result))
    # Both ranks leave together: a rank that tears its connections down while the other is still tearing down
    # (or, on rank 0, still serving the rendezvous store) can abort in gloo's threads after the test's work is done.
    dist.barrier()
    dist.destroy_process_group()


def run_ranks(case: dict[str, Any], out: Path, world: int = 2) -> list[dict[str, Any]]:
    """Start the ranks; kill them and fail if they have not finished by the deadline."""
    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    ranks = [context.Process(target=rank_main, args=(rank, world, port, case, str(out))) for rank in range(world)]
    for process in ranks:
        process.start()
    deadline = time.monotonic() + DEADLINE
    for process in ranks:
        process.join(max(deadline - time.monotonic(), 0))
    hung = [process.pid for process in ranks if process.is_alive()]
    for process in ranks:
        if process.is_alive():
            process.kill()
            process.join()
    assert not hung, f"ranks {hung} were still running after {DEADLINE} s: the evaluation hung"
    finished = [(out / f"rank-{rank}.json").exists() for rank in range(world)]
    assert [process.exitcode for process in ranks] == [0] * world, f"ranks that wrote their results: {finished}"
    return [json.loads((out / f"rank-{rank}.json").read_text()) for rank in range(world)]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> tuple[str, list[dict]]:
    """An end of turn that some answers say early and others never, and one process's predictions with it."""
    import rqa.decoding as decoding

    tokenizer, model = tiny_generator()
    plain = evaluator(tokenizer, "<|im_end|>", None)
    retrieved = plain.retrieve()
    prompts = [plain.prompt(i, retrieved) for i in range(QUESTIONS)]
    with torch.inference_mode():
        free = [
            model.generate(torch.tensor([ids]), max_new_tokens=MAX_NEW_TOKENS, do_sample=False)[0, len(ids) :].tolist()
            for ids in prompts
        ]
    candidates = [
        token
        for row in free
        for position, token in enumerate(row[: SEGMENT + 1])
        if token not in row[:position]
        and sum(token in other for other in free) < QUESTIONS
        and tokenizer(tokenizer.decode([token]), add_special_tokens=False)["input_ids"] == [token]
    ]
    assert candidates, "no token ends one answer early and leaves another running"
    end_of_turn = tokenizer.decode([candidates[0]])
    output = tmp_path_factory.mktemp("single")
    original = decoding.DECODE_SEGMENT
    decoding.DECODE_SEGMENT = SEGMENT
    try:
        evaluator(tokenizer, end_of_turn, output).evaluate_model(model, name="single")
    finally:
        decoding.DECODE_SEGMENT = original
    rows = read_jsonl(output / "single-predictions.jsonl")
    assert len({len(row["generated_answer"]) for row in rows}) > 1, "every answer ran to the same length"
    return end_of_turn, rows


def fsdp2_on_cpu() -> bool:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("path", ["assembled-cache", "padded-generate"])
def test_sharded_ranks_make_the_same_forward_calls_and_answer_as_one_process(
    path: str, single_process: tuple[str, list[dict]], tmp_path: Path
) -> None:
    end_of_turn, expected = single_process
    case = {"end_of_turn": end_of_turn, "padded": path == "padded-generate", "sharded": fsdp2_on_cpu()}
    results = run_ranks({**case, "stop_after": 0}, tmp_path)
    assert results[0]["forwards"] == results[1]["forwards"] > 0
    rows = read_jsonl(tmp_path / "sharded-predictions.jsonl")
    assert [row["question"] for row in rows] == [row["question"] for row in expected]  # each once, in order
    assert [row["generated_answer"] for row in rows] == [row["generated_answer"] for row in expected]


def test_a_stop_on_one_rank_stops_every_rank_at_the_same_point(
    single_process: tuple[str, list[dict]], tmp_path: Path
) -> None:
    end_of_turn, _ = single_process
    case = {"end_of_turn": end_of_turn, "padded": False, "sharded": fsdp2_on_cpu(), "stop_after": 30}
    results = run_ranks(case, tmp_path)
    assert [result["stopped"] for result in results] == ["SIGTERM", "SIGTERM"]
    assert results[0]["forwards"] == results[1]["forwards"]
    assert not list(tmp_path.glob("sharded-*"))  # an abandoned evaluation writes nothing
