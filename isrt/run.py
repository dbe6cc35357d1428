"""Entry point: `torchrun --nproc_per_node=N -m isrt.run --preset NAME --output_dir DIR [key=value ...]`.

Also runs without torchrun (one process). Rerunning the same command continues a killed run
and does nothing after a finished one.
"""
from __future__ import annotations

import argparse
import os
import sys

# Before torch is loaded (OpenMP reads it once): threads that sleep between parallel regions
# instead of spinning. With spinning threads the first reduction after a multi-threaded MKL
# GEMM is not always split the same way, so identical processes gave different bits, more often
# under load (docs/reproducibility.md). isrt.config imports no torch, so this line comes first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import errno  # noqa: E402
import signal  # noqa: E402

from isrt.config import ConfigError, load_config, preset_names  # noqa: E402

# Storage failures a user fixes outside the program: one line, not a traceback.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m isrt.run", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="default", help=f"one of: {', '.join(preset_names())}")
    p.add_argument("--config", default=None, help="a YAML file merged over the preset")
    p.add_argument("--output_dir", default=None, help="run directory (default: runs/<preset>)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. dpo.beta=0.2 iterations=5")
    return p.parse_args(argv)


def summary_table(rows: list[dict]) -> str:
    by_iter: dict[int, dict] = {}
    for r in rows:
        by_iter.setdefault(r["iteration"], {}).update({f"s{r['stage']}.{k}": v for k, v in r.items()})
    cols = [("iter", None), ("eval acc", "s0.eval_accuracy"), ("prompts", "s1.responses"), ("bad videos", "s1.bad_videos"),
            ("resp words", "s1.response_words_mean"), ("kept", "s2.kept"), ("judged", "s2.judged"),
            ("swap agree", "s2.swap_agreement"), ("dpo loss", "s3.loss"), ("reward acc", "s3.reward_accuracy"),
            ("margin", "s3.reward_margin")]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else ("-" if v is None else str(v))  # noqa: E731
    lines = [" | ".join(name for name, _ in cols)]
    for t, row in sorted(by_iter.items()):
        lines.append(" | ".join(str(t) if key is None else fmt(row.get(key)) for _, key in cols))
    return "\n".join(lines)


class StrategyError(ValueError):
    pass


class Terminated(Exception):
    """SIGTERM reached the run's process (a scheduler stopping the job)."""


def stop_cleanly_on_sigterm() -> None:
    """SIGTERM raises Terminated in this process, so the run unwinds like Ctrl-C (its writes are
    atomic: nothing half-written) and says how to resume. Processes forked from it (decoding
    workers) keep the default: a pool that terminates its workers must not see exceptions."""
    main_pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() != main_pid:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)


def check_strategies(cfg, d) -> None:
    """fsdp2 with one process is refused before any stage runs, not when stage 3 starts."""
    from isrt.engine.training.steps import check_strategy

    try:
        check_strategy(cfg.dpo.strategy, d, "dpo.strategy")
        if cfg.warmstart.videos:
            check_strategy(cfg.warmstart.sft.strategy, d, "warmstart.sft.strategy")
    except ValueError as e:
        raise StrategyError(str(e)) from None


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.preset, args.overrides, args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    output_dir = args.output_dir or f"runs/{cfg.preset}"
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        print(f"error: --output_dir: cannot use {output_dir}: it is a file, not a directory", file=sys.stderr)
        return 2

    from isrt.engine import distributed  # heavy imports only after the config is known good
    from isrt.loop import PoolError, Run, RunDirMismatch, TrainingDiverged

    d = distributed.init()
    stop_cleanly_on_sigterm()
    try:
        check_strategies(cfg, d)
        rows = Run(cfg, output_dir, d).run()
    except (RunDirMismatch, StrategyError, TrainingDiverged, PoolError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in STORAGE_ERRNOS:
            raise
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and not os.path.exists(
                os.path.join(output_dir, "config.yaml")):  # the first write of a new run: before any work
            print(f"error: {output_dir}: cannot write the output directory ({e.strerror}); a new run needs "
                  "writable storage (a finished run there only prints its summary)", file=sys.stderr)
            return 1
        print(f"error: {e.strerror}: {e.filename or output_dir}; nothing half-written was kept: free the space "
              "or fix the permissions, then rerun the same command to resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last finished stage", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated (SIGTERM): rerun the same command to resume from the last finished stage", file=sys.stderr)
        return 143
    finally:
        distributed.shutdown(d)
    if d.is_main:
        print(summary_table(rows))
        print(f"run directory: {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
