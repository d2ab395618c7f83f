"""The published constants of PEBBLE and SURF, in one home without torch: the estimators (``rewardmodels.intrinsic``,
``rewardmodels.surf``) take them as defaults and the presets (``agents.loop.control.presets``, read by
``rlhf-gym prefs --help``) as settings. Where each comes from is in the estimators' module docstrings."""

#: PEBBLE's k of the k-nearest-neighbour state entropy (Lee, Smith & Abbeel 2021; BPref config/train_PEBBLE.yaml,
#: ``topK: 5``).
PEBBLE_K = 5

#: SURF's constants (Park et al. 2022; official code alinlab/SURF): the pseudo-label confidence tau
#: (``threshold_u``), the loss weight lambda (``lambda_u``), unlabelled pairs per labelled pair in a minibatch
#: (``mu``), the steps stored on each side of a segment (``dataaug_window``) and the crop range (``crop_range``).
SURF_THRESHOLD = 0.99
SURF_WEIGHT = 1.0
SURF_RATIO = 4
SURF_CONTEXT = 5
SURF_CROP = 5
