from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tympan.audio import load_audio
from tympan.export import bundle as bundle_module
from tympan.export.bundle import ExportError, export_bundle
from tympan.runtime.bundle import load_bundle
from tympan.runtime.bundle_manifest import FORMAT, BundleError
from tympan.runtime.decode import DecodeSettings
from tympan.runtime.speech_model import SpeechModel
from tympan.training.model.checkpoint import load_checkpoint
from tympan.training.recipe import RandomEncoderConfig, replace
from tympan.training.trainer import Trainer


def _train(cfg, out: Path) -> Path:
    steps = {"steps": 25, "warmup_steps": 0}
    t = cfg.train
    cfg = replace(cfg, train=replace(t, projector=replace(t.projector, **steps), lora=replace(t.lora, **steps),
                                     joint=replace(t.joint, **steps)))
    Trainer(cfg, out, show_progress=False).run(["projector", "lora", "joint"])
    return out / "joint" / "final"


@pytest.fixture(scope="module", params=["whisper", "seamless_m4t_v2"])
def checkpoint(request, tiny_cfg, tmp_path_factory) -> Path:
    cfg = tiny_cfg
    if request.param == "seamless_m4t_v2":
        cfg = replace(cfg, encoder=replace(cfg.encoder, kind="seamless_m4t_v2",
                                           random=RandomEncoderConfig(32, 2, 2, 64)))
    return _train(cfg, tmp_path_factory.mktemp(f"run-{request.param}"))


def _toy_inputs(toy: Path, split: str, n: int) -> list[tuple[np.ndarray, dict]]:
    lines = [json.loads(x) for x in (toy / f"{split}.jsonl").read_text().splitlines()]
    return [(load_audio(toy / x["audio"], 16000), x) for x in lines if x.get("audio")][:n]


def _checkpoint_tokens(ckpt: Path, inputs) -> list[list[int]]:
    model = load_checkpoint(ckpt)
    out = []
    for audio, line in inputs:
        emb = model.project(model.encode([audio]))
        out.append(model.generate(emb, [model.prompts.instruction(line["task"], line["tgt_lang"],
                                                                  line.get("question"))])[0])
    return out


def _bundle_tokens(bundle: Path, inputs, encoder_file: str | None = None) -> list[list[int]]:
    model = SpeechModel(load_bundle(bundle), encoder_file=encoder_file)
    out = []
    for audio, line in inputs:
        (speech,) = model.embed_audio([audio])
        instruction = model.prompts.instruction(line["task"], line["tgt_lang"], line.get("question"))
        out.append(model.decode(speech, instruction, DecodeSettings.unguarded(model.prompts.max_new_tokens)).tokens)
    return out


def test_export_then_load_gives_the_checkpoints_output(checkpoint: Path, toy_corpus: Path, tmp_path: Path) -> None:
    manifest = export_bundle(checkpoint, tmp_path / "bundle", llm_runtime="torch")
    assert manifest.verification is not None
    assert manifest.verification.encoder_max_abs_diff <= 1e-4
    assert manifest.verification.greedy_tokens_identical
    # On inputs the export did not verify with (training utterances, all three tasks).
    inputs = _toy_inputs(toy_corpus, "train", 9)
    expected = _checkpoint_tokens(checkpoint, inputs)
    assert _bundle_tokens(tmp_path / "bundle", inputs) == expected
    assert any(expected), "the model generated nothing at all: the comparison would be empty"
    loaded = load_bundle(tmp_path / "bundle").manifest
    assert loaded == manifest
    assert loaded.audio.features["type"] in ("whisper_log_mel", "seamless_fbank")
    assert loaded.encoder.output_rate_hz == pytest.approx(50 / 3)
    assert loaded.tasks == {"asr": ["en"], "sqa": ["de", "en", "it", "zh"], "st": ["de", "it", "zh"]}
    assert set(loaded.files) >= {"encoder.onnx", "tokenizer/tokenizer.json", "llm/model.safetensors"}
    assert not any(k.startswith("llm/") and "adapter" in k for k in loaded.files), "LoRA must be merged"


def test_onnx_llm_bundle_gives_the_same_tokens(checkpoint: Path, toy_corpus: Path, tmp_path: Path) -> None:
    manifest = export_bundle(checkpoint, tmp_path / "bundle")  # ONNX is the default runtime
    assert manifest.llm.runtime == "onnx" and manifest.verification and manifest.verification.greedy_tokens_identical
    assert not any(k.startswith("llm/") for k in manifest.files), "the ONNX bundle needs no torch weights"
    inputs = _toy_inputs(toy_corpus, "train", 6)
    assert _bundle_tokens(tmp_path / "bundle", inputs) == _checkpoint_tokens(checkpoint, inputs)


def test_int8_export_serves_a_smaller_encoder_close_to_fp32(checkpoint: Path, toy_corpus: Path, tmp_path) -> None:
    manifest = export_bundle(checkpoint, tmp_path / "bundle", quantize="int8")
    report = manifest.quantization_report
    assert report is not None and manifest.encoder.file == "encoder.int8.onnx"
    assert report["size_bytes"]["int8"] < report["size_bytes"]["fp32"]
    assert report["utterances"] >= 2 and set(report["word_error_rate"]) == {"fp32", "int8"}
    bundle = load_bundle(tmp_path / "bundle")
    from tympan.runtime.onnx_encoder import OnnxEncoder

    audio = _toy_inputs(toy_corpus, "dev", 1)[0][0]
    fp32 = OnnxEncoder(bundle, file="encoder.onnx")([audio])[0]
    int8 = OnnxEncoder(bundle)([audio])[0]
    assert fp32.shape == int8.shape
    cosine = (fp32 * int8).sum(-1) / (np.linalg.norm(fp32, axis=-1) * np.linalg.norm(int8, axis=-1))
    assert cosine.min() > 0.98, cosine.min()


def test_an_export_that_fails_leaves_nothing_behind(checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(bundle_module, "ENCODER_TOLERANCE", -1.0)
    with pytest.raises(ExportError, match="ONNX encoder differs from PyTorch"):
        export_bundle(checkpoint, tmp_path / "bundle")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_what_it_cannot_serve(checkpoint: Path, tmp_path: Path) -> None:
    lora_only = checkpoint.parent.parent / "lora" / "final"
    with pytest.raises(ExportError, match="has no trained projector"):
        export_bundle(lora_only, tmp_path / "b1")
    (tmp_path / "b2").mkdir()
    with pytest.raises(ExportError, match="exists; choose another --out or pass --force"):
        export_bundle(checkpoint, tmp_path / "b2")


@pytest.fixture(scope="module")
def good_bundle(checkpoint: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "good"
    export_bundle(checkpoint, out)
    return out


def _damaged(good: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(good, copy)
    return copy


def test_corrupt_truncated_missing_and_unknown_bundles_are_refused(good_bundle: Path, tmp_path: Path) -> None:
    b = _damaged(good_bundle, tmp_path)
    data = bytearray((b / "encoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (b / "encoder.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"encoder\.onnx does not match its sha256"):
        load_bundle(b)
    (b / "encoder.onnx").write_bytes(bytes(data[:-100]))
    with pytest.raises(BundleError, match=r"encoder.onnx is \d+ bytes, the manifest says \d+ \(truncated"):
        load_bundle(b)
    shutil.copy(good_bundle / "encoder.onnx", b / "encoder.onnx")
    (b / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"tokenizer/tokenizer\.json is missing"):
        load_bundle(b)
    shutil.copy(good_bundle / "tokenizer" / "tokenizer.json", b / "tokenizer" / "tokenizer.json")
    load_bundle(b)  # whole again
    manifest = json.loads((b / "manifest.json").read_text())
    (b / "manifest.json").write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(BundleError, match=f"bundle format 99; this tympan reads format {FORMAT}"):
        load_bundle(b)
    (b / "manifest.json").write_text("{")
    with pytest.raises(BundleError, match=r"manifest\.json: not valid JSON"):
        load_bundle(b)
    (b / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"no manifest\.json; not a bundle, or an export that did not finish"):
        load_bundle(b)


def test_serving_an_onnx_bundle_needs_no_torch(good_bundle: Path, toy_corpus: Path) -> None:
    code = (
        "import sys, numpy as np\n"
        "from tympan.runtime.bundle import load_bundle\n"
        "from tympan.runtime.onnx_encoder import OnnxEncoder\n"
        "from tympan.runtime.prompt import Prompts\n"
        "from tympan.audio import load_audio\n"
        f"b = load_bundle({str(good_bundle)!r})\n"
        f"e = OnnxEncoder(b)([load_audio({str(toy_corpus / 'audio' / 'dev-0000.wav')!r}, 16000)])[0]\n"
        "p = Prompts(b).ids('Transcribe what is said.')\n"
        "assert e.ndim == 2 and e.shape[0] > 0 and p[0] and p[1]\n"
        "from tympan.runtime.speech_model import SpeechModel\n"
        "m = SpeechModel(b)\n"
        "assert b.manifest.llm.runtime == 'onnx'\n"
        "m.respond(np.zeros(16000, dtype=np.float32) + 0.01, 'Transcribe what is said.')\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_cli_infer_on_a_bundle(good_bundle: Path, toy_corpus: Path, capsys) -> None:
    from tympan.cli import main

    wav = toy_corpus / "audio" / "dev-0001.wav"
    assert main(["infer", str(wav), "--bundle", str(good_bundle), "--task", "st", "--lang", "de", "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    model = SpeechModel.load(good_bundle)
    expected = model.respond(load_audio(wav, 16000), model.prompts.instruction("st", "de"))
    assert line == {"file": str(wav), "task": "st", "target_lang": "de", "text": expected}


def test_the_default_bundle_is_built_once_and_served_by_default(tympan_home: Path, toy_corpus: Path,
                                                                capsys) -> None:
    from tympan.cli import main
    from tympan.daemon.cli import default_bundle

    assert main(["export", "--default"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == tympan_home / "bundles" / "tiny"  # TYMPAN_MODEL=tiny (conftest)
    bundle = load_bundle(path)
    assert bundle.manifest.verification and bundle.manifest.verification.greedy_tokens_identical
    stamp = (path / "manifest.json").stat().st_mtime_ns
    assert default_bundle() == path  # present: not rebuilt
    assert main(["export", "--default"]) == 0
    assert (path / "manifest.json").stat().st_mtime_ns == stamp


def test_unknown_default_model_is_named(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from tympan.cli import main

    monkeypatch.setenv("TYMPAN_MODEL", "huge")
    assert main(["export", "--default"]) == 2
    assert "TYMPAN_MODEL = 'huge': known models are default, tiny" in capsys.readouterr().err
