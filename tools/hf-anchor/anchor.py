#!/usr/bin/env python3
"""The GPU anchor: Hugging Face transformers on the same synthetic checkpoint folder and GPU as
`smallkv bench runner --device cuda --dtype bf16`: LlamaForCausalLM in bf16 with sdpa attention,
greedy decode at each batch size, eager (dynamic cache) and with a static cache plus torch.compile
where that works. Prints a table and writes JSON; every configuration has its own time limit so a
slow compile never eats the rest of a device check.

Usage: python3 tools/hf-anchor/anchor.py CHECKPOINT_DIR [--batches 1,16,64] [--context 128]
       [--steps 32] [--prefill 512] [--modes eager,compile] [--budget 150] [--out anchor.json]
Needs torch and transformers (both on the GPU machine's image); nothing is downloaded.
"""
import argparse
import json
import os
import sys
import time


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--batches", default="1,16,64")
    p.add_argument("--context", type=int, default=128, help="prompt tokens before the decode measurement")
    p.add_argument("--steps", type=int, default=32, help="decode steps measured")
    p.add_argument("--prefill", type=int, default=512, help="prompt tokens of the prefill measurement")
    p.add_argument("--modes", default="eager,compile")
    p.add_argument("--budget", type=float, default=150.0, help="seconds for the whole anchor")
    p.add_argument("--out", default="anchor.json")
    return p.parse_args()


def main():
    a = parse()
    t_start = time.time()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    import transformers
    from transformers import LlamaForCausalLM

    if not torch.cuda.is_available():
        sys.exit("anchor: no CUDA device")
    dev = torch.device("cuda")
    model = LlamaForCausalLM.from_pretrained(a.checkpoint, torch_dtype=torch.bfloat16, attn_implementation="sdpa")
    model = model.to(dev).eval()
    vocab = model.config.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(1)

    def tokens(b, n):
        return torch.randint(3, vocab, (b, n), generator=gen).to(dev)

    def sync():
        torch.cuda.synchronize()

    results = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "checkpoint": os.path.abspath(a.checkpoint),
        "dtype": "bf16",
        "attention": "sdpa",
        "context": a.context,
        "steps": a.steps,
        "prefill": None,
        "decode": [],
        "errors": [],
    }

    with torch.inference_mode():
        # Prefill: one forward over the prompt, best of 3.
        ids = tokens(1, a.prefill)
        model(ids)
        sync()
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            model(ids)
            sync()
            best = min(best, time.perf_counter() - t0)
        results["prefill"] = {"tokens": a.prefill, "seconds": best, "tokensPerSecond": a.prefill / best}

        def decode_eager(b):
            """Greedy steps through the dynamic cache, one forward per token (what generate() does)."""
            prompt = tokens(b, a.context)
            out = model(prompt, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            for _ in range(2):  # warm-up steps
                out = model(nxt, past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            sync()
            t0 = time.perf_counter()
            for _ in range(a.steps):
                out = model(nxt, past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            sync()
            return time.perf_counter() - t0

        def decode_compiled(b):
            """generate() with a static cache and the forward compiled (reduce-overhead: CUDA graphs)."""
            prompt = tokens(b, a.context)
            kw = dict(do_sample=False, cache_implementation="static", pad_token_id=0)

            def run(n):
                sync()
                t0 = time.perf_counter()
                model.generate(prompt, max_new_tokens=n, min_new_tokens=n, **kw)
                sync()
                return time.perf_counter() - t0

            run(4)  # compiles for this batch
            run(4)
            short = min(run(1), run(1))  # prefill + first token
            total = run(a.steps + 1)
            return max(total - short, 1e-9)

        compiled_forward = None
        for mode in a.modes.split(","):
            if mode == "compile":
                try:
                    compiled_forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
                    model.forward = compiled_forward
                except Exception as e:  # noqa: BLE001 - reported, the other modes still run
                    results["errors"].append(f"compile: {type(e).__name__}: {e}")
                    continue
            for b in [int(x) for x in a.batches.split(",")]:
                if time.time() - t_start > a.budget:
                    results["errors"].append(f"{mode} batch {b}: skipped (anchor budget of {a.budget}s spent)")
                    continue
                try:
                    secs = decode_eager(b) if mode == "eager" else decode_compiled(b)
                    results["decode"].append(
                        {"mode": mode, "batch": b, "seconds": secs, "tokensPerSecond": b * a.steps / secs}
                    )
                except Exception as e:  # noqa: BLE001
                    results["errors"].append(f"{mode} batch {b}: {type(e).__name__}: {str(e)[:300]}")
                finally:
                    torch.cuda.empty_cache()

    with open(a.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"HF transformers {results['transformers']} (torch {results['torch']}) on {results['device']}, bf16, sdpa")
    print(f"prefill {a.prefill} tokens: {results['prefill']['tokensPerSecond']:.0f} tok/s")
    print(f"{'mode':>8} {'batch':>6} {'tok/s':>10}")
    for r in results["decode"]:
        print(f"{r['mode']:>8} {r['batch']:>6} {r['tokensPerSecond']:>10.0f}")
    for e in results["errors"]:
        print(f"note: {e}")
    print(f"JSON: {a.out}")


if __name__ == "__main__":
    main()
