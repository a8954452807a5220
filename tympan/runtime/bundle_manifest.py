"""The bundle format: BUNDLE/manifest.json as typed dataclasses, and the ONNX-LLM graph's contract.

Export writes a `BundleManifest` (`to_json`); the runtime reads only a `BundleManifest` (`from_json`), which
refuses an unknown format version first and then names the first missing, unknown or mistyped key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tympan.config import ConfigError, from_dict, to_dict
from tympan.errors import TympanError

# 2: the encoder graph says which bridge it ends in (`encoder.bridge`). 3: a CTC bridge's graph also gives
# each frame's best labels and log-probabilities, and the bundle may hold a token n-gram LM (`lm`) the
# beam search reads. A bundle of another format is refused with both numbers; the default bundle is
# rebuilt (`tympan.runtime.bundle.default_bundle`). 4: the bundle may hold a second pass of hearing
# (`hearing`: Whisper's own decoder in CTranslate2 files) that writes the finals' words.
FORMAT = 5
MANIFEST = "manifest.json"

# The LLM as one ONNX graph (written by tympan.export.llm_graph, run by tympan.runtime.onnx_llm).
LLM_ONNX_FORMAT = "tympan-llm-onnx"
LLM_ONNX_FORMAT_VERSION = 2
LLM_ONNX_INPUTS = ["inputs_embeds", "attention_mask", "position_ids"]  # then the past.* cache tensors

T = TypeVar("T")


class BundleError(TympanError, ValueError):
    """The bundle is missing, incomplete, corrupt or of an unknown format."""


def _parse(cls: type[T], data: Any, where: str) -> T:
    if not isinstance(data, dict):
        raise BundleError(f"{where}: expected a JSON object")
    try:
        return from_dict(cls, data, source=where)
    except ConfigError as e:
        raise BundleError(str(e)) from None


def _check_llm_onnx_format(data: Any, where: str) -> None:
    """Before the keys: an older graph description has other keys, and needs a re-export, not a key fixed."""
    found = (data.get("format"), data.get("format_version")) if isinstance(data, dict) else (None, None)
    if found != (LLM_ONNX_FORMAT, LLM_ONNX_FORMAT_VERSION):
        raise BundleError(f"{where}: not a {LLM_ONNX_FORMAT} v{LLM_ONNX_FORMAT_VERSION} description: "
                          f"format={found[0]!r} format_version={found[1]!r} (re-export the model)")


@dataclass(frozen=True, kw_only=True)
class OnnxGraph:
    file: str
    inputs: list[str]
    outputs: list[str]
    shapes: dict[str, list[int | str]]  # ints for fixed axes, names for dynamic ones
    dims: dict[str, str]
    logits: str


@dataclass(frozen=True, kw_only=True)
class EmbedTable:
    file: str
    dtype: str
    shape: list[int]


@dataclass(frozen=True, kw_only=True)
class LlmOnnx:
    """What `export_llm_onnx` wrote (also saved as llm_onnx.json beside the graph) and `OnnxLLM` runs."""

    format: str
    format_version: int
    model_type: str
    opset: int
    files: list[str]
    external_data: str | None = None  # the weights file, when the graph keeps its tensors outside
    graph: OnnxGraph
    usage: dict[str, str]
    embed: EmbedTable
    past_names: list[str]
    present_names: list[str]
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    hidden_size: int
    max_position_embeddings: int
    dtype: str
    cache_layout: str

    @classmethod
    def from_json(cls, data: Any, where: str = "llm_onnx") -> LlmOnnx:
        _check_llm_onnx_format(data, where)
        return _parse(cls, data, where)

    def to_json(self) -> dict[str, Any]:
        return to_dict(self)


@dataclass(frozen=True, kw_only=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True, kw_only=True)
class Source:
    checkpoint: str
    stage: str
    step: int
    config: dict[str, Any]  # the checkpoint's recipe, as TOML would hold it


@dataclass(frozen=True, kw_only=True)
class Audio:
    sample_rate: int
    features: dict[str, Any]  # tympan.features.feature_extractor's parameters


@dataclass(frozen=True, kw_only=True)
class Encoder:
    file: str  # the graph served
    fp32_file: str
    kind: str
    layer: int
    max_seconds: float
    frames_per_second: float
    output_rate_hz: float
    embedding_dim: int
    # "dense": the seed's projector, embeddings at output_rate_hz; "ctc": the CTC bridge, one embedding
    # per recognised token (about 3-4 a second; output_rate_hz is then its CTC frame rate, an upper bound).
    bridge: str
    inputs: list[str]
    outputs: list[str]
    quantization: str | None = None


@dataclass(frozen=True, kw_only=True)
class Llm:
    runtime: str  # "onnx" | "torch"
    merged_lora: bool
    hidden_size: int
    dir: str
    onnx: LlmOnnx | None = None  # with runtime "onnx"


@dataclass(frozen=True, kw_only=True)
class LanguageModel:
    """A token n-gram LM for a CTC bridge's beam search (tympan/runtime/ctc_lm.py), and how it is weighed."""

    file: str
    order: int
    weight: float
    length_bonus: float
    beam: int


@dataclass(frozen=True, kw_only=True)
class Hearing:
    """The second pass of hearing (tympan/runtime/whisper.py): a CTranslate2 Whisper directory in the bundle, and
    the window its encoder reads."""

    kind: str  # "whisper"
    dir: str
    source: str  # what it was copied from (hearing.checkpoint of the recipe)
    window_s: float
    pad_s: float


@dataclass(frozen=True, kw_only=True)
class ChatTemplate:
    """A chat template around one user turn: before + instruction + between + heard text + after, then the model
    writes the assistant's turn."""

    before: str
    between: str
    after: str

    def render(self, instruction: str, text: str) -> str:
        return f"{self.before}{instruction}{self.between}{text}{self.after}"


@dataclass(frozen=True, kw_only=True)
class TextLlm:
    """An instruction-tuned LLM that answers from the heard text (tympan/runtime/text_llm.py): its ONNX graph, its
    own tokenizer and chat template, and the instructions it is given."""

    dir: str
    source: str  # what it was made from (text_llm.checkpoint of the recipe)
    model_type: str
    tokenizer: str  # relative to dir
    frame: ChatTemplate
    instructions: dict[str, dict[str, str]]  # task -> target language -> template
    stop_ids: list[int]
    max_new_tokens: int
    onnx: LlmOnnx


@dataclass(frozen=True, kw_only=True)
class PromptFrame:
    """The chat frame around the speech and the instruction, as text."""

    before_content: str
    between: str
    after_instruction: str


@dataclass(frozen=True, kw_only=True)
class Prompt:
    tokenizer: str
    frame: PromptFrame
    instructions: dict[str, dict[str, str]]  # task -> target language -> template
    stop_ids: list[int]
    max_new_tokens: int


@dataclass(frozen=True, kw_only=True)
class OnnxChecks:
    opset: int
    onnxruntime: str
    checked_providers: list[str]


@dataclass(frozen=True, kw_only=True)
class Verification:
    inputs: list[str]
    encoder_max_abs_diff: float
    greedy_tokens_identical: bool


@dataclass(frozen=True, kw_only=True)
class BundleManifest:
    format: int = FORMAT
    tympan_version: str
    created: str
    source: Source
    audio: Audio
    encoder: Encoder
    llm: Llm
    prompt: Prompt
    tasks: dict[str, list[str]]  # task -> target languages trained
    onnx: OnnxChecks
    files: dict[str, FileEntry]  # every file but the manifest, by path relative to the bundle
    verification: Verification | None = None
    lm: LanguageModel | None = None  # with a CTC bridge: what was heard is read with it
    hearing: Hearing | None = None  # None: the finals come from the model's own path (hearing.kind "ctc")
    # With a second pass of hearing: the LLM that answers from its text (translation, questions); None: the speech
    # LLM reads the text through the text bridge.
    text_llm: TextLlm | None = None
    quantization_report: dict[str, Any] | None = None  # with an int8 encoder: fp32 against int8

    @classmethod
    def from_json(cls, data: Any, where: str | Path = MANIFEST) -> BundleManifest:
        """A manifest read from JSON; the format version is checked before anything else."""
        if not isinstance(data, dict):
            raise BundleError(f"{where}: expected a JSON object")
        version = data.get("format")
        if version != FORMAT:
            raise BundleError(f"{where}: bundle format {version!r}; this tympan reads format {FORMAT}. "
                              "Export the checkpoint again with this version.")
        for key in ("llm", "text_llm"):
            llm = data.get(key)
            if isinstance(llm, dict) and llm.get("onnx") is not None:
                _check_llm_onnx_format(llm["onnx"], f"{where}: {key}.onnx")
        return _parse(cls, data, str(where))

    def to_json(self) -> dict[str, Any]:
        return to_dict(self)
