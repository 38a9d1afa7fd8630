"""The block-causal variant (paper 3.2): interleaved sequence, block-causal mask, cached context.

A session is the interleaved sequence ``F0, P1, F1, P2, F2, ...`` of frames (images or masks) and
the prompts that introduce them. Causality runs across blocks and attention is bidirectional within
a block. For training, a noisy copy ``N_k`` of each target frame joins the sequence; it attends only
to the clean blocks before ``F_k`` (``F0..F_{k-1}``, ``P1..P_k``) and to itself, and the loss is
computed on noisy tokens only.

Positions are separate per modality: text tokens count 0, 1, 2, ... over all prompts (``(j, j, j)``)
and frame ``k``'s token at row r, column c sits at ``(k, r, c)``; a noisy frame shares its clean
frame's positions. Channels of a frame token are ``[latent | source-image latent | flag]``: clean
frames carry ``[F_k | 0 | 0]``; a noisy frame carries ``[x_t | F_src | 1]`` where ``src`` is the image
it is edited from, so copying unchanged content is cheap (our addition to the paper's layout; it keeps
the 33-channel input of the official DiT).

At inference the clean history is run once into a :class:`~vincie_sdk.models.dit.KVCache` and carried
from turn to turn; each denoising step runs only the new frame's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .models.dit import KVCache, VincieTransformer
from .models.rope import text_positions, video_positions


# ----------------------------------------------------------------------------------------------
# Training: one full sequence with clean and noisy blocks
# ----------------------------------------------------------------------------------------------

@dataclass
class TrainingSequence:
    """One session, ready to be packed for a block-causal training forward.

    Attributes:
        latents: (N+1, h, w, C) clean latents of frames F0..FN.
        prompts: N fused prompt embeddings ([turn id ; text states]); prompt k-1 introduces frame k.
        sources: for each frame k >= 1, the index of the image it is generated from.
        targets: frames k >= 1 that get a noisy copy and a loss.
        timesteps: one timestep per target.
        noise: (len(targets), h, w, C) noise per target.
        null_prompts: per target, None or a fused empty prompt that replaces P_k for that target
            only (text dropout for classifier-free guidance).
        dropped: clean context frames hidden from every later block (context dropout), except from
            the targets that are generated from them.
        residual_bases: per target, None or the latent a residual output (``DiTConfig.residual``) is relative to
            instead of the source (a blank frame for mask targets; see ``DiTConfig.prediction``).
        context: optional (N+1, h, w, C) latents the history shows instead of ``latents`` (clean blocks and
            sources; e.g. degraded stand-ins for the model's own outputs); targets stay ``latents``.
    """

    latents: torch.Tensor
    prompts: list[torch.Tensor]
    sources: list[int]
    targets: list[int]
    timesteps: torch.Tensor
    noise: torch.Tensor
    null_prompts: list[torch.Tensor | None] = field(default_factory=list)
    dropped: set[int] = field(default_factory=set)
    residual_bases: list[torch.Tensor | None] = field(default_factory=list)
    context: torch.Tensor | None = None


@dataclass
class PackedTraining:
    """A packed batch for ``VincieTransformer.forward`` plus what the loss needs."""

    vid: torch.Tensor  # (sum tokens, 2C+1) unpatched [x | source | flag]
    vid_shape: torch.Tensor  # (B, 3)
    txt: torch.Tensor
    txt_shape: torch.Tensor  # (B, 1)
    timesteps: torch.Tensor  # (1 + targets,) entry 0 is t=0 for clean tokens and text
    vid_timestep_ids: torch.Tensor  # per patched video token
    positions: list[tuple[torch.Tensor, torch.Tensor]]
    masks: list[torch.Tensor]
    loss_rows: torch.Tensor  # rows of the unpatched output that are noisy targets
    velocity: torch.Tensor  # (len(loss_rows), C) regression target noise - x0
    # Per loss row, what a non-velocity prediction needs: x_t, x0, the source latent and the timestep.
    x_t: torch.Tensor | None = None
    x0: torch.Tensor | None = None
    source: torch.Tensor | None = None
    row_timesteps: torch.Tensor | None = None
    exact_source: torch.Tensor | None = None  # ``source`` before any context degradation

    def velocity_of(self, output: torch.Tensor, sampler, prediction: str, min_sigma: float = 0.0) -> torch.Tensor:
        """Velocity that ``output`` (the network output on ``loss_rows``) stands for."""
        return sampler.velocity(output, self.x_t, self.source, self.row_timesteps, prediction, min_sigma)

    def velocity_target(self, sampler, prediction: str, min_sigma: float = 0.0) -> torch.Tensor:
        """The regression target in the same (clamped) velocity space as :meth:`velocity_of`."""
        if prediction == "velocity":
            return self.velocity
        return sampler.x0_velocity(self.x0, self.x_t, self.row_timesteps, min_sigma)


def _frame_channels(x: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
    """(h, w, C) latent + optional source latent → (h, w, 2C+1) [x | source | flag]."""
    h, w, c = x.shape
    if source is None:
        return torch.cat((x, x.new_zeros(h, w, c + 1)), -1)
    return torch.cat((x, source, x.new_ones(h, w, 1)), -1)


def prompt_positions(kind: str, length: int, frame: int, cursor: int,
                     device: torch.device | None = None) -> torch.Tensor:
    """RoPE positions (length, 3) of the prompt that introduces frame ``frame`` (``DiTConfig.prompt_position``);
    ``cursor``: text tokens before it in the session."""
    if kind == "cursor":
        return text_positions(length, offset=cursor, device=device)
    positions = text_positions(length, device=device)
    positions[:, 0] += frame - 1
    return positions


def build_training_sequence(seq: TrainingSequence, sampler, patch: tuple[int, int, int],
                            prompt_position: str = "cursor", target_prompts: str = "all") -> dict:
    """Inputs of one sample: channels, positions, block-causal mask, timestep ids, loss rows."""
    _, h, w, c = seq.latents.shape
    _, ph, pw = patch
    gh, gw = h // ph, w // pw
    per_frame = gh * gw

    # Video stream: the clean frames some target can see, then the noisy targets.
    history = seq.context if seq.context is not None else seq.latents
    chans, vpos = [], []
    block_of_token: list[tuple[str, int]] = []
    for k in seen_clean_frames(seq):
        chans.append(_frame_channels(history[k], None))
        vpos.append(video_positions(1, gh, gw, offset=k))
        block_of_token += [("F", k)] * per_frame
    xts, velocities, sources, exact = [], [], [], []
    for j, k in enumerate(seq.targets):
        x0 = seq.latents[k]
        t = seq.timesteps[j]
        xt = sampler.add_noise(x0, seq.noise[j], t)
        xts.append(xt)
        velocities.append(sampler.velocity_target(x0, seq.noise[j]))
        source = history[seq.sources[k - 1]]
        chans.append(_frame_channels(xt, source))
        base = seq.residual_bases[j] if seq.residual_bases else None
        sources.append(source if base is None else base)
        exact.append(seq.latents[seq.sources[k - 1]] if base is None else base)
        vpos.append(video_positions(1, gh, gw, offset=k))
        block_of_token += [("N", j)] * per_frame

    # Text stream: P1..PN, then per-target null prompts (at P_k's positions).
    tokens, tpos, starts = [], [], []
    cursor = 0
    for k, p in enumerate(seq.prompts, start=1):
        tokens.append(p)
        tpos.append(prompt_positions(prompt_position, p.shape[0], k, cursor))
        starts.append(cursor)
        block_of_token += [("P", k)] * p.shape[0]
        cursor += p.shape[0]
    for j, null in enumerate(seq.null_prompts or []):
        if null is not None:
            k = seq.targets[j]
            tokens.append(null)
            tpos.append(prompt_positions(prompt_position, null.shape[0], k, starts[k - 1]))
            block_of_token += [("Z", j)] * null.shape[0]

    mask = block_causal_mask(block_of_token, seq, own_prompt_only=target_prompts == "own")
    return {
        "vid": torch.stack(chans),  # (T, h, w, 2C+1)
        "txt": torch.cat(tokens) if tokens else seq.latents.new_zeros(0, seq.prompts[0].shape[-1]),
        "positions": (torch.cat(vpos), torch.cat(tpos) if tpos else seq.latents.new_zeros(0, 3)),
        "mask": mask,
        "n_clean": len(chans) - len(seq.targets),
        "velocity": torch.stack(velocities) if velocities else seq.latents.new_zeros(0, h, w, c),
        "x_t": torch.stack(xts) if xts else seq.latents.new_zeros(0, h, w, c),
        "x0": seq.latents[list(seq.targets)],
        "source": torch.stack(sources) if sources else seq.latents.new_zeros(0, h, w, c),
        "exact_source": torch.stack(exact) if exact else seq.latents.new_zeros(0, h, w, c),
    }


def seen_clean_frames(seq: TrainingSequence) -> list[int]:
    """Clean frames that can affect a noisy target: those before the last target that are not dropped,
    plus every target's source. The rest (the last frame; dropped masks) are visible to no noisy block,
    directly or through another clean block, so leaving them out changes no output and saves their
    compute (a third of a single-turn sample)."""
    last = max(seq.targets, default=0)
    needed = {k for k in range(last) if k not in seq.dropped} | {seq.sources[k - 1] for k in seq.targets}
    return sorted(needed)


def block_causal_mask(blocks: list[tuple[str, int]], seq: TrainingSequence, *,
                      own_prompt_only: bool = False) -> torch.Tensor:
    """(L, L) bool: may token q attend to token k. Blocks: F k (clean frame), P k (prompt of frame k),
    N j (noisy target j), Z j (null prompt of target j). Order: F0 < P1 < F1 < P2 < F2 ...
    ``own_prompt_only``: a noisy target sees no prompt but its own (``DiTConfig.target_prompts``)."""
    def order(kind: str, idx: int) -> int:
        if kind == "F":
            return 2 * idx
        if kind == "P":
            return 2 * idx - 1
        k = seq.targets[idx]
        return 2 * k  # N/Z: at the position of the clean frame they stand for

    null_of = {j for j, z in enumerate(seq.null_prompts or []) if z is not None}
    kinds = [b[0] for b in blocks]
    ids = [b[1] for b in blocks]
    uniq: dict[tuple[str, int], int] = {}
    block_index = torch.tensor([uniq.setdefault(b, len(uniq)) for b in blocks])
    keys = list(uniq)
    nb = len(keys)
    allow = torch.zeros(nb, nb, dtype=torch.bool)
    for qi, (qk, qv) in enumerate(keys):
        for ki, (kk, kv) in enumerate(keys):
            if qi == ki:
                allow[qi, ki] = True
                continue
            if kk in ("N", "Z"):
                # Nobody sees a noisy block; a null prompt is seen only by its own target.
                allow[qi, ki] = kk == "Z" and qk == "N" and qv == kv
                continue
            if qk == "Z":
                # A null prompt sees the clean history before its frame's prompt (like P_k would).
                k_frame = seq.targets[qv]
                allow[qi, ki] = order(kk, kv) < 2 * k_frame - 1 and not (kk == "F" and kv in seq.dropped)
                continue
            if qk == "N":
                k_frame = seq.targets[qv]
                if kk == "P" and kv == k_frame and qv in null_of:
                    continue  # replaced by its null prompt
                if kk == "P" and kv != k_frame and own_prompt_only:
                    continue
                visible = order(kk, kv) < 2 * k_frame
                required = kk == "F" and kv == seq.sources[k_frame - 1]
                allow[qi, ki] = visible and (required or not (kk == "F" and kv in seq.dropped))
                continue
            # Clean blocks: block causal, dropped frames hidden.
            allow[qi, ki] = order(kk, kv) < order(qk, qv) and not (kk == "F" and kv in seq.dropped)
    del kinds, ids
    return allow[block_index][:, block_index]


def pack_training(model: VincieTransformer, sampler, sequences: list[TrainingSequence]) -> PackedTraining:
    """Pack several sessions for one block-causal training forward."""
    patch = model.config.patch_size
    timesteps = [torch.zeros(1)]
    vids, shapes, txts, txt_lens, positions, masks, ids, loss_rows, velocities = [], [], [], [], [], [], [], [], []
    xts, x0s, srcs, row_t, exact = [], [], [], [], []
    row = 0
    for seq in sequences:
        built = build_training_sequence(seq, sampler, patch, model.config.prompt_position,
                                        model.config.target_prompts)
        t_frames, h, w, _ = built["vid"].shape
        per_frame_tokens = (h // patch[1]) * (w // patch[2])
        vids.append(built["vid"].reshape(-1, built["vid"].shape[-1]))
        shapes.append([t_frames, h, w])
        txts.append(built["txt"])
        txt_lens.append([built["txt"].shape[0]])
        positions.append(built["positions"])
        masks.append(built["mask"])
        base = sum(len(t) for t in timesteps)
        frame_ids = [0] * built["n_clean"] + [base + j for j in range(len(seq.targets))]
        ids.append(torch.tensor(frame_ids).repeat_interleave(per_frame_tokens))
        timesteps.append(seq.timesteps.float().reshape(-1))
        n_clean_rows = built["n_clean"] * h * w
        loss_rows.append(torch.arange(row + n_clean_rows, row + t_frames * h * w))
        c = built["velocity"].shape[-1]
        velocities.append(built["velocity"].reshape(-1, c))
        xts.append(built["x_t"].reshape(-1, c))
        x0s.append(built["x0"].reshape(-1, c))
        srcs.append(built["source"].reshape(-1, c))
        exact.append(built["exact_source"].reshape(-1, c))
        row_t.append(seq.timesteps.float().reshape(-1).repeat_interleave(h * w))
        row += t_frames * h * w
    return PackedTraining(torch.cat(vids), torch.tensor(shapes), torch.cat(txts), torch.tensor(txt_lens),
                          torch.cat(timesteps), torch.cat(ids), positions, masks, torch.cat(loss_rows),
                          torch.cat(velocities), torch.cat(xts), torch.cat(x0s), torch.cat(srcs), torch.cat(row_t),
                          torch.cat(exact))


def training_velocity(model: VincieTransformer, packed: PackedTraining, forward=None) -> torch.Tensor:
    """Predicted velocity on the noisy target rows of a packed batch.

    ``forward`` is the callable to run (e.g. the DDP-wrapped model); ``model`` provides the layout.
    """
    device = packed.vid.device
    layout = model.layout(packed.vid_shape, packed.txt_shape, attn_masks=[m.to(device) for m in packed.masks],
                          positions=[(a.to(device), b.to(device)) for a, b in packed.positions], device=device)
    out = (forward or model)(packed.vid, packed.vid_shape, packed.txt, packed.txt_shape, packed.timesteps.to(device),
                             layout=layout, vid_timestep_ids=packed.vid_timestep_ids.to(device))
    return out[packed.loss_rows.to(device)]


# ----------------------------------------------------------------------------------------------
# Inference: the clean history as a KV cache, carried from turn to turn
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CachedHistory:
    """Clean-history cache of a session: one KV chunk per block F0, P1, F1, P2, ...

    Immutable: extending returns a new value sharing the old tensors, so session copies are free.
    """

    cache: KVCache
    prompt_lengths: tuple[int, ...] = ()  # text tokens of each cached prompt
    frames: int = 0

    @property
    def text_cursor(self) -> int:
        return sum(self.prompt_lengths)

    def truncated(self, frames: int) -> "CachedHistory":
        """Keep frames F0..F_{frames-1} and the prompts between them."""
        if frames >= self.frames:
            return self
        prompts = max(frames - 1, 0)
        return CachedHistory(self.cache.truncated(frames + prompts), self.prompt_lengths[:prompts], frames)


def empty_history(model: VincieTransformer) -> CachedHistory:
    return CachedHistory(KVCache(len(model.blocks)))


def _run_block(model: VincieTransformer, prefixes: list[KVCache], vid: list[torch.Tensor | None],
               txt: list[torch.Tensor | None], positions: list[tuple[torch.Tensor, torch.Tensor]],
               t: torch.Tensor, store: bool) -> tuple[torch.Tensor, list[KVCache] | None]:
    """One forward of a block per sample (a frame or a prompt), attending to its cached prefix."""
    device = t.device
    ref = next(x for x in vid + txt if x is not None)
    c_in, c_txt = model.config.vid_in_channels, model.config.txt_in_dim
    shapes, vids, txts, lens = [], [], [], []
    for v, tx in zip(vid, txt):
        if v is not None:
            vids.append(v.reshape(-1, c_in))
            shapes.append(list(v.shape[:3]))
        else:
            shapes.append([0, 2, 2])
        txts.append(tx if tx is not None else ref.new_zeros(0, c_txt))
        lens.append([txts[-1].shape[0]])
    vid_shape, txt_shape = torch.tensor(shapes), torch.tensor(lens)
    layout = model.layout(vid_shape, txt_shape, positions=positions, device=device, kv_prefix=prefixes, store_kv=store)
    vid_all = torch.cat(vids) if vids else ref.new_zeros(0, c_in)
    out = model(vid_all, vid_shape, torch.cat(txts), txt_shape, t.expand(len(vid)).to(device), layout=layout)
    return out, layout.kv_out


@torch.no_grad()
def extend_history(model: VincieTransformer, history: CachedHistory, *, frame: torch.Tensor | None = None,
                   prompt: torch.Tensor | None = None) -> CachedHistory:
    """Append one clean frame (h, w, C) latent or one fused prompt (m, D) to the cached history."""
    device = (frame if frame is not None else prompt).device
    zero = torch.zeros(1, device=device)
    if frame is not None:
        h, w, _ = frame.shape
        gh, gw = h // model.config.patch_size[1], w // model.config.patch_size[2]
        pos = (video_positions(1, gh, gw, offset=history.frames, device=device), torch.zeros(0, 3, device=device))
        _, new = _run_block(model, [history.cache], [_frame_channels(frame, None)[None]], [None], [pos], zero, True)
        return CachedHistory(history.cache.extended(new[0]), history.prompt_lengths, history.frames + 1)
    pos = (torch.zeros(0, 3, device=device), prompt_positions(model.config.prompt_position, prompt.shape[0],
                                                              history.frames, history.text_cursor, device))
    _, new = _run_block(model, [history.cache], [None], [prompt], [pos], zero, True)
    return CachedHistory(history.cache.extended(new[0]), history.prompt_lengths + (prompt.shape[0],), history.frames)


def prompt_cache(model: VincieTransformer, history: CachedHistory, prompts: list[torch.Tensor]) -> list[KVCache]:
    """KV chunks of candidate prompts for the next frame (e.g. the instruction and the null prompt)."""
    device = prompts[0].device
    pos = [(torch.zeros(0, 3, device=device), prompt_positions(model.config.prompt_position, p.shape[0],
                                                               history.frames, history.text_cursor, device))
           for p in prompts]
    _, new = _run_block(model, [history.cache] * len(prompts), [None] * len(prompts), list(prompts), pos,
                        torch.zeros(1, device=device), True)
    seen = history.cache
    if model.config.target_prompts == "own":
        # Chunks run F0, P1, F1, P2, F2, ...: the frame to generate keeps the frames and its own prompt.
        seen = seen.selected([i for i in range(seen.num_chunks) if i % 2 == 0])
    return [seen.extended(n) for n in new]


@torch.no_grad()
def denoise_next_frame(model: VincieTransformer, sampler, prefixes: list[KVCache], source: torch.Tensor,
                       noise: torch.Tensor, frame_index: int, *, steps: int | None = None, cfg_scale: float = 1.0,
                       callback=None, residual_base: torch.Tensor | None = None) -> torch.Tensor:
    """Sample frame ``frame_index`` (h, w, C) given cached prefixes [with instruction (, with null prompt)].

    With two prefixes the second is the unconditional branch of classifier-free guidance; both run as
    one packed forward per step. ``residual_base``: what a residual output is relative to, if
    not ``source`` (a blank frame for masks).
    """
    device = noise.device
    h, w, _ = noise.shape
    gh, gw = h // model.config.patch_size[1], w // model.config.patch_size[2]
    pos = (video_positions(1, gh, gw, offset=frame_index, device=device), torch.zeros(0, 3, device=device))
    timesteps = sampler.timesteps(steps).to(device)
    n = len(timesteps)
    guided = len(prefixes) > 1
    x = noise.float()
    for i, t in enumerate(timesteps):
        chans = _frame_channels(x, source)[None]
        scale = sampler.guidance_scale(i, n) if cfg_scale is None else (cfg_scale if (i + 1) / n <= sampler.config.cfg_partial else 1.0)
        use = prefixes if guided and scale != 1.0 else prefixes[:1]
        out, _ = _run_block(model, use, [chans] * len(use), [None] * len(use), [pos] * len(use), t, False)
        v = sampler.velocity(out.float().reshape(len(use), h, w, -1), x, source if residual_base is None else residual_base,
                             t, model.config.prediction)
        v = sampler.guide(v[0], v[1], scale) if len(use) > 1 else v[0]
        x = sampler.step(x, v, t, timesteps[i + 1] if i + 1 < n else None)
        if callback is not None:
            callback(i, n)
    return x
