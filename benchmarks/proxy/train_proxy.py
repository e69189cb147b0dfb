"""Train the project's proxy model: a ~3M-parameter Llama 3.2-architecture model on the Python 3.11
documentation, so that quality claims (perplexity, agreement) rest on a model that has learned something.

    python benchmarks/proxy/train_proxy.py --out handheld/proxy

Reproducible: fixed split, fixed seed, single-threaded data order. Writes a Meta-format checkpoint
(bf16), the tokenizer, the shipped test text and `card.json` (corpus sizes, curve, test perplexity).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).parent))
import bpe  # noqa: E402
import corpus  # noqa: E402

from handheld.core.checkpoints import TOKENIZER, write_checkpoint  # noqa: E402
from handheld.core.llama.config import ModelArgs  # noqa: E402
from handheld.measure.quality import eager_logits_fn, evaluate  # noqa: E402
from handheld.core.llama.model import Transformer, parameter_count  # noqa: E402
from handheld.core.tokenizers.tokenizer import NUM_SPECIAL, load_tokenizer  # noqa: E402

N_RANKS = 4096
# GQA, tied embeddings, every width a multiple of 32 (4-bit groups), FFN 512 (a power of two, for R4).
ARGS = ModelArgs(
    dim=192, n_layers=4, n_heads=6, n_kv_heads=2, vocab_size=N_RANKS + NUM_SPECIAL,
    multiple_of=256, ffn_dim_multiplier=1.0, rope_theta=500000.0, use_scaled_rope=True,
)
SHIPPED_TEST_CHARS = 120_000  # the test text shipped with the model (its first files, whole lines)
EVAL_CONTEXT, EVAL_STRIDE = 256, 128


def batches(ids: torch.Tensor, batch: int, seq_len: int, generator: torch.Generator):
    while True:
        starts = torch.randint(0, len(ids) - seq_len - 1, (batch,), generator=generator)
        window = torch.stack([ids[s : s + seq_len + 1] for s in starts.tolist()])
        yield window[:, :-1], window[:, 1:]


@torch.no_grad()
def val_loss(model, ids: torch.Tensor, seq_len: int, n_batches: int = 8) -> float:
    generator = torch.Generator().manual_seed(1234)  # the same validation batches every time
    losses = []
    for _, (x, y) in zip(range(n_batches), batches(ids, 16, seq_len, generator)):
        losses.append(F.cross_entropy(model.forward_batch(x).flatten(0, 1), y.flatten()).item())
    return sum(losses) / len(losses)


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    from handheld.training.loop import TrainConfig, lr_at

    return lr_at(step, TrainConfig(steps=steps, lr=peak, warmup=warmup))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    started = time.perf_counter()

    splits = corpus.load_splits()
    args.out.mkdir(parents=True, exist_ok=True)
    bpe.write_tiktoken(bpe.train_bpe(splits["train"], N_RANKS), args.out / TOKENIZER)
    tok = load_tokenizer(args.out / TOKENIZER)
    ids = {name: torch.tensor(tok.encode(text), dtype=torch.long) for name, text in splits.items()}
    print({name: len(t) for name, t in ids.items()}, "tokens", flush=True)

    model = Transformer(ARGS, max_seq_len=args.seq_len)
    for name, param in model.named_parameters():
        if param.dim() == 2:  # GPT-style init; norms stay at one
            torch.nn.init.normal_(param, std=0.02)
    print(f"{parameter_count(model):,} parameters", flush=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    data = batches(ids["train"], args.batch_size, args.seq_len, torch.Generator().manual_seed(args.seed))
    curve = []
    bar = tqdm(range(args.steps), desc="train", unit="step")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, warmup=50)
        x, y = next(data)
        loss = F.cross_entropy(model.forward_batch(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % 100 == 0 or step + 1 == args.steps:
            curve.append({"step": step + 1, "train_loss": loss.item(), "val_loss": val_loss(model, ids["val"], args.seq_len)})
            tqdm.write(f"step {step + 1}: val loss {curve[-1]['val_loss']:.4f}")
    train_seconds = time.perf_counter() - started

    state = {k: v.detach().to(torch.bfloat16) for k, v in model.state_dict().items() if k != "output.weight"}
    write_checkpoint(args.out, ARGS, state, "meta")
    test_text = shipped_test_text(splits["test"])
    (args.out / "test.txt").write_text(test_text)
    # The demo's SpinQuant calibration and QAT text: training documents spread over the corpus.
    (args.out / "calib.txt").write_text(corpus.calibration_text())
    shipped = Transformer(ARGS, max_seq_len=EVAL_CONTEXT)
    shipped.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    result = evaluate(eager_logits_fn(shipped.eval()), tok.encode(test_text), EVAL_CONTEXT, EVAL_STRIDE)
    card = {
        "corpus": "Python 3.11 documentation sources (Debian python3.11-doc, /usr/share/doc/python3.11/html/_sources)",
        "split": "by file, sha256(path) % 100: <90 train, <95 validation, else test",
        "chars": {name: len(text) for name, text in splits.items()},
        "tokens": {name: len(t) for name, t in ids.items()},
        "tokenizer_ranks": N_RANKS,
        "parameters": parameter_count(model),
        "training": {**{k: getattr(args, k) for k in ("steps", "batch_size", "seq_len", "lr", "seed")},
                     "seconds": round(train_seconds), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "curve": curve,
        "test": {"text": "test.txt", "chars": len(test_text), **result.as_dict()},
    }
    (args.out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"test perplexity {result.perplexity:.3f} over {result.tokens_scored} tokens; {train_seconds:.0f} s")


def shipped_test_text(text: str) -> str:
    cut = text[:SHIPPED_TEST_CHARS]
    return cut[: cut.rfind("\n") + 1]


if __name__ == "__main__":
    main()
