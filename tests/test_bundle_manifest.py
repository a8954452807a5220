"""The typed bundle manifest: JSON round trip, the version checked first, every bad key named."""

from __future__ import annotations

import copy
import json

import pytest

from tympan.runtime.bundle_manifest import (
    FORMAT,
    LLM_ONNX_FORMAT,
    LLM_ONNX_FORMAT_VERSION,
    LLM_ONNX_INPUTS,
    Audio,
    BundleError,
    BundleManifest,
    EmbedTable,
    Encoder,
    FileEntry,
    Llm,
    LlmOnnx,
    OnnxChecks,
    OnnxGraph,
    Prompt,
    PromptFrame,
    Source,
)


def _manifest() -> BundleManifest:
    onnx = LlmOnnx(
        format=LLM_ONNX_FORMAT, format_version=LLM_ONNX_FORMAT_VERSION, model_type="llama", opset=17,
        files=["llm.onnx", "embed_tokens.npy"],
        graph=OnnxGraph(file="llm.onnx", inputs=[*LLM_ONNX_INPUTS, "past.0.key", "past.0.value"],
                        outputs=["logits", "present.0.key", "present.0.value"],
                        shapes={"logits": ["batch", 1, 400]}, dims={"total": "past + seq"}, logits="last"),
        usage={"prefill": "...", "decode": "..."}, embed=EmbedTable(file="embed_tokens.npy", dtype="float32",
                                                                   shape=[400, 64]),
        past_names=["past.0.key", "past.0.value"], present_names=["present.0.key", "present.0.value"],
        num_layers=1, num_heads=4, num_kv_heads=2, head_dim=16, vocab_size=400, hidden_size=64,
        max_position_embeddings=4096, dtype="float32", cache_layout="batch, kv_heads, seq, head_dim",
    )
    return BundleManifest(
        tympan_version="0.1.0", created="2026-12-03T00:00:00+00:00",
        source=Source(checkpoint="/run/joint/final", stage="joint", step=60, config={"prompt": {"max_new_tokens": 24}}),
        audio=Audio(sample_rate=16000, features={"type": "whisper_log_mel", "num_mel_bins": 80}),
        encoder=Encoder(file="encoder.onnx", fp32_file="encoder.onnx", kind="whisper", layer=0, max_seconds=30.0,
                        frames_per_second=50.0, output_rate_hz=50 / 3, embedding_dim=64, bridge="dense",
                        inputs=["features", "lengths"], outputs=["embeddings", "embedding_lengths"]),
        llm=Llm(runtime="onnx", merged_lora=True, hidden_size=64, dir="llm_onnx", onnx=onnx),
        prompt=Prompt(tokenizer="tokenizer/tokenizer.json",
                      frame=PromptFrame(before_content="<s>", between="</s>\n", after_instruction="\n"),
                      instructions={"asr": {"en": "Transcribe what is said."}}, stop_ids=[2], max_new_tokens=24),
        tasks={"asr": ["en"]},
        onnx=OnnxChecks(opset=17, onnxruntime="1.32.0", checked_providers=["CPUExecutionProvider"]),
        files={"encoder.onnx": FileEntry(sha256="ab" * 32, size=1000)},
    )


def test_a_manifest_survives_json_and_leaves_out_what_it_does_not_have() -> None:
    manifest = _manifest()
    data = json.loads(json.dumps(manifest.to_json()))
    assert BundleManifest.from_json(data) == manifest
    assert data["format"] == FORMAT and data["llm"]["onnx"]["format_version"] == LLM_ONNX_FORMAT_VERSION
    assert "verification" not in data and "quantization" not in data["encoder"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["encoder"].pop("file"), "missing required key encoder.file"),
    (lambda d: d["prompt"].update(stop_ids="2"), r"prompt\.stop_ids: expected a list"),
    (lambda d: d["files"]["encoder.onnx"].update(size="big"), r"files\.encoder\.onnx\.size: expected an integer"),
    (lambda d: d["llm"].update(runtme="onnx"), r"unknown key llm\.runtme"),
    (lambda d: d["llm"]["onnx"]["graph"].pop("file"), r"missing required key llm\.onnx\.graph\.file"),
    (lambda d: d["llm"]["onnx"].update(format_version=1), r"llm\.onnx: not a tympan-llm-onnx v2 description"),
    # A bundle of an older format (before the bridge kind; before the CTC frames and the n-gram LM; before the
    # hearing; before the text LLM): refused naming both versions.
    (lambda d: d.update(format=1), r"bundle format 1; this tympan reads format 5"),
    (lambda d: d.update(format=2), r"bundle format 2; this tympan reads format 5"),
    (lambda d: d.update(format=3), r"bundle format 3; this tympan reads format 5"),
    (lambda d: d.update(format=4), r"bundle format 4; this tympan reads format 5"),
    (lambda d: d.update(text_llm={"dir": "text_llm"}), r"missing required key text_llm\.source"),
    (lambda d: d.update(lm={"file": "lm.npz", "order": 3}), r"missing required key lm\.weight"),
    (lambda d: d["encoder"].pop("bridge"), "missing required key encoder.bridge"),
])
def test_a_bad_manifest_is_refused_naming_the_key(change, message: str) -> None:
    data = copy.deepcopy(_manifest().to_json())
    change(data)
    with pytest.raises(BundleError, match=message):
        BundleManifest.from_json(data, "b/manifest.json")
    with pytest.raises(BundleError, match="expected a JSON object"):
        BundleManifest.from_json([data], "b/manifest.json")


def test_a_default_bundle_built_from_other_shipped_weights_is_not_current(tmp_path, monkeypatch) -> None:
    """A new shipped model reaches machines that built the default bundle from the old one."""
    from tympan.runtime import bundle as bundle_module

    shipped = tmp_path / "models"
    (shipped / "default" / "adapter").mkdir(parents=True)
    (shipped / "default" / "checkpoint.json").write_text("{}")
    (shipped / "default" / "adapter" / "a.safetensors").write_bytes(b"old weights")
    monkeypatch.setattr(bundle_module, "SHIPPED_MODELS", shipped)
    before = bundle_module.shipped_fingerprint("default")
    assert before is not None and bundle_module.shipped_fingerprint("tiny") is None  # trained at first use
    (shipped / "default" / "curve.jsonl").write_text('{"step": 1}\n')
    assert bundle_module.shipped_fingerprint("default") == before  # the learning curve is not the weights

    built = tmp_path / "bundle"
    built.mkdir()
    (built / "manifest.json").write_text(json.dumps({"format": bundle_module.FORMAT}))
    assert not bundle_module.is_current(built, "default")  # no record of what it was built from
    (built / bundle_module.BUILT_FROM).write_text(before + "\n")
    assert bundle_module.is_current(built, "default")
    (shipped / "default" / "adapter" / "a.safetensors").write_bytes(b"new weights")
    assert not bundle_module.is_current(built, "default")
    assert bundle_module.is_current(built, "tiny")
