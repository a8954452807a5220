"""The text LLM: an instruction-tuned LLM answers from what the second pass heard (tympan/runtime/text_llm.py).

A tiny random Qwen2 (the class of the shipped Qwen2.5-Coder, with Qwen2.5's real tokenizer from its pinned package)
is exported to one ONNX graph with a KV cache, checked against PyTorch, carried by a bundle beside a Whisper
hearing, and served by a real daemon whose translations stream on v1 and Realtime.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from daemon_harness import DaemonProcess, alsa_speech, pcm16, silence
from transformers import AutoTokenizer, DynamicCache, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from websockets.asyncio.client import connect

from tympan.config import ConfigError, dump_toml, read_toml
from tympan.export.llm_graph import export_llm_onnx
from tympan.runtime.decode import DecodeSettings, Stop, greedy_decode
from tympan.runtime.onnx_llm import OnnxLLM
from tympan.runtime.text_llm import QWEN_CHAT, first_line
from tympan.tasks import TEXT_INSTRUCTIONS

QWEN = "qwen2.5-coder-1.5b-instruct"  # the shipped text LLM: its tokenizer and chat template are the real ones
RATE = 16000
SPEECH = np.concatenate([silence(0.6), alsa_speech("Front_Center"), silence(1.2), alsa_speech("Rear_Right"),
                         silence(1.2)])


@pytest.fixture(scope="module")
def qwen_tokenizer():
    from tympan.training.model.base_models import gguf_file

    gguf = gguf_file(QWEN)
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def _tiny_qwen(vocab: int, eos: int | None = None) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=vocab, tie_word_embeddings=True,
                         # Larger than the default 0.02 so that greedy outputs vary instead of repeating one token.
                         initializer_range=0.2, use_sliding_window=False, bos_token_id=None, eos_token_id=eos)
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tiny_qwen_dir(qwen_tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 with Qwen2.5's tokenizer and chat template, as a transformers directory."""
    out = tmp_path_factory.mktemp("tiny-qwen")
    _tiny_qwen(len(qwen_tokenizer), qwen_tokenizer.eos_token_id).save_pretrained(out)
    qwen_tokenizer.save_pretrained(out)
    return out


# -- the graph ---------------------------------------------------------------------------------------------------


def test_a_tiny_qwen2_graph_and_its_kv_cache_match_pytorch_step_by_step(tmp_path) -> None:
    model = _tiny_qwen(300)
    info = export_llm_onnx(model, tmp_path)
    llm = OnnxLLM(tmp_path, info, threads=2)
    ids = np.random.default_rng(0).integers(0, 300, 23).tolist()
    logits, (past, length) = llm.prefill(llm.embed(ids))
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), use_cache=True)
    np.testing.assert_allclose(logits, out.logits[0, -1].numpy(), atol=1e-4, rtol=0)
    cache: DynamicCache = out.past_key_values
    for step in range(6):
        token = int(np.argmax(logits))
        logits, (past, length) = llm.step(token, (past, length))
        with torch.no_grad():
            out = model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        np.testing.assert_allclose(logits, out.logits[0, -1].numpy(), atol=1e-4, rtol=0)
        assert length == len(ids) + step + 1
        for i, layer in enumerate(cache.layers):
            assert past[2 * i].numpy().shape == (1, 2, length, 16)
            np.testing.assert_allclose(past[2 * i].numpy(), layer.keys.numpy(), atol=1e-4, rtol=0)
            np.testing.assert_allclose(past[2 * i + 1].numpy(), layer.values.numpy(), atol=1e-4, rtol=0)


def test_a_cached_prompt_prefix_extended_gives_the_whole_prompts_logits(tmp_path) -> None:
    model = _tiny_qwen(300)
    llm = OnnxLLM(tmp_path, export_llm_onnx(model, tmp_path), threads=2)
    ids = np.random.default_rng(2).integers(0, 300, 30).tolist()
    whole, _ = llm.prefill(llm.embed(ids))
    _, prefix = llm.prefill(llm.embed(ids[:18]))
    for _ in range(2):  # the cached state is not consumed by extending it
        logits, (_, length) = llm.extend(llm.embed(ids[18:]), prefix)
        np.testing.assert_allclose(logits, whole, atol=1e-4, rtol=0)
        assert length == 30 and prefix[1] == 18


def test_the_int8_graph_is_a_quarter_of_the_weights_and_writes_the_same_tokens(tmp_path) -> None:
    model = _tiny_qwen(300)
    fp32 = export_llm_onnx(model, tmp_path / "fp32")
    int8 = export_llm_onnx(model, tmp_path / "int8", quantize="int8")
    assert (int8.dtype, int8.files, int8.graph.file) == ("int8", ["llm.int8.onnx", "embed_tokens.npy"],
                                                         "llm.int8.onnx")
    assert not (tmp_path / "int8" / "llm.onnx").exists()
    # The tied embedding table is in the graph once, as the output projection: MatMul weights dominate.
    size = {d: (tmp_path / d / info.graph.file).stat().st_size for d, info in (("fp32", fp32), ("int8", int8))}
    assert size["int8"] < 0.45 * size["fp32"], size
    embeds = np.random.default_rng(1).standard_normal((9, 64)).astype(np.float32)
    tokens = [greedy_decode(OnnxLLM(tmp_path / d, info, threads=2), embeds, [], DecodeSettings.unguarded(12)).tokens
              for d, info in (("fp32", fp32), ("int8", int8))]
    assert tokens[0] == tokens[1]


# -- the prompt ----------------------------------------------------------------------------------------------------


def test_the_daemons_chat_frame_is_the_models_own_template(qwen_tokenizer) -> None:
    for task, langs in TEXT_INSTRUCTIONS.items():
        for lang, template in langs.items():
            instruction = template.replace("{question}", "When does it start?")
            text = "The meeting starts at ten."
            expected = qwen_tokenizer.apply_chat_template(
                [{"role": "user", "content": f"{instruction}\n\n{text}"}], tokenize=False, add_generation_prompt=True)
            assert QWEN_CHAT.render(instruction, text) == expected, (task, lang)


def test_an_answer_ends_at_its_line_break_and_keeps_its_full_stop(text_bundle: Path, qwen_tokenizer) -> None:
    from tympan.runtime.speech_model import SpeechModel

    text_llm = SpeechModel.load(text_bundle, threads=2).text_llm
    assert text_llm is not None
    ids = qwen_tokenizer("Guten Morgen.\nNote: this is formal.", add_special_tokens=False).input_ids
    # Qwen writes "." and the line break as one token: a stop id would drop the full stop with it.
    closing = next(i for i, t in enumerate(ids) if "\n" in qwen_tokenizer.decode([t]))
    assert qwen_tokenizer.decode([ids[closing]]) == ".\n"
    assert [text_llm.line_ended(ids[: i + 1]) for i in range(len(ids))].index(True) == closing
    assert text_llm.decode(ids[: closing + 1]) == "Guten Morgen." == text_llm.decode(ids)
    leading = qwen_tokenizer("\nCiao", add_special_tokens=False).input_ids
    assert not text_llm.line_ended(leading[:1]), "a line break before any word does not end the answer"
    assert first_line("  \n Hallo\nWelt") == "Hallo"


# -- the bundle ----------------------------------------------------------------------------------------------------


def _checkpoint(tympan_home: Path, out: Path, text_llm: dict | None, hearing: dict) -> Path:
    from tympan.export.default import ensure_default_bundle

    ensure_default_bundle("tiny")
    shutil.copytree(tympan_home / "models" / "tiny" / "joint" / "final", out)
    config = read_toml(out / "config.toml")
    config["hearing"] = hearing
    if text_llm is not None:
        config["text_llm"] = text_llm
    (out / "config.toml").write_text(dump_toml(config), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def tiny_en() -> Path:
    from tympan.training.model.base_models import whisper_ct2_dir

    return whisper_ct2_dir("whisper-tiny.en")


@pytest.fixture(scope="module")
def text_bundle(tympan_home: Path, tiny_en: Path, tiny_qwen_dir: Path, tmp_path_factory) -> Path:
    """The tiny test model with Whisper tiny.en as its second pass and the tiny Qwen2 as its text LLM."""
    from tympan.export.bundle import export_bundle

    checkpoint = _checkpoint(tympan_home, tmp_path_factory.mktemp("ckpt") / "final",
                             {"checkpoint": str(tiny_qwen_dir), "max_new_tokens": 12},
                             {"kind": "whisper", "checkpoint": str(tiny_en)})
    out = tmp_path_factory.mktemp("bundles") / "text"
    export_bundle(checkpoint, out, force=True)
    return out


def test_the_bundle_carries_the_text_llm_and_answers_from_what_was_heard(text_bundle: Path) -> None:
    from tympan.runtime.speech_model import SpeechModel

    model = SpeechModel.load(text_bundle, threads=2)
    entry = model.bundle.manifest.text_llm
    assert entry is not None and entry.model_type == "qwen2" and entry.onnx.dtype == "int8"
    assert entry.onnx.embed.dtype == "float16" and entry.max_new_tokens == 12
    assert all(f"text_llm/{f}" in model.bundle.manifest.files for f in [*entry.onnx.files, "tokenizer.json"])
    assert model._llm is None, "with a text LLM, the speech LLM is not loaded until something needs it"
    text_llm, hearing = model.text_llm, model.hearing
    assert text_llm is not None and hearing is not None
    audio = alsa_speech("Front_Center")
    heard = hearing.hear(audio).text
    assert heard
    instruction = model.instruction("st", "de")
    assert instruction == TEXT_INSTRUCTIONS["st"]["de"]
    answer = text_llm.answer(instruction, heard)
    assert answer.tokens and answer.stop in (Stop.LIMIT, Stop.ENDED, Stop.STOP_TOKEN, Stop.LOOP)
    assert model.respond(audio, instruction, task="st") == text_llm.decode(answer.tokens)
    assert model.respond(audio, model.instruction("asr", "en"), task="asr") == heard  # ASR is the hearing's
    assert text_llm.answer(instruction, "  ").stop is Stop.NOTHING_HEARD
    # The instruction's part of the prompt was run once and kept; the whole prompt begins with it.
    prefix = text_llm.prefix_ids(instruction)
    assert prefix in text_llm.prefixes and text_llm.prompt_ids(instruction, heard)[: len(prefix)] == prefix
    assert text_llm.answer(instruction, heard).tokens == answer.tokens
    question = model.instruction("sqa", "de", "Wann?")
    assert question.endswith("Question: Wann?") and "German" in question
    # A question (or a client's own instruction) is new each time: not kept in the prefix cache.
    text_llm.answer(question, heard)
    assert text_llm.prefix_ids(question) not in text_llm.prefixes


def test_a_text_llm_needs_a_second_pass_and_a_chat_frame(tympan_home, tiny_en, tiny_cfg, qwen_tokenizer,
                                                          tmp_path) -> None:
    from tympan.export.bundle import ExportError, export_bundle
    from tympan.training.recipe import config_from_dict

    data = tiny_cfg.to_toml_dict()
    data["text_llm"] = {"checkpoint": "package:" + QWEN}
    with pytest.raises(ConfigError, match=r"text_llm.checkpoint needs hearing.kind = \"whisper\""):
        config_from_dict(data, "test")
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=1, intermediate_size=64, vocab_size=100))
    llama.save_pretrained(tmp_path / "llama")
    qwen_tokenizer.save_pretrained(tmp_path / "llama")  # a tokenizer that loads: the model's type is what is wrong
    checkpoint = _checkpoint(tympan_home, tmp_path / "final", {"checkpoint": str(tmp_path / "llama")},
                             {"kind": "whisper", "checkpoint": str(tiny_en)})
    with pytest.raises(ExportError, match=r"text_llm\.checkpoint = .*no chat frame for LLMs of type 'llama'"):
        export_bundle(checkpoint, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists(), "a failed export leaves no bundle behind"
    from tympan.export.text_llm import TextLlmExportError, write_text_llm
    from tympan.training.recipe import TextLlmConfig

    with pytest.raises(TextLlmExportError, match=r"unknown package LLM \(known: .*package:qwen2\.5-coder-1\.5b"):
        write_text_llm(TextLlmConfig(checkpoint="package:qwen-9000"), Path, tmp_path)


# -- the daemon ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(text_bundle: Path, broker, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("daemon")
    config = (f'[server]\nthreads = 2\n[mqtt]\nurl = "{broker.url}"\nsite = "lab"\nspool = "{work / "spool.sqlite"}"\n'
              "partials = true\n")
    with DaemonProcess(text_bundle, work, config) as d:
        yield d


async def _v1(daemon: DaemonProcess, request: dict) -> list[dict]:
    from tympan.daemon.client import stream

    data = pcm16(SPEECH)

    async def chunks():
        for i in range(0, len(data), 3200):
            yield data[i : i + 3200], RATE

    return await stream(daemon.url, chunks(), request, lambda e: None)


def test_v1_streams_the_heard_source_then_the_translation_then_the_final(daemon, broker) -> None:
    from broker import Subscriber

    async def with_mqtt() -> tuple[list[dict], list[dict]]:
        async with Subscriber(broker.port, "tympan/lab/session/#") as sub:
            events = await _v1(daemon, {"task": "st", "target_lang": "de", "session_id": "tr1"})
            await sub.wait_for(lambda m: sum(x.topic.endswith("/final") for x in m) == 2)
            return events, [m.json() for m in sub.messages]

    events, published = asyncio.run(with_mqtt())
    finals = [e for e in events if e["type"] == "final"]
    assert len(finals) == 2 and all(f["source"] and f["text"] for f in finals)
    for f in finals:
        mine = [e for e in events if e["type"] == "translation" and e["segment_id"] == f["segment_id"]]
        # Confirmed before its decode finished: the source first, with the words written so far (none, where the
        # turn ended as soon as the source was heard), then the words as they come. (A decode finished at the
        # pause goes out as its final alone.)
        if mine:
            assert {e["source"] for e in mine} == {f["source"]}
            assert all(f["text"].startswith(e["text"]) for e in mine)
            assert [e["seq"] for e in mine] == sorted(e["seq"] for e in mine)
            assert events.index(mine[-1]) < events.index(f)
    assert any(e["type"] == "translation" and e["text"] for e in events), "no translation streamed"
    # MQTT: the translation events best effort on the partial topic, the finals with their source.
    assert [m["source"] for m in published if m["type"] == "final"] == [f["source"] for f in finals]
    streamed = [m for m in published if m["type"] == "translation"]
    assert streamed and {m["source"] for m in streamed} <= {f["source"] for f in finals}
    ready = next(e for e in events if e["type"] == "ready")
    assert "tiny-qwen" in ready["model"]["text_llm"]  # the recipe's checkpoint, as the bundle records it
    asr = asyncio.run(_v1(daemon, {"task": "asr"}))
    assert [f["text"] for f in asr if f["type"] == "final"] == [f["source"] for f in finals]
    assert all("source" not in e for e in asr if e["type"] == "final")
    assert not [e for e in asr if e["type"] == "translation"]


def test_realtime_deltas_add_up_to_the_translation_and_openai_translations_stay_english(daemon, tmp_path) -> None:
    async def realtime() -> list[dict]:
        url = daemon.http.replace("http", "ws") + "/v1/realtime?intent=transcription"
        events: list[dict] = []
        async with connect(url, additional_headers={"OpenAI-Beta": "realtime=v1"}) as ws:
            await ws.send(json.dumps({"type": "transcription_session.update",
                                      "session": {"input_audio_transcription": {"language": "de"}}}))
            audio = pcm16(np.interp(np.arange(0, len(SPEECH), RATE / 24000), np.arange(len(SPEECH)), SPEECH))
            for i in range(0, len(audio), 4800):
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": base64.b64encode(audio[i : i + 4800]).decode()}))
            while sum(e["type"].endswith(".completed") for e in events) < 2:
                events.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
        return events

    events = asyncio.run(realtime())
    completed = [e for e in events if e["type"].endswith(".completed")]
    assert len(completed) == 2 and all(e["transcript"] for e in completed)
    counts = []
    for e in completed:
        deltas = [d["delta"] for d in events if d["type"].endswith(".delta") and d["item_id"] == e["item_id"]]
        assert "".join(deltas) == e["transcript"]
        counts.append(len(deltas))
    assert max(counts) > 1, "the translation did not stream: one delta per turn"

    # OpenAI's translations route keeps its meaning: English text, the hearing's, whatever the text LLM does.
    from daemon_harness import write_wav

    wav = write_wav(tmp_path / "speech.wav", SPEECH).read_bytes()

    def upload(route: str) -> str:
        boundary = "tympanboundary"
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="s.wav"\r\n'
                f"Content-Type: audio/wav\r\n\r\n").encode() + wav + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(f"{daemon.http}/v1/audio/{route}", body, method="POST",
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(request, timeout=60) as r:
            return str(json.loads(r.read())["text"])

    english = upload("translations")
    assert english and english == upload("transcriptions")
    assert not daemon.tracebacks()


def test_the_translation_benchmark_reports_latency_length_and_memory(text_bundle: Path) -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "translation.py"
    run = subprocess.run([sys.executable, str(script), "--bundle", str(text_bundle), "--limit", "2", "--langs", "it"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    [row] = [line for line in run.stdout.splitlines() if line.startswith("| it |")]
    cells = [float(c) for c in row.strip("|").split("|")[1:]]
    p50, p95, top, mean_tokens, max_tokens, cpu, rss = cells
    # The final comes after the endpoint silence (600 ms), and a translation has tokens (at most the bundle's 12).
    assert 600 <= p50 <= p95 <= top < 60_000 and 0 < mean_tokens <= max_tokens <= 13
    assert 0 < cpu < 20 and 0.1 < rss < 8
