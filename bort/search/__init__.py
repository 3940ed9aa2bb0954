"""FPTAS sub-architecture search over ⟨layers, heads, hidden, intermediate⟩ (see docs/search.md)."""
from .fptas import Selection, premise_violations, select
from .params import effective_parameters, encoder_parameters, mlm_parameters
from .runner import SearchRecipe, SearchSettings, run_search
from .space import Candidate, SearchSpace, SearchSpaceError, load_space, parse_space
from .speed import SpeedSettings, forward_flops, inference_cost
from .wcoef import References, WeightExponents, w_coefficient, within_guarantee

__all__ = ["Candidate", "SearchSpace", "SearchSpaceError", "load_space", "parse_space", "Selection", "select",
           "premise_violations", "encoder_parameters", "mlm_parameters", "effective_parameters", "SpeedSettings",
           "forward_flops", "inference_cost", "References", "WeightExponents", "w_coefficient", "within_guarantee",
           "SearchRecipe", "SearchSettings", "run_search"]
