"""export --format mlx-lm: mlx-lm loads the folder and decodes mlx-kssm's tokens.

Needs the `mlx-lm` extra (scripts/test.sh installs it); without it these tests skip, except
the missing-extra error itself."""

import base64
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from click.testing import CliRunner

import mlx_kssm
import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from mlx_kssm import build_model, save_model
from mlx_kssm.cli import main
from mlx_kssm.data.prepare import prepare
from mlx_kssm.data.tokenizer import CompactTokenizer
from mlx_kssm.models.base import DESIGNS
from mlx_kssm.probe.generate import generate_tokens

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "gutenberg"
INSTALL = "needs the mlx-lm extra: pip install -e '.[mlx-lm]'"
needs_mlx_lm = pytest.mark.skipif(importlib.util.find_spec("mlx_lm") is None, reason=INSTALL)
PROMPTS = ("It is a truth universally acknowledged", "Frankenstein")


def _spread_weights(model, seed: int) -> None:
    """Weights drawn wide (std 0.5) so greedy decoding wanders instead of repeating one token,
    and the tokens compared are many different ones. A compacted model's unknown id gets a
    zero embedding row: a trained model never predicts it (no training target is unknown),
    and mlx-lm cannot emit it (it stands for no base id)."""
    rng = np.random.default_rng(seed)
    weights = {k: rng.normal(0, 0.5, v.shape).astype(np.float32)
               for k, v in tree_flatten(model.parameters())}
    weights["embed.weight"][-1] = 0
    model.update(tree_unflatten([(k, mx.array(v)) for k, v in weights.items()]))


def _make_run(root, preset, spec, spec_root, vocab_size, seed, **overrides):
    """A training-run-shaped folder (run config + checkpoint) holding a spread-weight model."""
    model = build_model(preset, vocab_size=vocab_size, seed=seed, **overrides)
    _spread_weights(model, seed)
    save_model(root / "checkpoints" / "step_10", model, tokenizer_spec=spec,
               tokenizer_root=spec_root)
    (root / "config.json").write_text(json.dumps({"train": {"data": "somewhere", "seed": seed}}))
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs covering both tokenizers and both designs: a compacted cl100k_base (design 2),
    bytes (design 1 as mlx-kssm 0.1 saved it, and v3's bistable core in design 2) and the
    bolted control."""
    root = tmp_path_factory.mktemp("mlx_lm")
    (root / "texts").mkdir()
    for name in ("pg1342_2024.txt", "pg1661_2002.txt"):
        shutil.copy(FIXTURES / name, root / "texts" / name)
    prepare(root / "texts", root / "data", tokenizer="cl100k_base", compact=True,
            val_fraction=0.3, log=lambda s: None)
    meta = json.loads((root / "data" / "meta.json").read_text())
    cl100k = (meta["tokenizer"], root / "data", meta["vocab_size"])
    byte_level = ({"kind": "bytes"}, None, 257)
    return {
        "cl100k-d2": _make_run(root / "cl100k-d2", "tiny", *cl100k, seed=1),
        # design 1 at the shapes mlx-kssm 0.1's tiny had (8 groups of 8, 3 harmonics)
        "bytes-d1": _make_run(root / "bytes-d1", "tiny", *byte_level, seed=3, **DESIGNS[1],
                              n_groups=8, osc_per_group=8, harmonics=3),
        "bytes-v3": _make_run(root / "bytes-v3", "tiny", *byte_level, seed=4, bistable=True),
        "bytes-bolted": _make_run(root / "bytes-bolted", "control-bolted-tiny", *byte_level,
                                  seed=5),
        "data": root / "data",
    }


@pytest.fixture(scope="module")
def exports(runs, tmp_path_factory):
    """Each run exported once with `mlx-kssm export --format mlx-lm` (lazily, by name)."""
    root, done = tmp_path_factory.mktemp("exports"), {}

    def export(name):
        if name not in done:
            res = CliRunner().invoke(main, ["export", "--model", str(runs[name]), "--format",
                                            "mlx-lm", "--out", str(root / name)])
            assert res.exit_code == 0, res.output
            done[name] = root / name
        return done[name]
    return export


@pytest.fixture(scope="module")
def loaded(exports):
    """mlx_lm.load of an export, once per module (a cl100k_base tokenizer takes seconds)."""
    from mlx_lm import load

    done = {}

    def get(name):
        if name not in done:
            done[name] = load(str(exports(name)), trust_remote_code=True)
        return done[name]
    return get


def _kssm_greedy(run, prompt, max_tokens=24, force_r=None):
    """What `mlx-kssm generate --temp 0` generates (its engine), as base-tokenizer ids."""
    model, tokenizer = mlx_kssm.load(run)
    tokens = generate_tokens(model, tokenizer.encode(prompt), max_tokens=max_tokens, temp=0,
                             force_r=force_r, stop_ids=(tokenizer.sep_id,)).tokens
    compact = isinstance(tokenizer, CompactTokenizer)
    return tokenizer.base_ids[tokens].tolist() if compact else tokens


def _mlx_lm_greedy(lm, tokenizer, prompt, max_tokens=24, prefill_step_size=2048):
    from mlx_lm.generate import generate_step

    ids = mx.array(tokenizer.encode(prompt, add_special_tokens=False))
    steps = generate_step(ids, lm, max_tokens=max_tokens, prefill_step_size=prefill_step_size)
    return [token for token, _ in steps]


@pytest.mark.slow
@needs_mlx_lm
def test_mlx_lm_loads_the_export(exports, loaded):
    from mlx_lm import load

    out = exports("cl100k-d2")
    config = json.loads((out / "config.json").read_text())
    assert config["model_file"] == "kssm.py" and config["vocab_compaction"]["unknown_id"] > 0
    assert "import mlx_kssm" not in (out / "kssm.py").read_text()  # self-contained
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: mlx\n") and "trust_remote_code=True" in card
    with pytest.raises(ValueError, match="trust_remote_code"):  # mlx-lm asks first
        load(str(out))
    lm, tokenizer = loaded("cl100k-d2")  # mlx_lm.load(out, trust_remote_code=True)
    assert type(lm).__module__ == "custom_model" and len(lm.make_cache()) == lm.args.n_layers
    assert tokenizer.eos_token_ids == {100257}  # cl100k_base's <|endoftext|>: mlx-lm stops there
    logits = lm(mx.array([tokenizer.encode("It is", add_special_tokens=False)]))
    assert logits.shape[-1] == 100277  # the base vocabulary, as the tokenizer sees it
    # a compacted model gives the ids its corpus never used no probability
    probs = np.array(mx.softmax(logits[0, -1]))
    assert (probs > 0).sum() == config["vocab_compaction"]["unknown_id"]
    assert np.isfinite(np.array(logits)).all()  # finite: mlx-lm's masked losses stay finite


@pytest.mark.slow
@needs_mlx_lm
@pytest.mark.parametrize("name", ["cl100k-d2", "bytes-d1", "bytes-v3", "bytes-bolted"])
def test_greedy_tokens_equal_mlx_kssm_generate(runs, loaded, name):
    """Token for token, also with the prompt processed in chunks of 2 tokens."""
    lm, tokenizer = loaded(name)
    for prompt in PROMPTS:
        ours = _kssm_greedy(runs[name], prompt)
        assert len(set(ours)) > 3  # a varied sequence, not one token repeated
        for chunk in (2048, 2):
            theirs = _mlx_lm_greedy(lm, tokenizer, prompt, prefill_step_size=chunk)
            assert theirs[:len(ours)] == ours, (prompt, chunk)


@pytest.mark.slow
@needs_mlx_lm
def test_v3_folder_with_ten_core_projections_exports_as_the_eight(runs, loaded, tmp_path):
    """A v3 folder saved with ten core projections exports from its converted weights: the
    export's in_proj has the eight-projection rows, and mlx-lm decodes the tokens of the
    eight-row model it was made from."""
    from conftest import with_ten_core_projections
    from mlx_lm import load

    old = shutil.copytree(runs["bytes-v3"] / "checkpoints" / "step_10", tmp_path / "old")
    with_ten_core_projections(old, seed=7)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["export", "--model", str(old), "--format", "mlx-lm",
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    exported = mx.load(str(out / "model.safetensors"))["layers.0.bank.in_proj.weight"]
    assert exported.shape == loaded("bytes-v3")[0].layers[0].bank.in_proj.weight.shape
    lm, tokenizer = load(str(out), trust_remote_code=True)
    for prompt in PROMPTS:
        ours = _kssm_greedy(runs["bytes-v3"], prompt)
        assert _mlx_lm_greedy(lm, tokenizer, prompt)[:len(ours)] == ours, prompt


@pytest.mark.slow
@needs_mlx_lm
def test_batched_generation_pads_without_changing_tokens(loaded):
    """mlx-lm's batch generator (what its server runs) pads prompts of different lengths:
    padded positions must leave the oscillator state as it was."""
    from mlx_lm import batch_generate

    lm, tokenizer = loaded("cl100k-d2")
    prompts = [tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS + ("A",)]
    batch = batch_generate(lm, tokenizer, prompts, max_tokens=12, return_token_ids=True)
    for prompt, tokens in zip(PROMPTS + ("A",), batch.token_ids):
        assert list(tokens) == _mlx_lm_greedy(lm, tokenizer, prompt, max_tokens=12)


@pytest.mark.slow
@needs_mlx_lm
@pytest.mark.parametrize("where", ["every layer", "layer 0"])
def test_force_r_in_config_clamps_r_as_mlx_kssm_does(runs, tmp_path, where):
    from mlx_lm import load

    run = runs["bytes-d1"]
    model, _ = mlx_kssm.load(run)
    n_layers = model.args.n_layers
    force = 0.3 if where == "every layer" else [0.25] + [None] * (n_layers - 1)
    args = ["export", "--model", str(run), "--format", "mlx-lm", "--out", str(tmp_path / "f")]
    args += ["--force-r", "0.3"] if where == "every layer" else ["--force-r-layer", "0=0.25"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "f" / "config.json").read_text())["force_r"] == force
    lm, tokenizer = load(str(tmp_path / "f"), trust_remote_code=True)
    ids = mx.array([tokenizer.encode(PROMPTS[0], add_special_tokens=False)])
    logits, r = lm(ids, return_r=True)
    forced_logits, forced_r = model(ids, force_r=force, return_r=True)
    assert np.allclose(np.array(logits), np.array(forced_logits), atol=1e-5)
    assert not np.allclose(np.array(logits), np.array(model(ids)), atol=1e-3)  # it matters
    assert np.allclose(np.array(r), np.array(forced_r), atol=1e-6)
    assert np.allclose(np.array(r[..., 0]), 0.3 if where == "every layer" else 0.25)
    assert _mlx_lm_greedy(lm, tokenizer, PROMPTS[0])[:12] == \
        _kssm_greedy(run, PROMPTS[0], 12, force_r=force)
    if where == "every layer":  # the R `mlx-kssm generate --show-r` reports on the same weights
        res = CliRunner().invoke(main, ["generate", "--model", str(run), "--prompt", PROMPTS[0],
                                        "--temp", "0", "-m", "12", "--force-r", "0.3",
                                        "--show-r"])
        assert res.exit_code == 0, res.output
        assert "all layers: mean 0.300" in res.output and "layer 0: mean 0.300" in res.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port, body, endpoint="completions") -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/{endpoint}",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _wait_ready(server, port, deadline_s=120) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlx_lm.server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail("mlx_lm.server did not start in time")


@pytest.mark.slow
@needs_mlx_lm
def test_mlx_lm_server_answers_completions(exports, loaded):
    """mlx_lm.server on loopback answers /v1/completions with the greedy text; the second
    request extends the first prompt, so it runs from the server's prompt cache (a K-SSM
    layer's cache is its oscillator state). The server is stopped whatever happens."""
    out, port = exports("bytes-d1"), _free_port()
    lm, tokenizer = loaded("bytes-d1")
    server = subprocess.Popen([sys.executable, "-m", "mlx_lm.server", "--model", str(out),
                               "--trust-remote-code", "--host", "127.0.0.1", "--port",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_ready(server, port)
        for prompt in ("It is a truth", "It is a truth universally"):
            answer = _post(port, {"prompt": prompt, "max_tokens": 8, "temperature": 0})
            text = answer["choices"][0]["text"]
            expected = tokenizer.decode(_mlx_lm_greedy(lm, tokenizer, prompt, max_tokens=8))
            assert text.strip() and text.strip() == expected.strip()
        assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
        # the chat endpoint, through the export's own template ("role: text" lines)
        answer = _post(port, {"messages": [{"role": "user", "content": "Hello"}],
                              "max_tokens": 8, "temperature": 0}, "chat/completions")
        chat_prompt = "user: Hello\nassistant:"
        expected = tokenizer.decode(_mlx_lm_greedy(lm, tokenizer, chat_prompt, max_tokens=8))
        assert answer["choices"][0]["message"]["content"] == expected
        assert answer["usage"]["prompt_tokens"] == len(tokenizer.encode(chat_prompt))
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stderr.close()
    assert server.returncode is not None


# ----------------------------------------------------------------------- text, chat, quantized

def _base(run):
    _, tokenizer = mlx_kssm.load(run)
    return tokenizer.base if isinstance(tokenizer, CompactTokenizer) else tokenizer


def _streamed(detokenizer, ids) -> str:
    """The text a streaming client sees: each segment as it comes, then the flush."""
    text = ""
    for token in ids:
        detokenizer.add_token(token)
        text += detokenizer.last_segment
    detokenizer.finalize()
    return text + detokenizer.last_segment


@needs_mlx_lm
@pytest.mark.parametrize("name", ["bytes-d1", "cl100k-d2"])
def test_streamed_text_is_mlx_kssms_decode(runs, loaded, exports, name):
    """mlx-lm's streamed text is tokenizer.decode(tokens), the leading space included (its
    BPEStreamingDetokenizer, which a ByteLevel decoder selects, dropped it)."""
    from mlx_lm import stream_generate
    from tokenizers import Tokenizer

    lm, tokenizer = loaded(name)
    base = _base(runs[name])
    text = " and the rest: ROMEO.  two  spaces\n naïve 日本語 🙂\n"
    assert _streamed(tokenizer.detokenizer, base.encode(text)) == base.decode(
        base.encode(text)) == text
    raw = Tokenizer.from_file(str(exports(name) / "tokenizer.json"))  # HF `tokenizers` alone
    assert raw.decode(raw.encode(text).ids) == text and raw.encode(text).ids == base.encode(text)
    ours = _kssm_greedy(runs[name], PROMPTS[1], max_tokens=16)
    pieces = list(stream_generate(lm, tokenizer, PROMPTS[1], max_tokens=16))
    assert "".join(p.text for p in pieces) == base.decode(ours)


@needs_mlx_lm
@pytest.mark.parametrize("name", ["bytes-d1", "cl100k-d2"])
def test_endoftext_is_plain_text_in_both(runs, loaded, exports, name):
    """The literal text <|endoftext|> is plain text to mlx-kssm and to the HF files alike (as
    tiktoken refuses to read special tokens from text by default); the separator's id decodes
    to it in both and ends generation (generation_config.json)."""
    _, tokenizer = loaded(name)
    base = _base(runs[name])
    text = "The end.<|endoftext|>Next"
    assert tokenizer.encode(text, add_special_tokens=False) == base.encode(text)
    assert base.sep_id not in base.encode(text)
    ids = base.encode("The end.") + [base.sep_id] + base.encode("Next")
    assert tokenizer.decode(ids) == base.decode(ids) == text
    assert tokenizer.eos_token_ids == {base.sep_id}
    config = json.loads((exports(name) / "generation_config.json").read_text())
    assert config == {"eos_token_id": base.sep_id}


@needs_mlx_lm
def test_chat_template_is_role_text_lines(loaded):
    _, tokenizer = loaded("bytes-d1")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert tokenizer.has_chat_template
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                         tokenize=False) == \
        "system: Be brief.\nuser: Hi\nassistant:"


@needs_mlx_lm
@pytest.mark.slow
def test_mlx_lm_chat_runs_on_the_export(exports, loaded):
    """mlx_lm.chat (interactive) driven through stdin: one turn, then q. It answers with the
    greedy continuation of the templated turn."""
    import re

    lm, tokenizer = loaded("bytes-d1")
    res = subprocess.run([sys.executable, "-m", "mlx_lm", "chat", "--model",
                          str(exports("bytes-d1")), "--trust-remote-code", "--max-tokens", "8",
                          "--temp", "0"], input="Hello\nq\n", capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    expected = tokenizer.decode(_mlx_lm_greedy(lm, tokenizer, "user: Hello\nassistant:", 7))
    words = lambda text: re.sub(r"\x1b\[[0-9;]*[A-Za-z]|\W", "", text)  # noqa: E731
    assert words(expected) and words(expected) in words(res.stdout)
    assert "chat_template is not set" not in res.stdout + res.stderr


def _mlx_kssm_greedy_base(folder, prompt, max_tokens):
    """mlx-kssm generate --temp 0 on `folder`, as base ids."""
    return _kssm_greedy(folder, prompt, max_tokens=max_tokens)


@needs_mlx_lm
@pytest.mark.slow
def test_quantized_export_runs_in_mlx_lm(runs, tmp_path):
    """export --format mlx-lm --quantize 4: mlx-lm loads it (the 72-wide readout padded, named
    in the config) and decodes the tokens mlx-kssm decodes from the same folder."""
    from mlx_lm import load

    out = tmp_path / "q4"
    res = CliRunner().invoke(main, ["export", "--model", str(runs["bytes-d1"]), "--format",
                                    "mlx-lm", "--out", str(out), "--quantize", "4"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["quantization"][
        "layers.0.bank.out_proj"] == {"group_size": 64, "bits": 4}
    assert "| quantization | 4-bit affine, group size 64" in (out / "README.md").read_text()
    lm, tokenizer = load(str(out), trust_remote_code=True)
    assert type(lm.layers[0].bank.out_proj).__name__ == "PaddedQuantizedLinear"
    for prompt in PROMPTS:
        assert _mlx_lm_greedy(lm, tokenizer, prompt, max_tokens=16) == \
            _mlx_kssm_greedy_base(out, prompt, 16)


@needs_mlx_lm
@pytest.mark.slow
def test_mlx_lm_convert_q_loads_in_mlx_kssm(runs, exports, tmp_path):
    """mlx_lm.convert -q of an export (a compacted cl100k_base: convert drops vocab_map.npy,
    config.json's bitmap stands in) loads in mlx-kssm, which decodes mlx-lm's tokens; its
    README is mlx-lm's generic card (ours does not survive: docs/interop.md says so)."""
    from mlx_lm import convert, load

    out = tmp_path / "converted"
    convert(str(exports("cl100k-d2")), str(out), quantize=True, q_bits=4,
            trust_remote_code=True)
    assert not (out / "vocab_map.npy").exists()
    model, tokenizer = mlx_kssm.load(out)
    assert type(model.layers[0].bank.in_proj).__name__ == "QuantizedLinear"
    lm, hf = load(str(out), trust_remote_code=True)
    for prompt in PROMPTS:
        assert _mlx_kssm_greedy_base(out, prompt, 12) == _mlx_lm_greedy(lm, hf, prompt, 12)
    commands = (["generate", "--model", str(out), "--prompt", PROMPTS[0], "-m", "4"],
                ["evaluate", "--model", str(out), "--data", str(runs["data"]), "--batches", "1",
                 "--batch-size", "1", "--seq-len", "16", "--samples", "0"],
                ["export", "--model", str(out), "--out", str(tmp_path / "again")])
    for args in commands:  # evaluate and export check the compacted vocabulary too
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
    assert "K-SSM" not in (out / "README.md").read_text()


@needs_mlx_lm
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("datasets") is None,
                    reason="mlx_lm.perplexity needs datasets (the mlx-lm extra brings it)")
def test_mlx_lm_perplexity_runs_on_local_text(exports, tmp_path):
    data = tmp_path / "ppl"
    data.mkdir()
    text = (FIXTURES / "pg1342_2024.txt").read_text(encoding="utf-8")[:20000]
    lines = [json.dumps({"text": text[i:i + 2000]}) for i in range(0, len(text), 2000)]
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    env = {**__import__("os").environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf")}
    res = subprocess.run([sys.executable, "-m", "mlx_lm", "perplexity", "--model",
                          str(exports("bytes-d1")), "--trust-remote-code", "--data-path",
                          str(data), "--sequence-length", "64", "--num-samples", "4",
                          "--batch-size", "2"], capture_output=True, text=True, timeout=300,
                         env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "Perplexity" in res.stdout


# ----------------------------------------------------------------------- bad input

def _one_error_line(res, *fragments):
    """Exit status 1 and one `Error:` line, the last (progress lines may come before it)."""
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    assert errors == lines[-1:], res.output
    for fragment in fragments:
        assert fragment in errors[0], res.output
    assert "Traceback" not in res.output


def test_missing_extra_names_it(tmp_path, monkeypatch):
    """Runs without the extra too: it is the message a user without it sees."""
    model = build_model("tiny", vocab_size=257, seed=0)
    save_model(tmp_path / "m", model, tokenizer_spec={"kind": "bytes"})
    monkeypatch.setitem(sys.modules, "mlx_lm", None)  # `import mlx_lm` fails as if absent
    res = CliRunner().invoke(main, ["export", "--model", str(tmp_path / "m"), "--format",
                                    "mlx-lm", "--out", str(tmp_path / "e")])
    _one_error_line(res, "mlx-lm extra", "pip install 'mlx-kssm[mlx-lm]'")
    assert not (tmp_path / "e").exists()


def _export_is_refused(model_dir, tmp_path, fragments, *args):
    """`export --format mlx-lm` into an earlier export: one Error line, the export untouched
    and no temporary folder left beside it."""
    out = tmp_path / "out"
    save_model(out, build_model("tiny", vocab_size=257, seed=0), tokenizer_spec={"kind": "bytes"})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    res = CliRunner().invoke(main, ["export", "--model", str(model_dir), "--format", "mlx-lm",
                                    "--out", str(out), *args])
    _one_error_line(res, *fragments)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@needs_mlx_lm
def test_transformer_is_refused(tmp_path):
    save_model(tmp_path / "t", build_model("transformer-tiny", vocab_size=257, seed=0),
               tokenizer_spec={"kind": "bytes"})
    _export_is_refused(tmp_path / "t", tmp_path, ["transformer", "K-SSM models only"])


@needs_mlx_lm
def test_unconvertible_tokenizer_is_refused(tmp_path):
    """A .tiktoken ranks file without a token for every byte cannot be a byte-level BPE."""
    from mlx_kssm.data.tokenizer import load_tokenizer

    ranks = tmp_path / "small.tiktoken"
    ranks.write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {i}\n"
                             for i, b in enumerate(range(97, 123))))
    tokenizer = load_tokenizer(str(ranks))
    save_model(tmp_path / "m", build_model("tiny", vocab_size=tokenizer.vocab_size, seed=0),
               tokenizer_spec=tokenizer.spec)
    _export_is_refused(tmp_path / "m", tmp_path, ["single bytes", "byte-level BPE needs all 256"])


@pytest.mark.slow
@needs_mlx_lm
@pytest.mark.parametrize("args,fragment", [
    (["--force-r", "1.5"], "--force-r must lie in [0, 1]"),
    (["--force-r-layer", "7=0.3"], "unknown layer 7"),
    (["--evaluation", "{tmp}/missing.json"], "--evaluation"),
])
def test_bad_options_are_one_line(runs, tmp_path, args, fragment):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    _export_is_refused(runs["bytes-d1"], tmp_path, [fragment], *args)


@pytest.mark.slow
@needs_mlx_lm
def test_evaluation_of_another_kind_or_model_is_refused(runs, tmp_path):
    """The card quotes --evaluation's figures: an intervene sweep was silently ignored, and
    another checkpoint's evaluation was quoted for this model."""
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"summary": {}, "prompts": []}))
    _export_is_refused(runs["bytes-d1"], tmp_path, ["not a file written by `mlx-kssm evaluate"],
                       "--evaluation", str(sweep))
    other = save_model(tmp_path / "other", build_model("tiny", vocab_size=257, seed=5),
                       tokenizer_spec={"kind": "bytes"})
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps({"model": str(other), "val_loss": 5.0, "config": {}}))
    _export_is_refused(runs["bytes-d1"], tmp_path, ["whose weights are not those of"],
                       "--evaluation", str(evaluation))


@pytest.mark.slow
@needs_mlx_lm
def test_failed_check_leaves_earlier_export(runs, tmp_path, monkeypatch):
    """The mlx-lm check runs on the complete new folder before the swap: a failure there
    keeps --out as it was."""
    from mlx_kssm.export import to_mlx_lm

    def disagree(*args):
        raise to_mlx_lm.ExportError("the mlx-lm model file disagrees with mlx_kssm")
    monkeypatch.setattr(to_mlx_lm, "check_logits", disagree)
    _export_is_refused(runs["bytes-d1"], tmp_path, ["disagrees"])


def test_mlx_lm_options_need_the_format(tmp_path):
    save_model(tmp_path / "m", build_model("tiny", vocab_size=257, seed=0),
               tokenizer_spec={"kind": "bytes"})
    res = CliRunner().invoke(main, ["export", "--model", str(tmp_path / "m"), "--out",
                                    str(tmp_path / "e"), "--force-r", "0.3"])
    _one_error_line(res, "--force-r apply to --format mlx-lm only")


@pytest.mark.slow
@needs_mlx_lm
def test_mlx_kssm_reexport_drops_mlx_lm_keys(exports, tmp_path):
    """An mlx-lm export is also an mlx-kssm folder; exported back to the mlx-kssm format it
    must not keep a model_file pointing at a file the new folder lacks."""
    res = CliRunner().invoke(main, ["export", "--model", str(exports("bytes-d1")), "--out",
                                    str(tmp_path / "plain")])
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert "model_file" not in config and not (tmp_path / "plain" / "kssm.py").exists()


@pytest.mark.slow
def test_model_card_reports_training_data_and_verdicts(runs):
    from mlx_kssm.data.loader import read_meta
    from mlx_kssm.export.model_card import model_card
    from mlx_kssm.io import resolve_model_dir

    evaluation = {"val_loss": 4.25, "val_ppl": 70.1, "config": {
                      "split": "val", "batches": 2, "batch_size": 4, "seq_len": 64},
                  "causality": {
                      "applicable": True, "n_sequences": 8, "seq_len": 64, "alpha": 0.01,
                      "variance": {"passed": True}, "intervention": {
                          "passed": False, "random_init": {"learned": {"verdict": "FAIL"}}},
                      "correlation": {"verdict": "INCONCLUSIVE"}, "passed": False}}
    model, tokenizer = mlx_kssm.load(runs["cl100k-d2"])
    card = model_card("tiny-kssm", model, tokenizer, resolve_model_dir(runs["cl100k-d2"]),
                      read_meta(runs["data"]), evaluation, force_r=0.3)
    assert card.startswith("---\nlibrary_name: mlx\npipeline_tag: text-generation\ntags:\n")
    assert 'load("tiny-kssm", trust_remote_code=True)' in card
    assert "Validation loss 4.2500" in card and "**FAIL**" in card
    assert "on the val split, 8 windows of 64 tokens" in card  # read from evaluate's config
    assert "| intervention | forcing R changes the next-token distribution | FAIL |" in card
    assert "| correlation | R tracks next-token entropy | INCONCLUSIVE |" in card
    assert "| learned to use it | forcing R moves the output more than at random init | FAIL |" in card
    assert "pg1342_2024.txt" in card and "| seed | 1 |" in card  # the data, the run
    title = card.split("---\n")[2].strip().splitlines()[0]  # after the front matter
    assert title.startswith("# tiny-kssm: K-SSM tiny trained on "), title
    assert "pg1342_2024.txt" in title, title
    assert "cl100k_base compacted to" in card and "| forced R | 0.3 |" in card
    bare = model_card("m", model, tokenizer, resolve_model_dir(runs["cl100k-d2"]), None, None)
    assert "Causality suite: not run" in bare and "--data DIR" in bare
    assert "\n# m: K-SSM tiny trained on somewhere\n" in bare  # the run's recorded data


def test_model_file_is_mlx_kssms_own_code():
    """The exported kssm.py carries the package's definitions as they stand (one source for
    both), in place of the template's imports from mlx_kssm; nothing imports mlx_kssm."""
    import inspect

    from mlx_kssm.export.model_file import model_source
    from mlx_kssm.kernels import cpu, reference
    from mlx_kssm.models import base, bistable, kssm, order_params

    text = model_source()
    compile(text, "kssm.py", "exec")
    for shared in (reference.coupling_field, reference.scan_step, reference.scan_sequential,
                   cpu._forward, order_params.order_parameters, bistable.raw_u,
                   bistable.bistable_core, kssm.projection_sizes, kssm.OscillatorBankBase,
                   base.MLP):
        assert inspect.getsource(shared) in text, shared.__name__
    imports = [line.strip() for line in text.splitlines()
               if line.lstrip().startswith(("import ", "from "))]
    assert imports and not [i for i in imports if "mlx_kssm" in i or i.startswith("from .")]
