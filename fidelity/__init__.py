"""fidelity: exact, query-efficient extraction of ReLU networks from black-box access."""

from .errors import OracleError, QueryBudgetExceeded, UnsupportedArchitecture
from .config import ExtractConfig
from .pipeline import extract
from .results import Event, Extraction, ExtractionError, Kind, NeuronInfo, Status
from .learn import LearnConfig, finetune, learn
from .metrics import Report, evaluate
from .network import ReLUNetwork
from .oracle import Oracle
from .http import HTTPOracle
from .journal import Journal, JournalError

__all__ = [
    "Event", "Extraction", "ExtractConfig", "ExtractionError", "HTTPOracle", "Journal",
    "JournalError", "Kind", "LearnConfig", "NeuronInfo", "Oracle", "OracleError",
    "QueryBudgetExceeded", "ReLUNetwork", "Report", "Status", "UnsupportedArchitecture",
    "evaluate", "extract", "finetune", "learn",
]
__version__ = "0.1.0"
