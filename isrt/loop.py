"""The i-SRT loop: T iterations of generate -> judge -> DPO, resumable at stage granularity.

Run directory:
    config.yaml                 the resolved configuration (a rerun must match it)
    manifest.json               frame count, fps, codec, size per video (probed once)
    data/                       the synthetic prompt pool, when no pool is configured
    init_model/                 the initial model (model.source tiny or smollm2: built once)
    sft_data/, warm_start/      the supervised warm start's clips and result (warmstart.videos > 0): pi_0
    eval_data/                  held-out synthetic evaluation prompts (data.synthetic_eval_videos > 0)
    iter_XX/eval.jsonl          stage 0: greedy answers of pi_t on the evaluation prompts (when configured)
    iter_XX/stage1.shard{r}of{W}.json, stage2.shard...   one rank's work, written whole
    iter_XX/contexts.jsonl      {video, context, previous_context}
    iter_XX/responses.jsonl     {id, video, prompt, context, responses: [y1, y2], ...}
    iter_XX/judgments.jsonl     {id, verdicts, kept, reason, ...}
    iter_XX/preferences.jsonl   {id, video, prompt, chosen, rejected, ref_*_logp, ...}
    iter_XX/checkpoint/         pi_{t+1}, save_pretrained (safetensors); with keep_checkpoints K,
                                only the last K iterations' stay
    iter_XX/lora_adapter/       dpo.lm lora: the iteration's PEFT adapter (pi_t + adapter = pi_{t+1})
    iter_XX/stageN.json         the stage's metrics; written last, so it marks the stage done
    final_eval.jsonl/.json      greedy answers of the final policy pi_T (when configured)
    metrics.jsonl               one row per finished stage, rebuilt from the stageN.json files
    report.md, *.png            the per-iteration report (isrt.report), rewritten after each stage

Every file appears by rename; a stage without its marker is redone from its inputs with the
same seeds, so a killed run continues where it stopped and a finished run does nothing.
"""
from __future__ import annotations

import functools
import json
import math
import os
import signal
import statistics
import time
from pathlib import Path

import torch

from isrt import judge, prompts, stages
from isrt.config import BUILT_SOURCES, RunConfig, same_config, to_yaml
from isrt.data import iteration_prompts, load_pool, shard_by_video
from isrt.engine import distributed
from isrt.engine.adapters import load_adapter
from isrt.engine.features import FeatureCache
from isrt.engine.io import (atomic_dir, atomic_write_text, commit_dir, copy_tree_linked, read_json, read_jsonl,
                            write_json, write_jsonl)
from isrt.engine.training.dpo import Pair, train_dpo
from isrt.engine.training.trainable import finish_training, set_trainable
from isrt.rundir import RunDir, public
from isrt.warmstart_cache import shared_warm_start_dir

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class RunDirMismatch(ValueError):
    pass


class PoolError(ValueError):
    """The prompt pool holds nothing to train on (no usable record, or no readable video)."""


class TrainingDiverged(RuntimeError):
    """Stage 3 ended with a non-finite loss or weights: pi_{t+1} is not saved, the stage not done."""


def _crash_point(name: str) -> None:
    """Test hook: ISRT_CRASH_AT=iter_00/stage2 kills this process (SIGKILL, no cleanup)
    in the middle of that stage, as a preempted job would die; ISRT_CRASH_SIGNAL=TERM or INT
    sends that signal instead (a scheduler's polite stop, Ctrl-C)."""
    if os.environ.get("ISRT_CRASH_AT") == name:
        os.kill(os.getpid(), getattr(signal, "SIG" + os.environ.get("ISRT_CRASH_SIGNAL", "KILL")))


class Run:
    def __init__(self, cfg: RunConfig, output_dir: str | Path, d: distributed.Dist):
        self.cfg, self.out, self.d = cfg, Path(output_dir), d
        self.dir = RunDir(self.out, d.world_size)
        prompts.use_templates(cfg.prompts.overrides())  # every prompt of the run, the warm start's too
        self.log = print if d.is_main else (lambda *a, **k: None)

    # ---- set-up -------------------------------------------------------------------------
    def prepare(self) -> None:
        cfg, out = self.cfg, self.out
        busy = distributed.broadcast_object(self.d, self.dir.lock() if self.d.is_main else None)
        if busy:
            raise RunDirMismatch(busy)
        if self.d.is_main:
            removed, freed = self.dir.sweep_temp()
            if removed:
                self.log(f"removed {removed} temp files/folders left by an interrupted run ({freed / 2**20:.1f} MiB)")
        text = to_yaml(cfg)
        # Every rank checks (the file is written atomically, so it is whole or absent), so
        # every rank stops on a mismatch instead of waiting for rank 0 at a barrier.
        if (out / "config.yaml").exists() and not same_config((out / "config.yaml").read_text(), cfg):
            raise RunDirMismatch(f"{out}: holds a run with another configuration "
                                 f"(see {out / 'config.yaml'}); use a new --output_dir")
        if self.d.is_main and not (out / "config.yaml").exists():  # a finished run on read-only storage reruns
            atomic_write_text(out / "config.yaml", text)
            if not cfg.data.prompts and not (out / "data" / "prompts.jsonl").exists():
                self._make_synthetic_data("data", cfg.data.synthetic_videos, cfg.seed,
                                          ask_first=tuple(cfg.data.synthetic_ask_first))
            if self._synthetic_eval and not (out / "eval_data" / "prompts.jsonl").exists():
                # another seed, and no clip that shows what a pool or warm-start clip shows:
                # held out by construction, not by chance
                self._make_synthetic_data("eval_data", cfg.data.synthetic_eval_videos, cfg.seed + 1,
                                          ask_first=tuple(cfg.data.synthetic_ask_first),
                                          exclude=self._seen_scenes())
            if cfg.model.source == "tiny" and not (out / "init_model").exists():
                tmp = atomic_dir(out / "init_model")
                load_adapter(cfg.model.family, "tiny", dtype=DTYPES[cfg.model.dtype], num_frames=cfg.model.num_frames,
                             seed=cfg.model_seed).save_pretrained(tmp)
                commit_dir(tmp, out / "init_model")
            if cfg.model.source == "smollm2":
                from isrt.engine.adapters.smol import build_smol_video_llava
                build_smol_video_llava(out / "init_model", seed=cfg.model_seed, num_frames=cfg.model.num_frames)  # cached
            if cfg.warmstart.videos and not (out / "sft_data" / "prompts.jsonl").exists():
                # a third seed: the warm start never sees the loop's pool or its evaluation clips
                self._make_synthetic_data("sft_data", cfg.warmstart.videos, cfg.model_seed + 1000,
                                          questions_per_video=cfg.warmstart.questions_per_video)
        distributed.barrier(self.d)
        # the pool and its videos are checked before the warm start, the first long work
        self.pool = load_pool(cfg.data.prompts or out / "data" / "prompts.jsonl", cfg.data.video_root or None)
        if not self.pool.records:
            first = f"; first problem: {self.pool.bad[0]}" if self.pool.bad else ""
            raise PoolError(f"data.prompts: {cfg.data.prompts}: no usable records ({len(self.pool.bad)} bad{first})")
        if self.pool.bad:
            self.log(f"prompt pool: {len(self.pool.bad)} bad records skipped (first: {self.pool.bad[0]})")
        eval_path = cfg.data.eval_prompts or (out / "eval_data" / "prompts.jsonl" if self._synthetic_eval else None)
        self.eval_pool = load_pool(eval_path, cfg.data.video_root if cfg.data.eval_prompts else None) if eval_path else None
        gib, manifest = 2 ** 30, self._manifest()
        unreadable = [r["video_path"] for r in self.pool.records if r["video_path"] in manifest.bad]
        if len(unreadable) == len(self.pool.records):
            raise PoolError(f"data.prompts: {cfg.data.prompts or 'the synthetic pool'}: none of its "
                            f"{len(set(unreadable))} videos can be read (first: {unreadable[0]}: "
                            f"{manifest.bad[unreadable[0]]})")
        self.cache = FeatureCache(cfg.model.num_frames, backend=cfg.data.video_backend,
                                  num_workers=cfg.data.decode_workers, manifest=manifest,
                                  budget_bytes=int(cfg.data.feature_cache_gb * gib) or None,
                                  host_budget_bytes=int(cfg.data.host_cache_gb * gib))
        if cfg.warmstart.videos:
            self.warm_start()
        if cfg.gate.question_type:
            self.gate()

    def _manifest(self):
        """Frame count, fps, codec and size of every video, probed once (rank 0, cached in
        manifest.json), so all backends agree on n and bad files are known before stage 1."""
        from isrt.engine.video.manifest import build_manifest
        videos = [r["video_path"] for pool in (self.pool, self.eval_pool) if pool for r in pool.records]
        if self.d.is_main:
            manifest = build_manifest(videos, None, cache_path=self.out / "manifest.json",
                                      workers=self.cfg.data.decode_workers)
            if manifest.bad:
                video, cause = next(iter(manifest.bad.items()))
                self.log(f"manifest: {len(manifest.bad)} unreadable videos will be skipped (first: {video}: {cause})")
        distributed.barrier(self.d)
        return manifest if self.d.is_main else build_manifest(videos, None, cache_path=self.out / "manifest.json")

    @property
    def _synthetic_eval(self) -> bool:
        return not self.cfg.data.eval_prompts and self.cfg.data.synthetic_eval_videos > 0

    def _here(self, records: list[dict]) -> list[dict]:
        """Records read back from this run's files, their video_path resolved anew from the pool
        (by id): the files hold the path as it was when they were written, and the run directory
        (which holds a synthetic pool) may have moved since."""
        where = {r["id"]: r["video_path"] for r in self.pool.records}
        return [dict(r, video_path=where.get(r["id"], r.get("video_path"))) for r in records]

    def _seen_scenes(self) -> set:
        """Scene keys (objects, colours, directions) of the synthetic pool and warm-start clips."""
        from isrt.engine.synthetic import scene_keys
        cfg = self.cfg
        seen = scene_keys(cfg.model_seed + 1000, cfg.warmstart.videos)
        return seen | scene_keys(cfg.seed, cfg.data.synthetic_videos) if not cfg.data.prompts else seen

    def _make_synthetic_data(self, name: str, num_videos: int, seed: int, questions_per_video: int | None = None,
                             exclude: set = frozenset(), ask_first: tuple[str, ...] = ()):
        from isrt.engine.synthetic import make_dataset
        c = self.cfg.data
        tmp = atomic_dir(self.out / name)
        make_dataset(tmp, num_videos, seed=seed, container=c.synthetic_container, ask_first=ask_first,
                     questions_per_video=questions_per_video or c.synthetic_questions_per_video, exclude=exclude)
        commit_dir(tmp, self.out / name)

    def warm_start(self) -> None:
        """Supervised warm start of the initial model (cached in warm_start/, sft.json marks it
        done); pi_0 is its result."""
        from isrt.warmstart import warm_start
        cfg = self.cfg
        if (self.out / "warm_start" / "sft.json").exists():
            return
        # the built model's weights (its build log holds a time), the warm start's clips and records
        built = sorted((self.out / "init_model").glob("*.safetensors")) if cfg.model.source in BUILT_SOURCES else []
        shared = shared_warm_start_dir(cfg, self.d.world_size, (*built, self.out / "sft_data"))
        if shared is not None and (shared / "sft.json").exists():
            if self.d.is_main:
                copy_tree_linked(shared, self.out / "warm_start")
            distributed.barrier(self.d)
            self.log(f"warm start: the one in {shared} (warmstart.cache_dir)")
            return
        self.log("== supervised warm start ==")
        records = read_jsonl(self.out / "sft_data" / "prompts.jsonl")
        # The judge examples teach the judge the loop runs: its likelihood prompt, or A/B verdicts.
        judge_kind = "judge_answer" if cfg.judge.mode == "likelihood" else "judge"
        result = warm_start(self.out / "warm_start", self.initial_source(), records, cfg.warmstart.sft, self.d,
                            seed=cfg.model_seed, num_frames=cfg.model.num_frames, video_root=self.out / "sft_data",
                            kinds=(*cfg.warmstart.kinds, judge_kind),
                            judge_per_video=cfg.warmstart.judge_per_video, dtype=DTYPES[cfg.model.dtype],
                            family=cfg.model.family, qa_prior=dict(cfg.warmstart.qa_prior),
                            prior_in_judge=cfg.warmstart.qa_prior_in_judge)
        self.log(f"warm start: {result.metrics.get('steps')} steps, final loss {result.metrics.get('loss')}")
        if shared is not None and self.d.is_main and not (shared / "sft.json").exists():
            copy_tree_linked(self.out / "warm_start", shared)

    def gate(self) -> None:
        """isrt.gate on pi_0 and the held-out clips, once (gate.json); rank 0 runs it."""
        from isrt.gate import gate_line, run_gate
        path = self.out / "gate.json"
        if self.d.is_main and not path.exists():
            g, s = self.cfg.gate, self.cfg.sampling
            self.log("== gate: does pi_0 answer worse than it describes? ==")
            start = time.time()
            result = run_gate(self.load_policy(0), self.cache, self.eval_pool.records, question_type=g.question_type,
                              questions=g.questions, margin=g.margin, alpha=g.alpha, batch_size=s.batch_size,
                              max_new_tokens=s.max_new_tokens, describe_max_new_tokens=s.context_max_new_tokens)
            write_json(path, dict(result, seconds=round(time.time() - start, 3)))
        distributed.barrier(self.d)
        if self.d.is_main:
            self.log(gate_line(read_json(path)))

    def initial_source(self) -> str:
        """The model before any training: built into init_model/ (tiny, smollm2) or the given folder."""
        return str(self.out / "init_model") if self.cfg.model.source in BUILT_SOURCES else self.cfg.model.source

    def policy_source(self, t: int) -> str:
        if t > 0:
            return str(self.dir.iteration(t - 1) / "checkpoint")
        return str(self.out / "warm_start") if self.cfg.warmstart.videos else self.initial_source()

    def load_policy(self, t: int):
        m = self.cfg.model
        adapter = load_adapter(m.family, self.policy_source(t), device=self.d.device, dtype=DTYPES[m.dtype],
                               num_frames=m.num_frames, seed=self.cfg.model_seed,
                               attn_implementation=self.cfg.attn_implementation)
        adapter.freeze_vision()
        adapter.kv_cache, adapter.prompt_pad_to = self.cfg.sampling.kv_cache, self.cfg.sampling.prompt_pad_to
        return adapter

    # ---- the loop -----------------------------------------------------------------------
    def run(self) -> list[dict]:
        self.prepare()
        for t in range(self.cfg.iterations):
            it = self.dir.iteration(t)
            if self.dir.marker(t, 3).exists():
                continue
            self.log(f"== iteration {t} ==")
            it.mkdir(exist_ok=True)
            adapter = self.load_policy(t)
            stages_ = ((0, self.stage0),) if self.eval_pool else ()
            for n, stage in stages_ + ((1, self.stage1), (2, self.stage2), (3, self.stage3)):
                if not self.dir.marker(t, n).exists():
                    start = time.time()
                    metrics = stage(t, it, adapter)
                    if self.d.is_main:
                        write_json(self.dir.marker(t, n), dict(metrics, iteration=t, stage=n,
                                                               seconds=round(time.time() - start, 3)))
                        self.write_metrics()
                        self.write_report(adapter)
                        if n == 3:
                            self.prune_checkpoints(t)
                    distributed.barrier(self.d)
        if self.eval_pool and not (self.out / "final_eval.json").exists():
            self.log("== final evaluation ==")
            adapter = self.load_policy(self.cfg.iterations)
            start = time.time()
            metrics = self.evaluate(self.out, "final_eval", adapter)
            if self.d.is_main:
                write_json(self.out / "final_eval.json", dict(metrics, seconds=round(time.time() - start, 3)))
                self.write_report(adapter)
            distributed.barrier(self.d)
        return self.write_metrics() if self.d.is_main else []

    def prune_checkpoints(self, t: int) -> None:
        """`keep_checkpoints`: after iteration t is marked done, only the last K full checkpoints
        stay (a 7B checkpoint is ~15 GB; nine iterations would keep ~135 GB)."""
        for folder, freed in self.dir.prune_checkpoints(t, self.cfg.keep_checkpoints):
            self.log(f"removed {folder.relative_to(self.out)} ({freed / 2**30:.1f} GiB; keep_checkpoints="
                     f"{self.cfg.keep_checkpoints})")

    def write_report(self, adapter) -> None:
        from isrt.report import write_report
        try:
            write_report(self.out, tokenizer=adapter.tokenizer)
        except Exception as e:  # the report is a view of the run's files: never a reason to stop training
            self.log(f"warning: report.md not rewritten ({type(e).__name__}: {str(e).splitlines()[0]})")

    def _gather_shards(self, folder: Path, name: str) -> list[dict]:
        distributed.barrier(self.d)
        return self.dir.read_shards(folder, name)

    def stage0(self, t: int, it: Path, adapter) -> dict:
        """Greedy answers of pi_t on the held-out evaluation prompts (iter_XX/eval.jsonl)."""
        return self.evaluate(it, "eval", adapter)

    def evaluate(self, folder: Path, name: str, adapter) -> dict:
        from isrt.eval import greedy_answers
        from isrt.scoring import score_answer
        shard = self.dir.shard(folder, name, self.d.rank)
        if not shard.exists():
            bad: list[str] = []
            mine = shard_by_video(self.eval_pool.records, self.d.rank, self.d.world_size)
            rows = greedy_answers(adapter, self.cache, mine, batch_size=self.cfg.sampling.batch_size,
                                  max_new_tokens=self.cfg.sampling.max_new_tokens, bad=bad, show=self.d.is_main)
            write_json(shard, {"rows": rows, "bad": bad})
        shards = self._gather_shards(folder, name)
        if not self.d.is_main:
            return {}
        rows = sorted((r for s in shards for r in s["rows"]), key=lambda r: r["id"])
        write_jsonl(folder / f"{name}.jsonl", rows)
        scored = [score_answer(r["prediction"], r["answer"]) for r in rows if r.get("answer")]
        return {"eval_prompts": len(rows), "eval_bad_videos": sum(len(s["bad"]) for s in shards),
                "eval_accuracy": sum(scored) / len(scored) if scored else None,
                "eval_words_mean": statistics.fmean([len(r["prediction"].split()) for r in rows]) if rows else 0.0}

    def stage1(self, t: int, it: Path, adapter) -> dict:
        shard = self.dir.shard(it, "stage1", self.d.rank)
        records = iteration_prompts(self.pool, t, self.cfg.data.prompts_per_iteration, self.cfg.seed)
        if not shard.exists():
            mine = shard_by_video(records, self.d.rank, self.d.world_size)
            good, bad = stages.load_features(adapter, self.cache, mine, show=self.d.is_main,
                                             room=self.cfg.sampling.max_new_tokens)
            described = good + self._unprompted_videos(records, adapter)
            videos = list(dict.fromkeys(r["video_path"] for r in described))
            index = self.dir.previous_contexts(t)
            video_of = {r["video_path"]: r["video"] for r in described}
            previous = {v: index.get(video_of[v]) for v in videos}
            # seeded per video and per record, not per rank: the same samples on any number of ranks
            contexts = stages.generate_contexts(adapter, self.cache, videos, previous, self.cfg,
                                                seed_key=(self.cfg.seed, t), show=self.d.is_main, names=video_of)
            _crash_point(f"iter_{t:02d}/stage1")
            samples = stages.generate_responses(adapter, self.cache, good, self.cfg,
                                                seed_key=(self.cfg.seed, t), show=self.d.is_main)
            rows = [dict(public(r), context=contexts[r["video_path"]], previous_context=previous[r["video_path"]])
                    for r in good]
            if self.cfg.sampling.candidates == 2:
                for row in rows:
                    row["responses"] = samples[row["id"]]
            else:  # best of n: the judge's best and the policy's most frequent other answer
                scores = stages.candidate_scores(adapter, self.cache, rows, samples, self.cfg)
                for row in rows:
                    row.update(responses=stages.pick_pair(samples[row["id"]], scores[row["id"]]),
                               candidates=samples[row["id"]], candidate_scores=scores[row["id"]])
            write_json(shard, {
                "contexts": [{"video_path": v, "context": contexts[v], "previous_context": previous[v]} for v in videos],
                "responses": rows, "bad": bad})
        shards = self._gather_shards(it, "stage1")
        if not self.d.is_main:
            return {}
        video_of = {r["video_path"]: r["video"] for r in self.pool.records}
        contexts = sorted((c for s in shards for c in s["contexts"]), key=lambda c: c["video_path"])
        write_jsonl(it / "contexts.jsonl", [dict(video=video_of[c["video_path"]], **c) for c in contexts])
        responses = sorted((r for s in shards for r in s["responses"]), key=lambda r: r["id"])
        write_jsonl(it / "responses.jsonl", responses)
        bad = [b for s in shards for b in s["bad"]]
        lengths = [len(y.split()) for r in responses for y in r.get("candidates") or r["responses"]]
        return {"prompts": len(records), "responses": len(responses), "videos": len(contexts),
                "bad_videos": len(bad), "bad_records": bad, "bad_pool_records": len(self.pool.bad),
                "identical_pairs": sum(r["responses"][0] == r["responses"][1] for r in responses),
                "response_words_mean": statistics.fmean(lengths) if lengths else 0.0,
                "response_words_median": statistics.median(lengths) if lengths else 0.0,
                "context_words_mean": statistics.fmean([len(c["context"].split()) for c in contexts]) if contexts else 0.0,
                **self.cache.stats.as_dict()}  # feature_cache_*: rank 0's counters, over the run so far

    def _unprompted_videos(self, records: list[dict], adapter) -> list[dict]:
        """data.describe_every_video: one record of each pool video this iteration's prompts do not
        use, this rank's share (the pool's video sharding), decodable; [] when off or none."""
        if not self.cfg.data.describe_every_video or self.cfg.data.prompts_per_iteration <= 0:
            return []
        used = {r["video_path"] for r in records}
        rest = list({r["video_path"]: r for r in self.pool.records if r["video_path"] not in used}.values())
        # the pool's bad videos are counted where their prompts are used; here they are only skipped
        good, _ = stages.load_features(adapter, self.cache, shard_by_video(rest, self.d.rank, self.d.world_size),
                                       show=False)
        return good

    def stage2(self, t: int, it: Path, adapter) -> dict:
        shard = self.dir.shard(it, "stage2", self.d.rank)
        records = self._here(read_jsonl(it / "responses.jsonl"))
        if not shard.exists():
            mine = shard_by_video(records, self.d.rank, self.d.world_size)
            judgments = stages.judge_pairs(adapter, self.cache, mine, self.cfg, seed_key=(self.cfg.seed, t),
                                           show=self.d.is_main, pool=records)
            _crash_point(f"iter_{t:02d}/stage2")
            prefs = []
            for rec, j in zip(mine, judgments):
                if j["kept"]:
                    win = 0 if j["verdicts"][0] == "y1" else 1
                    prefs.append(dict(public(rec), chosen=rec["responses"][win], rejected=rec["responses"][1 - win],
                                      iteration=t, context=rec["context"], verdicts=j["verdicts"],
                                      video_path=rec["video_path"]))
            stages.reference_logps(adapter, self.cache, prefs, self.cfg)
            write_json(shard, {"judgments": judgments, "preferences": prefs})
        shards = self._gather_shards(it, "stage2")
        if not self.d.is_main:
            return {}
        judgments = sorted((j for s in shards for j in s["judgments"]), key=lambda j: j["id"])
        prefs = sorted((p for s in shards for p in s["preferences"]), key=lambda p: p["id"])
        if self.cfg.judge.balance:  # over the whole iteration, so after the shards are joined
            prefs, dropped = judge.balance_pairs(prefs, seed=stages.stable_seed(self.cfg.seed, t, "balance"))
            for j in judgments:
                if j["id"] in dropped:
                    j.update(kept=False, reason="unbalanced")
        write_jsonl(it / "judgments.jsonl", judgments)
        write_jsonl(it / "preferences.jsonl", prefs)
        agree, counted = judge.swap_agreement(judgments)
        return {"judged": len(judgments), "kept": len(prefs), "dropped": judge.reason_counts(judgments),
                "swap_agreement": agree / counted if counted else 0.0}

    def stage3(self, t: int, it: Path, adapter) -> dict:
        prefs = self._here(read_jsonl(it / "preferences.jsonl"))
        # features fetched per micro-batch (Pair doc): the pool's features never sit in one list
        pairs = [Pair(prompts.policy_prompt(adapter, p["prompt"]), p["chosen"], p["rejected"],
                      functools.partial(self.cache.get, adapter, p["video_path"]), p["ref_chosen_logp"],
                      p["ref_rejected_logp"]) for p in prefs]
        first = [True]

        def on_step(row):
            if first[0]:
                first[0] = False
                _crash_point(f"iter_{t:02d}/stage3")

        c = self.cfg.dpo
        lora = c.lm == "lora" and bool(pairs)  # no pairs: no training, pi_{t+1} = pi_t, no adapter
        if lora:
            set_trainable(adapter, c.trainable, seed=stages.stable_seed(self.cfg.seed, t, "lora"))
        metrics = train_dpo(adapter, pairs, c, self.d, seed=stages.stable_seed(self.cfg.seed, t, "dpo"),
                            on_step=on_step)
        self._refuse_diverged(t, metrics, adapter)
        if self.d.is_main and lora:
            # the adapter alone (MBs): PeftModel.from_pretrained(<pi_t>, iter_XX/lora_adapter) is pi_{t+1}
            tmp = atomic_dir(it / "lora_adapter")
            adapter.model.save_pretrained(tmp)
            commit_dir(tmp, it / "lora_adapter")
        finish_training(adapter)  # merges LoRA: the checkpoint is a plain HF folder either way
        if self.d.is_main:
            tmp = atomic_dir(it / "checkpoint")
            adapter.save_pretrained(tmp)
            commit_dir(tmp, it / "checkpoint")
        distributed.barrier(self.d)
        return metrics | self.cache.stats.as_dict()  # rank 0's, over the run so far

    def _refuse_diverged(self, t: int, metrics: dict, adapter) -> None:
        """TrainingDiverged (on every rank) when a step's loss or a trained weight is not finite:
        a diverged policy must not be saved as pi_{t+1} nor its stage marked done."""
        bad = next((r for r in metrics.get("history", []) if not math.isfinite(r["loss"])), None)
        why = f"the loss was {bad['loss']} at step {bad['step']}" if bad else None
        if why is None and self.d.is_main and adapter.model is not None:
            name = next((n for n, p in adapter.model.named_parameters() if not torch.isfinite(p).all()), None)
            why = f"weight {name} holds non-finite values" if name else None
        why = distributed.broadcast_object(self.d, why)
        if why:
            raise TrainingDiverged(f"iteration {t}, stage 3: DPO diverged ({why}); pi_{t + 1} was not saved. "
                                   f"Lower dpo.learning_rate (now {self.cfg.dpo.learning_rate}) or dpo.beta "
                                   f"(now {self.cfg.dpo.beta}) and rerun")

    # ---- reporting ----------------------------------------------------------------------
    def write_metrics(self) -> list[dict]:
        rows = []
        for t in range(self.cfg.iterations):
            for n in (0, 1, 2, 3):
                path = self.dir.marker(t, n)
                if path.exists():
                    row = read_json(path)
                    row.pop("history", None)
                    row.pop("bad_records", None)
                    rows.append(row)
        # a finished run, rerun, writes nothing: so it can be re-invoked on read-only storage
        path = self.out / "metrics.jsonl"
        if not path.exists() or read_jsonl(path, strict=False, bad=[]) != json.loads(json.dumps(rows)):
            write_jsonl(path, rows)
        return rows

