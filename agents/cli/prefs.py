"""``rlhf-gym prefs``: learn a reward from segment preferences and train any SB3 agent on it (Christiano et al. 2017).

    rlhf-gym prefs --out runs/cartpole                      # the embedded default: CartPole-v1, PPO, 150 labels
    rlhf-gym prefs --env Pendulum-v1 --algo sac --labels 200 --steps 40000 --out runs/pendulum
    rlhf-gym prefs --out runs/cartpole --resume             # continue an interrupted run to the same budgets
    rlhf-gym prefs --out runs/cartpole --overwrite          # start afresh; the old run is moved aside, not deleted
    rlhf-gym prefs --labeller human --labels 60 --out runs/cartpole-people   # then: rlhf-gym label --run ...
    rlhf-gym prefs --preset christiano-mujoco --env Hopper-v5 --labels 700 --steps 1000000 --out runs/hopper
    rlhf-gym prefs --preset christiano-atari --env ALE/Pong-v5 --labels 3300 --steps 10000000 --out runs/pong

Every unset option takes the preset's value (``--preset``, else the env's tuned settings; both in
``agents.loop.control.presets``), else ``PrefsConfig``'s default. The run directory gets config.json, summary.json,
metrics.jsonl, tb/, curves.png and checkpoints/ (the last two). Ctrl-C or SIGTERM stop a run within seconds and
print how to resume it; a run
waiting for people saves a checkpoint before it waits, so no label given meanwhile is lost.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agents.cli import UsageError, check_threads, resume_hint, run_settings, usage_errors
from agents.cli.settings import add_settings_flags, json_argument, settings_from_args
from agents.loop.control.presets import PREFS_PRESETS
from agents.rundir import RunInterrupted

if TYPE_CHECKING:
    from agents.loop.control.config import PrefsConfig

logger = logging.getLogger(__name__)

#: Flags that set the ``PrefsConfig`` field of the same name (``--initial-fraction`` sets initial_label_fraction).
_CONFIG_FIELDS = ("algo", "labels", "steps", "seed", "teacher", "selection", "ensemble", "segment_len", "rounds",
                  "initial_steps", "initial_policy", "initial_label_fraction", "reward_epochs", "eval_episodes",
                  "eval_every", "device",
                  "hyperparams", "labeller", "human_fraction", "label_timeout")
_TEACHER_FIELDS = {"teacher_beta": "beta", "teacher_gamma": "gamma", "teacher_eps": "eps",
                   "teacher_skip": "skip_threshold", "teacher_equal": "equal_threshold"}


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    g = parser.add_argument_group("run")
    g.add_argument("--env", default=None, help="any registered Gymnasium env id (default: CartPole-v1)")
    g.add_argument("--algo", default=None, help="SB3 algorithm: ppo, a2c, sac, dqn, td3, ddpg (default: the env's "
                                                "preset, else ppo)")
    g.add_argument("--labels", type=int, default=None, help="preference-label budget (CartPole preset: 150)")
    g.add_argument("--steps", type=int, default=None, help="env-step budget (CartPole preset: 50000)")
    g.add_argument("--seed", type=int, default=None, help="seed of everything in the run (0)")
    g.add_argument("--out", default=None, help="run directory (default: runs/<env>-<algo>-seed<seed>)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (or the one before it, if the latest "
                        "is damaged), with its saved settings")
    g.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that holds an earlier run: its files are moved into "
                        "--out/superseded-<time>/ (labels.sqlite and clips/ stay)")
    g.add_argument("--device", default=None, help="torch device (default: cpu; tiny MLPs are fastest there)")
    g.add_argument("--hyperparams", type=json_argument, default=None,
                   help="SB3 constructor kwargs as JSON, replacing the preset, e.g. "
                        "'{\"n_envs\": 4, \"n_epochs\": 10}'")
    g.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the reward nets and SB3's policies are tiny, and more threads "
                        "mostly contend; 0 = torch's own default)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (it is off anyway without a TTY)")
    h = parser.add_argument_group("labeller")
    h.add_argument("--labeller", default=None, choices=("teacher", "human", "mixed"),
                   help="teacher (simulated, default), human (people label clips in `rlhf-gym label --run OUT`; the "
                        "loop waits for them), or mixed (--human-fraction of each batch to people)")
    h.add_argument("--human-fraction", type=float, default=None, help="share of pairs people label with --labeller "
                                                                      "mixed (default 0.5)")
    h.add_argument("--label-timeout", type=float, default=None,
                   help="seconds to wait for people per batch (default: as long as it takes); unlabelled pairs are "
                        "then skipped")
    g.add_argument("--preset", default=None, metavar="NAME",
                   help="a protocol from agents/loop/control/presets.py: "
                        f"{', '.join(p for p in PREFS_PRESETS if p != 'tuned')}; a base may add PEBBLE's "
                        "pre-training and SURF's reward learning, e.g. christiano-mujoco+pebble+surf; other "
                        "options override its values (default: the env's tuned settings)")
    t = parser.add_argument_group("teacher (simulated labeller, B-Pref models)")
    t.add_argument("--teacher", default=None, help="oracle, noisy, myopic, mistake, skip, equal (default: oracle)")
    t.add_argument("--teacher-beta", type=float, default=None, help="rationality: P(a) = sigmoid(beta (R_a - R_b))")
    t.add_argument("--teacher-gamma", type=float, default=None, help="myopic discount in (0, 1]")
    t.add_argument("--teacher-eps", type=float, default=None, help="probability of flipping a label")
    t.add_argument("--teacher-skip", type=float, default=None, help="skip when both segment returns are <= this")
    t.add_argument("--teacher-equal", type=float, default=None, help="tie when |R_a - R_b| < this")
    r = parser.add_argument_group("reward learning")
    r.add_argument("--selection", default=None, help="random or disagreement (default: disagreement)")
    r.add_argument("--ensemble", type=int, default=None, help="reward nets in the ensemble (default: 3)")
    r.add_argument("--segment-len", type=int, default=None, help="steps per segment (default: 50)")
    r.add_argument("--rounds", type=int, default=None, help="learn -> label -> fit rounds")
    r.add_argument("--initial-steps", type=int, default=None, help="steps of the initial collection, labelled before "
                                                                    "training")
    r.add_argument("--initial-policy", default=None, choices=("random", "agent", "explore"),
                   help="who acts in the initial collection: uniform random actions, the untrained agent, or the "
                        "agent learning on PEBBLE's state-entropy reward (unsupervised pre-training)")
    r.add_argument("--initial-fraction", type=float, default=None, dest="initial_label_fraction",
                   help="share of the labels spent on the random-policy collection")
    r.add_argument("--reward-epochs", type=int, default=None, help="passes over the labels per reward fit")
    r.add_argument("--eval-episodes", type=int, default=None, help="final evaluation episodes (default: 20)")
    r.add_argument("--eval-every", type=int, default=None, help="in-run evaluation every N rounds (0 = off)")
    add_settings_flags(parser)


def config_from_args(args: argparse.Namespace) -> PrefsConfig:
    """A validated ``PrefsConfig`` from parsed arguments (unset ones keep the preset's value)."""
    from agents.loop.control.config import PrefsConfig

    teacher_params = {field: getattr(args, arg) for arg, field in _TEACHER_FIELDS.items()
                      if getattr(args, arg, None) is not None}
    flags: dict[str, Any] = {n: getattr(args, n) for n in (*_CONFIG_FIELDS, "env", "preset")
                             if getattr(args, n, None) is not None}
    if teacher_params:
        flags["teacher_params"] = teacher_params
    if getattr(args, "no_progress", False):
        flags["progress_bar"] = False
    values = settings_from_args(args, PrefsConfig, flags)  # --config file < flags < --set
    return PrefsConfig.from_preset(values.pop("preset", None), values.pop("env", "CartPole-v1"), **values)


def default_out(cfg: PrefsConfig) -> Path:
    safe_env = cfg.env.replace("/", "_").replace(":", "_")
    if cfg.preset:
        return Path("runs") / f"{cfg.preset}-{safe_env}-seed{cfg.seed}"
    return Path("runs") / f"{safe_env}-{cfg.algo}-seed{cfg.seed}"


def validate(args: argparse.Namespace) -> PrefsConfig:
    """The settings of a fresh run, after every check that needs nothing created: the flags, ``--config`` and
    ``--set``, the teacher, the hyperparameters, and the env's spaces (an env the agent or the reward net cannot
    use: one line, before a run directory exists). Bad input raises ``UsageError``."""
    check_threads(args.threads, low=0)
    from agents.loop.control.run import check_spaces

    with usage_errors():
        cfg = config_from_args(args)
        check_spaces(cfg)
    return cfg


def run(args: argparse.Namespace) -> int:
    check_threads(args.threads, low=0)
    import torch  # the command boundary: `rlhf-gym prefs --help` imports none of the training stack

    from agents.loop.control.config import PrefsConfig
    from agents.loop.control.run import run_prefs
    from agents.sb3.control import BadHyperparameterError, IncompatibleSpaceError

    if args.threads:
        torch.set_num_threads(args.threads)
    with run_settings(args, PrefsConfig.load, lambda: validate(args), default_out) as (cfg, out):
        try:
            summary = run_prefs(cfg, out, resume=args.resume)
        except (IncompatibleSpaceError, BadHyperparameterError) as err:
            raise UsageError(str(err)) from err
        except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM (agents.cli.main): say how to go on
            raise RunInterrupted(resume_hint("prefs", out)) from err
    keys = ("true_return_mean", "true_return_std", "labels_used", "env_steps", "wall_s", "preset", "env")
    print(json.dumps({k: summary[k] for k in keys if summary.get(k) is not None}, indent=2))
    print(f"run directory: {out} (summary.json, curves.png, tensorboard --logdir {out / 'tb'})")
    return 0
