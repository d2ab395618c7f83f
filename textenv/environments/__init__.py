"""Turn-level text environments: the other side of a multi-turn ``TextGen-v0`` conversation.

``base`` holds the protocol (GEM's API: ``reset(seed, options) -> (observation, info)``, ``step(text) ->
(observation, reward, terminated, truncated, info)``), the ``TurnEnvironment`` base class and the boundary checker
``checked``; ``factory`` turns a spec (a class, a factory, an instance, ``"gem:<id>"``, ``"textarena:<id>"``,
``"openenv:<url>"``, ``"<module>:<attr>"``) into a factory of checked environments; ``gem``, ``textarena`` and
``openenv`` adapt those packages. The names below load their modules on first use, and the optional packages are
imported only when an environment of theirs is made.
"""

from textenv.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "textenv.environments.base": ("CheckedEnvironment", "EnvironmentSpecError", "EnvironmentUnavailableError",
                                  "TurnEnvironment", "TurnEnvironmentError", "TurnEnvironmentProtocol",
                                  "TurnEnvironmentTypeError", "TurnEpisodeEndedError", "check_reset_result",
                                  "check_step_result", "checked"),
    "textenv.environments.factory": ("EnvironmentFactory", "InstanceFactory", "make_environment_factory"),
    "textenv.environments.gem": ("GemEnvironment",),
    "textenv.environments.openenv": ("OpenEnvEnvironment",),
    "textenv.environments.reviews": ("SecondOpinion",),
    "textenv.environments.rng": ("PrivateGlobalRandom",),
    "textenv.environments.textarena": ("TextArenaEnvironment",),
})
