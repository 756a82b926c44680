"""JAX vs PyTorch on this CPU: train step and forward pass of the U-Net baseline and the BTSegDiff network.

    python bench/torch_vs_jax.py                                  # both nets, 5 rounds of 5 steps each
    python bench/torch_vs_jax.py --nets=btsegdiff --rounds=2 --steps=3 --torch_setups=eager,threads=1
    python bench/torch_vs_jax.py --torch_setups=eager,compile+channels_last,fused   # '+' joins options

Needs torch (`pip install -e .[bench]`; CPU wheels: `--index-url https://download.pytorch.org/whl/cpu`).
JAX runs the project's own step (`diffseg_jax.train.make_train_step` after `runtime.configure()`, as
bench/speed.py does); PyTorch runs the twins of bench/torch_twins.py, loaded with the same initial Flax
weights, with the same loss, clipping, AdamW, EMA and finiteness check per step. Forward: the U-Net's
logits; for BTSegDiff one `denoise` call as the sampler makes it (condition features computed beforehand).
Both at `train.batch_size`.

PyTorch setups: options joined by '+': 'channels_last' (model and batch in NHWC memory),
'compile' (torch.compile of the loss and of the forward; the first call compiles, minutes on 2 cores),
'fused' (AdamW's fused kernel instead of foreach), 'threads=N' (torch.set_num_threads(N) for this setup;
otherwise `--threads`, all cores); 'eager' = none. With other processes on the cores, PyTorch's OpenMP
threads wait for each other at every operator, so 'threads=1' can beat all cores on a busy machine;
`--omp_wait_policy` (default passive) is set before torch starts: with OpenMP's default active waiting,
threads spin at every operator's barrier while a peer has lost its core to another process, and on a busy
2-core machine BTSegDiff's train step took 2-9 s at 2 threads instead of 0.3-0.4 s; '' keeps the default.

Every round times `--steps` train steps and then `--steps` forward calls of each (net, setup) in turn, the
order reversed every other round, after one untimed call per block: load from other processes hits all
alike. Medians are over every timed call. FLOPs come from XLA's cost analysis of the JAX programs (the
twins do the same arithmetic). Prints one JSON object per line, then a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

FLAGS = ("channels_last", "compile", "fused")


@dataclasses.dataclass(frozen=True)
class TorchSetup:
    """How a PyTorch twin runs; `threads` None = the `--threads` default."""

    channels_last: bool = False
    compile: bool = False
    fused: bool = False
    threads: int | None = None


def parse_setup(name: str) -> TorchSetup:
    """'eager' -> no option; 'compile+threads=1' -> both; an unknown option is an error."""
    fields: dict = {}
    for option in [] if name == "eager" else name.split("+"):
        if option in FLAGS:
            fields[option] = True
        elif option.startswith("threads=") and option[len("threads=") :].isdigit():
            fields["threads"] = int(option[len("threads=") :])
        else:
            raise ValueError(f"unknown PyTorch setup option {option!r}; expected eager, threads=N or {FLAGS}")
    return TorchSetup(**fields)


def time_calls(fn: Callable[[], object], n: int) -> list[float]:
    """Seconds of n calls of a blocking fn, after one untimed call."""
    fn()
    times = []
    for _ in range(n):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return times


class JaxNet:
    """The project's jitted train step and the network's forward, compiled ahead of the rounds."""

    framework, setup = "jax", "project"

    def __init__(self, config, batch: dict):
        import jax
        import jax.numpy as jnp
        import speed
        from torch_twins import flax_network

        from diffseg_jax import parallel, train
        from diffseg_jax.methods.base import model_apply
        from diffseg_jax.methods.registry import build_method
        from diffseg_jax.train_state import create_train_state

        method = build_method(config)
        mesh = parallel.make_mesh()
        state = create_train_state(config, method, {k: v[:1] for k, v in batch.items()})
        self.initial_params = jax.tree.map(lambda x: jax.device_get(x).copy(), state.params)
        self.state = jax.device_put(state, parallel.replicated(mesh))
        self.batch = parallel.global_batch(mesh, batch)
        tic = time.perf_counter()
        self.step_fn = train.make_train_step(method, config, mesh).lower(self.state, self.batch).compile()
        self.train_step()
        self.first_train_seconds = time.perf_counter() - tic
        self.flops = speed._flops(self.step_fn)

        model, params = flax_network(config), jax.tree.map(jnp.asarray, self.initial_params)
        apply = model_apply(model, config)
        if config.method == "btsegdiff":
            cond = apply({"params": params}, self.batch["image"], method=model.encode_condition)
            x_t = jax.random.normal(jax.random.PRNGKey(1), batch["label"].shape)
            steps = jax.random.randint(jax.random.PRNGKey(2), x_t.shape[:1], 0, config.diffusion.num_steps)
            forward = jax.jit(lambda p, x, t, c: apply({"params": p}, x, t, c, method=model.denoise))
            args = (params, x_t, steps, cond)
        else:
            forward = jax.jit(lambda p, x: apply({"params": p}, x))
            args = (params, self.batch["image"])
        tic = time.perf_counter()
        compiled = forward.lower(*args).compile()
        self._forward = lambda: jax.block_until_ready(compiled(*args))
        self.forward()
        self.first_forward_seconds = time.perf_counter() - tic
        self.forward_flops = speed._flops(compiled)

    def enter(self) -> None:
        """Before a block of calls: nothing to set (XLA's thread pool is fixed when JAX starts)."""

    def train_step(self) -> None:
        self.state, metrics = self.step_fn(self.state, self.batch)
        float(metrics["loss"])  # waits for the step

    def forward(self) -> None:
        self._forward()


class TorchNet:
    """A twin loaded with the Flax initial weights, its TorchTrainer and its forward, in one setup."""

    framework = "torch"

    def __init__(self, config, batch: dict, flax_params, setup: str, threads: int):
        import numpy as np
        import torch
        import torch_twin_training
        import torch_twins

        options = parse_setup(setup)
        self.setup, self.threads = setup, options.threads or threads
        self.enter()
        memory = torch.channels_last if options.channels_last else torch.contiguous_format
        twin = torch_twins.build_twin(config)
        torch_twins.load_flax_params(twin, flax_params)
        twin = twin.to(memory_format=memory)

        def nchw(x) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).contiguous(
                memory_format=memory
            )

        self.batch = {k: nchw(v) for k, v in batch.items()}
        loss = torch_twin_training.build_loss(config, twin)
        compile_ = torch.compile if options.compile else (lambda fn: fn)
        self.trainer = torch_twin_training.TorchTrainer(twin, compile_(loss), config, fused=options.fused)
        self.twin = twin
        if config.method == "btsegdiff":
            generator = torch.Generator().manual_seed(1)
            x_t = torch.randn(self.batch["label"].shape, generator=generator).contiguous(memory_format=memory)
            steps = torch.randint(0, config.diffusion.num_steps, x_t.shape[:1], generator=generator)
            with torch.inference_mode():
                cond = twin.encode_condition(self.batch["image"])
            denoise = compile_(twin.denoise)
            self._forward_call = lambda: denoise(x_t, steps, cond)
        else:
            forward = compile_(twin)
            self._forward_call = lambda: forward(self.batch["image"])
        tic = time.perf_counter()
        self.train_step()  # compiles the loss, with 'compile'
        self.first_train_seconds = time.perf_counter() - tic
        tic = time.perf_counter()
        self.forward()
        self.first_forward_seconds = time.perf_counter() - tic

    def enter(self) -> None:
        """Before a block of calls: this setup's thread count (a process-wide setting)."""
        import torch

        torch.set_num_threads(self.threads)

    def train_step(self) -> None:
        self.twin.train()
        self.trainer.step(self.batch)

    def forward(self) -> None:
        import torch

        self.twin.eval()
        with torch.inference_mode():
            self._forward_call()


def _config(net: str, preset: str):
    import speed

    return speed._config(net, preset)


def build_runners(net: str, args, emit: Callable[[dict], None]) -> list:
    """JAX first (its initial parameters seed every twin), then each PyTorch setup that builds and runs."""
    import speed

    config = _config(net, args.preset)
    batch = speed._random_batch(config, config.train.batch_size)
    jax_net = JaxNet(config, batch)
    runners: list = [jax_net]
    for setup in args.torch_setups.split(","):
        try:
            runners.append(TorchNet(config, batch, jax_net.initial_params, setup, args.threads))
        except Exception as err:  # torch.compile can fail in many ways; the other setups still run
            emit(
                {"bench": "setup_failed", "net": net, "setup": setup, "error": f"{type(err).__name__}: {err}"}
            )
    for runner in runners:
        first = {"first_train_call_seconds": round(runner.first_train_seconds, 2)}
        first["first_forward_call_seconds"] = round(runner.first_forward_seconds, 2)
        emit({"bench": "ready", "net": net, "framework": runner.framework, "setup": runner.setup, **first})
    return runners


def summarise(net: str, runner, times: dict[str, list[float]], reference: dict, config) -> dict:
    """Medians, throughput, the JAX/this time ratios and the achieved FLOP rates of one (net, setup).

    `reference`: the net's JAX medians and XLA FLOP counts (the twins do the same arithmetic)."""
    import speed

    step, fwd = statistics.median(times["train"]), statistics.median(times["forward"])
    record = {
        "bench": "summary",
        "net": net,
        "framework": runner.framework,
        "setup": runner.setup,
        "batch_size": config.train.batch_size,
        "image_size": config.data.image_size,
        "timed_calls": len(times["train"]),
        "median_train_step_seconds": round(step, 4),
        "train_images_per_second": round(config.train.batch_size / step, 2),
        "median_forward_seconds": round(fwd, 4),
        "first_train_call_seconds": round(runner.first_train_seconds, 2),
        "first_forward_call_seconds": round(runner.first_forward_seconds, 2),
        "jax_over_this_train": round(reference["train"] / step, 3),
        "jax_over_this_forward": round(reference["forward"] / fwd, 3),
        **speed._utilisation(reference["flops"], step),
    }
    if reference["forward_flops"]:
        record["forward_gflop_per_call"] = round(reference["forward_flops"] / 1e9, 3)
        record["forward_achieved_gflops"] = round(reference["forward_flops"] / fwd / 1e9, 1)
    return record


TABLE = (  # column title, summary key
    ("net", "net"),
    ("framework", "framework"),
    ("setup", "setup"),
    ("train step (s)", "median_train_step_seconds"),
    ("images/s", "train_images_per_second"),
    ("JAX / this, train", "jax_over_this_train"),
    ("forward (s)", "median_forward_seconds"),
    ("JAX / this, forward", "jax_over_this_forward"),
    ("GFLOP / step", "gflop_per_call"),
    ("GFLOP/s, train", "achieved_gflops"),
    ("first step (s)", "first_train_call_seconds"),
)


def markdown(records: list[dict]) -> str:
    rows = ["| " + " | ".join(title for title, _ in TABLE) + " |", "|" + "---|" * len(TABLE)]
    rows += ["| " + " | ".join(str(r.get(key, "")) for _, key in TABLE) + " |" for r in records]
    return "\n".join(rows)


KEYS = {"train": "median_train_step_seconds", "forward": "median_forward_seconds"}


def run_rounds(runners: dict[str, list], rounds: int, steps: int, emit: Callable[[dict], None]) -> dict:
    """(net, setup) -> {"train": seconds, "forward": seconds} over all rounds, blocks interleaved."""
    times = {(net, r.setup): {"train": [], "forward": []} for net, rs in runners.items() for r in rs}
    for round_ in range(rounds):
        for net, net_runners in runners.items():
            for runner in net_runners if round_ % 2 == 0 else net_runners[::-1]:
                runner.enter()
                block = {
                    "train": time_calls(runner.train_step, steps),
                    "forward": time_calls(runner.forward, steps),
                }
                for kind, seconds in block.items():
                    times[net, runner.setup][kind] += seconds
                medians = {KEYS[k]: round(statistics.median(v), 4) for k, v in block.items()}
                emit(
                    {
                        "bench": "round",
                        "round": round_,
                        "net": net,
                        "framework": runner.framework,
                        "setup": runner.setup,
                        **medians,
                    }
                )
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nets", default="unet_baseline,btsegdiff", help="comma list of config names")
    parser.add_argument("--preset", default="default", help="the configs' preset (smoke, default, paper)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument(
        "--steps", type=int, default=5, help="timed train steps (and forward calls) per block"
    )
    parser.add_argument("--torch_setups", default="eager,threads=1,channels_last,compile", help="see above")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads")
    parser.add_argument("--omp_wait_policy", default="passive", help="OMP_WAIT_POLICY; '' = as set")
    args = parser.parse_args()
    for setup in args.torch_setups.split(","):
        parse_setup(setup)

    if args.omp_wait_policy:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy  # read when torch loads its OpenMP runtime
    from diffseg_jax import runtime

    runtime.configure()  # before JAX starts a backend
    import jax
    import speed
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    def emit(record: dict) -> None:
        print(json.dumps(record), flush=True)

    emit(
        {
            "bench": "machine",
            **speed.machine_peak(),
            "jax": jax.__version__,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
        }
    )
    nets = args.nets.split(",")
    runners = {net: build_runners(net, args, emit) for net in nets}
    times = run_rounds(runners, args.rounds, args.steps, emit)
    summaries = []
    for net in nets:
        jax_runner = runners[net][0]
        reference = {
            "train": statistics.median(times[net, jax_runner.setup]["train"]),
            "forward": statistics.median(times[net, jax_runner.setup]["forward"]),
            "flops": jax_runner.flops,
            "forward_flops": jax_runner.forward_flops,
        }
        config = _config(net, args.preset)
        for runner in runners[net]:
            summaries.append(summarise(net, runner, times[net, runner.setup], reference, config))
            emit(summaries[-1])
    print()
    print(markdown(summaries))


if __name__ == "__main__":
    main()
