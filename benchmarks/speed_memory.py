"""Speed and memory of mask training against full fine-tuning, and of the exported model at evaluation.

Prints one JSON object. Every time comparison is a ratio measured side by side in this one
process: the methods run interleaved (A, B, C, A, B, C, ...) on the same pre-tokenized SST-2
batches and the medians of the per-step times are compared, so background load on a shared
machine hits every method alike. Absolute times are reported for information only.

a. ``step``: seconds per training step at ``--batch-size`` / ``--max-length`` (padded to the
   longest in the batch, like ``train.encode_batch``) of
   - ``mask_<kind>``: the product's step (``train.train_masks``: MaskedLinear from a global made
     by ``steps.init``, Adam on scores + AdamW on the head, LR schedule, grad clipping);
     with the product's default ``train.dropout`` (off for bernoulli); ``mask_<kind>_dropout``
     (``--mask-dropout``): the same with the model's dropout on; ``mask_<kind>_compiled``
     (``--compile``): the same with ``train.compile`` (compiled in the untimed warmup step),
   - ``full``: full fine-tuning of the plain HF model (AdamW lr 5e-5 on every parameter, torch's
     default implementation, clipping at 1.0); ``full_fused``: the same with ``fused=True``,
   - ``frozen``: the floor, the plain model frozen except the head, forward + backward, no optimizer.
b. ``eval``: examples/s (no_grad, batch ``--eval-batch-size``) of the exported model
   (``steps.export`` + ``from_pretrained``) against the plain HF model.
c. ``memory``: peak RSS (``ru_maxrss``) of a fresh child process per measurement that loads
   the model and runs ``--memory-steps`` training steps; mask training vs full fine-tuning.
   With ``--device cuda`` also the child's peak GPU memory held by tensors
   (``torch.cuda.max_memory_allocated``; ``peak_gpu_mib``, without the CUDA context).

``--device cuda`` puts models, optimizers and batches on the GPU and synchronizes around every
timed call; ``--precision bf16`` runs every method's forward under bf16 autocast.

Ratios are medians of paired per-step ratios (step i of A over step i of B, same batch).
On a CPU shared with other jobs, every parallel (OpenMP) op waits for a second core, so with
torch's default threads a step is dominated by the number of full-size ops, not their work;
``--threads 1`` measures the work itself. Report both when the machine is loaded (see load_avg).

    HF_HUB_OFFLINE=1 python benchmarks/speed_memory.py                      # both kinds, ~4 min on 2 cores
    python benchmarks/speed_memory.py --kind bernoulli --steps 2 --reps 10 --threads 1 --skip eval memory
    python benchmarks/speed_memory.py --device cuda --precision bf16 --steps 5 --reps 10 --eval-reps 20
    python benchmarks/speed_memory.py --kind bernoulli --steps 4 --reps 5 --skip eval memory --profile 12
    python benchmarks/speed_memory.py --device cuda --precision bf16 --compile --steps 5 --reps 10 --skip eval
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# torch and the package are imported lazily (``_heavy``): the memory children are started while
# this process is still small, because ru_maxrss survives fork + exec (a child started from a
# process holding a model would inherit its high-water mark).
np = torch = steps = load_checkpoint = config_from_dict = Examples = None
trainable_from_global = resolve_model_path = DEFAULT_LR = encode_batch = linear_schedule = train = None


def _heavy(threads: int | None = None) -> None:
    global np, torch, steps, load_checkpoint, config_from_dict, Examples
    global trainable_from_global, resolve_model_path, DEFAULT_LR, encode_batch, linear_schedule, train
    import numpy
    import torch as _torch

    import supermask_cli.checkpoint
    import supermask_cli.config
    import supermask_cli.data
    import supermask_cli.masked_model
    import supermask_cli.model
    import supermask_cli.local_training
    import supermask_cli.runtime
    import supermask_cli.steps

    np, torch = numpy, _torch
    if threads:
        torch.set_num_threads(threads)
    steps = supermask_cli.steps
    load_checkpoint = supermask_cli.checkpoint.load_checkpoint
    config_from_dict = supermask_cli.config.config_from_dict
    Examples = supermask_cli.data.Examples
    trainable_from_global = supermask_cli.masked_model.trainable_from_global
    resolve_model_path = supermask_cli.model.resolve_model_path
    train = supermask_cli.local_training
    DEFAULT_LR = train.DEFAULT_LR
    encode_batch = supermask_cli.runtime.encode_batch
    linear_schedule = supermask_cli.local_training.linear_schedule


def target_device(name: str) -> torch.device:
    """The measured device; exits with one line where CUDA is asked for and absent."""
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("speed_memory.py: --device cuda, but torch.cuda.is_available() is False on this machine")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    """bf16 autocast around a forward, or nothing (fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


MODEL = "packaged:all-MiniLM-L6-v2"
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "sst2", "train.tsv")
LABELS = ["negative", "positive"]
FULL_LR = 5e-5
HEAD_LR = 1e-2
MAX_GRAD_NORM = 1.0


# ------------------------------------------------------------------------------------------ inputs


def read_sentences(path: str) -> tuple[list[str], np.ndarray]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, body = rows[0], rows[1:]
    s, y = header.index("sentence"), header.index("label")
    return [r[s] for r in body], np.array([int(r[y]) for r in body])


def make_batches(
    tokenizer, path: str, count: int, batch_size: int, max_length: int, device: torch.device, seed: int = 0
) -> list[dict]:
    """``count`` fixed batches of real sentences on ``device``, tokenized like the product (padding to the longest)."""
    texts, labels = read_sentences(path)
    examples = Examples(texts=[texts], labels=labels)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    return [
        encode_batch(tokenizer, examples, order[i * batch_size : (i + 1) * batch_size], max_length, device)
        for i in range(count)
    ]


def make_config(run_dir: str, kind: str, data_path: str, device: str = "cpu", precision: str = "fp32"):
    return config_from_dict(
        {
            "run_dir": run_dir,
            "seed": 0,
            "model": {"name": MODEL, "max_length": 64},
            "task": "sst2",
            "data": {"source": "local", "train_file": data_path, "eval_file": data_path},
            "mask": {"kind": kind, "init_density": 0.99},
            "federation": {"num_clients": 1, "rounds": 1},
            "train": {"head_lr": HEAD_LR, "max_grad_norm": MAX_GRAD_NORM, "device": device, "precision": precision},
        },
        source="benchmark",
    )


def global_path(root: str, kind: str) -> str:
    return os.path.join(root, f"run_{kind}", "round_000", "global.safetensors")


def make_global(root: str, kind: str, data_path: str) -> str:
    """Round 0's global as ``steps.init`` writes it (bernoulli: probs 0.99; threshold: all ones)."""
    result, _ = steps.init(make_config(os.path.join(root, f"run_{kind}"), kind, data_path))
    assert result.path == global_path(root, kind), result.path
    return result.path


# ------------------------------------------------------------------------------------------ steps


def mask_stepper(cfg, global_path: str, total_steps: int):
    """A closure doing one step of ``train.train_masks`` (same optimizers, schedule, clipping) on
    ``cfg.train.device`` at ``cfg.train.precision``."""
    device = torch.device(cfg.train.device)
    gl = load_checkpoint(global_path)
    base = steps.load_base(cfg, gl.meta.labels)
    base.model.to(device)  # before the masks, as steps.train does: scores are made beside the weights
    layers, head_params = trainable_from_global(base, gl, tau=cfg.mask.threshold, init_score=cfg.mask.init_score)
    model = base.model
    mask_params = [p for layer in layers.values() for p in layer.parameters() if p.requires_grad]
    # train.py's optimizer factory and clipping where it has them (older versions: the plain calls).
    make_optimizer = getattr(train, "make_optimizer", lambda cls, params, **kw: cls(params, **kw))
    clip = getattr(train, "clip_grad_norm_", torch.nn.utils.clip_grad_norm_)
    optimizers = [
        make_optimizer(torch.optim.Adam, mask_params, lr=cfg.train.lr or DEFAULT_LR[cfg.mask.kind]),
        make_optimizer(torch.optim.AdamW, head_params, lr=cfg.train.head_lr, weight_decay=cfg.train.head_weight_decay),
    ]
    factor = linear_schedule(total_steps, int(cfg.train.warmup_ratio * total_steps))
    schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, factor) for opt in optimizers]
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # bf16 and fp32 need no loss scaling
    model.train()
    if hasattr(train, "use_dropout") and not train.use_dropout(cfg.train.dropout, cfg.mask.kind):
        train.disable_dropout(model)
    for layer in layers.values():  # train.compile, as train.train_masks sets it
        layer.compiled = getattr(cfg.train, "compile", False)

    def step(batch: dict) -> float:
        with autocast(device, cfg.train.precision):
            loss = model(**batch).loss
        scaler.scale(loss).backward()
        if cfg.train.max_grad_norm is not None:
            for opt, group in zip(optimizers, (mask_params, head_params)):
                scaler.unscale_(opt)
                clip(group, cfg.train.max_grad_norm)
        for opt, sched in zip(optimizers, schedulers):
            scaler.step(opt)
            sched.step()
            opt.zero_grad(set_to_none=True)
        scaler.update()
        return float(loss.detach())

    return step


def plain_model():
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(resolve_model_path(MODEL), num_labels=2)


def full_stepper(device: torch.device, precision: str, fused: bool = False):
    """Full fine-tuning: AdamW (lr 5e-5; torch's default implementation, or ``fused``) on every
    parameter, grad clipping at 1.0 (torch's clip_grad_norm_)."""
    model = plain_model().to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=FULL_LR, **({"fused": True} if fused else {}))

    def step(batch: dict) -> float:
        with autocast(device, precision):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def frozen_stepper(device: torch.device, precision: str):
    """The floor: plain model frozen except the head; forward + backward, no optimizer."""
    model = plain_model().to(device)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("classifier."))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]

    def step(batch: dict) -> float:
        with autocast(device, precision):
            loss = model(**batch).loss
        loss.backward()
        for p in params:
            p.grad = None
        return float(loss.detach())

    return step


def interleaved(
    funcs: dict, inputs: list, reps: int, per_rep: int, device: torch.device, warmup: int = 1
) -> dict[str, list[float]]:
    """Per-call seconds of each function, run round-robin: rep r runs every function on the same inputs
    (on CUDA, synchronized before the clock starts and before it stops)."""
    for _ in range(warmup):
        for f in funcs.values():
            f(inputs[0])
    times: dict[str, list[float]] = {k: [] for k in funcs}
    i = 0
    for _ in range(reps):
        chunk = [inputs[(i + j) % len(inputs)] for j in range(per_rep)]
        i += per_rep
        for name, f in funcs.items():
            for x in chunk:
                synchronize(device)
                t0 = time.perf_counter()
                f(x)
                synchronize(device)
                times[name].append(time.perf_counter() - t0)
    return times


def op_profile(funcs: dict, batches: list, top: int) -> dict:
    """Where each method's step time goes: the ``top`` ops by self CPU time (torch.profiler), in ms
    per step, with calls per step, over ``batches`` (after the timed runs, so everything is warm)."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for name, func in funcs.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for batch in batches:
                func(batch)
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        out[name] = {
            e.key: {"ms": round(e.self_cpu_time_total / 1e3 / len(batches), 2), "calls": e.count / len(batches)}
            for e in events
        }
    return out


def median_ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over reps of the paired ratio a/b (step i of a against step i of b, same batch)."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


# ------------------------------------------------------------------------------------------ memory


def vm_hwm_mib() -> float:
    """This process's own RSS high-water mark (VmHWM), a cross-check of ru_maxrss."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child_main(args) -> None:
    """A child process: ``prepare`` writes the globals; otherwise one memory measurement
    (load, then ``--memory-steps`` training steps) printed as JSON, in MiB."""
    _heavy(args.threads)
    device = target_device(args.device)
    if args.child == "prepare":
        print(json.dumps({k: make_global(args.root, k, args.data) for k in args.kinds}))
        return
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    if args.child == "full":
        step = full_stepper(device, args.precision)
    else:
        cfg = make_config(os.path.join(args.root, f"run_{args.child}"), args.child, args.data, args.device,
                          args.precision)
        step = mask_stepper(cfg, global_path(args.root, args.child), args.memory_steps)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(MODEL))
    batches = make_batches(tokenizer, args.data, args.memory_steps, args.batch_size, args.max_length, device, seed=1)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = {"loaded_gpu_mib": torch.cuda.memory_allocated(device) / 2**20} if device.type == "cuda" else {}
    for batch in batches:
        step(batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":  # a fresh process: the peak counts from its start, loading included, as ru_maxrss
        synchronize(device)
        gpu["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        gpu["peak_gpu_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    print(json.dumps({"peak_mib": peak, "loaded_mib": loaded, "vm_hwm_mib": vm_hwm_mib(), **gpu}))


def run_child(what: str, args, root: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", what, "--root", root, "--data", args.data,
           "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
           "--memory-steps", str(args.memory_steps), "--device", args.device, "--precision", args.precision,
           "--model", args.model, "--kinds", *args.kinds]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode:
        sys.exit(out.stderr.rstrip() or f"speed_memory.py: child {what!r} exited with {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    global MODEL
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1, help="timed steps per method per rep")
    parser.add_argument("--reps", type=int, default=6, help="interleaved rounds over the methods")
    parser.add_argument("--kind", choices=["bernoulli", "threshold", "both"], default="both")
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--eval-batches", type=int, default=1, help="eval batches per method per rep")
    parser.add_argument("--eval-reps", type=int, default=5, help="interleaved rounds over the eval models")
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast every forward")
    parser.add_argument("--no-full-fused", action="store_true", help="skip full fine-tuning with fused AdamW")
    parser.add_argument("--mask-dropout", action="store_true",
                        help="also time each mask kind with the model's dropout on (mask_<kind>_dropout)")
    parser.add_argument("--compile", action="store_true",
                        help="also time mask_<kind>_compiled: the product's step with train.compile on")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also list each method's N costliest ops (self CPU ms per step, torch.profiler)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["step", "eval", "memory"])
    parser.add_argument("--data", default=os.path.normpath(DATA))
    parser.add_argument("--model", default=MODEL, help="model.name: hub id, directory or packaged:NAME "
                        "(e.g. a random BERT-base from benchmarks/bert_base_random.py)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--kinds", nargs="*", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    MODEL = args.model
    if args.child:
        child_main(args)
        return
    args.kinds = ["bernoulli", "threshold"] if args.kind == "both" else [args.kind]
    kinds = args.kinds
    report: dict = {"date": datetime.datetime.now().isoformat(timespec="seconds")}
    with tempfile.TemporaryDirectory(prefix="speed_memory-") as root:
        paths = run_child("prepare", args, root)
        memory = None
        if "memory" not in args.skip:  # first, while this process is small (see _heavy)
            memory = {f"mask_{k}": run_child(k, args, root) for k in kinds}
            memory["full"] = run_child("full", args, root)
            for k in kinds:
                memory[f"mask_{k}/full"] = memory[f"mask_{k}"]["peak_mib"] / memory["full"]["peak_mib"]
                if args.device == "cuda":
                    memory[f"mask_{k}/full_gpu"] = memory[f"mask_{k}"]["peak_gpu_mib"] / memory["full"]["peak_gpu_mib"]
            memory["steps"] = args.memory_steps

        _heavy(args.threads)
        device = target_device(args.device)
        import transformers
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        transformers.logging.set_verbosity_error()
        report["machine"] = {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_avg": os.getloadavg(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": torch.get_num_threads(),
        }
        if device.type == "cuda":
            report["machine"].update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
        report.update(model=MODEL, device=args.device, precision=args.precision, batch_size=args.batch_size,
                      max_length=args.max_length)
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(MODEL))
        cfgs = {
            k: make_config(os.path.join(root, f"run_{k}"), k, args.data, args.device, args.precision) for k in kinds
        }

        if "step" not in args.skip:
            n = args.steps * args.reps
            batches = make_batches(tokenizer, args.data, n, args.batch_size, args.max_length, device)
            report["mean_tokens_per_batch"] = float(np.mean([b["input_ids"].shape[1] for b in batches]))
            funcs = {f"mask_{k}": mask_stepper(cfgs[k], paths[k], n + 10) for k in kinds}
            if args.mask_dropout:
                for k in kinds:
                    cfg = cfgs[k].model_copy(update={"train": cfgs[k].train.model_copy(update={"dropout": True})})
                    funcs[f"mask_{k}_dropout"] = mask_stepper(cfg, paths[k], n + 10)
            if args.compile:  # compiled once in interleaved's warmup call, which is not timed
                for k in kinds:
                    cfg = cfgs[k].model_copy(update={"train": cfgs[k].train.model_copy(update={"compile": True})})
                    funcs[f"mask_{k}_compiled"] = mask_stepper(cfg, paths[k], n + 10)
            funcs["full"] = full_stepper(device, args.precision)
            if not args.no_full_fused:
                funcs["full_fused"] = full_stepper(device, args.precision, fused=True)
            funcs["frozen"] = frozen_stepper(device, args.precision)
            torch.manual_seed(0)
            times = interleaved(funcs, batches, args.reps, args.steps, device)
            step = {"median_s": {k: statistics.median(v) for k, v in times.items()}, "samples": n}
            for m in (name for name in funcs if name.startswith("mask_")):
                step[f"{m}/full"] = median_ratio(times, m, "full")
                step[f"{m}/frozen"] = median_ratio(times, m, "frozen")
                if "full_fused" in times:
                    step[f"{m}/full_fused"] = median_ratio(times, m, "full_fused")
            step["full/frozen"] = median_ratio(times, "full", "frozen")
            if args.profile:
                step["profile"] = op_profile(funcs, batches[: args.steps], args.profile)
            report["step"] = step
            del funcs

        if "eval" not in args.skip:
            kind = kinds[0]
            out_dir = os.path.join(root, "exported")
            steps.export(paths[kind], out_dir, cfg=cfgs[kind])
            exported = AutoModelForSequenceClassification.from_pretrained(out_dir).to(device).eval()
            plain = plain_model().to(device).eval()
            eval_batches = make_batches(tokenizer, args.data, args.eval_batches, args.eval_batch_size, args.max_length,
                                        device, seed=2)
            for b in eval_batches:
                b.pop("labels")

            def runner(model):
                @torch.no_grad()
                def run(batch):
                    with autocast(device, args.precision):
                        return model(**batch).logits

                return run

            times = interleaved({"exported": runner(exported), "plain": runner(plain)}, eval_batches,
                                args.eval_reps, args.eval_batches, device, warmup=1)
            rows = statistics.mean(b["input_ids"].shape[0] for b in eval_batches)
            report["eval"] = {
                "kind": kind,
                "examples_per_s": {k: rows / statistics.median(v) for k, v in times.items()},
                "exported/plain": 1.0 / median_ratio(times, "exported", "plain"),
            }
            del exported, plain

        if memory is not None:
            report["memory"] = memory

    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
