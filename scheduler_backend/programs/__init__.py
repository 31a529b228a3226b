"""The built-in reasoning programs; `scheduler_backend.registry` builds them from request options."""
from scheduler_backend.programs.base import PolicyProgram
from scheduler_backend.programs.code_consistency import CodeConsistency
from scheduler_backend.programs.cot_probe import EFFORTS, CotProbe
from scheduler_backend.programs.mcts import Mcts
from scheduler_backend.programs.rebase import Rebase
from scheduler_backend.programs.self_consistency import SelfConsistency

__all__ = ["EFFORTS", "CodeConsistency", "CotProbe", "Mcts", "PolicyProgram", "Rebase", "SelfConsistency"]
