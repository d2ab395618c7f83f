"""rewardmodels: learn rewards from preferences.

Preference data (``preferences``, ``segments``, ``errors``), Bradley-Terry losses
(``losses``), reward nets (``nets``), ensembles (``ensemble``), query selection (``selection``), simulated B-Pref
teachers (``teachers``) and label schedules (``schedules``); text preference data in any format
(``text_preferences.load_text_preferences``). Label convention everywhere: 1.0 = first segment
preferred, 0.0 = second, 0.5 = tie, NaN = skipped.
"""

from rewardmodels.ensemble import FitConfig, RewardEnsemble, RewardModelFileError
from rewardmodels.losses import bradley_terry_loss, preference_log_probs, preference_probability
from rewardmodels.moved import install_moved_modules
from rewardmodels.nets import MLPRewardNet, RewardNet, UnsupportedSpaceError, segment_returns
from rewardmodels.preferences import (  # the errors are defined in rewardmodels.errors
    EmptyDatasetError,
    LabelValueError,
    NonFiniteValueError,
    PreferenceDataError,
    PreferenceDataset,
    PreferenceFileError,
    SegmentShapeError,
    SpaceMismatchError,
    check_labels,
    concatenate,
    space_from_json,
    space_to_json,
)
from rewardmodels.schedules import ConstantSchedule, InverseTimeSchedule, LabelSchedule, make_schedule
from rewardmodels.segments import Segments, Trajectory, cut_segments, segment_windows, trajectories_from_rollout
from rewardmodels.selection import CANDIDATE_OVERSAMPLING, random_pairs, select_pairs, selection_scores
from rewardmodels.teachers import PRESETS, PreferenceLabeller, Teacher, bpref_return_scale, make_teacher
from rewardmodels.text_preferences import TextPreferencePairs, load_text_preferences
from textenv.files import atomic_write

__all__ = [
    "CANDIDATE_OVERSAMPLING", "PRESETS", "ConstantSchedule", "EmptyDatasetError", "FitConfig", "InverseTimeSchedule",
    "LabelSchedule", "LabelValueError", "MLPRewardNet", "NonFiniteValueError", "PreferenceDataError",
    "PreferenceDataset", "PreferenceFileError", "PreferenceLabeller", "RewardEnsemble", "RewardModelFileError",
    "RewardNet", "SegmentShapeError", "Segments", "SpaceMismatchError", "Teacher", "TextPreferencePairs", "Trajectory",
    "UnsupportedSpaceError", "atomic_write", "bpref_return_scale", "bradley_terry_loss", "check_labels",
    "concatenate", "cut_segments", "load_text_preferences", "make_schedule", "make_teacher", "preference_log_probs",
    "preference_probability",
    "random_pairs", "segment_returns", "segment_windows", "select_pairs", "selection_scores", "space_from_json",
    "space_to_json", "trajectories_from_rollout",
]

#: Modules of the 0.1 layout and where they live now (importing an old name raises an error naming the new one).
MOVED_MODULES = {
    "rewardmodels.label_store": "rewardmodels.feedback.label_store",
    "rewardmodels.human": "rewardmodels.feedback.human",
    "rewardmodels.clips": "rewardmodels.feedback.clips",
}
install_moved_modules(MOVED_MODULES)
