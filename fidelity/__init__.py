"""fidelity: exact, query-efficient extraction of ReLU networks from black-box access."""

from .errors import OracleError, QueryBudgetExceeded, UnsupportedArchitecture
from .pipeline import Extraction, ExtractConfig, ExtractionError, NeuronInfo, extract
from .metrics import Report, evaluate
from .network import ReLUNetwork
from .oracle import Oracle

__all__ = [
    "Extraction", "ExtractConfig", "ExtractionError", "NeuronInfo", "Oracle", "OracleError",
    "QueryBudgetExceeded", "ReLUNetwork", "Report", "UnsupportedArchitecture", "evaluate",
    "extract",
]
__version__ = "0.1.0"
