"""README.md of an mlx-lm export: a model card in the mlx-community style (YAML front matter
with library_name: mlx, pipeline_tag and tags; how to use it with mlx-lm), plus what a reader
of a K-SSM needs: the model, how it was trained, the data, val loss and the causality
verdicts.

Facts come from the model folder and its training run (RUN/config.json, trainer_state.json,
best/metrics.json), from `--data` (the prepared folder's meta.json) and from `--evaluation`
(a JSON file written by `mlx-kssm evaluate --json`, with `--causality` for the verdicts).
Paths recorded inside those files are shown, never followed.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from .._types import is_int
from ..data.tokenizer import describe_tokenizer
from ..models import count_parameters

TAGS = ("mlx", "mlx-kssm", "kssm", "kuramoto", "oscillators", "state-space-model")
CAUSALITY_TESTS = (("variance", "R varies across inputs"),
                   ("intervention", "forcing R changes the next-token distribution"),
                   ("correlation", "R tracks next-token entropy"))


def read_json(path):
    """A JSON object from `path`, or None when the file is missing or not one."""
    try:
        obj = json.loads(Path(path).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def run_folder(model_folder: Path) -> Path | None:
    """The training run a model folder belongs to (RUN, RUN/best, RUN/checkpoints/step_N)."""
    for folder in (model_folder, model_folder.parent, model_folder.parent.parent):
        if isinstance((read_json(folder / "config.json") or {}).get("train"), dict):
            return folder
    return None


def model_card(name: str, model, tokenizer, model_folder: Path, data_meta: dict | None,
               evaluation: dict | None, force_r=None, quantization=None) -> str:
    """The card's text. `quantization`: (bits, group size) or config.json's entry, or None."""
    run = run_folder(Path(model_folder))
    sections = [_front_matter(), _title(name, model, data_meta, run), _summary(model),
                _usage(name),
                _model_table(model, tokenizer, force_r, quantization),
                _training(model_folder, run),
                _data(data_meta, run), _evaluation(model_folder, evaluation)]
    return "\n".join(sections)


def _title(name: str, model, data_meta: dict | None, run: Path | None) -> str:
    """`# NAME: K-SSM PRESET trained on DATA`, the data as --data describes it (its first
    source titles), else as the run recorded it (its folder name)."""
    kind = f"K-SSM {model.args.preset or 'custom'}"
    titles = [s.get("title") or s.get("file") for s in (data_meta or {}).get("sources") or []
              if isinstance(s, dict)]
    if titles:
        data = ", ".join(map(str, titles[:3])) + (f" and {len(titles) - 3} more"
                                                  if len(titles) > 3 else "")
    else:
        recorded = ((read_json(run / "config.json") or {}).get("train", {}).get("data")
                    if run else None)
        data = Path(str(recorded)).name if recorded else "unrecorded data"
    return f"# {name}: {kind} trained on {data}\n"


def _front_matter() -> str:
    tags = "".join(f"- {t}\n" for t in TAGS)
    return f"---\nlibrary_name: mlx\npipeline_tag: text-generation\ntags:\n{tags}---\n"


def _summary(model) -> str:
    return (f"A K-SSM (Kuramoto state-space model) language model, trained with "
            f"mlx-kssm {__version__} and exported for mlx-lm. Each layer "
            f"carries a bank of coupled oscillators over the tokens; the layer's output sees only "
            f"the order parameters of their phases (the synchronization R and its harmonics), so "
            f"R is the one path from context to prediction. The architecture is `kssm.py` in "
            f"this folder: mlx-lm runs it with `trust_remote_code`.\n")


def _usage(name: str) -> str:
    return f"""## Use with mlx

```bash
pip install mlx-lm
```

```python
from mlx_lm import load, generate

model, tokenizer = load("{name}", trust_remote_code=True)
response = generate(model, tokenizer, prompt="The ", max_tokens=100, verbose=True)
```

```bash
mlx_lm.generate --model {name} --trust-remote-code --ignore-chat-template --prompt "The "
mlx_lm.server --model {name} --trust-remote-code   # OpenAI-compatible /v1/completions
mlx_lm.chat --model {name} --trust-remote-code      # and the server's /v1/chat/completions
```

This is a base model: its chat template writes each message as a `role: text` line and ends
with `assistant:`, and the model goes on from there as it would from any text (it was not
trained to answer, nor to stop after its turn). `mlx_lm.generate` applies that template to
`--prompt` unless given `--ignore-chat-template`: with it, the model continues the prompt
itself, as `mlx-kssm generate` does.

`mlx_lm.convert` and `mlx_lm.fuse` write mlx-lm's own short card in place of this one: copy
this README.md into their output folder to keep it.

To clamp R in the served model, set `"force_r"` in config.json (a number for every layer, or
one number or null per layer), or export with `mlx-kssm export --format mlx-lm --force-r R`.
"""


def _model_table(model, tokenizer, force_r, quantization=None) -> str:
    a = model.args
    design = {1: "1 (input-dependent rotation, no gate, sigmoid/tanh)",
              2: "2 (fixed rotation per oscillator, output gate, algebraic squashes)"}
    rows = [("preset", a.preset or "custom"), ("parameters", f"{count_parameters(model):,}"),
            ("K-SSM design", design.get(a.design, str(a.design))),
            ("layers x groups x oscillators", f"{a.n_layers} x {a.n_groups} x {a.osc_per_group}"
                                              f" ({a.harmonics} harmonics), d_model {a.d_model}"),
            ("readout", "order parameters" if a.readout == "order_params"
             else "bolted (negative control: R bypassed)"),
            ("coupling", _coupling(a)),
            ("tokenizer", describe_tokenizer(tokenizer.spec)),
            ("forced R", "none" if force_r is None else json.dumps(force_r)),
            ("quantization", _quantization(quantization))]
    return "## Model\n\n| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


def _quantization(quantization) -> str:
    if isinstance(quantization, dict):
        quantization = (quantization.get("bits"), quantization.get("group_size"))
    if not quantization:
        return "none"
    bits, group_size = quantization
    return f"{bits}-bit affine, group size {group_size} (docs/interop.md of mlx-kssm)"


def _coupling(a) -> str:
    if not a.bistable:
        return "sigmoid"
    box = f"projections boxed to +-{a.core_box:g}" if a.core_box else "raw projections"
    return f"bistable core (v3), {box}, u bound {a.u_bound}"


def _training(model_folder: Path, run: Path | None) -> str:
    state = read_json(Path(model_folder) / "trainer_state.json") or {}
    train = (read_json(run / "config.json") or {}).get("train", {}) if run else {}
    if not train and not state:
        return ("## Training\n\nNot recorded: exported from a model folder without its "
                "training run.\n")
    rows = [("steps", state.get("step", "unknown")),
            ("batch x seq_len x grad_accum", f"{train.get('batch_size')} x "
                                             f"{train.get('seq_len')} x {train.get('grad_accum')}"),
            ("optimizer, learning rate", f"{train.get('optimizer')}, {train.get('learning_rate')}"),
            ("seed", train.get("seed")), ("run", run.name if run else "unknown")]
    return ("## Training\n\nTrained with `mlx-kssm train`.\n\n| | |\n|---|---|\n"
            + "".join(f"| {k} | {v} |\n" for k, v in rows))


def _data(meta: dict | None, run: Path | None) -> str:
    if meta is None:
        recorded = ((read_json(run / "config.json") or {}).get("train", {}).get("data")
                    if run else None)
        where = f" (the run trained on `{recorded}`)" if recorded else ""
        return f"## Data\n\nNot described{where}: export with `--data DIR` to list it.\n"
    sources = meta.get("sources") or []
    titles = [s.get("title") or s.get("file") for s in sources if isinstance(s, dict)]
    shown = ", ".join(map(str, titles[:12])) + (f", ... ({len(titles)} in all)"
                                                if len(titles) > 12 else "")
    splits = meta.get("splits") or {}
    counts = ", ".join(f"{s} {info.get('tokens', 0):,} tokens ({info.get('docs', '?')} documents)"
                       for s, info in splits.items() if isinstance(info, dict))
    return (f"## Data\n\n{len(titles)} source file(s): {shown}.\n\n{counts}; split by "
            f"{meta.get('split', '?')}; tokenizer {describe_tokenizer(meta.get('tokenizer'))}.\n")


def _evaluation(model_folder: Path, evaluation: dict | None) -> str:
    lines = ["## Evaluation\n"]
    if evaluation and "val_loss" in evaluation:
        config = evaluation.get("config") if isinstance(evaluation.get("config"), dict) else {}
        batches, size = config.get("batches"), config.get("batch_size")
        windows = batches * size if is_int(batches) and is_int(size) else "?"
        lines.append(f"Validation loss {evaluation['val_loss']:.4f} (perplexity "
                     f"{evaluation.get('val_ppl', float('nan')):.2f}) on the "
                     f"{config.get('split', '?')} split, {windows} windows of "
                     f"{config.get('seq_len', '?')} tokens (`mlx-kssm evaluate`).\n")
    else:
        best = read_json(Path(model_folder) / "metrics.json") or {}
        state = read_json(Path(model_folder) / "trainer_state.json") or {}
        loss = best.get("val_loss", state.get("best_val_loss"))
        lines.append(f"Validation loss {loss:.4f} at step {state.get('best_step', '?')} "
                     "(the trainer's evaluation).\n" if isinstance(loss, (int, float))
                     else "Validation loss: not recorded.\n")
    lines.append(_causality((evaluation or {}).get("causality")))
    return "\n".join(lines)


def _causality(res) -> str:
    if not isinstance(res, dict):
        return ("Causality suite: not run for this export. Run `mlx-kssm evaluate --model DIR "
                "--data DATA --causality --json eval.json` and export with "
                "`--evaluation eval.json`.\n")
    if not res.get("applicable", True):
        return f"Causality suite: not applicable ({res.get('reason', '')}).\n"
    rows = []
    for key, claim in CAUSALITY_TESTS:
        test = res.get(key)
        if isinstance(test, dict):
            rows.append(f"| {key} | {claim} | {_verdict(test)} |\n")
    learned = _learned(res)
    if learned is not None:  # part of the overall verdict (docs/causality.md)
        rows.append(f"| learned to use it | forcing R moves the output more than at random "
                    f"init | {_verdict(learned)} |\n")
    overall = _verdict(res)
    return (f"Causality suite ({res.get('n_sequences', '?')} held-out windows x "
            f"{res.get('seq_len', '?')} tokens, alpha {res.get('alpha', '?')}): "
            f"**{overall}**\n\n| test | claim | verdict |\n|---|---|---|\n" + "".join(rows))


def _learned(res: dict):
    """Test 2b's result in an evaluate JSON's causality suite, or None when it did not run."""
    intervention = res.get("intervention")
    random_init = intervention.get("random_init") if isinstance(intervention, dict) else None
    learned = random_init.get("learned") if isinstance(random_init, dict) else None
    return learned if isinstance(learned, dict) else None


def _verdict(result: dict) -> str:
    if isinstance(result.get("verdict"), str):
        return result["verdict"]
    return "PASS" if result.get("passed") else "FAIL"
