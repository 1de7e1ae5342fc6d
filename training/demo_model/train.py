"""Train the demo model: the official Qwen3-ASR classes at a small size, on the clips of data.py, on a CPU.

The forward pass is the one the runtime computes: log-mel cut into 100-frame chunks through the conv frontend,
the transformer over block-diagonal 8 s windows (104 rows; the devkit.torch_export Frontend/Backend modules, which
export to exactly these graphs), and the audio rows placed between the official prompt's head and tail:

    <|im_start|>system\\n<|im_end|>\\n<|im_start|>user\\n<|audio_start|>[memory rows][rows]<|audio_end|><|im_end|>\\n
    <|im_start|>assistant\\n language English<asr_text>TEXT<|im_end|>

Part of the samples carry a previous-utterance memory as pipeline.Transcriber builds it: the previous audio's
rows (encoded separately) before the current rows, the language header and the previous text minus its last
0-5 tokens in the answer; the model then re-generates those tokens and continues with the new text. A sample
with memory rows but no committed text states the language itself. No-speech clips are answered
`language None<asr_text>`. The cross-entropy covers the answer tokens only. An auxiliary CTC loss on the audio
rows against the tied embedding matrix (blank = <|audio_pad|>) speeds up learning the alignment; it has no
parameters of its own, so nothing but the official model is saved.

Run from the repository root: python3 -m training.demo_model.train --data DIR --work DIR --steps N
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

import devkit.random_checkpoint as random_checkpoint
from devkit.official import official_classes
from devkit.torch_export import Backend, Frontend
from qasr_live.engine.encoder import CHUNK_FRAMES, WINDOW_ROWS
from qasr_live.engine.features import feature_output_length
from qasr_live.engine.prompt import ASR_TEXT, prompt_head, prompt_tail

SEED = 20240604
SPEC = random_checkpoint.RandomModelSpec(
    audio_d_model=128,
    audio_layers=6,
    audio_heads=4,
    audio_ffn=512,
    downsample_hidden=32,
    text_hidden=128,
    text_layers=3,
    text_heads=4,
    text_kv_heads=2,
    head_dim=32,
    text_ffn=512,
    bpe_vocab=1024,
    tie_word_embeddings=True,
    init_std=0.02,
    seed=SEED,
)
ROLLBACK = 5  # pipeline.SEGMENT_ROLLBACK_TOKENS: the tokens a non-final segment leaves uncommitted
CTC_WEIGHT = 0.4
WEIGHT_FILES = ("model.safetensors", "config.json")


def tokenizer_corpus(texts: list[str]) -> str:
    header = "language English<asr_text> language None<asr_text> language Chinese<asr_text>"
    return "\n".join([header, *sorted(set(texts))])


def build_initial_checkpoint(path: Path, texts: list[str], spec: random_checkpoint.RandomModelSpec = SPEC) -> None:
    """The official config, processor and chat template with random weights (random_checkpoint), with the BPE
    trained on the grammar's sentences instead of its small default corpus."""
    original = random_checkpoint.build_tokenizer
    random_checkpoint.build_tokenizer = partial(original, corpus=tokenizer_corpus(texts))
    try:
        random_checkpoint.build_random_checkpoint(path, spec)
    finally:
        random_checkpoint.build_tokenizer = original


class Clips:
    """The features and texts of data.py, with the token ids every sample needs."""

    def __init__(self, data: Path, tok) -> None:
        self.index = json.loads((data / "index.json").read_text())
        total = sum(c["frames"] for c in self.index)
        self.mel = np.memmap(data / "mel.f16", dtype=np.float16, mode="r", shape=(total, 128))
        self.speech = np.array([i for i, c in enumerate(self.index) if c["text"]])
        self.silent = np.array([i for i, c in enumerate(self.index) if not c["text"]])

        def ids(s: str) -> list[int]:
            return tok(s, add_special_tokens=False)["input_ids"]

        self.ids = ids
        self.head = ids(prompt_head(""))
        self.tail = ids(prompt_tail(None))
        self.tail_en = ids(prompt_tail("English"))
        self.header_en = ids(f"language English{ASR_TEXT}")
        self.header_none = ids(f"language None{ASR_TEXT}")
        assert self.tail_en == self.tail + self.header_en, "the language header must tokenize on its own"
        self.im_end = tok.convert_tokens_to_ids("<|im_end|>")
        self.blank = tok.convert_tokens_to_ids("<|audio_pad|>")
        self.text_vocab = min(tok.all_special_ids)  # the BPE's own tokens come first, the specials after them

    def features(self, clips: list[int]) -> np.ndarray:
        return np.concatenate(
            [self.mel[self.index[i]["offset"] : self.index[i]["offset"] + self.index[i]["frames"]] for i in clips]
        ).astype(np.float32)

    def text(self, clips: list[int]) -> str:
        return " ".join(self.index[i]["text"] for i in clips if self.index[i]["text"])


@dataclass(frozen=True)
class Mix:
    """The sample mix: fractions of the cases below, and the sizes of the long samples."""

    single: float = 0.45
    several: float = 0.13
    long: float = 0.05  # the rest has memory
    long_memory: tuple[tuple[int, int], ...] = ((0, 5),)  # clips, [low, high) in one of the ranges, picked at random
    long_current: tuple[tuple[int, int], ...] = ((3, 7),)
    streaming: float = 0.0  # of the memory samples: committed text that reaches into the current audio


MAIN = Mix()


def make_sample(clips: Clips, rng: np.random.Generator, mix: Mix = MAIN) -> dict:
    """One training sample: pieces of audio (memory, current) and the token layout around them."""

    def count(ranges: tuple[tuple[int, int], ...]) -> int:
        # one range draws no number to pick it, so recipes written before ranges could be several stay bit-exact
        low, high = ranges[int(rng.integers(len(ranges)))] if len(ranges) > 1 else ranges[0]
        return int(rng.integers(low, high))

    def pick(n: int, silent_p: float = 0.0) -> list[int]:
        if len(clips.silent) and rng.random() < silent_p:
            return [int(rng.choice(clips.silent))]
        return [int(i) for i in rng.choice(clips.speech, size=n)]

    r = rng.random()
    if r < mix.single:  # one clip, no memory (6 % of the clips have no speech)
        memory, current = [], [int(rng.integers(len(clips.index)))]
    elif r < mix.single + mix.several:  # several sentences, no memory
        memory, current = [], pick(int(rng.integers(2, 4)), 0.1)
    elif r < 1.0 - mix.long:  # memory of a previous utterance
        memory, current = pick(int(rng.integers(1, 3))), pick(int(rng.integers(1, 3)), 0.12)
    else:  # long: towards the 30 s segments of offline transcription
        memory, current = pick(count(mix.long_memory)), pick(count(mix.long_current))
    cur_text = clips.text(current)
    if not memory:
        answer = (clips.header_en + clips.ids(cur_text)) if cur_text else clips.header_none
        return {"pieces": [current], "tail": clips.tail, "answer": [*answer, clips.im_end], "texts": [cur_text]}
    mem_text = clips.text(memory)
    joined = clips.ids(mem_text + (" " + cur_text if cur_text else ""))
    mem_ids = clips.ids(mem_text)
    assert joined[: len(mem_ids)] == mem_ids
    if mix.streaming and rng.random() < mix.streaming:
        keep = int(rng.integers(len(mem_ids), len(joined) + 1))
    else:
        k = 0 if rng.random() < 0.5 else int(rng.integers(1, ROLLBACK + 1))
        keep = max(0, len(mem_ids) - k)
    if keep == 0:  # memory rows, nothing committed: the model states the language itself
        return {
            "pieces": [memory, current],
            "tail": clips.tail,
            "answer": clips.header_en + joined + [clips.im_end],
            "texts": [mem_text, cur_text],
        }
    return {
        "pieces": [memory, current],
        "tail": clips.tail_en + joined[:keep],
        "answer": [*joined[keep:], clips.im_end],
        "texts": [mem_text, cur_text],
    }


def spec_augment(mel: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """(frames, 128): two time masks and two frequency masks, with probability p."""
    if rng.random() < p:
        mel = mel.copy()
        fill = mel.mean()
        for _ in range(2):
            w = int(rng.integers(0, 16))
            s = int(rng.integers(0, max(1, len(mel) - w)))
            mel[s : s + w] = fill
            w = int(rng.integers(0, 14))
            s = int(rng.integers(0, 128 - w))
            mel[:, s : s + w] = fill
    return mel


def encode(frontend, backend, mels: list[np.ndarray]) -> list[torch.Tensor]:
    """Rows of each mel (frames, 128), exactly as the runtime's AudioEncoder.encode computes them, batched."""
    chunks, counts = [], []
    for mel in mels:
        n = -(-len(mel) // CHUNK_FRAMES)
        padded = np.zeros((n * CHUNK_FRAMES, 128), dtype=np.float32)
        padded[: len(mel)] = mel
        chunks.append(padded.reshape(n, CHUNK_FRAMES, 128).transpose(0, 2, 1))
        counts.append(n)
    rows = frontend(torch.from_numpy(np.concatenate(chunks)))  # (chunks, 13, d)
    d = rows.shape[-1]
    per_piece, windows, start = [], [], 0
    for mel, n in zip(mels, counts, strict=True):
        r = rows[start : start + n].reshape(-1, d)[: feature_output_length(len(mel))]
        start += n
        per_piece.append(len(r))
        for a in range(0, len(r), WINDOW_ROWS):
            windows.append(r[a : a + WINDOW_ROWS])
    width = max(len(w) for w in windows)
    batch = torch.zeros(len(windows), width, d)
    mask = torch.zeros(len(windows), 1, width, width)
    for j, w in enumerate(windows):
        batch[j, : len(w)] = w
        mask[j, :, :, len(w) :] = -1e9
    out = backend(batch, mask)
    result, j = [], 0
    for n in per_piece:
        parts = []
        while sum(len(p) for p in parts) < n:
            take = min(WINDOW_ROWS, n - sum(len(p) for p in parts))
            parts.append(out[j, :take])
            j += 1
        result.append(torch.cat(parts))
    return result


def encode_context(frontend, backend, mels: list[np.ndarray], context: list[bool]) -> list[torch.Tensor]:
    """encode(), with the pieces marked as context (a previous utterance) encoded without gradients."""
    learn = encode(frontend, backend, [m for m, c in zip(mels, context, strict=True) if not c])
    with torch.no_grad():
        fixed = encode(frontend, backend, [m for m, c in zip(mels, context, strict=True) if c]) if any(context) else []
    pieces = {False: iter(learn), True: iter(fixed)}
    return [next(pieces[c]) for c in context]


def sample_length(s: dict, clips: Clips) -> int:
    frames = sum(clips.index[i]["frames"] for p in s["pieces"] for i in p)
    return len(clips.head) + frames * 13 // 100 + len(s["tail"]) + len(s["answer"])


def batches(clips: Clips, rng: np.random.Generator, budget: int, mix: Mix, pool: int = 384):
    """Samples grouped by length into batches of at most `budget` padded positions."""
    while True:
        samples = [make_sample(clips, rng, mix) for _ in range(pool)]
        lengths = [sample_length(s, clips) for s in samples]
        order = np.argsort(lengths)
        groups, cur, longest = [], [], 0
        for i in order:
            longest_new = max(longest, lengths[i])
            if cur and longest_new * (len(cur) + 1) > budget:
                groups.append(cur)
                cur, longest_new = [], lengths[i]
            cur.append(samples[i])
            longest = longest_new
        if cur:
            groups.append(cur)
        for g in rng.permutation(len(groups)):
            yield groups[g]


def step_loss(
    model,
    frontend,
    backend,
    clips: Clips,
    batch: list[dict],
    rng,
    ctc_weight: float = CTC_WEIGHT,
    specaug: float = 0.5,
    token_dropout: float = 0.0,
    memory_grad: bool = True,
) -> tuple[torch.Tensor, float, float]:
    thinker = model.thinker
    embed = thinker.model.embed_tokens
    mels, ctc_targets, context = [], [], []
    for s in batch:
        for j, (piece, text) in enumerate(zip(s["pieces"], s["texts"], strict=True)):
            mels.append(spec_augment(clips.features(piece), rng, specaug))
            ctc_targets.append(clips.ids(text) if text else [])
            context.append(not memory_grad and j < len(s["pieces"]) - 1)
    rows = encode_context(frontend, backend, mels, context)

    # CTC of every piece's rows against the embedding matrix.
    logits = [F.log_softmax(r @ embed.weight.T, dim=-1) for r in rows]
    lp = torch.nn.utils.rnn.pad_sequence(logits)  # (time, pieces, vocab); one copy, not one per piece
    targets = torch.tensor([t for tt in ctc_targets for t in tt] or [0], dtype=torch.long)
    ctc = F.ctc_loss(
        lp,
        targets[: sum(len(t) for t in ctc_targets)],
        torch.tensor([len(r) for r in rows]),
        torch.tensor([len(t) for t in ctc_targets]),
        blank=clips.blank,
        reduction="sum",
        zero_infinity=True,
    ) / max(1, sum(len(t) for t in ctc_targets))

    seqs, labels, k = [], [], 0
    for s in batch:
        n = len(s["pieces"])
        audio = torch.cat(rows[k : k + n])
        k += n
        before = embed(torch.tensor(clips.head))
        after_ids = torch.tensor(s["tail"] + s["answer"][:-1])
        if token_dropout:  # what the decoder reads after the user turn (header, text), not the prompt: listen
            text = torch.arange(len(after_ids)) >= len(clips.tail)
            hit = text & (torch.rand(len(after_ids)) < token_dropout)
            after_ids[hit] = torch.randint(0, clips.text_vocab, (int(hit.sum()),))
        after = embed(after_ids)
        seqs.append(torch.cat([before, audio, after]))
        lab = torch.full((len(seqs[-1]),), -100, dtype=torch.long)
        n_ans = len(s["answer"])
        lab[-n_ans:] = torch.tensor(s["answer"])
        labels.append(lab)
    x = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True)
    y = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=-100)
    hidden = thinker.model(inputs_embeds=x, use_cache=False).last_hidden_state
    sel = y != -100
    ce = F.cross_entropy(thinker.lm_head(hidden[sel]), y[sel])
    return ce + ctc_weight * ctc, ce.item(), ctc.item()


def save(model, init: Path, dst: Path) -> None:
    tmp = dst.parent / (dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    for f in init.iterdir():
        if f.name not in WEIGHT_FILES and f.is_file():
            shutil.copy2(f, tmp / f.name)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def _mix_value(item: str) -> tuple[str, float | tuple[tuple[int, int], ...]]:
    """`name=0.2` (a fraction), `name=3:7` (a clip-count range [low, high)) or `name=0:3+5:11` (either range)."""
    name, value = item.split("=")
    if ":" not in value:
        return name, float(value)
    return name, tuple(tuple(int(v) for v in r.split(":")) for r in value.split("+"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=2200)
    parser.add_argument("--budget", type=int, default=5000, help="padded decoder positions per batch")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--save-every", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stop-after", type=int, help="stop (with a checkpoint) after this many steps")
    parser.add_argument("--init-from", type=Path, help="start from this checkpoint's weights (the second phase)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument(
        "--conv-width",
        type=int,
        help=f"channels of the audio tower's convolutions (downsample_hidden, default {SPEC.downsample_hidden});"
        " only for a model built from scratch",
    )
    parser.add_argument("--ctc-weight", type=float, default=CTC_WEIGHT)
    parser.add_argument("--specaug", type=float, default=0.5, help="probability of SpecAugment masks per piece")
    parser.add_argument(
        "--token-dropout",
        type=float,
        default=0.0,
        help="fraction of the text tokens the decoder reads replaced by random ones (less running on the grammar)",
    )
    parser.add_argument(
        "--no-memory-grad",
        action="store_true",
        help="encode the previous-utterance pieces without gradients (context, as at run time; their CTC loss is still"
        " reported): about 10 %% cheaper steps with 35 %% long samples, but the encoder learns from less audio",
    )
    parser.add_argument(
        "--mix",
        default="",
        help="change the sample mix (class Mix), e.g. single=0.3,long=0.3,long_current=4:11,long_memory=0:3+5:11",
    )
    parser.add_argument(
        "--average-from",
        type=int,
        help="save the running mean of the weights from this step on (torch.optim.swa_utils.AveragedModel), not the"
        " last step's weights",
    )
    parser.add_argument(
        "--bf16", action="store_true", help="bfloat16 autocast: 1.5x faster where the CPU has avx512_bf16 or AMX"
    )
    args = parser.parse_args()
    mix = dataclasses.replace(MAIN, **dict(_mix_value(kv) for kv in args.mix.split(",") if kv))
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    index = json.loads((args.data / "index.json").read_text())
    init = args.init_from or args.work / "init"
    if not (init / "model.safetensors").exists():
        spec = dataclasses.replace(SPEC, downsample_hidden=args.conv_width or SPEC.downsample_hidden)
        build_initial_checkpoint(init, [c["text"] for c in index if c["text"]], spec)
    _, model_cls, _ = official_classes()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(init)
    model = model_cls.from_pretrained(str(init), dtype=torch.float32).train()
    width = model.config.thinker_config.audio_config.downsample_hidden_size
    if args.conv_width and args.conv_width != width:  # an existing init or --init-from decides the architecture
        parser.error(f"--conv-width {args.conv_width}: {init} has {width} channels; drop it or use a new --work")
    clips = Clips(args.data, tok)
    print(f"{len(clips.index)} clips, vocabulary {len(tok)} tokens", flush=True)
    tower = model.thinker.audio_tower
    tower.to(memory_format=torch.channels_last)  # oneDNN's convolutions: 1.7x faster in bfloat16 than NCHW
    frontend, backend = Frontend(tower), Backend(tower)
    params = [p for p in model.parameters() if p.requires_grad]
    print(f"{sum(p.numel() for p in params) / 1e6:.2f} M parameters", flush=True)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        p = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.03 + 0.97 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))

    t0 = time.time()
    avg = None
    averaged = None  # AveragedModel from --average-from on
    last = min(args.steps, args.stop_after or args.steps) - 1
    for step, batch in enumerate(batches(clips, rng, args.budget, mix)):
        if step > last:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss, ce, ctc = step_loss(
                model, frontend, backend, clips, batch, rng, ctc_weight=args.ctc_weight, specaug=args.specaug,
                token_dropout=args.token_dropout, memory_grad=not args.no_memory_grad,
            )  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if args.average_from is not None and step >= args.average_from:
            if averaged is None:
                averaged = AveragedModel(model)
            averaged.update_parameters(model)
        avg = (ce, ctc) if avg is None else (0.98 * avg[0] + 0.02 * ce, 0.98 * avg[1] + 0.02 * ctc)
        if step % 20 == 0 or step == last:
            print(
                f"step {step} ce {ce:.3f} ctc {ctc:.3f} avg ce {avg[0]:.3f} ctc {avg[1]:.3f} lr {lr_at(step):.2e}"
                f" batch {len(batch)} {time.time() - t0:.0f} s",
                flush=True,
            )
        if (step + 1) % args.save_every == 0 or step == last:
            save((model if averaged is None else averaged.module).eval(), init, args.work / "checkpoint")
            model.train()
            (args.work / "checkpoint" / "train_state.json").write_text(
                json.dumps(
                    {
                        "step": step + 1,
                        "schedule_steps": args.steps,
                        "data": str(args.data),
                        "lr": args.lr,
                        "ctc_weight": args.ctc_weight,
                        "specaug": args.specaug,
                        "seed": args.seed,
                        "bf16": args.bf16,
                        "token_dropout": args.token_dropout,
                        "memory_grad": not args.no_memory_grad,
                        "mix": dataclasses.asdict(mix),
                        "init_from": str(args.init_from) if args.init_from else None,
                        "averaged_steps": 0 if averaged is None else int(averaged.n_averaged),
                        "ce": round(avg[0], 4),
                        "ctc": round(avg[1], 4),
                        "seconds": round(time.time() - t0),
                    }
                )
            )
    print(f"done: {last + 1} steps in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
