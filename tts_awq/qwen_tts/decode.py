"""A batched talker decode loop without the per-frame ``generate`` calls of qwen-tts.

qwen-tts decodes one codec frame per talker step with two nested Hugging Face ``generate`` calls: the talker's,
and inside every talker step a fresh ``code_predictor.generate`` for codebooks 1-15. On a small talker nearly all
of a step's time is that machinery (generation-config checks, stopping criteria, cache set-up, per-call logits
processors), and it grows with the batch. :class:`FastDecode` replaces ``talker.generate`` for the duration of a
``with`` block by one loop that calls the same modules (``talker.model``, ``codec_head``, the code predictor's
model and heads, the same embeddings) with the same tensors, in the same order, applies the same
``transformers`` logits processors and draws from the global generator with the same ``torch.multinomial`` calls.
qwen-tts still builds the prompt (voice, ICL, language tags, padding).

Two ways to draw, one processing pipeline:

- ``seeds=None`` ("exact" engine): one ``torch.multinomial`` over the batch on the global generator and every
  row kept to the end, exactly like ``generate``: the codes are bit-identical to qwen-tts's own for the same seed
  and batch (tests compare them sampled and greedy, alone and batched), and therefore depend on the batch.
- ``seeds=[...]`` ("fast" engine): each item draws from its own generator seeded with its own seed, by the
  exponential race (``argmax p_i / E_i`` with ``E_i ~ Exp(1)``: exactly the categorical distribution ``p``), and
  an item leaves the batch (its rows, cache and generator) when it emits EOS. An item's codes then do not depend
  on which items share its batch or on the batch size (up to float rounding of padded, differently shaped
  matmuls), and finished items cost nothing while the longest one runs on.

While active it can also record each item's talker input rows (prefill without padding, then one row per frame
until its first EOS): the rows :class:`tts_awq.qwen_tts.capture.TalkerCapture` records on the qwen-tts path.
Attention masks of padded batches are built by :mod:`tts_awq.qwen_tts.masks` (the same masks, without vmap).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from transformers import DynamicCache
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from tts_awq.qwen_tts.masks import fast_masks

#: The ``talker.generate`` keywords qwen-tts passes that the loop reads (anything else is refused, not ignored).
_KNOWN = {"inputs_embeds", "attention_mask", "trailing_text_hidden", "tts_pad_embed", "max_new_tokens",
          "min_new_tokens", "do_sample", "top_k", "top_p", "temperature", "subtalker_dosample", "subtalker_top_k",
          "subtalker_top_p", "subtalker_temperature", "eos_token_id", "repetition_penalty", "suppress_tokens",
          "output_hidden_states", "return_dict_in_generate"}


@dataclass(frozen=True)
class Sampler:
    """Hugging Face's sampling step for one model: logits processors, then softmax + a draw (or argmax).

    ``generators`` None: ``torch.multinomial`` on the global generator (what ``generate`` does); otherwise one
    generator per row, drawn by the exponential race."""

    processors: LogitsProcessorList
    do_sample: bool

    @classmethod
    def build(cls, do_sample: bool, temperature: float | None, top_k: int | None, top_p: float | None,
              head: list[Any] | None = None) -> Sampler:
        """``head`` processors first, then the warpers in the order ``generate`` applies them (sampling only)."""
        processors = LogitsProcessorList(head or [])
        if do_sample:
            if temperature is not None and temperature != 1.0:
                processors.append(TemperatureLogitsWarper(temperature))
            if top_k is not None and top_k != 0:
                processors.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
            if top_p is not None and top_p < 1.0:
                processors.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
        return cls(processors, do_sample)

    def __call__(self, history: torch.Tensor | None, logits: torch.Tensor,
                 generators: list[torch.Generator] | None = None) -> torch.Tensor:
        return self.draw(self.process(history, logits[:, -1, :].to(copy=True, dtype=torch.float32)), generators)

    def process(self, history: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor:
        # LogitsProcessorList.__call__ inspects every processor's signature on every call; these take two args
        for processor in self.processors:
            scores = processor(history, scores)
        return scores

    def draw(self, scores: torch.Tensor, generators: list[torch.Generator] | None) -> torch.Tensor:
        if not self.do_sample:
            return torch.argmax(scores, dim=-1)
        probs = torch.nn.functional.softmax(scores, dim=-1)
        if generators is None:
            return torch.multinomial(probs, num_samples=1).squeeze(1)
        return _race(probs, generators)


def _race(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One categorical draw per row from its own generator: ``argmax p_i / E_i`` with ``E_i = -log U_i ~ Exp(1)``
    i.i.d. (the exponential race; ``P(i wins) = p_i``). Every row draws one uniform per vocabulary entry, keyed by
    token id, so a row's draw depends only on its own probabilities and generator, and a last-bit change of a
    probability can flip it only at a near-tie of the race."""
    uniform = torch.empty_like(probs)
    for row, generator in enumerate(generators):
        uniform[row].uniform_(generator=generator)
    return torch.argmax(probs / -torch.log(uniform), dim=-1)


def _predictor_layers(model: Any, x: torch.Tensor, cache: DynamicCache, cache_position: torch.Tensor) -> torch.Tensor:
    """The code predictor's decoder stack on ``x`` at ``cache_position`` (every row unpadded, so the causal mask is
    SDPA's own ``is_causal`` and rows share positions): its layers and final norm, called directly rather than
    through ``model.forward``, whose per-call mask building and output bookkeeping cost more than the layers."""
    positions = cache_position.unsqueeze(0)
    if getattr(model, "has_sliding_layers", False):  # a sliding-window mask is not SDPA's is_causal: use forward
        mask = torch.ones((x.shape[0], int(cache_position[-1]) + 1), dtype=torch.long, device=x.device)
        return model(inputs_embeds=x, attention_mask=mask, position_ids=positions, past_key_values=cache,
                     use_cache=True, cache_position=cache_position).last_hidden_state
    embeddings = model.rotary_emb(x, positions)
    for layer in model.layers[: model.config.num_hidden_layers]:
        x = layer(x, attention_mask=None, position_ids=positions, past_key_values=cache, use_cache=True,
                  cache_position=cache_position, position_embeddings=embeddings)[0]
    return model.norm(x)


def _talker_sampler(kw: dict[str, Any], eos: int, device: torch.device) -> Sampler:
    """The talker's processors as ``generate`` builds them from qwen-tts's keywords (order included)."""
    head: list[Any] = []
    if kw.get("repetition_penalty") not in (None, 1.0):
        head.append(RepetitionPenaltyLogitsProcessor(penalty=kw["repetition_penalty"]))
    if kw.get("min_new_tokens"):
        head.append(MinNewTokensLengthLogitsProcessor(prompt_length_to_skip=0, min_new_tokens=kw["min_new_tokens"],
                                                      eos_token_id=eos, device=device))
    if kw.get("suppress_tokens"):
        head.append(SuppressTokensLogitsProcessor(kw["suppress_tokens"], device=device))
    return Sampler.build(kw.get("do_sample", True), kw.get("temperature"), kw.get("top_k"), kw.get("top_p"), head)


class _ItemSampler:
    """The talker's processors for rows with histories of different lengths (continuous batching): the
    repetition penalty per row on its own tokens, EOS masked on rows younger than ``min_new_tokens``, then the
    batch-wide suppression and warpers; same operations as :func:`_talker_sampler`, row by row where they read
    the history."""

    def __init__(self, kw: dict[str, Any], eos: int, device: torch.device) -> None:
        penalty = kw.get("repetition_penalty")
        self.penalty = None if penalty in (None, 1.0) else RepetitionPenaltyLogitsProcessor(penalty=penalty)
        self.min_new, self.eos = int(kw.get("min_new_tokens") or 0), eos
        suppress = [SuppressTokensLogitsProcessor(kw["suppress_tokens"], device=device)] if kw.get(
            "suppress_tokens") else []
        self.tail = Sampler.build(kw.get("do_sample", True), kw.get("temperature"), kw.get("top_k"),
                                  kw.get("top_p"), suppress)

    def __call__(self, histories: list[torch.Tensor], logits: torch.Tensor,
                 generators: list[torch.Generator]) -> torch.Tensor:
        scores = logits[:, -1, :].to(copy=True, dtype=torch.float32)
        for row, history in enumerate(histories):
            if self.penalty is not None and history.numel():
                scores[row : row + 1] = self.penalty(history[None], scores[row : row + 1])
            if history.numel() < self.min_new:
                scores[row, self.eos] = -float("inf")
        return self.tail.draw(self.tail.process(None, scores), generators)


class _Running:
    """The items decoding together: one talker KV cache whose rows are left-padded to a common width, the 2-D
    attention mask, each row's position offset (position = cache position + offset), last hidden state and
    logits, generator and token history. Items join with :meth:`admit` and leave with :meth:`retire`."""

    def __init__(self, talker: Any, device: torch.device) -> None:
        self.talker, self.device = talker, device
        self.cache: DynamicCache | None = None
        self.items: list[int] = []
        self.generators: list[torch.Generator] = []
        self.histories: list[torch.Tensor] = []
        self.mask = self.offsets = self.hidden = self.logits = torch.zeros(0)

    @property
    def size(self) -> int:
        return len(self.items)

    def admit(self, item: int, prompt: torch.Tensor, generator: torch.Generator) -> None:
        """Prefill ``prompt`` [L, H] alone (positions 0..L-1) and add it as a row, left-padding whichever side
        is shorter so every row ends at the same cache position."""
        length = prompt.shape[0]
        cache = DynamicCache(config=self.talker.config)
        positions = torch.arange(length, device=self.device).view(1, 1, -1).expand(3, 1, -1)
        out = self.talker.model(inputs_embeds=prompt[None], attention_mask=torch.ones((1, length), dtype=torch.long,
                                device=self.device), position_ids=positions, past_key_values=cache,
                                use_cache=True, cache_position=torch.arange(length, device=self.device))
        hidden = out.last_hidden_state[:, -1:]
        logits = self.talker.codec_head(hidden)
        mask = torch.ones((1, length), dtype=torch.long, device=self.device)
        offset = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        if self.cache is None:
            self.cache, self.mask, self.offsets, self.hidden, self.logits = cache, mask, offset, hidden, logits
        else:
            width = max(self.mask.shape[1], length)
            self._left_pad(width - self.mask.shape[1])
            _left_pad_cache(cache, width - length)
            mask = torch.nn.functional.pad(mask, (width - length, 0))
            for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
                mine.keys, mine.values = torch.cat([mine.keys, theirs.keys]), torch.cat([mine.values, theirs.values])
            self.mask = torch.cat([self.mask, mask])
            self.offsets = torch.cat([self.offsets, offset - (width - length)])
            self.hidden, self.logits = torch.cat([self.hidden, hidden]), torch.cat([self.logits, logits])
        self.items.append(item)
        self.generators.append(generator)
        self.histories.append(torch.zeros(0, dtype=torch.long, device=self.device))

    def _left_pad(self, pad: int) -> None:
        if pad:
            _left_pad_cache(self.cache, pad)
            self.mask = torch.nn.functional.pad(self.mask, (pad, 0))
            self.offsets = self.offsets - pad

    def advance(self, token: torch.Tensor, eos: int, limit: int) -> list[int]:
        """Append each row's new token; the rows that stopped (EOS) or reached ``limit`` tokens."""
        done = []
        for row, value in enumerate(token.tolist()):
            self.histories[row] = torch.cat([self.histories[row], token[row : row + 1]])
            if value == eos or self.histories[row].numel() >= limit:
                done.append(row)
        return done

    def retire(self, rows: list[int]) -> None:
        if not rows:
            return
        keep = [r for r in range(self.size) if r not in rows]
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        if not keep:
            self.cache, self.items, self.generators, self.histories = None, [], [], []
            return
        self.cache.batch_select_indices(index)
        self.mask, self.offsets = self.mask[index], self.offsets[index]
        self.hidden, self.logits = self.hidden[index], self.logits[index]
        self.items = [self.items[r] for r in keep]
        self.generators = [self.generators[r] for r in keep]
        self.histories = [self.histories[r] for r in keep]

    def last_tokens(self) -> torch.Tensor:
        return torch.stack([h[-1] for h in self.histories])

    def text_rows(self, trailing: torch.Tensor, tts_pad: torch.Tensor) -> torch.Tensor:
        """Each row's text input for the token it feeds now (its step j: trailing text j, then tts_pad)."""
        rows = []
        for item, history in zip(self.items, self.histories, strict=True):
            step = history.numel() - 1
            rows.append(trailing[item, step] if step < trailing.shape[1] else tts_pad.reshape(-1))
        return torch.stack(rows).unsqueeze(1)

    def step(self, x: torch.Tensor) -> None:
        """One talker forward of every row's next input row ``x`` [B, 1, H]."""
        self.hidden, self.logits, self.mask = _talker_step(self.talker, x, self.mask, self.offsets, self.cache)


def _talker_step(talker: Any, x: torch.Tensor, mask: torch.Tensor, offsets: torch.Tensor,
                 cache: DynamicCache) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decode step of the talker for input rows ``x`` [B, 1, H] at the next cache position, each row at
    position cache position + its offset (the talker's rope index for left-padded rows, as its forward computes
    it): (hidden [B, 1, H], logits, the mask grown by one column)."""
    mask = torch.cat([mask, mask.new_ones((x.shape[0], 1))], dim=-1)
    cache_position = torch.tensor([mask.shape[1] - 1], device=x.device)
    positions = (torch.arange(1, device=x.device).view(1, -1).expand(x.shape[0], -1)
                 .add(cache_position[0] + offsets).unsqueeze(0).expand(3, -1, -1))
    out = talker.model(input_ids=None, attention_mask=mask, position_ids=positions, past_key_values=cache,
                       inputs_embeds=x, use_cache=True, cache_position=cache_position)
    return out.last_hidden_state, talker.codec_head(out.last_hidden_state), mask


def _left_pad_cache(cache: DynamicCache, pad: int) -> None:
    """Prepend ``pad`` zero key/value positions to every layer (masked out by the attention mask)."""
    if pad:
        for layer in cache.layers:
            layer.keys = torch.nn.functional.pad(layer.keys, (0, 0, pad, 0))
            layer.values = torch.nn.functional.pad(layer.values, (0, 0, pad, 0))


def _as_generate_output(frames: list[list[torch.Tensor]], groups: int, eos: int,
                        embeds: torch.Tensor) -> SimpleNamespace:
    """What qwen-tts reads from ``talker.generate``: per step a (hidden states, codes [N, groups]) pair; an
    item's rows after its last frame carry EOS in codebook 0, which is where qwen-tts cuts it."""
    items, steps = len(frames), max((len(f) for f in frames), default=0)
    hidden = embeds.new_zeros((items, 1, embeds.shape[2]))
    out: list[tuple[tuple[torch.Tensor], torch.Tensor | None]] = [((hidden,), None)]
    for j in range(max(steps, 1)):
        codes = torch.full((items, groups), eos, dtype=torch.long, device=embeds.device)
        for i, f in enumerate(frames):
            if j < len(f):
                codes[i] = f[j]
        out.append(((hidden,), codes))
    return SimpleNamespace(sequences=None, hidden_states=tuple(out))


class FastDecode:
    """``with FastDecode(tts.model.talker, seeds) as fast: tts.model.generate(...)``: inside the block the
    talker's ``generate`` is :meth:`decode`; ``fast.rows`` then holds each item's talker input rows (when
    ``record_rows``). ``seeds`` (one per batch item) selects per-item draws, with at most ``slots`` items
    decoding at a time (None: all); ``seeds=None`` reproduces ``generate``."""

    def __init__(self, talker: torch.nn.Module, seeds: list[int] | None = None, record_rows: bool = False,
                 slots: int | None = None) -> None:
        self.talker = talker
        self.seeds = seeds
        self.slots = slots
        self.record_rows = record_rows
        self.rows: list[torch.Tensor] = []
        self.prefill: list[int] = []

    def __enter__(self) -> FastDecode:
        self._masks = contextlib.ExitStack()
        self._masks.enter_context(fast_masks(self.talker))
        self.talker.generate = self.decode  # instance attribute shadows GenerationMixin.generate
        return self

    def __exit__(self, *exc: object) -> None:
        del self.talker.generate
        self._masks.close()

    @torch.no_grad()
    def decode(self, **kw: Any) -> SimpleNamespace:
        unknown = set(kw) - _KNOWN
        if unknown:
            raise TypeError(f"FastDecode does not implement talker.generate({', '.join(sorted(unknown))}=...); "
                            "this qwen-tts version passes options the loop would silently ignore")
        batch = kw["inputs_embeds"].shape[0]
        if self.seeds is not None and len(self.seeds) != batch:
            raise ValueError(f"FastDecode got {len(self.seeds)} seeds for a batch of {batch}")
        eos = int(kw["eos_token_id"])
        pad = self.talker.generation_config.pad_token_id
        pad = eos if pad is None else int(pad)  # generate's rule for open-end generation
        sub = Sampler.build(kw.get("subtalker_dosample", True), kw.get("subtalker_temperature"),
                            kw.get("subtalker_top_k"), kw.get("subtalker_top_p"))
        if self.seeds is None:
            return self._exact(kw, eos, pad, sub)
        return self._slots(kw, eos, pad, sub)

    def _exact(self, kw: dict[str, Any], eos: int, pad: int, sub: Sampler) -> SimpleNamespace:
        """``generate``'s own schedule: the whole batch prefilled padded, every row kept until all stopped."""
        talker = self.talker
        embeds, mask = kw["inputs_embeds"], kw["attention_mask"]
        batch, length, _ = embeds.shape
        device, limit = embeds.device, int(kw["max_new_tokens"])
        sample = _talker_sampler(kw, eos, device)
        trailing, tts_pad = kw["trailing_text_hidden"], kw["tts_pad_embed"]
        cache = DynamicCache(config=talker.config)
        position_ids, rope_deltas = talker.get_rope_index(mask)
        rope_deltas = rope_deltas - (1 - mask).sum(dim=-1).unsqueeze(1)
        out = talker.model(input_ids=None, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                           inputs_embeds=embeds, use_cache=True, cache_position=torch.arange(length, device=device))
        hidden = out.last_hidden_state
        steps: list[tuple[tuple[torch.Tensor], torch.Tensor | None]] = [((hidden,), None)]
        tokens = torch.zeros((batch, 0), dtype=torch.long, device=device)
        unfinished = torch.ones(batch, dtype=torch.long, device=device)
        fed: list[torch.Tensor] = []
        logits = talker.codec_head(hidden)
        for step in range(limit):
            token = sample(tokens, logits)
            token = token * unfinished + pad * (1 - unfinished)
            tokens = torch.cat([tokens, token[:, None]], dim=-1)
            unfinished = unfinished & (token != eos).long()
            if tokens.shape[1] >= limit or int(unfinished.max()) == 0:
                break
            codes, x = self._next_input(hidden[:, -1:, :], token[:, None], sub, None)
            x = x + (trailing[:, step].unsqueeze(1) if step < trailing.shape[1] else tts_pad)
            fed.append(x)
            hidden, logits, mask = _talker_step(talker, x, mask, rope_deltas, cache)
            steps.append(((hidden,), codes))
        if self.record_rows:
            decoded = torch.cat(fed, dim=1) if fed else embeds[:, :0]
            is_eos = tokens == eos
            frames = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), torch.tensor(decoded.shape[1]))
            self._record([embeds[b][kw["attention_mask"][b].bool()] for b in range(batch)],
                         [decoded[b, : int(frames[b])] for b in range(batch)])
        return SimpleNamespace(sequences=tokens, hidden_states=tuple(steps))

    def _slots(self, kw: dict[str, Any], eos: int, pad: int, sub: Sampler) -> SimpleNamespace:
        """Per-item draws with continuous batching: at most ``slots`` items decode together; an item is prefilled
        alone (no padding) when a slot frees and joins the running cache left-padded; it leaves at its EOS or at
        the token limit. Each item's codes depend only on its own inputs and generator."""
        talker = self.talker
        embeds, mask, trailing = kw["inputs_embeds"], kw["attention_mask"], kw["trailing_text_hidden"]
        items, device, limit = embeds.shape[0], embeds.device, int(kw["max_new_tokens"])
        prompts = [embeds[i][mask[i].bool()] for i in range(items)]
        sample = _ItemSampler(kw, eos, device)
        running = _Running(talker, device)
        frames: list[list[torch.Tensor]] = [[] for _ in range(items)]
        fed: list[list[torch.Tensor]] = [[] for _ in range(items)]
        pending = list(range(items))
        while pending or running.size:
            while pending and running.size < (self.slots or items):
                item = pending.pop(0)
                running.admit(item, prompts[item], torch.Generator(device=device).manual_seed(int(self.seeds[item])))
            token = sample(running.histories, running.logits, running.generators)
            running.retire(running.advance(token, eos, limit))
            if not running.size:
                continue
            codes, x = self._next_input(running.hidden, running.last_tokens()[:, None], sub, running.generators)
            x = x + running.text_rows(trailing, kw["tts_pad_embed"])
            for row, item in enumerate(running.items):
                frames[item].append(codes[row])
                fed[item].append(x[row, 0])
            running.step(x)
        if self.record_rows:
            self._record(prompts, [torch.stack(f) if f else prompts[i][:0] for i, f in enumerate(fed)])
        return _as_generate_output(frames, talker.config.num_code_groups, eos, embeds)

    def _next_input(self, past_hidden: torch.Tensor, token: torch.Tensor, sample: Sampler,
                    generators: list[torch.Generator] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Codebooks 1-15 for ``token`` (the code predictor's own decode, as its ``generate`` runs it) and the
        talker's next input row: the sum of all 16 codebook embeddings (text is added by the caller)."""
        talker = self.talker
        predictor = talker.code_predictor
        first = talker.get_input_embeddings()(token)
        x = torch.cat((past_hidden, first), dim=1)
        batch = x.shape[0]
        cache = DynamicCache(config=predictor.config)
        codes = torch.zeros((batch, 0), dtype=torch.long, device=x.device)
        groups = talker.config.num_code_groups - 1
        past = 0
        for step in range(groups):
            length = x.shape[1]
            hidden = _predictor_layers(predictor.model, predictor.small_to_mtp_projection(x), cache,
                                       torch.arange(past, past + length, device=x.device))
            past += length
            code = sample(codes, predictor.lm_head[step](hidden), generators)
            codes = torch.cat([codes, code[:, None]], dim=-1)
            if step + 1 < groups:
                x = predictor.get_input_embeddings()[step](code[:, None])
        embeds = [first] + [predictor.get_input_embeddings()[i](codes[..., i:i + 1]) for i in range(groups)]
        return torch.cat((token, codes), dim=-1), torch.cat(embeds, dim=1).sum(1, keepdim=True)

    def _record(self, prefills: list[torch.Tensor], decoded: list[torch.Tensor]) -> None:
        """Per item: its unpadded prefill rows, then the rows fed before its first EOS (one per kept frame)."""
        self.rows = [torch.cat([p, d]).detach().float().cpu() for p, d in zip(prefills, decoded, strict=True)]
        self.prefill = [int(p.shape[0]) for p in prefills]
