"""The command line `python -m isrt.report RUN_DIR [--tokenizer auto|none|DIR]`: (re)write the run's report.md,
report.json and plots, and print the summary lines and the report's path."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def _auto_tokenizer(run_dir: Path):
    """The policy's tokenizer when the run directory has one (init_model/, else model.source)."""
    candidates = [run_dir / "init_model"]
    try:
        import yaml
        src = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("model", {}).get("source")
        if src and src != "tiny":
            candidates.append(Path(src))
    except Exception:  # noqa: BLE001 - no config, no tokenizer: words only
        pass
    for c in candidates:
        if (c / "tokenizer_config.json").exists() or (c / "tokenizer.json").exists():
            from transformers import AutoTokenizer
            return AutoTokenizer.from_pretrained(str(c))
    return None


def main(argv=None) -> int:
    from isrt.report import write_report  # the package imports this module at its end

    p = argparse.ArgumentParser(prog="python -m isrt.report", description="(Re)write a run's report.md, "
                                "report.json and plots, and print the report's summary lines.")
    p.add_argument("run_dir", help="an i-SRT run directory (python -m isrt.run --output_dir ...)")
    p.add_argument("--tokenizer", default="auto",
                   help="'auto' (the run's init_model/ or model.source), 'none' (words only), or a tokenizer folder")
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        print(f"error: {run_dir}: no such run directory", file=sys.stderr)
        return 2
    tokenizer = None
    if args.tokenizer == "auto":
        tokenizer = _auto_tokenizer(run_dir)
    elif args.tokenizer != "none":
        if not Path(args.tokenizer).is_dir():
            print(f"error: --tokenizer: {args.tokenizer}: no such folder", file=sys.stderr)
            return 2
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    path = write_report(run_dir, tokenizer=tokenizer)
    for line in json.loads((run_dir / "report.json").read_text(encoding="utf-8"))["summary"]:
        print(re.sub(r"\*\*", "", line))
    print(f"report: {path}")
    return 0

