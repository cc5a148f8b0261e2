"""Text side of UltraAD: lesion-aware class descriptions and the image-aware prompt learner.

* Lesion-aware prompts (paper Sec. 2.2): "This is a <type> ultrasound image with <pathological features>". Their CLIP
  text embeddings are computed once and stay frozen; they anchor the classifier and the memory bank.
* Image-aware prompting (paper Sec. 2.1, after CoCoOp): normal/abnormal templates whose class word is replaced by
  learnable global context tokens plus one instance-specific token produced by a MiniNet from the image's class token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from monai_ultraad.constants import CLASS_NAMES
from monai_ultraad.networks.backbone import FrozenTextEncoder, TextKVCache

#: Pathological descriptions per class, in the paper's template. Wording follows the BI-RADS ultrasound lexicon
#: (shape, orientation, margin, echo pattern, posterior features) so that CLIP's language prior carries the
#: radiological meaning of each class.
LESION_AWARE_PROMPTS: dict[str, tuple[str, ...]] = {
    "normal": (
        "This is a normal breast ultrasound image with homogeneous fibroglandular tissue and no focal lesion.",
        "This is a normal breast ultrasound image with regular layers of skin, fat and glandular tissue.",
        "This is a normal breast ultrasound image without any mass, cyst or architectural distortion.",
    ),
    "benign": (
        "This is a benign breast ultrasound image with round shape and sharply demarcated margins.",
        "This is a benign breast ultrasound image with an oval circumscribed mass parallel to the skin.",
        "This is a benign breast ultrasound image with an anechoic cyst and posterior acoustic enhancement.",
    ),
    "malignant": (
        "This is a malignant breast ultrasound image with irregular shape and spiculated margins.",
        "This is a malignant breast ultrasound image with a hypoechoic mass that is taller than wide.",
        "This is a malignant breast ultrasound image with angular margins and posterior acoustic shadowing.",
    ),
}

#: Ultrasound-unaware prompts, for the paper's ablation ("US-unaware prompts").
GENERIC_CLASS_PROMPTS: dict[str, tuple[str, ...]] = {
    "normal": ("a photo of a normal object.",),
    "benign": ("a photo of a benign object.",),
    "malignant": ("a photo of a malignant object.",),
}

#: Normal / abnormal states of the image-aware template ("A photo of a normal [CLS]").
STATE_PREFIXES: tuple[str, str] = ("a photo of a normal", "a photo of an abnormal")
#: Hand-written class phrase used when the image-aware prompt learner is ablated.
FIXED_CLASS_PHRASE = "breast ultrasound image"
_PLACEHOLDER = "X"  # a single BPE token whose embeddings are replaced by learnable ones (CoOp's trick)


@torch.no_grad()
def encode_class_prompts(
    text_encoder: FrozenTextEncoder,
    prompts: Mapping[str, Sequence[str]] | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
) -> torch.Tensor:
    """Frozen (C, D) class text embeddings: the normalised mean of each class's normalised prompt embeddings."""
    prompts = LESION_AWARE_PROMPTS if prompts is None else prompts
    rows = []
    for name in class_names:
        if name not in prompts or not prompts[name]:
            raise ValueError(f"no prompt text given for class '{name}'")
        emb = F.normalize(text_encoder.encode_texts(list(prompts[name])).float(), dim=-1)
        rows.append(F.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(rows)


class ImageAwarePromptLearner(nn.Module):
    """Normal / abnormal text prompts conditioned on the image (paper Sec. 2.1).

    Prompt i (i = normal, abnormal) is ``STATE_PREFIXES[i] + [G_1 .. G_m] + [pi(x)] + "."`` where the ``G_j`` are
    learnable context token embeddings shared by all images and ``pi(x)`` is an instance token computed from the
    image's (shared, MiniNet-projected) class token. The sequence goes through the frozen CLIP text encoder, so
    the gradient reaches the tokens through it.

    Args:
        text_encoder: the frozen text tower.
        embed_dim: dimension D of the joint space (input of the instance-token projection).
        n_ctx: number m of learnable global context tokens.
        image_aware: False gives the ablation without image-aware prompting: fixed hand-written prompts
            ("a photo of a normal breast ultrasound image."), nothing learnable.
    """

    def __init__(self, text_encoder: FrozenTextEncoder, embed_dim: int, n_ctx: int = 4, image_aware: bool = True):
        super().__init__()
        self.text_encoder = [text_encoder]  # a list keeps the frozen tower out of this module's parameters
        self.image_aware = image_aware
        self.n_ctx = n_ctx
        self.prefix_length = 0  # > 0: the prompt prefix is cached (see _setup_prefix_cache)
        width = text_encoder.width
        if image_aware:
            placeholders = " ".join([_PLACEHOLDER] * (n_ctx + 1))
            texts = [f"{prefix} {placeholders}." for prefix in STATE_PREFIXES]
        else:
            texts = [f"{prefix} {FIXED_CLASS_PHRASE}." for prefix in STATE_PREFIXES]
        tokens = text_encoder.tokenize(texts)
        self.register_buffer("eot_index", tokens.argmax(dim=-1), persistent=False)
        self.seq_len = int(tokens.argmax(dim=-1).max()) + 1  # a Python int: no data-dependent shape at run time
        with torch.no_grad():
            self.register_buffer("token_embeddings", text_encoder.embed_tokens(tokens).float().cpu(), persistent=False)
        if image_aware:
            placeholder_id = text_encoder.tokenize([_PLACEHOLDER])[0, 1].item()
            slots = (tokens[0] == placeholder_id).nonzero().flatten()
            slots_abn = (tokens[1] == placeholder_id).nonzero().flatten()
            if len(slots) != n_ctx + 1 or len(slots_abn) != n_ctx + 1:
                raise RuntimeError("prompt placeholder tokens were not found where expected")
            self.register_buffer("ctx_slots", torch.stack([slots, slots_abn]), persistent=False)
            self.ctx = nn.Parameter(torch.randn(n_ctx, width) * 0.02)  # CoOp initialisation
            self.instance_proj = nn.Linear(embed_dim, width)  # MiniNet output -> one token embedding
            nn.init.normal_(self.instance_proj.weight, std=0.02)
            nn.init.zeros_(self.instance_proj.bias)
            self.prefix_length = self._setup_prefix_cache(text_encoder, tokens)

    def _setup_prefix_cache(self, encoder: FrozenTextEncoder, tokens: torch.Tensor) -> int:
        """Encode the constant prompt prefix ("a photo of a normal") once; 0 when the tower cannot do it.

        The prompt is then encoded in three causal pieces: the cached prefix, the learnable context (the same for
        every image: once per step) and the instance token with the rest of the prompt (per image). Same result as
        encoding the whole prompt per image (a test checks it), about 3x less text-tower time in training.
        """
        start = int(self.ctx_slots[0, 0])
        contiguous = torch.arange(start, start + self.n_ctx + 1)
        if not encoder.supports_incremental or any(not torch.equal(s.cpu(), contiguous) for s in self.ctx_slots):
            return 0
        if int(self.eot_index.min()) <= start + self.n_ctx:
            return 0
        with torch.no_grad():
            _, cache = encoder.encode_incremental(self.token_embeddings[:, :start].to(encoder.positional_embedding))
        for index, (k, v) in enumerate(zip(cache.keys, cache.values)):
            self.register_buffer(f"prefix_keys_{index}", k.float().cpu(), persistent=False)
            self.register_buffer(f"prefix_values_{index}", v.float().cpu(), persistent=False)
        self._prefix_blocks = len(cache.keys)
        return start

    def _prefix_cache(self) -> TextKVCache:
        blocks = range(self._prefix_blocks)
        return TextKVCache(
            [getattr(self, f"prefix_keys_{i}") for i in blocks], [getattr(self, f"prefix_values_{i}") for i in blocks]
        )

    def _encode_pieces(self, instance: torch.Tensor) -> torch.Tensor:
        """(B, width) instance tokens -> (B * 2, D) text features, the prompt encoded from the cached prefix on.

        Per state, one call encodes the shared context tokens and every image's tail (instance token, ".", end of
        text) side by side: ``[ctx_1..ctx_m, tail_1, ..., tail_B]``. Each tail sees the prefix, the context and its
        own earlier tokens only, and takes the positions it has in the full prompt, so each image gets exactly the
        result of encoding its own whole prompt, and the tower's weights are read once per step, not per image.
        """
        encoder = self.text_encoder[0]
        batch, device = instance.shape[0], instance.device
        start, n_ctx = self.prefix_length, self.n_ctx
        rest = self.token_embeddings[:, start + n_ctx + 1 : self.seq_len].to(instance)  # "." and end-of-text
        tail_len = 1 + rest.shape[1]
        tails = torch.cat(
            [instance[None, :, None, :].expand(2, -1, 1, -1), rest.unsqueeze(1).expand(-1, batch, -1, -1)], dim=2
        )  # (2 states, B, tail_len, width)
        tokens = torch.cat([self.ctx.unsqueeze(0).expand(2, -1, -1).to(instance), tails.flatten(1, 2)], dim=1)
        tail_pos = torch.arange(start + n_ctx, start + n_ctx + tail_len, device=device)
        positions = torch.cat([torch.arange(start, start + n_ctx, device=device), tail_pos.repeat(batch)])
        image_of_tail = torch.arange(batch, device=device).repeat_interleave(tail_len)
        owner = torch.cat([torch.full((n_ctx,), -1, device=device), image_of_tail])  # -1: shared context
        new_visible = (owner[None, :] == -1) | (owner[None, :] == owner[:, None])  # context, or the same image
        new_visible &= positions[None, :] <= positions[:, None]  # causal
        visible = torch.cat([torch.ones(len(positions), start, dtype=torch.bool, device=device), new_visible], dim=1)
        hidden, _ = encoder.encode_incremental(tokens, self._prefix_cache(), positions, visible)
        eot = n_ctx + (self.eot_index.to(device) - (start + n_ctx))  # index in a state's row of the first tail
        rows = eot[None, :] + tail_len * torch.arange(batch, device=device)[:, None]  # (B, 2)
        return encoder.project(hidden[torch.arange(2, device=device)[None, :], rows]).flatten(0, 1)

    def forward(self, shared_cls: torch.Tensor) -> torch.Tensor:
        """(B, D) shared class features -> (B, 2, D) normalised [normal, abnormal] text features per image."""
        encoder = self.text_encoder[0]
        batch = shared_cls.shape[0]
        base = self.token_embeddings.to(shared_cls.device)
        if not self.image_aware:
            text = F.normalize(encoder.encode_embeddings(base, self.eot_index.to(base.device), self.seq_len).float(), dim=-1)
            return text.unsqueeze(0).expand(batch, -1, -1)
        instance = self.instance_proj(shared_cls)  # (B, width)
        # Exporting (TorchScript trace, torch.export with a dynamic batch) would freeze the batch size into the
        # pieces' attention mask: exporters get the whole-prompt computation, which has the same result
        if self.prefix_length and not (torch.jit.is_tracing() or torch.compiler.is_exporting()):
            return F.normalize(self._encode_pieces(instance).float(), dim=-1).view(batch, 2, -1)
        learned = torch.cat([self.ctx.unsqueeze(0).expand(batch, -1, -1), instance.unsqueeze(1)], dim=1)
        emb = base.unsqueeze(0).expand(batch, -1, -1, -1).clone()  # (B, 2, T, width)
        for state in range(2):
            emb[:, state, self.ctx_slots[state]] = learned.to(emb.dtype)
        eot = self.eot_index.to(emb.device).repeat(batch)
        text = encoder.encode_embeddings(emb.flatten(0, 1), eot, self.seq_len).float()
        return F.normalize(text, dim=-1).view(batch, 2, -1)
