"""Evaluation harness: each task kind on hand-made data with known scores, padding/batching
invariance on a real tiny Llama, the three ways to pass a model, input validation, the CLI."""

from __future__ import annotations

import json
import types

import pytest
import torch

from simmerge.cli.main import build_parser
from simmerge.errors import ConfigError
from simmerge.evaluation.harness import EvalTask, evaluate
from simmerge.io.models import load_model_with_state
from simmerge.zoo.tokenizer import build_tokenizer, vocabulary

V = vocabulary()


class BigramLM(torch.nn.Module):
    """Next-token logits depend only on the current token: '=' -> 'x' -> 'y' -> <eos>.

    Its scores on any task are computable by hand, which is what these tests need.
    """

    def __init__(self) -> None:
        super().__init__()
        table = torch.zeros(len(V), len(V))
        table[:, V["<eos>"]] = 5.0
        table[V["="], V["x"]] = 10.0
        table[V["x"], V["y"]] = 10.0
        self.table = torch.nn.Parameter(table)
        self.config = types.SimpleNamespace(eos_token_id=V["<eos>"], pad_token_id=V["<pad>"])

    def forward(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        use_cache=None,
    ):
        return types.SimpleNamespace(logits=self.table[input_ids], past_key_values=None)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_exact_match_score_is_fraction_of_exact_greedy_continuations(tmp_path, tok):
    rows = [
        {"prompt": "<copy>ab=", "answer": "xy"},
        {"prompt": "<copy>abcd=", "answer": " xy "},
        {"prompt": "<copy>a=", "answer": "ab"},
        {"prompt": "<copy>abc=", "answer": "x"},
    ]
    task = EvalTask.load(_write_jsonl(tmp_path / "em.jsonl", rows))
    assert task.kind == "exact_match"
    res = evaluate(BigramLM(), task, tokenizer=tok, batch_size=3)
    assert res.n == 4
    assert [e.score for e in res.examples] == [1.0, 1.0, 0.0, 0.0]
    assert res.score == pytest.approx(0.5)
    assert all(e.prediction == "xy" for e in res.examples)  # stopped at EOS, EOS not included


def test_exact_match_stops_at_max_new_tokens(tok):
    task = EvalTask.from_records(
        [{"prompt": "<copy>a=", "answer": "x"}], kind="exact_match", max_new_tokens=1
    )
    res = evaluate(BigramLM(), task, tokenizer=tok)
    assert res.examples[0].prediction == "x" and res.score == 1.0


def test_token_accuracy_is_teacher_forced_per_token_argmax(tok):
    rows = [
        {"prompt": "<copy>a=", "answer": "xy"},
        {"prompt": "<copy>a=", "answer": "xz"},
        {"prompt": "<copy>a=", "answer": "ab"},
        {"prompt": "<copy>a=", "answer": "ay"},
    ]
    task = EvalTask.from_records(rows, kind="token_accuracy")
    res = evaluate(BigramLM(), task, tokenizer=tok, batch_size=2)
    # "ay": after '=' the model predicts 'x' (miss); after the forced 'a' it predicts <eos> (miss)
    assert [e.score for e in res.examples] == [1.0, 0.5, 0.0, 0.0]
    assert res.score == pytest.approx(0.375)


def test_multiple_choice_picks_highest_log_likelihood(tmp_path, tok):
    rows = [
        {"prompt": "<copy>a=", "choices": ["ab", "xy", "xa"], "label": 1},
        {"prompt": "<copy>b=", "choices": ["xy", "b"], "label": 1},
        {"prompt": "<copy>c=", "choices": ["q", "xy"], "label": 1},
    ]
    task = EvalTask.load(_write_jsonl(tmp_path / "mc.jsonl", rows))
    assert task.kind == "multiple_choice"
    res = evaluate(BigramLM(), task, tokenizer=tok, batch_size=2)
    assert [e.prediction for e in res.examples] == ["1", "0", "1"]
    assert res.score == pytest.approx(2 / 3)


def test_missing_required_field_raises_config_error_naming_file_and_field(tmp_path):
    path = _write_jsonl(tmp_path / "broken.jsonl", [{"prompt": "<copy>a=", "kind": "exact_match"}])
    with pytest.raises(ConfigError) as err:
        EvalTask.load(path)
    msg = str(err.value)
    assert "broken.jsonl" in msg and "'answer'" in msg and "Fix:" in msg


def test_null_value_and_bad_label_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="row 1"):
        EvalTask.from_records([{"prompt": "a", "answer": "b"}, {"prompt": None, "answer": "c"}])
    with pytest.raises(ConfigError, match="label"):
        EvalTask.from_records([{"prompt": "a", "choices": ["x"], "label": 3}])


def test_parquet_and_jsonl_load_the_same_task(tmp_path):
    import datasets

    rows = [{"id": f"r{i}", "prompt": f"<copy>{c}=", "answer": c} for i, c in enumerate("abc")]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "t.parquet"))
    a = EvalTask.load(tmp_path / "t.parquet")
    b = EvalTask.load(_write_jsonl(tmp_path / "t.jsonl", rows))
    assert a.examples == b.examples and a.config_hash() == b.config_hash()
    assert a.examples[1].id == "r1"


def _tiny_llama_dir(tmp_path, tok):
    from simmerge.zoo.train import ModelShape, new_model

    model = new_model(ModelShape(hidden=32, intermediate=64, layers=2, heads=2), seed=3)
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, model


def _mixed_length_task():
    rows = [{"prompt": f"<reverse>{'abcdefgh'[:n]}=", "answer": "abc"} for n in (1, 5, 2, 8, 3)]
    return EvalTask.from_records(rows, kind="exact_match", max_new_tokens=6)


@pytest.mark.parametrize("batch_size", [5, 2])  # one batch; batches of sorted lengths
def test_batched_greedy_with_left_padding_matches_unbatched_rollout(tmp_path, tok, batch_size):
    folder, model = _tiny_llama_dir(tmp_path, tok)
    model.eval()
    task = _mixed_length_task()
    batched = evaluate(model, task, tokenizer=tok, batch_size=batch_size)
    assert [r.id for r in batched.examples] == [e.id for e in task.examples]
    for ex, got in zip(task.examples, batched.examples, strict=True):
        ids = tok(ex.prompt)["input_ids"]
        out = []
        with torch.no_grad():  # reference: no padding, no cache, one argmax at a time
            for _ in range(6):
                nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
                if nxt == V["<eos>"]:
                    break
                out.append(nxt)
                ids = ids + [nxt]
        assert got.prediction == tok.decode(out, skip_special_tokens=True)


def test_folder_loaded_model_and_state_dict_give_identical_results(tmp_path, tok):
    folder, model = _tiny_llama_dir(tmp_path, tok)
    task = _mixed_length_task()
    from_dir = evaluate(folder, task, device="cpu", batch_size=2)
    from_state = evaluate(model.state_dict(), task, reference_dir=folder, device="cpu")
    loaded = load_model_with_state(folder, model.state_dict(), device="cpu")
    from_model = evaluate(loaded, task)  # tokenizer found through the model's name_or_path
    assert from_dir.examples == from_state.examples == from_model.examples
    with pytest.raises(ConfigError, match="reference_dir"):
        evaluate(model.state_dict(), task)


def test_loading_a_state_dict_draws_no_random_initial_weights(tmp_path, tok):
    # the state overwrites every parameter, so drawing random ones first is wasted time; a
    # build that draws them advances torch's global generator
    folder, model = _tiny_llama_dir(tmp_path, tok)
    before = torch.get_rng_state()
    loaded = load_model_with_state(folder, model.state_dict(), device="cpu")
    assert torch.equal(torch.get_rng_state(), before)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_load_model_with_state_rejects_a_state_of_another_shape(tmp_path, tok):
    from simmerge.errors import TensorMismatchError

    folder, model = _tiny_llama_dir(tmp_path, tok)
    state = dict(model.state_dict())
    state.pop("model.norm.weight")
    with pytest.raises(TensorMismatchError, match="model.norm.weight"):
        load_model_with_state(folder, state)


def test_eval_cli_prints_score_and_n_as_json(tmp_path, tok, capsys):
    folder, _ = _tiny_llama_dir(tmp_path, tok)
    path = _write_jsonl(tmp_path / "t.jsonl", [{"prompt": "<copy>ab=", "answer": "ab"}] * 3)
    parser = build_parser()
    args = parser.parse_args(
        ["eval", str(folder), "--task", str(path), "--json", "--device", "cpu"]
    )
    assert args.func(args) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["n"] == 3 and 0.0 <= payload["score"] <= 1.0
    args = parser.parse_args(["eval", str(folder), "--task", str(path)])
    args.func(args)
    assert "n=3" in capsys.readouterr().out
