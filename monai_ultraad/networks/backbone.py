"""Frozen open_clip backbone: weight loading (tag | local file | explicit random init), layer taps, text tower.

The backbone is never trained. It exposes exactly what the UltraAD head needs:

* :meth:`ClipBackbone.encode_image` -> :class:`VisualFeatures` (projected class token and the LayerNorm-ed patch
  tokens of the tapped layers). These are what the feature cache stores, so that training epochs and seeds after the
  first never rerun the image tower.
* :class:`FrozenTextEncoder` that encodes token *embeddings* (not only token ids), which the learnable prompts need.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from torch import nn
from torch.nn import functional as F

# The defaults live in constants so that the CLI can show them in --help without importing open_clip.
from monai_ultraad.constants import DEFAULT_BACKBONE, DEFAULT_FEATURE_LAYERS, DEFAULT_PRETRAINED, RANDOM_WEIGHTS_WARNING
from monai_ultraad.errors import WeightsError

logger = logging.getLogger(__name__)

#: A 4-block randomly initialised CLIP shipped with the package for tests and smoke runs.
TINY_BACKBONE = "UltraAD-Tiny-ViT"

#: ``pretrained`` values that ask for random initialisation (with ``allow_random_init``), wherever weights are named
RANDOM_INIT_NAMES = ("random", "none", "")

# Register the package's own model configs (the tiny test model) with open_clip once.
_CONFIG_DIR = Path(__file__).parent / "model_configs"
if TINY_BACKBONE not in open_clip.list_models():
    open_clip.add_model_config(_CONFIG_DIR)


@dataclass
class VisualFeatures:
    """What the frozen image tower yields for a batch.

    Attributes:
        cls_token: (B, D) class token projected into the joint image-text space (not normalised).
        patch_tokens: (B, L, N, W) patch tokens of the L tapped blocks after the tower's final LayerNorm
            (N = grid_h * grid_w patches, W = vision width).
    """

    cls_token: torch.Tensor
    patch_tokens: torch.Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> VisualFeatures:
        return VisualFeatures(self.cls_token.to(device, dtype), self.patch_tokens.to(device, dtype))

    def __len__(self) -> int:
        return self.cls_token.shape[0]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def is_random_init(pretrained: str | None) -> bool:
    """Whether ``pretrained`` names random initialisation (None or one of :data:`RANDOM_INIT_NAMES`)."""
    return pretrained is None or str(pretrained).strip().lower() in RANDOM_INIT_NAMES


def _looks_like_path(pretrained: str) -> bool:
    p = str(pretrained)
    return "/" in p or "\\" in p or p.endswith((".pt", ".pth", ".bin", ".safetensors", ".npz")) or Path(p).exists()


def uses_quick_gelu(model_name: str, pretrained: str | None) -> bool:
    """Whether these weights need QuickGELU activations (the OpenAI CLIP models do; a mismatch silently degrades).

    For an open_clip tag, its pretrained config says so. For a local file, the architecture decides when every
    published weight of it uses QuickGELU (``ViT-L-14-336`` has only OpenAI's), and ``-quickgelu`` names always do.
    """
    if model_name.endswith("-quickgelu") or is_random_init(pretrained):
        return False  # the -quickgelu configs set it themselves; random weights use the config as is
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained in tags:
        return bool(open_clip.get_pretrained_cfg(model_name, pretrained).get("quick_gelu", False))
    return bool(tags) and all(open_clip.get_pretrained_cfg(model_name, t).get("quick_gelu", False) for t in tags)


def _load_weight_file(model: nn.Module, path: Path, model_name: str) -> None:
    """Load a local checkpoint: open_clip / HF state dicts (safetensors or ``torch.load(weights_only=True)``) or an
    original OpenAI TorchScript archive (its state dict only; no TorchScript code is run)."""
    import zipfile

    is_torchscript = False
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            is_torchscript = any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())
    try:
        if is_torchscript:
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
            expected = model.state_dict()
            missing = sorted(set(expected) - set(state))
            if missing:
                raise KeyError(f"missing keys {missing[:5]}")
            # archives also carry metadata entries (input_resolution, ...) and non-persistent buffers: skip them
            model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True)
        else:
            # open_clip.load_checkpoint uses torch.load(weights_only=True) or safetensors: no pickle execution.
            open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
    except Exception as exc:  # corrupt file, wrong architecture, truncated download...
        raise WeightsError(f"cannot load backbone weights from {path} into {model_name}: {exc}") from exc


def create_clip(
    model_name: str = DEFAULT_BACKBONE,
    pretrained: str | None = DEFAULT_PRETRAINED,
    *,
    allow_random_init: bool = False,
    init_seed: int = 0,
    cache_dir: str | None = None,
    quick_gelu: bool | None = None,
) -> tuple[nn.Module, str, bool]:
    """Build an open_clip model and load its weights.

    Args:
        model_name: an open_clip architecture name (``open_clip.list_models()``), e.g. ``ViT-L-14-336``.
        pretrained: an open_clip pretrained tag (e.g. ``openai``), a local checkpoint file (``.pt``/``.bin``/
            ``.safetensors``), or ``None``/``"random"`` for random initialisation.
        allow_random_init: random initialisation must be asked for explicitly; it is then logged loudly and the
            returned flag is True so every output can carry :data:`RANDOM_WEIGHTS_WARNING`.
        init_seed: seed of the random initialisation, so that a random backbone is reproducible (and its feature
            cache valid).
        cache_dir: open_clip download cache for tags.
        quick_gelu: force QuickGELU activations; None decides with :func:`uses_quick_gelu` (True for OpenAI weights).

    Returns:
        (model, weights_id, random_weights). ``weights_id`` identifies the weights (tag, file hash or
        ``random-init:seed``) for feature-cache keys and checkpoint provenance.

    Raises:
        WeightsError: unknown architecture, missing/corrupt weight file, a tag that cannot be fetched, or random
            weights not explicitly allowed.
    """
    if model_name not in open_clip.list_models():
        raise WeightsError(
            f"unknown open_clip backbone '{model_name}'; choose one of open_clip.list_models(), "
            f"e.g. {DEFAULT_BACKBONE} (default) or {TINY_BACKBONE} (tiny, random init, for tests)"
        )
    if is_random_init(pretrained):
        if not allow_random_init:
            raise WeightsError(
                f"no pretrained weights given for backbone {model_name}. Pass an open_clip tag (e.g. 'openai') or a "
                "local checkpoint file (see bundle/large_files.yml for the file, its URL and hash); random "
                "initialisation is only used when asked for explicitly (allow_random_init=True / --allow_random_init)"
            )
        banner = f"{RANDOM_WEIGHTS_WARNING} (backbone {model_name}, init seed {init_seed})"
        logger.warning("!" * 20 + " " + banner + " " + "!" * 20)
        warnings.warn(banner, stacklevel=2)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = open_clip.create_model(model_name, pretrained=None)
        return model, f"random-init:seed{init_seed}", True

    pretrained = str(pretrained)
    if _looks_like_path(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise WeightsError(
                f"backbone weight file not found: {path}. Fetch it as listed in bundle/large_files.yml "
                "(download its url and check its sha256), pass an open_clip tag, or, for a smoke run whose outputs are not "
                "meaningful, pretrained=random with allow_random_init=True"
            )
        quick = uses_quick_gelu(model_name, str(path)) if quick_gelu is None else quick_gelu
        model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick)
        _load_weight_file(model, path, model_name)
        return model, f"file-sha256:{sha256_file(path)}", False

    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained not in tags:
        raise WeightsError(
            f"'{pretrained}' is neither an existing file nor an open_clip pretrained tag of {model_name} "
            f"(known tags: {', '.join(tags) or 'none'})"
        )
    try:
        quick = uses_quick_gelu(model_name, pretrained) if quick_gelu is None else quick_gelu
        model = open_clip.create_model(model_name, pretrained=pretrained, cache_dir=cache_dir, force_quick_gelu=quick)
    except Exception as exc:  # typically: no network to the model hub
        raise WeightsError(
            f"could not load open_clip weights '{pretrained}' for {model_name}: {exc}. Without network access, "
            "download the checkpoint named in bundle/large_files.yml elsewhere and pass its local path as pretrained"
        ) from exc
    return model, f"open_clip:{model_name}:{pretrained}", False


@dataclass
class TextKVCache:
    """Keys and values, per text block, of tokens already encoded by a causal text tower.

    With causal attention a token's hidden states never depend on the tokens after it, so a prompt can be encoded
    in pieces: the constant prefix once, the parts shared by the batch once per step, and only the image-specific
    tail per image (:meth:`FrozenTextEncoder.encode_incremental`). The result is the same as encoding the whole
    sequence at once.

    Attributes:
        keys, values: one (S, T, width) tensor per block (S sequences, T tokens, before the head split).
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return self.keys[0].shape[1]


class FrozenTextEncoder(nn.Module):
    """The CLIP text tower, able to encode token embeddings so that prompts can contain learnable tokens.

    Only causal (GPT-style) CLIP text towers with end-of-text pooling are supported, which covers the OpenAI and
    LAION CLIP models. Because attention is causal, tokens after the end-of-text token cannot influence it, so the
    sequence is cut right after the longest prompt's end-of-text token: a large speed-up (77 -> ~15 tokens) with
    exactly the same result.
    """

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        tower = clip_model.text if hasattr(clip_model, "text") else clip_model
        needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
        missing = [n for n in needed if not hasattr(tower, n)]
        if missing or getattr(tower, "text_pool_type", "argmax") != "argmax" or getattr(tower, "cls_emb", None) is not None:
            raise WeightsError(
                f"unsupported text tower {type(tower).__name__}: UltraAD needs a causal CLIP text transformer "
                "with end-of-text pooling (e.g. the OpenAI/LAION ViT CLIP models)"
            )
        self.token_embedding = tower.token_embedding
        self.positional_embedding = tower.positional_embedding
        self.transformer = tower.transformer
        self.ln_final = tower.ln_final
        self.text_projection = tower.text_projection
        mask = getattr(tower, "attn_mask", None)
        if mask is None:
            raise WeightsError("UltraAD needs a causal text tower (attention mask missing)")
        self.register_buffer("attn_mask", mask.clone(), persistent=False)
        self.width = self.token_embedding.embedding_dim
        self.context_length = self.positional_embedding.shape[0]
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=self.context_length)
        self.requires_grad_(False)
        self._incremental_ok = self._check_incremental()

    @property
    def output_dim(self) -> int:
        proj = self.text_projection
        return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(tokens.to(self.token_embedding.weight.device))

    def encode_embeddings(
        self, embeddings: torch.Tensor, eot_index: torch.Tensor, length: int | None = None
    ) -> torch.Tensor:
        """Encode (B, T, width) token embeddings; ``eot_index`` (B,) is each sequence's end-of-text position.

        ``length`` (> every end-of-text position) can be given when it is known in advance, which keeps the
        computation free of data-dependent shapes (needed by ``torch.export``).
        """
        if length is None:
            length = int(eot_index.max().item()) + 1
        x = embeddings[:, :length]
        dtype = self.positional_embedding.dtype
        x = x.to(dtype) + self.positional_embedding[:length]
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
        return self.project(x[torch.arange(x.shape[0], device=x.device), eot_index.to(x.device)])

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm and projection of (..., width) end-of-text hidden states -> (..., D)."""
        x = self.ln_final(hidden)
        proj = self.text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    @property
    def supports_incremental(self) -> bool:
        """Whether :meth:`encode_incremental` can run this tower: open_clip's standard causal blocks, no dropout."""
        return self._incremental_ok

    def _check_incremental(self) -> bool:
        length = self.attn_mask.shape[0]
        causal = torch.full((length, length), float("-inf")).triu(1)
        if not torch.equal(self.attn_mask.float().cpu().clamp(min=-1e30), causal.clamp(min=-1e30)):
            return False
        for block in getattr(self.transformer, "resblocks", [None]):
            parts = ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2")
            if block is None or any(not hasattr(block, p) for p in parts) or hasattr(block, "ln_1_kv"):
                return False
            attn = block.attn
            if not isinstance(attn, nn.MultiheadAttention) or attn.in_proj_weight is None or attn.dropout:
                return False
            if attn.in_proj_bias is None or attn.bias_k is not None:
                return False
        return True

    def encode_incremental(
        self,
        embeddings: torch.Tensor,
        past: TextKVCache | None = None,
        positions: torch.Tensor | None = None,
        visible: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, TextKVCache]:
        """Encode (S, T, width) token embeddings that continue the sequences in ``past`` (None: they start them).

        By default the T tokens are the next T positions and attend causally, which is exactly
        :meth:`encode_embeddings` on the concatenated sequence (a test checks it). Several continuations of the same
        past can share one call (so the tower's weights are read once): give each token its ``positions`` (T,) and
        the (T, P + T) boolean ``visible`` mask of what it attends to (True = attend).

        Returns the hidden states after the last block, (S, T, width), to be pooled with :meth:`project`, and the
        cache of these T tokens.
        """
        if not self._incremental_ok:
            raise RuntimeError("this text tower does not support incremental encoding")
        offset = 0 if past is None else past.length
        n_seq, n_new, width = embeddings.shape
        if positions is None:
            positions = torch.arange(offset, offset + n_new, device=embeddings.device)
        if visible is None:  # query i (position offset + i) sees every past token and the new ones up to itself
            visible = torch.ones(n_new, offset + n_new, dtype=torch.bool, device=embeddings.device).tril(offset)
        dtype = self.positional_embedding.dtype
        x = embeddings.to(dtype) + self.positional_embedding[positions.to(self.positional_embedding.device)]
        keys, values = [], []
        for index, block in enumerate(self.transformer.resblocks):
            attn = block.attn
            q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
            keys.append(k)
            values.append(v)
            if past is not None:
                k = torch.cat([past.keys[index].to(k.dtype), k], dim=1)
                v = torch.cat([past.values[index].to(v.dtype), v], dim=1)
            q, k, v = (t.reshape(n_seq, -1, attn.num_heads, attn.head_dim).transpose(1, 2) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)
            out = attn.out_proj(out.transpose(1, 2).reshape(n_seq, n_new, width))
            x = x + block.ls_1(out)
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        return x, TextKVCache(keys, values)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Encode plain sentences: (len(texts), D), not normalised."""
        tokens = self.tokenize(texts).to(self.token_embedding.weight.device)
        return self.encode_embeddings(self.embed_tokens(tokens), tokens.argmax(dim=-1))


class ClipBackbone(nn.Module):
    """A frozen open_clip model split into what UltraAD needs: the image tower with layer taps, and the text tower.

    Args:
        model_name: open_clip architecture (default ``ViT-L-14-336`` as in the paper).
        pretrained: open_clip tag, local checkpoint file, or None/"random" (then ``allow_random_init`` must be True).
        feature_layers: 1-based numbers of the transformer blocks whose patch tokens are tapped
            (paper: 6, 12, 18, 24 for the 24-block ViT-L). ``None`` picks four evenly spaced blocks.
        allow_random_init: see :func:`create_clip`.
        init_seed: seed of a random initialisation.
    """

    def __init__(
        self,
        model_name: str = DEFAULT_BACKBONE,
        pretrained: str | None = DEFAULT_PRETRAINED,
        feature_layers: Sequence[int] | None = DEFAULT_FEATURE_LAYERS,
        *,
        allow_random_init: bool = False,
        init_seed: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        model, self.weights_id, self.random_weights = create_clip(
            model_name, pretrained, allow_random_init=allow_random_init, init_seed=init_seed, cache_dir=cache_dir
        )
        self.model_name = model_name
        self.init_seed = int(init_seed)
        self.pretrained = None if is_random_init(pretrained) else str(pretrained)
        visual = model.visual
        if not hasattr(visual, "forward_intermediates") or not hasattr(visual, "transformer"):
            raise WeightsError(f"backbone {model_name} is not a ViT CLIP image tower; UltraAD needs patch tokens")
        n_blocks = len(visual.transformer.resblocks)
        if feature_layers is None:
            feature_layers = tuple(round(n_blocks * (i + 1) / 4) for i in range(4))
        bad = [layer for layer in feature_layers if not 1 <= int(layer) <= n_blocks]
        if bad or len(feature_layers) == 0:
            raise WeightsError(f"feature_layers {list(feature_layers)} out of range for {model_name} ({n_blocks} blocks)")
        self.feature_layers = tuple(int(layer) for layer in feature_layers)
        self.visual = visual
        # the activation changes the features of the same weights (OpenAI weights need QuickGELU)
        self.quick_gelu = type(visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
        self.text = FrozenTextEncoder(model)
        self.image_size = int(visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else visual.image_size)
        patch = visual.patch_size[0] if isinstance(visual.patch_size, (tuple, list)) else visual.patch_size
        self.grid_size = self.image_size // int(patch)
        self.vision_width = int(visual.transformer.width)
        self.embed_dim = int(visual.output_dim)
        pp = getattr(visual, "preprocess_cfg", {}) or {}
        self.mean = tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(pp.get("std", open_clip.OPENAI_DATASET_STD))
        if self.text.output_dim != self.embed_dim:
            raise WeightsError(f"{model_name}: text ({self.text.output_dim}) and image ({self.embed_dim}) dims differ")
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> ClipBackbone:
        # Frozen: always in eval mode (no dropout / patch dropout), whatever the parent module does.
        return super().train(False)

    @property
    def description(self) -> dict:
        """Provenance of the backbone for checkpoints, cache keys and clinical outputs."""
        return {
            "model_name": self.model_name,
            "pretrained": self.pretrained,
            "weights_id": self.weights_id,
            "random_weights": self.random_weights,
            "feature_layers": list(self.feature_layers),
            "image_size": self.image_size,
            "quick_gelu": self.quick_gelu,
        }

    @property
    def feature_key(self) -> dict:
        """What determines the image features (not where the weight file lies): the feature-cache key."""
        d = self.description
        return {k: d[k] for k in ("model_name", "weights_id", "feature_layers", "image_size", "quick_gelu")}

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> VisualFeatures:
        """(B, 3, S, S) CLIP-normalised images -> :class:`VisualFeatures`."""
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"{self.model_name} expects images of shape (B, 3, {self.image_size}, {self.image_size}), "
                f"got {tuple(images.shape)}"
            )
        param = next(self.visual.parameters())
        out = self.visual.forward_intermediates(
            images.to(param.device, param.dtype),
            indices=[layer - 1 for layer in self.feature_layers],
            normalize_intermediates=True,  # apply ln_post to every tap, as the final tokens get
            output_fmt="NLC",
        )
        patches = torch.stack(out["image_intermediates"], dim=1)  # (B, L, N, W)
        return VisualFeatures(cls_token=out["image_features"], patch_tokens=patches)
