"""The human-feedback labelling web app: ``create_app`` (Flask) and ``start_server`` / ``ServerThread`` (waitress).

Start it with ``rlhf-gym label --run DIR``; the label store and the loop-facing labeller live in
``rewardmodels.feedback.label_store`` and ``rewardmodels.feedback.human``.
"""

from rewardmodels.feedback.webapp.app import InsecureBindError, check_bind, create_app, is_loopback
from rewardmodels.feedback.webapp.server import LabelServer, ServerThread, server_url, start_server

__all__ = ["InsecureBindError", "LabelServer", "ServerThread", "check_bind", "create_app", "is_loopback",
           "server_url", "start_server"]
