"""fidelity: exact, query-efficient extraction of ReLU networks from black-box access."""

from .errors import OracleError, QueryBudgetExceeded, UnsupportedArchitecture
from .pipeline import Extraction, ExtractConfig, ExtractionError, NeuronInfo, extract
from .learn import LearnConfig, finetune, learn
from .metrics import Report, evaluate
from .network import ReLUNetwork
from .oracle import Oracle
from .http import HTTPOracle
from .journal import Journal, JournalError

__all__ = [
    "Extraction", "ExtractConfig", "ExtractionError", "HTTPOracle", "Journal", "JournalError",
    "LearnConfig", "NeuronInfo", "Oracle",
    "OracleError", "QueryBudgetExceeded", "ReLUNetwork", "Report", "UnsupportedArchitecture",
    "evaluate", "extract", "finetune", "learn",
]
__version__ = "0.1.0"
