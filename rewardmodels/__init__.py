"""rewardmodels: learn rewards from preferences.

Preference data (``preferences``, ``segments``, ``errors``), Bradley-Terry losses (``losses``), reward nets
(``nets``, ``cnn``), ensembles (``ensemble``), query selection (``selection``), simulated B-Pref teachers
(``teachers``), label schedules (``schedules``) and learned-reward wrappers (``wrappers``) for trajectory segments;
``text/`` for text (preference files in TRL's formats, the LM reward model, text teachers); ``feedback/`` for
people (the label store, the human labeller, the labelling web app). Label convention everywhere: 1.0 = first
segment preferred, 0.0 = second, 0.5 = tie, NaN = skipped. The names below load their modules on first use.
"""

from textenv.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "rewardmodels.ensemble": ("FitConfig", "RewardEnsemble", "RewardModelFileError"),
    "rewardmodels.losses": ("bradley_terry_loss", "preference_log_probs", "preference_probability"),
    "rewardmodels.nets": ("MLPRewardNet", "RewardNet", "UnsupportedSpaceError", "segment_returns"),
    "rewardmodels.preferences": ("EmptyDatasetError", "LabelValueError", "NonFiniteValueError",
                                 "PreferenceDataError", "PreferenceDataset", "PreferenceFileError",
                                 "SegmentShapeError", "SpaceMismatchError", "check_labels", "concatenate",
                                 "space_from_json", "space_to_json"),
    "rewardmodels.schedules": ("ConstantSchedule", "InverseTimeSchedule", "LabelSchedule", "make_schedule"),
    "rewardmodels.segments": ("Segments", "Trajectory", "cut_segments", "segment_windows",
                              "trajectories_from_rollout"),
    "rewardmodels.selection": ("CANDIDATE_OVERSAMPLING", "random_pairs", "select_pairs", "selection_scores"),
    "rewardmodels.teachers": ("TEACHER_PRESETS", "PreferenceLabeller", "Teacher", "bpref_return_scale",
                              "make_teacher"),
    "rewardmodels.text.preferences": ("TextPreferencePairs", "load_text_preferences"),
    "rewardmodels.text.lm_reward": ("LMRewardModel",),
})
