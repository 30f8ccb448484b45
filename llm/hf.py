"""Hugging Face causal LMs from a local directory, behind :class:`llm.model.GPT`'s contract.

Nothing here touches the network: ``HF_HUB_OFFLINE=1`` is set (unless already set) before
``transformers`` is imported, and every load passes ``local_files_only=True``. ``transformers``
is optional and imported only by :func:`load_local` (``pip install 'amasim[hf]'``).

Typical use, for a directory written by ``model.save_pretrained(d)`` and
``tokenizer.save_pretrained(d)``::

    model, tok = load_local("checkpoints/tiny")
    logits = model(torch.tensor([tok.encode("Hello")]))       # (1, T, V) float32
    text = tok.decode(model.generate(torch.tensor([tok.encode("Hi")]), 8, tok.eos_id)[0])
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llm.model import checkpoint_activations, estimate_flops_per_token, greedy_decode

__all__ = ["HFCausalLM", "HFTokenizer", "load_local"]

# Files any of which means "a tokenizer was saved here" (fast, sentencepiece, BPE and WordPiece).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)


def _import_transformers() -> Any:
    """``transformers``, imported offline, or an ImportError that names the fix."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            "loading a Hugging Face model needs the 'transformers' package; "
            "install it with: pip install 'amasim[hf]'"
        ) from err
    return transformers


def _first_int(value: object) -> int | None:
    """An id from a config field that may hold an int, a list of ints or None."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _config_int(config: Any, *keys: str) -> int | None:
    """The first of ``keys`` that ``config`` sets to an int (architectures name fields apart)."""
    for key in keys:
        if (value := _first_int(getattr(config, key, None))) is not None:
            return value
    return None


class HFCausalLM(nn.Module):
    """A transformers causal LM with GPT's contract: ``forward`` → float32 logits (B, T, V),
    greedy ``generate``, ``flops_per_token``, ``num_parameters``.

    ``config_dict`` is the HF config as a dict; ``block_size`` its longest context (or None).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)  # a module starts in training mode; follow the model's
        self.config_dict: dict[str, Any] = model.config.to_dict()
        self.block_size: int | None = _config_int(
            self._text_config(), "max_position_embeddings", "n_positions", "n_ctx", "seq_length"
        )
        self._probed: dict[str, Any] | None = None

    def blocks(self) -> list[nn.Module]:
        """The decoder layers, in order (the units of FSDP and of activation checkpointing):
        the model's ``GradientCheckpointingLayer`` modules (transformers >= 4.52), else the
        children of its longest ``ModuleList``."""
        try:
            from transformers.modeling_layers import GradientCheckpointingLayer
        except ImportError:  # older transformers: the layer stack is the longest ModuleList
            GradientCheckpointingLayer = None
        if GradientCheckpointingLayer is not None:
            layers = [m for m in self.model.modules() if isinstance(m, GradientCheckpointingLayer)]
            if layers:
                return layers
        lists = [m for m in self.model.modules() if isinstance(m, nn.ModuleList)]
        return list(max(lists, key=len)) if lists else []

    def gradient_checkpointing_enable(self, enabled: bool = True) -> None:
        """Recompute each decoder layer's activations in the backward pass, in any mode
        (:func:`llm.model.checkpoint_activations`; transformers' own switch acts in training
        mode only, and the DPO policy runs in eval mode); the results are unchanged."""
        layers = self.blocks()
        if not layers:
            raise ValueError(
                f"{type(self.model).__name__} has no layer stack to checkpoint: set [model] "
                "gradient_checkpointing = false"
            )
        checkpoint_activations(layers, enabled)

    def _text_config(self) -> Any:
        config = self.model.config
        return config.get_text_config() if hasattr(config, "get_text_config") else config

    def _check(self, input_ids: torch.Tensor, positions_given: bool = False) -> None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (B, T), got {tuple(input_ids.shape)}")
        T = input_ids.shape[1]
        if self.block_size is not None and T > self.block_size and not positions_given:
            raise ValueError(
                f"sequence length {T} exceeds block_size={self.block_size} (the model's "
                f"max_position_embeddings); crop the input to its last {self.block_size} tokens"
            )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        position_ids: torch.Tensor | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, V) as float32 for ``input_ids`` (B, T).

        ``attention_mask``: (B, T), real tokens 1/True and (right) padding 0/False, or a
        boolean (B, 1, T, T) mask (True: query i may attend to key j) for packed layouts,
        handed to the model as its attention implementation wants it (check
        :attr:`accepts_packed_inputs` first). ``position_ids`` (B, T) go to the model (then T may
        exceed block_size, the positions may not).
        ``return_hidden``: the base model's last hidden state (B, T, d) instead of the logits
        (check :meth:`output_head` first: some models transform their logits)."""
        self._check(input_ids, position_ids is not None)
        if attention_mask is not None:
            if attention_mask.dim() == 4:
                attention_mask = self._mask_4d(attention_mask)
            else:
                attention_mask = attention_mask.to(device=input_ids.device, dtype=torch.long)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        if position_ids is not None:
            inputs["position_ids"] = position_ids
        if return_hidden:
            out = self.model.base_model(**inputs).last_hidden_state
        else:
            out = self.model(**inputs).logits.float()
        # FSDP2 hooks its backward onto this output and warns when it is a view (an in-place
        # op on a view would drop the hook): give it a tensor of its own
        return out.clone() if callable(getattr(self, "reshard", None)) else out

    def _mask_4d(self, mask: torch.Tensor) -> torch.Tensor:
        """A boolean 4-D mask as the attention implementation reads it: boolean for SDPA,
        additive (0 / dtype min) for eager; other implementations take no 4-D mask."""
        impl = getattr(self.model.config, "_attn_implementation", None) or "eager"
        if mask.dtype != torch.bool:
            raise ValueError(f"a 4-D attention_mask must be boolean, got {mask.dtype}")
        if impl == "sdpa":
            return mask
        if impl == "eager":
            dtype = next(self.model.parameters()).dtype
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(dtype).min
            )
        raise ValueError(
            f"attention implementation {impl!r} takes no 4-D mask: use the plain layout "
            "(llm.packing.Layout(prefix_sharing=False))"
        )

    def output_head(self) -> nn.Module | None:
        """The output layer when ``logits = output_head()(forward(..., return_hidden=True))``
        holds exactly, else None (logit soft-capping or scaling, no output embedding, or a
        mismatch found by a probe on the first call)."""
        return self._probe()["head"]

    @property
    def accepts_packed_inputs(self) -> bool:
        """Whether a 4-D mask and position ids give what the plain layout gives (a probe on
        the first call: one pair scored both ways, against a run that ignores the mask)."""
        return self._probe()["packed"]

    def _probe(self) -> dict[str, Any]:
        if self._probed is None:
            self._probed = _probe_model(self)
        return self._probed

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, max_new_tokens: int, eos_id: int | None = None
    ) -> torch.Tensor:
        """Greedy decoding, as :meth:`llm.model.GPT.generate`: the prompt (B, T) followed by at
        most ``max_new_tokens`` argmax tokens; rows past ``eos_id`` are padded with it; stops when
        every row has emitted it. Uses the KV cache; no sampling settings of the checkpoint's
        generation_config apply (no repetition penalty, temperature, ...)."""
        window = self.block_size or input_ids.shape[1] + max(max_new_tokens, 0)
        past, cache = None, _cache_keyword(self.model)
        unshard = getattr(self, "unshard", None)  # FSDP2: the layers outside the blocks are
        if callable(unshard):  # gathered by this module's forward, which decoding bypasses
            unshard()

        def next_logits(ids: torch.Tensor) -> torch.Tensor:
            nonlocal past
            if ids.shape[1] > window:  # the context no longer fits: drop the cache
                past = None
            # Without a cache, run the last `window` tokens; with one, only the newest token.
            fresh = ids[:, -window:] if past is None else ids[:, -1:]
            out = self.model(input_ids=fresh, use_cache=True, **{cache: past})
            past = getattr(out, cache)
            return out.logits[:, -1, :]

        return greedy_decode(self, next_logits, input_ids, max_new_tokens, eos_id)

    def num_parameters(self, non_embedding: bool = True) -> int:
        """Parameter count (shared tensors once). ``non_embedding`` drops embedding lookup tables
        (tokens, positions) but keeps the output matrix even when tied, as GPT.num_parameters."""
        params = {id(p): p for p in self.model.parameters()}
        if non_embedding:
            output = self.model.get_output_embeddings()
            keep = {id(p) for p in output.parameters()} if output is not None else set()
            for module in self.model.modules():
                if isinstance(module, nn.Embedding):
                    for p in module.parameters():
                        if id(p) not in keep:
                            params.pop(id(p), None)
        return sum(p.numel() for p in params.values())

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token, 6·N + 12·n_layer·n_embd·seq_len, with N the non-embedding
        parameters (see :func:`llm.model.estimate_flops_per_token`). Depth and width come from
        the config; failing that, the longest ModuleList and the embedding width."""
        text = self._text_config()
        n_layer = _config_int(text, "num_hidden_layers", "n_layer", "num_layers")
        if n_layer is None:
            lists = [len(m) for m in self.model.modules() if isinstance(m, nn.ModuleList)]
            n_layer = max(lists, default=0)
        n_embd = _config_int(text, "hidden_size", "n_embd", "d_model")
        if n_embd is None:
            n_embd = self.model.get_input_embeddings().embedding_dim
        return estimate_flops_per_token(self.num_parameters(), n_layer, n_embd, seq_len)


# Config fields with which a model transforms lm_head's output before returning logits.
_LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "output_multiplier",
    "lm_head_multiplier",
)


@torch.no_grad()
def _cache_keyword(model: nn.Module) -> str:
    """The name under which ``model.forward`` takes and returns its KV cache: ``cache``
    (transformers >= 5.25, where ``past_key_values`` is a deprecated alias that warns) or
    ``past_key_values`` (earlier releases, and models of their own code)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def _probe_model(lm: HFCausalLM) -> dict[str, Any]:
    """What an HF model supports, found by running it (eval mode, its own dtype and device):

    ``head``: the output layer if logits == head(last hidden state) on a probe input;
    ``packed``: whether prompt + chosen + rejected with a 4-D mask and restarted position ids
    gives the rejected tokens the hidden states of the plain row prompt + rejected — closer to
    them, by 20×, than the same packed row under a plain causal mask (the answer of a model that
    ignores the mask).
    """
    from llm.packing import CHOSEN, PROMPT, REJECTED, attention_mask_4d

    model = lm.model
    text = lm._text_config()
    head = model.get_output_embeddings()
    if any(getattr(text, k, None) not in (None, 1, 1.0) for k in _LOGIT_TRANSFORMS):
        head = None
    was_training = lm.training
    lm.eval()
    try:
        device = next(model.parameters()).device
        vocab = head.weight.shape[0] if head is not None else _config_int(text, "vocab_size")
        ids = (torch.arange(1, 9, device=device) * 7919 % max(vocab or 2, 2))[None]
        prompt, chosen = 3, 3  # prompt ids[:3], chosen ids[3:6], rejected ids[6:8]
        if head is not None:
            logits = lm(ids)
            again = head(lm(ids, return_hidden=True)).float()
            scale = logits.abs().max().clamp_min(1.0)
            if not torch.allclose(logits, again, rtol=0, atol=1e-3 * float(scale)):
                head = None
        packed = False
        if lm.block_size is None or lm.block_size >= ids.shape[1]:
            plain = torch.cat([ids[:, :prompt], ids[:, prompt + chosen :]], dim=1)
            want = lm(plain, return_hidden=True)[:, prompt:]
            seg = torch.tensor([[PROMPT] * 3 + [CHOSEN] * 3 + [REJECTED] * 2], device=device)
            pos = torch.tensor([[0, 1, 2, 3, 4, 5, 3, 4]], device=device)
            try:
                got = lm(ids, attention_mask_4d(seg), position_ids=pos, return_hidden=True)
                blind = lm(ids, position_ids=pos, return_hidden=True)
            except (ValueError, TypeError, RuntimeError):
                got = blind = None
            if got is not None:
                error = (got[:, prompt + chosen :] - want).abs().max().float()
                blind_error = (blind[:, prompt + chosen :] - want).abs().max().float()
                packed = bool(error * 20 <= blind_error)
        return {"head": head, "packed": packed}
    finally:
        lm.train(was_training)


class HFTokenizer:
    """A transformers tokenizer behind a small interface: ids of the special tokens, ``encode``
    without special tokens, ``decode``, a ``fingerprint`` and ``apply_chat_template``; and, for
    ``tokenization="trl"`` (:class:`llm.tokenizer.ModelInputTokenizer`), the tokenizer's own
    call ``encode_input``, the tokenized chat template ``encode_chat`` and ``eos_token``.

    ``vocab_size`` is ``len(tokenizer)`` (added tokens included); the model's logit width may be
    larger. ``pad_id`` falls back to ``eos_id`` when the tokenizer has no pad token; ``eos_id``
    falls back to the ``eos_id`` argument (load_local passes the model config's); ``unk_id`` is
    ``None`` unless the unknown token is distinct from the other specials.
    """

    def __init__(self, tokenizer: Any, *, eos_id: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.vocab_size: int = len(tokenizer)
        self.bos_id: int | None = _first_int(tokenizer.bos_token_id)
        eos = _first_int(tokenizer.eos_token_id)
        eos = eos if eos is not None else eos_id
        if eos is None:
            raise ValueError(
                "the tokenizer has no eos token and none was given; "
                "set tokenizer.eos_token (or config.json's eos_token_id) and save again"
            )
        self.eos_id: int = eos
        pad = _first_int(tokenizer.pad_token_id)
        self.pad_id: int = pad if pad is not None else self.eos_id
        eos_token = getattr(tokenizer, "eos_token", None)
        self.eos_token: str | None = eos_token if isinstance(eos_token, str) else None
        unk = _first_int(getattr(tokenizer, "unk_token_id", None))
        # the unknown-token id, when it is a token of its own (data audits count it)
        specials = (self.bos_id, self.eos_id, self.pad_id)
        self.unk_id: int | None = unk if unk not in specials else None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, no special tokens added."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def encode_input(self, text: str) -> list[int]:
        """``tokenizer(text)["input_ids"]``: with the special tokens the tokenizer inserts
        (e.g. a Llama-style BOS), as TRL tokenizes plain-text rows."""
        return list(self.tokenizer(text=text)["input_ids"])

    def encode_chat(
        self, messages: list[dict[str, Any]], *, add_generation_prompt: bool, **template_kwargs: Any
    ) -> list[int] | None:
        """``apply_chat_template(messages, tokenize=True, **template_kwargs)``'s ids, as TRL
        tokenizes conversational rows; None when the tokenizer has no chat template."""
        if not getattr(self.tokenizer, "chat_template", None):
            return None
        out = self.tokenizer.apply_chat_template(
            messages,
            tokenize=True,
            return_dict=True,
            add_generation_prompt=add_generation_prompt,
            **template_kwargs,
        )
        return list(out["input_ids"])

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (a list or a 1-D tensor); ``decode(encode(s)) == s`` for byte-level
        tokenizers (no clean-up of spaces)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(
            list(ids),
            skip_special_tokens=skip_special_tokens,
            clean_up_tokenization_spaces=False,
        )

    @cached_property
    def fingerprint(self) -> str:
        """sha256 hex digest of the vocabulary, the special tokens and (fast tokenizers) the
        tokenization pipeline (normalizer, pre-tokenizer, model with its merges, decoder)."""
        tok = self.tokenizer
        payload: dict[str, Any] = {
            "class": type(tok).__name__,
            "vocab": sorted(tok.get_vocab().items(), key=lambda item: (item[1], item[0])),
            "special": {
                "bos": self.bos_id,
                "eos": self.eos_id,
                "pad": self.pad_id,
                "tokens": sorted(map(str, tok.all_special_tokens)),
            },
        }
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is not None:  # padding/truncation settings are state, not tokenization
            spec = json.loads(backend.to_str())
            keys = ("added_tokens", "normalizer", "pre_tokenizer", "model", "decoder")
            payload["backend"] = {k: spec.get(k) for k in keys}
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def apply_chat_template(
        self, messages: list[dict[str, Any]], *, add_generation_prompt: bool | None = None
    ) -> str | None:
        """``messages`` ([{"role": ..., "content": ...}]) rendered as text by the tokenizer's
        chat template, or None when it has none. The header of an assistant reply is appended
        (a prompt to complete) when the last message is not the assistant's, as the
        ``llm.tokenizer.Tokenizer`` protocol asks; ``add_generation_prompt`` forces either way."""
        if not getattr(self.tokenizer, "chat_template", None):
            return None
        if add_generation_prompt is None:
            add_generation_prompt = not messages or messages[-1].get("role") != "assistant"
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )


def load_local(
    path: str | Path, *, dtype: torch.dtype | None = None, weights: bool = True
) -> tuple[HFCausalLM, HFTokenizer]:
    """Model and tokenizer saved (``save_pretrained``) in the local directory ``path``.

    ``dtype`` casts the weights (e.g. ``torch.bfloat16``); None keeps the checkpoint's dtype
    (float32 when it records none). The model is returned in eval mode. Custom model code
    (``trust_remote_code``) is not run.  ``weights=False`` builds the model from its config
    on the ``meta`` device: its shape, no weights read or allocated (the cost plan).

    >>> load_local("/no/such/model")
    Traceback (most recent call last):
    ...
    FileNotFoundError: model directory not found: /no/such/model
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model directory not found: {path}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path / 'config.json'} not found; save the model with model.save_pretrained({path})"
        )
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(
            f"{path} holds no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); "
            f"save the tokenizer there with tokenizer.save_pretrained({path})"
        )
    transformers = _import_transformers()
    from packaging.version import Version  # a dependency of transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    # transformers >= 4.56 names the argument `dtype`; older releases `torch_dtype`.
    old = Version(transformers.__version__) < Version("4.56")
    dtype_arg = {"torch_dtype" if old else "dtype": dtype if dtype is not None else "auto"}
    if weights:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, **dtype_arg
        )
    else:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config)
    model.eval()
    eos_id = _first_int(model.config.eos_token_id)
    if eos_id is not None and not 0 <= eos_id < len(tokenizer):
        eos_id = None  # a config default that this tokenizer does not have
    return HFCausalLM(model), HFTokenizer(tokenizer, eos_id=eos_id)
