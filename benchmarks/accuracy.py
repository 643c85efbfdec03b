"""SST-2 accuracy at an equal number of examples seen: full fine-tuning vs mask training, centralized and federated.

Every method uses the same seed, the same seeded pool of ``--examples`` training examples and the
same total number of examples seen (``--examples``, batch 32): centralized methods make one pass;
federated runs split the pool over ``--clients`` clients (IID and Dirichlet α = 0.5) and take
``--rounds`` rounds of ``examples / (batch * clients * rounds)`` local steps (``--batch``, default 32,
is every method's batch size). ``--set`` overrides come last, so they win over the per-kind settings.
``--federated-full`` adds FedAvg of full fine-tuning on the same clients, rounds and local steps, which
separates what federation costs from what masking costs; ``--federated-lora`` adds FedAvg of LoRA
adapters (``peft``; rank ``--lora-rank`` on the mask's target modules, the head trained in full) on
the same clients, rounds and local steps. Prints one JSON object with the validation metric of every
method (and, for federated runs, per round) and, for federated runs, the bytes uploaded per round
(float32 tensors for FedAvg baselines; the client files for masks).

    python benchmarks/accuracy.py --config configs/sst2_minilm_offline.yaml --out-dir /tmp/bench_acc
    python benchmarks/accuracy.py --config configs/sst2_minilm_offline.yaml --out-dir /tmp/fedavg_full \
        --batch 4 --kinds --partitions dirichlet --skip-full --federated-full
    python benchmarks/accuracy.py --config configs/sst2_minilm_offline.yaml --out-dir /tmp/baselines \
        --examples 640 --clients 2 --rounds 2 --partitions iid --skip-full --skip-central \
        --federated-full --federated-lora
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from supermask_cli import steps as api  # noqa: E402
from supermask_cli.config import Config, load_config  # noqa: E402
from supermask_cli.predict import evaluate_model  # noqa: E402
from supermask_cli.layout import Layout  # noqa: E402
from supermask_cli.runlog import write_metrics_rows  # noqa: E402
from supermask_cli.local_training import batch_order, linear_schedule
from supermask_cli.runtime import encode_batch, resolve_device  # noqa: E402

# Score learning rates and settings per kind: the package defaults (README, "Mask kinds";
# docs/BENCHMARKS.md, "Accuracy at an equal number of examples seen").
KIND_SETTINGS = {
    "bernoulli": ["mask.kind=bernoulli", "mask.init_density=0.99", "train.lr=0.1"],
    "threshold": ["mask.kind=threshold", "mask.threshold=0.01", "mask.init_score=0.02", "train.lr=0.0003"],
    "scaling": ["mask.kind=scaling", "train.lr=0.001"],
}


def plain_model(cfg: Config):
    """The resolved config, label names, base model (every parameter trainable) and device."""
    labels = api.resolve_label_names(cfg)
    cfg = api.resolved(cfg, labels)
    base = api.load_base(cfg, labels)
    for p in base.model.parameters():
        p.requires_grad_(True)
    device = resolve_device(cfg.train.device)
    base.model.to(device)
    return cfg, labels, base, device


def fit(base, data, cfg: Config, steps: int, optimizer, generator: torch.Generator, device, scheduler=None) -> None:
    """``steps`` steps of full fine-tuning on ``data`` (grad clipping at 1.0)."""
    model = base.model.train()
    for indices in batch_order(len(data), cfg.train.batch_size, steps, generator):
        model(**encode_batch(base.tokenizer, data, indices, cfg.model.max_length, device)).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)


def evaluate(cfg: Config, labels, base, device) -> dict:
    return evaluate_model(
        base.model, base.tokenizer, api.eval_examples(cfg, labels), api.metric_names(cfg),
        batch_size=cfg.eval.batch_size, max_length=cfg.model.max_length, device=device, precision="fp32",
    )


def full_finetune(cfg: Config, steps: int, lr: float) -> dict:
    """Centralized full fine-tuning (AdamW on every parameter, linear decay) on the pooled data."""
    cfg, labels, base, device = plain_model(cfg)
    pool = api.train_pool(cfg, labels)
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(base.model.parameters(), lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(steps, int(cfg.train.warmup_ratio * steps)))
    fit(base, pool, cfg, steps, optimizer, torch.Generator().manual_seed(cfg.seed), device, scheduler)
    return evaluate(cfg, labels, base, device)


def fedavg(cfg: Config, base, labels, device, local_steps: int, lr: float) -> dict:
    """FedAvg over the model's trainable parameters on the federation's clients, rounds and local
    steps: each client trains them from the global (fresh AdamW, constant ``lr``), the server averages
    them weighted by example counts. Metrics and float32 upload bytes per round."""
    model = base.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items() if k in trainable}
    per_client = sum(v.numel() * 4 for v in global_state.values())
    history, uploads = [evaluate(cfg, labels, base, device)], []
    for rnd in range(cfg.federation.rounds):
        sums: dict[str, torch.Tensor] = {}
        total = 0
        for client in range(cfg.federation.num_clients):
            data = api.client_examples(cfg, client, labels)
            model.load_state_dict(global_state, strict=False)
            seed = api.derive_seed(cfg.seed, rnd, client)
            torch.manual_seed(seed)
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
            fit(base, data, cfg, local_steps, optimizer, torch.Generator().manual_seed(seed), device)
            for key, value in model.state_dict().items():
                if key in global_state:
                    sums[key] = sums.get(key, 0) + value.detach().double() * len(data)
            total += len(data)
        global_state = {k: (sums[k] / total).to(v.dtype) for k, v in global_state.items()}
        model.load_state_dict(global_state, strict=False)
        history.append(evaluate(cfg, labels, base, device))
        uploads.append(per_client * cfg.federation.num_clients)
    write_metrics_log(cfg.run_dir, history, uploads, cfg.federation.num_clients)
    return {"rounds": history, "upload_bytes": uploads, "trainable_parameters": per_client // 4}


def write_metrics_log(run_dir: str, history: list[dict], uploads: list[int], clients: int) -> None:
    """``run_dir/metrics.jsonl`` in the run directory's row format (round, eval metrics, and the
    bytes uploaded by the clients that trained from that round's global), so that ``supermask
    report <mask run> --compare <run_dir>`` draws the baseline on the accuracy-against-bytes axes."""
    rows = []
    for rnd, metrics in enumerate(history):
        row = {"round": rnd, **metrics}
        if rnd < len(uploads):
            row.update(upload_bytes=uploads[rnd], upload_clients=clients)
        rows.append(row)
    write_metrics_rows(Layout(run_dir), rows)


def federated_full_finetune(cfg: Config, local_steps: int, lr: float) -> dict:
    """FedAvg of full fine-tuning on the same clients, rounds and local steps as the mask runs."""
    cfg, labels, base, device = plain_model(cfg)
    return fedavg(cfg, base, labels, device, local_steps, lr)


def federated_lora(cfg: Config, local_steps: int, lr: float, rank: int) -> dict:
    """FedAvg of LoRA (``peft``): rank-``rank`` adapters (alpha = 2·rank, no dropout) on the mask's
    target modules, the classification head trained in full; A, B and head averaged by FedAvg."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise SystemExit("--federated-lora needs peft: pip install -e '.[bench]'") from None

    cfg, labels, base, device = plain_model(cfg)
    for p in base.model.parameters():
        p.requires_grad_(False)
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(base.targets),
                      modules_to_save=list(base.heads))
    base.model = get_peft_model(base.model, lora).to(device)
    return fedavg(cfg, base, labels, device, local_steps, lr)


def masked(cfg: Config) -> list[dict]:
    """A federated (or, with one client and one round, centralized) mask run: metrics per round
    and, for federated runs, the client file bytes uploaded per round."""
    summaries = api.run(cfg)
    uploads = [s.upload.upload_bytes for s in summaries if s.upload is not None]
    return {"rounds": [s.metrics for s in summaries], "upload_bytes": uploads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--examples", type=int, default=9600)
    parser.add_argument("--batch", type=int, default=32, help="batch size of every method (client batch when federated)")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kinds", nargs="*", default=list(KIND_SETTINGS))
    parser.add_argument("--partitions", nargs="*", default=["iid", "dirichlet"])
    parser.add_argument("--full-lr", type=float, default=5e-5)
    parser.add_argument("--skip-full", action="store_true")
    parser.add_argument("--skip-central", action="store_true", help="skip centralized mask training")
    parser.add_argument("--federated-full", action="store_true",
                        help="also FedAvg of full fine-tuning per partition (constant --full-lr)")
    parser.add_argument("--federated-lora", action="store_true",
                        help="also FedAvg of LoRA adapters per partition (constant --lora-lr, needs peft)")
    parser.add_argument("--lora-lr", type=float, default=1e-3)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    batch = args.batch
    steps = args.examples // batch
    local_steps = math.ceil(steps / (args.clients * args.rounds))
    common = [f"data.max_train_examples={args.examples}", f"train.batch_size={batch}", "train.max_steps=null",
              "mask.encoding=auto"]
    results: dict = {"config": args.config, "overrides": args.overrides, "examples_seen": args.examples,
                     "batch_size": batch, "clients": args.clients, "rounds": args.rounds,
                     "local_steps": local_steps, "methods": {}}
    start = time.perf_counter()

    def federation(partition: str) -> list[str]:
        return [f"federation.num_clients={args.clients}", f"federation.rounds={args.rounds}",
                f"federation.partition={partition}", "federation.dirichlet_alpha=0.5"]

    def record(name: str, value) -> None:
        results["methods"][name] = value
        print(f"{name}: {json.dumps(value)[:300]}", file=sys.stderr, flush=True)

    if not args.skip_full:
        cfg = load_config(args.config, [*common, f"run_dir={args.out_dir}/full", *args.overrides])
        record("full_finetuning", full_finetune(cfg, steps, args.full_lr))
    if args.federated_full:
        for partition in args.partitions:
            cfg = load_config(args.config, [*common, f"run_dir={args.out_dir}/fedavg_full_{partition}",
                                            *federation(partition), *args.overrides])
            record(f"federated_full_finetuning_{partition}", federated_full_finetune(cfg, local_steps, args.full_lr))
    if args.federated_lora:
        for partition in args.partitions:
            cfg = load_config(args.config, [*common, f"run_dir={args.out_dir}/fedavg_lora_{partition}",
                                            *federation(partition), *args.overrides])
            record(f"federated_lora_{partition}", federated_lora(cfg, local_steps, args.lora_lr, args.lora_rank))
    for kind in args.kinds:
        if not args.skip_central:
            cfg = load_config(args.config, [*common, *KIND_SETTINGS[kind], f"run_dir={args.out_dir}/central_{kind}",
                                            "federation.num_clients=1", "federation.rounds=1",
                                            "federation.partition=iid", f"train.max_steps={steps}", *args.overrides])
            record(f"central_{kind}", masked(cfg)["rounds"][-1])
        for partition in args.partitions:
            cfg = load_config(args.config, [*common, *KIND_SETTINGS[kind],
                                            f"run_dir={args.out_dir}/fed_{kind}_{partition}", *federation(partition),
                                            f"train.max_steps={local_steps}", *args.overrides])
            record(f"federated_{kind}_{partition}", masked(cfg))
    results["seconds"] = time.perf_counter() - start
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
