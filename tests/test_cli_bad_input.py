"""Every command line (the trainer, main, and the inference tools generate, fill_mask, classify,
transcribe, sample) answers bad input with exactly one stderr line `error: ...` naming the argument, exit status 2, no traceback.

The tools run in this process, one row after another (fmjax.cli_errors.run defines each tool's
flags for the call only), so a row costs milliseconds rather than a Python start-up. The
workdirs: a causal_lm run trained for one step, and for the other paradigms runs as the trainer
leaves them before their first checkpoint (config.json, tokenizer, class names, an empty
checkpoints/), which is all the checks need: every one of them comes before the model loads.
"""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, load_config, set_fields, small_config
from fmjax import classify, cli_errors, fill_mask, generate, main, sample, train, transcribe
from fmjax import data as fmdata
from fmjax.objectives import diffusion as diffusion_objective

TOOLS = {"main": main, "generate": generate, "fill_mask": fill_mask, "classify": classify, "transcribe": transcribe,
         "sample": sample}
NOT_UTF8 = "caf\udce9"  # how Python hands over a command-line argument holding the Latin-1 byte 0xe9


def started_run(folder, config, class_names=()):
  """A workdir as a run leaves it before its first save (the trainer writes the tokenizer and the
  class names, then config.json; Orbax has made checkpoints/ by then)."""
  folder.mkdir()
  fmdata.save_tokenizer(fmdata.ByteTokenizer(), str(folder / "tokenizer"))
  if class_names:
    (folder / diffusion_objective.CLASSES_FILE).write_text(json.dumps({"class_names": list(class_names)}))
  (folder / "config.json").write_text(json.dumps(config.to_dict()))
  (folder / "checkpoints").mkdir()
  return str(folder)


@pytest.fixture(scope="module")
def places(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("cli")
  gpt = small_config(tmp, train__steps=1, optim__warmup_steps=0)
  train.train_and_evaluate(gpt, str(tmp / "gpt"))
  p = {"root": str(ROOT), "tmp": str(tmp), "gpt": str(tmp / "gpt"), "missing": str(tmp / "nothing"),
       "missing_file": str(tmp / "nothing.png"), "out": str(tmp / "grid.png")}
  p["gpt_started"] = started_run(tmp / "gpt_started", gpt)
  p["bert"] = started_run(tmp / "bert", load_config("bert", "tiny"))
  p["clip"] = started_run(tmp / "clip", load_config("clip", "tiny"))
  p["speech"] = started_run(tmp / "speech", load_config("speech", "tiny"))
  p["speech_masked"] = started_run(tmp / "speech_masked", load_config("speech", "tiny-masked"))
  p["diffusion"] = started_run(tmp / "diffusion", load_config("diffusion", "tiny"))
  p["diffusion_label"] = started_run(tmp / "diffusion_label", load_config("diffusion", "tiny-label"),
                                     class_names=[str(i) for i in range(10)])
  unconditional = set_fields(load_config("diffusion", "tiny"), diffusion__condition="none", diffusion__guidance=1.0)
  p["diffusion_none"] = started_run(tmp / "diffusion_none", unconditional)
  for name, content in [("empty", None), ("not_json", b"{objective: causal_lm"), ("not_utf8_json", b"\xff\xfe{}"),
                        ("not_object", b"[1, 2]")]:
    (tmp / name).mkdir()
    if content is not None:
      (tmp / name / "config.json").write_bytes(content)
    p[name] = str(tmp / name)
  (tmp / "some_file").write_text("not a folder")
  p["some_file"] = str(tmp / "some_file")
  (tmp / "not_utf8.txt").write_bytes(b"--seed=1\n--prompt=caf\xe9\n")
  p["not_utf8_file"] = str(tmp / "not_utf8.txt")
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp / "digit.png")
  p["image"] = str(tmp / "digit.png")
  (tmp / "not_an_image.png").write_bytes(b"this is not a png")
  p["bad_image"] = str(tmp / "not_an_image.png")
  import soundfile
  soundfile.write(tmp / "short.wav", np.zeros(8000, np.float32), 16000)
  soundfile.write(tmp / "long.wav", np.zeros(5 * 16000, np.float32), 16000)  # the window is 4 s
  (tmp / "not_audio.wav").write_bytes(b"not audio")
  p.update(wav=str(tmp / "short.wav"), long_wav=str(tmp / "long.wav"), bad_audio=str(tmp / "not_audio.wav"))
  return p


GPT = ["--workdir", "{gpt}"]
BERT = ["--workdir", "{bert}"]
CLIP = ["--workdir", "{clip}", "--image", "{image}"]
SPEECH = ["--workdir", "{speech}"]
DIFFUSION = ["--workdir", "{diffusion}", "--out", "{out}", "--prompt", "seven"]
LABELLED = ["--workdir", "{diffusion_label}", "--out", "{out}"]
UNCONDITIONAL = ["--workdir", "{diffusion_none}", "--out", "{out}"]

TINY_GPT = ["--config", "{root}/experiments/gpt.py:tiny", "--workdir", "{tmp}/new_run"]

ROWS = [
    # ---- main (the trainer): flags, the config, the workdir; all before anything is built ----
    ("main", [], "--config"),
    ("main", ["--config", "{root}/experiments/gpt.py:tiny"], "--workdir"),
    ("main", ["--config", "{root}/experiments/nope.py:tiny", "--workdir", "{tmp}/r"], "nope.py"),
    ("main", ["--config", "{root}/experiments/gpt.py:huge", "--workdir", "{tmp}/r"], "unknown variant 'huge'"),
    ("main", TINY_GPT + ["--config.train.steps=-1"], "config.train.steps=-1: must be a positive integer"),
    ("main", TINY_GPT + ["--config.train.stepz=3"], "stepz"),
    ("main", TINY_GPT + ["--config.train.steps=many"], "--config.train.steps=many"),
    ("main", TINY_GPT + ["--config.train.on_nonfinite=ignore"], "config.train.on_nonfinite='ignore': choose one of"),
    ("main", TINY_GPT + ["--config.optim.learning_rate=nan"], "config.optim.learning_rate=nan"),
    ("main", TINY_GPT + ["--config.train.batch_size=7"], "config.train.batch_size=7"),
    ("main", TINY_GPT + ["extra"], "unexpected arguments ['extra']"),
    ("main", ["--config", "{root}/experiments/gpt.py:tiny", "--workdir", "{some_file}/run"],
     "workdir {some_file}/run is not writable"),
    ("main", ["--config", "{root}/experiments/gpt.py:tiny", "--workdir", "{gpt}"],
     "workdir {gpt} holds a different run (checkpoint step 1): config.data.seq_len: 32 in the run, 128 now"),
    ("main", ["--config", "{root}/experiments/bert.py:tiny", "--workdir", "{gpt}"],
     "config.objective: 'causal_lm' in the run, 'masked_lm' now"),
    # ---- generate: the workdir, then every setting ----
    ("generate", [], "--workdir is required"),
    ("generate", ["--workdir", "{missing}"], "workdir '{missing}' does not exist"),
    ("generate", ["--workdir", "{some_file}"], "workdir '{some_file}' is a file"),
    ("generate", ["--workdir", "{empty}"], "{empty}/config.json not found"),
    ("generate", ["--workdir", "{not_json}"], "{not_json}/config.json is not valid JSON"),
    ("generate", ["--workdir", "{not_utf8_json}"], "{not_utf8_json}/config.json is not valid JSON"),
    ("generate", ["--workdir", "{not_object}"], "{not_object}/config.json is not a run's config"),
    ("generate", ["--workdir", "{bert}"], "holds a 'masked_lm' run; this tool needs a 'causal_lm' run"),
    ("generate", ["--workdir", "{gpt_started}"], "workdir '{gpt_started}' holds no checkpoint yet"),
    ("generate", GPT + ["--max_new_tokens", "-1"], "max_new_tokens=-1: must be an integer >= 1"),
    ("generate", GPT + ["--max_new_tokens", "0"], "max_new_tokens=0"),
    ("generate", GPT + ["--max_new_tokens", "500"], "max_new_tokens (500) exceeds the model's context of 32"),
    ("generate", GPT + ["--prompt", "x" * 100], "prompt (101 tokens)"),
    ("generate", GPT + ["--max_new_tokens", "many"], "--max_new_tokens=many"),
    ("generate", GPT + ["--top_p", "2"], "top_p=2.0: must be a finite number in (0, 1]"),
    ("generate", GPT + ["--top_p", "0"], "top_p=0.0"),
    ("generate", GPT + ["--top_p", "nan"], "top_p=nan"),
    ("generate", GPT + ["--temperature", "nan"], "temperature=nan: must be a finite number >= 0"),
    ("generate", GPT + ["--temperature", "-1"], "temperature=-1.0"),
    ("generate", GPT + ["--temperature", "inf"], "temperature=inf"),
    ("generate", GPT + ["--top_k", "-3"], "top_k=-3"),
    ("generate", GPT + ["--top_k", "100000"], "top_k=100000"),
    ("generate", GPT + ["--seed", "abc"], "--seed=abc"),
    ("generate", GPT + ["--seed", "-1"], "seed=-1"),
    ("generate", GPT + ["--seed", str(2**32)], f"seed={2**32}"),
    ("generate", GPT + ["--prompt", NOT_UTF8], "prompt='caf\\udce9': not UTF-8"),
    ("generate", GPT + ["--topp", "0.9"], "Unknown command line flag 'topp'"),
    ("generate", GPT + ["extra"], "unexpected arguments ['extra']"),
    ("generate", GPT + ["--flagfile", "{not_utf8_file}"], "--flagfile"),
    ("generate", GPT + ["--flagfile", "{missing_file}"], "{missing_file}"),
    # ---- fill_mask ----
    ("fill_mask", ["--text", "a [MASK]"], "--workdir is required"),
    ("fill_mask", BERT, "--text is required"),
    ("fill_mask", BERT + ["--text", ""], "no [MASK] in text ''"),
    ("fill_mask", BERT + ["--text", "no mask here"], "no [MASK] in text 'no mask here'"),
    ("fill_mask", BERT + ["--text", "a [MASK]", "--top_k", "0"], "top_k=0"),
    ("fill_mask", BERT + ["--text", "a [MASK]", "--top_k", "1.5"], "--top_k=1.5"),
    ("fill_mask", BERT + ["--text", "[MASK]" + "x" * 200], "context is 128 tokens"),
    ("fill_mask", BERT + ["--text", NOT_UTF8 + " [MASK]"], "text='caf\\udce9 [MASK]'"),
    ("fill_mask", GPT + ["--text", "a [MASK]"], "holds a 'causal_lm' run; this tool needs a 'masked_lm' run"),
    ("fill_mask", ["--workdir", "{missing}", "--text", "a [MASK]"], "workdir '{missing}' does not exist"),
    ("fill_mask", BERT + ["--text", "a [MASK]"], "workdir '{bert}' holds no checkpoint yet"),
    # ---- classify ----
    ("classify", ["--workdir", "{clip}", "--labels", "cat,dog"], "--image is required"),
    ("classify", CLIP, "--labels is required"),
    ("classify", CLIP + ["--labels", " , "], "no labels"),
    ("classify", CLIP + ["--labels", NOT_UTF8], "labels='caf\\udce9'"),
    ("classify", CLIP + ["--labels", "cat,dog", "--top_k", "-1"], "top_k=-1"),
    ("classify", CLIP + ["--labels", "cat,dog", "--templates", "nope"], "templates='nope'"),
    ("classify", ["--workdir", "{clip}", "--image", "{missing_file}", "--labels", "cat"], "{missing_file}"),
    ("classify", ["--workdir", "{clip}", "--image", "{bad_image}", "--labels", "cat"], "{bad_image}"),
    ("classify", ["--workdir", "{gpt}", "--image", "{image}", "--labels", "cat"],
     "this tool needs a 'contrastive' run"),
    ("classify", ["--workdir", "{not_json}", "--image", "{image}", "--labels", "cat"], "is not valid JSON"),
    ("classify", CLIP + ["--labels", "cat,dog"], "workdir '{clip}' holds no checkpoint yet"),
    # ---- transcribe ----
    ("transcribe", SPEECH, "--audio is required"),
    ("transcribe", SPEECH + ["--audio", "{missing_file}"], "{missing_file}"),
    ("transcribe", SPEECH + ["--audio", "{bad_audio}"], "{bad_audio}"),
    ("transcribe", SPEECH + ["--audio", "{long_wav}"], "{long_wav}: 5.00 s of audio is longer than the run's window"),
    ("transcribe", SPEECH + ["--audio", "{wav}", "--beam", "0"], "--beam=0"),
    ("transcribe", SPEECH + ["--audio", "{wav}", "--beam", "-2"], "--beam=-2"),
    ("transcribe", SPEECH + ["--audio", "{wav}", "--beam", "wide"], "--beam=wide"),
    ("transcribe", SPEECH + ["--audio", "{wav}", "--max_tokens", "-1"], "--max_tokens=-1"),
    ("transcribe", SPEECH + ["--audio", "{wav}", "--max_tokens", "1"], "--max_tokens=1: must be an integer in [2, 65]"),
    ("transcribe", SPEECH + ["--audio", "{wav}", "--max_tokens", "100000"], "--max_tokens=100000"),
    ("transcribe", ["--workdir", "{speech_masked}", "--audio", "{wav}"], "this tool needs a 'speech_seq2seq' run"),
    ("transcribe", ["--workdir", "{empty}", "--audio", "{wav}"], "{empty}/config.json not found"),
    ("transcribe", SPEECH + ["--audio", "{wav}"], "workdir '{speech}' holds no checkpoint yet"),
    # ---- sample ----
    ("sample", ["--workdir", "{diffusion}", "--prompt", "seven"], "--out is required"),
    ("sample", DIFFUSION[:2] + ["--out", "{tmp}/no/such/folder/g.png"], "--out="),
    ("sample", DIFFUSION[:2] + ["--out", "{tmp}"], "is a folder"),
    ("sample", DIFFUSION + ["--npy", "{tmp}/no/such/folder/s.npy"], "--npy="),
    ("sample", DIFFUSION + ["--num", "0"], "--num=0: must be an integer >= 1"),
    ("sample", DIFFUSION + ["--num", "-1"], "--num=-1"),
    ("sample", DIFFUSION + ["--steps", "0"], "--steps=0"),
    ("sample", DIFFUSION + ["--steps", "5000"], "--steps=5000: must be an integer in [1, 1000]"),
    ("sample", DIFFUSION + ["--eta", "-1"], "--eta=-1.0"),
    ("sample", DIFFUSION + ["--eta", "nan"], "--eta=nan"),
    ("sample", DIFFUSION + ["--guidance", "nan"], "--guidance=nan"),
    ("sample", DIFFUSION + ["--guidance", "-2"], "--guidance=-2.0"),
    ("sample", DIFFUSION + ["--sampler", "euler"], "--sampler='euler'"),
    ("sample", DIFFUSION + ["--seed", "1.5"], "--seed=1.5"),
    ("sample", DIFFUSION + ["--seed", "-1"], "--seed=-1"),
    ("sample", DIFFUSION + ["--ema=maybe"], "--ema=maybe"),
    ("sample", DIFFUSION[:4] + ["--prompt", ""], "non-empty --prompt"),
    ("sample", DIFFUSION[:4] + ["--prompt", NOT_UTF8], "--prompt='caf\\udce9'"),
    ("sample", DIFFUSION[:4] + ["--label", "3"], "caption-conditioned"),
    ("sample", LABELLED + ["--label", "12"], "--label=12: must be an integer in [0, 9]"),
    ("sample", LABELLED + ["--label", "-1"], "--label=-1"),
    ("sample", LABELLED + ["--prompt", "seven"], "class-conditional"),
    ("sample", UNCONDITIONAL + ["--guidance", "3"], "--guidance=3: this run is unconditional"),
    ("sample", UNCONDITIONAL + ["--prompt", "seven"], "unconditional: give neither --prompt nor --label"),
    ("sample", ["--workdir", "{gpt}", "--out", "{out}"], "this tool needs a 'diffusion' run"),
    ("sample", DIFFUSION, "workdir '{diffusion}' holds no checkpoint yet"),
]


def row_id(row) -> str:
  tool, args, _ = row
  return f"{tool} {' '.join(args)}"[:80]


@pytest.mark.parametrize("tool,args,expected", ROWS, ids=[row_id(r) for r in ROWS])
def test_bad_input_is_one_named_error_line_and_status_2(places, capfd, monkeypatch, tool, args, expected):
  module = TOOLS[tool]
  argv = [f"fmjax.{tool}", *(a.format(**places) for a in args)]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags finds --config.a.b overrides in sys.argv
  capfd.readouterr()  # what the fixture printed (the training run's progress)
  with pytest.raises(SystemExit) as ended:
    cli_errors.run(module.main, module.define_flags, argv)
  stderr = capfd.readouterr().err
  assert ended.value.code == 2, stderr
  assert "Traceback" not in stderr
  lines = stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), stderr
  assert expected.format(**places) in lines[0], stderr
